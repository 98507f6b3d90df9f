"""Tests of the 2.5D crops (HRMMPredictLib.deep.input) on synthetic boxes and on real spine MRI."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.deep.input import choose_slice_axis, crop_25d, save_preview_png, stack_25d

# A sagittal 2D acquisition as a scanner stores it: index i runs anterior->posterior,
# j superior->inferior, k (the thick 4.8 mm slices) right->left. Columns of the direction
# matrix are the LPS directions of i, j, k.
SAGITTAL_DIRECTION = (0, 0, 1,
                      1, 0, 0,
                      0, -1, 0)


def _volume(arr_kji: np.ndarray, spacing=(0.8, 0.8, 4.8), direction=SAGITTAL_DIRECTION, dtype=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_kji if dtype is None else arr_kji.astype(dtype))
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin((10.0, -20.0, 30.0))
    return img


def _box_case():
    """12 slices of 80 x 60; an ROI box whose area peaks on slice 7; a smooth background so
    that the intensity scaling has something to scale; a bright marker voxel at the box's
    anterior-superior corner (lowest i, lowest j) on slice 7."""
    k, j, i = np.meshgrid(np.arange(12), np.arange(80), np.arange(60), indexing="ij")
    img = (100 + 2.0 * i + 1.0 * j + 0.5 * k).astype(np.float32)
    roi = np.zeros(img.shape, np.uint8)
    roi[5, 30:41, 20:31] = 1
    roi[6, 25:46, 15:36] = 1
    roi[7, 20:51, 10:41] = 1          # largest: rows 20..50, cols 10..40
    roi[8, 28:43, 18:33] = 1
    img[roi == 1] += 200
    img[7, 20, 10] = 2000             # marker: anterior (i=10 lowest) & superior (j=20 lowest)
    return _volume(img), _volume(roi)


def _bbox(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    r = np.flatnonzero(mask2d.any(axis=1))
    c = np.flatnonzero(mask2d.any(axis=0))
    return int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1


def test_box_slice_bbox_and_shape():
    img, roi = _box_case()
    out = crop_25d(img, roi)
    assert out["slice_axis"] == 0 and "largest spacing" in out["slice_axis_rule"]
    assert out["plane"] == "sagittal"
    # slice 7 of this PIL storage (k runs to the left) is slice 12 - 1 - 7 = 4 of the canonical
    # PIR array (k runs to the right) that slice_index and bbox refer to
    assert out["slice_index"] == 4
    assert out["roi_area"] == 31 * 31
    assert out["roi_bbox"] == (20, 51, 10, 41)
    assert out["bbox"] == (15, 56, 5, 46)          # expanded by 5 pixels on every side
    a = out["array"]
    assert a.shape == (224, 224) and a.dtype == np.uint8
    assert a.min() == 0 and a.max() > 200             # min-max of the crop spans 0..255 (the 255
    #                                                   marker pixel is smoothed by the resize)
    inside = a[out["roi"]].mean()
    assert inside > a[~out["roi"]].mean() + 25         # the +200 ROI is brighter than its margin
    # 41 x 41 crop -> 224: the ROI starts ~5 * 224/41 = 27 px from each edge.
    r0, r1, c0, c1 = _bbox(out["roi"])
    edge = 5 * 224 / 41
    for got, want in ((r0, edge), (224 - r1, edge), (c0, edge), (224 - c1, edge)):
        assert abs(got - want) <= 3, (r0, r1, c0, c1, want)


def test_box_orientation_is_anatomical_whatever_the_storage():
    """The same physical image stored in other index orders gives the same crop, and the
    anterior-superior marker lands where the documented orientation says."""
    img, roi = _box_case()
    out = crop_25d(img, roi, unsharp=None)
    # the network input is the upright sagittal view: superior at the top, anterior left
    assert out["orientation"] == "rows S->I, columns A->P"
    peak = np.unravel_index(np.argmax(out["array"]), out["array"].shape)
    assert peak[0] < 40 and peak[1] < 40, peak
    turned = crop_25d(img, roi, unsharp=None, quarter_turns=1)      # an extra clockwise turn, on request
    assert turned["orientation"] == "rows A->P, columns I->S"
    peak = np.unravel_index(np.argmax(turned["array"]), turned["array"].shape)
    assert peak[0] < 40 and peak[1] > 184, peak       # anterior at the top, superior right
    for code in ("RAI", "LPS", "SPR", "IAL", "PIR", "RIP"):
        img2, roi2 = sitk.DICOMOrient(img, code), sitk.DICOMOrient(roi, code)
        assert img2.GetSize() != img.GetSize() or img2.GetDirection() != img.GetDirection()
        out2 = crop_25d(img2, roi2, unsharp=None)
        assert out2["orientation"] == out["orientation"]
        np.testing.assert_array_equal(out2["array"], out["array"])
        np.testing.assert_array_equal(out2["roi"], out["roi"])
        assert (out2["slice_index"], out2["bbox"]) == (out["slice_index"], out["bbox"])   # canonical indices


def test_bbox_is_clipped_at_the_image_edge():
    arr = np.random.default_rng(0).normal(100, 10, (6, 40, 30)).astype(np.float32)
    m = np.zeros(arr.shape, np.uint8)
    m[3, 0:12, 25:30] = 1                     # touches the top and right edges
    out = crop_25d(_volume(arr), _volume(m))
    assert out["bbox"] == (0, 17, 20, 30)
    # 17 x 10 crop (rows S->I, columns A->P), ROI (rows 0-11, columns 5-9) touching the top
    # and the right of the upright picture.
    r0, r1, c0, c1 = _bbox(out["roi"])
    assert (r0, c1) == (0, 224)
    assert abs(r1 - 12 * 224 / 17) <= 14 and abs(c0 - 5 * 224 / 10) <= 23, (r1, c0)


def test_percentile_scaling_and_flat_crop():
    img, roi = _box_case()
    robust = crop_25d(img, roi, intensity="percentile", unsharp=None)["array"]
    plain = crop_25d(img, roi, unsharp=None)["array"]
    # The 2000 marker compresses the min-max scale; percentiles ignore it, so the ROI
    # and background are spread over more grey levels.
    assert np.ptp(robust[50:170, 50:170].astype(int)) > np.ptp(plain[50:170, 50:170].astype(int))
    flat = _volume(np.full((4, 20, 20), 7.0, np.float32))
    m = np.zeros((4, 20, 20), np.uint8)
    m[2, 5:10, 5:10] = 1
    assert not crop_25d(flat, _volume(m))["array"].any()
    with pytest.raises(UserError, match="intensity scaling"):
        crop_25d(img, roi, intensity="zscore")


def test_unsharp_mask_sharpens_edges():
    img, roi = _box_case()
    soft = crop_25d(img, roi, unsharp=None)["array"].astype(float)
    sharp = crop_25d(img, roi)["array"].astype(float)
    grad = lambda a: np.abs(np.diff(a, axis=0)).sum() + np.abs(np.diff(a, axis=1)).sum()  # noqa: E731
    assert grad(sharp) > 1.1 * grad(soft)


def test_slice_axis_rules():
    iso = _volume(np.zeros((30, 40, 50), np.float32), spacing=(1.5, 1.5, 1.5),
                  direction=(0, 0, -1, 1, 0, 0, 0, -1, 0))         # PIR, like the TPTBox crop
    axis, rule = choose_slice_axis(iso)
    assert axis == 0 and "left-right" in rule                      # k runs right-left
    unknown = _volume(np.zeros((20, 90, 80), np.float32), spacing=(1, 1, 1), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    axis, rule = choose_slice_axis(unknown)
    assert axis == 0 and "fewest voxels" in rule
    thick_i = _volume(np.zeros((50, 40, 12), np.float32), spacing=(5.0, 0.9, 0.9), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert choose_slice_axis(thick_i)[0] == 2


def test_bad_inputs_are_user_errors():
    img, roi = _box_case()
    other = _volume(sitk.GetArrayFromImage(roi), spacing=(0.9, 0.8, 4.8))
    with pytest.raises(UserError, match="different grids"):
        crop_25d(img, other)
    with pytest.raises(UserError, match="empty"):
        crop_25d(img, _volume(np.zeros((12, 80, 60), np.uint8)))
    with pytest.raises(UserError, match="label 9"):
        crop_25d(img, roi, label=9)
    nan = sitk.GetArrayFromImage(img)
    nan[7, 40, 30] = np.nan
    with pytest.raises(UserError, match="NaN"):
        crop_25d(_volume(nan), roi)
    with pytest.raises(UserError, match="T2WI image is missing"):
        stack_25d(img, None, img, roi)


def test_stack_channel_order_and_preview(tmp_path):
    img, roi = _box_case()
    arr = sitk.GetArrayFromImage(img)
    t2 = _volume(arr.max() - arr)                      # inverted contrast
    fst2 = _volume(np.sqrt(arr))
    stack, crops = stack_25d(img, t2, fst2, roi, return_crops=True)
    assert stack.shape == (3, 224, 224) and stack.dtype == np.uint8
    for k, im in enumerate((img, t2, fst2)):
        np.testing.assert_array_equal(stack[k], crop_25d(im, roi)["array"])
    assert np.corrcoef(stack[0].ravel(), stack[1].ravel())[0, 1] < -0.9   # T2 slot holds the inverted image
    path = save_preview_png(stack, tmp_path / "sub" / "case1.png", roi=crops[0]["roi"])
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape == (224 + 14, 4 * 224 + 3 * 4, 3)
    np.testing.assert_array_equal(png[14:, 3 * 228:, :], np.moveaxis(stack, 0, 2))   # RGB composite
    assert (png[14:, :224] == (255, 0, 0)).all(axis=2).sum() > 100                   # ROI outline
    assert not list(tmp_path.glob("sub/.*"))                                           # no temp file left
    with pytest.raises(UserError, match="shape"):
        save_preview_png(stack[:2], tmp_path / "x.png")


# ---------------------------------------------------------------------------------------
# Real spine MRI


def _check_real_crop(img: sitk.Image, roi_arr: np.ndarray, expected_geometry, margin=5):
    """Independent check of a crop on a real image: slice of largest ROI area, box + margin,
    content equal to the raw slice crop put through the documented orientation, ROI at the
    expected place in the 224 x 224 picture."""
    mask = sitk.GetImageFromArray(roi_arr.astype(np.uint8))
    mask.CopyInformation(img)
    out = crop_25d(img, mask, margin=margin, unsharp=None)
    axis = out["slice_axis"]
    areas = roi_arr.sum(axis=tuple(a for a in range(3) if a != axis))
    assert out["slice_index"] == int(np.argmax(areas))
    roi2d = np.take(roi_arr, out["slice_index"], axis=axis)
    rb = _bbox(roi2d)
    h, w = roi2d.shape
    want = (max(rb[0] - margin, 0), min(rb[1] + margin, h), max(rb[2] - margin, 0), min(rb[3] + margin, w))
    assert out["roi_bbox"] == rb and out["bbox"] == want
    raw = np.take(sitk.GetArrayFromImage(img), out["slice_index"], axis=axis)[want[0]:want[1], want[2]:want[3]]
    raw_roi = roi2d[want[0]:want[1], want[2]:want[3]]
    raw, raw_roi = expected_geometry(raw.astype(float)), expected_geometry(raw_roi)
    zoom = (224 / raw.shape[0], 224 / raw.shape[1])
    ref = ndimage.zoom(raw, zoom, order=1, grid_mode=True, mode="nearest")
    assert np.corrcoef(ref.ravel(), out["array"].astype(float).ravel())[0, 1] > 0.97
    ref_roi = ndimage.zoom(raw_roi.astype(float), zoom, order=1, grid_mode=True, mode="nearest") > 0.5
    iou = (ref_roi & out["roi"]).sum() / (ref_roi | out["roi"]).sum()
    assert iou > 0.95
    # the ROI's box sits margin * scale from each edge of the picture (unless clipped)
    r0, r1, c0, c1 = _bbox(out["roi"])
    rr, cc = _bbox(raw_roi)[:2], _bbox(raw_roi)[2:]
    for got, m_px, scale in ((r0, rr[0], zoom[0]), (224 - r1, raw.shape[0] - rr[1], zoom[0]),
                             (c0, cc[0], zoom[1]), (224 - c1, raw.shape[1] - cc[1], zoom[1])):
        assert abs(got - m_px * scale) <= max(2.0, scale), (got, m_px, scale)
    return out


def test_real_lumbar_vertebral_bodies(shared_data):
    folder = shared_data / "spine" / "lumbar_vb2"
    img = sitk.ReadImage(str(folder / "VB2_02_T2_uint8_spacingUNKNOWN.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VB2_02_vertebral_bodies_labels_1-7.nii.gz")))
    # This file has an identity affine (geometry lost): the header calls the 76-slice axis
    # "superior", so the crop is oriented as an axial slice: flip rows and columns to reach
    # rows A->P / columns R->L (a half turn); the file is used as stored (anatomy unknown).
    for lab in (1, 4, 7):
        out = _check_real_crop(img, labels == lab, lambda a: np.rot90(a, k=2))
        assert out["slice_axis"] == 0 and "fewest voxels" in out["slice_axis_rule"]   # the sagittal slices


def test_real_cervical_vertebral_body(shared_data):
    folder = shared_data / "spine" / "cervical_tptbox"
    img = sitk.ReadImage(str(folder / "sub-mri_label-6_T2w.nii.gz"))
    vert = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "sub-mri_seg-vert_label-6_msk.nii.gz")))
    sub = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "sub-mri_seg-subreg_label-6_msk.nii.gz")))
    body = (vert == 6) & np.isin(sub, (49, 50))          # TPTBox: 49/50 = vertebral corpus (border/inside)
    assert body.sum() > 500
    # PIR storage: a numpy slice along axis 0 is already upright sagittal (rows S->I,
    # columns A->P), which is the network's input as it is.
    out = _check_real_crop(img, body, lambda a: a)
    assert out["plane"] == "sagittal" and out["orientation"] == "rows S->I, columns A->P"
    assert "left-right" in out["slice_axis_rule"]
