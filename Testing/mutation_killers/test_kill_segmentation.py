"""Segmentation agreement details a reader sees (lesion_report, border_offsets) and the
edges of compare_masks (tolerance, volumes, 2-D), worked by hand; and the consensus
(STAPLE threshold, majority ties, disagreement) on small masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.agreement import consensus as C
from ClinicalMRICommonLib.agreement.segmentation_metrics import (
    border_offsets,
    compare_masks,
    connected_components,
    dice,
    lesion_detection,
    lesion_report,
    surface_distances,
)
from ClinicalMRICommonLib.errors import UserError

SPACING = (0.8, 1.0, 2.0)
ORIGIN = (10.0, -20.0, 30.0)


def img(arr, spacing=SPACING, origin=ORIGIN):
    im = sitk.GetImageFromArray(np.asarray(arr, dtype=np.uint8))
    im.SetSpacing(spacing[: np.asarray(arr).ndim])
    im.SetOrigin(origin[: np.asarray(arr).ndim])
    return im


def zeros(shape=(8, 10, 12)):
    return np.zeros(shape, np.uint8)


def test_border_offsets_one_voxel_overgrowth_in_x():
    """ref = 3x3x3 cube; test = ref plus the slab x = 5 (9 voxels). Test boundary = 36 - 2
    interior voxels = 34, of which the 9 slab voxels lie outside ref at one x spacing."""
    ref, test = zeros(), zeros()
    ref[2:5, 2:5, 2:5] = 1
    test[2:5, 2:5, 2:6] = 1
    out = border_offsets(img(ref), img(test))
    assert out["outside_mm"] == pytest.approx(0.8, abs=1e-6)
    assert out["outside_fraction"] == pytest.approx(9 / 34)
    assert out["inside_mm"] == 0.0 and out["inside_fraction"] == 0.0
    # the other way round: under-segmented border of one x spacing
    back = border_offsets(img(test), img(ref))
    assert back["inside_mm"] == pytest.approx(0.8, abs=1e-6) and back["inside_fraction"] == pytest.approx(9 / 34)
    assert back["outside_mm"] == 0.0 and back["outside_fraction"] == 0.0


def test_border_offsets_leave_out_missed_and_extra_lesions():
    ref, test = zeros(), zeros()
    ref[2:5, 2:5, 2:5] = 1
    test[2:5, 2:5, 2:6] = 1
    ref[0, 8, 10] = 1    # missed lesion
    test[7, 0, 0] = 1    # extra lesion, far away
    out = border_offsets(img(ref), img(test))
    assert out["outside_mm"] == pytest.approx(0.8, abs=1e-6) and out["outside_fraction"] == pytest.approx(9 / 34)
    assert out["inside_mm"] == 0.0
    none = border_offsets(img(ref), img(zeros()))
    assert none == {"outside_mm": None, "outside_fraction": None, "inside_mm": None, "inside_fraction": None}
    disjoint = zeros()
    disjoint[7, 9, 11] = 1
    assert border_offsets(img(ref), img(disjoint))["outside_mm"] is None


def test_lesion_report_by_hand():
    ref, test = zeros(), zeros()
    ref[1:4, 2, 3] = 1     # lesion 1: 3 voxels on slices 1-3, x=3, y=2
    ref[6, 7:9, 9] = 1     # lesion 2: 2 voxels on slice 6, missed
    test[2:5, 2, 3] = 1    # covers slices 2-3 of lesion 1 (not its first slice), spills onto slice 4
    test[0, 0, 0] = 1      # extra
    r = lesion_report(img(ref), img(test))
    assert (r["n_reference"], r["n_test"], r["matched"], r["missed"], r["extra"]) == (2, 2, 1, 1, 1)
    assert r["lesion_f1"] == pytest.approx(2 / (2 + 1 + 1)) and r["abs_lesion_count_diff"] == 0
    assert r["connectivity"] == 26
    l1, l2 = r["reference_lesions"]
    vox_ml = 0.8 * 1.0 * 2.0 / 1000
    assert l1["id"] == 1 and l1["voxels"] == 3 and l1["volume_ml"] == pytest.approx(3 * vox_ml)
    assert l1["centroid_ijk"] == [3.0, 2.0, 2.0] and l1["slices"] == [1, 3] and l1["detected"] is True
    # physical (LPS) = origin + index * spacing; RAS = (-x, -y, z)
    assert l1["centroid_ras"] == [-(10.0 + 3 * 0.8), -(-20.0 + 2 * 1.0), 30.0 + 2 * 2.0]
    assert (l1["slices_total"], l1["slices_covered"], l1["first_slice_covered"], l1["last_slice_covered"]) == \
        (3, 2, False, True)
    assert l2["voxels"] == 2 and l2["detected"] is False and l2["slices"] == [6, 6]
    assert l2["centroid_ijk"] == [9.0, 7.5, 6.0]
    assert (l2["slices_total"], l2["slices_covered"], l2["first_slice_covered"], l2["last_slice_covered"]) == \
        (1, 0, False, False)
    (extra,) = r["extra_lesions"]
    assert extra["voxels"] == 1 and extra["slices"] == [0, 0] and "detected" not in extra
    assert extra["centroid_ras"] == [-10.0, 20.0, 30.0]
    empty = lesion_report(img(zeros()), img(zeros()))
    assert empty["reference_lesions"] == [] and empty["extra_lesions"] == [] and empty["lesion_f1"] == 1.0


def test_lesion_detection_connectivity_and_counts():
    ref, test = zeros(), zeros()
    ref[1, 1, 1] = ref[2, 2, 2] = 1          # diagonal: one lesion at 26, two at 6
    test[2, 2, 2] = 1
    test[5, 5, 5] = test[5, 5, 6] = 1        # a 2-voxel extra
    d26 = lesion_detection(img(ref), img(test))
    assert (d26["n_reference"], d26["matched"], d26["missed"], d26["extra"]) == (1, 1, 0, 1)
    assert d26["lesion_f1"] == pytest.approx(2 / 3) and d26["abs_lesion_count_diff"] == 1
    d6 = lesion_detection(img(ref), img(test), connectivity=6)
    assert (d6["n_reference"], d6["matched"], d6["missed"], d6["extra"]) == (2, 1, 1, 1)
    assert d6["lesion_f1"] == pytest.approx(2 / 4) and d6["abs_lesion_count_diff"] == 0
    lab, n = connected_components(img(ref), 6)
    assert n == 2 and lab.max() == 2 and lab.dtype.kind in "iu"
    with pytest.raises(UserError, match="connectivity must be 6 or 26, got 18"):
        connected_components(img(ref), 18)
    # one test component covering two reference lesions detects both
    two, cover = zeros(), zeros()
    two[3, 3, 3] = two[3, 3, 6] = 1
    cover[3, 3, 3:7] = 1
    both = lesion_detection(img(two), img(cover))
    assert (both["matched"], both["missed"], both["extra"], both["lesion_f1"]) == (2, 0, 0, 1.0)


def test_surface_dice_tolerance_edge_and_volumes():
    """Two single voxels one x spacing (0.8 mm) apart: within a tolerance of exactly 0.8 mm,
    not within 0.79 mm."""
    a, b = zeros(), zeros()
    a[3, 3, 3] = 1
    b[3, 3, 4] = 1
    assert compare_masks(img(a), img(b), tolerance_mm=0.8)["surface_dice"] == 1.0
    assert compare_masks(img(a), img(b), tolerance_mm=0.79)["surface_dice"] == 0.0
    m = compare_masks(img(a), img(b), tolerance_mm=0)
    assert m["surface_dice"] == 0.0 and m["hd95_mm"] == pytest.approx(0.8, abs=1e-6)
    assert compare_masks(img(a), img(a), tolerance_mm=0)["surface_dice"] == 1.0
    for bad in (-0.1, float("nan"), float("inf"), "1"):
        with pytest.raises(UserError, match="tolerance must be a finite distance >= 0 mm"):
            compare_masks(img(a), img(b), tolerance_mm=bad)
    big = zeros()
    big[1:3, 1:3, 1:4] = 1   # 12 voxels
    v = compare_masks(img(a), img(big))
    vox = 0.8 * 1.0 * 2.0 / 1000
    assert v["volume_ref_ml"] == pytest.approx(vox) and v["volume_test_ml"] == pytest.approx(12 * vox)
    assert v["volume_diff_ml"] == pytest.approx(11 * vox)
    assert v["dice"] == 0.0 and v["jaccard"] == 0.0
    part = zeros()
    part[3, 3, 3:5] = 1
    pm = compare_masks(img(a), img(part))
    assert pm["dice"] == pytest.approx(2 * 1 / 3) and pm["jaccard"] == pytest.approx(1 / 2)
    assert dice(img(a), img(part)) == pytest.approx(2 / 3)


def test_hd95_is_the_larger_directed_percentile():
    # A: one voxel; B: A plus a far voxel. A->B distances [0]; B->A [0, 10 * 0.8]
    a, b = zeros((3, 3, 14)), zeros((3, 3, 14))
    a[1, 1, 1] = 1
    b[1, 1, 1] = b[1, 1, 11] = 1
    d_ab, d_ba = surface_distances(sitk.GetArrayFromImage(img(a)) > 0, sitk.GetArrayFromImage(img(b)) > 0, SPACING)
    np.testing.assert_allclose(sorted(d_ab), [0.0], atol=1e-6)
    np.testing.assert_allclose(sorted(d_ba), [0.0, 8.0], atol=1e-5)
    m = compare_masks(img(a), img(b))
    assert m["hd95_mm"] == pytest.approx(np.percentile([0.0, 8.0], 95), rel=1e-6)
    assert m["assd_mm"] == pytest.approx(8.0 / 3, rel=1e-6)
    assert m["surface_dice"] == pytest.approx(2 / 3)


def test_two_d_masks_and_bad_pairs():
    a = np.zeros((6, 7), np.uint8)
    b = np.zeros((6, 7), np.uint8)
    a[2, 2] = 1
    b[2, 3] = 1
    m = compare_masks(img(a), img(b), tolerance_mm=1.0)
    assert m["hd95_mm"] == pytest.approx(0.8, abs=1e-6) and m["surface_dice"] == 1.0
    with pytest.raises(UserError, match="reference mask is 2-D but test mask is 3-D"):
        compare_masks(img(a), img(zeros()))
    vec = sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 2)
    with pytest.raises(UserError, match="test mask has 2 components per voxel"):
        compare_masks(img(zeros((4, 4, 4))), vec)
    with pytest.raises(UserError, match="reference mask must be a SimpleITK image, got ndarray"):
        dice(zeros(), img(zeros()))


# ---------------------------------------------------------------------------------------
# consensus


def readers():
    base = zeros((3, 6, 6))
    r = [base.copy() for _ in range(4)]
    r[0][1, 1:5, 1:5] = 1
    r[1][1, 1:5, 1:4] = 1
    r[2][1, 2:5, 1:5] = 1
    r[3][1, 1:3, 1:3] = 1
    return [img(x) for x in r]


def test_majority_vote_ties_go_to_background_and_counts():
    rs = readers()
    count = sitk.GetArrayFromImage(C.vote_count(rs))
    stack = np.stack([sitk.GetArrayFromImage(x) for x in rs])
    np.testing.assert_array_equal(count, stack.sum(axis=0))
    maj = sitk.GetArrayFromImage(C.majority_vote(rs))
    np.testing.assert_array_equal(maj, (count >= 3).astype(np.uint8))  # 2 of 4 is a tie: background
    assert (count == 2).any()
    maj3 = sitk.GetArrayFromImage(C.majority_vote(rs[:3]))
    np.testing.assert_array_equal(maj3, (stack[:3].sum(axis=0) >= 2).astype(np.uint8))
    dis = sitk.GetArrayFromImage(C.disagreement_map(rs))
    np.testing.assert_array_equal(dis, np.where(count == 0, 0, np.where(count == 4, 2, 1)))
    assert C.vote_count(rs[:1]).GetPixelID() == sitk.sitkUInt8
    assert C.majority_vote(rs).GetOrigin() == ORIGIN and C.majority_vote(rs).GetSpacing() == SPACING
    labels = [img(sitk.GetArrayFromImage(x) * 7) for x in rs]  # any non-zero label counts
    np.testing.assert_array_equal(sitk.GetArrayFromImage(C.vote_count(labels)), count)


def test_staple_threshold_and_outputs():
    rs = readers()
    mask, prob, per = C.staple(rs)
    p = sitk.GetArrayFromImage(prob)
    assert prob.GetPixelID() == sitk.sitkFloat32 and prob.GetOrigin() == ORIGIN
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1)
    f.SetMaximumIterations(200)
    ref = sitk.GetArrayFromImage(f.Execute([sitk.Cast(x, sitk.sitkUInt8) for x in rs]))  # float64
    np.testing.assert_allclose(p, ref, atol=1e-6)
    # the mask is thresholded on the filter's float64 probability (the returned image is float32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), (ref >= 0.5).astype(np.uint8))
    assert [d["reader"] for d in per] == [1, 2, 3, 4]
    np.testing.assert_allclose([d["sensitivity"] for d in per], f.GetSensitivity(), atol=1e-12)
    np.testing.assert_allclose([d["specificity"] for d in per], f.GetSpecificity(), atol=1e-12)
    t = float(np.unique(ref)[np.unique(ref) > 0.01][0])  # a probability that occurs: >= keeps it
    at = sitk.GetArrayFromImage(C.staple(rs, threshold=t)[0])
    np.testing.assert_array_equal(at, (ref >= t).astype(np.uint8))
    assert at[ref == t].all()
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(UserError, match="threshold must be between 0 and 1"):
            C.staple(rs, threshold=bad)
    with pytest.raises(UserError, match="all reader masks are empty"):
        C.staple([img(zeros()), img(zeros())])


def test_consensus_input_checks():
    rs = readers()
    with pytest.raises(UserError, match="at least 2 reader masks, got 1"):
        C.majority_vote(rs[:1])
    with pytest.raises(UserError, match="at least 2 reader masks, got 1"):
        C.staple(rs[:1])
    with pytest.raises(UserError, match="at least 1 reader masks, got 0"):
        C.vote_count([])
    other = img(zeros((3, 6, 6)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(UserError, match="mask 3 is on a different grid than mask 1"):
        C.disagreement_map([rs[0], rs[1], other])
    with pytest.raises(UserError, match="mask 2 is not a SimpleITK image"):
        C.vote_count([rs[0], np.zeros((3, 6, 6))])
    vec = sitk.Image([6, 6, 3], sitk.sitkVectorUInt8, 2)
    with pytest.raises(UserError, match="mask 1 has 2 components per voxel"):
        C.majority_vote([vec, rs[0]])
    assert math.isfinite(float(sitk.GetArrayFromImage(C.vote_count(rs)).max()))


def test_empty_reference_with_a_test_mask():
    a = zeros()
    a[2, 2, 2:4] = 1
    m = compare_masks(img(zeros()), img(a))
    assert (m["dice"], m["jaccard"], m["surface_dice"]) == (0.0, 0.0, 0.0)
    assert math.isnan(m["hd95_mm"]) and math.isnan(m["assd_mm"])
    assert m["volume_diff_ml"] == pytest.approx(2 * 0.8 * 1.0 * 2.0 / 1000)


def test_lesion_report_extra_lesion_after_a_touching_one():
    """Component numbering follows the array order: here the touching test component is
    label 1 and the extra one label 2, the other way round from test_lesion_report_by_hand."""
    ref, test = zeros(), zeros()
    ref[1, 1, 1:3] = 1
    test[1, 1, 2:4] = 1   # touches the reference: label 1
    test[6, 8, 8] = 1     # extra: label 2
    r = lesion_report(img(ref), img(test))
    assert (r["matched"], r["extra"]) == (1, 1)
    assert [e["slices"] for e in r["extra_lesions"]] == [[6, 6]]
    assert r["extra_lesions"][0]["id"] == 2
