"""Segmentation agreement between two masks on the same grid, in physical units (mm, mL).

Every voxel that is not zero counts as foreground. Distances use the voxel spacing of the
images. The surface metrics follow MONAI's definitions exactly (``monai.metrics``
``compute_hausdorff_distance``, ``compute_average_surface_distance``,
``compute_surface_dice``; the tests compare against MONAI itself) but are computed with
SimpleITK filters (``BinaryContour`` for the boundary, exact ``SignedMaurerDistanceMap`` with
image spacing): importing MONAI costs torch and 5-10 s on this class of machine, which the
command line and a Slicer without PyTorch should not pay for a Dice.

Metrics (:func:`compare_masks`)
-------------------------------
``dice``, ``jaccard``
    Voxel overlap.
``hd95_mm``
    95th-percentile Hausdorff distance as MONAI ``compute_hausdorff_distance(percentile=95)``:
    the larger of the two directed 95th percentiles (linear interpolation) of the distances
    between the boundary voxels of the masks (boundary = foreground voxels with a face
    neighbour in the background, i.e. mask minus its 6-connected erosion; distances between
    voxel centres).
``assd_mm``
    Average symmetric surface distance as MONAI ``compute_average_surface_distance(symmetric=True)``:
    the mean of the pooled distances of both boundaries (sum of all distances divided by
    the number of boundary voxels of both masks).
``surface_dice``
    Normalised surface Dice at ``tolerance_mm`` as MONAI ``compute_surface_dice``: the
    fraction of the boundary voxels of both masks that lie within the tolerance (<=) of the
    other mask's boundary.
``volume_ref_ml``, ``volume_test_ml``, ``volume_diff_ml``
    Voxel count x voxel volume; ``volume_diff_ml = volume_test_ml - volume_ref_ml``.

Empty masks (the convention used everywhere in this extension)
-------------------------------------------------------------
* both empty: ``dice = jaccard = surface_dice = 1``, ``hd95_mm = assd_mm = 0`` (perfect
  agreement that there is nothing);
* one empty: ``dice = jaccard = surface_dice = 0``, ``hd95_mm = assd_mm = NaN`` (a distance to
  nothing is undefined; the command line writes it as JSON ``null``).

Lesion-wise detection (:func:`lesion_detection`) follows the ISLES'22 evaluation code
(ezequieldlrosa/isles22, ``utils/eval_utils.py``, ``compute_lesion_f1_score``): lesions are
connected components (26-connectivity by default); a reference lesion is a true positive
when at least one of its voxels is also in the test mask, otherwise a false negative; a test
component that touches no reference voxel is a false positive; ``F1 = TP / (TP + (FP + FN)/2)``
(= 2TP / (2TP + FP + FN)); both masks empty gives F1 = 1. TP is counted on the reference side,
so one test component covering two reference lesions detects both.

Feedback for a reader (used by AnnotationQC's training reports): :func:`lesion_report` adds,
per reference lesion and per extra test component, its size, centre (RAS mm and voxel index),
slice range and, for reference lesions, the slices the test covers (first/last slice
included); :func:`border_offsets` gives how far (mm) the test border lies outside / inside the
reference over the lesions both share.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe as _common_json_safe
from ClinicalMRICommonLib.grids import grid_difference, same_grid

METRIC_KEYS = ("dice", "jaccard", "hd95_mm", "assd_mm", "surface_dice", "volume_ref_ml",
               "volume_test_ml", "volume_diff_ml")

EMPTY_MASK_CONVENTION = (
    "both masks empty: dice = jaccard = surface_dice = 1 and hd95_mm = assd_mm = 0; "
    "one mask empty: dice = jaccard = surface_dice = 0 and hd95_mm = assd_mm = null (NaN)")


json_safe = _common_json_safe  # one owner: ClinicalMRICommonLib.files


def _check_pair(reference: sitk.Image, test: sitk.Image) -> None:
    for img, what in ((reference, "reference"), (test, "test")):
        if not isinstance(img, sitk.Image):
            raise UserError(f"{what} mask must be a SimpleITK image, got {type(img).__name__}")
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise UserError(f"{what} mask has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                            "expected a scalar label image")
    if reference.GetDimension() != test.GetDimension():
        raise UserError(f"reference mask is {reference.GetDimension()}-D but test mask is {test.GetDimension()}-D")
    if not same_grid(reference, test):
        raise UserError(f"reference and test masks are on different grids ({grid_difference(reference, test)}); "
                        "resample the test mask onto the reference image first (nearest neighbour)")


def _binary(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(img) != 0


def _voxel_ml(img: sitk.Image) -> float:
    return float(np.prod(img.GetSpacing())) / 1000.0


def dice(reference: sitk.Image, test: sitk.Image) -> float:
    """Dice coefficient of two masks on the same grid (both empty -> 1.0)."""
    _check_pair(reference, test)
    r, t = _binary(reference), _binary(test)
    total = int(r.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(r, t).sum()) / total


def _crop_pad(r: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union and pad one background voxel all
    round, so boundaries at the image border are boundaries and the distance maps are small."""
    union = r | t
    idx = np.nonzero(union)
    sl = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    return np.pad(r[sl], 1), np.pad(t[sl], 1)


