"""ClinicalMRICommonLib.images and .dicom: one reader for NIfTI, NRRD, MHA and DICOM series
folders, with the checks ITK does not make (real files throughout)."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
import faultlib as fl  # noqa: E402

from ClinicalMRICommonLib.errors import UserError  # noqa: E402
from ClinicalMRICommonLib.grids import Grid, same_grid  # noqa: E402
from ClinicalMRICommonLib.images import check_finite, read_grid, read_image  # noqa: E402


def _img(arr=None, spacing=fl.SPACING, origin=fl.ORIGIN, direction=None):
    return fl._on_grid(fl.image_array() if arr is None else arr, spacing, origin, direction)


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz", "a.nrrd", "a.mha"])
def test_formats_read_the_same_voxels_and_grid(tmp_path, name):
    d = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # a sagittal storage (left-handed: fine outside DICOM)
    img = _img(direction=d)
    sitk.WriteImage(img, str(tmp_path / name))
    got = read_image(tmp_path / name)
    assert np.array_equal(sitk.GetArrayViewFromImage(got), fl.image_array())
    assert same_grid(got, img)
    assert same_grid(read_grid(tmp_path / name), img)


def test_dims_parameter(tmp_path):
    four = fl.image_4d(tmp_path)
    with pytest.raises(UserError, match=r"4-D image \(a series of volumes.*; size 14 x 12 x 10 x 3\); expected a 3-D"):
        read_image(four)
    assert read_image(four, dims=(3, 4)).GetDimension() == 4
    assert read_image(four, dims=None).GetSize() == (14, 12, 10, 3)
    two = fl.image_2d(tmp_path)
    assert read_image(two, dims=2).GetSize() == (14, 12)
    with pytest.raises(UserError, match=r"2-D image \(a single slice, size 14 x 12\)"):
        read_grid(two)


def test_nan_in_nifti_is_found_although_itk_zeroes_it(tmp_path):
    p = fl.nan_voxels(tmp_path)
    itk = sitk.GetArrayViewFromImage(sitk.ReadImage(str(p)))
    assert np.isfinite(itk).all(), "ITK's NIfTI reader no longer zeroes NaN: the raw check may be simplified"
    with pytest.raises(UserError, match="2 NaN/infinite voxels"):
        read_image(p)
    with pytest.raises(UserError, match="2 NaN/infinite voxels"):
        check_finite(sitk.ReadImage(str(p)), p)
    assert read_image(p, finite=False).GetSize() == fl.SIZE
    # in NRRD, ITK keeps NaN: found on the array
    arr = fl.image_array()
    arr[0, 0, 0] = np.nan
    sitk.WriteImage(_img(arr), str(tmp_path / "nan.nrrd"))
    with pytest.raises(UserError, match="1 NaN/infinite voxels"):
        read_image(tmp_path / "nan.nrrd")


def test_zero_pixdim_itk_reads_as_one_mm_refused(tmp_path):
    p = fl.zero_pixdim(tmp_path)
    assert sitk.ReadImage(str(p)).GetSpacing()[1] == 1.0  # what ITK makes of it
    for reader in (read_image, read_grid):
        with pytest.raises(UserError, match=r"pixdim 0.8, 0, 3\).*1 mm"):
            reader(p)


@pytest.mark.parametrize("value", [-2.0, float("nan")])
def test_negative_or_missing_pixdim_refused(tmp_path, value):
    p = fl.good_image(tmp_path, "img.nii")
    fl._patch_pixdim(p, 1, value)
    with pytest.raises(UserError, match="zero, negative or missing voxel size"):
        read_image(p)


def test_nifti2_header_is_parsed(tmp_path):
    nib = pytest.importorskip("nibabel")
    p = tmp_path / "two.nii"
    nib.save(nib.Nifti2Image(fl.image_array().transpose(2, 1, 0), np.diag([0.8, 0.9, 3.0, 1.0])), str(p))
    with pytest.raises(UserError, match="NIfTI-2 file, which ITK .* cannot read; save it as NIfTI-1"):
        read_image(p)
    data = bytearray(p.read_bytes())
    assert struct.unpack("<i", data[:4])[0] == 540
    struct.pack_into("<d", data, 104 + 8 * 3, 0.0)  # pixdim[3]
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"pixdim 0.8, 0.9, 0\)"):
        read_grid(p)


def test_non_orthogonal_direction_refused(tmp_path):
    with pytest.raises(UserError, match="non-orthogonal"):
        read_image(fl.non_orthogonal_direction(tmp_path))
    nib = pytest.importorskip("nibabel")
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 1] = 0.5
    img = nib.Nifti1Image(np.ones((4, 5, 6), np.int16), affine)
    img.header.set_qform(None, 0)
    img.header.set_sform(affine, 1)
    nib.save(img, str(tmp_path / "shear.nii"))
    with pytest.raises(UserError, match="non-orthogonal"):
        read_image(tmp_path / "shear.nii")


def test_scaled_integer_nifti_is_not_called_truncated(tmp_path):
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), np.eye(4))
    img.header.set_slope_inter(0.5, 10)
    nib.save(img, str(tmp_path / "scaled.nii"))
    got = read_image(tmp_path / "scaled.nii")  # ITK gives float voxels: 4 bytes, the file holds 2
    assert sitk.GetArrayViewFromImage(got)[0, 0, 1] == pytest.approx(10.0 + 0.5 * 30)


# ---------------------------------------------------------------------------------------
# DICOM series folders


def _series(tmp_path, name="series", **kw):
    arr = fl.dicom_array(6)
    folder = tmp_path / name
    fl.write_dicom_series(folder, arr, **kw)
    return folder, arr


def test_dicom_folder_read_sorted_by_position_not_name(tmp_path):
    sag = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # x -> P, y -> I, slices -> R: IOP [0,1,0, 0,0,-1]
    # file names in the reverse order of the slice positions, instance numbers too
    folder, arr = _series(tmp_path, origin=(-20.0, 5.0, 40.0), direction=sag, names=lambda i: f"im{9 - i}.dcm")
    img = read_image(folder, "T2 image")
    assert np.array_equal(sitk.GetArrayViewFromImage(img), arr)
    expect = Grid((14, 12, 6), (0.8, 0.9, 3.0), (-20.0, 5.0, 40.0), sag)
    assert same_grid(img, expect), (img.GetOrigin(), img.GetDirection(), img.GetSpacing())
    assert same_grid(read_grid(folder), expect)


def test_dicom_two_series_listed(tmp_path):
    with pytest.raises(UserError, match=r"holds 2 DICOM series: 1\) 'T1 SAG' \(6 files, MR, UID "
                                        r"1\.2\.826\.0\.1\.3680043\.2\.1125\.11\); 2\) 'T2 SAG'"):
        read_image(fl.dicom_two_series(tmp_path))


def test_dicom_uneven_and_duplicate_positions_refused(tmp_path):
    with pytest.raises(UserError, match="not evenly spaced"):
        read_grid(fl.dicom_missing_slice(tmp_path))
    folder, _ = _series(tmp_path, name="dup", positions=[0, 3, 6, 6, 9, 12])
    with pytest.raises(UserError, match="6 slices share 5 positions"):
        read_image(folder)


def test_dicom_tilted_stack_refused(tmp_path):
    folder, arr = _series(tmp_path, name="tilt")
    # shift the slices within their plane as a gantry tilt does
    pydicom = pytest.importorskip("pydicom")
    for i, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [0.0, 1.5 * i, 3.0 * i]
        ds.save_as(f)
    with pytest.raises(UserError, match="gantry tilt"):
        read_image(folder)


def test_dicom_mixed_orientations_refused(tmp_path):
    folder, _ = _series(tmp_path, name="mixed")
    fl.write_dicom_series(folder, fl.dicom_array(1), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0), prefix="localizer",
                          series_uid="1.2.826.0.1.3680043.2.1125.1")
    with pytest.raises(UserError, match="same orientation"):
        read_image(folder)


def test_one_dicom_file_of_a_series_points_to_its_folder(tmp_path):
    folder, _ = _series(tmp_path)
    with pytest.raises(UserError, match=r"one slice of a DICOM series of 6 files; give the folder"):
        read_image(sorted(folder.iterdir())[0])


def test_real_ct_series_and_its_y_flipped_segmentation(shared_data):
    """A DICOM series folder is accepted wherever an image path is; its segmentation is stored
    y-flipped (direction diag(1,-1,1)): resampling it onto the series gives the voxels the
    physical grid says, checked against an index computation of our own."""
    from ClinicalMRICommonLib.grids import resample_mask_to
    from ClinicalMRICommonLib.orientation import canonical

    folder = shared_data / "dicom" / "ct_totalsegmentator" / "series"
    seg_path = shared_data / "dicom" / "ct_totalsegmentator" / "example_seg_dicom.nii.gz"
    ct = read_image(folder, "CT")
    assert ct.GetSize() == (512, 512, 20)
    assert ct.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert same_grid(read_grid(folder), ct)
    itk = sitk.ImageSeriesReader()
    itk.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    plain = itk.Execute()
    assert same_grid(plain, ct) and np.array_equal(sitk.GetArrayViewFromImage(plain), sitk.GetArrayViewFromImage(ct))

    seg = read_image(seg_path, "segmentation")
    assert seg.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, 1))
    on_ct = sitk.GetArrayFromImage(resample_mask_to(seg, ct))

    # independent: the physical point of CT voxel centres (every 3rd in x and y) -> segmentation index
    ct_grid, seg_grid = Grid.of(ct), Grid.of(seg)
    i, j, k = np.meshgrid(np.arange(0, 512, 3), np.arange(0, 512, 3), np.arange(20), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    idx = np.rint(seg_grid.physical_to_index(ct_grid.index_to_physical(ijk))).astype(int)
    seg_arr = sitk.GetArrayViewFromImage(seg)  # numpy order (z, y, x)
    assert np.array_equal(on_ct[ijk[:, 2], ijk[:, 1], ijk[:, 0]], seg_arr[idx[:, 2], idx[:, 1], idx[:, 0]])
    assert np.array_equal(on_ct, np.flip(seg_arr, axis=1))  # the same, said as a flip of numpy's y axis
    assert len(np.unique(on_ct)) > 10 and np.count_nonzero(on_ct) > 10000

    c_ct, c_seg = canonical(ct), canonical(seg)
    assert same_grid(c_ct, c_seg)
    assert np.array_equal(sitk.GetArrayViewFromImage(canonical(resample_mask_to(seg, ct))),
                          sitk.GetArrayViewFromImage(c_seg))


def test_dicom_folder_copy_with_a_readme_still_reads(tmp_path, shared_data):
    src = shared_data / "dicom" / "ct_totalsegmentator" / "series"
    dst = tmp_path / "series"
    shutil.copytree(src, dst)
    (dst / "README.txt").write_text("exported by the scanner\n")
    assert read_grid(dst).size == (512, 512, 20)
