"""``hrmm train``: from a cohort manifest (CSV) to a model bundle with three models.

1. radiomics: reader-agreement filter, selection, ExtraTrees (+ logistic regression);
2. deep: DenseNet169 on the 2.5D stacks of the training lesions (epoch chosen on an
   internal validation split of the training set, never on the held-out set);
3. fusion: the radiomics model's selected features + PCA of the network's pooled
   features, through the same selection, ExtraTrees (+ logistic regression).

The bundle's primary model is the fusion when the deep model was trained, otherwise the
radiomics ExtraTrees (``DeepOptions(enabled=False)``, ``hrmm train --no-deep``).

``training/predictions.csv`` has one row per lesion (``lesion_id, patient_id, label,
split``) and one probability column per model, named as in the manifest's ``models``:
``radiomics``, ``radiomics_logistic``, ``deep``, ``fusion``, ``fusion_logistic``; these
are the final models' probabilities for every lesion (apparent on training lesions).
``<model>_cv`` columns hold out-of-fold probabilities of the training lesions (NaN on
validation lesions) for the models that have one for EVERY training lesion (radiomics;
fusion with fit "paper"). ``deep_role`` says which training lesions the network fitted on
(``fit``) and which it only chose its epoch on (``internal_validation``); ``deep_internal``
and, with fusion fit "internal", ``fusion*_internal`` hold the probabilities that are
out-of-sample for those lesions only (NaN elsewhere).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ClinicalMRICommonLib.files import json_safe, sha256_file
from HRMMPredictLib import bundle as bundle_mod
from HRMMPredictLib.cohort import OPTIONAL_ROIS, cohort_hash, load_cohort_manifest, summarize
from HRMMPredictLib.evaluation.stats import auc_or_none, youden_or_none
from HRMMPredictLib.fusion import (FUSION_FIT_MODES, DeepOptions, deep_outputs, fit_pca, fusion_table, pca_frame,
                                   torch_threads, train_fusion_models)
from HRMMPredictLib.radiomics.features import PreprocessConfig, extract_cohort, load_params, params_text
from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig, patient_split, range_stats, train_radiomics_models
from HRMMPredictLib.sequences import SEQUENCES

PRIMARY_RADIOMICS = "radiomics"  # ExtraTrees, the paper's method
PRIMARY_FUSION = "fusion"
DEEP_MODEL = "deep"
DEEP_FILE = "models/deep.safetensors"
PCA_FILE = "models/deep_pca.skops"


def model_name(prefix: str, classifier_kind: str) -> str:
    """``radiomics`` / ``radiomics_logistic`` / ``fusion`` / ``fusion_logistic``."""
    return prefix if classifier_kind == "extratrees" else f"{prefix}_{classifier_kind}"


def default_cache_dir(cohort_path: str | os.PathLike) -> Path:
    """The feature and 2.5D-stack cache beside the cohort manifest: ``.hrmm_cache``."""
    return Path(cohort_path).resolve().parent / ".hrmm_cache"


def extract_cohort_features(cohort: pd.DataFrame, split: pd.Series, params: dict, prep: PreprocessConfig,
                            cache_dir: Path, n_jobs: int | None, progress: Callable[[int, int, str], None] | None):
    """Reader-1 ROI features for every lesion; second reads only for training lesions (the
    agreement filter is fitted on training data only, so validation lesions need no more)."""
    tables = extract_cohort(cohort, cache_dir, params, prep, roi_kinds=("roi",), n_jobs=n_jobs, progress=progress)
    train_ids = cohort.loc[split == "train", "lesion_id"]
    kinds = tuple(k for k in OPTIONAL_ROIS if k in cohort.columns
                  and cohort.loc[split == "train", k].astype(str).str.len().gt(0).any())
    if kinds:
        tables.update(extract_cohort(cohort, cache_dir, params, prep, roi_kinds=kinds, n_jobs=n_jobs,
                                     progress=progress, lesion_ids=train_ids))
    return tables


def _classifier_entries(writer, prefix: str, kind_label: str, models: dict, X_all: pd.DataFrame,
                        ids: np.ndarray, y_all: np.ndarray, is_train: np.ndarray, preds: pd.DataFrame,
                        cv_suffix: str, cv_rule: str, extra: dict | None = None) -> dict:
    """Write the fitted selection+classifier models of one family (radiomics or fusion):
    estimator files, prediction columns and manifest entries."""
    entries = {}
    for kind, m in models.items():
        name = model_name(prefix, kind)
        p_all = m.predict_proba(X_all)
        preds[name] = p_all
        preds[f"{name}{cv_suffix}"] = m.cv_oof.reindex(ids).to_numpy()
        rel = f"models/{name}.skops"
        writer.write_estimator(rel, m.classifier)
        entries[name] = {
            "kind": kind_label, "classifier": kind, "file": rel, "prediction_column": name,
            # display ranges: every training lesion (z-score parameters: the rows fitted)
            "features": bundle_mod.features_table(range_stats(X_all.loc[is_train, m.features])),
            "zscore": {"mean": m.mean.tolist(), "scale": m.scale.tolist()},
            "threshold": m.threshold, "threshold_rule": f"Youden J on out-of-fold probabilities of {cv_rule}",
            "cv_auc": m.cv_auc, "cv_column": f"{name}{cv_suffix}",
            "validation_auc": auc_or_none(y_all[~is_train], p_all[~is_train]),
            "importances": m.importances,
            "hyperparameters": m.classifier.get_params(deep=False) if kind == "extratrees" else
            {"C": m.classifier.C},
            **(extra or {}),
        }
    return entries


def train_bundle(cohort_path: str | os.PathLike, out_dir: str | os.PathLike, params_path=None,
                 cfg: RadiomicsTrainConfig | None = None, prep: PreprocessConfig | None = None,
                 cache_dir: str | os.PathLike | None = None, n_jobs: int | None = None,
                 progress: Callable[[str], None] | None = None,
                 extraction_progress: Callable[[int, int, str], None] | None = None,
                 overwrite: bool = False, deep: DeepOptions | None = None,
                 epoch_progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train the radiomics, deep and fusion models of a cohort (its manifest CSV at
    ``cohort_path``) and write a model bundle into ``out_dir``.

    ``out_dir`` follows the extension's overwrite policy: an existing non-empty folder is
    refused unless ``overwrite``, and never when an input (the cohort manifest, the
    settings, the cache or the pretrained weights) lies inside it.
    ``deep``: the deep model and fusion settings (default: the paper's, 300 epochs);
    ``DeepOptions(enabled=False)`` trains the radiomics models only. ``epoch_progress``
    gets ``(epoch, epochs, metrics)`` after every epoch. Returns a summary.
    """
    cfg = cfg or RadiomicsTrainConfig()
    prep = prep or PreprocessConfig()
    deep = (deep or DeepOptions()).validate()   # bad device / weights file: refused before hours of work
    say = progress or (lambda s: None)
    cache = Path(cache_dir) if cache_dir else default_cache_dir(cohort_path)
    inputs = [cohort_path, params_path, cache, deep.train.pretrained_weights if deep.enabled else None]
    writer = bundle_mod.BundleWriter(out_dir, overwrite=overwrite, inputs=inputs)  # refuse before hours of work
    try:
        say("validating the cohort manifest")
        cohort = load_cohort_manifest(cohort_path)
        params = load_params(params_path)
        split = patient_split(cohort, cfg.validation_fraction, cfg.seed)
        if deep.enabled:
            _check_internal_split(deep, cfg, cohort, split)
        say(f"extracting radiomics features ({len(cohort)} lesions x {len(SEQUENCES)} sequences; cache {cache})")
        tables = extract_cohort_features(cohort, split, params, prep, cache, n_jobs, extraction_progress)

        ids = cohort["lesion_id"].astype(str).to_numpy()
        y_all = cohort["label"].to_numpy().astype(int)
        pids = cohort["patient_id"].astype(str).to_numpy()
        is_train = (split == "train").to_numpy()
        X_all = tables["roi"].loc[ids]
        models, selection = train_radiomics_models(
            X_all[is_train], y_all[is_train], pids[is_train], cfg,
            reader2=tables.get("roi_reader2"), repeat=tables.get("roi_repeat"), progress=say)

        preds = pd.DataFrame({"lesion_id": ids, "patient_id": pids, "label": y_all, "split": split.to_numpy()})
        model_entries = _classifier_entries(writer, "radiomics", "radiomics", models, X_all, ids, y_all, is_train,
                                            preds, "_cv", f"the training lesions ({cfg.cv_folds}-fold by patient, "
                                            "selection refitted per fold)")
        manifest_extra: dict = {}
        deep_summary = None
        if deep.enabled:
            deep_entries, manifest_extra, deep_summary = _train_deep_and_fusion(
                writer, deep, cfg, cohort, ids, y_all, pids, is_train, X_all, selection["selected"], preds, cache,
                say, epoch_progress)
            model_entries.update(deep_entries)
        writer.write_text("radiomics_params.yaml", params_text(params))
        writer.write_csv("training/predictions.csv", preds, index=False)
        _write_selection_records(writer, selection)
        summary_rows = summarize(cohort, split)
        primary = PRIMARY_FUSION if deep.enabled else PRIMARY_RADIOMICS
        writer.manifest.update(json_safe({
            "sequences": list(SEQUENCES),
            "radiomics": {"params_file": "radiomics_params.yaml", "preprocess": prep.to_dict(),
                          "selection_counts": selection["counts"], "lasso_C": selection["lasso_C"]},
            "training": {"config": cfg.to_dict(), "split_rule": "stratified by class, grouped by patient",
                         "deep_options": deep.to_dict()},
            "cohort": {"hash": cohort_hash(cohort), "manifest": Path(cohort_path).name, "summary": summary_rows},
            **manifest_extra,
            "models": model_entries,
            "primary_model": primary,
            "predictions": {
                "file": "training/predictions.csv",
                "columns": "one probability column per model (named as the model); <model>_cv: out-of-fold "
                           "probabilities of every training lesion where the model has them; deep_internal / "
                           "<fusion>_internal: out-of-sample for the deep network's internal-validation "
                           "lesions only; deep_role: fit / internal_validation for training lesions"},
        }))
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    out = {"model_dir": str(path), "cohort": summary_rows, "selection": selection["counts"],
           "selected_features": selection["selected"], "primary_model": primary,
           "models": {k: {"cv_auc": v.get("cv_auc"), "validation_auc": (v.get("validation_auc") or {}).get("auc"),
                          "threshold": v["threshold"]} for k, v in model_entries.items()}}
    if deep_summary:
        out["deep"] = deep_summary
    return out


