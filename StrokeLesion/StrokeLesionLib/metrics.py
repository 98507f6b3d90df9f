"""ISLES'22 evaluation metrics of a predicted lesion mask against a reference mask.

The agreement itself is ClinicalMRICommonLib.agreement's (one owner): ``dice`` (both empty -> 1) and
``lesion_detection`` (26-connected components, a single overlapping voxel is a hit,
lesion F1 = 2TP / (2TP + FP + FN), absolute lesion-count difference). This module only
reads the files, checks them and adds the ISLES'22 absolute volume difference
``|V_pred - V_truth|`` in mL (voxel counts x voxel volume).
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import grid_difference, resample_mask_to, same_grid
from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.agreement.segmentation_metrics import dice, lesion_detection

ISLES_KEYS = ("dice", "abs_volume_diff_ml", "abs_lesion_count_diff", "lesion_f1")


def binary_mask(img: sitk.Image) -> sitk.Image:
    """Non-zero -> 1 as UInt8, geometry kept (empty masks are allowed here)."""
    out = sitk.Cast(sitk.NotEqual(img, 0), sitk.sitkUInt8)
    out.CopyInformation(img)
    return out


def volume_ml(mask: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


def lesion_metrics(truth: sitk.Image, pred: sitk.Image, *, detail: bool = False) -> dict:
    """``{"dice", "abs_volume_diff_ml", "abs_lesion_count_diff", "lesion_f1"}`` (ISLES'22).

    With ``detail`` also the lesion counts and matches of ClinicalMRICommonLib.agreement.segmentation_metrics.lesion_detection
    and both volumes.
    """
    t, p = binary_mask(truth), binary_mask(pred)
    det = lesion_detection(t, p, connectivity=26)
    out = {
        "dice": float(dice(t, p)),
        "abs_volume_diff_ml": abs(volume_ml(p) - volume_ml(t)),
        "abs_lesion_count_diff": int(det["abs_lesion_count_diff"]),
        "lesion_f1": float(det["lesion_f1"]),
    }
    if detail:
        out.update({"volume_truth_ml": volume_ml(t), "volume_pred_ml": volume_ml(p),
                    **{k: det[k] for k in ("n_reference", "n_test", "matched", "missed", "extra")}})
    return out


def lesion_metrics_files(truth_path: str | os.PathLike, pred_path: str | os.PathLike, *,
                         resample_pred: bool = False, detail: bool = False) -> dict:
    """lesion_metrics for two mask files; refuses different grids unless ``resample_pred``."""
    truth = read_image(truth_path, "truth mask")
    pred = read_image(pred_path, "predicted mask")
    if truth.GetDimension() != pred.GetDimension():
        raise UserError(f"truth mask {truth_path} is {truth.GetDimension()}D but predicted mask {pred_path} is "
                        f"{pred.GetDimension()}D")
    if not same_grid(truth, pred):
        if not resample_pred:
            raise UserError(f"predicted mask {pred_path} is on a different grid than truth mask {truth_path} "
                            f"({grid_difference(pred, truth)}); pass --resample-pred to resample it "
                            "(nearest neighbour)")
        pred = resample_mask_to(pred, truth)
    return lesion_metrics(truth, pred, detail=detail)
