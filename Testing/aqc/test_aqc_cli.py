"""The ``annotation-qc`` command line, run as a user runs it (subprocess of the installed
console script), plus in-process calls of ``main`` for the cheaper error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main

SCRIPT = Path(sys.executable).parent / "annotation-qc"
SF_ICC = {"ICC(1,1)": 0.165742, "ICC(A,1)": 0.289764, "ICC(C,1)": 0.714841,
          "ICC(1,k)": 0.442797, "ICC(A,k)": 0.620051, "ICC(C,k)": 0.909316}


def run(*args, cwd=None):
    if not SCRIPT.exists():
        pytest.skip(f"console script {SCRIPT} not installed (pip install -e .)")
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd,
                          check=False)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def write_mask(path, arr, spacing=(0.6, 1.5, 2.5)):
    im = sitk.GetImageFromArray(np.asarray(arr, dtype=np.uint8))
    im.SetSpacing(spacing)
    sitk.WriteImage(im, str(path))
    return path


@pytest.fixture(scope="module")
def sf_long(shared_data, tmp_path_factory):
    wide = pd.read_csv(shared_data / "stats" / "shrout_fleiss_1979.csv")
    long = wide.melt(id_vars="S", var_name="judge", value_name="score")
    path = tmp_path_factory.mktemp("icc") / "sf_long.csv"
    long.to_csv(path, index=False)
    return path


def test_icc_json_and_table(sf_long, capsys):
    proc = run("icc", "--input", sf_long, "--target", "S", "--rater", "judge", "--rating", "score", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON object
    assert list(out) == list(SF_ICC)
    for name, ref in SF_ICC.items():
        assert set(out[name]) == {"icc", "ci95", "F", "df1", "df2", "p"}
        assert out[name]["icc"] == pytest.approx(ref, abs=1e-5)
        assert len(out[name]["ci95"]) == 2
    assert out["ICC(C,1)"]["F"] == pytest.approx(11.027, abs=5e-4)
    assert (out["ICC(1,1)"]["df1"], out["ICC(1,1)"]["df2"]) == (5, 18)
    # readable table: Shrout & Fleiss names and Koo & Li interpretation
    assert main(["icc", "--input", str(sf_long), "--target", "S", "--rater", "judge", "--rating", "score"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ICC(C,k)"))
    assert "ICC(3,k)" in line and "0.9093" in line and "excellent" in line


def test_icc_bad_input_subprocess(sf_long, tmp_path):
    assert_one_line_error(run("icc", "--input", tmp_path / "missing.csv", "--target", "S", "--rater", "judge",
                              "--rating", "score"), "missing.csv", "not found")
    assert_one_line_error(run("icc", "--input", sf_long, "--target", "S", "--rater", "reader",
                              "--rating", "score"), "sf_long.csv", "'reader' (--rater) not found")
    const = tmp_path / "const.csv"
    pd.DataFrame({"t": [1, 1, 2, 2, 3, 3], "r": list("ababab"), "y": [3] * 6}).to_csv(const, index=False)
    assert_one_line_error(run("icc", "--input", const, "--target", "t", "--rater", "r", "--rating", "y"),
                          "identical")


def test_icc_more_errors_in_process(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"t": [1, 1, 2, 2], "r": list("abab"), "y": ["1", "2", "three", "4"]}).to_csv(bad, index=False)
    assert main(["icc", "--input", str(bad), "--target", "t", "--rater", "r", "--rating", "y"]) == 2
    assert "non-numeric value 'three'" in capsys.readouterr().err
    assert main(["icc", "--input", str(bad), "--target", "t"]) == 2  # argparse: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required" in err[0]
    assert main(["icc", "--input", str(tmp_path), "--target", "t", "--rater", "r", "--rating", "y"]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["training-report", "--session", str(tmp_path / "none"), "--trainee", "t1"]) == 2
    assert "not a training session" in capsys.readouterr().err


def test_compare_json_and_errors(tmp_path):
    a = np.zeros((10, 12, 14), np.uint8)
    b = a.copy()
    a[2:8, 3:9, 4:10] = 1
    b[2:8, 3:9, 3:11] = 1
    ra = write_mask(tmp_path / "a.nii.gz", a)
    rb = write_mask(tmp_path / "b.nii.gz", b)
    proc = run("compare", "--reference", ra, "--test", rb, "--tolerance-mm", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert list(out) == ["dice", "jaccard", "hd95_mm", "assd_mm", "surface_dice", "volume_ref_ml",
                         "volume_test_ml", "volume_diff_ml"]
    assert out["dice"] == pytest.approx(432 / 504)
    assert out["hd95_mm"] == pytest.approx(0.6, rel=1e-6)
    assert out["surface_dice"] == pytest.approx(240 / 344)
    assert out["volume_diff_ml"] == pytest.approx(72 * 0.6 * 1.5 * 2.5 / 1000)
    # masks on different grids -> one line, exit 2
    other = write_mask(tmp_path / "other.nii.gz", a, spacing=(1.0, 1.0, 1.0))
    assert_one_line_error(run("compare", "--reference", ra, "--test", other), "other.nii.gz",
                          "is not on the grid of the reference mask")


def test_compare_in_process_text_lesions_and_missing(tmp_path, capsys):
    a = np.zeros((6, 8, 8), np.uint8)
    a[1, 1, 1] = a[4, 6, 6] = 1
    b = np.zeros_like(a)
    b[1, 1, 1] = 1
    ra, rb = write_mask(tmp_path / "a.nrrd", a), write_mask(tmp_path / "b.nrrd", b)
    assert main(["compare", "--reference", str(ra), "--test", str(rb), "--lesions", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lesions"] == {"n_reference": 2, "n_test": 1, "matched": 1, "missed": 1, "extra": 0,
                              "lesion_f1": pytest.approx(2 / 3), "abs_lesion_count_diff": 1}
    assert main(["compare", "--reference", str(ra), "--test", str(rb)]) == 0
    text = capsys.readouterr().out
    assert "Dice" in text and "0.6667" in text
    assert main(["compare", "--reference", str(tmp_path / "nope.nii.gz"), "--test", str(rb)]) == 2
    err = capsys.readouterr().err
    assert "nope.nii.gz" in err and "not found" in err
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not an image")
    assert main(["compare", "--reference", str(corrupt), "--test", str(rb)]) == 2
    err = capsys.readouterr().err
    assert "corrupt.nii.gz" in err and ("could not be read" in err or "truncated" in err)


def test_feature_icc_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 30
    truth = rng.normal(size=(n, 4))
    cols = ["original_glcm_Contrast", "original_shape_Sphericity", "wavelet-LLH_firstorder_Mean",
            "original_ngtdm_Busyness"]
    a = pd.DataFrame(truth + 0.1 * rng.normal(size=(n, 4)), columns=cols)
    b = pd.DataFrame(truth + 0.1 * rng.normal(size=(n, 4)), columns=cols)
    b["original_ngtdm_Busyness"] = rng.normal(size=n)  # reader 2 disagrees on this one
    a.insert(0, "case", [f"p{i}" for i in range(n)])
    b.insert(0, "case", [f"p{i}" for i in range(n)])
    b = b.iloc[::-1]
    pa, pb = tmp_path / "r1.csv", tmp_path / "r2.csv"
    a.to_csv(pa, index=False)
    b.to_csv(pb, index=False)
    out, png = tmp_path / "icc.csv", tmp_path / "icc.png"
    proc = run("feature-icc", "--a", pa, "--b", pb, "--id-column", "case", "--out", out, "--plot", png)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out, index_col="feature")
    assert list(table.columns) == ["icc", "ci_low", "ci_high", "interpretation", "n"]
    assert table.loc["original_glcm_Contrast", "icc"] > 0.9
    assert table.loc["original_ngtdm_Busyness", "icc"] < 0.5
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "3 with ICC(A,1) >= 0.75" in proc.stdout
    # an existing table is kept unless --overwrite
    before_out = out.read_bytes()
    assert main(["feature-icc", "--a", str(pa), "--b", str(pb), "--id-column", "case", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before_out
    assert main(["feature-icc", "--a", str(pa), "--b", str(pb), "--id-column", "case", "--out", str(out),
                 "--overwrite", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["features"] == 4 and summary["at_or_above_threshold"] == 3 and summary["cases"] == n
    assert main(["feature-icc", "--a", str(pa), "--b", str(pb), "--id-column", "patient", "--out", str(out),
                 "--overwrite"]) == 2
    assert "id column 'patient' not found" in capsys.readouterr().err
    # --out and --plot may not name the same file
    assert main(["feature-icc", "--a", str(pa), "--b", str(pb), "--id-column", "case", "--out", str(out),
                 "--plot", str(out), "--overwrite"]) == 2
    assert "two outputs" in capsys.readouterr().err
    # the output may not be one of the inputs
    before = pa.read_bytes()
    assert main(["feature-icc", "--a", str(pa), "--b", str(pb), "--id-column", "case", "--out", str(pa),
                 "--overwrite"]) == 2
    assert "also an input" in capsys.readouterr().err and pa.read_bytes() == before


def test_consensus_cli(tmp_path, capsys):
    truth = np.zeros((8, 20, 20), np.uint8)
    truth[2:6, 5:15, 5:15] = 1
    over = truth.copy()
    over[2:6, 4:16, 4:16] = 1
    under = np.zeros_like(truth)
    under[3:5, 6:14, 6:14] = 1
    paths = [write_mask(tmp_path / f"r{i}.nii.gz", m) for i, m in enumerate((truth, over, under), start=1)]
    out, prob, dis = tmp_path / "staple.nii.gz", tmp_path / "prob.nii.gz", tmp_path / "dis.nii.gz"
    proc = run("consensus", "--masks", *paths, "--out", out, "--probability", prob, "--disagreement", dis,
               "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["method"] == "staple" and res["n_readers"] == 3 and res["voxels"] == int(truth.sum())
    assert [r["reader"] for r in res["readers"]] == [1, 2, 3]
    assert res["readers"][2]["sensitivity"] < 0.5 < res["readers"][0]["sensitivity"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), truth)
    d = sitk.GetArrayFromImage(sitk.ReadImage(str(dis)))
    assert set(np.unique(d)) == {0, 1, 2}
    assert sitk.ReadImage(str(prob)).GetPixelID() == sitk.sitkFloat32
    # majority vote in process; the output path may not be an input
    assert main(["consensus", "--masks", *map(str, paths), "--out", str(tmp_path / "mv.nii.gz"),
                 "--method", "majority", "--json"]) == 0
    mv = json.loads(capsys.readouterr().out)
    assert mv["voxels"] == int(truth.sum())
    before = paths[0].read_bytes()
    assert main(["consensus", "--masks", *map(str, paths), "--out", str(paths[0]), "--overwrite"]) == 2
    assert "also an input" in capsys.readouterr().err and paths[0].read_bytes() == before
    # --out and --disagreement may not be the same file; an existing output needs --overwrite
    assert main(["consensus", "--masks", *map(str, paths), "--out", str(dis), "--disagreement", str(dis),
                 "--overwrite"]) == 2
    assert "two outputs" in capsys.readouterr().err
    before = out.read_bytes()
    assert main(["consensus", "--masks", *map(str, paths), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["consensus", "--masks", *map(str, paths), "--out", str(out), "--method", "majority",
                 "--overwrite"]) == 0
    assert main(["consensus", "--masks", str(paths[0]), "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_empty_mask_gives_null_not_nan(tmp_path, capsys):
    z = write_mask(tmp_path / "z.nii.gz", np.zeros((4, 4, 4)))
    o = np.zeros((4, 4, 4))
    o[1, 1, 1] = 1
    one = write_mask(tmp_path / "o.nii.gz", o)
    assert main(["compare", "--reference", str(z), "--test", str(one), "--json"]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    out = json.loads(text)
    assert out["assd_mm"] is None and out["hd95_mm"] is None and out["dice"] == 0
    assert json.loads(text)["volume_test_ml"] == pytest.approx(0.6 * 1.5 * 2.5 / 1000, rel=1e-6)
