"""Consensus of several readers' masks: STAPLE, majority vote and a disagreement map.

All masks must be on one grid; every non-zero voxel counts as foreground.

* :func:`staple` - SimpleITK ``STAPLEImageFilter`` (Warfield et al. 2004): the probability that
  each voxel is truly foreground, estimated jointly with each reader's sensitivity and
  specificity by expectation-maximisation over the whole image. The consensus mask is
  ``probability >= threshold`` (default 0.5). Specificity is computed over the whole image
  grid, so it depends on the field of view; compare readers on the same grid only.
* :func:`majority_vote` - foreground where MORE than half of the readers say so. Ties (an even
  number of readers split exactly in half) go to background: a consensus label is only
  given where a majority drew it.
* :func:`vote_count` - number of readers labelling each voxel (0..n).
* :func:`disagreement_map` - label image: 0 = all readers agree on background,
  1 = readers disagree (some but not all labelled the voxel), 2 = all readers agree on
  foreground.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import grid_difference, same_grid

AGREE_BACKGROUND, DISAGREE, AGREE_FOREGROUND = 0, 1, 2


def _check_masks(masks: Sequence[sitk.Image], minimum: int = 2) -> list[sitk.Image]:
    masks = list(masks)
    if len(masks) < minimum:
        raise UserError(f"consensus needs at least {minimum} reader masks, got {len(masks)}")
    for i, m in enumerate(masks, start=1):
        if not isinstance(m, sitk.Image):
            raise UserError(f"mask {i} is not a SimpleITK image ({type(m).__name__})")
        if m.GetNumberOfComponentsPerPixel() != 1:
            raise UserError(f"mask {i} has {m.GetNumberOfComponentsPerPixel()} components per voxel; "
                            "expected a scalar label image")
        if i > 1 and not same_grid(masks[0], m):
            raise UserError(f"mask {i} is on a different grid than mask 1 ({grid_difference(masks[0], m)}); "
                            "resample it onto the same image first")
    return masks


def _binary_u8(m: sitk.Image) -> sitk.Image:
    return sitk.Cast(sitk.NotEqual(m, 0), sitk.sitkUInt8)


def _from_array(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(like)
    return out


def vote_count(masks: Sequence[sitk.Image]) -> sitk.Image:
    """UInt8 image with the number of readers labelling each voxel."""
    masks = _check_masks(masks, minimum=1)
    total = np.zeros(sitk.GetArrayViewFromImage(masks[0]).shape, dtype=np.uint16)
    for m in masks:
        total += sitk.GetArrayViewFromImage(m) != 0
    return _from_array(total.astype(np.uint8 if len(masks) < 256 else np.uint16), masks[0])


def majority_vote(masks: Sequence[sitk.Image]) -> sitk.Image:
    """UInt8 mask, 1 where more than half of the readers labelled the voxel (ties -> 0)."""
    masks = _check_masks(masks)
    count = sitk.GetArrayFromImage(vote_count(masks)).astype(np.int32)
    return _from_array((2 * count > len(masks)).astype(np.uint8), masks[0])


def disagreement_map(masks: Sequence[sitk.Image]) -> sitk.Image:
    """UInt8 label image: 0 all agree background, 1 readers disagree, 2 all agree foreground."""
    masks = _check_masks(masks)
    count = sitk.GetArrayFromImage(vote_count(masks))
    out = np.full(count.shape, DISAGREE, dtype=np.uint8)
    out[count == 0] = AGREE_BACKGROUND
    out[count == len(masks)] = AGREE_FOREGROUND
    return _from_array(out, masks[0])


def staple(masks: Sequence[sitk.Image], threshold: float = 0.5,
           max_iterations: int = 200) -> tuple[sitk.Image, sitk.Image, list[dict]]:
    """STAPLE consensus of binary reader masks (SimpleITK ``STAPLEImageFilter``).

    Returns ``(consensus_mask, probability_image, per_reader)``: a UInt8 mask
    (``probability >= threshold``), the Float32 probability of true foreground per voxel,
    and per reader (in input order) ``{"reader": i, "sensitivity", "specificity"}``.
    Raises UserError when fewer than 2 masks are given, grids differ, every mask is empty,
    or STAPLE does not converge to finite values.
    """
    masks = _check_masks(masks)
    if not 0.0 < threshold < 1.0:
        raise UserError(f"STAPLE threshold must be between 0 and 1, got {threshold}")
    binaries = [_binary_u8(m) for m in masks]
    if all(not sitk.GetArrayViewFromImage(b).any() for b in binaries):
        raise UserError("all reader masks are empty; STAPLE needs at least one labelled voxel")
    # the masks are on one grid within GRID_TOLERANCE (checked above); ITK's own check allows
    # only 1e-6 x spacing, so they get mask 1's geometry exactly (copies: the inputs are untouched)
    for b in binaries[1:]:
        b.CopyInformation(binaries[0])
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1)
    f.SetMaximumIterations(int(max_iterations))
    prob = f.Execute(binaries)
    sens, spec = list(f.GetSensitivity()), list(f.GetSpecificity())
    parr = sitk.GetArrayFromImage(prob)
    if not np.all(np.isfinite(parr)) or not np.all(np.isfinite(sens + spec)):
        raise UserError("STAPLE did not converge to finite values (are the masks degenerate, e.g. every "
                        "voxel labelled?); use --method majority instead")
    prob = sitk.Cast(prob, sitk.sitkFloat32)
    prob.CopyInformation(masks[0])
    consensus = _from_array((parr >= threshold).astype(np.uint8), masks[0])
    per_reader = [{"reader": i, "sensitivity": float(se), "specificity": float(sp)}
                  for i, (se, sp) in enumerate(zip(sens, spec), start=1)]
    return consensus, prob, per_reader

