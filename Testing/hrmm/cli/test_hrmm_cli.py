"""``hrmm`` on bad input: one line naming the file and the problem, exit status 2, no
traceback; the manifest reports every problem at once with row numbers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.cohort import load_cohort_manifest

HRMM = [sys.executable, "-m", "HRMMPredictLib.cli"]


def run(*args):
    return subprocess.run(HRMM + [str(a) for a in args], capture_output=True, text=True)


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err
    assert err.startswith("error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from HRMMPredictLib.synthetic import generate_case

    d = tmp_path_factory.mktemp("case")
    c = generate_case(5, 1, 1.0, (8, 80, 96), (1.0, 1.0, 4.8))
    paths = {}
    for k, img in c.items():
        paths[k] = d / f"{k}.nii.gz"
        sitk.WriteImage(img, str(paths[k]))
    return paths


SMALL = """imageType: {Original: {}}
featureClass: {firstorder: [Mean, Entropy], glcm: [Contrast], shape: [VoxelVolume]}
setting: {normalize: true, normalizeScale: 100, removeOutliers: 3, binWidth: 5, voxelArrayShift: 300, label: 1}
"""


def test_extract_writes_one_row_of_features_only(case, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(SMALL)
    out = tmp_path / "f.csv"
    r = run("extract", "--image", case["t2"], "--mask", case["roi"], "--params", params, "--out", out)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert len(df) == 1
    assert list(df.columns) == ["original_shape_VoxelVolume", "original_firstorder_Mean",
                                "original_firstorder_Entropy", "original_glcm_Contrast"]
    r = run("extract", "--image", case["t2"], "--mask", case["roi"], "--params", params, "--out", out, "--diagnostics",
            "--overwrite")
    assert any(c.startswith("diagnostics_") for c in pd.read_csv(out).columns)


def test_extract_bad_inputs(case, tmp_path):
    out = tmp_path / "f.csv"
    assert_one_line_error(run("extract", "--image", tmp_path / "missing.nii.gz", "--mask", case["roi"], "--out", out),
                          "missing.nii.gz", "not found")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(Path(case["t2"]).read_bytes()[:300])
    assert_one_line_error(run("extract", "--image", corrupt, "--mask", case["roi"], "--out", out), "corrupt.nii.gz")
    # ROI on another grid; --resample-roi fixes it
    roi = sitk.ReadImage(str(case["roi"]))
    shifted = sitk.Resample(roi, [s // 2 for s in roi.GetSize()[:2]] + [roi.GetSize()[2]], sitk.Transform(),
                            sitk.sitkNearestNeighbor, roi.GetOrigin(), [2.0, 2.0, roi.GetSpacing()[2]],
                            roi.GetDirection(), 0, roi.GetPixelID())
    other = tmp_path / "roi_other_grid.nii.gz"
    sitk.WriteImage(shifted, str(other))
    assert_one_line_error(run("extract", "--image", case["t2"], "--mask", other, "--out", out),
                          "roi_other_grid.nii.gz", "different grid", "--resample-roi")
    params = tmp_path / "p.yaml"
    params.write_text(SMALL)
    r = run("extract", "--image", case["t2"], "--mask", other, "--params", params, "--out", tmp_path / "ok.csv",
            "--resample-roi")
    assert r.returncode == 0, r.stderr
    # empty ROI, tiny ROI
    empty = sitk.Image(roi.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(roi)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    assert_one_line_error(run("extract", "--image", case["t2"], "--mask", tmp_path / "empty.nii.gz", "--out", out),
                          "empty.nii.gz", "empty")
    tiny = sitk.Image(roi.GetSize(), sitk.sitkUInt8)
    tiny.CopyInformation(roi)
    tiny[40, 40, 4] = 1
    tiny[41, 40, 4] = 1
    sitk.WriteImage(tiny, str(tmp_path / "tiny.nii.gz"))
    assert_one_line_error(run("extract", "--image", case["t2"], "--mask", tmp_path / "tiny.nii.gz", "--out", out),
                          "tiny.nii.gz", "only 2 voxels")
    # NaN voxels
    img = sitk.ReadImage(str(case["t2"]))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, :3] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(tmp_path / "nan.nii.gz"))
    assert_one_line_error(run("extract", "--image", tmp_path / "nan.nii.gz", "--mask", case["roi"], "--out", out),
                          "nan.nii.gz", "3 NaN/infinite voxels")
    assert not out.exists() or out.stat().st_size > 0  # a failed run never leaves a half-written file


def test_extract_never_overwrites_on_failure(case, tmp_path):
    out = tmp_path / "keep.csv"
    out.write_text("precious,data\n1,2\n")
    r = run("extract", "--image", tmp_path / "missing.nii.gz", "--mask", case["roi"], "--out", out)
    assert r.returncode == 2
    assert out.read_text() == "precious,data\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]


def test_predict_bad_inputs(trained_bundle, case, tmp_path):
    path, _ = trained_bundle
    r = run("predict", "--t1", tmp_path / "no_t1.nii.gz", "--t2", case["t2"], "--fst2", case["fst2"],
            "--roi", case["roi"], "--model", path)
    assert_one_line_error(r, "no_t1.nii.gz", "not found")
    r = run("predict", "--t1", case["t1"], "--t2", case["t2"], "--fst2", case["fst2"], "--roi", case["roi"])
    assert r.returncode == 2 and "--model" in r.stderr and "Traceback" not in r.stderr  # argparse: sequence/model missing
    altered = tmp_path / "bundle"
    shutil.copytree(path, altered)
    (altered / "radiomics_params.yaml").write_text((altered / "radiomics_params.yaml").read_text() + "\n# edited\n")
    r = run("predict", "--t1", case["t1"], "--t2", case["t2"], "--fst2", case["fst2"], "--roi", case["roi"],
            "--model", altered)
    assert_one_line_error(r, "radiomics_params.yaml", "altered")
    r = run("predict", "--t1", case["t1"], "--t2", case["t2"], "--fst2", case["fst2"], "--roi", case["roi"],
            "--model", tmp_path)
    assert_one_line_error(r, "not a model bundle")


def test_manifest_reports_every_problem_with_row_numbers(small_cohort, tmp_path):
    src = pd.read_csv(small_cohort, dtype=str)
    base = Path(small_cohort).parent
    df = src.head(6).copy()
    for c in ("t1", "t2", "fst2", "roi", "roi_reader2", "roi_repeat"):
        df[c] = [str(base / v) for v in df[c]]
    df.loc[0, "t2"] = str(tmp_path / "gone.nii.gz")               # row 2: missing file
    df.loc[1, "label"] = "high"                                    # row 3: unknown label
    roi = sitk.ReadImage(df.loc[2, "roi"])
    empty = sitk.Image(roi.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(roi)
    sitk.WriteImage(empty, str(tmp_path / "empty_roi.nii.gz"))
    df.loc[2, "roi"] = str(tmp_path / "empty_roi.nii.gz")          # row 4: empty ROI
    img = sitk.ReadImage(df.loc[3, "fst2"])
    sitk.WriteImage(sitk.Shrink(img, [2, 2, 1]), str(tmp_path / "small_fst2.nii.gz"))
    df.loc[3, "fst2"] = str(tmp_path / "small_fst2.nii.gz")        # row 5: other grid
    df.loc[4, "lesion_id"] = df.loc[5, "lesion_id"]                # rows 6, 7: duplicate id
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    with pytest.raises(UserError) as ei:
        load_cohort_manifest(bad)
    msg = str(ei.value)
    assert "6 problem(s)" in msg, msg
    for needle in ("row 2: t2 file not found", "row 3: label 'high'", "row 4: roi", "is empty",
                   "row 5: fst2 is on a different grid", "row 6: lesion_id", "row 7: lesion_id"):
        assert needle in msg, (needle, msg)
    r = run("validate", "--manifest", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "row 5" in r.stderr
    r = run("validate", "--manifest", small_cohort)
    assert r.returncode == 0 and "OK" in r.stdout
    assert_one_line_error(run("validate", "--manifest", tmp_path / "none.csv"), "not found")
    (tmp_path / "cols.csv").write_text("patient_id,label\nP1,1\n")
    assert_one_line_error(run("validate", "--manifest", tmp_path / "cols.csv"), "lacks column(s) lesion_id")