def _train_deep_and_fusion(writer, deep: DeepOptions, cfg: RadiomicsTrainConfig, cohort: pd.DataFrame, ids, y_all, pids,
                           is_train, X_all: pd.DataFrame, radiomics_selected: list[str], preds: pd.DataFrame,
                           cache: Path, say, epoch_progress) -> tuple[dict, dict, dict]:
    """Stacks -> DenseNet169 (training lesions) -> features -> PCA (training lesions) ->
    fusion models. Writes the files; returns (model entries, manifest sections, summary)."""
    from HRMMPredictLib.deep.cohort import cohort_stacks
    from HRMMPredictLib.deep.model import ARCHITECTURE, N_FEATURES, save_model, select_device, train_deep_model

    say(f"building the 2.5D inputs ({len(ids)} lesions; cache {cache})")
    stacks, stack_info = cohort_stacks(cohort, cache, deep.input)
    tr = np.flatnonzero(is_train)
    with torch_threads(deep.threads) as n_threads:
        device_desc = select_device(deep.device)[1]
        say(f"training the deep model (DenseNet169, {deep.train.epochs} epochs, {len(tr)} training lesions) "
            f"on {device_desc}")
        t0 = time.perf_counter()
        net, history = train_deep_model(stacks[tr], y_all[tr], pids[tr], deep.train, device=deep.device,
                                        progress=epoch_progress)
        device_desc = history["device"]
        say(f"deep model: {history['selection']} ({time.perf_counter() - t0:.0f} s)")
        say("deep features (pooled 1664-d output) of every lesion")
        p_deep, feats = deep_outputs(net, stacks, deep.device, deep.inference_batch_size)

    # which training lesions the network fitted on, which it only chose its epoch on
    role = np.full(len(ids), "", dtype=object)
    role[tr] = "fit"
    internal = tr[np.asarray(history["val_indices"], dtype=int)]
    role[internal] = "internal_validation"
    is_internal = role == "internal_validation"
    preds[DEEP_MODEL] = p_deep
    preds["deep_internal"] = np.where(is_internal, p_deep, np.nan)
    preds["deep_role"] = role

    thr = youden_or_none(y_all[is_internal], p_deep[is_internal])
    thr_rule = (f"Youden J on the network's internal-validation lesions (n={int(is_internal.sum())}; out-of-sample "
                "for its weights)")
    if thr is None:
        thr = youden_or_none(y_all[is_train], p_deep[is_train])
        thr_rule = ("Youden J on all training lesions (apparent: the internal validation split had too few lesions "
                    "of a class)")
    if thr is None:
        thr, thr_rule = 0.5, "0.5 (the training probabilities could not rank the classes)"
    weights = deep.train.pretrained_weights
    weights_rec = None
    if weights:
        weights_rec = {"file": Path(weights).name, "sha256": sha256_file(weights)}
    save_model(net, writer.path(DEEP_FILE), metadata={
        "best_epoch": history.get("best_epoch"), "selection": history.get("selection"), "device": device_desc,
        "pretrained_weights": weights_rec})
    hist = pd.DataFrame(history["epochs"])
    writer.write_csv("training/deep_history.csv", hist, index=False)
    info = stack_info.assign(split=preds["split"].to_numpy(), deep_role=role)
    writer.write_csv("training/deep_inputs.csv", info, index=False)

    say(f"PCA of the deep features on the {len(tr)} training lesions")
    pca = fit_pca(feats[tr], deep.pca_components)
    writer.write_estimator(PCA_FILE, pca)
    pcs = pca_frame(pca, feats, ids)
    k = pcs.shape[1]

    X_fusion = fusion_table(X_all[radiomics_selected], pcs)
    fit_rows = is_train if deep.fusion_fit == "paper" else is_internal
    say(f"fusion: {len(radiomics_selected)} radiomics features + {k} deep components, fitted on "
        f"{int(fit_rows.sum())} lesions ({deep.fusion_fit})")
    fmodels, fsel = train_fusion_models(X_fusion[fit_rows], y_all[fit_rows], pids[fit_rows], cfg, deep.fusion_fit,
                                        progress=say)
    cv_suffix = "_cv" if deep.fusion_fit == "paper" else "_internal"
    cv_rule = ("the training lesions (by patient, selection refitted per fold; deep features in-sample for the "
               "network)" if deep.fusion_fit == "paper" else
               f"the network's {int(fit_rows.sum())} internal-validation lesions (by patient, selection refitted "
               "per fold)")
    entries = _classifier_entries(writer, "fusion", "fusion", fmodels, X_fusion, ids, y_all, is_train, preds,
                                  cv_suffix, cv_rule, extra={"fit_lesions": deep.fusion_fit})
    writer.write_csv("training/fusion_selection_steps.csv",
                     pd.DataFrame({"step": list(fsel["counts"]), "features": list(fsel["counts"].values())}),
                     index=False)

    deep_entry = {
        "kind": "deep", "classifier": "densenet169", "file": DEEP_FILE, "prediction_column": DEEP_MODEL,
        "threshold": float(thr), "threshold_rule": thr_rule, "cv_auc": None, "cv_column": None,
        "internal_column": "deep_internal",
        "internal_validation_auc": auc_or_none(y_all[is_internal], p_deep[is_internal]),
        "validation_auc": auc_or_none(y_all[~is_train], p_deep[~is_train]),
        "features": [],
    }
    train_rec = {k_: history.get(k_) for k_ in ("device", "amp", "channels_last", "best_epoch", "selection",
                                                "selection_metric", "best_val_auc", "best_val_loss", "n_fit",
                                                "n_val", "seconds", "train_images_per_second")}
    train_rec.update({"config": deep.train.to_dict(), "threads": n_threads, "history_file": "training/deep_history.csv",
                      "pretrained_weights": weights_rec, "epochs_run": len(history["epochs"]),
                      "history": [{k_: (round(v, 6) if isinstance(v, float) else v) for k_, v in r.items()}
                                  for r in history["epochs"]]})
    sections = {
        "deep": {
            "file": DEEP_FILE, "architecture": ARCHITECTURE, "input": deep.input.to_dict(),
            "inputs_file": "training/deep_inputs.csv", "training": train_rec,
            "features": {"source": "pooled output before the classifier", "dimension": N_FEATURES},
            "pca": {"file": PCA_FILE, "n_components": int(k), "prefix": "deep_pc",
                    "rule": f"min({deep.pca_components}, n_train - 1, {N_FEATURES}) with n_train = {len(tr)} "
                            "(a PCA of n centred rows has at most n - 1 components)",
                    "fitted_on": f"the {len(tr)} training lesions",
                    "explained_variance_ratio": float(np.sum(pca.explained_variance_ratio_))},
        },
        "fusion": {
            "fit": deep.fusion_fit, "fit_rule": FUSION_FIT_MODES[deep.fusion_fit],
            "deep_features_in_sample": deep.fusion_fit == "paper", "n_fit_lesions": int(fit_rows.sum()),
            "radiomics_inputs": list(radiomics_selected), "deep_components": int(k),
            "selection_counts": fsel["counts"], "lasso_C": fsel["lasso_C"], "selected": fsel["selected"],
            "cv_folds": int(train_fusion_cv_folds(cfg, y_all[fit_rows], pids[fit_rows], deep.fusion_fit)),
        },
    }
    summary = {"device": device_desc, "best_epoch": history.get("best_epoch"), "selection": history.get("selection"),
               "pca_components": int(k), "fusion_fit": deep.fusion_fit, "fusion_selected": fsel["selected"],
               "seconds": history.get("seconds")}
    return {DEEP_MODEL: deep_entry, **entries}, sections, summary


