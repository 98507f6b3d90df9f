"""ADC units and the stroke candidate's thresholds at their edges (StrokeLesionLib.diffusion
and .candidate), on small synthetic images whose answers follow from the rules.

Unit windows (diffusion module docstring): a brain median ADC between 0.3 and 3.0 x 10^-3
mm2/s, i.e. [0.0003, 0.003] in mm2/s, [0.3, 3] in 10^-3 mm2/s and [300, 3000] in 10^-6
mm2/s, edges inclusive; the candidate is ADC < 620 x 10^-6 mm2/s (strict) and DWI above the
brain median + 3 MAD_n (strict).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from StrokeLesionLib import candidate as cand
from StrokeLesionLib import diffusion as dif

EDGE = 1e-6  # relative step just outside an edge (the code allows 1e-9 of rounding)


def image(arr, spacing=(2.0, 2.0, 2.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(arr))
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -20.0, 5.0))
    return img


def brain_all(shape=(3, 4, 5)) -> sitk.Image:
    return image(np.ones(shape, np.uint8))


@pytest.mark.parametrize("unit,lo,hi", [("mm2/s", 0.3e-3, 3.0e-3), ("1e-3mm2/s", 0.3, 3.0),
                                        ("1e-6mm2/s", 300.0, 3000.0)])
def test_unit_window_edges(unit, lo, hi):
    assert dif.units_from_median(lo) == unit
    assert dif.units_from_median(hi) == unit
    assert dif.units_from_median(math.sqrt(lo * hi)) == unit
    assert dif.units_from_median(lo * (1 - EDGE)) is None
    assert dif.units_from_median(hi * (1 + EDGE)) is None


@pytest.mark.parametrize("median", [0.0, -0.5, 0.0299, 0.01, 0.2999, 30.0, 3.0e-2, 3000.01, 299.0, 5e4, 1e-4])
def test_medians_between_or_outside_the_windows_fit_no_unit(median):
    assert dif.units_from_median(median) is None


def test_the_window_constants():
    assert dif.BRAIN_MEDIAN_ADC_RANGE_MM2S == (0.3e-3, 3.0e-3)
    assert dif.ADC_UNITS == {"mm2/s": 1.0, "1e-3mm2/s": 1e-3, "1e-6mm2/s": 1e-6}
    assert dif.CANONICAL_ADC_UNIT == "mm2/s"


@pytest.mark.parametrize("median,unit", [(3.0, "1e-3mm2/s"), (0.3, "1e-3mm2/s"), (3000.0, "1e-6mm2/s"),
                                         (300.0, "1e-6mm2/s"), (3.0e-3, "mm2/s"), (0.9, "1e-3mm2/s")])
def test_detect_units_at_the_edges_from_an_image(median, unit):
    vals = np.full((3, 4, 5), float(median))
    vals[0, 0, :2] = [median * 0.5, median * 1.5]  # the median is unchanged
    vals[2, 3, 4] = np.nan                           # non-finite voxels are left out
    u = dif.detect_adc_units(image(vals), brain_all(), "auto")
    assert (u.units, u.detected, u.n_brain_voxels) == (unit, True, 59)
    assert u.brain_median_raw == pytest.approx(median)
    assert u.brain_median_mm2s == pytest.approx(median * dif.ADC_UNITS[unit])
    assert u.factor_to_mm2s == dif.ADC_UNITS[unit]
    assert u.to_dict()["units"] == unit


@pytest.mark.parametrize("median", [30.0, 3.0 * (1 + EDGE), 0.3 * (1 - EDGE), 3000.0 * (1 + EDGE)])
def test_detect_units_refuses_just_outside_and_names_the_windows(median):
    vals = np.full((3, 4, 5), median)
    with pytest.raises(UserError, match=r"ADC file a_adc.nii.gz has a brain median of .*expected 0.0003-0.003 in "
                                        r"mm2/s, 0.3-3 in 1e-3mm2/s or 300-3000 in 1e-6mm2/s.*--adc-units"):
        dif.detect_adc_units(image(vals), brain_all(), "auto", path="a_adc.nii.gz")


def test_stated_units_are_trusted_and_the_brain_mask_is_used():
    vals = np.full((3, 4, 5), 30.0)
    vals[:, :, 0] = 0.8  # only these voxels are "brain"
    brain = np.zeros((3, 4, 5), np.uint8)
    brain[:, :, 0] = 1
    u = dif.detect_adc_units(image(vals), image(brain), "auto")
    assert u.units == "1e-3mm2/s" and u.n_brain_voxels == 12 and u.brain_median_raw == pytest.approx(0.8)
    stated = dif.detect_adc_units(image(vals), brain_all(), "1e-6 mm^2/s")
    assert (stated.units, stated.detected, stated.factor_to_mm2s) == ("1e-6mm2/s", False, 1e-6)
    assert stated.brain_median_mm2s == pytest.approx(30e-6)
    with pytest.raises(UserError, match="brain mask of x.nii contains no voxel"):
        dif.detect_adc_units(image(vals), image(np.zeros((3, 4, 5), np.uint8)), path="x.nii")
    with pytest.raises(UserError, match="brain mask contains no voxel"):
        dif.detect_adc_units(image(np.full((3, 4, 5), np.nan)), brain_all())


@pytest.mark.parametrize("text,unit", [("auto", "auto"), ("AUTO", "auto"), ("mm2/s", "mm2/s"), ("mm^2/s", "mm2/s"),
                                       ("mm²/s", "mm2/s"), ("1", "mm2/s"), ("1e-3", "1e-3mm2/s"),
                                       ("10^-3 mm2/s", "1e-3mm2/s"), ("um2/ms", "1e-3mm2/s"),
                                       ("x10^-3 mm^2/s", "1e-3mm2/s"), ("×10^-6 mm2/s", "1e-6mm2/s"),
                                       ("µm2/s", "1e-6mm2/s"), ("1e-6mm2/s", "1e-6mm2/s"), (" UM2/S ", "1e-6mm2/s")])
def test_unit_spellings(text, unit):
    assert dif.parse_adc_units(text) == unit


def test_unknown_unit_is_refused():
    with pytest.raises(UserError, match="unknown ADC units 'mm/s'; use one of auto, mm2/s, 1e-3mm2/s, 1e-6mm2/s"):
        dif.parse_adc_units("mm/s")


def test_conversion_to_mm2s_keeps_geometry():
    raw = image(np.array([[[900, 2750, 590]]], dtype=np.int16), spacing=(1.5, 2.5, 4.0))
    for units in ("1e-6mm2/s", dif.AdcUnits("1e-6mm2/s", 1e-6, 900, 9e-4, True, 3)):
        out = dif.adc_to_mm2s(raw, units)
        assert out.GetPixelID() == sitk.sitkFloat64
        np.testing.assert_allclose(sitk.GetArrayFromImage(out), [[[9e-4, 2.75e-3, 5.9e-4]]], rtol=1e-12)
        assert out.GetSpacing() == raw.GetSpacing() and out.GetOrigin() == raw.GetOrigin()


@pytest.mark.parametrize("t", [620e-6, 0.01, 1e-9, 800e-6])
def test_threshold_in_mm2s_accepted(t):
    assert dif.check_threshold_mm2s(t) == t


@pytest.mark.parametrize("t", [620.0, 0.62, 0.0100001, 0.0, -620e-6, float("nan"), float("inf")])
def test_threshold_not_in_mm2s_refused(t):
    with pytest.raises(UserError, match="not a plausible value in mm2/s.*620e-6"):
        dif.check_threshold_mm2s(t)


def test_eadc_by_hand():
    adc = image(np.array([[[-1e-3, 0.0, 1e-3, 2e-3]]]))
    e = dif.eadc(adc, 1000)
    assert e.GetPixelID() == sitk.sitkFloat32 and e.GetOrigin() == adc.GetOrigin()
    np.testing.assert_allclose(sitk.GetArrayFromImage(e), [[[1.0, 1.0, math.exp(-1), math.exp(-2)]]], rtol=1e-6)


# ---------------------------------------------------------------------------------------
# The candidate: ADC < 620e-6 (strict), DWI > median + k MAD_n (strict)


def diffusion_case(adc_mm2s: np.ndarray, dwi: np.ndarray, brain: np.ndarray | None = None) -> dif.DiffusionCase:
    b = brain if brain is not None else np.ones(adc_mm2s.shape, np.uint8)
    u = dif.AdcUnits("mm2/s", 1.0, float(np.median(adc_mm2s)), float(np.median(adc_mm2s)), False, int(b.sum()))
    return dif.DiffusionCase(image(dwi.astype(np.float64)), image(adc_mm2s.astype(np.float64)), image(b), u)


def _dwi_with_spread(shape, rng):
    return 100.0 + rng.normal(0, 5.0, shape)


def test_candidate_adc_threshold_is_strict_at_620e6():
    rng = np.random.default_rng(0)
    shape = (5, 10, 10)
    dwi = _dwi_with_spread(shape, rng)
    adc = np.full(shape, 0.8e-3)
    bright = [(2, 2, 2), (2, 2, 6), (2, 6, 2), (2, 6, 6)]
    values = [619.999e-6, 620e-6, 620.001e-6, 400e-6]
    for (z, y, x), v in zip(bright, values):
        dwi[z, y, x] = 1000.0
        adc[z, y, x] = v
    res = cand.candidate_mask(diffusion_case(adc, dwi), cand.CandidateParams(min_size_ml=0.0))
    m = sitk.GetArrayFromImage(res.mask)
    st = sitk.GetArrayFromImage(res.shine_through)
    assert [int(m[p]) for p in bright] == [1, 0, 0, 1]
    assert [int(st[p]) for p in bright] == [0, 1, 1, 0]  # ADC >= threshold: T2 shine-through
    assert res.stats["n_voxels"] == 2 and res.stats["n_lesions"] == 2
    assert res.stats["volume_ml"] == pytest.approx(2 * 8e-3)
    assert res.stats["shine_through_n_regions"] == 2
    assert res.stats["shine_through_volume_ml"] == pytest.approx(2 * 8e-3)
    assert cand.CONSENSUS_ADC_THRESHOLD_MM2S == 620e-6 and cand.CandidateParams().adc_threshold_mm2s == 620e-6
    # a stated shine-through floor above the threshold: in between is neither lesion nor shine-through
    res2 = cand.candidate_mask(diffusion_case(adc, dwi),
                               cand.CandidateParams(min_size_ml=0.0, shine_through_adc_mm2s=620.001e-6))
    st2 = sitk.GetArrayFromImage(res2.shine_through)
    assert [int(st2[p]) for p in bright] == [0, 0, 1, 0]


def test_candidate_dwi_rule_median_plus_k_mad():
    rng = np.random.default_rng(1)
    shape = (4, 8, 8)
    dwi = _dwi_with_spread(shape, rng)
    brain = np.ones(shape, np.uint8)
    brain[0] = 0  # the first slice is outside the brain
    vals = dwi[brain > 0]
    med = np.median(vals)
    mad = 1.4826 * np.median(np.abs(vals - med))
    thr = med + 3 * mad
    adc = np.full(shape, 0.5e-3)  # everything has low ADC: the DWI rule decides
    res = cand.candidate_mask(diffusion_case(adc, dwi, brain), cand.CandidateParams(min_size_ml=0.0))
    assert res.dwi_threshold == pytest.approx(thr, rel=1e-12)
    assert res.brain_median_dwi == pytest.approx(med) and res.brain_mad_dwi == pytest.approx(mad)
    expected = (dwi > thr) & (brain > 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res.mask) > 0, expected)
    # a voxel exactly at the threshold is not hyperintense
    t_thr, _, _ = cand.dwi_hyperintense_threshold(dwi, brain > 0, cand.CandidateParams())
    assert t_thr == pytest.approx(thr)
    # percentile rule
    p = cand.CandidateParams(dwi_rule="percentile", dwi_percentile=90.0, min_size_ml=0.0)
    t90, _, _ = cand.dwi_hyperintense_threshold(dwi, brain > 0, p)
    assert t90 == pytest.approx(np.percentile(vals, 90.0))
    k1 = cand.dwi_hyperintense_threshold(dwi, brain > 0, cand.CandidateParams(dwi_k=1.0))[0]
    assert k1 == pytest.approx(med + mad)
    with pytest.raises(UserError, match="brain mask is empty"):
        cand.dwi_hyperintense_threshold(dwi, np.zeros(shape, bool), cand.CandidateParams())


def test_small_islands_removed_at_the_minimum_size():
    arr = np.zeros((6, 6, 6), np.uint8)
    arr[0, 0, 0:2] = 1          # 2 voxels
    arr[3:5, 3:5, 3] = 1        # 4 voxels
    arr[5, 0, 5] = 1            # 1 voxel
    kept, n_kept, n_removed = cand.remove_small_islands(image(arr), 2)
    assert (n_kept, n_removed) == (2, 1) and int(kept.sum()) == 6
    kept, n_kept, n_removed = cand.remove_small_islands(image(arr), 4)
    assert (n_kept, n_removed) == (1, 2) and int(kept.sum()) == 4
    kept, n_kept, n_removed = cand.remove_small_islands(image(arr), 5)
    assert (n_kept, n_removed) == (0, 3) and not kept.any()
    empty, a, b = cand.remove_small_islands(image(np.zeros((3, 3, 3), np.uint8)), 1)
    assert (a, b) == (0, 0) and not empty.any()
    # diagonal neighbours are one island with 26-connectivity, two with 6
    diag = np.zeros((3, 3, 3), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = 1
    assert cand.remove_small_islands(image(diag), 2, connectivity=26)[1:] == (1, 0)
    assert cand.remove_small_islands(image(diag), 2, connectivity=6)[1:] == (0, 2)


def test_candidate_min_size_in_ml_uses_the_voxel_volume():
    rng = np.random.default_rng(2)
    shape = (5, 10, 10)
    dwi = _dwi_with_spread(shape, rng)
    adc = np.full(shape, 0.8e-3)
    dwi[1, 1, 1:3] = 1000.0  # a 2-voxel lesion: 2 x 8 mm3 = 0.016 mL
    adc[1, 1, 1:3] = 0.4e-3
    case = diffusion_case(adc, dwi)
    assert cand.voxel_volume_ml(case.dwi) == pytest.approx(0.008)
    kept = cand.candidate_mask(case, cand.CandidateParams(min_size_ml=0.016))
    assert kept.stats["n_voxels"] == 2 and kept.stats["islands_removed"] == 0
    gone = cand.candidate_mask(case, cand.CandidateParams(min_size_ml=0.017))
    assert gone.stats["n_voxels"] == 0 and gone.stats["islands_removed"] == 1
    s = kept.summary(case)
    assert s["adc_units"] == "mm2/s" and s["adc_units_detected"] is False
    assert s["brain_volume_ml"] == pytest.approx(500 * 0.008)
    assert s["dwi_rule"] == "DWI > brain median + 3 x MAD_n"
    assert s["n_lesions"] == 1 and s["volume_ml"] == pytest.approx(0.016)
    assert cand.candidate_mask(case, cand.CandidateParams(dwi_rule="percentile", dwi_percentile=99.5)).summary()[
        "dwi_rule"] == "DWI > brain 99.5th percentile"


@pytest.mark.parametrize("kwargs,match", [
    ({"adc_threshold_mm2s": 620.0}, "not a plausible value in mm2/s"),
    ({"shine_through_adc_mm2s": 600e-6}, "must not be below"),
    ({"shine_through_adc_mm2s": 5.0}, "not a plausible value"),
    ({"dwi_rule": "otsu"}, "unknown DWI hyperintensity rule"),
    ({"dwi_k": -0.1}, "DWI k"), ({"dwi_k": 20.1}, "DWI k"),
    ({"dwi_percentile": 49.9}, "percentile"), ({"dwi_percentile": 100.0}, "percentile"),
    ({"min_size_ml": -0.001}, "minimum lesion size"), ({"min_size_ml": float("nan")}, "minimum lesion size"),
    ({"connectivity": 8}, "connectivity"),
])
def test_candidate_parameter_edges_refused(kwargs, match):
    with pytest.raises(UserError, match=match):
        cand.CandidateParams(**kwargs).check()


@pytest.mark.parametrize("kwargs", [{"dwi_k": 0.0}, {"dwi_k": 20.0}, {"dwi_percentile": 50.0},
                                    {"dwi_percentile": 99.99}, {"min_size_ml": 0.0}, {"connectivity": 6},
                                    {"shine_through_adc_mm2s": 620e-6}])
def test_candidate_parameter_edges_accepted(kwargs):
    assert cand.CandidateParams(**kwargs).check() is not None


def test_stated_plain_mm2s_is_not_detection():
    vals = np.full((3, 4, 5), 30.0)  # fits no window: only stated units can use it
    u = dif.detect_adc_units(image(vals), brain_all(), "mm2/s")
    assert (u.units, u.detected, u.factor_to_mm2s, u.brain_median_mm2s) == ("mm2/s", False, 1.0, 30.0)


# ---------------------------------------------------------------------------------------
# brain mask


def test_brain_mask_of_a_box_is_the_box_without_its_edges():
    """Otsu separates the box (100) from the background (0); the opening with the 6-neighbour
    cross removes the box's 12 edges (no cross fits around an edge voxel inside the box); the
    hole filling restores nothing outside. A NaN voxel counts as background."""
    arr = np.zeros((12, 12, 12))
    arr[2:10, 2:10, 2:10] = 100.0
    arr[0, 0, 0] = np.nan
    expected = np.zeros(arr.shape, bool)
    expected[2:10, 2:10, 2:10] = True
    for z in (2, 9):
        for y in (2, 9):
            expected[z, y, 2:10] = False
            expected[z, 2:10, y] = False
            expected[2:10, z, y] = False
    m = dif.brain_mask(image(arr))
    assert m.GetPixelID() == sitk.sitkUInt8 and m.GetOrigin() == (10.0, -20.0, 5.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(m) > 0, expected)


def test_brain_mask_keeps_the_largest_part_and_fills_holes():
    arr = np.zeros((16, 16, 24))
    arr[2:14, 2:14, 2:14] = 1.5       # the brain (values near 1: a NaN must not read as 1), with
    arr[6:9, 6:9, 6:9] = 0.0          # a dark hole (a ventricle) well inside
    arr[5:9, 5:9, 17:22] = 1.5        # a smaller bright part elsewhere (scalp, eyes)
    arr[6:9, 6:9, 14:16] = np.nan     # NaN beside the brain stays out
    m = sitk.GetArrayFromImage(dif.brain_mask(image(arr))) > 0
    assert m[7, 7, 7] and m[3, 3, 5]          # the hole is filled, the brain kept
    assert not m[6, 6, 19]                    # the smaller part is dropped
    assert not m[7, 7, 14] and not m[7, 7, 15]  # the NaN voxels are not brain
    assert not m[2, 2, 2]                     # an edge of the box is opened away


def test_brain_mask_refusals():
    with pytest.raises(UserError, match="constant or empty"):
        dif.brain_mask(image(np.full((5, 5, 5), 7.0)))
    with pytest.raises(UserError, match="constant or empty"):
        dif.brain_mask(image(np.full((5, 5, 5), np.nan)))
    one = np.zeros((7, 7, 7))
    one[3, 3, 3] = 100.0  # a single bright voxel does not survive the opening
    with pytest.raises(UserError, match="no voxel above the Otsu threshold"):
        dif.brain_mask(image(one))


# ---------------------------------------------------------------------------------------
# Survivors of the mutation run of 2026-12-02 (diffusion, 60 mutants, seed 18)


@pytest.mark.parametrize("unit,f", list(dif.ADC_UNITS.items()))
def test_unit_window_edges_are_inclusive_with_their_rounding_allowance(unit, f):
    """units_from_median's docstring: the window edges are inclusive, compared in each unit's
    own scale; the comparison allows a relative 1e-9 of floating-point rounding. A median
    exactly on the widened edge (the same product the rule forms) still fits; a strict
    comparison, or a dropped allowance, refuses it."""
    lo, hi = dif.BRAIN_MEDIAN_ADC_RANGE_MM2S
    assert dif.units_from_median(lo / f * (1 - 1e-9)) == unit
    assert dif.units_from_median(hi / f * (1 + 1e-9)) == unit


def test_brain_mask_finds_an_object_filling_one_percent_of_the_view():
    """BRAIN_MASK_METHOD: the Otsu threshold of the intensity clipped at its 99.5th percentile,
    i.e. only the brightest 0.5 % of the voxels are clipped. A bright box filling 1.0 % of the
    view (8 x 8 x 10 = 640 of 40^3 = 64000 voxels) is above that percentile and keeps its
    intensity, so Otsu separates it from the noise (0-10); clipping at a lower percentile
    (98.5: inside the noise) would flatten the box into the noise. The opening with the
    6-neighbour cross removes the box's 12 edges: 640 - (4 x 10 + 4 x 8 + 4 x 8 - 2 x 8
    corners counted thrice) = 552 voxels."""
    rng = np.random.default_rng(3)
    arr = rng.uniform(0.0, 10.0, (40, 40, 40))
    arr[10:18, 10:18, 10:20] = 100.0
    expected = np.zeros(arr.shape, bool)
    expected[10:18, 10:18, 10:20] = True
    for a in (10, 17):
        for b in (10, 17):
            expected[a, b, 10:20] = False   # edges along x
    for a in (10, 17):
        for c in (10, 19):
            expected[a, 10:18, c] = False   # edges along y
            expected[10:18, a, c] = False   # edges along z
    m = sitk.GetArrayFromImage(dif.brain_mask(image(arr))) > 0
    assert int(expected.sum()) == 552
    np.testing.assert_array_equal(m, expected)


def _pair(d: np.ndarray, a: np.ndarray) -> dict:
    u = dif.AdcUnits("mm2/s", 1.0, float(np.median(a)), float(np.median(a)), False, int(d.size))
    return dif.check_adc_pair(image(d), image(a), image(np.ones(d.shape, np.uint8)), u)


def test_adc_pair_csf_is_the_darkest_5_percent_and_tissue_the_interquartile_range():
    """check_adc_pair (its docstring and the comment on CSF_PERCENTILE/TISSUE_PERCENTILES):
    CSF = the darkest 5 % of the DWI inside the brain, tissue = the DWI's interquartile range;
    the CSF reading is the ADC's median there. DWI = 1..1000 (one voxel each), ADC = 3e-3 -
    DWI x 1e-6 mm2/s. numpy's linear percentile of 1..1000 at p is 1 + p/100 x 999:
    5 % -> 50.95, so CSF = DWI 1..50, median DWI 25.5, ADC 3e-3 - 25.5e-6 = 2.9745e-3;
    25 % -> 250.75 and 75 % -> 750.25, so tissue = DWI 251..750, median DWI 500.5,
    ADC 2.4995e-3; CSF/tissue = 2.9745 / 2.4995. (4 % would give CSF DWI 1..40, 26 % tissue
    261..750, 74 % tissue 251..740: other numbers.)"""
    d = np.arange(1, 1001, dtype=float).reshape(10, 10, 10)
    a = 3e-3 - d * 1e-6
    out = _pair(d, a)
    assert out["csf_adc_mm2s"] == pytest.approx(2.9745e-3, rel=1e-12)
    assert out["csf_to_tissue"] == pytest.approx(2.9745 / 2.4995, rel=1e-12)
    assert out["problems"] == []
    assert any("CSF brighter than tissue on the ADC (x1.19)" in c for c in out["checks"])


# ---------------------------------------------------------------------------------------
# Survivors of the mutation run of 2026-12-02 (candidate, 60 mutants, seed 18)


def _row_case(dwi_values: list[float]) -> dif.DiffusionCase:
    """One row of voxels (1 x 1 x n, 2 mm voxels), all brain, all with a low ADC (0.4e-3 <
    620e-6), so the DWI rule alone decides."""
    dwi = np.asarray(dwi_values, float).reshape(1, 1, -1)
    return diffusion_case(np.full(dwi.shape, 0.4e-3), dwi)


def test_candidate_dwi_exactly_at_the_mad_threshold_is_not_hyperintense():
    """The rule is DWI > median + 3 x MAD_n, strict (candidate module docstring). Worked by
    hand: 30 x 90, 20 x 100, 30 x 110, then T and 1000 (82 voxels). Sorted, the two middle
    values (0-based 40 and 41) are both 100: median 100. Absolute deviations: 20 x 0,
    60 x 10, 2 large: their middle two are 10, MAD_n = 1.4826 x 10. T is set to exactly
    100 + 3 x 14.826 = 144.478 (the same floating-point expression): at the threshold, so
    only the 1000 voxel is candidate."""
    thr = 100.0 + 3.0 * (1.4826 * 10.0)
    vals = [90.0] * 30 + [100.0] * 20 + [110.0] * 30 + [thr, 1000.0]
    res = cand.candidate_mask(_row_case(vals), cand.CandidateParams(min_size_ml=0.0))
    assert res.brain_median_dwi == 100.0 and res.brain_mad_dwi == 1.4826 * 10.0 and res.dwi_threshold == thr
    m = sitk.GetArrayFromImage(res.mask)[0, 0]
    assert m[80] == 0 and m[81] == 1 and int(m.sum()) == 1
    assert res.stats["n_voxels"] == 1 and res.stats["n_lesions"] == 1


def test_candidate_dwi_exactly_at_the_percentile_is_not_hyperintense():
    """The percentile rule is DWI > the brain's p-th percentile, strict ("DWI > brain 75th
    percentile"). DWI = 0, 1, ..., 100 (101 voxels): numpy's 75th percentile is at index
    0.75 x 100 = 75, the value 75 itself; voxels 76..100 (25) are candidate, 75 is not."""
    res = cand.candidate_mask(_row_case([float(v) for v in range(101)]),
                              cand.CandidateParams(dwi_rule="percentile", dwi_percentile=75.0, min_size_ml=0.0))
    assert res.dwi_threshold == 75.0
    m = sitk.GetArrayFromImage(res.mask)[0, 0]
    np.testing.assert_array_equal(np.flatnonzero(m), np.arange(76, 101))
    assert res.stats["n_voxels"] == 25 and res.stats["n_lesions"] == 1
    assert res.summary()["dwi_rule"] == "DWI > brain 75th percentile"


def test_candidate_with_a_voxel_volume_of_zero_ml_keeps_every_island():
    """candidate_mask converts the minimum size to voxels only for a positive voxel volume
    (``min_size_ml / vv if vv > 0 else 0.0``). ITK refuses zero and negative spacing but
    accepts 1e-107 x 1e-107 x 1e-108 mm, whose voxel volume (1e-322 mm3 = 1e-325 mL) rounds
    to 0.0 mL in floating point: the guard must keep the minimum at 0 voxels (every island
    kept, volumes 0 mL) instead of dividing by zero."""
    spacing = (1e-107, 1e-107, 1e-108)
    dwi = np.full((1, 1, 9), 100.0)
    dwi[0, 0, [2, 6]] = 1000.0           # two one-voxel islands, not touching
    imgs = [sitk.GetImageFromArray(a) for a in (dwi, np.full(dwi.shape, 0.4e-3), np.ones(dwi.shape, np.uint8))]
    for im in imgs:
        im.SetSpacing(spacing)
    assert cand.voxel_volume_ml(imgs[0]) == 0.0
    u = dif.AdcUnits("mm2/s", 1.0, 0.4e-3, 0.4e-3, False, 9)
    res = cand.candidate_mask(dif.DiffusionCase(imgs[0], imgs[1], imgs[2], u), cand.CandidateParams(min_size_ml=0.01))
    assert (res.stats["n_voxels"], res.stats["n_lesions"], res.stats["islands_removed"]) == (2, 2, 0)
    assert res.stats["volume_ml"] == 0.0


def test_threshold_refuses_an_unknown_rule_instead_of_falling_back():
    """A direct library call with a rule check() would refuse is refused here too (it used to
    fall back to the percentile rule silently)."""
    from dataclasses import replace

    from ClinicalMRICommonLib.errors import UserError
    from StrokeLesionLib.candidate import CandidateParams, dwi_hyperintense_threshold

    dwi = np.arange(100, dtype=float).reshape(1, 10, 10)
    brain = np.ones_like(dwi, dtype=bool)
    for rule in ("", "Percentile", "mean"):
        with pytest.raises(UserError, match="unknown DWI hyperintensity rule"):
            dwi_hyperintense_threshold(dwi, brain, replace(CandidateParams(), dwi_rule=rule))
    assert dwi_hyperintense_threshold(dwi, brain, replace(CandidateParams(), dwi_rule="percentile",
                                                          dwi_percentile=75.0))[0] == 74.25
