"""The no-signal experiment: every model's training (cross-validated) and validation AUC on
synthetic cohorts without any class effect (``effect_size=0``). An honest estimate
averages 0.5 over seeds; a leak shows as a mean above 0.5.

Run by hand (not a timed test)::

    .venv/bin/python benchmarks/bench_no_signal.py --seeds 5 --patients 24 --out /tmp/no_signal
    .venv/bin/python benchmarks/bench_no_signal.py --seeds 3 --network   # + 1-epoch DenseNet runs

Per seed: a new synthetic cohort (``hrmm``'s generator, ``effect_size=0``, the small
pyradiomics settings ``Resources/hrmm_radiomics_small.yaml``), its patient-wise split,
and these models, each fitted on the training patients only:

- ``radiomics`` / ``radiomics_logistic``: the radiomics pipeline (ICC, z-score, MWU, |r|,
  mRMR, LASSO; ExtraTrees with the paper's settings / L2 logistic C = 1);
- ``radiomics_tuned``: ``--tune`` (grid on ExtraTrees), estimate from nested CV;
- ``fusion_paper`` / ``fusion_paper_logistic``: the fusion procedure
  (:class:`HRMMPredictLib.fusion.FusionEstimator`: radiomics selection refitted per fold
  + deep components) with PURE GAUSSIAN NOISE as the deep components, fitted on all
  training lesions, cross-validated over them;
- ``fusion_internal`` / ``fusion_internal_logistic``: the same on the deep network's
  internal-validation split only (``--deep-val-fraction 0.45``: half the training patients);
- ``old_fusion_paper`` / ``old_fusion_paper_logistic`` (for comparison, the design
  before issue 13): radiomics inputs selected once on all training lesions, then the
  fusion cross-validated on those same lesions;
- with ``--network``: ``hrmm train`` with a 1-epoch 64 x 64 DenseNet169 (``--deep-cv 3``
  in fit "paper", and fit "internal"): the bundle's recorded ``cv_auc`` of every model.

Prints a table (mean, SD, min, max over seeds of CV and validation AUC) and the null
band: the Hanley-McNeil SD of an AUC of n1 positives and n0 negatives at AUC = 0.5,
``sqrt((n1 + n0 + 1) / (12 n1 n0))`` (the Mann-Whitney null variance), divided by
sqrt(seeds) for the mean; band = 0.5 +/- 3 of those.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHAPE = (8, 80, 96)
SPACING = (1.0, 1.0, 4.8)
N_NOISE_COMPONENTS = 8
INTERNAL_FRACTION = 0.45   # half of the training patients (2 folds): enough for 3 per class in small cohorts


def null_sd(n1: int, n0: int) -> float:
    """SD of the AUC under no signal (Hanley & McNeil 1982 at A = 0.5: Q1 = Q2 = 1/3)."""
    return math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0))


def small_config(seed: int):
    from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig

    return RadiomicsTrainConfig(seed=seed, validation_fraction=0.25, mrmr_k=10, lasso_cv=3, cv_folds=3,
                                icc_threshold=0.6, tune_grid={"n_estimators": [4, 16], "max_depth": [2, 3]})


def make_cohort(root: Path, seed: int, n_patients: int):
    """A no-signal synthetic cohort and its reader-1/2/repeat feature tables."""
    from HRMMPredictLib.cohort import load_cohort_manifest
    from HRMMPredictLib.radiomics.features import SMALL_PARAMS, PreprocessConfig, load_params
    from HRMMPredictLib.synthetic import generate_cohort

    path = generate_cohort(root / f"cohort_{seed}", n_patients=n_patients, seed=seed, effect_size=0.0, shape=SHAPE,
                           spacing=SPACING, multi_lesion_fraction=0.25)
    cohort = load_cohort_manifest(path)
    return path, cohort, load_params(SMALL_PARAMS), PreprocessConfig()


def feature_tables(cohort, split, params, prep, cache: Path, n_jobs: int = 1) -> dict:
    from HRMMPredictLib.training import extract_cohort_features

    return extract_cohort_features(cohort, split, params, prep, cache, n_jobs, None)


def _auc(y, p):
    from HRMMPredictLib.evaluation.stats import auc_or_none

    r = auc_or_none(y, p)
    return None if r is None else float(r["auc"])


def null_experiment(cohort: pd.DataFrame, tables: dict, cfg, split: pd.Series, noise_seed: int,
                    tuned: bool = True, old_design: bool = True) -> dict:
    """{model: {"cv_auc", "validation_auc"}} of every radiomics / noise-fusion model on one
    cohort (its labels as given: no signal when the cohort has none)."""
    from dataclasses import replace

    from ClinicalMRICommonLib.errors import UserError
    from HRMMPredictLib.deep.model import internal_validation_split
    from HRMMPredictLib.fusion import (FusionEstimator, component_names, fusion_config, fusion_cross_validated_proba,
                                       train_fusion_models)
    from HRMMPredictLib.radiomics.model import lesion_groups, train_radiomics_models

    ids = cohort["lesion_id"].astype(str).to_numpy()
    y = cohort["label"].to_numpy().astype(int)
    g = cohort["patient_id"].astype(str).to_numpy()
    tr = (split == "train").to_numpy()
    X = tables["roi"].loc[ids]
    r2, rep = tables.get("roi_reader2"), tables.get("roi_repeat")
    out = {}
    models, sel = train_radiomics_models(X[tr], y[tr], g[tr], cfg, reader2=r2, repeat=rep)
    for kind, m in models.items():
        out["radiomics" if kind == "extratrees" else "radiomics_logistic"] = {
            "cv_auc": m.cv_auc, "validation_auc": _auc(y[~tr], m.predict_proba(X[~tr]))}
    if tuned:
        tm, _ = train_radiomics_models(X[tr], y[tr], g[tr], replace(cfg, tune=True), reader2=r2, repeat=rep)
        m = tm["extratrees"]
        out["radiomics_tuned"] = {"cv_auc": m.cv_auc, "validation_auc": _auc(y[~tr], m.predict_proba(X[~tr]))}

    rng = np.random.default_rng(noise_seed)
    noise = pd.DataFrame(rng.normal(size=(len(ids), N_NOISE_COMPONENTS)), index=X.index,
                         columns=component_names(N_NOISE_COMPONENTS))
    Xc = pd.concat([X, noise], axis=1)
    gmap = lesion_groups(X, g)
    for kind in ("extratrees", "logistic"):
        suffix = "" if kind == "extratrees" else "_logistic"
        # fit "paper" with noise components: the whole procedure, cross-validated over the training lesions
        est = FusionEstimator(cfg, kind, list(X.columns), r2, rep, gmap)
        oof = fusion_cross_validated_proba(est, Xc[tr], y[tr], g[tr], cfg.cv_folds, cfg.seed)
        val = est.clone().fit(Xc[tr], y[tr]).predict_proba(Xc[~tr])[:, 1]
        out[f"fusion_paper{suffix}"] = {"cv_auc": _auc(y[tr], oof), "validation_auc": _auc(y[~tr], val)}
        # fit "internal": the network's internal-validation split of the training lesions
        tri = np.flatnonzero(tr)
        _, vi = internal_validation_split(y[tri], g[tri], INTERNAL_FRACTION, cfg.seed)
        rows = tri[vi]
        try:
            fcfg = fusion_config(cfg, y[rows], g[rows], "internal")
            est_i = FusionEstimator(fcfg, kind, list(X.columns), r2, rep, gmap)
            oof_i = fusion_cross_validated_proba(est_i, Xc.iloc[rows], y[rows], g[rows], fcfg.cv_folds, cfg.seed)
            val_i = est_i.clone().fit(Xc.iloc[rows], y[rows]).predict_proba(Xc[~tr])[:, 1]
            out[f"fusion_internal{suffix}"] = {"cv_auc": _auc(y[rows], oof_i), "validation_auc": _auc(y[~tr], val_i)}
        except UserError as exc:      # too few internal patients for this seed
            out[f"fusion_internal{suffix}"] = {"cv_auc": None, "validation_auc": None, "skipped": str(exc)}
    if old_design:
        Xold = pd.concat([X[sel["selected"]], noise], axis=1)
        om, _ = train_fusion_models(Xold[tr], y[tr], g[tr], cfg, "paper")
        for kind, m in om.items():
            suffix = "" if kind == "extratrees" else "_logistic"
            out[f"old_fusion_paper{suffix}"] = {"cv_auc": m.cv_auc,
                                                "validation_auc": _auc(y[~tr], m.predict_proba(Xold[~tr]))}
    return out


def network_runs(cohort_path: Path, root: Path, seed: int, cfg) -> dict:
    """``hrmm train`` with a 1-epoch network: fit 'paper' with --deep-cv 3, fit 'internal'."""
    from HRMMPredictLib.deep.cohort import DeepInputConfig
    from HRMMPredictLib.deep.model import DeepTrainConfig
    from HRMMPredictLib.fusion import DeepOptions
    from HRMMPredictLib.radiomics.features import SMALL_PARAMS
    from HRMMPredictLib.training import train_bundle

    out = {}
    for mode, extra, vf in (("paper_deepcv3", {"deep_cv": 3}, 0.25), ("internal", {"fusion_fit": "internal"}, 0.45)):
        train = DeepTrainConfig(epochs=1, batch_size=4, val_fraction=vf, eval_batch_size=8, seed=seed)
        opts = DeepOptions(train=train, input=DeepInputConfig(size=64), device="cpu", threads=1, **extra)
        try:
            s = train_bundle(cohort_path, root / f"bundle_{seed}_{mode}", SMALL_PARAMS, cfg, n_jobs=1, deep=opts)
        except Exception as exc:  # noqa: BLE001 - a seed whose split is too small is reported, not fatal
            out[f"net_{mode}"] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        for name, m in s["models"].items():
            if name in ("deep", "fusion", "fusion_logistic"):
                out[f"net_{mode}_{name}"] = {"cv_auc": m["cv_auc"], "validation_auc": m["validation_auc"],
                                             "reason": m["cv_unavailable_reason"]}
    return out


def summarise(results: list[dict]) -> pd.DataFrame:
    rows = []
    names = sorted({k for r in results for k in r})
    for name in names:
        for what in ("cv_auc", "validation_auc"):
            v = np.array([r[name][what] for r in results if name in r and r[name].get(what) is not None], float)
            if len(v):
                rows.append({"model": name, "estimate": what, "seeds": len(v), "mean": v.mean(),
                             "sd": v.std(ddof=1) if len(v) > 1 else float("nan"), "min": v.min(), "max": v.max()})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--network", action="store_true", help="also train 1-epoch networks (slow on a CPU)")
    ap.add_argument("--out", default=None, help="folder for cohorts and results (default: a temporary one)")
    a = ap.parse_args(argv)
    from HRMMPredictLib.radiomics.model import patient_split

    root = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="hrmm_no_signal_"))
    root.mkdir(parents=True, exist_ok=True)
    results, sizes = [], []
    t0 = time.perf_counter()
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        path, cohort, params, prep = make_cohort(root, seed, a.patients)
        cfg = small_config(seed)
        split = patient_split(cohort, cfg.validation_fraction, cfg.seed)
        tables = feature_tables(cohort, split, params, prep, root / f"cache_{seed}")
        r = null_experiment(cohort, tables, cfg, split, noise_seed=seed)
        if a.network:
            r.update(network_runs(path, root, seed, cfg))
        results.append(r)
        y, tr = cohort["label"].to_numpy(), (split == "train").to_numpy()
        sizes.append((int(y[tr].sum()), int((1 - y[tr]).sum()), int(y[~tr].sum()), int((1 - y[~tr]).sum())))
        print(f"seed {seed}: done ({time.perf_counter() - t0:.0f} s) " + json.dumps(
            {k: [v.get("cv_auc"), v.get("validation_auc")] for k, v in r.items()}, default=str), file=sys.stderr)
        (root / "no_signal_results.json").write_text(json.dumps({"per_seed": results, "sizes": sizes}, indent=1,
                                                                default=str))   # so far: a long run can be cut
    table = summarise(results)
    n1, n0, v1, v0 = np.mean(sizes, axis=0)
    band_cv = 3 * null_sd(round(n1), round(n0)) / math.sqrt(a.seeds)
    band_val = 3 * null_sd(round(v1), round(v0)) / math.sqrt(a.seeds)
    pd.set_option("display.width", 140)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\ntraining lesions per seed (mean): {n1:.1f} positive / {n0:.1f} negative; validation {v1:.1f} / {v0:.1f}")
    print(f"null band for a mean over {a.seeds} seeds (3 Hanley-McNeil SD / sqrt(seeds)): CV 0.5 +/- {band_cv:.3f}, "
          f"validation 0.5 +/- {band_val:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    (root / "no_signal_results.json").write_text(json.dumps({"per_seed": results, "sizes": sizes}, indent=1,
                                                            default=str))
    table.to_csv(root / "no_signal_summary.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