def _boundary(mask_zyx: np.ndarray, spacing_xyz: tuple[float, ...]) -> sitk.Image:
    """Boundary voxels: foreground voxels with a face neighbour in the background (mask minus
    its 6-connected erosion, MONAI's ``get_mask_edges`` definition)."""
    im = sitk.GetImageFromArray(mask_zyx.astype(np.uint8))
    im.SetSpacing(spacing_xyz)
    return sitk.BinaryContour(im, fullyConnected=False, backgroundValue=0, foregroundValue=1)


def _directed_distances(from_boundary: sitk.Image, to_boundary: sitk.Image) -> np.ndarray:
    """Exact Euclidean distance (mm) from every boundary voxel of one mask to the nearest
    boundary voxel of the other (Maurer distance map with image spacing). Outside the target
    set the signed map is the distance to its nearest voxel; inside it is <= 0 and the
    distance is 0, hence the clip."""
    dmap = sitk.SignedMaurerDistanceMap(to_boundary, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True, backgroundValue=0)
    d = sitk.GetArrayViewFromImage(dmap)
    sel = sitk.GetArrayViewFromImage(from_boundary) != 0
    return np.clip(d[sel].astype(np.float64), 0.0, None)


def surface_distances(r: np.ndarray, t: np.ndarray, spacing_xyz: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances (reference -> test, test -> reference) in mm for two
    non-empty boolean arrays (z, y, x) on one grid with SimpleITK spacing (x, y, z)."""
    rc, tc = _crop_pad(r, t)
    br, bt = _boundary(rc, spacing_xyz), _boundary(tc, spacing_xyz)
    return _directed_distances(br, bt), _directed_distances(bt, br)


def _surface_metrics(r: np.ndarray, t: np.ndarray, spacing_xyz: tuple[float, ...],
                     tolerance_mm: float) -> tuple[float, float, float]:
    d_rt, d_tr = surface_distances(r, t, spacing_xyz)
    # MONAI compute_hausdorff_distance(percentile=95): max of the directed percentiles
    # (torch.quantile = numpy linear interpolation)
    hd95 = max(float(np.percentile(d_rt, 95)), float(np.percentile(d_tr, 95)))
    pooled = np.concatenate([d_rt, d_tr])
    assd = float(pooled.mean())
    # the distance map is float32: compare with the tolerance at float32 precision (as MONAI's
    # float32 tensors do) so a distance of exactly the tolerance counts as within it
    nsd = float(np.count_nonzero(pooled <= tolerance_mm * (1 + 1e-6) + 1e-9)) / pooled.size
    return hd95, assd, nsd


def compare_masks(reference: sitk.Image, test: sitk.Image, tolerance_mm: float = 1.0) -> dict:
    """Agreement of ``test`` with ``reference`` (two masks on one grid).

    Returns exactly the keys of ``METRIC_KEYS``: dice, jaccard, hd95_mm, assd_mm,
    surface_dice (at ``tolerance_mm``), volume_ref_ml, volume_test_ml, volume_diff_ml
    (test - reference). Empty masks: see ``EMPTY_MASK_CONVENTION`` (both empty -> overlap 1,
    distances 0; one empty -> overlap 0, distances NaN). Raises UserError for different grids.
    """
    _check_pair(reference, test)
    if not (isinstance(tolerance_mm, (int, float)) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise UserError(f"tolerance must be a finite distance >= 0 mm, got {tolerance_mm!r}")
    r, t = _binary(reference), _binary(test)
    nr, nt = int(r.sum()), int(t.sum())
    inter = int(np.logical_and(r, t).sum())
    vox = _voxel_ml(reference)
    out = {
        "volume_ref_ml": nr * vox,
        "volume_test_ml": nt * vox,
        "volume_diff_ml": (nt - nr) * vox,
    }
    if nr == 0 and nt == 0:
        overlap = {"dice": 1.0, "jaccard": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0, "surface_dice": 1.0}
    elif nr == 0 or nt == 0:
        overlap = {"dice": 0.0, "jaccard": 0.0, "hd95_mm": float("nan"), "assd_mm": float("nan"),
                   "surface_dice": 0.0}
    else:
        hd95, assd, nsd = _surface_metrics(r, t, tuple(reference.GetSpacing()), float(tolerance_mm))
        overlap = {"dice": 2.0 * inter / (nr + nt), "jaccard": inter / (nr + nt - inter),
                   "hd95_mm": hd95, "assd_mm": assd, "surface_dice": nsd}
    result = {**overlap, **out}
    return {k: result[k] for k in METRIC_KEYS}


def connected_components(mask: sitk.Image, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label array (z, y, x) of the mask's connected components and their number.

    ``connectivity``: 26 (3-D, faces + edges + corners; SimpleITK fullyConnected=True) or 6
    (faces only). For 2-D images 26 means 8-connectivity and 6 means 4-connectivity.
    """
    if connectivity not in (6, 26):
        raise UserError(f"connectivity must be 6 or 26, got {connectivity}")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    labels = sitk.ConnectedComponent(binary, connectivity == 26)
    arr = sitk.GetArrayFromImage(labels)
    return arr, int(arr.max()) if arr.size else 0


def lesion_detection(reference: sitk.Image, test: sitk.Image, connectivity: int = 26) -> dict:
    """Lesion-wise detection as in the ISLES'22 evaluation.

    Returns ``{"n_reference", "n_test", "matched", "missed", "extra", "lesion_f1",
    "abs_lesion_count_diff"}``: ``matched`` (TP) reference lesions touched by at least one
    test voxel, ``missed`` (FN) reference lesions not touched, ``extra`` (FP) test
    components touching no reference voxel, ``lesion_f1 = 2TP / (2TP + FP + FN)`` (1.0 when
    both masks are empty), ``abs_lesion_count_diff = |n_test - n_reference|``.
    """
    _check_pair(reference, test)
    ref_lab, n_ref = connected_components(reference, connectivity)
    test_lab, n_test = connected_components(test, connectivity)
    both = (ref_lab > 0) & (test_lab > 0)
    matched = int(np.unique(ref_lab[both]).size)
    touching = int(np.unique(test_lab[both]).size)
    missed = n_ref - matched
    extra = n_test - touching
    denom = 2 * matched + extra + missed
    f1 = 1.0 if denom == 0 else 2.0 * matched / denom
    return {
        "n_reference": n_ref,
        "n_test": n_test,
        "matched": matched,
        "missed": missed,
        "extra": extra,
        "lesion_f1": f1,
        "abs_lesion_count_diff": abs(n_test - n_ref),
    }


# ---------------------------------------------------------------------------------------
# Lesion by lesion: what was found, what was missed, where (feedback for a reader)


def _ras(img: sitk.Image, index_xyz) -> list[float]:
    """RAS coordinates (mm, as Slicer shows them) of a continuous voxel index (x, y, z)."""
    x, y, z = img.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_xyz])
    return [-x + 0.0, -y + 0.0, z + 0.0]  # ITK physical space is LPS (+ 0.0: no "-0.0")


