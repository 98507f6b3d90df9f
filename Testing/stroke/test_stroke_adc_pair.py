"""ADC unit windows at their edges, and the DWI/ADC pair check (is the 'ADC' an ADC map of
this DWI?) on the real ISLES'22 case and on maps made from it: a b0 (the physics' S0 =
DWI x exp(b x ADC)), an eADC, the DWI itself, exchanged files, and sidecars that say what
the image is."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from StrokeLesionLib import diffusion as dif

CASE = "sub-strokecase0009_ses-0001"
B = 800.0                                   # the ISLES'22 DWI's b-value (its sidecar)


# ---------------------------------------------------------------------------------------
# unit windows: every edge, just inside and just outside (issue 18: a bound moved from 3.0e-3
# to 3.0e-2 went unnoticed)

EDGES = [("mm2/s", 0.3e-3, 3.0e-3), ("1e-3mm2/s", 0.3, 3.0), ("1e-6mm2/s", 300.0, 3000.0)]


@pytest.mark.parametrize("unit,lo,hi", EDGES)
def test_unit_window_edges(unit, lo, hi):
    eps = 1e-3                                       # 0.1 %: far above float error, far below the 100x gaps
    assert dif.units_from_median(lo) == unit         # edges are inclusive
    assert dif.units_from_median(hi) == unit
    assert dif.units_from_median(lo * (1 + eps)) == unit
    assert dif.units_from_median(hi * (1 - eps)) == unit
    assert dif.units_from_median(lo * (1 - eps)) is None
    assert dif.units_from_median(hi * (1 + eps)) is None


def test_window_constants_are_the_documented_ones():
    assert dif.BRAIN_MEDIAN_ADC_RANGE_MM2S == (0.3e-3, 3.0e-3)
    assert dif.ADC_UNITS == {"mm2/s": 1.0, "1e-3mm2/s": 1e-3, "1e-6mm2/s": 1e-6}


@pytest.mark.parametrize("unit,lo,hi", EDGES)
def test_unit_window_edges_through_an_image(unit, lo, hi):
    """detect_adc_units on images whose brain median sits just inside / outside each edge."""
    brain = sitk.Image([6, 6, 6], sitk.sitkUInt8) + 1
    for value, fits in ((lo * 1.001, True), (hi * 0.999, True), (lo * 0.999, False), (hi * 1.001, False)):
        adc = sitk.Image([6, 6, 6], sitk.sitkFloat64) + value
        if fits:
            assert dif.detect_adc_units(adc, brain).units == unit
        else:
            with pytest.raises(UserError, match="fits none"):
                dif.detect_adc_units(adc, brain)


# ---------------------------------------------------------------------------------------
# the pair check


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz"}


@pytest.fixture(scope="module")
def images(isles):
    dwi = sitk.ReadImage(str(isles["dwi"]))
    adc = sitk.ReadImage(str(isles["adc"]))                       # 10^-3 mm2/s
    d = sitk.Cast(dwi, sitk.sitkFloat64)
    a = sitk.Cast(adc, sitk.sitkFloat64)
    b0 = d * sitk.Exp(a * (B * 1e-3))                             # S0 = DWI exp(b ADC): what a b0 shows
    return {"dwi": dwi, "adc": adc, "b0": b0, "eadc": sitk.Exp(a * (-B * 1e-3))}


def test_the_real_pair_passes_with_its_reasons(isles):
    case = dif.load_diffusion(isles["dwi"], isles["adc"])
    pc = case.pair_check
    assert pc["problems"] == [] and case.warnings == []
    assert pc["sidecar"] == "adc"                                  # ImageType [..., "ADC_UNSPECIFIED", "ADC", ...]
    assert 2.0e-3 < pc["csf_adc_mm2s"] < 3.5e-3                    # CSF near free water, 3.0e-3
    assert pc["csf_to_tissue"] > 2


def test_a_b0_given_as_adc_is_refused(images):
    b0 = images["b0"]
    brain = dif.brain_mask(images["dwi"])
    med = float(np.median(sitk.GetArrayViewFromImage(b0)[sitk.GetArrayViewFromImage(brain) > 0]))
    assert dif.units_from_median(med) == "1e-6mm2/s"              # the issue: the b0 fits the 1e-6 window
    with pytest.raises(UserError, match="free water.*b0"):
        dif.diffusion_from_images(images["dwi"], b0)


@pytest.mark.parametrize("kind", ["eadc", "dwi"])
def test_maps_dark_in_csf_are_refused(images, kind):
    m = images[kind] if kind == "eadc" else images["dwi"] * 2.0    # DWI x 2: its median fits 1e-6
    with pytest.raises(UserError, match="not brighter in CSF"):
        dif.diffusion_from_images(images["dwi"], m)


def test_exchanged_dwi_and_adc_are_refused(images):
    with pytest.raises(UserError, match="DWI and ADC look exchanged"):
        dif.diffusion_from_images(images["adc"], images["dwi"] * 2.0)


def test_stated_units_force_with_a_warning(images):
    case = dif.diffusion_from_images(images["dwi"], images["b0"], adc_units="1e-6mm2/s")
    assert case.units.units == "1e-6mm2/s" and not case.units.detected
    assert len(case.warnings) == 1 and "b0" in case.warnings[0] and "used anyway" in case.warnings[0]


def test_a_b0_checks_the_adc_by_physics(images):
    ok = dif.diffusion_from_images(images["dwi"], images["adc"], b0=images["b0"], b_value=B)
    assert any("ln(b0/DWI)/b" in c for c in ok.pair_check["checks"])
    assert ok.pair_check["b0_implied_adc_mm2s"] == pytest.approx(0.84e-3, rel=0.05)
    # an ADC that is 3x too large (wrong units stated) disagrees with the b0
    case = dif.diffusion_from_images(images["dwi"], images["adc"] * 3.0, adc_units="1e-3mm2/s",
                                     b0=images["b0"], b_value=B)
    assert any("disagrees with ln(b0/DWI)/b" in w for w in case.warnings)


def test_phantom_without_csf_skips_the_csf_checks():
    rng = np.random.default_rng(1)
    shape = (20, 40, 40)
    dwi = np.zeros(shape)
    adc = np.zeros(shape)
    dwi[2:18, 4:36, 4:36] = 400 + rng.normal(0, 10, (16, 32, 32))
    adc[2:18, 4:36, 4:36] = 0.8 + rng.normal(0, 0.02, (16, 32, 32))
    case = dif.diffusion_from_images(sitk.GetImageFromArray(dwi), sitk.GetImageFromArray(adc))
    assert case.pair_check["problems"] == [] and any("no CSF contrast" in c for c in case.pair_check["checks"])


def _copy_with_sidecar(isles, tmp_path, meta):
    dst = tmp_path / "x_adc.nii.gz"
    shutil.copyfile(isles["adc"], dst)
    (tmp_path / "x_adc.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("meta,match", [
    ({"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "ND"]}, "diffusion-weighted or b0"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"]}, "diffusion-weighted or b0"),   # ISLES DWI's own
    ({"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "EXP", "ND"]}, "eADC"),
    ({"SeriesDescription": "ep2d_diff_b0"}, "diffusion-weighted or b0"),
])
def test_sidecars_that_say_it_is_no_adc_are_refused(isles, tmp_path, meta, match):
    adc = _copy_with_sidecar(isles, tmp_path, meta)
    with pytest.raises(UserError, match=match):
        dif.load_diffusion(isles["dwi"], adc)
    case = dif.load_diffusion(isles["dwi"], adc, adc_units="1e-3mm2/s")     # stated units force
    assert case.warnings and match.split()[0] in case.warnings[0]


def test_sidecars_naming_an_adc(tmp_path, isles):
    for meta in ({"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"]},
                 {"SeriesDescription": "ADC (10^-6 mm2/s)"}, {"ImageType": "ORIGINAL\\PRIMARY\\ADC"}):
        adc = _copy_with_sidecar(isles, tmp_path, meta)
        assert dif.load_diffusion(isles["dwi"], adc).pair_check["sidecar"] == "adc"


def test_candidate_command_refuses_a_b0(images, isles, tmp_path, capsys):
    from StrokeLesionLib.cli import main
    sitk.WriteImage(images["b0"], str(tmp_path / "b0.nii.gz"))
    capsys.readouterr()
    rc = main(["candidate", "--dwi", str(isles["dwi"]), "--adc", str(tmp_path / "b0.nii.gz"),
               "--out", str(tmp_path / "c.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "b0" in err and "--adc-units" in err and not (tmp_path / "c.nii.gz").exists()
    rc = main(["candidate", "--dwi", str(isles["dwi"]), "--adc", str(tmp_path / "b0.nii.gz"),
               "--out", str(tmp_path / "c.nii.gz"), "--adc-units", "1e-6mm2/s", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["warnings"] and "b0" in out["warnings"][0]
