"""``hrmm train``: from a cohort manifest to a model bundle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from AnnotationQCLib.common import UserError, json_safe
from HRMMPredictLib import bundle as bundle_mod
from HRMMPredictLib.manifest import OPTIONAL_ROIS, cohort_hash, load_manifest, summarize
from HRMMPredictLib.model import TrainConfig, patient_split, train_radiomics_models
from HRMMPredictLib.radiomics_features import (SEQUENCES, PreprocessConfig, extract_cohort, load_params,
                                               params_text)

PRIMARY_RADIOMICS = "radiomics"  # ExtraTrees, the paper's method


def default_cache_dir(manifest_path: str | os.PathLike) -> Path:
    return Path(manifest_path).resolve().parent / ".hrmm_cache"


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


def train_bundle(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, params_path=None,
                 cfg: TrainConfig | None = None, prep: PreprocessConfig | None = None,
                 cache_dir: str | os.PathLike | None = None, n_jobs: int | None = None,
                 progress: Callable[[str], None] | None = None,
                 extraction_progress: Callable[[int, int, str], None] | None = None,
                 overwrite: bool = False) -> dict:
    """Train the radiomics models of a cohort and write a model bundle. Returns a summary."""
    cfg = cfg or TrainConfig()
    prep = prep or PreprocessConfig()
    say = progress or (lambda s: None)
    writer = bundle_mod.BundleWriter(out_dir, overwrite=overwrite)  # refuse early, before hours of work
    try:
        say("validating the cohort manifest")
        cohort = load_manifest(manifest_path)
        params = load_params(params_path)
        split = patient_split(cohort, cfg.validation_fraction, cfg.seed)
        cache = Path(cache_dir) if cache_dir else default_cache_dir(manifest_path)
        say(f"extracting radiomics features ({len(cohort)} lesions x {len(SEQUENCES)} sequences; cache {cache})")
        tables = extract_cohort_features(cohort, split, params, prep, cache, n_jobs, extraction_progress)

        ids = cohort["lesion_id"].astype(str).to_numpy()
        y_all = cohort["label"].to_numpy().astype(int)
        is_train = (split == "train").to_numpy()
        X_all = tables["roi"].loc[ids]
        X_train = X_all[is_train]
        models, selection = train_radiomics_models(
            X_train, y_all[is_train], cohort["patient_id"].to_numpy()[is_train], cfg,
            reader2=tables.get("roi_reader2"), repeat=tables.get("roi_repeat"), progress=say)

        from HRMMPredictLib.stats import roc_auc_delong

        preds = pd.DataFrame({"lesion_id": ids, "patient_id": cohort["patient_id"].to_numpy(), "label": y_all,
                              "split": split.to_numpy()})
        model_entries = {}
        for kind, m in models.items():
            name = PRIMARY_RADIOMICS if kind == "extratrees" else f"radiomics_{kind}"
            p_all = m.predict_proba(X_all)
            preds[name] = p_all
            preds[f"{name}_cv"] = np.where(is_train, m.cv_oof.reindex(ids).to_numpy(), np.nan)
            y_val = y_all[~is_train]
            val_auc = None
            if len(np.unique(y_val)) == 2 and np.ptp(p_all[~is_train]) > 0:
                val_auc = roc_auc_delong(y_val, p_all[~is_train])
            rel = f"models/{name}.skops"
            writer.write_estimator(rel, m.classifier)
            model_entries[name] = {
                "kind": "radiomics", "classifier": kind, "file": rel,
                "features": bundle_mod.features_table(m.train_stats),
                "zscore": {"mean": m.mean.tolist(), "scale": m.scale.tolist()},
                "threshold": m.threshold, "threshold_rule": "Youden J on out-of-fold training probabilities",
                "cv_auc": m.cv_auc, "validation_auc": val_auc, "importances": m.importances,
                "hyperparameters": m.classifier.get_params(deep=False) if kind == "extratrees" else
                {"C": m.classifier.C},
            }
        writer.write_text("radiomics_params.yaml", params_text(params))
        writer.write_csv("training/predictions.csv", preds, index=False)
        _write_selection_records(writer, selection)
        summary_rows = summarize(cohort, split)
        writer.manifest.update(json_safe({
            "sequences": list(SEQUENCES),
            "radiomics": {"params_file": "radiomics_params.yaml", "preprocess": prep.to_dict(),
                          "selection_counts": selection["counts"], "lasso_C": selection["lasso_C"]},
            "training": {"config": cfg.to_dict(), "split_rule": "stratified by class, grouped by patient"},
            "cohort": {"hash": cohort_hash(cohort), "manifest": Path(manifest_path).name, "summary": summary_rows},
            "models": model_entries,
            "primary_model": PRIMARY_RADIOMICS,
        }))
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return {"model_dir": str(path), "cohort": summary_rows, "selection": selection["counts"],
            "selected_features": selection["selected"],
            "models": {k: {"cv_auc": v["cv_auc"], "validation_auc": (v["validation_auc"] or {}).get("auc"),
                           "threshold": v["threshold"]} for k, v in model_entries.items()}}


def _write_selection_records(writer, selection: dict) -> None:
    counts = pd.DataFrame({"step": list(selection["counts"]), "features": list(selection["counts"].values())})
    writer.write_csv("training/selection_steps.csv", counts, index=False)
    if "icc" in selection:
        df = pd.DataFrame(selection["icc"], index=selection["icc_features"])
        df.index.name = "feature"
        writer.write_csv("training/feature_icc.csv", df)
