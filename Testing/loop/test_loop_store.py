"""The loop folder without a network (AnnotationQCLib.loop.store): init from a cases table,
the standard set, accept/reject rules, exactly one of two concurrent accepts, imports from a
mask folder and from a reader study's consensus, the audit trail's hash chain, and bad input."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationQCLib.loop.store import LoopFolder
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import sha256_file
from loop_phantoms import ORIGIN, phantom, to_image, write_cases

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cases(tmp_path):
    specs = [{"case_id": "S1", "standard": True}, {"case_id": "S2", "standard": True},
             {"case_id": "P1"}, {"case_id": "P2"}, {"case_id": "P3"}]
    return write_cases(tmp_path / "data", specs, seed=3)


def _rewrite_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_init_builds_the_standard_set_and_the_pool(tmp_path, cases):
    csv_path, truths = cases
    loop, info = LoopFolder.create(tmp_path / "loop", csv_path, by="lead")
    assert info == {"folder": str(tmp_path / "loop"), "cases": 5, "standard": 2, "pool": 3, "sequences": ["image"],
                    "labels": "binary", "warnings": []}
    st = loop.state()
    assert {c: v["status"] for c, v in st["cases"].items()} == {"S1": "standard", "S2": "standard", "P1": "pool",
                                                                 "P2": "pool", "P3": "pool"}
    std = loop.standard_set()
    assert [s["case_id"] for s in std] == ["S1", "S2"]
    for s in std:
        assert s["mask"].name == f"{s['case_id']}_image_lesion.nii.gz"  # <patient>_<sequence>_<content>
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(s["mask"]))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(truths[s["case_id"]]))))
        assert not os.stat(s["mask"]).st_mode & stat.S_IWUSR  # read-only
    events = [r["event"] for r in loop.records()]
    assert events == ["init", "standard", "standard"]
    assert loop.records()[0]["by"] == "lead"
    # the case ids are kept as written (no numeric conversion), the images verified by checksum
    assert loop.read_images("P1")[0].GetSize() == (32, 32, 32)


def test_case_ids_with_leading_zeros_are_kept(tmp_path):
    csv_path, _ = write_cases(tmp_path / "d", [{"case_id": "001", "standard": True}, {"case_id": "002"}])
    loop, _ = LoopFolder.create(tmp_path / "loop", csv_path)
    assert sorted(loop.cases) == ["001", "002"]


def test_ids_that_pandas_would_turn_into_numbers_or_nan_are_kept_as_written(tmp_path):
    """The cases table is read by the shared CSV reader with every column as text: "1e3"
    (a float to pandas), "NA" (NaN), "010" (10) and a patient "0012" stay what they are."""
    ids = ["010", "1e3", "NA", "1"]
    specs = [{"case_id": c, "standard": i < 2} for i, c in enumerate(ids)]
    csv_path, _ = write_cases(tmp_path / "d", specs)
    rows = _rows(csv_path)
    for r in rows:
        r["patient_id"] = "00" + r["case_id"] if r["case_id"] != "NA" else ""
    loop, info = LoopFolder.create(tmp_path / "loop", _rewrite_csv(tmp_path / "d" / "ids.csv", rows))
    assert sorted(loop.cases) == sorted(ids) and (info["standard"], info["pool"]) == (2, 2)
    assert {c: v["patient_id"] for c, v in loop.cases.items()} == {"010": "00010", "1e3": "001e3", "NA": "NA",
                                                                  "1": "001"}
    # the reader itself: text columns as written, the other columns as pandas reads them
    import pandas as pd
    from ClinicalMRICommonLib.tables import read_csv_table

    table = tmp_path / "t.csv"
    table.write_text("case_id,volume,note\n007,1.5,NA\nNA,,x\n1e3,null,\n")
    df = read_csv_table(table, "t", str_columns=["case_id", "note"])
    assert df["case_id"].tolist() == ["007", "NA", "1e3"] and df["note"].tolist() == ["NA", "x", ""]
    pd.testing.assert_series_equal(df["volume"], pd.read_csv(table)["volume"])
    every = read_csv_table(table, "t", str_columns=True)
    assert every.to_dict("list") == {"case_id": ["007", "NA", "1e3"], "volume": ["1.5", "", "null"],
                                     "note": ["NA", "x", ""]}
    assert read_csv_table(table, "t")["case_id"].tolist()[0] == 7  # the default is unchanged


def test_second_sequence_on_another_grid_is_resampled_with_a_warning(tmp_path):
    csv_path, _ = write_cases(tmp_path / "d", [{"case_id": "A", "standard": True}, {"case_id": "B"}],
                              two_sequences=True)
    # B's t2 on a coarser grid covering the same field of view
    t2 = sitk.ReadImage(str(tmp_path / "d" / "B_t2.nii.gz"))
    coarse = sitk.Resample(t2, [16, 16, 16], sitk.Transform(), sitk.sitkLinear, t2.GetOrigin(),
                           [s * 2 for s in t2.GetSpacing()], t2.GetDirection(), 0.0, sitk.sitkFloat32)
    sitk.WriteImage(coarse, str(tmp_path / "d" / "B_t2.nii.gz"))
    loop, info = LoopFolder.create(tmp_path / "loop", csv_path)
    assert info["sequences"] == ["flair", "t2"]
    assert len(info["warnings"]) == 1 and "case B: t2 image" in info["warnings"][0] and "resampled" in info["warnings"][0]
    flair, t2b = loop.read_images("B")
    assert t2b.GetSize() == flair.GetSize() and np.allclose(t2b.GetSpacing(), flair.GetSpacing())
    entry = loop.cases["B"]["images"]["t2"]
    assert entry["path"] == "images/B_t2_resampled.nii.gz" and "resampled_from" in entry


def test_cns_label_maps(tmp_path):
    rng = np.random.default_rng(0)
    img, truth = phantom(rng)
    sitk.WriteImage(to_image(img), str(tmp_path / "c1.nii.gz"))
    labels = truth.astype(np.uint8)
    labels[truth > 0] = 1
    labels[12:16, 12:16, 12:16] = 3  # enhancing inside the whole tumour
    sitk.WriteImage(to_image(labels), str(tmp_path / "c1_labels.nii.gz"))
    bad = labels.copy()
    bad[0, 0, 0] = 5
    sitk.WriteImage(to_image(bad), str(tmp_path / "c1_bad.nii.gz"))
    sitk.WriteImage(to_image(img), str(tmp_path / "c2.nii.gz"))
    rows = [{"case_id": "C1", "image": "c1.nii.gz", "mask": "c1_labels.nii.gz"}, {"case_id": "C2", "image": "c2.nii.gz", "mask": ""}]
    loop, _ = LoopFolder.create(tmp_path / "loop", _rewrite_csv(tmp_path / "cases.csv", rows), sequence="FLAIR",
                                   labels="intra-axial")
    assert loop.labels["keys"] == ["whole-tumour", "tumour-body", "enhancing", "non-enhancing"]
    assert loop.standard_path("C1").name == "C1_FLAIR_labels.nii.gz"
    rows[0]["mask"] = "c1_bad.nii.gz"
    with pytest.raises(UserError, match=r"values 0, 1, 3, 5.*1 whole-tumour, 2 tumour-body, 3 enhancing, 4 non-enhancing"):
        LoopFolder.create(tmp_path / "loop2", _rewrite_csv(tmp_path / "cases2.csv", rows), labels="intra-axial")


@pytest.mark.parametrize("change, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "case_id"} for r in rows], "lacks the column case_id"),
    (lambda rows: [{("img" if k == "image" else k): v for k, v in r.items()} for r in rows], "has no image column"),
    (lambda rows: [{**r, "image_t2": r["image"]} for r in rows], "mixes an 'image' column"),
    (lambda rows: [{**r, "image": "missing.nii.gz"} if r["case_id"] == "P2" else r for r in rows],
     r"image of case 'P2' file not found: .*missing.nii.gz"),
    (lambda rows: [{**r, "image": ""} if r["case_id"] == "P2" else r for r in rows], "case 'P2' has no image"),
    (lambda rows: rows + [dict(rows[0])], "case id 'S1' appears twice"),
    (lambda rows: [{**r, "case_id": "S_1"} if r["case_id"] == "S1" else r for r in rows], "may only contain"),
])
def test_init_bad_tables(tmp_path, cases, change, message):
    csv_path, _ = cases
    bad = _rewrite_csv(tmp_path / "data" / "bad.csv", change(_rows(csv_path)))
    with pytest.raises(UserError, match=message):
        LoopFolder.create(tmp_path / "loop", bad)
    assert not (tmp_path / "loop").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".loop")]  # nothing half-built left


def test_init_bad_masks(tmp_path, cases):
    csv_path, truths = cases
    rows = _rows(csv_path)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(truths["S1"])))
    sitk.WriteImage(to_image((arr * 2).astype(np.uint8)), str(tmp_path / "data" / "two.nii.gz"))
    rows[0]["mask"] = "two.nii.gz"
    with pytest.raises(UserError, match=r"mask of case 'S1' .*two.nii.gz is not binary \(values 0, 2\)"):
        LoopFolder.create(tmp_path / "loop", _rewrite_csv(tmp_path / "data" / "b1.csv", rows))
    shifted = to_image(arr, origin=(ORIGIN[0] + 3.0, ORIGIN[1], ORIGIN[2]))
    sitk.WriteImage(shifted, str(tmp_path / "data" / "shifted.nii.gz"))
    rows[0]["mask"] = "shifted.nii.gz"
    with pytest.raises(UserError, match=r"different grid than the case's first image \(origin"):
        LoopFolder.create(tmp_path / "loop", _rewrite_csv(tmp_path / "data" / "b2.csv", rows))
    assert not (tmp_path / "loop").exists()


def test_init_refuses_an_existing_loop_or_a_non_empty_folder(tmp_path, cases):
    csv_path, _ = cases
    LoopFolder.create(tmp_path / "loop", csv_path)
    with pytest.raises(UserError, match="already holds a loop"):
        LoopFolder.create(tmp_path / "loop", csv_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not an empty folder"):
        LoopFolder.create(tmp_path / "other", csv_path)
    with pytest.raises(UserError, match="is not a loop folder"):
        LoopFolder(tmp_path / "other")


def test_accept_and_reject_rules(tmp_path, cases):
    csv_path, truths = cases
    loop, _ = LoopFolder.create(tmp_path / "loop", csv_path)
    with pytest.raises(UserError, match="has no model proposal"):
        loop.accept("P1", truths["P1"], "r1", "corrected")
    with pytest.raises(UserError, match="case 'NOPE' is not in the loop"):
        loop.accept("NOPE", truths["P1"], "r1", "redrawn")
    with pytest.raises(UserError, match="reader id"):
        loop.accept("P1", truths["P1"], "r 1", "redrawn")
    with pytest.raises(UserError, match="verdict 'fine' unknown"):
        loop.accept("P1", truths["P1"], "r1", "fine")
    with pytest.raises(UserError, match="already in the standard set"):
        loop.accept("S1", truths["S1"], "r1", "redrawn")
    rec = loop.accept("P1", truths["P1"], "r1", "redrawn", note="drawn from scratch")
    assert rec["event"] == "accept" and rec["by"] == "r1" and rec["data"]["verdict"] == "redrawn"
    assert rec["data"]["proposal_round"] is None and rec["data"]["sha256"] == sha256_file(loop.standard_path("P1"))
    with pytest.raises(UserError, match=r"already in the standard set \(accept by r1"):
        loop.accept("P1", truths["P1"], "r2", "redrawn")
    loop.reject("P2", "r1", reason="unusable")
    assert loop.state()["cases"]["P2"]["status"] == "redraw"
    with pytest.raises(UserError, match="already rejected"):
        loop.reject("P2", "r2")
    with pytest.raises(UserError, match="--verdict redrawn"):
        loop.accept("P2", truths["P2"], "r1", "corrected")
    loop.accept("P2", truths["P2"], "r1", "redrawn")
    with pytest.raises(UserError, match="nothing to reject"):
        loop.reject("P2", "r1")
    st = loop.status()
    assert st["standard"] == 4 and st["standard_origin"] == {"init": 2, "import": 0, "review": 2}
    assert st["stopping"]["met"] is False and st["stopping"]["reason"] == "no round trained yet"


def test_audit_trail_and_files_show_tampering(tmp_path, cases):
    csv_path, truths = cases
    loop, _ = LoopFolder.create(tmp_path / "loop", csv_path)
    loop.accept("P1", truths["P1"], "r1", "redrawn")
    audit = tmp_path / "loop" / "audit.jsonl"
    lines = audit.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["by"] = "someone-else"
    tampered = lines[:1] + [json.dumps(rec, sort_keys=True)] + lines[2:]
    audit.write_text("\n".join(tampered) + "\n")
    with pytest.raises(UserError, match="record 2 fails its SHA-256 chain check"):
        LoopFolder(tmp_path / "loop").state()
    audit.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # a record removed
    with pytest.raises(UserError, match="records were removed, inserted or reordered"):
        LoopFolder(tmp_path / "loop").status()
    audit.write_text("\n".join(lines[:-1]) + "\n")  # the last record cut off
    with pytest.raises(UserError, match=r"the last 1 record\(s\) were removed"):
        LoopFolder(tmp_path / "loop").status()
    audit.write_text("\n".join(lines) + "\n")
    # a standard mask replaced behind the loop's back
    p = loop.standard_path("S1")
    os.chmod(p, 0o644)
    sitk.WriteImage(sitk.ReadImage(str(truths["P3"])), str(p))
    with pytest.raises(UserError, match="standard annotation of case 'S1' .* was altered"):
        loop.standard_set()
    # an image changed after init
    img = tmp_path / "data" / "P2_image.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(truths["P3"])), str(img))
    with pytest.raises(UserError, match="changed since loop init"):
        loop.read_images("P2")


_ACCEPT_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path[:0] = [{paths}]
    from loop_phantoms import run_loop_cli
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.005)
    sys.exit(run_loop_cli(["accept", "--folder", sys.argv[2], "--case", "P3", "--mask", sys.argv[3], "--by",
                           sys.argv[4], "--verdict", "redrawn"]))
""")


