"""Reader studies: naming, one-to-one grids, never overwriting, blinding, timing and the
inter/intra agreement tables built from the study."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationQCLib.sessions import ReaderStudy, blank_mask_like, mask_name, parse_mask_name
from ClinicalMRICommonLib.errors import UserError

SHAPE = (6, 16, 16)


class StepClock:
    """Deterministic time source: each call advances by ``step`` seconds."""

    def __init__(self, step=60):
        self.t = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)
        self.step = timedelta(seconds=step)

    def __call__(self):
        self.t += self.step
        return self.t


def write_image(path, spacing=(0.8, 0.8, 4.8)):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def box(ref_path, z0, z1):
    m = blank_mask_like(ref_path)
    arr = sitk.GetArrayFromImage(m)
    arr[z0:z1, 4:12, 4:12] = 1
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(m)
    return out


@pytest.fixture
def study(tmp_path):
    (tmp_path / "images").mkdir()
    t2a = write_image(tmp_path / "images" / "P001_T2.nii.gz")
    t2b = write_image(tmp_path / "images" / "P002_T2.nii.gz")
    t1a = write_image(tmp_path / "images" / "P001_T1.nii.gz", spacing=(0.8, 0.8, 4.0))
    s = ReaderStudy.create(tmp_path / "study", "spine ROI study", clock=StepClock())
    s.add_reader("r1", "annotator")
    s.add_reader("r2", "annotator")
    s.add_reader("rev", "reviewer")
    s.add_case("c1", "P001", {"T2": t2a, "T1": t1a}, label="HRMM")
    s.add_case("c2", "P002", {"T2": t2b}, label="SRMM")
    return s


def test_names():
    assert mask_name("P001", "T2", "ROI") == "P001_T2_ROI.nii.gz"
    assert parse_mask_name("/x/P001_FS-T2_ROI.nii.gz") == ("P001", "FS-T2", "ROI")
    with pytest.raises(UserError, match="patient id 'P_001'"):
        mask_name("P_001", "T2", "ROI")
    with pytest.raises(UserError, match="not named"):
        parse_mask_name("P001_T2.nii.gz")


def test_save_naming_grid_and_timing(study):
    src = study.source_image("c1", "T2")
    study.start_reading("r1", "c1", "T2")
    p = study.save_mask("r1", "c1", "T2", "ROI", box(src, 1, 4), final=False, notes="border unclear")
    assert p == study.folder / "readers" / "r1" / "first" / "P001_T2_ROI.nii.gz"
    saved = sitk.ReadImage(str(p))
    assert saved.GetPixelID() == sitk.sitkUInt8 and saved.GetSpacing() == pytest.approx((0.8, 0.8, 4.8))
    reads = study.reads()
    row = reads.iloc[0]
    assert (row.reader_id, row.role, row.session, row.case_id, row.sequence, row.content) == \
        ("r1", "annotator", "first", "c1", "T2", "ROI")
    assert row.voxels == 3 * 64 and not row.final and row.notes == "border unclear"
    assert row.seconds_spent == 60  # one clock step between start and save
    # a mask drawn on the T1 grid cannot be saved as the T2 mask (one-to-one with the source)
    with pytest.raises(UserError, match="not on the grid of its source image"):
        study.save_mask("r1", "c1", "T2", "ROI", box(study.source_image("c1", "T1"), 1, 3))
    with pytest.raises(UserError, match="not registered"):
        study.save_mask("intruder", "c1", "T2", "ROI", box(src, 1, 3))
    with pytest.raises(UserError, match="has no 'FLAIR' image"):
        study.start_reading("r1", "c1", "FLAIR")


def test_never_overwrites(study):
    src = study.source_image("c1", "T2")
    p1 = study.save_mask("r1", "c1", "T2", "ROI", box(src, 1, 3))          # draft
    p1 = study.save_mask("r1", "c1", "T2", "ROI", box(src, 1, 4), final=True)  # own draft replaced, submitted
    first_bytes = p1.read_bytes()
    with pytest.raises(UserError, match="submitted as final.*never overwritten"):
        study.save_mask("r1", "c1", "T2", "ROI", box(src, 0, 5))
    assert p1.read_bytes() == first_bytes
    # the repeat read is another file; the first read stays as it was
    p_rep = study.save_mask("r1", "c1", "T2", "ROI", box(src, 1, 5), session="repeat", final=True)
    assert p_rep != p1 and p1.read_bytes() == first_bytes
    # another reader writes into their own folder
    p2 = study.save_mask("r2", "c1", "T2", "ROI", box(src, 2, 4), final=True)
    assert p2.parent.parent.name == "r2" and p1.read_bytes() == first_bytes
    # a file that the study did not write is never replaced
    stray = study.mask_path("r2", "c2", "T2", "ROI")
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"someone's file")
    with pytest.raises(UserError, match="not recorded in this study"):
        study.save_mask("r2", "c2", "T2", "ROI", box(study.source_image("c2", "T2"), 1, 3))
    assert stray.read_bytes() == b"someone's file"
    # a draft changed outside the study is not replaced either
    d = study.save_mask("r2", "c1", "T1", "ROI", box(study.source_image("c1", "T1"), 1, 3))
    sitk.WriteImage(box(study.source_image("c1", "T1"), 0, 2), str(d))
    changed = d.read_bytes()
    with pytest.raises(UserError, match="changed outside the study"):
        study.save_mask("r2", "c1", "T1", "ROI", box(study.source_image("c1", "T1"), 1, 4))
    assert d.read_bytes() == changed
    assert study.reads().query("reader_id == 'r1' and session == 'first'")["saves"].item() == 2


def test_blinding(study):
    src = study.source_image("c1", "T2")
    study.start_reading("r1", "c1", "T2")
    study.save_mask("r1", "c1", "T2", "ROI", box(src, 1, 4), final=True)
    study.save_mask("r2", "c1", "T2", "ROI", box(src, 2, 4), final=False)  # r2 still drafting
    view = study.case_list("r1")
    text = json.dumps(view)
    assert "HRMM" not in text and "SRMM" not in text and "label" not in text
    assert view == [{"case_id": "c1", "patient_id": "P001", "status": {"T2": "submitted", "T1": "not started"}},
                    {"case_id": "c2", "patient_id": "P002", "status": {"T2": "not started"}}]
    assert study.case_list("r2")[0]["status"]["T2"] == "in progress"
    # annotators see only their own masks
    assert {m["reader_id"] for m in study.visible_masks("r2", "c1")} == {"r2"}
    assert {m["reader_id"] for m in study.visible_masks("r1", "c1")} == {"r1"}
    # the reviewer sees the annotators' submitted masks only (r2's draft stays hidden)
    assert [(m["reader_id"], m["final"]) for m in study.visible_masks("rev", "c1")] == [("r1", True)]
    # labels are kept apart from study.json and only given to the analysis
    assert "HRMM" not in (study.folder / "study.json").read_text()
    assert study.labels() == {"c1": "HRMM", "c2": "SRMM"}
    reopened = ReaderStudy.open(study.folder)
    assert reopened.case_list("r1") == view


def test_inter_and_intra_agreement(study):
    for case in ("c1", "c2"):
        src = study.source_image(case, "T2")
        study.save_mask("r1", case, "T2", "ROI", box(src, 1, 5), final=True)             # 4 slices
        study.save_mask("r2", case, "T2", "ROI", box(src, 1, 3), final=True)             # 2 slices
        study.save_mask("r1", case, "T2", "ROI", box(src, 1, 4), session="repeat", final=True)  # 3 slices
    inter = study.agreement("r1", "r2")
    assert list(inter["case_id"]) == ["c1", "c2"]
    assert inter["dice"].tolist() == pytest.approx([2 * 2 / 6] * 2)
    intra = study.agreement("r1", "r1", session_b="repeat")
    assert intra["dice"].tolist() == pytest.approx([2 * 3 / 7] * 2)
    assert intra["volume_diff_ml"].tolist() == pytest.approx([-64 * 0.8 * 0.8 * 4.8 / 1000] * 2, rel=1e-5)
    pairs = study.mask_pairs("r1", "r2")
    assert pairs["mask_a"].str.contains("readers/r1/first/P001_T2_ROI.nii.gz").any()


def test_study_errors(tmp_path, study):
    with pytest.raises(UserError, match="not a reader study"):
        ReaderStudy.open(tmp_path / "nothing")
    with pytest.raises(UserError, match="already holds a reader study"):
        ReaderStudy.create(study.folder, "again")
    with pytest.raises(UserError, match="role 'boss' unknown"):
        study.add_reader("r3", "boss")
    with pytest.raises(UserError, match="already in the study"):
        study.add_case("c1", "P001", {"T2": study.source_image("c1", "T2")})
    with pytest.raises(UserError, match="not found"):
        study.add_case("c3", "P003", {"T2": tmp_path / "missing.nii.gz"})


def test_damaged_study_files_are_one_line_errors(tmp_path, study):
    """study.json, session.json and the JSON-lines logs share one reader each
    (sessions.read_json_document / read_jsonl): damage is named, nothing is rewritten."""
    from AnnotationQCLib.training import TrainingSession
    from ClinicalMRICommonLib.quality import read_quality_log

    meta = study.folder / "study.json"
    good = meta.read_text(encoding="utf-8")
    meta.write_text(good.replace('"annotationqc-study/1"', '"other/9"'), encoding="utf-8")
    with pytest.raises(UserError, match=r"has format 'other/9'; expected 'annotationqc-study/1'"):
        ReaderStudy.open(study.folder)
    meta.write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match=r"study.json is not valid JSON \(.* at line 1\)"):
        ReaderStudy.open(study.folder)
    meta.write_text(good, encoding="utf-8")
    study = ReaderStudy.open(study.folder)
    study.start_reading("r1", "c1", "T2")
    log = study.folder / "reads.jsonl"
    log.write_text(log.read_text(encoding="utf-8") + "{damaged\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"reads.jsonl was altered or is incomplete: line \d+ is not a valid JSON "
                                        r"record \(the file was damaged or edited\)"):
        study.events()
    with pytest.raises(UserError, match=r"reader study .* was altered: reads.jsonl: line \d+ is not a valid JSON"):
        ReaderStudy.open(study.folder)
    (study.folder / "quality.jsonl").write_text("\n[\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"quality.jsonl line 2 is not valid JSON; the quality log is damaged"):
        read_quality_log(study.folder / "quality.jsonl")
    assert read_quality_log(tmp_path / "no-log.jsonl") == []
    with pytest.raises(UserError, match="is not a training session"):
        TrainingSession.open(study.folder)
