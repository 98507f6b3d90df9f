"""Training sessions: definition rules, submissions that are never overwritten, hand-computed
scores, the radiomics-feature ICC criterion (real pyradiomics), overlays and the report, and
the training-* commands."""

from __future__ import annotations

import json

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
    assert "case 3:" in msg and "not on the grid" in msg and "case 5:" in msg and "'P_5'" in msg
    assert not (tmp_path / "s2" / "session.json").exists()
    one_site = [dict(c, site="lumbar") for c in cases]
    s = TrainingSession.create(tmp_path / "s3", "one site", one_site, criteria={"dice": 0.9})
    assert s.meta["criteria"] == {"dice": 0.9, "icc": 0.75, "icc_form": "ICC(A,1)"}
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
    assert "PASSED" in (out / "report.html").read_text()
    for c in session.case_ids:
        assert (out / f"{c}_overlay.png").read_bytes()[:4] == b"\x89PNG"
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
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(session.folder / "reports" / "bob" / "case1_overlay.png")))
    rgb = png.astype(int)
    blue = (rgb[..., 2] > rgb[..., 0] + 80) & (rgb[..., 2] > rgb[..., 1] + 80)
    red = (rgb[..., 0] > rgb[..., 1] + 80) & (rgb[..., 0] > rgb[..., 2] + 80)
    assert blue.sum() > 1000 and red.sum() == 0
    with pytest.raises(UserError, match="not on the grid"):
        off = _img(_box(BOXES[4]), np.uint8)
        off.SetOrigin((5.0, 0.0, 0.0))
        session.submit("bob", "case5", off)


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
    short = tmp_path / "short.csv"
    table.drop(columns=["reference"]).to_csv(short, index=False)
    assert main(["training-create", "--folder", str(tmp_path / "x"), "--name", "x", "--cases", str(short)]) == 2
    assert "lacks column(s) reference" in capsys.readouterr().err
