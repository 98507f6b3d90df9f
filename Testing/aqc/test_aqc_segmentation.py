"""Segmentation agreement: hand-computed cases on anisotropic grids, an independent
brute-force surface-distance check, empty-mask conventions, lesion-wise detection
(ISLES'22 definitions) and the real ISLES'22 expert mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from ClinicalMRICommonLib.agreement.segmentation_metrics import (
    METRIC_KEYS,
    compare_masks,
    connected_components,
    dice,
    lesion_detection,
)
from ClinicalMRICommonLib.errors import UserError
from scipy import ndimage
from scipy.spatial import cKDTree

SPACING = (0.6, 1.5, 2.5)  # x, y, z in mm; x smallest so the hand geometry below is exact


def img(arr_zyx, spacing=SPACING, origin=(10.0, -5.0, 3.0)):
    im = sitk.GetImageFromArray(np.asarray(arr_zyx, dtype=np.uint8))
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def empty(shape=(10, 12, 14)):
    return np.zeros(shape, dtype=np.uint8)


def test_single_voxels_offset_anisotropic():
    a, b = empty(), empty()
    a[1, 3, 2] = 1          # z=1, y=3, x=2
    b[3, 3, 4] = 1          # z=3, y=3, x=4: dx = 2 * 0.6 mm, dz = 2 * 2.5 mm
    m = compare_masks(img(a), img(b), tolerance_mm=1.0)
    d = math.sqrt((2 * 0.6) ** 2 + (2 * 2.5) ** 2)
    assert list(m) == list(METRIC_KEYS)
    assert m["dice"] == 0 and m["jaccard"] == 0 and m["surface_dice"] == 0
    assert m["hd95_mm"] == pytest.approx(d, rel=1e-6)
    assert m["assd_mm"] == pytest.approx(d, rel=1e-6)
    vox_ml = 0.6 * 1.5 * 2.5 / 1000
    assert m["volume_ref_ml"] == pytest.approx(vox_ml) and m["volume_diff_ml"] == 0
    assert compare_masks(img(a), img(b), tolerance_mm=d + 0.01)["surface_dice"] == 1.0
    # identical single voxel: perfect
    same = compare_masks(img(a), img(a))
    assert same["dice"] == 1 and same["hd95_mm"] == 0 and same["assd_mm"] == 0 and same["surface_dice"] == 1


def test_cube_grown_one_voxel_along_x():
    """A = 6x6x6 voxel cube; B = A grown by one voxel on both x faces (x spacing 0.6 mm,
    the smallest). Boundary voxels (mask minus erosion): |dA| = 216 - 64 = 152,
    |dB| = 288 - 96 = 192. A->B: the 2 x 16 inner voxels of A's x faces are 0.6 mm from B's
    x faces, the other 120 lie on B's boundary (0 mm). B->A: B's 2 x 36 x-face voxels are
    0.6 mm from A, the other 120 are A's own boundary voxels."""
    a, b = empty(), empty()
    a[2:8, 3:9, 4:10] = 1
    b[2:8, 3:9, 3:11] = 1
    m = compare_masks(img(a), img(b), tolerance_mm=0.5)
    assert m["dice"] == pytest.approx(2 * 216 / (216 + 288))
    assert m["jaccard"] == pytest.approx(216 / 288)
    assert m["hd95_mm"] == pytest.approx(0.6, rel=1e-6)
    assert m["assd_mm"] == pytest.approx((32 + 72) * 0.6 / (152 + 192), rel=1e-6)
    assert m["surface_dice"] == pytest.approx((120 + 120) / (152 + 192), rel=1e-6)
    assert compare_masks(img(a), img(b), tolerance_mm=0.6)["surface_dice"] == pytest.approx(1.0)
    vox = 0.6 * 1.5 * 2.5 / 1000
    assert m["volume_ref_ml"] == pytest.approx(216 * vox)
    assert m["volume_test_ml"] == pytest.approx(288 * vox)
    assert m["volume_diff_ml"] == pytest.approx(72 * vox)
    # symmetric metrics do not depend on the order; the volume difference changes sign
    m2 = compare_masks(img(b), img(a), tolerance_mm=0.5)
    assert m2["hd95_mm"] == pytest.approx(m["hd95_mm"]) and m2["assd_mm"] == pytest.approx(m["assd_mm"])
    assert m2["volume_diff_ml"] == pytest.approx(-m["volume_diff_ml"])


