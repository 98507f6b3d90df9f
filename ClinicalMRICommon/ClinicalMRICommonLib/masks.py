"""Masks (ROIs, segmentations): one binary-mask reader and conversion.

:func:`read_mask` decides, per kind of suspicious mask, whether to refuse it (UserError) or
to go on with a warning (:class:`~ClinicalMRICommonLib.errors.InputWarning`, printed by
``run_cli`` as ``warning: ...``; pass ``on_warning`` to collect the messages instead):

============================================  =========  ==========================================
mask                                          decision   why
============================================  =========  ==========================================
NaN / infinite voxels                         refused    no voxel can be said to be in or out
negative values                               refused    not a label; usually an image or a
                                                         signed difference map
non-integer values (0.5, probabilities)       refused    a probability/soft map: threshold it first
more than :data:`MAX_LABELS` distinct values  refused    an intensity image given as a mask
more than :data:`MANY_LABELS` values and      refused    an intensity image (8-bit) given as a mask
more than 90 % of voxels non-zero
several labels, no ``label=`` chosen          warning    all non-zero voxels are used as one ROI;
                                                         ``label=`` (``--label``) picks one
``label=`` not present in the mask            refused    names the labels that are present
empty (no voxel selected)                     refused    nothing to measure
fewer voxels than ``min_voxels``              refused    too small for the measurement asked for
float voxel type with values 0/1 (or integer  accepted   stored as float by some tools; harmless
labels)
============================================  =========  ==========================================
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np
import SimpleITK as sitk

from .errors import InputWarning, UserError
from .grids import grid_difference, resample_mask_to, same_grid
from .images import nonfinite_voxels, read_image

#: More distinct values than this: an intensity image, not a label map (8-bit label maps hold
#: at most 255 labels; the TotalSegmentator CT map has 117).
MAX_LABELS = 255
#: More distinct values than this, with nearly every voxel non-zero: an 8-bit intensity image.
MANY_LABELS = 64


def check_mask_values(arr: np.ndarray, path, what: str = "mask", label: int | None = None,
                      on_warning: Callable[[str], None] | None = None) -> np.ndarray:
    """The binary selection (bool array) of a mask array after the value checks of the module
    docstring; UserError or warning as documented there."""
    floating = np.issubdtype(arr.dtype, np.floating)
    if floating:
        finite = np.isfinite(arr)
        if not finite.all():
            raise _nan_mask(path, what, int((~finite).sum()))
    values = np.unique(arr)
    if values.size and values[0] < 0:
        raise UserError(f"{what} file {path} has negative values (lowest {values[0]:g}); a mask holds 0 outside and "
                        "positive label numbers inside (is this an image or a difference map?)")
    if floating and np.any(values != np.round(values)):
        frac = values[values != np.round(values)]
        raise UserError(f"{what} file {path} holds non-integer values (e.g. {float(frac[0]):g}): a probability or "
                        "soft map, not a mask; threshold it (e.g. at 0.5) and save it as a label map")
    nonzero = values[values != 0]
    if values.size > MAX_LABELS + 1 or (nonzero.size > MANY_LABELS and np.count_nonzero(arr) > 0.9 * arr.size):
        raise UserError(f"{what} file {path} has {values.size} distinct values over "
                        f"{100.0 * np.count_nonzero(arr) / max(arr.size, 1):.0f}% of its voxels: it looks like an "
                        "intensity image, not a mask; give the mask (label map) file")
    if label is not None:
        if label not in set(nonzero.tolist()) and nonzero.size:
            shown = ", ".join(f"{v:g}" for v in nonzero[:12]) or "none"
            raise UserError(f"{what} file {path} has no voxel with label {label}; labels present: {shown}")
        return arr == label
    if nonzero.size > 1:
        shown = ", ".join(f"{v:g}" for v in nonzero[:12]) + (", ..." if nonzero.size > 12 else "")
        _warn(f"{what} file {path} has {nonzero.size} labels ({shown}); all non-zero voxels are used as one mask "
              "(choose one label with --label)", on_warning)
    return arr != 0


def _nan_mask(path, what: str, n: int) -> UserError:
    return UserError(f"{what} file {path} has {n} NaN/infinite voxels; a mask holds 0 outside and label numbers "
                     "inside: give the mask (label map) file, not a probability map or an image")


def read_mask(path: str | os.PathLike, reference: sitk.Image | None = None, *, what: str = "ROI",
              resample: bool = False, min_voxels: int = 1, label: int | None = None,
              on_warning: Callable[[str], None] | None = None, allow_empty: bool = False) -> sitk.Image:
    """Read a binary/label mask, check its values (module docstring) and check it against a
    reference image.

    Returns a UInt8 mask (1 inside) on the mask's grid, or on ``reference``'s grid with
    ``resample`` (nearest neighbour). With ``label`` only that label counts; otherwise any
    non-zero voxel. Raises UserError for other grids (unless ``resample``), empty masks and
    masks smaller than ``min_voxels`` (``allow_empty`` accepts an empty mask, for comparisons
    that define a score for it). Warnings go to ``on_warning(message)`` when given, else to
    :func:`warnings.warn` as :class:`InputWarning`.
    """
    m = read_image(path, what, finite=False)  # NaN is checked here, with what it means for a mask
    n_bad = nonfinite_voxels(m, path)
    if n_bad:
        raise _nan_mask(path, what, n_bad)
    if reference is not None and not same_grid(m, reference):
        if not resample:
            raise UserError(f"{what} file {path} is on a different grid than the image "
                            f"({grid_difference(m, reference)}); pass --resample-roi to resample it "
                            "onto the image (nearest neighbour)")
    arr = sitk.GetArrayViewFromImage(m)
    binary = check_mask_values(arr, path, what, label, on_warning)
    out = sitk.GetImageFromArray(binary.astype(np.uint8))
    out.CopyInformation(m)
    if reference is not None and resample and not same_grid(m, reference):
        out = resample_mask_to(out, reference)
    n = int(np.count_nonzero(sitk.GetArrayViewFromImage(out)))
    if n == 0 and allow_empty:
        return out
    if n == 0:
        where = " after resampling onto the image (it lies outside the image)" if resample and \
            reference is not None and int(binary.sum()) else ""
        raise UserError(f"{what} file {path} is empty (no voxel labelled{where}); draw the ROI and save it again")
    if n < min_voxels:
        raise UserError(f"{what} file {path} has only {n} voxels (at least {min_voxels} needed for "
                        "texture features); check that the right mask was given")
    return out


def binary_mask(mask: sitk.Image) -> sitk.Image:
    """The mask as UInt8 0/1 (any non-zero voxel is 1), as masks are stored."""
    return sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)


def _warn(message: str, on_warning: Callable[[str], None] | None) -> None:
    if on_warning is not None:
        on_warning(message)
    else:
        warnings.warn(message, InputWarning, stacklevel=3)
