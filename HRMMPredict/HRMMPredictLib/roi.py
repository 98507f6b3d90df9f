"""The lesion ROI: how many voxels it needs, the one check that it has them, and the ROI on
a sequence's grid.

Every HRMM path that takes an ROI (cohort validation, radiomics extraction, the 2.5D crop,
prediction from files or from the masks Slicer exports) checks it with :func:`roi_voxels`
or, for files, with :func:`ClinicalMRICommonLib.masks.read_mask` (the extension's one mask
reader, which refuses empty and too small masks with the same rule), so an empty ROI gives
the same answer everywhere.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import resample_mask_to, same_grid
from ClinicalMRICommonLib.images import read_grid
from ClinicalMRICommonLib.masks import binary_mask, read_mask
from ClinicalMRICommonLib.orientation import orientation_of

#: Fewer voxels than this and the texture matrices are meaningless.
MIN_ROI_VOXELS = 20

#: The reads of a lesion's ROI: reader 1, reader 2 and reader 1's repeat (the cohort
#: manifest's ROI columns; the second reads feed the reader-agreement filter).
ROI_KINDS = ("roi", "roi_reader2", "roi_repeat")


def roi_voxels(mask: sitk.Image | np.ndarray, what: str = "ROI", *, label: int | None = None,
               min_voxels: int = 1) -> np.ndarray:
    """The ROI's voxels as a bool array (only ``label`` when given, else every non-zero voxel).

    Raises a UserError naming ``what`` when the ROI has no voxel or fewer than ``min_voxels``."""
    arr = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
    inside = (arr == label) if label is not None else (arr != 0)
    n = int(np.count_nonzero(inside))
    if n == 0:
        which = f"no voxel with label {label}" if label is not None else "no voxel labelled"
        raise UserError(f"{what} is empty ({which}); draw the ROI on the largest involved vertebral body and "
                        "save it again")
    if n < min_voxels:
        raise UserError(f"{what} has only {n} voxels (at least {min_voxels} needed for texture features); "
                        "check that the right mask was given")
    return inside


def mask_on_grid(roi: str | os.PathLike | sitk.Image, image: sitk.Image, *, image_what: str = "image",
                 resample: bool = False, min_voxels: int = MIN_ROI_VOXELS) -> tuple[sitk.Image, bool]:
    """``roi`` (a mask file or image) as a UInt8 0/1 mask on ``image``'s grid, and whether it
    had to be resampled (nearest neighbour, only with ``resample``). A file is read once.

    An ROI on the image's physical grid but stored in another voxel order (flipped or axes
    permuted, as dcm2niix stores DICOM segmentations) is reordered onto the image's storage
    exactly (no interpolation, not counted as resampled)."""
    if isinstance(roi, sitk.Image):
        roi = same_grid_reordered(roi, image)
        resampled = not same_grid(roi, image)
        if resampled:
            if not resample:
                raise UserError(f"the ROI is on a different grid than the {image_what}; pass --resample-roi to "
                                "resample it onto the image (nearest neighbour)")
            roi = resample_mask_to(roi, image)
        mask = binary_mask(roi)
        roi_voxels(mask, f"the ROI on the {image_what} grid", min_voxels=min_voxels)
        return mask, resampled
    grid = read_grid(roi, "ROI")
    if not same_grid(grid, image) and tuple(sorted(grid.GetSize())) == tuple(sorted(image.GetSize())):
        mask = same_grid_reordered(read_mask(roi, None, what="ROI", min_voxels=min_voxels), image)
        if same_grid(mask, image):
            return mask, False
    resampled = not same_grid(grid, image)
    return read_mask(roi, image, what="ROI", resample=resample, min_voxels=min_voxels), resampled


def same_grid_reordered(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``mask`` with its voxels reordered into ``image``'s storage order when that puts it on
    ``image``'s grid (the same physical grid stored otherwise); else ``mask`` unchanged."""
    if same_grid(mask, image) or mask.GetDimension() != 3 or image.GetDimension() != 3:
        return mask
    reordered = sitk.DICOMOrient(mask, orientation_of(image))
    return reordered if same_grid(reordered, image) else mask
