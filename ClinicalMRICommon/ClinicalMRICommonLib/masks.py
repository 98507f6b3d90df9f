"""Masks (ROIs, segmentations): one binary-mask reader and conversion."""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .grids import grid_difference, resample_mask_to, same_grid
from .images import read_image


def read_mask(path: str | os.PathLike, reference: sitk.Image | None = None, *, what: str = "ROI",
              resample: bool = False, min_voxels: int = 1, label: int | None = None) -> sitk.Image:
    """Read a binary/label mask and check it against a reference image.

    Returns a UInt8 mask (1 inside). With ``label`` only that label counts; otherwise any
    non-zero voxel. Raises UserError for other grids (unless ``resample``), empty masks
    and masks smaller than ``min_voxels``.
    """
    m = read_image(path, what)
    if reference is not None and not same_grid(m, reference):
        if not resample:
            raise UserError(f"{what} file {path} is on a different grid than the image "
                            f"({grid_difference(m, reference)}); pass --resample-roi to resample it "
                            "onto the image (nearest neighbour)")
        m = resample_mask_to(m, reference)
    arr = sitk.GetArrayFromImage(m)
    binary = (arr == label) if label is not None else (arr != 0)
    n = int(binary.sum())
    if n == 0:
        raise UserError(f"{what} file {path} is empty (no voxel labelled); draw the ROI and save it again")
    if n < min_voxels:
        raise UserError(f"{what} file {path} has only {n} voxels (at least {min_voxels} needed for "
                        "texture features); check that the right mask was given")
    out = sitk.GetImageFromArray(binary.astype(np.uint8))
    out.CopyInformation(m)
    return out


def binary_mask(mask: sitk.Image) -> sitk.Image:
    """The mask as UInt8 0/1 (any non-zero voxel is 1), as masks are stored."""
    return sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
