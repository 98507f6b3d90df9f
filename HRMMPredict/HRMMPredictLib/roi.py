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
                 resample: bool = False, min_voxels: int = MIN_ROI_VOXELS, what: str = "ROI") -> tuple[sitk.Image, bool]:
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
                raise UserError(f"{'the ROI' if what == 'ROI' else what} is on a different grid than the "
                                f"{image_what}; pass --resample-roi to resample it onto the image (nearest neighbour)")
            roi = resample_mask_to(roi, image)
        mask = binary_mask(roi)
        roi_voxels(mask, f"the ROI on the {image_what} grid", min_voxels=min_voxels)
        return mask, resampled
    grid = read_grid(roi, what)
    if not same_grid(grid, image) and tuple(sorted(grid.GetSize())) == tuple(sorted(image.GetSize())):
        mask = same_grid_reordered(read_mask(roi, None, what=what, min_voxels=min_voxels), image)
        if same_grid(mask, image):
            return mask, False
    resampled = not same_grid(grid, image)
    return read_mask(roi, image, what=what, resample=resample, min_voxels=min_voxels), resampled


def same_grid_reordered(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``mask`` with its voxels reordered into ``image``'s storage order when that puts it on
    ``image``'s grid (the same physical grid stored otherwise); else ``mask`` unchanged."""
    if same_grid(mask, image) or mask.GetDimension() != 3 or image.GetDimension() != 3:
        return mask
    reordered = sitk.DICOMOrient(mask, orientation_of(image))
    return reordered if same_grid(reordered, image) else mask


#: An ROI covering more than this fraction of the field of view is not one vertebral body.
MAX_ROI_FRACTION = 0.5

# numpy axes of the canonical PIR array: k (slices) runs left -> right, j superior -> inferior,
# i anterior -> posterior
_EDGE_NAMES = (("left", "right"), ("superior", "inferior"), ("anterior", "posterior"))


def roi_warnings(mask: sitk.Image, image_what: str = "image") -> list[str]:
    """What a user should know about an ROI on an image's grid (empty list: nothing):

    - it touches the edge of the field of view (named anatomically: the lesion may be cut
      off, and the crop margin is then smaller on that side);
    - it covers more than :data:`MAX_ROI_FRACTION` of the field of view (an intensity image
      or a body mask given as the ROI, not the lesion's ROI)."""
    from ClinicalMRICommonLib.orientation import canonical

    arr = sitk.GetArrayFromImage(canonical(mask)) != 0   # a copy: the reordered image is a temporary
    out = []
    n = int(arr.sum())
    if n and n > MAX_ROI_FRACTION * arr.size:
        out.append(f"the ROI covers {100.0 * n / arr.size:.0f}% of the {image_what}'s field of view: is an intensity "
                   "image or a body mask given as the ROI? Give the lesion's ROI (largest involved vertebral body)")
    edges = []
    for axis, (low, high) in enumerate(_EDGE_NAMES):
        if arr.shape[axis] < 2:
            continue
        if np.take(arr, 0, axis=axis).any():
            edges.append(low)
        if np.take(arr, -1, axis=axis).any():
            edges.append(high)
    if edges and not out:
        out.append(f"the ROI touches the {', '.join(edges)} edge(s) of the {image_what}'s field of view: the lesion may "
                   "be cut off and the crop margin is smaller there; check the ROI and the field of view")
    return out


def same_file_warnings(paths: dict[str, object], labels: dict[str, str] | None = None) -> list[str]:
    """Warnings for the same file (or DICOM folder) given for two inputs (``paths``: input key
    -> path; non-paths such as in-memory images are ignored)."""
    seen: dict[str, str] = {}
    out = []
    for key, p in paths.items():
        if not isinstance(p, (str, os.PathLike)) or not str(p):
            continue
        try:
            real = os.path.realpath(p)
        except OSError:
            continue
        name = (labels or {}).get(key, key)
        if real in seen:
            out.append(f"the same file {p} is given for {seen[real]} and {name}: each sequence needs its own image")
        else:
            seen[real] = name
    return out
