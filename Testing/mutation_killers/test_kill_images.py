"""The shared image and mask checks (ClinicalMRICommonLib.images, .masks) at their edges:
label counts, the intensity-image rule, min_voxels, spacing and direction tolerances, the
NIfTI header checks (pixdim, truncation, raw NaN that ITK would turn into 0)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib import images, masks
from ClinicalMRICommonLib.errors import InputWarning, UserError
from ClinicalMRICommonLib.grids import Grid


def write(tmp_path, arr, name="m.nrrd", spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(np.asarray(arr))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    p = tmp_path / name
    sitk.WriteImage(img, str(p))
    return p, img


# ---------------------------------------------------------------------------------------
# masks: value rules


def labels_array(n_labels: int, shape=(4, 10, 10), fill_fraction=0.5) -> np.ndarray:
    """Labels 1..n_labels spread over the first ``fill_fraction`` of the voxels, 0 elsewhere."""
    arr = np.zeros(int(np.prod(shape)), np.int16)
    n_fg = int(round(fill_fraction * arr.size))
    arr[:n_fg] = 1 + (np.arange(n_fg) % n_labels)
    return arr.reshape(shape)


def test_255_labels_are_a_label_map_256_are_an_image():
    ok = labels_array(255, shape=(4, 10, 20), fill_fraction=0.5)
    sel = masks.check_mask_values(ok, "ok.nrrd", on_warning=lambda m: None)
    assert sel.sum() == 400
    with pytest.raises(UserError, match="257 distinct values over 50% of its voxels: it looks like an intensity image"):
        masks.check_mask_values(labels_array(256, shape=(4, 10, 20), fill_fraction=0.5), "img.nrrd")


def test_many_labels_over_nearly_all_voxels_is_an_image():
    # 65 labels over 95 % of voxels: an 8-bit image; 64 labels, or exactly 90 %, is a label map
    with pytest.raises(UserError, match="66 distinct values over 95%"):
        masks.check_mask_values(labels_array(65, fill_fraction=0.95), "x.nrrd")
    assert masks.check_mask_values(labels_array(64, fill_fraction=0.95), "x.nrrd", on_warning=lambda m: None).sum() == 380
    assert masks.check_mask_values(labels_array(65, fill_fraction=0.9), "x.nrrd", on_warning=lambda m: None).sum() == 360
    assert masks.MAX_LABELS == 255 and masks.MANY_LABELS == 64


def test_value_refusals_and_accepted_float_labels():
    with pytest.raises(UserError, match="negative values \\(lowest -1\\)"):
        masks.check_mask_values(np.array([[-1, 0, 1]]), "neg.nrrd")
    with pytest.raises(UserError, match="non-integer values \\(e.g. 0.5\\)"):
        masks.check_mask_values(np.array([[0.0, 0.5, 1.0]]), "soft.nrrd")
    with pytest.raises(UserError, match="2 NaN/infinite voxels"):
        masks.check_mask_values(np.array([[0.0, np.nan, np.inf, 1.0]]), "nan.nrrd")
    sel = masks.check_mask_values(np.array([[0.0, 1.0, 1.0, 0.0]], np.float32), "float01.nrrd")
    assert sel.tolist() == [[False, True, True, False]]
    assert masks.check_mask_values(np.zeros((2, 2)), "empty.nrrd").sum() == 0  # empty is judged by read_mask


def test_several_labels_warn_and_label_selects_one():
    arr = np.array([[0, 1, 2, 2, 5]])
    seen = []
    sel = masks.check_mask_values(arr, "multi.nrrd", on_warning=seen.append)
    assert sel.tolist() == [[False, True, True, True, True]]
    assert seen == ["mask file multi.nrrd has 3 labels (1, 2, 5); all non-zero voxels are used as one mask "
                    "(choose one label with --label)"]
    with pytest.warns(InputWarning, match="3 labels"):
        masks.check_mask_values(arr, "multi.nrrd")
    assert masks.check_mask_values(arr, "multi.nrrd", label=2).tolist() == [[False, False, True, True, False]]
    with pytest.raises(UserError, match="no voxel with label 3; labels present: 1, 2, 5"):
        masks.check_mask_values(arr, "multi.nrrd", label=3)
    many = np.arange(0, 15).reshape(1, 15)
    msgs = []
    masks.check_mask_values(many, "many.nrrd", on_warning=msgs.append)
    assert "14 labels (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ...)" in msgs[0]
    single = []
    masks.check_mask_values(np.array([[0, 3, 3]]), "one.nrrd", on_warning=single.append)
    assert single == []


def test_read_mask_min_voxels_edge_and_empty(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 1, 1:4] = 1
    p, _ = write(tmp_path, arr)
    m = masks.read_mask(p, min_voxels=3)
    assert m.GetPixelID() == sitk.sitkUInt8 and int(sitk.GetArrayFromImage(m).sum()) == 3
    with pytest.raises(UserError, match="has only 3 voxels \\(at least 4 needed"):
        masks.read_mask(p, min_voxels=4)
    e, _ = write(tmp_path, np.zeros((3, 4, 5), np.uint8), "empty.nrrd")
    with pytest.raises(UserError, match="is empty \\(no voxel labelled\\)"):
        masks.read_mask(e)
    assert int(sitk.GetArrayFromImage(masks.read_mask(e, allow_empty=True)).sum()) == 0


def test_read_mask_grid_check_and_resampling(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 1:3, 1:3] = 2
    p, _ = write(tmp_path, arr)
    ref = sitk.Image([5, 4, 3], sitk.sitkFloat32)
    ref.SetSpacing((1.0, 1.0, 2.0))
    m = masks.read_mask(p, ref)
    assert m.GetSize() == (5, 4, 3) and int(sitk.GetArrayFromImage(m).sum()) == 4
    shifted = sitk.Image(ref)
    shifted.SetOrigin((0.5, 0.0, 0.0))
    with pytest.raises(UserError, match="different grid than the image.*--resample-roi"):
        masks.read_mask(p, shifted)
    r = masks.read_mask(p, shifted, resample=True)
    assert r.GetOrigin() == (0.5, 0.0, 0.0) and int(sitk.GetArrayFromImage(r).sum()) > 0
    far = sitk.Image(ref)
    far.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(UserError, match="after resampling onto the image \\(it lies outside the image\\)"):
        masks.read_mask(p, far, resample=True)


def test_read_mask_nan_in_a_nifti_that_itk_reads_as_zero(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 1, 1] = 1.0
    arr[2, 2, 2] = np.nan
    p, _ = write(tmp_path, arr, "nan.nii.gz")
    with pytest.raises(UserError, match="1 NaN/infinite voxels; a mask holds 0 outside"):
        masks.read_mask(p)


def test_binary_mask():
    img = sitk.GetImageFromArray(np.array([[[0, 3, -1, 0]]], np.int16))
    out = masks.binary_mask(img)
    assert out.GetPixelID() == sitk.sitkUInt8 and sitk.GetArrayFromImage(out).tolist() == [[[0, 1, 1, 0]]]


def test_non_integer_message_names_the_lowest_fraction():
    with pytest.raises(UserError, match="non-integer values \\(e.g. 0.25\\)"):
        masks.check_mask_values(np.array([[0.0, 0.75, 0.25, 1.0, 2.5]]), "soft.nrrd")


def test_label_list_is_cut_after_12_labels_only_when_there_are_more():
    twelve, thirteen = [], []
    masks.check_mask_values(np.arange(0, 13).reshape(1, 13), "twelve.nrrd", on_warning=twelve.append)
    masks.check_mask_values(np.arange(0, 14).reshape(1, 14), "thirteen.nrrd", on_warning=thirteen.append)
    assert "has 12 labels (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12); all non-zero" in twelve[0]
    assert "has 13 labels (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ...); all non-zero" in thirteen[0]


def test_label_warning_points_at_the_caller():
    # stacklevel: the warning is reported at the line that called the check, not inside masks.py
    with pytest.warns(InputWarning, match="2 labels") as rec:
        masks.check_mask_values(np.array([[0, 1, 2]]), "two.nrrd")
    assert rec[0].filename == __file__


def test_read_mask_options_are_keyword_only(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 1, 1:4] = 1
    p, _ = write(tmp_path, arr)
    assert int(sitk.GetArrayFromImage(masks.read_mask(path=p, what="mask")).sum()) == 3
    with pytest.raises(TypeError):
        masks.read_mask(p, None, "mask")  # what, resample, ... cannot be given by position


def test_allow_empty_does_not_lift_min_voxels(tmp_path):
    arr = np.zeros((3, 4, 5), np.uint8)
    arr[1, 1, 1:4] = 1  # 3 voxels
    p, _ = write(tmp_path, arr)
    with pytest.raises(UserError, match="has only 3 voxels \\(at least 4 needed"):
        masks.read_mask(p, min_voxels=4, allow_empty=True)
    assert int(sitk.GetArrayFromImage(masks.read_mask(p, min_voxels=3, allow_empty=True)).sum()) == 3


def test_empty_mask_resampled_is_empty_not_outside(tmp_path):
    # an empty file stays "empty"; "lies outside the image" is only said of a labelled mask
    e, _ = write(tmp_path, np.zeros((3, 4, 5), np.uint8), "empty.nrrd")
    ref = sitk.Image([5, 4, 3], sitk.sitkFloat32)
    ref.SetSpacing((1.0, 1.0, 2.0))
    ref.SetOrigin((0.5, 0.0, 0.0))
    with pytest.raises(UserError, match="is empty \\(no voxel labelled\\); draw the ROI") as exc:
        masks.read_mask(e, ref, resample=True)
    assert "after resampling" not in str(exc.value)


# ---------------------------------------------------------------------------------------
# images: shape, spacing and direction checks


def test_dimension_rule_and_messages():
    g2 = Grid((10, 12), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(UserError, match="is a 2-D image \\(a single slice, size 10 x 12\\); expected a 3-D image: "
                                        "give the whole volume"):
        images.check_image(g2, "s.nii", "image")
    g4 = Grid((2, 3, 4, 5), (1.0,) * 4, (0.0,) * 4, tuple(np.eye(4).ravel()))
    with pytest.raises(UserError, match="4-D image \\(a series of volumes.*size 2 x 3 x 4 x 5\\); expected a 3-D image: "
                                        "give one 3-D volume"):
        images.check_image(g4, "t.nii")
    images.check_image(g4, "t.nii", dims=(3, 4))
    images.check_image(g2, "s.nii", dims=None)
    with pytest.raises(UserError, match="expected a 3-D or 4-D image: give the whole volume$"):
        images.check_image(g2, "s.nii", dims=(3, 4))
    g5 = Grid((2,) * 5, (1.0,) * 5, (0.0,) * 5, tuple(np.eye(5).ravel()))
    with pytest.raises(UserError, match="is a 5-D image \\(size 2 x 2 x 2 x 2 x 2\\); expected a 3-D image$"):
        images.check_image(g5, "five.nii")
    with pytest.raises(UserError, match="4-D image \\(size 2 x 3 x 4 x 5\\); expected a 2-D image$"):
        images.check_image(g4, "t.nii", dims=2)


@pytest.mark.parametrize("spacing", [(1.0, 0.0, 1.0), (1.0, 1.0, -0.5), (float("nan"), 1.0, 1.0)])
def test_bad_spacing_refused(spacing):
    g = Grid((2, 2, 2), spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(UserError, match="zero, negative or missing voxel size"):
        images.check_image(g, "x.nrrd")


def test_direction_orthogonality_tolerance():
    assert images.ORTHOGONALITY_TOLERANCE == 1e-3

    def grid(eps):
        d = np.eye(3)
        d[0, 1] = eps  # D^T D - I has eps in the off-diagonal and eps^2 on the diagonal
        return Grid((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(d.ravel()))

    images.check_image(grid(0.9e-3), "ok.nrrd")
    with pytest.raises(UserError, match="non-orthogonal direction matrix"):
        images.check_image(grid(1.1e-3), "sheared.nrrd")
    bad = Grid((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (float("nan"),) + (0.0,) * 8)
    with pytest.raises(UserError, match="non-orthogonal"):
        images.check_image(bad, "nan.nrrd")


def test_vector_image_refused_unless_allowed(tmp_path):
    vec = sitk.Image([4, 4, 3], sitk.sitkVectorFloat32, 3)
    p = tmp_path / "rgb.nrrd"
    sitk.WriteImage(vec, str(p))
    with pytest.raises(UserError, match="has 3 components per voxel"):
        images.read_image(p)
    assert images.read_image(p, scalar=False).GetNumberOfComponentsPerPixel() == 3
    with pytest.raises(UserError, match="has 3 components per voxel"):
        images.read_grid(p)


def test_read_image_finite_rule(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[0, 0, 0] = np.inf
    arr[1, 1, 1] = np.nan
    p, _ = write(tmp_path, arr, "nan.nrrd")
    with pytest.raises(UserError, match="has 2 NaN/infinite voxels"):
        images.read_image(p)
    img = images.read_image(p, finite=False)
    assert images.nonfinite_voxels(img) == 2
    with pytest.raises(UserError, match="2 NaN/infinite"):
        images.check_finite(img, p)
    ok, _ = write(tmp_path, np.ones((3, 4, 5), np.float32), "ok.nrrd")
    images.check_finite(images.read_image(ok), ok)
    ints, _ = write(tmp_path, np.ones((3, 4, 5), np.int16), "int.nrrd")
    assert images.nonfinite_voxels(images.read_image(ints)) == 0


def test_nifti_raw_nan_is_counted_although_itk_reads_zero(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[2, 3, 4] = np.nan
    arr[0, 0, 0] = np.nan
    for name in ("raw.nii", "raw.nii.gz"):
        p, _ = write(tmp_path, arr, name)
        with pytest.raises(UserError, match="has 2 NaN/infinite voxels"):
            images.read_image(p)
        img = images.read_image(p, finite=False)
        assert images.nonfinite_voxels(img, p) == 2
        assert images.nonfinite_voxels(sitk.ReadImage(str(p)), p) == 2  # an image read elsewhere


def _nifti_bytes(tmp_path, arr=None, name="x.nii", spacing=(1.0, 1.0, 2.0)):
    p, _ = write(tmp_path, np.ones((3, 4, 5), np.int16) if arr is None else arr, name, spacing=spacing)
    return p, bytearray(p.read_bytes())


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_nifti_pixdim_zero_negative_or_nan_refused(tmp_path, value):
    p, raw = _nifti_bytes(tmp_path)
    raw[76 + 4 * 2:76 + 4 * 3] = struct.pack("<f", value)  # pixdim[2] (y spacing)
    p.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="zero, negative or missing voxel size in its NIfTI header"):
        images.read_image(p)
    with pytest.raises(UserError, match="zero, negative or missing voxel size in its NIfTI header"):
        images.read_grid(p)


def test_nifti_pixdim_of_unused_dimensions_is_ignored(tmp_path):
    p, raw = _nifti_bytes(tmp_path)
    raw[76 + 4 * 4:76 + 4 * 5] = struct.pack("<f", 0.0)  # pixdim[4] (time), not a spatial axis
    p.write_bytes(bytes(raw))
    assert images.read_image(p).GetSpacing() == (1.0, 1.0, 2.0)


def test_truncated_nifti_refused_by_the_byte_count(tmp_path):
    p, raw = _nifti_bytes(tmp_path)
    p.write_bytes(bytes(raw[:-2]))  # one int16 voxel short
    with pytest.raises(UserError, match="is truncated: it holds 118 of the 120 voxel bytes"):
        images.read_image(p)
    with pytest.raises(UserError, match="truncated"):
        images.read_grid(p)
    full, raw2 = _nifti_bytes(tmp_path, name="full.nii")
    assert images.read_grid(full).size == (5, 4, 3)


def test_truncated_gzip_refused(tmp_path):
    p, _ = write(tmp_path, np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32), "big.nii.gz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or damaged"):
        images.read_image(p)
    assert images.gzip_complete(tmp_path / "big.nii.gz") is False
    g = tmp_path / "ok.gz"
    with gzip.open(g, "wb") as fh:
        fh.write(b"x" * 100)
    assert images.gzip_complete(g) is True


def test_missing_empty_and_not_an_image(tmp_path):
    with pytest.raises(UserError, match="no image path given"):
        images.read_image("")
    with pytest.raises(UserError, match="no ROI path given"):
        images.read_image(None, "ROI")
    with pytest.raises(UserError, match="image file not found"):
        images.read_image(tmp_path / "nope.nii")
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(UserError, match="is empty \\(0 bytes\\)"):
        images.read_image(tmp_path / "empty.nii")
    (tmp_path / "short.nii").write_bytes(b"\x5c\x01\x00\x00" + b"\x00" * 100)
    with pytest.raises(UserError, match="NIfTI header is incomplete"):
        images.read_image(tmp_path / "short.nii")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="is not an image file that can be read"):
        images.read_image(tmp_path / "notes.txt")


def test_parse_nifti_header_fields(tmp_path):
    p, raw = _nifti_bytes(tmp_path, np.ones((3, 4, 5), np.float32), spacing=(0.5, 0.75, 2.0))
    info = images._parse_nifti(bytes(raw[:540]))
    assert info["version"] == 1 and info["ndim"] == 3 and info["shape"] == [5, 4, 3]
    assert info["pixdim"][1:4] == [0.5, 0.75, 2.0] and info["dtype"] == np.dtype("<f4")
    assert info["vox_offset"] == 352 and info["needed"] == 60 * 4
    assert images._parse_nifti(bytes(b"\x00" * 348)) is None


# ---------------------------------------------------------------------------------------
# images: the NIfTI header table, vox_offset, ITK's failure text, DICOM edges, raw NaN count


def _faultlib():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
    import faultlib

    return faultlib


@pytest.mark.parametrize("endian", ["<", ">"])
def test_nifti_datatype_codes_match_nibabel(endian):
    """Every real-valued NIfTI-1 datatype code gives the numpy type nibabel gives it (nibabel's
    own header, both byte orders); float128 (code 1536, which nibabel cannot hold here) is a
    16-byte float by the standard's name."""
    nib = pytest.importorskip("nibabel")
    codes = nib.nifti1.data_type_codes
    checked = 0
    for code in sorted(k for k in codes.code if isinstance(k, int)):
        dt = np.dtype(codes.dtype[code])
        if dt.kind not in "iuf":
            continue
        h = nib.Nifti1Header(endianness=endian)
        h.set_data_shape((2, 3, 4))
        h.set_data_dtype(dt)
        info = images._parse_nifti(h.binaryblock + b"\x00" * 4)
        assert info["dtype"] == h.get_data_dtype(), codes.label[code]
        assert info["needed"] == 24 * dt.itemsize
        checked += 1
    assert checked == 10  # u1 i2 i4 f4 f8 i1 u2 u4 i8 u8
    h = nib.Nifti1Header(endianness=endian)
    h.set_data_shape((2, 3, 4))
    raw = bytearray(h.binaryblock + b"\x00" * 4)
    struct.pack_into(endian + "2h", raw, 70, 1536, 128)  # DT_FLOAT128, bitpix 128
    info = images._parse_nifti(bytes(raw))
    assert codes.label[1536] == "float128"
    assert info["dtype"].kind == "f" and info["dtype"].itemsize == 16 and info["needed"] == 24 * 16


