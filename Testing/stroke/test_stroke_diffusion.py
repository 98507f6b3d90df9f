"""StrokeLesionLib.diffusion on the real ISLES'22 case 0009 and on rescaled copies of it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import same_grid
from StrokeLesionLib import diffusion as dif

CASE = "sub-strokecase0009_ses-0001"


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {
        "dwi": raw / f"{CASE}_dwi.nii.gz",
        "adc": raw / f"{CASE}_adc.nii.gz",
        "flair": raw / f"{CASE}_flair.nii.gz",
        "mask": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz",
    }


@pytest.fixture(scope="module")
def case(isles):
    return dif.load_diffusion(isles["dwi"], isles["adc"])


def test_isles_units_detected_as_1e3(case):
    # data README: the ISLES'22 ADC is in 10^-3 mm2/s, brain median about 0.9
    assert case.units.units == "1e-3mm2/s"
    assert case.units.detected
    assert 0.8 < case.units.brain_median_raw < 1.0
    assert case.units.brain_median_mm2s == pytest.approx(case.units.brain_median_raw * 1e-3)
    # the converted map is in mm2/s: CSF about 2.75e-3 mm2/s per the data README
    adc = sitk.GetArrayFromImage(case.adc_mm2s)
    brain = sitk.GetArrayFromImage(case.brain) > 0
    assert 2.0e-3 < np.percentile(adc[brain], 99) < 4.0e-3


@pytest.mark.parametrize("scale,expected", [(1e-3, "mm2/s"), (1.0, "1e-3mm2/s"), (1e3, "1e-6mm2/s")])
def test_units_detected_for_each_scale_and_conversion_agrees(case, isles, scale, expected):
    raw = sitk.ReadImage(str(isles["adc"])) * scale
    u = dif.detect_adc_units(raw, case.brain)
    assert u.units == expected
    conv = sitk.GetArrayFromImage(dif.adc_to_mm2s(raw, u))
    np.testing.assert_allclose(conv, sitk.GetArrayFromImage(case.adc_mm2s), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("scale", [50.0, 1e-5, 0.05])
def test_values_that_fit_no_unit_are_refused(case, isles, scale):
    raw = sitk.ReadImage(str(isles["adc"])) * scale
    with pytest.raises(UserError, match="fits none of the known ADC units.*--adc-units"):
        dif.detect_adc_units(raw, case.brain, path="x_adc.nii.gz")


def test_user_stated_units_override_detection(case, isles):
    raw = sitk.ReadImage(str(isles["adc"]))
    u = dif.detect_adc_units(raw, case.brain, "10^-6 mm^2/s")
    assert (u.units, u.detected, u.factor_to_mm2s) == ("1e-6mm2/s", False, 1e-6)
    assert dif.parse_adc_units("um2/ms") == "1e-3mm2/s"
    with pytest.raises(UserError, match="unknown ADC units"):
        dif.parse_adc_units("furlongs")


def test_threshold_must_be_in_mm2s():
    assert dif.check_threshold_mm2s(620e-6) == 620e-6
    with pytest.raises(UserError, match="620e-6"):
        dif.check_threshold_mm2s(620)


def test_b_value_from_isles_sidecar_and_eadc(case, isles, tmp_path):
    # the ISLES'22 DWI sidecar states DiffusionBValue 800 (not 1000): the sidecar wins
    b, src = dif.read_b_value(isles["dwi"])
    assert b == 800.0 and "DiffusionBValue" in src
    assert dif.read_b_value(isles["dwi"], 1000)[0] == 1000.0
    e = dif.eadc(case.adc_mm2s, b)
    a = sitk.GetArrayFromImage(case.adc_mm2s)
    ea = sitk.GetArrayFromImage(e)
    assert same_grid(e, case.dwi)
    idx = np.unravel_index(np.argmax(a), a.shape)
    assert ea[idx] == pytest.approx(np.exp(-800.0 * a[idx]), rel=1e-6)
    assert 0.0 <= ea.min() and ea.max() <= 1.0
    # a lesion (ADC low) is bright on eADC: lesion median eADC > brain median eADC
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(isles["mask"]))) > 0
    brain = sitk.GetArrayFromImage(case.brain) > 0
    assert np.median(ea[m]) > np.median(ea[brain])

    # without a sidecar: a dcm2niix .bval file, else a clear error
    dwi = tmp_path / "x_dwi.nii.gz"
    shutil.copy(isles["dwi"], dwi)
    with pytest.raises(UserError, match="--b-value"):
        dif.read_b_value(dwi)
    (tmp_path / "x_dwi.bval").write_text("0 1000 1000\n")
    assert dif.read_b_value(dwi) == (1000.0, "bval file x_dwi.bval")
    (tmp_path / "x_dwi.json").write_text("{not json")
    with pytest.raises(UserError, match="could not be read"):
        dif.read_b_value(dwi)
    (tmp_path / "x_dwi.json").write_text(json.dumps({"DiffusionBValue": 0}))
    assert dif.read_b_value(dwi)[0] == 1000.0


def test_brain_mask_covers_expert_lesion(case, isles):
    brain = sitk.GetArrayFromImage(case.brain) > 0
    vol_ml = brain.sum() * 8 / 1000
    assert 1000 < vol_ml < 1800          # adult brain incl. ventricles
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(isles["mask"]))) > 0
    assert (m & brain).sum() == m.sum() == 523
    # ventricles (CSF: high ADC) inside the brain are kept by the hole filling
    adc = sitk.GetArrayFromImage(case.adc_mm2s)
    assert (brain & (adc > 2.5e-3)).sum() > 1000


def test_flair_resampled_onto_dwi_grid(case, isles):
    flair = sitk.ReadImage(str(isles["flair"]))
    assert flair.GetSize() == (512, 512, 29)
    on_dwi = dif.resample_to_grid(flair, case.dwi, what="FLAIR")
    assert same_grid(on_dwi, case.dwi)
    assert dif.coverage_on_grid(flair, case.dwi) > 0.95
    f = sitk.GetArrayFromImage(on_dwi)
    brain = sitk.GetArrayFromImage(case.brain) > 0
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(isles["mask"]))) > 0
    # scanner-space alignment: brain tissue has signal on FLAIR; the (subacute) lesion is FLAIR-bright
    assert np.median(f[brain]) > 5 * np.median(f[~brain])
    assert np.median(f[m]) > np.median(f[brain])
    # the anti-aliasing sigma follows FWHM^2 = target^2 - source^2 (2 mm vs 0.449 mm in-plane, none in z)
    sig = dif._antialias_sigmas(flair, case.dwi)
    assert sig[0] == pytest.approx(np.sqrt(4 - 0.449 ** 2) / 2.3548, rel=0.01)
    assert sig[2] == 0.0


def test_grid_mismatch_and_bad_files_are_user_errors(isles, tmp_path):
    with pytest.raises(UserError, match="different grid"):
        dif.load_diffusion(isles["dwi"], isles["flair"])
    with pytest.raises(UserError, match="not found"):
        dif.load_diffusion(tmp_path / "nope.nii.gz", isles["adc"])
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="could not be read|truncated"):
        dif.load_diffusion(isles["dwi"], bad)
    far = sitk.ReadImage(str(isles["flair"]))
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    with pytest.raises(UserError, match="does not overlap"):
        dif.resample_to_grid(far, sitk.ReadImage(str(isles["dwi"])), what="FLAIR")
