"""ClinicalMRICommonLib.masks and .grids: the binary-mask reader's refuse/warn decisions,
label selection, the one grid tolerance and the nearest-neighbour resampler."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
import faultlib as fl  # noqa: E402

from ClinicalMRICommonLib.errors import InputWarning, UserError  # noqa: E402
from ClinicalMRICommonLib.grids import (GRID_TOLERANCE, Grid, grid_difference, require_same_grid,  # noqa: E402
                                        resample_mask_to, same_grid)
from ClinicalMRICommonLib.images import read_image  # noqa: E402
from ClinicalMRICommonLib.masks import binary_mask, read_mask  # noqa: E402


def _write(tmp_path, arr, name="m.nii.gz", **kw):
    p = tmp_path / name
    sitk.WriteImage(fl._on_grid(arr, **kw), str(p))
    return p


def test_binary_mask_read(tmp_path):
    ref = read_image(fl.good_image(tmp_path))
    m = read_mask(fl.good_mask(tmp_path), ref)
    assert m.GetPixelID() == sitk.sitkUInt8 and same_grid(m, ref)
    assert np.array_equal(sitk.GetArrayViewFromImage(m), fl.mask_array())


def test_float_mask_with_0_1_and_integral_labels_accepted(tmp_path):
    arr = fl.mask_array().astype(np.float32) * 2.0
    got = read_mask(_write(tmp_path, arr), label=2)
    assert int(sitk.GetArrayViewFromImage(got).sum()) == int(fl.mask_array().sum())


def test_several_labels_warn_and_label_selects(tmp_path):
    arr = fl.mask_array().astype(np.uint8)
    arr[3:5] *= 2
    p = _write(tmp_path, arr)
    with pytest.warns(InputWarning, match=r"has 2 labels \(1, 2\); all non-zero voxels .* --label"):
        m = read_mask(p)
    assert int(sitk.GetArrayViewFromImage(m).sum()) == int((arr != 0).sum())
    seen = []
    m2 = read_mask(p, label=2, on_warning=seen.append)
    assert seen == [] and int(sitk.GetArrayViewFromImage(m2).sum()) == int((arr == 2).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_mask(p, on_warning=seen.append)  # the callback gets it, not warnings
    assert len(seen) == 1 and "2 labels" in seen[0]
    with pytest.raises(UserError, match="no voxel with label 3; labels present: 1, 2"):
        read_mask(p, label=3)


def test_total_segmentator_label_map_is_a_mask_not_an_image(shared_data):
    seg = shared_data / "dicom" / "ct_totalsegmentator" / "example_seg_dicom.nii.gz"
    seen = []
    m = read_mask(seg, on_warning=seen.append)
    assert len(seen) == 1 and "31 labels" in seen[0]
    assert int(sitk.GetArrayViewFromImage(m).sum()) > 10000


def test_eight_bit_intensity_image_refused(tmp_path):
    arr = np.clip(fl.image_array() - 150, 1, 255).astype(np.uint8)  # <= 255 values, all non-zero
    with pytest.raises(UserError, match="looks like an intensity image"):
        read_mask(_write(tmp_path, arr))


@pytest.mark.parametrize("kind,message", [("float mask 0.5", "probability or soft map"),
                                          ("negative labels", "negative values"),
                                          ("NaN mask", "1 NaN/infinite voxels; a mask holds 0 outside"),
                                          ("intensity image as mask", "intensity image"),
                                          ("empty mask", "is empty")])
def test_bad_masks_refused_with_their_reason(tmp_path, kind, message):
    with pytest.raises(UserError, match=message):
        read_mask(fl.make(kind, tmp_path))


def test_empty_mask_allowed_where_asked(tmp_path):
    p = fl.empty_mask(tmp_path)
    assert int(sitk.GetArrayViewFromImage(read_mask(p, allow_empty=True)).sum()) == 0
    assert int(sitk.GetArrayViewFromImage(read_mask(p, allow_empty=True, label=2)).sum()) == 0


def test_min_voxels_and_grid(tmp_path):
    ref = read_image(fl.good_image(tmp_path))
    p = fl.good_mask(tmp_path)
    with pytest.raises(UserError, match="only 120 voxels"):
        read_mask(p, ref, min_voxels=121)
    moved = _write(tmp_path, fl.mask_array(), "moved.nii.gz", origin=(-10.0, 20.0, 8.0))  # one slice up
    with pytest.raises(UserError, match=r"different grid .*origin.*--resample-roi"):
        read_mask(moved, ref)
    got = read_mask(moved, ref, resample=True)
    assert same_grid(got, ref)
    assert np.array_equal(sitk.GetArrayViewFromImage(got)[4:8], fl.mask_array()[3:7])
    outside = _write(tmp_path, fl.mask_array(), "outside.nii.gz", origin=(500.0, 20.0, 5.0))
    with pytest.raises(UserError, match="after resampling onto the image"):
        read_mask(outside, ref, resample=True)


def test_binary_mask_conversion():
    img = sitk.GetImageFromArray(np.array([[[0, 3], [-1, 0]]], np.int16))
    out = binary_mask(img)
    assert out.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayViewFromImage(out).tolist() == [[[0, 1], [1, 0]]]


def test_one_grid_tolerance():
    a = Grid((4, 4, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    near = Grid((4, 4, 4), (1.0 + GRID_TOLERANCE / 2, 1.0, 2.0), (GRID_TOLERANCE / 2, 0.0, 0.0), a.direction)
    far = Grid((4, 4, 4), (1.0, 1.0, 2.0), (0.0, 3 * GRID_TOLERANCE, 0.0), a.direction)
    assert same_grid(a, near) and not same_grid(a, far)
    assert grid_difference(a, far).startswith("origin (0, 0, 0) vs (0, 0.0003, 0)")
    assert grid_difference(a, Grid((4, 4), (1, 1), (0, 0), (1, 0, 0, 1))) == "dimension 3 vs 2"
    with pytest.raises(UserError, match=r"ADC x.nii is on a different grid than DWI y.nii \(origin .*\); check"):
        require_same_grid(far, a, "ADC x.nii", "DWI y.nii", "check the series")
    require_same_grid(near, a, "ADC", "DWI")


def test_resample_mask_to_flipped_storage_and_grid_reference():
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 2, 3] = 7
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing((1.0, 2.0, 3.0))
    # the same grid stored flipped along x
    grid = Grid((5, 4, 3), (1.0, 2.0, 3.0), (4.0, 0.0, 0.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = resample_mask_to(src, grid)
    assert out.GetPixelID() == sitk.sitkUInt8
    assert sitk.GetArrayViewFromImage(out)[1, 2, 1] == 7 and int(sitk.GetArrayViewFromImage(out).sum()) == 7
    with pytest.raises(UserError, match="2-D mask onto a 3-D image"):
        resample_mask_to(sitk.Image(4, 4, sitk.sitkUInt8), grid)
    pts = grid.index_to_physical([[0, 0, 0], [4, 3, 2]])
    assert np.allclose(grid.physical_to_index(pts), [[0, 0, 0], [4, 3, 2]])