def test_nifti_vox_offset_below_the_header_is_read_as_352(tmp_path):
    # a .nii whose vox_offset field says 0 (a .hdr/.img habit): the voxels start after the
    # 348-byte header and its 4 extension bytes, so 4 missing bytes are still missing
    p = tmp_path / "off0.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32)), str(p))
    raw = bytearray(p.read_bytes())
    assert len(raw) == 352 + 240
    struct.pack_into("<f", raw, 108, 0.0)
    p.write_bytes(bytes(raw[:-4]))
    with pytest.raises(UserError, match="is truncated: it holds 236 of the 240 voxel bytes"):
        images.read_grid(p)


def test_itk_failure_text_gives_its_last_line_without_the_reason_line(tmp_path):
    img = sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))
    nrrd = tmp_path / "cut.nrrd"
    sitk.WriteImage(img, str(nrrd))
    nrrd.write_bytes(nrrd.read_bytes()[:-8])  # two float voxels short: 58 of 60 read
    with pytest.raises(UserError, match="damaged or truncated .*fread got only 58 4-sized things, not 60"):
        images.read_image(nrrd)
    mha = tmp_path / "cut.mha"
    sitk.WriteImage(img, str(mha))
    mha.write_bytes(mha.read_bytes()[:-8])
    with pytest.raises(UserError, match="could not be read as an image") as exc:
        images.read_image(mha)
    text = str(exc.value)
    # ITK's "Reason: No such file or directory" (errno of its last call) would mislead: the file exists
    assert "MetaImageIO(" in text and "File cannot be read" in text
    assert "No such file" not in text and "ITK ERROR" not in text and ".cxx" not in text