def _lesion_rows(labels: np.ndarray, n: int, img: sitk.Image, touched: np.ndarray) -> list[dict]:
    """One row per component of a label array: size, centroid (RAS and voxel index), slice
    range (array axis 0 = the image's k index, the acquisition slice) and whether it is
    ``touched`` by the other mask."""
    if n == 0:
        return []
    vox_ml = _voxel_ml(img)
    idx = np.nonzero(labels)
    lab = labels[idx]
    counts = np.bincount(lab, minlength=n + 1)
    order = np.argsort(lab, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts[1:])])
    rows = []
    for i in range(1, n + 1):
        sel = order[starts[i - 1]:starts[i]]
        z, y, x = (a[sel] for a in idx)
        centroid = (float(x.mean()), float(y.mean()), float(z.mean()))
        rows.append({"id": i, "voxels": int(counts[i]), "volume_ml": float(counts[i] * vox_ml),
                     "centroid_ras": [round(v, 2) for v in _ras(img, centroid)],
                     "centroid_ijk": [round(v, 1) for v in centroid],
                     "slices": [int(z.min()), int(z.max())], "detected": bool(touched[i])})
    return rows


def lesion_report(reference: sitk.Image, test: sitk.Image, connectivity: int = 26) -> dict:
    """Lesion-wise agreement with the details a reader needs to find each lesion again.

    The counts are :func:`lesion_detection`'s (ISLES'22 rule). In addition:

    ``reference_lesions``
        every reference lesion: ``id``, ``voxels``, ``volume_ml``, ``centroid_ras`` (mm, as
        Slicer shows it), ``centroid_ijk`` (voxel index), ``slices`` ``[first, last]`` (k
        index, 0-based as in Slicer's Data Probe), ``detected`` (touched by the test mask) and
        slice coverage: ``slices_total`` (slices the lesion occupies), ``slices_covered``
        (those where the test mask overlaps the lesion), ``first_slice_covered`` and
        ``last_slice_covered``;
    ``extra_lesions``
        every test component that touches no reference voxel (same fields, without coverage).
    """
    counts = lesion_detection(reference, test, connectivity=connectivity)
    ref_lab, n_ref = connected_components(reference, connectivity)
    test_lab, n_test = connected_components(test, connectivity)
    t_bin = test_lab > 0
    ref_touched = np.zeros(n_ref + 1, bool)
    ref_touched[np.unique(ref_lab[(ref_lab > 0) & t_bin])] = True
    test_touched = np.zeros(n_test + 1, bool)
    test_touched[np.unique(test_lab[(test_lab > 0) & (ref_lab > 0)])] = True
    ref_rows = _lesion_rows(ref_lab, n_ref, reference, ref_touched)
    # slice coverage: (lesion, slice) pairs of the reference and those the test overlaps
    z = np.nonzero(ref_lab)[0]
    lab = ref_lab[ref_lab > 0]
    hit = t_bin[ref_lab > 0]
    pairs = set(zip(lab.tolist(), z.tolist()))
    covered = set(zip(lab[hit].tolist(), z[hit].tolist()))
    for row in ref_rows:
        zs = sorted(k for (i, k) in pairs if i == row["id"])
        row.update(slices_total=len(zs), slices_covered=sum((row["id"], k) in covered for k in zs),
                   first_slice_covered=(row["id"], zs[0]) in covered, last_slice_covered=(row["id"], zs[-1]) in covered)
    extra = [r for r in _lesion_rows(test_lab, n_test, test, test_touched) if not r["detected"]]
    for r in extra:
        del r["detected"]
    return {**counts, "connectivity": connectivity, "reference_lesions": ref_rows, "extra_lesions": extra}


