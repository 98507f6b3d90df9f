"""``stroke-lesion candidate --loop-model DIR``: a trained pre-annotation loop model's
candidate beside the ADC-threshold one, on the small synthetic DWI/ADC phantom, with a tiny
(seeded, untrained) two-sequence UNet bundle written by ClinicalMRICommonLib's own bundle
writer. The network is untrained, so the tests check the plumbing against independent
computations (the same model's ``propose`` called directly, Dice recomputed with numpy from
the written files), not what a trained network finds (Testing/loop/test_loop_rounds.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from stroke_phantom import write_images

from ClinicalMRICommonLib import segmentation_model as sm
from StrokeLesionLib.cli import main
from StrokeLesionLib.diffusion import load_diffusion

PATCH = 16


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error_line(err: str, *needles) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("phantom"), extension=False)


def _bundle(folder, sequences=("dwi", "adc")):
    torch = pytest.importorskip("torch", reason="torch is not installed (the loop model needs it)")
    pytest.importorskip("monai", reason="MONAI is not installed")
    torch.manual_seed(0)
    settings = sm.network_settings("unet", len(sequences), 2, 2)
    net = sm.build_network(settings)
    sm.write_bundle(folder, net.state_dict(), {
        "network": settings, "sequences": list(sequences), "labels": {"mode": "binary", "content": "lesion"},
        "n_classes": 2, "patch_zyx": [PATCH] * 3, "normalisation": sm.NORMALISATION, "round": 2,
        "training": {"note": "seeded, untrained"}})
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("model") / "model")


def test_loop_candidate_beside_the_adc_threshold_one(images, bundle, tmp_path, capsys):
    out, loop_out, plain = tmp_path / "cand.nii.gz", tmp_path / "loop.nii.gz", tmp_path / "plain.nii.gz"
    rc, text, _ = cli(capsys, "candidate", "--dwi", images["dwi"], "--adc", images["adc"], "--out", out,
                      "--loop-model", bundle, "--loop-out", loop_out, "--device", "cpu", "--json")
    assert rc == 0
    s = json.loads(text)
    loop = s["loop_candidate"]
    # the ADC-threshold candidate is the one the command writes without a loop model
    assert cli(capsys, "candidate", "--dwi", images["dwi"], "--adc", images["adc"], "--out", plain)[0] == 0
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    assert np.array_equal(a, sitk.GetArrayFromImage(sitk.ReadImage(str(plain))) > 0)
    assert s["adc_threshold_candidate"]["volume_ml"] == pytest.approx(s["volume_ml"])
    # the loop candidate is the model's own proposal on the same pair (ADC in mm2/s)
    case = load_diffusion(images["dwi"], images["adc"])
    direct = sm.propose(bundle, {"dwi": case.dwi, "adc": case.adc_mm2s}, device="cpu")
    written = sitk.ReadImage(str(loop_out))
    b = sitk.GetArrayFromImage(written) > 0
    assert np.array_equal(b, sitk.GetArrayFromImage(direct["mask"]) > 0)
    assert written.GetSpacing() == pytest.approx(case.dwi.GetSpacing())
    assert written.GetOrigin() == pytest.approx(case.dwi.GetOrigin())
    assert 0.0 <= loop["score"] <= 1.0 and loop["reason"]
    assert loop["round"] == 2 and loop["out"] == str(loop_out)
    voxel_ml = float(np.prod(case.dwi.GetSpacing())) / 1000
    assert loop["volume_ml"] == pytest.approx(b.sum() * voxel_ml)
    both = (a & b).sum()
    expected = 2 * both / (a.sum() + b.sum()) if a.sum() + b.sum() else 1.0
    assert loop["dice_vs_adc_threshold"] == pytest.approx(expected)
    assert loop["overlap_ml"] == pytest.approx(both * voxel_ml)
    # the text report shows both side by side
    rc, text, _ = cli(capsys, "candidate", "--dwi", images["dwi"], "--adc", images["adc"], "--out", out,
                      "--loop-model", bundle, "--device", "cpu", "--overwrite")
    assert rc == 0
    assert "candidates side by side" in text and "ADC threshold" in text and "loop model" in text
    assert f"{s['volume_ml']:.3f}" in text and f"{loop['volume_ml']:.3f}" in text
    assert "(not written; --loop-out)" in text and "Dice" in text


def test_loop_model_bad_input_exit_2_one_line(images, bundle, tmp_path, capsys):
    out = tmp_path / "cand.nii.gz"
    base = ["candidate", "--dwi", images["dwi"], "--adc", images["adc"], "--out", out, "--device", "cpu"]
    # --loop-out without --loop-model
    rc, _, err = cli(capsys, *base, "--loop-out", tmp_path / "l.nii.gz")
    assert rc == 2
    one_error_line(err, "--loop-out", "--loop-model")
    # an altered bundle: the weights changed after it was written
    import shutil
    bad = tmp_path / "altered"
    shutil.copytree(bundle, bad)
    w = bad / sm.WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    rc, _, err = cli(capsys, *base, "--loop-model", bad, "--loop-out", tmp_path / "l.nii.gz")
    assert rc == 2
    one_error_line(err, str(bad))
    # a folder that is no model
    rc, _, err = cli(capsys, *base, "--loop-model", tmp_path)
    assert rc == 2
    one_error_line(err, str(tmp_path))
    # a model trained on other sequences
    t1 = _bundle(tmp_path / "t1model", sequences=("t1", "flair"))
    rc, _, err = cli(capsys, *base, "--loop-model", t1)
    assert rc == 2
    one_error_line(err, "dwi and adc")
    # --loop-out naming another output or an input
    rc, _, err = cli(capsys, *base, "--loop-model", bundle, "--loop-out", out)
    assert rc == 2
    one_error_line(err, "two outputs")
    rc, _, err = cli(capsys, *base, "--loop-model", bundle, "--loop-out", images["adc"])
    assert rc == 2
    one_error_line(err)
    # nothing was written by any refused run
    assert not out.exists() and not (tmp_path / "l.nii.gz").exists()