def test_itk_failure_hint_is_cut_to_120_characters(tmp_path):
    mha = tmp_path / ("long_" + "x" * 120 + ".mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32)), str(mha))
    mha.write_bytes(mha.read_bytes()[:-8])
    with pytest.raises(UserError, match="could not be read as an image") as exc:
        images.read_image(mha)
    hint = str(exc.value).split("damaged or truncated (", 1)[1].rsplit("); copy or export", 1)[0]
    assert hint.startswith("MetaImageIO(") and len(hint) == 120  # the path alone is longer


def test_a_one_file_dicom_series_is_read_from_its_file(tmp_path):
    fl = _faultlib()
    files = fl.write_dicom_series(tmp_path / "one", fl.dicom_array(1))
    img = images.read_image(files[0])
    assert img.GetSize() == (14, 12, 1)


def test_dicom_series_with_an_empty_samples_per_pixel_is_scalar(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    fl = _faultlib()
    files = fl.write_dicom_series(tmp_path / "s", fl.dicom_array(3))
    for f in files:
        ds = pydicom.dcmread(f)
        ds["SamplesPerPixel"].value = None  # present but empty: taken as 1, a grey-value image
        ds.save_as(f)
    grid, n = images.read_grid(tmp_path / "s", components=True)
    assert n == 1 and grid.size == (14, 12, 3)


def test_raw_nan_count_is_the_read_images_and_a_path_names_its_file(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[0, 0, 0] = arr[2, 3, 4] = np.nan
    a, _ = write(tmp_path, arr, "a_nan.nii")
    b, _ = write(tmp_path, np.ones((3, 4, 5), np.float32), "b_clean.nii")
    img = images.read_image(a, finite=False)
    assert images.nonfinite_voxels(img) == 2 and images.nonfinite_voxels(img, a) == 2
    assert images.nonfinite_voxels(img, b) == 0  # ITK zeroed the NaN; b's raw data has none
    a.write_bytes(b.read_bytes())  # the file replaced after reading: the image still had 2
    assert images.nonfinite_voxels(img, a) == 2
