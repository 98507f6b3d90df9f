"""ClinicalMRICommonLib.orientation: the same physical image stored in different voxel orders
(axis permutations and flips, NIfTI and NRRD) gives identical arrays and identical grids after
canonicalisation. The storages are built here with numpy and our own geometry formula, not
with ITK's filters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.grids import Grid, same_grid
from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.orientation import CANONICAL_ORIENTATION, canonical, orientation_of

#: A sagittal acquisition as a scanner stores it (IOP [0,1,0, 0,0,-1]: x -> P, y -> I, slices -> R).
SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
SIZE = (9, 7, 5)              # ITK order (x, y, z)
SPACING = (0.7, 0.8, 4.0)
ORIGIN = (12.0, -30.0, 55.0)


def _base_itk_order() -> np.ndarray:
    """Distinct voxel values, indexed [i, j, k] (ITK order)."""
    return np.arange(np.prod(SIZE), dtype=np.int16).reshape(SIZE) * 3 + 7


def _stored(perm, flips) -> sitk.Image:
    """The base image stored with ITK axes permuted (new axis a = old axis perm[a]) and flipped
    (flips[a]), geometry computed here: spacing and direction columns follow their axes, the
    origin is the physical position of the new first voxel."""
    vox = _base_itk_order().transpose(perm)
    for a, f in enumerate(flips):
        if f:
            vox = np.flip(vox, axis=a)
    d = np.asarray(SAGITTAL).reshape(3, 3)
    spacing = [SPACING[p] for p in perm]
    cols = [d[:, p] * (-1.0 if f else 1.0) for p, f in zip(perm, flips)]
    first = np.zeros(3)
    for p, f in zip(perm, flips):
        first[p] = SIZE[p] - 1 if f else 0
    origin = np.asarray(ORIGIN) + d @ (np.asarray(SPACING) * first)
    img = sitk.GetImageFromArray(np.ascontiguousarray(vox.transpose(2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(tuple(origin))
    img.SetDirection(tuple(np.column_stack(cols).ravel()))
    return img


STORAGES = [(perm, flips) for perm in itertools.permutations(range(3))
            for flips in [(0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 1)]]


def test_canonical_orientation_is_the_sagittal_scanner_order():
    assert CANONICAL_ORIENTATION == "PIR"
    d = np.asarray(SAGITTAL).reshape(3, 3)
    assert np.linalg.det(d) == pytest.approx(1.0)  # right-handed, as DICOM grids are
    img = _stored((0, 1, 2), (0, 0, 0))
    assert orientation_of(img) == "PIR"
    out = canonical(img)
    assert np.array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(img))
    # numpy axis 0 is the sagittal slice axis: 5 slices of 4 mm
    assert sitk.GetArrayViewFromImage(out).shape[0] == 5 and out.GetSpacing()[2] == 4.0


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_every_storage_gives_the_same_canonical_image(tmp_path, ext):
    reference = canonical(_stored((0, 1, 2), (0, 0, 0)))
    ref_arr = sitk.GetArrayFromImage(reference)
    orientations = set()
    for n, (perm, flips) in enumerate(STORAGES):
        stored = _stored(perm, flips)
        path = tmp_path / f"storage_{n}{ext}"
        sitk.WriteImage(stored, str(path))
        got = read_image(path)
        orientations.add(orientation_of(got))
        out = canonical(got)
        assert orientation_of(out) == CANONICAL_ORIENTATION
        assert np.array_equal(sitk.GetArrayViewFromImage(out), ref_arr), (perm, flips)
        assert same_grid(out, reference), (perm, flips, out.GetOrigin(), reference.GetOrigin())
    assert len(orientations) == len(STORAGES)  # really 24 different voxel orders


def test_canonicalisation_keeps_every_voxel_where_it_is():
    stored = _stored((2, 0, 1), (1, 0, 1))
    out = canonical(stored)
    g_in, g_out = Grid.of(stored), Grid.of(out)
    a_in, a_out = sitk.GetArrayViewFromImage(stored), sitk.GetArrayViewFromImage(out)
    rng = np.random.default_rng(1)
    idx = np.stack([rng.integers(0, s, 50) for s in stored.GetSize()], axis=1)
    target = np.rint(g_out.physical_to_index(g_in.index_to_physical(idx))).astype(int)
    assert np.array_equal(a_in[idx[:, 2], idx[:, 1], idx[:, 0]], a_out[target[:, 2], target[:, 1], target[:, 0]])


def test_mask_and_image_stay_aligned():
    image = _stored((1, 0, 2), (0, 1, 0))
    mask = sitk.Cast(image > 100, sitk.sitkUInt8)
    ci, cm = canonical(image), canonical(mask)
    assert same_grid(ci, cm)
    assert np.array_equal(sitk.GetArrayViewFromImage(ci) > 100, sitk.GetArrayViewFromImage(cm).astype(bool))
