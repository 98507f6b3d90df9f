"""``hrmm train``: from a cohort manifest (CSV) to a model bundle with three models.

1. radiomics: reader-agreement filter, selection, ExtraTrees (+ logistic regression);
2. deep: DenseNet169 on the 2.5D stacks of the training lesions (never on the held-out set);
3. fusion: radiomics selection + PCA of the network's pooled features, through the same
   selection, ExtraTrees (+ logistic regression): :class:`HRMMPredictLib.fusion.FusionEstimator`,
   which refits the radiomics selection wherever the fusion is estimated.

Training estimates (manifest ``models.<name>``: ``cv_auc``, ``cv_auc_ci``,
``cv_unavailable_reason``, ``oof_probabilities_honest``) are reported only where every
step the probabilities depend on was refitted without the lesion: the radiomics models
(tuning nested), the deep model and the fusion with ``DeepOptions.deep_cv`` (one network
per outer fold), the fusion with fit "internal" (on the network's unseen
internal-validation lesions). Otherwise ``cv_auc`` is null with the reason, the threshold
is a fixed 0.5, and the held-out validation set speaks. Youden thresholds come from
honest out-of-fold probabilities only.

The bundle's primary model is the fusion when the deep model was trained, otherwise the
radiomics ExtraTrees (``DeepOptions(enabled=False)``, ``hrmm train --no-deep``).

``training/predictions.csv`` has one row per lesion (``lesion_id, patient_id, label,
split``) and one probability column per model, named as in the manifest's ``models``:
``radiomics``, ``radiomics_logistic``, ``deep``, ``fusion``, ``fusion_logistic``; these
are the final models' probabilities for every lesion (apparent on training lesions).
``<model>_cv`` columns hold honest out-of-fold probabilities of the training lesions (NaN
on validation lesions) for the models that have one for EVERY training lesion (radiomics;
deep and fusion with ``deep_cv``). ``deep_role`` says which training lesions the network
fitted on (``fit``) and which it did not (``internal_validation``: in fit "paper" they
chose its epoch; in fit "internal" it never saw them); ``deep_internal`` and, with fusion
fit "internal", ``fusion*_internal`` hold the probabilities of those lesions only (NaN
elsewhere).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe, sha256_file
from HRMMPredictLib import bundle as bundle_mod
from HRMMPredictLib.cohort import OPTIONAL_ROIS, cohort_hash, load_cohort_manifest, summarize
from HRMMPredictLib.evaluation.stats import auc_or_none, youden_or_none
from HRMMPredictLib.fusion import (FUSION_FIT_MODES, IN_SAMPLE_REASON, DeepOptions, FusionEstimator, deep_outputs,
                                   fit_pca, fusion_config, fusion_cross_validated_proba, fusion_table, pca_frame,
                                   torch_threads)
from HRMMPredictLib.radiomics.features import PreprocessConfig, extract_cohort, load_params, params_text
from HRMMPredictLib.radiomics.model import (RadiomicsTrainConfig, lesion_groups, patient_split, range_stats,
                                            train_radiomics_models)
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
                            cache_dir: Path, n_jobs: int | None, progress: Callable[[int, int, str], None] | None,
                            scheduler: str | None = None):
    """Reader-1 ROI features for every lesion; second reads only for training lesions (the
    agreement filter is fitted on training data only, so validation lesions need no more).
    ``scheduler``: a Dask cluster instead of ``n_jobs`` local processes (see
    :mod:`HRMMPredictLib.radiomics.executors`)."""
    tables = extract_cohort(cohort, cache_dir, params, prep, roi_kinds=("roi",), n_jobs=n_jobs, progress=progress,
                            scheduler=scheduler)
    train_ids = cohort.loc[split == "train", "lesion_id"]
    kinds = tuple(k for k in OPTIONAL_ROIS if k in cohort.columns
                  and cohort.loc[split == "train", k].astype(str).str.len().gt(0).any())
    if kinds:
        tables.update(extract_cohort(cohort, cache_dir, params, prep, roi_kinds=kinds, n_jobs=n_jobs,
                                     progress=progress, lesion_ids=train_ids, scheduler=scheduler))
    return tables


FIXED_THRESHOLD_RULE = ("0.5 (fixed: no honest out-of-fold probabilities to choose a threshold on; "
                        "see cv_unavailable_reason)")


def estimate_fields(cv_auc, cv_ci, honest: bool, reason: str | None) -> dict:
    """The four per-model fields of a training estimate (manifest and summary)."""
    return {"cv_auc": None if cv_auc is None else float(cv_auc), "cv_auc_ci": None if cv_ci is None else list(cv_ci),
            "cv_unavailable_reason": None if cv_auc is not None else reason,
            "oof_probabilities_honest": bool(honest)}


def _classifier_entries(writer, prefix: str, kind_label: str, models: dict, X_all: pd.DataFrame,
                        ids: np.ndarray, y_all: np.ndarray, is_train: np.ndarray, preds: pd.DataFrame,
                        cv_suffix: str, extra: dict | None = None) -> dict:
    """Write the fitted selection+classifier models of one family (radiomics or fusion):
    estimator files, prediction columns and manifest entries. A model without honest
    out-of-fold probabilities gets no ``<name><cv_suffix>`` column, ``cv_auc`` null with
    its ``cv_unavailable_reason`` and the fixed threshold 0.5."""
    entries = {}
    for kind, m in models.items():
        name = model_name(prefix, kind)
        p_all = m.predict_proba(X_all)
        preds[name] = p_all
        has_oof = bool(m.oof_honest and m.cv_oof.notna().any())
        if has_oof:
            preds[f"{name}{cv_suffix}"] = m.cv_oof.reindex(ids).to_numpy()
        else:
            m.threshold = 0.5
        rel = f"models/{name}.skops"
        writer.write_estimator(rel, m.classifier)
        entries[name] = {
            "kind": kind_label, "classifier": kind, "file": rel, "prediction_column": name,
            # display ranges: every training lesion (z-score parameters: the rows fitted)
            "features": bundle_mod.features_table(range_stats(X_all.loc[is_train, m.features])),
            "zscore": {"mean": m.mean.tolist(), "scale": m.scale.tolist()},
            "threshold": m.threshold,
            "threshold_rule": f"Youden J on out-of-fold probabilities of {m.cv_rule}" if has_oof else
            FIXED_THRESHOLD_RULE,
            **estimate_fields(m.cv_auc if has_oof else None, m.cv_auc_ci if has_oof else None, has_oof,
                              m.cv_unavailable_reason),
            "cv_column": f"{name}{cv_suffix}" if has_oof else None,
            # which training lesions the out-of-fold column covers: all, or (fusion fit 'internal') the
            # network's internal-validation lesions only (NaN on the others)
            "cv_covers": None if not has_oof else
            "training" if m.cv_oof.reindex(ids)[is_train].notna().all() else "internal_validation",
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
                 epoch_progress: Callable[[int, int, dict], None] | None = None,
                 scheduler: str | None = None) -> dict:
    """Train the radiomics, deep and fusion models of a cohort (its manifest CSV at
    ``cohort_path``) and write a model bundle into ``out_dir``.

    ``out_dir`` follows the extension's overwrite policy: an existing non-empty folder is
    refused unless ``overwrite``, and never when an input (the cohort manifest, the
    settings, the cache or the pretrained weights) lies inside it.
    ``deep``: the deep model and fusion settings (default: the paper's, 300 epochs);
    ``DeepOptions(enabled=False)`` trains the radiomics models only. ``epoch_progress``
    gets ``(epoch, epochs, metrics)`` after every epoch. ``scheduler``: run the feature
    extraction on a Dask cluster (``tcp://HOST:PORT`` or ``local``) instead of ``n_jobs``
    local processes; same cache and results. Returns a summary.
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
        tables = extract_cohort_features(cohort, split, params, prep, cache, n_jobs, extraction_progress,
                                         scheduler=scheduler)

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
                                            preds, "_cv")
        manifest_extra: dict = {}
        deep_summary = None
        if deep.enabled:
            deep_entries, manifest_extra, deep_summary = _train_deep_and_fusion(
                writer, deep, cfg, cohort, ids, y_all, pids, is_train, X_all, tables.get("roi_reader2"),
                tables.get("roi_repeat"), preds, cache, say, epoch_progress)
            model_entries.update(deep_entries)
        writer.write_text("radiomics_params.yaml", params_text(params))
        writer.write_csv("training/predictions.csv", preds, index=False)
        _write_selection_records(writer, selection)
        summary_rows = summarize(cohort, split)
        primary = PRIMARY_FUSION if deep.enabled else PRIMARY_RADIOMICS
        writer.manifest.update(json_safe({
            "sequences": list(SEQUENCES),
            "radiomics": {"params_file": "radiomics_params.yaml", "preprocess": prep.to_dict(),
                          "selection_counts": selection["counts"], "lasso_C": selection["lasso_C"],
                          "lasso_path": selection.get("lasso_path")},
            "training": {"config": cfg.to_dict(), "split_rule": "stratified by class, grouped by patient",
                         "deep_options": deep.to_dict()},
            "cohort": {"hash": cohort_hash(cohort), "manifest": Path(cohort_path).name, "summary": summary_rows},
            **manifest_extra,
            "models": model_entries,
            "primary_model": primary,
            "predictions": {
                "file": "training/predictions.csv",
                "columns": "one probability column per model (named as the model); <model>_cv: honest "
                           "out-of-fold probabilities of every training lesion where the model has them; "
                           "deep_internal / <fusion>_internal: the deep network's internal-validation lesions "
                           "only; deep_role: fit / internal_validation for training lesions"},
        }))
        path = writer.commit()
    except BaseException:
        writer.abort()
        raise
    out = {"model_dir": str(path), "cohort": summary_rows, "selection": selection["counts"],
           "selected_features": selection["selected"], "primary_model": primary,
           "models": {k: {"cv_auc": v.get("cv_auc"), "cv_auc_ci": v.get("cv_auc_ci"),
                          "cv_unavailable_reason": v.get("cv_unavailable_reason"),
                          "oof_probabilities_honest": v.get("oof_probabilities_honest"),
                          "validation_auc": (v.get("validation_auc") or {}).get("auc"),
                          "threshold": v["threshold"]} for k, v in model_entries.items()}}
    if deep_summary:
        out["deep"] = deep_summary
    return out


class _DeepFusionFit:
    """Everything the deep model and the fusion fitted on one set of training lesions
    (all of them for the final models, one outer fold's training part with ``deep_cv``)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _fit_deep_fusion(deep: DeepOptions, cfg: RadiomicsTrainConfig, stacks, X_all: pd.DataFrame, y_all, pids, ids,
                     train_idx: np.ndarray, eval_idx: np.ndarray, reader2, repeat, say, epoch_progress,
                     what: str) -> _DeepFusionFit:
    """The deep + fusion procedure on the lesions ``train_idx`` (indices into the cohort),
    applied to ``eval_idx`` (which must contain ``train_idx``): network, its probabilities
    and pooled features, PCA on the ``train_idx`` lesions, and one :class:`FusionEstimator`
    per classifier fitted on the fusion rows (fit "paper": every ``train_idx`` lesion; fit
    "internal": the network's internal-validation lesions, which it never trained on).
    Arrays are cohort-length with NaN outside ``eval_idx``."""
    from dataclasses import replace

    from HRMMPredictLib.deep.model import internal_validation_split, train_deep_model

    tr = np.asarray(train_idx, dtype=int)
    n = len(ids)
    if deep.fusion_fit == "internal":
        fit_i, val_i = internal_validation_split(y_all[tr], pids[tr], deep.train.val_fraction, deep.train.seed)
        net_rows, internal = tr[np.asarray(fit_i, dtype=int)], tr[np.asarray(val_i, dtype=int)]
        say(f"{what}: training the deep model ({deep.train.epochs} epochs, fixed schedule, {len(net_rows)} lesions; "
            f"{len(internal)} internal-validation lesions kept unseen for the fusion)")
        net, history = train_deep_model(stacks[net_rows], y_all[net_rows], pids[net_rows],
                                        replace(deep.train, val_fraction=0.0), device=deep.device,
                                        progress=epoch_progress)
        history["selection"] = (f"last epoch ({deep.train.epochs}, a fixed schedule: no epoch is chosen on any "
                                "lesion, so the internal-validation lesions stay unseen)")
        history["n_fit"], history["n_val"] = int(len(net_rows)), int(len(internal))
        fusion_rows = internal
    else:
        say(f"{what}: training the deep model ({deep.train.epochs} epochs, {len(tr)} lesions)")
        net, history = train_deep_model(stacks[tr], y_all[tr], pids[tr], deep.train, device=deep.device,
                                        progress=epoch_progress)
        internal = tr[np.asarray(history["val_indices"], dtype=int)]
        net_rows = np.setdiff1d(tr, internal)
        fusion_rows = tr
    ev = np.asarray(eval_idx, dtype=int)
    p_ev, f_ev = deep_outputs(net, stacks[ev], deep.device, deep.inference_batch_size)
    p_deep = np.full(n, np.nan)
    p_deep[ev] = p_ev
    feats = np.full((n, f_ev.shape[1]), np.nan)
    feats[ev] = f_ev
    pca = fit_pca(feats[tr], deep.pca_components)
    pcs = pca_frame(pca, f_ev, ids[ev])
    X_comb = fusion_table(X_all.loc[ids[ev]], pcs)
    gmap = lesion_groups(X_all, pids)
    fcfg = fusion_config(cfg, y_all[fusion_rows], pids[fusion_rows], deep.fusion_fit)
    X_fit = X_comb.loc[ids[fusion_rows]]
    say(f"{what}: fusion on {len(fusion_rows)} lesions ({deep.fusion_fit}; radiomics selection refitted on them)")
    ests = {kind: FusionEstimator(fcfg, kind, list(X_all.columns), reader2, repeat, gmap).fit(X_fit, y_all[fusion_rows])
            for kind in ("extratrees", "logistic")}
    return _DeepFusionFit(net=net, history=history, p_deep=p_deep, feats=feats, pca=pca, pcs=pcs, X_comb=X_comb,
                          internal=internal, net_rows=net_rows, fusion_rows=fusion_rows, estimators=ests, fcfg=fcfg)


def _outer_folds(k: int, y, groups, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    return list(StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
                .split(np.zeros(len(y)), y, groups))


def _deep_cv_oof(deep, cfg, stacks, X_all, y_all, pids, ids, tr, reader2, repeat, say, epoch_progress) -> dict:
    """``deep_cv`` = K: the whole deep + fusion procedure once per outer fold of the
    training lesions (by patient); every training lesion gets the probabilities of the
    network and fusion that never saw it. Returns cohort-length arrays (NaN elsewhere)."""
    K = int(deep.deep_cv)
    n = len(ids)
    oof = {"deep": np.full(n, np.nan), "extratrees": np.full(n, np.nan), "logistic": np.full(n, np.nan)}
    folds = []
    for k, (a, b) in enumerate(_outer_folds(K, y_all[tr], pids[tr], cfg.seed)):
        fit = _fit_deep_fusion(deep, cfg, stacks, X_all, y_all, pids, ids, tr[a], tr, reader2, repeat, say,
                               epoch_progress, f"deep CV fold {k + 1}/{K}")
        te = tr[b]
        oof["deep"][te] = fit.p_deep[te]
        Xte = fit.X_comb.loc[ids[te]]
        for kind, est in fit.estimators.items():
            oof[kind][te] = est.predict_proba(Xte)[:, 1]
        folds.append({"fold": k + 1, "n_train": int(len(a)), "n_test": int(len(b)),
                      "best_epoch": fit.history.get("best_epoch"), "seconds": fit.history.get("seconds")})
    oof["folds"] = folds
    return oof


def _estimate(y, p, rows) -> tuple:
    """(cv_auc, ci95, Youden threshold) of honest out-of-fold probabilities on ``rows``."""
    res = auc_or_none(y[rows], p[rows])
    thr = youden_or_none(y[rows], p[rows])
    return (None if res is None else float(res["auc"]), None if res is None else res["ci95"],
            0.5 if thr is None else float(thr))


def _train_deep_and_fusion(writer, deep: DeepOptions, cfg: RadiomicsTrainConfig, cohort: pd.DataFrame, ids, y_all,
                           pids, is_train, X_all: pd.DataFrame, reader2, repeat, preds: pd.DataFrame,
                           cache: Path, say, epoch_progress) -> tuple[dict, dict, dict]:
    """Stacks -> DenseNet169 (training lesions) -> features -> PCA (training lesions) ->
    fusion models (radiomics selection refitted on the fusion's rows), plus the honest
    estimates (``deep_cv`` folds; fit "internal" CV). Writes the files; returns (model
    entries, manifest sections, summary)."""
    from HRMMPredictLib.deep.cohort import cohort_stacks
    from HRMMPredictLib.deep.model import ARCHITECTURE, N_FEATURES, save_model, select_device

    say(f"building the 2.5D inputs ({len(ids)} lesions; cache {cache})")
    stacks, stack_info = cohort_stacks(cohort, cache, deep.input)
    tr = np.flatnonzero(is_train)
    allrows = np.arange(len(ids))
    with torch_threads(deep.threads) as n_threads:
        device_desc = select_device(deep.device)[1]
        t0 = time.perf_counter()
        oof = None
        if deep.deep_cv:
            say(f"deep cross-validation: {deep.deep_cv} networks, one per outer fold, on {device_desc}")
            oof = _deep_cv_oof(deep, cfg, stacks, X_all, y_all, pids, ids, tr, reader2, repeat, say, epoch_progress)
        say(f"final models on the {len(tr)} training lesions (DenseNet169, {deep.train.epochs} epochs) on {device_desc}")
        fit = _fit_deep_fusion(deep, cfg, stacks, X_all, y_all, pids, ids, tr, allrows, reader2, repeat, say,
                               epoch_progress, "final")
        history = fit.history
        device_desc = history["device"]
        say(f"deep model: {history['selection']} ({time.perf_counter() - t0:.0f} s)")
    net, p_deep, pca, pcs = fit.net, fit.p_deep, fit.pca, fit.pcs
    k = pcs.shape[1]

    role = np.full(len(ids), "", dtype=object)
    role[tr] = "fit"
    role[fit.internal] = "internal_validation"
    is_internal = role == "internal_validation"
    preds[DEEP_MODEL] = p_deep
    preds["deep_internal"] = np.where(is_internal, p_deep, np.nan)
    preds["deep_role"] = role

    # the deep model's estimate and threshold, from honest probabilities only
    if oof is not None:
        cv_auc, cv_ci, thr = _estimate(y_all, oof["deep"], tr)
        preds["deep_cv"] = np.where(is_train, oof["deep"], np.nan)
        deep_est = estimate_fields(cv_auc, cv_ci, True, "the out-of-fold probabilities cannot rank the classes")
        thr_rule = (f"Youden J on out-of-fold probabilities of the training lesions ({deep.deep_cv} networks, one "
                    "per outer fold by patient)")
        cv_column = "deep_cv"
    elif deep.fusion_fit == "internal":
        res = youden_or_none(y_all[is_internal], p_deep[is_internal])
        thr = 0.5 if res is None else float(res)
        thr_rule = (f"Youden J on the network's {int(is_internal.sum())} internal-validation lesions (never seen: "
                    "fixed schedule)" if res is not None else FIXED_THRESHOLD_RULE)
        deep_est = estimate_fields(None, None, False, "no out-of-fold deep probabilities for every training lesion "
                                   "(use --deep-cv K); internal_validation_auc is out-of-sample")
        cv_column = None
    else:
        thr, thr_rule = 0.5, ("0.5 (fixed: the network's internal-validation lesions chose its epoch, so none "
                              "of its training probabilities is honest; use --deep-cv K)")
        deep_est = estimate_fields(None, None, False, IN_SAMPLE_REASON)
        cv_column = None

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
    writer.write_estimator(PCA_FILE, pca)

    # the fusion models in the bundle's form, with their honest estimates
    fit_rows = np.zeros(len(ids), dtype=bool)
    fit_rows[fit.fusion_rows] = True
    X_fusion = fit.X_comb
    fmodels = {}
    internal_oof = {}
    for kind, est in fit.estimators.items():
        m = est.to_fitted(X_fusion.loc[ids[fit.fusion_rows]], f"fusion_{kind}")
        if oof is not None:
            m.cv_auc, m.cv_auc_ci, m.threshold = _estimate(y_all, oof[kind], tr)
            m.cv_oof = pd.Series(oof[kind], index=ids)
            m.oof_honest = True
            m.cv_rule = (f"the training lesions ({deep.deep_cv} outer folds by patient: network, PCA, radiomics "
                         "selection and fusion refitted per fold)")
        elif deep.fusion_fit == "internal":
            rows = fit.fusion_rows
            say(f"cross-validating the fusion ({kind}) on the {len(rows)} unseen internal-validation lesions")
            p = np.full(len(ids), np.nan)
            p[rows] = fusion_cross_validated_proba(est, X_fusion.loc[ids[rows]], y_all[rows], pids[rows],
                                                   fit.fcfg.cv_folds, cfg.seed)
            m.cv_auc, m.cv_auc_ci, m.threshold = _estimate(y_all, p, rows)
            m.cv_oof = pd.Series(p, index=ids)
            m.oof_honest = True
            internal_oof[kind] = p
            m.cv_rule = (f"the network's {len(rows)} internal-validation lesions ({fit.fcfg.cv_folds}-fold by "
                         "patient, radiomics selection and fusion refitted per fold)")
        else:
            m.cv_unavailable_reason = IN_SAMPLE_REASON
        if m.cv_auc is None and m.cv_unavailable_reason is None:
            m.cv_unavailable_reason = "the out-of-fold probabilities cannot rank the classes"
        fmodels[kind] = m
    cv_suffix = "_cv" if oof is not None else "_internal"
    entries = _classifier_entries(writer, "fusion", "fusion", fmodels, X_fusion, ids, y_all, is_train, preds,
                                  cv_suffix, extra={"fit_lesions": deep.fusion_fit})
    est0 = fit.estimators["extratrees"]
    fsel = est0.summary_
    writer.write_csv("training/fusion_selection_steps.csv",
                     pd.DataFrame({"step": list(fsel["counts"]), "features": list(fsel["counts"].values())}),
                     index=False)

    deep_entry = {
        "kind": "deep", "classifier": "densenet169", "file": DEEP_FILE, "prediction_column": DEEP_MODEL,
        "threshold": float(thr), "threshold_rule": thr_rule, **deep_est, "cv_column": cv_column,
        # deep_cv: out-of-fold probabilities for every training lesion; otherwise none
        "cv_covers": "training" if cv_column else None,
        "internal_column": "deep_internal",
        "internal_validation_auc": auc_or_none(y_all[is_internal], p_deep[is_internal]),
        "internal_validation_honest": deep.fusion_fit == "internal",
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
    if oof is not None:
        train_rec["deep_cv"] = {"folds": int(deep.deep_cv), "per_fold": oof["folds"]}
    estimate = ("honest: every training lesion's deep and fusion probabilities come from the fold's own network, "
                "PCA, radiomics selection and fusion (deep_cv)" if oof is not None else
                "honest on the internal-validation lesions only (the network never saw them)"
                if deep.fusion_fit == "internal" else
                f"not available: {IN_SAMPLE_REASON} (use --deep-cv K); the held-out validation set is the estimate")
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
            "deep_cv": None if oof is None else int(deep.deep_cv), "training_estimate": estimate,
            "radiomics_inputs": list(est0.radiomics_selected_),
            "radiomics_selection_counts": est0.radiomics_summary_["counts"],
            "radiomics_selection_fitted_on": "the fusion's fit lesions (refitted inside every fold it is "
                                             "estimated on)",
            "deep_components": int(k),
            "selection_counts": fsel["counts"], "lasso_C": fsel["lasso_C"], "selected": fsel["selected"],
            "lasso_path": fsel.get("lasso_path"),
            "cv_folds": int(fit.fcfg.cv_folds),
        },
    }
    summary = {"device": device_desc, "best_epoch": history.get("best_epoch"), "selection": history.get("selection"),
               "pca_components": int(k), "fusion_fit": deep.fusion_fit, "fusion_selected": fsel["selected"],
               "deep_cv": None if oof is None else int(deep.deep_cv), "training_estimate": estimate,
               "seconds": history.get("seconds")}
    return {DEEP_MODEL: deep_entry, **entries}, sections, summary


def _check_internal_split(deep: DeepOptions, cfg: RadiomicsTrainConfig, cohort: pd.DataFrame, split: pd.Series) -> None:
    """The network's internal validation split (and the ``deep_cv`` outer folds) are pure
    functions of the training labels, patients and seed: check before any work that they
    can be made and, for fusion fit 'internal', that they are large enough to fit the
    fusion on."""
    from HRMMPredictLib.deep.model import internal_validation_split

    tr = cohort[(split == "train").to_numpy()]
    y = tr["label"].to_numpy().astype(int)
    g = tr["patient_id"].astype(str).to_numpy()
    parts = [np.arange(len(y))]
    if deep.deep_cv:
        n_pat = min(len(np.unique(g[y == c])) for c in (0, 1))
        if n_pat < int(deep.deep_cv):
            raise UserError(f"--deep-cv {deep.deep_cv} needs at least {deep.deep_cv} training patients of each class "
                            f"(found {n_pat}); use fewer folds")
        parts += [a for a, _ in _outer_folds(deep.deep_cv, y, g, cfg.seed)]
    for rows in parts:
        _, val = internal_validation_split(y[rows], g[rows], deep.train.val_fraction, deep.train.seed)
        if deep.fusion_fit == "internal":
            fusion_config(cfg, y[rows][val], g[rows][val], "internal")


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
                     f"fusion fit {d['fusion_fit']}" + (f", {d['deep_cv']} networks for out-of-fold estimates"
                                                        if d.get("deep_cv") else "") + ", selected: " + ", ".join(d["fusion_selected"][:6])
                     + (" ..." if len(d["fusion_selected"]) > 6 else ""))
    for name, m in s["models"].items():
        va = "n/a" if m["validation_auc"] is None else f"{m['validation_auc']:.3f}"
        cv = (f"n/a ({m.get('cv_unavailable_reason') or 'not recorded'})" if m["cv_auc"] is None
              else f"{m['cv_auc']:.3f}")
        mark = "*" if name == s.get("primary_model") else " "
        lines.append(f" {mark}{name:<22} CV AUC {cv}  validation AUC {va}  threshold {m['threshold']:.3f}")
    return "\n".join(lines)
