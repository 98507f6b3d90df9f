"""The stroke-lesion console script, run as a subprocess the way users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).with_name("stroke-lesion")
CASE = "sub-strokecase0009_ses-0001"


def run(*args, cwd=None):
    if not EXE.exists():
        pytest.skip(f"{EXE} is not installed (pip install -e . installs the console script)")
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_user_error(p, *needles):
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz", "flair": raw / f"{CASE}_flair.nii.gz",
            "truth": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz"}


def test_candidate_then_metrics(isles, tmp_path):
    out = tmp_path / "cand.nii.gz"
    p = run("candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out", out, "--json",
            "--eadc-out", tmp_path / "eadc.nii.gz", "--shine-through-out", tmp_path / "st.nii.gz")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["adc_units"] == "1e-3mm2/s" and s["adc_units_detected"] is True
    assert s["b_value"] == 800.0                       # from the ISLES sidecar
    mask = sitk.ReadImage(str(out))
    dwi = sitk.ReadImage(str(isles["dwi"]))
    assert mask.GetSize() == dwi.GetSize() and np.allclose(mask.GetOrigin(), dwi.GetOrigin())
    n = int(sitk.GetArrayFromImage(mask).sum())
    assert s["volume_ml"] == pytest.approx(n * 8 / 1000) and s["n_lesions"] >= 1
    assert (tmp_path / "eadc.nii.gz").exists() and (tmp_path / "st.nii.gz").exists()

    p = run("metrics", "--truth", isles["truth"], "--pred", out, "--json")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert set(m) == {"dice", "abs_volume_diff_ml", "abs_lesion_count_diff", "lesion_f1"}
    assert m["dice"] >= 0.30 and m["lesion_f1"] >= 0.25          # measured 0.397 / 0.346
    assert m["abs_volume_diff_ml"] == pytest.approx(abs(s["volume_ml"] - 4.184))
    assert m["abs_lesion_count_diff"] == abs(s["n_lesions"] - 18)



def in_process(capsys, *args):
    """stroke-lesion's main() in this process (same parser, same exit codes; no interpreter start)."""
    from StrokeLesionLib.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_candidate_options_in_process(isles, tmp_path, capsys):
    out = tmp_path / "c.nii.gz"
    out.write_bytes(b"user's file")
    rc, _, err = in_process(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out", out)
    assert rc == 2 and "already exists" in err and "--overwrite" in err and out.read_bytes() == b"user's file"
    rc, so, err = in_process(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out",
                             tmp_path / "c2.nii.gz", "--adc-units", "1e-3mm2/s", "--json")
    assert rc == 0 and json.loads(so)["adc_units_detected"] is False
    rc, _, err = in_process(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out",
                            tmp_path / "c3.nii.gz", "--threshold", "620")
    assert rc == 2 and "620e-6" in err
    rc, _, err = in_process(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out",
                            tmp_path / "c4.nii.gz", "--adc-units", "parsecs")
    assert rc == 2 and "unknown ADC units" in err
    rc, _, err = in_process(capsys, "metrics", "--truth", isles["truth"], "--pred", isles["flair"])
    assert rc == 2 and "different grid" in err and "--resample-pred" in err


def test_metrics_both_empty_is_dice_one(isles, tmp_path, capsys):
    empty = sitk.ReadImage(str(isles["truth"])) * 0
    sitk.WriteImage(empty, str(tmp_path / "e.nii.gz"))
    rc, so, _ = in_process(capsys, "metrics", "--truth", tmp_path / "e.nii.gz", "--pred", tmp_path / "e.nii.gz",
                           "--json")
    assert rc == 0 and json.loads(so) == {"dice": 1.0, "abs_volume_diff_ml": 0.0, "abs_lesion_count_diff": 0,
                                          "lesion_f1": 1.0}


def test_bad_input_one_line_exit_2(isles, tmp_path):
    assert_user_error(run("candidate", "--dwi", tmp_path / "missing.nii.gz", "--adc", isles["adc"],
                          "--out", tmp_path / "o.nii.gz"), "not found", "missing.nii.gz")
    # an ADC on another grid (a crop of the real one: same voxels, shifted origin and size)
    crop = sitk.ReadImage(str(isles["adc"]))[10:100, 10:100, 5:60]
    sitk.WriteImage(crop, str(tmp_path / "adc_crop.nii.gz"))
    assert_user_error(run("candidate", "--dwi", isles["dwi"], "--adc", tmp_path / "adc_crop.nii.gz",
                          "--out", tmp_path / "o.nii.gz"), "different grid", "adc_crop.nii.gz")
    # values that fit no ADC unit: the real ADC x 50
    bad = sitk.ReadImage(str(isles["adc"])) * 50.0
    sitk.WriteImage(bad, str(tmp_path / "adc50.nii.gz"))
    assert_user_error(run("candidate", "--dwi", isles["dwi"], "--adc", tmp_path / "adc50.nii.gz",
                          "--out", tmp_path / "o.nii.gz"), "fits none", "--adc-units")
    assert not (tmp_path / "o.nii.gz").exists()
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b junk")
    assert_user_error(run("metrics", "--truth", isles["truth"], "--pred", tmp_path / "junk.nii.gz"), "junk.nii.gz")
    assert_user_error(run("candidate", "--dwi", isles["dwi"]), "required")
