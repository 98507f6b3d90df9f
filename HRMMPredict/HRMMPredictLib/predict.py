"""Prediction for one lesion: the same numbers from the CLI, the Python API and Slicer.

Only the features a model uses are extracted (pyradiomics can enable single features and
image types), which gives the same values as a full extraction, much faster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import SimpleITK as sitk

from AnnotationQCLib.common import UserError, check_finite, read_image, read_mask, same_grid, resample_mask_to
from HRMMPredictLib.bundle import Bundle, load_bundle
from HRMMPredictLib.radiomics_features import (MIN_ROI_VOXELS, SEQUENCE_NAMES, PreprocessConfig, extract_features,
                                               load_params, split_sequence_feature)

ImageLike = "str | os.PathLike | sitk.Image"


def _as_image(x, what: str) -> tuple[sitk.Image, str]:
    if isinstance(x, sitk.Image):
        return x, what
    if x is None or x == "":
        raise UserError(f"{what} is missing; give all three sequences (T1WI, T2WI, FS-T2WI)")
    img = read_image(x, what)
    check_finite(img, x, what)
    return img, str(x)


def _as_mask(roi, image: sitk.Image, roi_name: str, resample: bool, seq_label: str) -> tuple[sitk.Image, bool]:
    """The ROI on ``image``'s grid; (mask, resampled?)."""
    if isinstance(roi, sitk.Image):
        if not same_grid(roi, image):
            if not resample:
                raise UserError(f"the ROI is on a different grid than the {seq_label} image; "
                                "pass --resample-roi to resample it onto the image (nearest neighbour)")
            roi = resample_mask_to(roi, image)
            resampled = True
        else:
            resampled = False
        arr = sitk.GetArrayViewFromImage(roi) != 0
        n = int(arr.sum())
        if n == 0:
            raise UserError(f"the ROI is empty on the {seq_label} grid; draw it on the largest involved vertebral body")
        if n < MIN_ROI_VOXELS:
            raise UserError(f"the ROI has only {n} voxels on the {seq_label} grid (at least {MIN_ROI_VOXELS} needed)")
        m = sitk.GetImageFromArray(arr.astype(np.uint8))
        m.CopyInformation(roi)
        return m, resampled
    was_same = same_grid(read_image(roi, "ROI"), image)
    return read_mask(roi, image, what="ROI", resample=resample, min_voxels=MIN_ROI_VOXELS), not was_same


def predict_case(images: Mapping[str, object], roi, model: str | os.PathLike | Bundle, resample_roi: bool = False,
                 device: str = "auto", progress: Callable[[str], None] | None = None) -> dict:
    """Predict high-risk myeloma for one lesion.

    ``images``: sequence name (``t1``, ``t2``, ``fst2``) -> path or SimpleITK image; ``roi``:
    path or image of the ROI on the largest involved vertebral body (on the images' grid,
    or resampled with ``resample_roi``), or a mapping sequence -> ROI already on each
    sequence's grid (what the Slicer logic passes when the series have different grids). Returns a JSON-ready dict with every model's
    probability and class at its stored threshold, the answer of the primary model and the
    selected features' values against their training range.
    """
    say = progress or (lambda s: None)
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    man = bundle.manifest
    sequences = man.get("sequences", ["t1", "t2", "fst2"])
    params = load_params(bundle.params_path)
    prep = PreprocessConfig.from_dict(man["radiomics"].get("preprocess"))
    rad_models = {k: v for k, v in man["models"].items() if v.get("kind") == "radiomics"}
    needed: dict[str, list[str]] = {s: [] for s in sequences}
    for entry in rad_models.values():
        for f in entry["features"]:
            seq, feat = split_sequence_feature(f["name"], sequences)
            if feat not in needed[seq]:
                needed[seq].append(feat)

    loaded = {}
    for seq in sequences:
        label = SEQUENCE_NAMES.get(seq, seq)
        loaded[seq] = _as_image(images.get(seq), f"{label} image")
    warnings = []
    values: dict[str, float] = {}
    for seq in sequences:
        if not needed[seq]:
            continue
        label = SEQUENCE_NAMES.get(seq, seq)
        img, src = loaded[seq]
        seq_roi = roi.get(seq) if isinstance(roi, Mapping) else roi  # one ROI, or one per sequence grid
        if seq_roi is None:
            raise UserError(f"no ROI given for the {label} image")
        mask, resampled = _as_mask(seq_roi, img, "ROI", resample_roi, label)
        if resampled:
            warnings.append(f"the ROI was resampled onto the {label} grid (nearest neighbour)")
        say(f"extracting {len(needed[seq])} feature(s) from {label}")
        feats = extract_features(img, mask, params, prep, feature_names=needed[seq])
        for k, v in feats.items():
            values[f"{seq}_{k}"] = v

    row = pd.DataFrame([values])
    results = {}
    for name, entry in rad_models.items():
        clf = bundle.load_estimator(entry["file"])
        feats = [f["name"] for f in entry["features"]]
        Z = (row[feats].to_numpy(dtype=float) - np.asarray(entry["zscore"]["mean"])) / np.asarray(entry["zscore"]["scale"])
        p = float(clf.predict_proba(Z)[0, 1])
        thr = float(entry["threshold"])
        results[name] = {"probability": p, "threshold": thr, "class": "HRMM" if p >= thr else "SRMM",
                         "classifier": entry.get("classifier")}
    primary = man.get("primary_model") or next(iter(results))
    feature_rows = []
    primary_feats = {f["name"]: f for f in man["models"][primary]["features"]} if primary in rad_models else {}
    all_feats = {}
    for entry in rad_models.values():
        for f in entry["features"]:
            all_feats.setdefault(f["name"], f)
    for name, f in all_feats.items():
        v = values[name]
        seq, feat = split_sequence_feature(name, sequences)
        in_range = f["min"] <= v <= f["max"]
        feature_rows.append({"name": name, "sequence": SEQUENCE_NAMES.get(seq, seq), "feature": feat, "value": v,
                             "train_min": f["min"], "train_max": f["max"], "train_mean": f["mean"],
                             "train_sd": f["sd"], "in_training_range": bool(in_range),
                             "used_by_primary": name in primary_feats})
        if not in_range:
            warnings.append(f"{name} = {v:.4g} lies outside the training range [{f['min']:.4g}, {f['max']:.4g}]")
    res = results[primary]
    return {"model": primary, "probability": res["probability"], "class": res["class"],
            "threshold": res["threshold"], "label_meaning": {"HRMM": "high-risk multiple myeloma",
                                                             "SRMM": "standard-risk multiple myeloma"},
            "models": results, "features": feature_rows, "warnings": warnings,
            "model_dir": str(bundle.path)}


def format_prediction(result: dict) -> str:
    """Human-readable summary of :func:`predict_case`'s result."""
    lines = [f"Prediction ({result['model']} model): {result['class']}  "
             f"P(high risk) = {result['probability']:.3f}  (threshold {result['threshold']:.3f})"]
    for name, r in result["models"].items():
        mark = "*" if name == result["model"] else " "
        lines.append(f" {mark} {name:<22} P = {r['probability']:.3f}  threshold {r['threshold']:.3f}  -> {r['class']}")
    lines.append("Selected features (value | training range):")
    for f in result["features"]:
        flag = "" if f["in_training_range"] else "  OUTSIDE training range"
        lines.append(f"   {f['name']:<58} {f['value']:>12.4g} | [{f['train_min']:.4g}, {f['train_max']:.4g}]{flag}")
    for w in result["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
