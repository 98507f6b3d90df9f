"""Reader studies and image-quality grading from the command line (``annotation-qc study ...``,
``annotation-qc quality grade``), with the stroke workflow's rules: blinding, work lists,
repeat reads after a washout, one writer at a time, a hash-chained log that shows tampering."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main
from AnnotationQCLib.sessions import ReaderStudy
from ClinicalMRICommonLib.errors import UserError

SHAPE = (6, 16, 16)


def _image(path, seed=0):
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray((rng.normal(20, 4, SHAPE) + 0).astype(np.float32))
    img.SetSpacing((0.8, 0.8, 4.0))
    sitk.WriteImage(img, str(path))
    return path


def _mask(path, like, z0, z1):
    ref = sitk.ReadImage(str(like))
    arr = np.zeros(SHAPE, np.uint8)
    arr[z0:z1, 4:12, 4:12] = 1
    m = sitk.GetImageFromArray(arr)
    m.CopyInformation(ref)
    sitk.WriteImage(m, str(path))
    return path


@pytest.fixture
def cases_csv(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i, (cid, seqs) in enumerate((("c1", ("T2", "T1")), ("c2", ("T2",)), ("c3", ("T2",))), start=1):
        for seq in seqs:
            _image(tmp_path / "img" / f"{cid}_{seq}.nii.gz", seed=i)
            rows.append({"case_id": cid, "patient_id": f"P00{i}", "sequence": seq, "image": f"img/{cid}_{seq}.nii.gz",
                         "label": "HRMM" if i == 1 else "SRMM"})
    path = tmp_path / "cases.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_study_commands_blinding_and_work_lists(tmp_path, cases_csv, capsys):
    st = tmp_path / "study"
    code, out, _ = _run(capsys, "study", "init", "--folder", st, "--name", "spine", "--cases", cases_csv,
                        "--washout-days", "0", "--json")
    assert code == 0 and json.loads(out)["cases"] == ["c1", "c2", "c3"]
    assert _run(capsys, "study", "init", "--folder", st, "--name", "x", "--cases", cases_csv)[0] == 2
    for reader, role in (("r1", "annotator"), ("r2", "annotator"), ("rev", "reviewer")):
        assert _run(capsys, "study", "reader", "add", "--study", st, "--reader", reader, "--role", role)[0] == 0
    code, out, _ = _run(capsys, "study", "assign", "--study", st, "--reader", "r1", "--all", "--json")
    order_r1 = json.loads(out)["work_list"]
    assert sorted(order_r1) == ["c1", "c2", "c3"]
    code, out, _ = _run(capsys, "study", "assign", "--study", st, "--reader", "r2", "--cases", "c2", "c1",
                        "--order", "given", "--json")
    assert json.loads(out)["work_list"] == ["c2", "c1"]
    # the blinded work list: own status only, assigned cases in the assigned order, no labels
    code, out, _ = _run(capsys, "study", "status", "--study", st, "--reader", "r2", "--json")
    view = json.loads(out)
    assert [c["case_id"] for c in view["cases"]] == ["c2", "c1"] and "HRMM" not in out and "label" not in out
    mask = _mask(tmp_path / "m.nii.gz", tmp_path / "img/c1_T2.nii.gz", 1, 4)
    code, _, err = _run(capsys, "study", "submit", "--study", st, "--reader", "r2", "--case", "c3", "--sequence", "T2",
                        "--content", "ROI", "--mask", _mask(tmp_path / "m3.nii.gz", tmp_path / "img/c3_T2.nii.gz", 1, 3))
    assert code == 2 and "not on 'r2''s work list" in err
    base = ["study", "submit", "--study", st, "--case", "c1", "--sequence", "T2", "--content", "ROI", "--mask", mask]
    assert _run(capsys, *base, "--reader", "r1", "--draft")[0] == 0
    assert _run(capsys, *base, "--reader", "r1")[0] == 0
    code, _, err = _run(capsys, *base, "--reader", "r1")
    assert code == 2 and "never overwritten" in err
    assert _run(capsys, *base, "--reader", "r2", "--notes", "border unclear")[0] == 0
    code, out, _ = _run(capsys, "study", "status", "--study", st, "--reader", "r1", "--json")
    status = {c["case_id"]: c["status"] for c in json.loads(out)["cases"]}
    assert status["c1"] == {"T2": "submitted", "T1": "not started"}
    # the coordinator's view: counts per reader, no labels and no masks
    code, out, _ = _run(capsys, "study", "status", "--study", st, "--coordinator", "--json")
    rows = {r["reader_id"]: r for r in json.loads(out)["readers"]}
    assert rows["r1"]["assigned"] == 3 and rows["r1"]["submitted"] == 1 and rows["r2"]["assigned"] == 2
    assert "HRMM" not in out and ".nii.gz" not in out
    code, _, err = _run(capsys, "study", "status", "--study", st)
    assert code == 2 and "--coordinator" in err
    code, _, err = _run(capsys, *base, "--reader", "mallory")
    assert code == 2 and "not registered" in err and "readers: r1, r2, rev" in err
    code, _, err = _run(capsys, "study", "reader", "add", "--study", st, "--reader", "r_3")
    assert code == 2 and "it becomes the folder readers/<id>/" in err and "'r-3'" in err
    assert _run(capsys, "study")[0] == 2 and _run(capsys, "study", "reader")[0] == 2
    # the log records who did what, with the operating-system user, chained by SHA-256
    events = ReaderStudy.open(st).events()
    assert [e["event"] for e in events].count("save") == 3 and all(e["hash"] and e["os_user"] for e in events)
    assert ReaderStudy.open(st).labels() == {"c1": "HRMM", "c2": "SRMM", "c3": "SRMM"}


def test_repeat_reads_wait_for_the_washout_and_do_not_show_the_first_read(tmp_path, cases_csv, capsys):
    from AnnotationQCLib.sessions import study_from_csv

    t0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
    now = [t0]
    study = study_from_csv(tmp_path / "s", "intra", cases_csv, washout_days=30, clock=lambda: now[0])
    study.add_reader("senior")
    src = study.source_image("c1", "T2")
    m = sitk.ReadImage(str(_mask(tmp_path / "a.nii.gz", src, 1, 4)))
    with pytest.raises(UserError, match="the first read is not submitted yet"):
        study.save_mask("senior", "c1", "T2", "ROI", m, session="repeat")
    study.save_mask("senior", "c1", "T2", "ROI", m, final=True)
    now[0] = t0 + timedelta(days=29)
    with pytest.raises(UserError, match=r"washout of 30 days: .* can start on 2024-03-31"):
        study.start_reading("senior", "c1", "T2", session="repeat")
    # the command line applies the same rule (a repeat read of a case whose first read is missing)
    code, _, err = _run(capsys, "study", "submit", "--study", study.folder, "--reader", "senior", "--case", "c2",
                        "--sequence", "T2", "--content", "ROI",
                        "--mask", _mask(tmp_path / "b.nii.gz", study.source_image("c2", "T2"), 1, 3),
                        "--session", "repeat")
    assert code == 2 and "the first read is not submitted yet" in err
    now[0] = t0 + timedelta(days=31)
    study.start_reading("senior", "c1", "T2", session="repeat")
    study.save_mask("senior", "c1", "T2", "ROI", m, session="repeat", final=True)
    # the repeat-session view never shows the first read
    assert {x["session"] for x in study.visible_masks("senior", "c1", session="repeat")} == {"repeat"}
    # repeat work lists get an order of their own
    first = study.assign("senior", ["c1", "c2", "c3"], "first")
    repeat = study.assign("senior", ["c1", "c2", "c3"], "repeat")
    assert sorted(first) == sorted(repeat) == ["c1", "c2", "c3"]
    assert study.assigned_cases("senior", "repeat") == repeat
    intra = study.agreement("senior", "senior", session_b="repeat")
    assert intra["dice"].tolist() == [1.0]


def test_concurrent_final_saves_keep_exactly_one(tmp_path, cases_csv):
    from AnnotationQCLib.sessions import study_from_csv

    study = study_from_csv(tmp_path / "s", "race", cases_csv)
    study.add_reader("r1")
    src = study.source_image("c2", "T2")
    masks = [sitk.ReadImage(str(_mask(tmp_path / f"m{i}.nii.gz", src, 1, 2 + i))) for i in range(4)]

    def save(m):
        try:
            ReaderStudy.open(study.folder).save_mask("r1", "c2", "T2", "ROI", m, final=True)
            return "ok"
        except UserError as exc:
            return str(exc)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(save, masks))
    assert results.count("ok") == 1 and all("never overwritten" in r for r in results if r != "ok")
    saves = [e for e in study.events() if e["event"] == "save"]
    assert len(saves) == 1
    from ClinicalMRICommonLib.files import sha256_file

    assert sha256_file(study.mask_path("r1", "c2", "T2", "ROI")) == saves[0]["sha256"]


def test_tampering_is_reported_and_a_torn_tail_is_not_fatal(tmp_path, cases_csv):
    from AnnotationQCLib.sessions import study_from_csv

    study = study_from_csv(tmp_path / "s", "audit", cases_csv)
    study.add_reader("r1")
    study.add_reader("r2")
    study.start_reading("r1", "c1", "T2")
    log = study.folder / "reads.jsonl"
    good = log.read_text(encoding="utf-8")
    lines = good.splitlines(keepends=True)
    first_reader = next(i for i, ln in enumerate(lines, start=1) if '"event": "reader"' in ln)
    log.write_text(good.replace('"role": "annotator"', '"role": "arbitrator"', 1), encoding="utf-8")
    with pytest.raises(UserError, match=rf"reads.jsonl was altered or is incomplete: record {first_reader} fails its "
                                        "SHA-256 chain check"):
        study.events()
    log.write_text("".join(lines[:1] + lines[2:]), encoding="utf-8")  # a record removed from the middle
    with pytest.raises(UserError, match="record 2 carries sequence number 3: records were removed"):
        study.events()
    log.write_text(good + '{"event": "start", "reader_id": "r1", "ses', encoding="utf-8")  # interrupted write
    assert len(study.events()) == len(lines)
    study.start_reading("r2", "c2", "T2")
    assert [e["seq"] for e in study.events()] == list(range(1, len(lines) + 2))
    assert log.read_text(encoding="utf-8").count("\n") == len(lines) + 1


def _make_pre_signing(folder, reads):
    """A study folder as versions before signing left it: study.json without signature (and,
    older still, without "audit"), labels.json a plain object, no head files."""
    meta = json.loads((folder / "study.json").read_text())
    for k in ("audit", "washout_days", "signature"):
        meta.pop(k, None)
    for case in meta["cases"].values():
        case.pop("image_sha256", None)
    (folder / "study.json").write_text(json.dumps(meta))
    labels = json.loads((folder / "labels.json").read_text())["labels"]
    (folder / "labels.json").write_text(json.dumps(labels))
    for name in ("reads.jsonl.head", "quality.jsonl.head", "quality.jsonl"):
        (folder / name).unlink()
    (folder / "reads.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reads))


def test_studies_made_before_the_chain_still_open(tmp_path, cases_csv):
    from AnnotationQCLib.sessions import study_from_csv
    from ClinicalMRICommonLib.errors import InputWarning

    study = study_from_csv(tmp_path / "s", "old", cases_csv)
    _make_pre_signing(study.folder, [{"event": "start", "reader_id": "r1", "role": "annotator", "session": "first",
                                      "case_id": "c1", "sequence": "T2", "time": "2024-01-01T00:00:00+00:00"}])
    with pytest.warns(InputWarning, match=r"unsigned \(created before version"):
        old = ReaderStudy.open(study.folder)
    assert old.verify().ok
    old.add_reader("r1")                                        # signed from then on
    events = old.events()
    assert [e["event"] for e in events] == ["start", "reader"] and "hash" not in events[0]
    assert events[1]["sig"] and events[1]["legacy"]["records"] == 1
    assert "signature" in json.loads((study.folder / "study.json").read_text())
    assert json.loads((study.folder / "labels.json").read_text())["labels"] == {"c1": "HRMM", "c2": "SRMM",
                                                                               "c3": "SRMM"}
    assert ReaderStudy.open(study.folder).labels()["c1"] == "HRMM"
    # once signed, its documents must stay signed
    meta = json.loads((study.folder / "study.json").read_text())
    meta.pop("signature")
    (study.folder / "study.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="study.json is not signed although its folder's log is"):
        ReaderStudy.open(study.folder)


def test_quality_grade_command(tmp_path, cases_csv, capsys):
    st = tmp_path / "study"
    assert _run(capsys, "study", "init", "--folder", st, "--name", "q", "--cases", cases_csv)[0] == 0
    assert _run(capsys, "study", "reader", "add", "--study", st, "--reader", "qa1")[0] == 0
    grade = ["quality", "grade", "--study", st, "--sequence", "T2", "--rater", "qa1"]
    code, _, err = _run(capsys, *grade, "--case", "c1", "--grade", "1")
    assert code == 2 and "give the reason" in err
    code, out, _ = _run(capsys, *grade, "--case", "c1", "--grade", "1", "--reason", "motion", "--json")
    rec = json.loads(out)
    assert code == 0 and rec["flagged"] and rec["scale"] == "cns" and rec["flag_reasons"] == ["grade 1 < 2"]
    # the flagged series is no longer offered
    code, out, _ = _run(capsys, "study", "status", "--study", st, "--reader", "qa1", "--json")
    assert {c["case_id"]: c["status"] for c in json.loads(out)["cases"]}["c1"] == {"T1": "not started"}
    # stroke scale with SNR/CNR measured from an ROI label map on the series
    img = sitk.ReadImage(str(tmp_path / "img/c2_T2.nii.gz"))
    arr = sitk.GetArrayFromImage(img)
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:3, 2:6, 2:6], lab[4:6, 10:14, 10:14], lab[1:3, 10:14, 2:6] = 1, 2, 3
    lm = sitk.GetImageFromArray(lab)
    lm.CopyInformation(img)
    sitk.WriteImage(lm, str(tmp_path / "rois.nii.gz"))
    code, out, _ = _run(capsys, *grade, "--case", "c2", "--likert", "4", "--roi-labelmap", tmp_path / "rois.nii.gz",
                        "--json")
    rec = json.loads(out)
    bg = arr[lab == 2]
    assert code == 0 and rec["scale"] == "stroke" and rec["likert"] == 4 and not rec["flagged"]
    assert rec["snr"] == pytest.approx(arr[lab == 1].mean() / bg.std(ddof=1), rel=1e-5)
    code, _, err = _run(capsys, *grade, "--case", "c2", "--likert", "4", "--grade", "2")
    assert code == 2 and "--grade 1-3" in err
    code, _, err = _run(capsys, *grade, "--case", "c2", "--likert", "4", "--snr", "nan")
    assert code == 2 and "SNR must be a finite number" in err
    code, _, err = _run(capsys, "quality", "grade", "--study", st, "--sequence", "T2", "--rater", "nobody",
                        "--case", "c2", "--likert", "4")
    assert code == 2 and "not registered" in err
    code, _, err = _run(capsys, *grade, "--case", "c2", "--likert", "6")
    assert code == 2 and "invalid choice" in err
    q = (st / "quality.jsonl").read_text().splitlines()
    assert len(q) == 2 and all(json.loads(x)["hash"] for x in q)