def test_two_concurrent_accepts_exactly_one_wins(tmp_path, cases):
    csv_path, truths = cases
    LoopFolder.create(tmp_path / "loop", csv_path)
    paths = ", ".join(repr(p) for p in (str(Path(__file__).parent), str(ROOT / "AnnotationQC"),
                                        str(ROOT / "ClinicalMRICommon")))
    script = tmp_path / "accept.py"
    script.write_text(_ACCEPT_SCRIPT.format(paths=paths))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(go), str(tmp_path / "loop"), str(truths["P3"]), who],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("r1", "r2")]
    time.sleep(2.0)  # both processes imported and waiting
    go.touch()
    results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert loser[2].startswith("error: case 'P3' is already in the standard set") and "Traceback" not in loser[2]
    loop = LoopFolder(tmp_path / "loop")
    accepts = [r for r in loop.records() if r["event"] == "accept"]
    assert len(accepts) == 1 and accepts[0]["data"]["case_id"] == "P3"
    assert sha256_file(loop.standard_path("P3")) == accepts[0]["data"]["sha256"]


def test_import_from_a_mask_folder(tmp_path, cases):
    csv_path, truths = cases
    loop, _ = LoopFolder.create(tmp_path / "loop", csv_path)
    masks = tmp_path / "final" / "sub"
    masks.mkdir(parents=True)
    sitk.WriteImage(sitk.ReadImage(str(truths["P1"])), str(masks / "P1_image_consensus.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(truths["P2"])), str(masks / "P2.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(truths["S1"])), str(masks / "S1_image_lesion.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(truths["S1"])), str(masks / "X9_image_lesion.nii.gz"))
    res = loop.import_masks(tmp_path / "final", "lead", "stroke study final masks")
    assert res["added"] == ["P1", "P2"] and res["already_standard"] == ["S1"] and res["skipped"] == ["X9_image_lesion.nii.gz"]
    recs = [r for r in loop.records() if r["event"] == "standard" and r["data"]["source"] == "stroke study final masks"]
    assert [r["data"]["case_id"] for r in recs] == ["P1", "P2"]
    assert loop.status()["standard_origin"] == {"init": 2, "import": 2, "review": 0}
    sitk.WriteImage(sitk.ReadImage(str(truths["P3"])), str(masks / "P3_a.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(truths["P3"])), str(masks / "P3_b.nii.gz"))
    with pytest.raises(UserError, match="2 masks for case 'P3'"):
        loop.import_masks(tmp_path / "final", "lead")
    with pytest.raises(UserError, match="masks folder not found"):
        loop.import_masks(tmp_path / "nowhere", "lead")


def test_import_a_reader_study_consensus(tmp_path, cases):
    from AnnotationQCLib.sessions import ReaderStudy
    from ClinicalMRICommonLib.agreement.consensus import staple

    csv_path, truths = cases
    loop, _ = LoopFolder.create(tmp_path / "loop", csv_path)
    study = ReaderStudy.create(tmp_path / "study", "loop seed")
    for r in ("a1", "a2", "a3"):
        study.add_reader(r, "annotator")
    for cid in ("P1", "P2"):
        study.add_case(cid, cid, {"FLAIR": tmp_path / "data" / f"{cid}_image.nii.gz"})
    truth = sitk.ReadImage(str(truths["P1"]))
    arr = sitk.GetArrayFromImage(truth)
    readers = [arr, np.roll(arr, 1, axis=2), np.roll(arr, -1, axis=1)]
    for r, a in zip(("a1", "a2", "a3"), readers):
        m = sitk.GetImageFromArray(a)
        m.CopyInformation(truth)
        study.save_mask(r, "P1", "FLAIR", "lesion", m, final=True)
    study.save_mask("a1", "P2", "FLAIR", "lesion", sitk.ReadImage(str(truths["P2"])), final=True)
    res = loop.import_study_consensus(tmp_path / "study", "FLAIR", "lesion", "lead")
    assert res["added"] == ["P1"] and len(res["skipped"]) == 1 and res["skipped"][0].startswith("P2 (1 submitted")
    expected = sitk.GetArrayFromImage(staple([sitk.ReadImage(str(p)) for p in
                                              sorted((tmp_path / "study" / "readers").rglob("P1_*.nii.gz"))])[0])
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(loop.standard_path("P1"))))
    np.testing.assert_array_equal(got, (expected != 0).astype(np.uint8))