def _check_internal_split(deep: DeepOptions, cfg: RadiomicsTrainConfig, cohort: pd.DataFrame, split: pd.Series) -> None:
    """The network's internal validation split is a pure function of the training labels,
    patients and seed: check before any work that it can be made and, for fusion fit
    'internal', that it is large enough to fit the fusion on."""
    from HRMMPredictLib.deep.model import internal_validation_split

    tr = cohort[(split == "train").to_numpy()]
    y = tr["label"].to_numpy().astype(int)
    g = tr["patient_id"].astype(str).to_numpy()
    _, val = internal_validation_split(y, g, deep.train.val_fraction, deep.train.seed)
    if deep.fusion_fit == "internal":
        from HRMMPredictLib.fusion import fusion_config

        fusion_config(cfg, y[val], g[val], "internal")


def train_fusion_cv_folds(cfg: RadiomicsTrainConfig, y, groups, fusion_fit: str) -> int:
    from HRMMPredictLib.fusion import fusion_config

    return fusion_config(cfg, np.asarray(y), np.asarray(groups), fusion_fit).cv_folds


def _write_selection_records(writer, selection: dict) -> None:
    counts = pd.DataFrame({"step": list(selection["counts"]), "features": list(selection["counts"].values())})
    writer.write_csv("training/selection_steps.csv", counts, index=False)
    if "icc" in selection:
        df = pd.DataFrame(selection["icc"], index=selection["icc_features"])
        df.index.name = "feature"
        writer.write_csv("training/feature_icc.csv", df)