def _brute_force(a, b, spacing_xyz, tol):
    """Independent reference: boundary by scipy erosion (border counts as outside), exact
    nearest-neighbour distances by a KD-tree in mm, HD95 = max of directed 95th
    percentiles (linear interpolation), ASSD pooled, surface Dice by counting."""
    sp = np.array(spacing_xyz[::-1])

    def border(m):
        m = m.astype(bool)
        return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(3, 1), border_value=0)

    pa, pb = np.argwhere(border(a)) * sp, np.argwhere(border(b)) * sp
    dab = cKDTree(pb).query(pa)[0]
    dba = cKDTree(pa).query(pb)[0]
    hd95 = max(np.percentile(dab, 95), np.percentile(dba, 95))
    assd = np.concatenate([dab, dba]).mean()
    nsd = (np.sum(dab <= tol) + np.sum(dba <= tol)) / (dab.size + dba.size)
    return hd95, assd, nsd


def test_random_blobs_match_brute_force_and_touch_border():
    rng = np.random.default_rng(7)
    spacing = (0.8, 0.8, 4.8)
    base = ndimage.gaussian_filter(rng.normal(size=(12, 30, 30)), 2.0)
    a = (base > 0.02).astype(np.uint8)
    b = (ndimage.shift(base, (0, 1.3, -0.7), order=1) > 0.03).astype(np.uint8)
    a[:, 0, :5] = 1  # touches the image border: still a boundary there
    m = compare_masks(img(a, spacing), img(b, spacing), tolerance_mm=1.0)
    hd95, assd, nsd = _brute_force(a, b, spacing, 1.0)
    assert m["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
    assert m["assd_mm"] == pytest.approx(assd, rel=1e-5)
    assert m["surface_dice"] == pytest.approx(nsd, rel=1e-6)
    assert m["dice"] == pytest.approx(dice(img(a, spacing), img(b, spacing)))


def test_empty_mask_conventions():
    a = empty()
    a[4:6, 4:6, 4:6] = 1
    both = compare_masks(img(empty()), img(empty()))
    assert both == {"dice": 1.0, "jaccard": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0, "surface_dice": 1.0,
                    "volume_ref_ml": 0.0, "volume_test_ml": 0.0, "volume_diff_ml": 0.0}
    one = compare_masks(img(a), img(empty()))
    assert one["dice"] == 0 and one["jaccard"] == 0 and one["surface_dice"] == 0
    assert math.isnan(one["hd95_mm"]) and math.isnan(one["assd_mm"])
    assert one["volume_diff_ml"] == pytest.approx(-8 * 0.6 * 1.5 * 2.5 / 1000)
    assert dice(img(empty()), img(empty())) == 1.0


def test_grid_mismatch_and_bad_input():
    a = empty()
    with pytest.raises(UserError, match="different grids.*spacing"):
        compare_masks(img(a), img(a, spacing=(1, 1, 1)))
    with pytest.raises(UserError, match="different grids.*size"):
        compare_masks(img(a), img(empty((10, 12, 15))))
    with pytest.raises(UserError, match="SimpleITK image"):
        compare_masks(a, img(a))
    with pytest.raises(UserError, match="tolerance"):
        compare_masks(img(a), img(a), tolerance_mm=-1)


def test_lesion_detection_hand_case():
    ref, test = empty((12, 20, 20)), empty((12, 20, 20))
    ref[1:4, 1:4, 1:4] = 1        # R1: cube
    ref[8, 10, 10] = 1            # R2 and R3 touch only at a corner: one lesion at 26-,
    ref[9, 11, 11] = 1            #     two at 6-connectivity
    ref[5, 16, 16] = 1            # R4: missed
    test[3, 3, 3] = 1             # T1 overlaps R1 by a single voxel -> R1 detected
    test[3, 3, 4] = 1
    test[9, 11, 11] = 1           # T2 overlaps only R3
    test[10, 1, 18] = 1           # T3: extra (no reference voxel)
    test[10, 18, 1] = 1           # T4: extra
    r26 = lesion_detection(img(ref), img(test), connectivity=26)
    # 26: reference lesions R1, R2+R3, R4 -> matched 2, missed 1; test comps 4 -> extra 2
    assert r26 == {"n_reference": 3, "n_test": 4, "matched": 2, "missed": 1, "extra": 2,
                   "lesion_f1": pytest.approx(4 / (4 + 2 + 1)), "abs_lesion_count_diff": 1}
    r6 = lesion_detection(img(ref), img(test), connectivity=6)
    # 6: R1, R2, R3, R4 (4 lesions) -> matched R1, R3; missed R2, R4
    assert r6 == {"n_reference": 4, "n_test": 4, "matched": 2, "missed": 2, "extra": 2,
                  "lesion_f1": pytest.approx(4 / (4 + 2 + 2)), "abs_lesion_count_diff": 0}
    # one big test component covering two reference lesions detects both (TP on reference side)
    merged = empty((12, 20, 20))
    merged[1:10, 1:12, 1:12] = 1
    r = lesion_detection(img(ref), img(merged))
    assert (r["matched"], r["missed"], r["extra"], r["n_test"]) == (2, 1, 0, 1)
    assert r["lesion_f1"] == pytest.approx(4 / 5)
    # both empty: F1 = 1 (ISLES'22 empty_value); only test non-empty: F1 = 0
    assert lesion_detection(img(empty()), img(empty()))["lesion_f1"] == 1.0
    assert lesion_detection(img(empty((12, 20, 20))), img(test))["lesion_f1"] == 0.0
    with pytest.raises(UserError, match="connectivity"):
        lesion_detection(img(ref), img(test), connectivity=18)


def test_isles22_expert_mask(shared_data):
    path = shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / \
        "sub-strokecase0009_ses-0001_msk.nii.gz"
    mask = sitk.ReadImage(str(path))
    m = compare_masks(mask, mask)
    assert m["volume_ref_ml"] == pytest.approx(4.184, abs=1e-3)  # 523 voxels x 8 mm3
    assert m["dice"] == 1.0 and m["hd95_mm"] == 0.0 and m["surface_dice"] == 1.0
    labels, n = connected_components(mask, 26)
    assert n == 18
    # remove the smallest lesion from a copy: 17 of 18 detected
    sizes = np.bincount(labels.ravel())[1:]
    smallest = int(np.argmin(sizes)) + 1
    arr = sitk.GetArrayFromImage(mask)
    arr[labels == smallest] = 0
    test = sitk.GetImageFromArray(arr)
    test.CopyInformation(mask)
    r = lesion_detection(mask, test)
    assert (r["n_reference"], r["matched"], r["missed"], r["extra"]) == (18, 17, 1, 0)
    assert r["lesion_f1"] == pytest.approx(34 / 35)
    m2 = compare_masks(mask, test)
    assert m2["volume_diff_ml"] == pytest.approx(-sizes.min() * 8 / 1000)
    assert 0 < m2["dice"] < 1 and m2["hd95_mm"] >= 0


@pytest.mark.slow  # importing MONAI (torch) takes several seconds
def test_same_numbers_as_monai_metrics():
    """The SimpleITK implementation gives MONAI's compute_hausdorff_distance(percentile=95),
    compute_average_surface_distance(symmetric=True) and compute_surface_dice with spacing."""
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(11)
    spacing = (0.7, 1.1, 3.3)
    cases = []
    for shift in ((0, 2.2, -1.4), (1.0, 0.0, 3.0)):
        base = ndimage.gaussian_filter(rng.normal(size=(10, 28, 26)), 1.8)
        cases.append(((base > 0.0), (ndimage.shift(base, shift, order=1) > 0.02)))
    a, b = empty(), empty()
    a[2:8, 3:9, 4:10] = 1
    b[2:8, 3:9, 3:11] = 1
    cases.append((a.astype(bool), b.astype(bool)))
    for ref, tst in cases:
        m = compare_masks(img(ref, spacing), img(tst, spacing), tolerance_mm=1.5)
        y = torch.from_numpy(ref[None, None].astype(np.float32))
        yp = torch.from_numpy(tst[None, None].astype(np.float32))
        sp = list(spacing[::-1])  # numpy axis order z, y, x
        hd = float(metrics.compute_hausdorff_distance(yp, y, include_background=True, percentile=95, spacing=sp))
        asd = float(metrics.compute_average_surface_distance(yp, y, include_background=True, symmetric=True,
                                                             spacing=sp))
        nsd = float(metrics.compute_surface_dice(yp, y, class_thresholds=[1.5], include_background=True,
                                                 spacing=sp))
        assert m["hd95_mm"] == pytest.approx(hd, rel=1e-5)
        assert m["assd_mm"] == pytest.approx(asd, rel=1e-5)
        assert m["surface_dice"] == pytest.approx(nsd, rel=1e-6)
