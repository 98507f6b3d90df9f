"""Training sessions: definition rules, submissions that are never overwritten, hand-computed
scores, the radiomics-feature ICC criterion (real pyradiomics), overlays and the report, and
the training-* commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main
from AnnotationQCLib.training import TrainingSession
from ClinicalMRICommonLib.errors import UserError

SHAPE = (8, 40, 40)
SPACING = (0.8, 0.8, 3.0)
# varied sizes (z0, z1, y0, y1, x0, x1) and sites
BOXES = [(2, 6, 10, 30, 10, 30), (1, 7, 5, 35, 8, 33), (3, 5, 15, 22, 15, 24), (2, 7, 8, 20, 20, 36),
         (1, 4, 12, 32, 6, 18)]
SITES = ["cervical", "thoracic", "lumbar", "lumbar", "thoracic"]


def _img(arr, dtype=np.float32):
    im = sitk.GetImageFromArray(arr.astype(dtype))
    im.SetSpacing(SPACING)
    return im


def _box(b):
    m = np.zeros(SHAPE, np.uint8)
    m[b[0]:b[1], b[2]:b[3], b[4]:b[5]] = 1
    return m


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("training_src")
    rng = np.random.default_rng(5)
    out = []
    for i, b in enumerate(BOXES, start=1):
        m = _box(b)
        # a lesion brighter than its surroundings, with texture; intensity varies by case
        img = rng.normal(100, 10, SHAPE) + m * (60 + 15 * i + rng.normal(0, 12, SHAPE))
        ip, rp = d / f"P00{i}_T2.nii.gz", d / f"P00{i}_T2_lesion.nii.gz"
        sitk.WriteImage(_img(img), str(ip))
        sitk.WriteImage(_img(m, np.uint8), str(rp))
        out.append({"case_id": f"case{i}", "patient_id": f"P00{i}", "sequence": "T2", "image": str(ip),
                    "reference": str(rp), "site": SITES[i - 1]})
    return out


@pytest.fixture
def session(tmp_path, cases):
    return TrainingSession.create(tmp_path / "session", "spine lesions 2024", cases)


def _grow_x(b):
    """The box with one more voxel column on the high-x face (a slight over-segmentation)."""
    m = _box(b)
    m[b[0]:b[1], b[2]:b[3], b[5]] = 1
    return m


def _half_z(b):
    """Only the lower half of the slices (a clear under-segmentation)."""
    m = np.zeros(SHAPE, np.uint8)
    z1 = b[0] + (b[1] - b[0]) // 2
    m[b[0]:z1, b[2]:b[3], b[4]:b[5]] = 1
    return m


def test_definition_rules(tmp_path, cases):
    with pytest.raises(UserError, match="at least 5 reference cases"):
        TrainingSession.create(tmp_path / "s1", "too small", cases[:4])
    bad = [dict(c) for c in cases]
    off = tmp_path / "off_grid.nii.gz"
    im = _img(_box(BOXES[0]), np.uint8)
    im.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(im, str(off))
    bad[2]["reference"] = str(off)
    bad[4]["patient_id"] = "P_5"
    with pytest.raises(UserError) as err:
        TrainingSession.create(tmp_path / "s2", "bad", bad)
    msg = str(err.value)
    assert "case 3 (case3):" in msg and "not on the grid" in msg and "case 5 (case5):" in msg and "'P_5'" in msg
    assert not (tmp_path / "s2" / "session.json").exists()
    one_site = [dict(c, site="lumbar") for c in cases]
    s = TrainingSession.create(tmp_path / "s3", "one site", one_site, criteria={"dice": 0.9})
    assert s.meta["criteria"] == {"dice": 0.9, "min_case_dice": None, "feature_error": None, "icc": None,
                                  "icc_form": "ICC(A,1)"}
    # images are stored relative to the session folder (the folder can be moved with them)
    assert all(not Path(c["image"]).is_absolute() for c in s.meta["cases"].values())
    assert all(Path(c["image"]).is_absolute() and Path(c["image"]).exists() for c in s.trainee_cases())
    assert any("one site" in w for w in s.meta["warnings"])
    with pytest.raises(UserError, match="already holds"):
        TrainingSession.create(tmp_path / "s3", "again", cases)
    # the trainee's view never includes the reference masks
    assert all("reference" not in c for c in s.trainee_cases())


def test_good_trainee_passes(session, tmp_path):
    for c, b in zip(session.case_ids, BOXES):
        session.submit("alice", c, _img(_grow_x(b), np.uint8))
    rep = session.write_report("alice")
    for row, b in zip(rep["cases"], BOXES):
        n = (b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4])
        face = (b[1] - b[0]) * (b[3] - b[2])
        assert row["dice"] == pytest.approx(2 * n / (2 * n + face))
        assert row["over_ml"] == pytest.approx(face * 0.8 * 0.8 * 3.0 / 1000, rel=1e-6)
        assert row["under_ml"] == 0
        assert row["overlay"].endswith("_overlay.png")
    ov = rep["overall"]
    assert ov["passed"] and ov["reasons"] == [] and ov["cases_submitted"] == 5
    assert ov["feature_icc"]["n_cases"] == 5 and ov["feature_icc"]["n_features"] > 20
    assert ov["feature_icc"]["median"] >= 0.75
    out = session.folder / "reports" / "alice"
    data = json.loads((out / "report.json").read_text())
    assert data["overall"]["passed"] is True
    page = (out / "report.html").read_text()
    # the extension's one report page (ClinicalMRICommonLib.report): the verdict banner, every
    # case's row, and each zoomed overlay embedded (the same bytes as the file beside it)
    assert '<div class="status status-passed">PASSED</div>' in page and "NOT PASSED" not in page
    import base64
    import re
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(session.case_ids)
    for c, b64 in zip(session.case_ids, embedded):
        assert (out / f"{c}_overlay.png").read_bytes()[:4] == b"\x89PNG"
        assert base64.b64decode(b64) == (out / f"{c}_overlay.png").read_bytes()
        assert f"<td>{c}</td>" in page and f"full size: {c}_overlay_full.png" in page
    assert f"<td>{rep['cases'][0]['dice']:.3f}</td>" in page.replace('<td class="num">', "<td>")
    # a submission is never overwritten
    before = session.trainee_mask_path("alice", "case1").read_bytes()
    with pytest.raises(UserError, match="already submitted"):
        session.submit("alice", "case1", _img(_box(BOXES[0]), np.uint8))
    assert session.trainee_mask_path("alice", "case1").read_bytes() == before


def test_under_segmenting_trainee_fails(session):
    for c, b in zip(session.case_ids[:4], BOXES[:4]):
        session.submit("bob", c, _img(_half_z(b), np.uint8))
    rep = session.evaluate("bob")
    ov = rep["overall"]
    assert not ov["passed"]
    assert any("1 of 5 cases not submitted: case5" in r for r in ov["reasons"])
    assert any(r.startswith("mean Dice") for r in ov["reasons"])
    for row, b in zip(rep["cases"], BOXES):
        nz = b[1] - b[0]
        kept = nz // 2
        assert row["dice"] == pytest.approx(2 * kept / (nz + kept))
        assert row["tendency"] == "under-segments" and row["over_ml"] == 0
    # the overlay shows the under-segmentation (blue), and no over-segmentation (red)
    session.write_report("bob")
    page = (session.folder / "reports" / "bob" / "report.html").read_text()
    assert '<div class="status status-failed">NOT PASSED</div>' in page
    assert "1 of 5 cases not submitted: case5" in page and "under-segments" in page
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(session.folder / "reports" / "bob" / "case1_overlay.png")))
    rgb = png.astype(int)
    blue = (rgb[..., 2] > rgb[..., 0] + 80) & (rgb[..., 2] > rgb[..., 1] + 80)
    red = (rgb[..., 0] > rgb[..., 1] + 80) & (rgb[..., 0] > rgb[..., 2] + 80)
    assert blue.sum() > 1000 and blue.sum() > 20 * red.sum()  # red only in the legend
    with pytest.raises(UserError, match="not on the grid"):
        off = _img(_box(BOXES[4]), np.uint8)
        off.SetOrigin((5.0, 0.0, 0.0))
        session.submit("bob", "case5", off)
    # lesion-wise feedback: every lesion found, but its last slices were left out
    assert all(r["lesions"]["matched"] == 1 and r["lesions"]["missed"] == 0 for r in rep["cases"])
    assert all(r["slice_coverage"]["end_slices_missed"] == 1 for r in rep["cases"])
    hints = " ".join(ov["hints"])
    assert "You miss the first/last slices of lesions: 4 of 8 lesion ends not annotated" in hints
    assert "You under-segment: the reference border lies ~" in hints
    # the inside offset is measured in mm along z (3 mm slices): at least one slice
    assert all(r["border"]["inside_mm"] >= 3.0 - 1e-3 for r in rep["cases"])


def test_trainee_ids_unknown_trainees_and_withdrawal(session):
    with pytest.raises(UserError, match=r"trainee id 'Dr. Li' .* it becomes the folder trainees/<id>/ .*'Dr-Li'"):
        session.submit("Dr. Li", "case1", _img(_box(BOXES[0]), np.uint8))
    session.submit("alice", "case1", _img(_half_z(BOXES[0]), np.uint8))
    with pytest.raises(UserError, match=r"trainee 'nobody' has no submission .*trainees: alice"):
        session.evaluate("nobody")
    assert not (session.folder / "reports" / "nobody").exists()
    # a wrong submission is withdrawn (logged, file kept) and submitted again
    first = session.trainee_mask_path("alice", "case1")
    with pytest.raises(UserError, match="give the reason"):
        session.withdraw("alice", "case1", "")
    rec = session.withdraw("alice", "case1", "drew the wrong lesion", by="instructor")
    assert rec["event"] == "withdraw" and rec["by"] == "instructor" and rec["os_user"]
    assert (session.folder / rec["moved_to"]).exists() and not first.exists()
    session.submit("alice", "case1", _img(_box(BOXES[0]), np.uint8))
    assert session.evaluate("alice")["cases"][0]["dice"] == pytest.approx(1.0)
    listing = session.listing()
    assert listing["trainees"]["alice"]["case1"] is not None and listing["trainees"]["alice"]["case2"] is None
    assert [w["reason"] for w in listing["withdrawn"]] == ["drew the wrong lesion"]
    with pytest.raises(UserError, match="no submission of case 'case2' to withdraw"):
        session.withdraw("alice", "case2", "none")
    # a submitted mask changed afterwards is noticed (its SHA-256 is in the log)
    path = session.trainee_mask_path("alice", "case1")
    path.chmod(0o644)
    sitk.WriteImage(_img(_grow_x(BOXES[0]), np.uint8), str(path))
    with pytest.raises(UserError, match="was changed after it was submitted"):
        session.evaluate("alice")
    # so is an edited log record
    log = session.folder / "submissions.jsonl"
    log.write_text(log.read_text().replace("drew the wrong lesion", "other"), encoding="utf-8")
    with pytest.raises(UserError, match="fails its SHA-256 chain check"):
        session.trainees()


def test_concurrent_submissions_keep_exactly_one(session):
    from concurrent.futures import ThreadPoolExecutor

    masks = [_img(_box(BOXES[0]), np.uint8), _img(_half_z(BOXES[0]), np.uint8)] * 2

    def submit(m):
        try:
            session.submit("erin", "case1", m)
            return "ok"
        except UserError as exc:
            return str(exc)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(submit, masks))
    assert results.count("ok") == 1 and all("already submitted" in r for r in results if r != "ok")
    assert len([r for r in session._log.records() if r["event"] == "submit"]) == 1
    assert not list((session.folder / "trainees" / "erin").glob(".*"))  # no temporary file left


def test_session_folder_can_be_moved(tmp_path, cases):
    root = tmp_path / "course"
    (root / "images").mkdir(parents=True)
    moved = []
    for c in cases:
        c = dict(c)
        for k in ("image", "reference"):
            dest = root / "images" / Path(c[k]).name
            shutil.copy(c[k], dest)
            c[k] = str(dest)
        moved.append(c)
    s = TrainingSession.create(root / "session", "portable", moved)
    for cid, b in zip(s.case_ids, BOXES):
        s.submit("t1", cid, _img(_box(b), np.uint8))
    shutil.move(str(root), str(tmp_path / "elsewhere"))
    rep = TrainingSession.open(tmp_path / "elsewhere" / "session").evaluate("t1")
    assert rep["overall"]["passed"] and rep["overall"]["mean_dice"] == pytest.approx(1.0)
    shutil.rmtree(tmp_path / "elsewhere" / "images")
    with pytest.raises(UserError, match=r"image of case 'case1' not found .*relative to the session folder"):
        TrainingSession.open(tmp_path / "elsewhere" / "session").evaluate("t1")


def test_training_cli(tmp_path, cases, capsys):
    table = pd.DataFrame(cases)
    csv = tmp_path / "cases.csv"
    table.to_csv(csv, index=False)
    folder = tmp_path / "cli_session"
    assert main(["training-create", "--folder", str(folder), "--name", "cli", "--cases", str(csv)]) == 0
    capsys.readouterr()
    for c, b in zip(table["case_id"], BOXES):
        mpath = tmp_path / f"{c}_mask.nii.gz"
        sitk.WriteImage(_img(_grow_x(b), np.uint8), str(mpath))
        assert main(["training-submit", "--session", str(folder), "--trainee", "carol", "--case", c,
                     "--mask", str(mpath)]) == 0
    capsys.readouterr()
    assert main(["training-report", "--session", str(folder), "--trainee", "carol", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["overall"]["passed"] is True and len(rep["cases"]) == 5
    # a re-run keeps the earlier report unless --overwrite
    report_json = folder / "reports" / "carol" / "report.json"
    before = report_json.read_bytes()
    assert main(["training-report", "--session", str(folder), "--trainee", "carol"]) == 2
    assert "already exists" in capsys.readouterr().err and report_json.read_bytes() == before
    assert main(["training-report", "--session", str(folder), "--trainee", "carol", "--overwrite"]) == 0
    assert "trainee carol: PASSED" in capsys.readouterr().out
    # NOT PASSED is a negative verdict: exit status 1
    assert main(["training-submit", "--session", str(folder), "--trainee", "dave", "--case", "case1",
                 "--mask", str(tmp_path / "case1_mask.nii.gz")]) == 0
    assert main(["training-report", "--session", str(folder), "--trainee", "dave"]) == 1
    assert "trainee dave: NOT PASSED" in capsys.readouterr().out
    assert main(["training-submit", "--session", str(folder), "--trainee", "carol", "--case", "case9",
                 "--mask", str(tmp_path / "case1_mask.nii.gz")]) == 2
    assert "not part of training session" in capsys.readouterr().err
    # an unknown trainee is refused with the list of trainees (no empty NOT PASSED report)
    assert main(["training-report", "--session", str(folder), "--trainee", "nobody"]) == 2
    assert "trainees: carol, dave" in capsys.readouterr().err and not (folder / "reports" / "nobody").exists()
    # list, withdraw, summary
    assert main(["training-list", "--session", str(folder), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing["trainees"]) == {"carol", "dave"} and listing["trainees"]["dave"]["case2"] is None
    assert "reference" not in json.dumps(listing["cases"])
    assert main(["training-withdraw", "--session", str(folder), "--trainee", "dave", "--case", "case1",
                 "--reason", "submitted the wrong file"]) == 0
    assert "can be submitted again" in capsys.readouterr().out
    assert main(["training-list", "--session", str(folder)]) == 0
    assert "withdrawn: dave case1" in capsys.readouterr().out
    assert main(["training-summary", "--session", str(folder), "--json"]) == 0
    summ = json.loads(capsys.readouterr().out)
    assert list(summ["trainees"]) == ["carol"] and summ["trainees"]["carol"]["passed"]
    assert len(summ["table"]) == 5 and {h["case_id"] for h in summ["hardest_cases"]} == set(table["case_id"])
    assert summ["hardest_cases"][0]["mean_dice"] <= summ["hardest_cases"][-1]["mean_dice"]
    csv_rows = pd.read_csv(folder / "summary" / "summary.csv")
    assert list(csv_rows.columns[:4]) == ["trainee", "case_id", "submitted", "dice"] and len(csv_rows) == 5
    summary_page = (folder / "summary" / "summary.html").read_text()
    assert "Hardest cases" in summary_page
    assert '<div class="status status-passed">1 of 1 trainee(s) PASSED' in summary_page
    assert "<b>PASSED</b>" in summary_page
    assert main(["training-summary", "--session", str(folder)]) == 2
    assert "already exists" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    table.drop(columns=["reference"]).to_csv(short, index=False)
    assert main(["training-create", "--folder", str(tmp_path / "x"), "--name", "x", "--cases", str(short)]) == 2
    assert "lacks column(s) reference" in capsys.readouterr().err


def test_version1_sessions_still_work(tmp_path, cases):
    """A session written before version 2: absolute image paths, NIfTI references, the feature
    ICC criterion, trainee masks saved as plain files without a submission log."""
    from ClinicalMRICommonLib.files import sha256_file

    folder = tmp_path / "v1"
    (folder / "reference").mkdir(parents=True)
    stored = {}
    for c, b in zip(cases, BOXES):
        name = f"{c['patient_id']}_T2_lesion.nii.gz"
        sitk.WriteImage(_img(_box(b), np.uint8), str(folder / "reference" / name))
        stored[c["case_id"]] = {"patient_id": c["patient_id"], "sequence": "T2", "content": "lesion", "site": c["site"],
                                "image": c["image"], "reference": f"reference/{name}",
                                "reference_sha256": sha256_file(folder / "reference" / name)}
        (folder / "trainees" / "old-t").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(_img(_grow_x(b), np.uint8), str(folder / "trainees" / "old-t" / name))
    (folder / "session.json").write_text(json.dumps({
        "format": "annotationqc-training/1", "name": "old", "created": "2024-01-01T00:00:00+00:00",
        "criteria": {"dice": 0.8, "icc": 0.75, "icc_form": "ICC(A,1)"}, "warnings": [], "cases": stored}))
    s = TrainingSession.open(folder)
    assert s.trainees() == ["old-t"]
    ov = s.evaluate("old-t")["overall"]
    assert ov["passed"] and ov["feature_icc"]["criterion"] and ov["feature_icc"]["median"] >= 0.75
    new = s.submit("new-t", "case1", _img(_box(BOXES[0]), np.uint8))
    assert new.name == "P001_T2_lesion.nii.gz" and s.trainees() == ["new-t", "old-t"]
    s.withdraw("old-t", "case2", "legacy file was wrong")
    assert ("old-t", "case2") not in s.submissions() and ("old-t", "case1") in s.submissions()
