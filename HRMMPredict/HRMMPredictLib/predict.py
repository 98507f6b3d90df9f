"""Prediction for one lesion: the same numbers from the CLI, the Python API and Slicer.

Only the radiomics features the models use are extracted (pyradiomics can enable single
features and image types), which gives the same values as a full extraction, much faster.
With a deep model in the bundle, the lesion's 2.5D stack is built by the same function as
in training (:func:`HRMMPredictLib.deep.cohort.lesion_stack`), run through the network
once (probability + pooled features), projected with the training PCA, and fed with the
radiomics features to the fusion models.

Each input file is read once: every image once, the ROI once per distinct voxel grid of
the sequences (once when they share a grid, as in a cohort).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import Grid, same_grid
from ClinicalMRICommonLib.images import check_finite, read_image
from HRMMPredictLib.bundle import Bundle, load_bundle
from HRMMPredictLib.fusion import DEEP_FEATURE_PREFIX, is_deep_feature
from HRMMPredictLib.radiomics.features import (PreprocessConfig, extract_radiomics, load_params,
                                               require_current_preprocessing, require_volume, split_sequence_feature)
from HRMMPredictLib.roi import mask_on_grid, same_file_warnings
from HRMMPredictLib.sequences import CHANNEL_LABELS, SEQUENCES, sequence_label

ImageLike = "str | os.PathLike | sitk.Image"


def _as_image(x, what: str) -> tuple[sitk.Image, str]:
    if isinstance(x, sitk.Image):
        return x, what
    if x is None or x == "":
        raise UserError(f"{what} is missing; give all three sequences (T1WI, T2WI, FS-T2WI)")
    img = read_image(x, what)   # a file or a DICOM series folder
    check_finite(img, x, what)
    require_volume(img, f"{what} {x}")
    return img, str(x)


def predict_case(images: Mapping[str, object], roi, model: str | os.PathLike | Bundle, resample_roi: bool = False,
                 device: str = "auto", progress: Callable[[str], None] | None = None, preview: bool = True,
                 preview_path: str | os.PathLike | None = None) -> dict:
    """Predict high-risk myeloma for one lesion.

    ``images``: sequence name (``t1``, ``t2``, ``fst2``) -> path or SimpleITK image; ``roi``:
    path or image of the ROI on the largest involved vertebral body (on the images' grid,
    or resampled with ``resample_roi``), or a mapping sequence -> ROI already on each
    sequence's grid (what the Slicer logic passes when the series have different grids).

    Returns a JSON-ready dict: ``models`` (every model's probability and class at its
    stored threshold: radiomics, deep, fusion and the logistic variants), the answer of
    the primary model (``model``, ``probability``, ``class``: the fusion when the bundle
    has a deep model), the selected features' values against their training range and,
    with a deep model, ``deep_input``: where the 2.5D crops came from, the device, and a
    preview of the stack (PNG as base64 when ``preview``, written to ``preview_path`` when
    given). The deep model runs on ``device`` (auto/cpu/cuda).
    """
    say = progress or (lambda s: None)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    man = bundle.manifest
    sequences = man.get("sequences", list(SEQUENCES))
    params = load_params(bundle.params_path)
    require_current_preprocessing(man["radiomics"].get("preprocess"), str(bundle.path))
    prep = PreprocessConfig.from_dict(man["radiomics"].get("preprocess"))
    table_models = {k: v for k, v in man["models"].items() if v.get("kind") in ("radiomics", "fusion")}
    deep_models = {k: v for k, v in man["models"].items() if v.get("kind") == "deep"}
    needed: dict[str, list[str]] = {s: [] for s in sequences}
    for entry in table_models.values():
        for f in entry["features"]:
            if is_deep_feature(f["name"]):
                continue
            seq, feat = split_sequence_feature(f["name"], sequences)
            if feat not in needed[seq]:
                needed[seq].append(feat)

    loaded = {seq: _as_image(images.get(seq), f"{sequence_label(seq)} image") for seq in sequences}
    warnings = same_file_warnings({s: images.get(s) for s in sequences}, {s: sequence_label(s) for s in sequences})
    if not isinstance(roi, (Mapping, sitk.Image)) and roi:
        for s in sequences:
            if isinstance(images.get(s), (str, os.PathLike)) and os.path.realpath(images[s]) == os.path.realpath(roi):
                raise UserError(f"the ROI file {roi} is the {sequence_label(s)} image; give the ROI mask (label map)")
    masks: dict[str, sitk.Image] = {}
    by_grid: dict[Grid, tuple[sitk.Image, bool]] = {}   # one ROI given: read once per grid

    def mask_for(seq: str) -> sitk.Image:
        if seq not in masks:
            label = sequence_label(seq)
            image = loaded[seq][0]
            if isinstance(roi, Mapping):  # one ROI per sequence, each on its sequence's grid
                if roi.get(seq) is None:
                    raise UserError(f"no ROI given for the {label} image")
                mask, resampled = mask_on_grid(roi[seq], image, image_what=f"{label} image", resample=resample_roi)
            else:
                grid = Grid.of(image)
                if grid not in by_grid:
                    by_grid[grid] = mask_on_grid(roi, image, image_what=f"{label} image", resample=resample_roi)
                mask, resampled = by_grid[grid]
            masks[seq] = mask
            if resampled:
                warnings.append(f"the ROI was resampled onto the {label} grid (nearest neighbour)")
        return masks[seq]

    values: dict[str, float] = {}
    t0 = time.perf_counter()
    jobs = [seq for seq in sequences if needed[seq]]
    seq_masks = {seq: sitk.Image(mask_for(seq)) for seq in jobs}   # one image handle per thread

    def extract(seq: str):
        said: list[str] = []
        feats = extract_radiomics(loaded[seq][0], seq_masks[seq], params, prep, feature_names=needed[seq],
                                  on_warning=said.append)
        return feats, said

    for seq in jobs:
        say(f"extracting {len(needed[seq])} feature(s) from {sequence_label(seq)}")
    # the sequences in threads: SimpleITK (N4, filters) releases the GIL, so on 2+ cores the
    # sequences overlap; the values are the serial ones (each thread has its own images)
    if len(jobs) > 1 and (os.cpu_count() or 1) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            extracted = list(pool.map(extract, jobs))
    else:
        extracted = [extract(seq) for seq in jobs]
    for seq, (feats, said) in zip(jobs, extracted):   # warnings in sequence order
        for m in said:
            _note(warnings, m)
        for k, v in feats.items():
            values[f"{seq}_{k}"] = v
    timings["radiomics_s"] = time.perf_counter() - t0

    results = {}
    deep_input = None
    if deep_models:
        t0 = time.perf_counter()
        deep_input, p_deep, components = _deep_part(bundle, {s: loaded[s][0] for s in sequences}, mask_for, roi,
                                                    device, say, preview, preview_path)
        values.update(components)
        for name, entry in deep_models.items():
            thr = float(entry["threshold"])
            results[name] = {"probability": p_deep, "threshold": thr, "class": "HRMM" if p_deep >= thr else "SRMM",
                             "classifier": entry.get("classifier")}
        timings["deep_s"] = time.perf_counter() - t0

    row = pd.DataFrame([values])
    for name, entry in table_models.items():
        clf = bundle.load_estimator(entry["file"])
        feats = [f["name"] for f in entry["features"]]
        Z = (row[feats].to_numpy(dtype=float) - np.asarray(entry["zscore"]["mean"])) / np.asarray(entry["zscore"]["scale"])
        p = float(clf.predict_proba(Z)[0, 1])
        thr = float(entry["threshold"])
        results[name] = {"probability": p, "threshold": thr, "class": "HRMM" if p >= thr else "SRMM",
                         "classifier": entry.get("classifier")}
    order = [m for m in man["models"] if m in results]
    results = {m: results[m] for m in order}
    primary = man.get("primary_model") or next(iter(results))
    feature_rows = []
    primary_feats = {f["name"] for f in man["models"][primary].get("features", [])}
    all_feats = {}
    for entry in table_models.values():
        for f in entry["features"]:
            all_feats.setdefault(f["name"], f)
    for name, f in all_feats.items():
        v = values[name]
        if is_deep_feature(name):
            seq_label = "deep"
            feat = f"PCA component {int(name[len(DEEP_FEATURE_PREFIX):])} of the DenseNet169 features"
        else:
            seq, feat = split_sequence_feature(name, sequences)
            seq_label = sequence_label(seq)
        in_range = f["min"] <= v <= f["max"]
        feature_rows.append({"name": name, "sequence": seq_label, "feature": feat, "value": v,
                             "train_min": f["min"], "train_max": f["max"], "train_mean": f["mean"],
                             "train_sd": f["sd"], "in_training_range": bool(in_range),
                             "used_by_primary": name in primary_feats})
        if not in_range:
            warnings.append(f"{name} = {v:.4g} lies outside the training range [{f['min']:.4g}, {f['max']:.4g}]")
    res = results[primary]
    timings["total_s"] = time.perf_counter() - t_start
    out = {"model": primary, "probability": res["probability"], "class": res["class"],
           "threshold": res["threshold"], "label_meaning": {"HRMM": "high-risk multiple myeloma",
                                                            "SRMM": "standard-risk multiple myeloma"},
           "models": results, "features": feature_rows, "warnings": warnings,
           "model_dir": str(bundle.path), "timings": timings}
    if deep_input is not None:
        out["deep_input"] = deep_input
    return out


def _note(warnings: list[str], message: str) -> None:
    """One warning per problem, not one per sequence (the three share the ROI)."""
    if message not in warnings:
        warnings.append(message)


def _deep_part(bundle: Bundle, images: dict, mask_for, roi, device: str, say, preview: bool,
               preview_path) -> tuple[dict, float, dict[str, float]]:
    """The 2.5D stack (the training's own function), the network, the PCA: returns the
    deep-input record, P(HRMM) of the network and the PCA components by name."""
    from HRMMPredictLib.deep.cohort import DeepInputConfig, lesion_stack, preview_base64
    from HRMMPredictLib.deep.input import save_preview_png
    from HRMMPredictLib.deep.model import select_device
    from HRMMPredictLib.fusion import deep_outputs, pca_frame

    dman = bundle.manifest["deep"]
    cfg = DeepInputConfig.from_dict(dman.get("input"))
    masks = {s: mask_for(s) for s in SEQUENCES}
    first = SEQUENCES[0]
    one_grid = not isinstance(roi, Mapping) and all(same_grid(images[s], images[first]) for s in SEQUENCES)
    say("building the 2.5D input (largest-ROI slice of T1WI, T2WI, FS-T2WI)")
    stack, info = lesion_stack(images, masks[first] if one_grid else masks, cfg)
    dev, dev_desc = select_device(device)
    say(f"running DenseNet169 on {dev_desc}")
    net = bundle.load_deep_model(dman["file"], dev)
    p, feats = deep_outputs(net, stack[None], dev, batch_size=1)
    pca = bundle.load_estimator(dman["pca"]["file"])
    comps = pca_frame(pca, feats, ["case"]).iloc[0]
    orientation = next(iter(info["crops"].values()))["orientation"]
    record = {"device": dev_desc, "size": int(cfg.size), "channels": list(CHANNEL_LABELS),
              "orientation": orientation, "crops": info["crops"], "preview_png_base64": None, "preview_png": None}
    if preview:
        record["preview_png_base64"] = preview_base64(stack, info["roi"], orientation)
    if preview_path:
        record["preview_png"] = str(save_preview_png(stack, preview_path, roi=info["roi"], orientation=orientation))
    return record, float(p[0]), {k: float(v) for k, v in comps.items()}


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