def format_training_summary(s: dict) -> str:
    """Human-readable summary of :func:`train_bundle`'s result."""
    lines = [f"Model bundle written to {s['model_dir']}"]
    for r in s["cohort"]:
        lines.append(f"  {r['split']:<10} {r['patients']:>4} patients {r['lesions']:>4} lesions "
                     f"({r['positives']} HRMM / {r['negatives']} SRMM)")
    lines.append("  features per selection step: " + ", ".join(f"{k} {v}" for k, v in s["selection"].items()))
    lines.append(f"  selected ({len(s['selected_features'])}): " + ", ".join(s["selected_features"][:8])
                 + (" ..." if len(s["selected_features"]) > 8 else ""))
    if s.get("deep"):
        d = s["deep"]
        lines.append(f"  deep model on {d['device']}: {d['selection']}; PCA to {d['pca_components']} components; "
                     f"fusion fitted on {d['fusion_fit']} lesions, selected: " + ", ".join(d["fusion_selected"][:6])
                     + (" ..." if len(d["fusion_selected"]) > 6 else ""))
    for name, m in s["models"].items():
        va = "n/a" if m["validation_auc"] is None else f"{m['validation_auc']:.3f}"
        cv = "n/a" if m["cv_auc"] is None else f"{m['cv_auc']:.3f}"
        mark = "*" if name == s.get("primary_model") else " "
        lines.append(f" {mark}{name:<22} CV AUC {cv}  validation AUC {va}  threshold {m['threshold']:.3f}")
    return "\n".join(lines)