def border_offsets(reference: sitk.Image, test: sitk.Image, connectivity: int = 26) -> dict:
    """How far the test mask's border lies outside or inside the reference's, in mm, over the
    lesions both masks share (missed and extra lesions are left out: they are counted by
    :func:`lesion_report`).

    ``outside_mm``: median distance to the reference of the test's boundary voxels that lie
    outside the reference (over-segmented border), ``outside_fraction`` the share of the
    test's boundary voxels outside; ``inside_mm`` / ``inside_fraction`` the same for the
    reference's boundary voxels lying outside the test (under-segmented border). Distances
    are exact Euclidean distances between voxel centres (SimpleITK Maurer map with the voxel
    spacing): one voxel of over-growth in x reads as one x spacing. None where undefined.
    """
    _check_pair(reference, test)
    ref_lab, _ = connected_components(reference, connectivity)
    test_lab, _ = connected_components(test, connectivity)
    both = (ref_lab > 0) & (test_lab > 0)
    r = np.isin(ref_lab, np.unique(ref_lab[both])) & (ref_lab > 0)
    t = np.isin(test_lab, np.unique(test_lab[both])) & (test_lab > 0)
    out = {"outside_mm": None, "outside_fraction": None, "inside_mm": None, "inside_fraction": None}
    if not r.any() or not t.any():
        return out
    rc, tc = _crop_pad(r, t)
    spacing = tuple(reference.GetSpacing())

    def side(from_mask, to_mask):
        to_img = sitk.GetImageFromArray(to_mask.astype(np.uint8))
        to_img.SetSpacing(spacing)
        # copies, not views: a view of a temporary image points at freed memory
        dmap = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            to_img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True, backgroundValue=0))
        b = sitk.GetArrayFromImage(_boundary(from_mask, spacing)) != 0
        d = dmap[b].astype(np.float64)
        outside = d[~to_mask[b]]
        return (float(np.median(outside)) if outside.size else 0.0), float(outside.size) / max(int(b.sum()), 1)

    out["outside_mm"], out["outside_fraction"] = side(tc, rc)
    out["inside_mm"], out["inside_fraction"] = side(rc, tc)
    return out
