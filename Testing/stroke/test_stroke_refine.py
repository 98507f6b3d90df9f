"""The optional second step of the candidate: refinement on DWI (candidate.refine_on_dwi),
exactly on a phantom and measured on the real ISLES'22 case against the expert mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from ClinicalMRICommonLib.errors import UserError
from StrokeLesionLib.candidate import (REFINE_ADC_LIMIT_MM2S, CandidateParams, candidate_mask, refine_on_dwi)
from StrokeLesionLib.diffusion import diffusion_from_images, load_diffusion
from StrokeLesionLib.metrics import lesion_metrics

CASE = "sub-strokecase0009_ses-0001"


def _phantom():
    """Tissue DWI 100 / ADC 800e-6 (1e-6 units). A core (DWI 300, ADC 450e-6) with a rim one
    voxel thick (DWI 250, ADC 700e-6: restricted, above 620e-6), a tail beyond the rim (DWI 250,
    ADC 700e-6, two voxels further) and a bright rim voxel with normal ADC (900e-6)."""
    rng = np.random.default_rng(3)
    shape = (24, 48, 48)
    dwi = np.zeros(shape)
    adc = np.zeros(shape)
    dwi[2:22, 4:44, 4:44] = 100 + rng.normal(0, 3, (20, 40, 40))
    adc[2:22, 4:44, 4:44] = 800 + rng.normal(0, 10, (20, 40, 40))
    rim = np.zeros(shape, bool)
    rim[9:15, 19:27, 19:27] = True
    core = np.zeros(shape, bool)
    core[10:14, 20:26, 20:26] = True
    rim &= ~core
    tail = np.zeros(shape, bool)
    tail[11, 27:31, 22] = True                     # continues the rim beyond it (rows 27..30; the rim ends at 26)
    dwi[rim | tail] = 250
    adc[rim | tail] = 700
    dwi[core] = 300
    adc[core] = 450
    dwi[12, 18, 22] = 250                          # outside the rim: DWI bright but ADC normal -> never added
    adc[12, 18, 22] = 900

    def im(a):
        i = sitk.GetImageFromArray(a)
        i.SetSpacing((1.0, 1.0, 2.0))
        return i
    return im(dwi), im(adc), core, rim, tail


def test_refinement_on_a_phantom():
    dwi, adc, core, rim, tail = _phantom()
    case = diffusion_from_images(dwi, adc)
    seeds = candidate_mask(case, CandidateParams(min_size_ml=0.004))
    seed = sitk.GetArrayFromImage(seeds.mask) > 0
    np.testing.assert_array_equal(seed, core)                      # step 1: ADC < 620e-6 -> the core only
    border = refine_on_dwi(case, seeds, mode="border")
    got = sitk.GetArrayFromImage(border.mask) > 0
    layer = ndi.binary_dilation(core, structure=np.ones((3, 3, 3), bool)) & ~core
    np.testing.assert_array_equal(got, core | (layer & rim))       # + the one-voxel layer: the rim
    assert got[12, 18, 22] == 0                                    # bright but ADC 900e-6 > 800e-6
    connected = refine_on_dwi(case, seeds, mode="connected")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(connected.mask) > 0, core | rim | tail)
    assert border.summary()["adc_limit_mm2s"] == REFINE_ADC_LIMIT_MM2S == 800e-6
    assert border.summary()["seed_adc_threshold_mm2s"] == 620e-6
    assert border.stats["added_voxels"] == int((layer & rim).sum())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seeds.mask) > 0, core)   # step 1 left unchanged
    with pytest.raises(UserError, match="below the candidate's threshold"):
        refine_on_dwi(case, seeds, adc_limit_mm2s=500e-6)
    with pytest.raises(UserError, match="unknown refinement mode"):
        refine_on_dwi(case, seeds, mode="grow")


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz",
            "truth": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz"}


def test_both_steps_on_isles_against_the_expert(isles):
    """The numbers docs/stroke_lesion.md reports (measured, not fitted: the constants come
    from the consensus and the literature). Step 2 adds border voxels, never removes any."""
    case = load_diffusion(isles["dwi"], isles["adc"])
    truth = sitk.ReadImage(str(isles["truth"]))
    step1 = candidate_mask(case)
    m1 = lesion_metrics(truth, step1.mask)
    assert m1["dice"] == pytest.approx(0.397, abs=0.002)
    seed = sitk.GetArrayFromImage(step1.mask) > 0
    adc = sitk.GetArrayFromImage(case.adc_mm2s)
    dwi = sitk.GetArrayFromImage(case.dwi)
    for mode in ("border", "connected"):
        r = refine_on_dwi(case, step1, mode=mode)
        got = sitk.GetArrayFromImage(r.mask) > 0
        assert (got >= seed).all()
        added = got & ~seed
        assert added.any() and (adc[added] < 800e-6).all() and (dwi[added] > step1.dwi_threshold).all()
        m2 = lesion_metrics(truth, r.mask)
        assert m2["lesion_f1"] > m1["lesion_f1"]               # growing merges fragments: fewer false lesions
        assert m2["abs_volume_diff_ml"] > m1["abs_volume_diff_ml"]   # ... and the false-positive seeds grow too


def test_candidate_command_writes_both_steps(isles, tmp_path, capsys):
    from StrokeLesionLib.cli import main
    plain = tmp_path / "plain.nii.gz"
    assert main(["candidate", "--dwi", str(isles["dwi"]), "--adc", str(isles["adc"]), "--out", str(plain)]) == 0
    capsys.readouterr()
    rc = main(["candidate", "--dwi", str(isles["dwi"]), "--adc", str(isles["adc"]), "--out", str(tmp_path / "c.nii.gz"),
               "--refined-out", str(tmp_path / "r.nii.gz"), "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0
    r = s["refined"]
    assert r["mode"] == "border" and r["adc_limit_mm2s"] == 800e-6 and r["seed_adc_threshold_mm2s"] == 620e-6
    assert r["dwi_threshold"] == pytest.approx(s["dwi_threshold"])
    # --out stays the plain candidate, voxel for voxel
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(plain))))
    rc = main(["candidate", "--dwi", str(isles["dwi"]), "--adc", str(isles["adc"]), "--out", str(tmp_path / "d.nii.gz"),
               "--refined-out", str(tmp_path / "d.nii.gz")])
    assert rc == 2 and "two outputs" in capsys.readouterr().err
    rc = main(["candidate", "--dwi", str(isles["dwi"]), "--adc", str(isles["adc"]), "--out", str(tmp_path / "e.nii.gz"),
               "--refined-out", str(tmp_path / "f.nii.gz"), "--refine-mode", "connected"])
    text = capsys.readouterr().out
    assert rc == 0 and "step 2, refined on DWI (connected)" in text and "ADC < 800 x 10^-6 mm2/s" in text
    assert "step 1, candidate: ADC < 620 x 10^-6 mm2/s" in text
