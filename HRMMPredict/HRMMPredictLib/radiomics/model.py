"""Training of the HRMM radiomics models: patient-wise split, reader-agreement filter, the
selection pipeline and the classifiers (ExtraTrees as in the paper's methods, logistic
regression as its abstract names), cross-validated on the training set only.

Everything fitted (ICC filter, z-score, tests, correlation pruning, mRMR, LASSO, the
classifier, the decision threshold) is fitted on training lesions only; within the
training set, 5-fold patient-grouped cross-validation refits the whole pipeline per fold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.radiomics.selection import CorrelationFilter, LassoSelector, MannWhitneySelector, MRMRSelector

PAPER_EXTRATREES = {"n_estimators": 4, "max_depth": 2, "min_samples_split": 2, "random_state": 0}


@dataclass
class RadiomicsTrainConfig:
    """Radiomics training settings (``hrmm train``'s options; the paper's defaults)."""

    seed: int = 0
    validation_fraction: float = 0.2
    icc_threshold: float = 0.75
    icc_form: str = "ICC(A,1)"
    mw_alpha: float = 0.05
    corr_threshold: float = 0.9
    mrmr_k: int = 100
    lasso_cv: int = 5
    lasso_max_features: int | None = None
    cv_folds: int = 5
    extratrees: dict = field(default_factory=lambda: dict(PAPER_EXTRATREES))
    tune: bool = False
    tune_grid: dict = field(default_factory=lambda: {"n_estimators": [4, 16, 64], "max_depth": [2, 3]})

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# Split


def patient_split(cohort: pd.DataFrame, validation_fraction: float = 0.2, seed: int = 0) -> pd.Series:
    """Stratified split by patient ("train"/"validation"): no patient on both sides.

    Uses StratifiedGroupKFold with round(1/fraction) folds and takes the first fold as the
    validation set, so the class balance is kept as well as whole patients allow.
    """
    if not 0 < validation_fraction < 1:
        raise UserError(f"validation fraction must lie between 0 and 1, got {validation_fraction}")
    n_splits = max(2, int(round(1 / validation_fraction)))
    groups = cohort["patient_id"].to_numpy()
    y = cohort["label"].to_numpy().astype(int)
    n_pat = {c: cohort.loc[y == c, "patient_id"].nunique() for c in (0, 1)}
    if min(n_pat.values()) < n_splits:
        raise UserError(f"too few patients to split {100 * (1 - validation_fraction):.0f}:"
                        f"{100 * validation_fraction:.0f} by patient ({n_pat[1]} HRMM, {n_pat[0]} SRMM patients; "
                        f"need at least {n_splits} of each)")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(sgkf.split(np.zeros(len(y)), y, groups))
    split = np.full(len(y), "train", dtype=object)
    split[val_idx] = "validation"
    return pd.Series(split, index=cohort.index, name="split")


# ---------------------------------------------------------------------------------------
# Reader-agreement filter as a transformer (refitted per fold like every other step)


class ReaderAgreementFilter(TransformerMixin, BaseEstimator):
    """Keep features whose inter-reader ICC (reader 1 vs reader 2) and intra-reader ICC
    (reader 1 vs the repeat read) are both >= ``threshold``, computed on the rows being
    fitted only. The rows are matched by index (lesion id) in ``reader2``/``repeat``.
    Either table may be None (that check is then skipped)."""

    def __init__(self, reader2: pd.DataFrame | None = None, repeat: pd.DataFrame | None = None,
                 threshold: float = 0.75, form: str = "ICC(A,1)"):
        self.reader2 = reader2
        self.repeat = repeat
        self.threshold = threshold
        self.form = form

    def fit(self, X: pd.DataFrame, y=None):
        from ClinicalMRICommonLib.agreement.icc import feature_icc

        if not hasattr(X, "index"):
            raise TypeError("ReaderAgreementFilter needs a DataFrame indexed by lesion id")
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = X.shape[1]
        keep = np.ones(X.shape[1], dtype=bool)
        self.icc_ = {}
        for name, other in (("inter", self.reader2), ("intra", self.repeat)):
            if other is None:
                continue
            common = X.index.intersection(other.index)
            if len(common) < 3:
                raise UserError(f"{name}-reader ICC needs the second read of at least 3 training lesions "
                                f"(found {len(common)})")
            table = feature_icc(X.loc[common], other.loc[common, X.columns], form=self.form)
            icc = table["icc"].reindex(X.columns).to_numpy(dtype=float)
            self.icc_[name] = icc
            keep &= np.nan_to_num(icc, nan=-np.inf) >= self.threshold
        if not keep.any():
            raise UserError(f"no feature reaches ICC >= {self.threshold} between readers; check the reader ROIs "
                            "or lower --icc-threshold")
        self.support_ = keep
        return self

    def transform(self, X):
        return X.iloc[:, np.flatnonzero(self.support_)] if hasattr(X, "iloc") else np.asarray(X)[:, self.support_]

    def get_feature_names_out(self, input_features=None):
        return self.feature_names_in_[self.support_]


def selection_steps(cfg: RadiomicsTrainConfig, reader2=None, repeat=None, groups=None) -> list[tuple[str, object]]:
    """The selection steps in the paper's order. ``groups``: lesion id -> patient id (a
    Series), so that LASSO's inner cross-validation for C keeps patients whole."""
    steps: list[tuple[str, object]] = []
    if reader2 is not None or repeat is not None:
        steps.append(("icc", ReaderAgreementFilter(reader2, repeat, cfg.icc_threshold, cfg.icc_form)))
    steps += [
        ("zscore", StandardScaler().set_output(transform="pandas")),
        ("mannwhitney", MannWhitneySelector(alpha=cfg.mw_alpha)),
        ("correlation", CorrelationFilter(threshold=cfg.corr_threshold)),
        ("mrmr", MRMRSelector(k=cfg.mrmr_k)),
        ("lasso", LassoSelector(cv=cfg.lasso_cv, random_state=cfg.seed, max_features=cfg.lasso_max_features,
                                groups=groups)),
    ]
    return steps


def classifiers(cfg: RadiomicsTrainConfig) -> dict[str, object]:
    """ExtraTrees with the paper's hyperparameters and the logistic alternative: L2
    (scikit-learn's default penalty) with C = 1, not tuned."""
    return {
        "extratrees": ExtraTreesClassifier(**cfg.extratrees),
        "logistic": LogisticRegression(C=1.0, max_iter=5000),
    }


def build_pipeline(cfg: RadiomicsTrainConfig, classifier, reader2=None, repeat=None, groups=None) -> Pipeline:
    return Pipeline(selection_steps(cfg, reader2, repeat, groups) + [("clf", classifier)])


def lesion_groups(X: pd.DataFrame, groups) -> pd.Series:
    """lesion id (the rows of ``X``) -> patient id, for the grouped inner folds."""
    return pd.Series(np.asarray(groups), index=X.index, name="patient_id")


# ---------------------------------------------------------------------------------------
# Training


@dataclass
class FittedRadiomicsModel:
    """The fitted model reduced to what prediction needs: the selected features, their
    z-score parameters (from the training data) and the classifier on those z-scores."""

    name: str
    classifier_kind: str
    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    classifier: object
    threshold: float
    train_stats: pd.DataFrame  # per feature: mean, sd, min, max on training lesions (raw values)
    cv_auc: float | None
    cv_oof: pd.Series           # out-of-fold probabilities on the training lesions
    importances: list[dict]
    cv_auc_ci: list | None = None          # DeLong 95 % CI of cv_auc
    oof_honest: bool = True                # every fitted step (tuning included) refitted per outer fold
    cv_rule: str = ""
    cv_unavailable_reason: str | None = None

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise UserError(f"features missing for model {self.name}: {', '.join(missing[:5])}")
        Z = (X[self.features].to_numpy(dtype=float) - self.mean) / self.scale
        return self.classifier.predict_proba(Z)[:, 1]


def range_stats(X: pd.DataFrame) -> pd.DataFrame:
    """Per feature (column) of raw values: mean, SD, min and max (what a prediction's
    values are shown against)."""
    return pd.DataFrame({"mean": X.mean(), "sd": X.std(ddof=1), "min": X.min(), "max": X.max()})


def _check_training_data(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, folds: int) -> None:
    for c in (0, 1):
        n = len(np.unique(groups[y == c]))
        if n < folds:
            raise UserError(f"the training set has only {n} {'HRMM' if c else 'SRMM'} patient(s); "
                            f"{folds}-fold cross-validation needs at least {folds} of each class")
    bad = ~np.isfinite(X.to_numpy(dtype=float))
    if bad.any():
        cols = X.columns[bad.any(axis=0)]
        raise UserError(f"{int(bad.sum())} non-finite feature value(s) in the training data "
                        f"(e.g. {', '.join(map(str, cols[:3]))}); check the images and ROIs")


def cross_validated_proba(pipe: Pipeline, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, folds: int,
                          seed: int, progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Out-of-fold probabilities: the whole pipeline (selection included) is refitted on
    each fold's training part, grouped by patient."""
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    oof = np.full(len(y), np.nan)
    for k, (tr, te) in enumerate(sgkf.split(X, y, groups)):
        if progress:
            progress(f"cross-validation fold {k + 1}/{folds}")
        m = clone(pipe).fit(X.iloc[tr], y[tr])
        oof[te] = m.predict_proba(X.iloc[te])[:, 1]
    return oof


def train_radiomics_models(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, cfg: RadiomicsTrainConfig,
                           reader2: pd.DataFrame | None = None, repeat: pd.DataFrame | None = None,
                           progress: Callable[[str], None] | None = None,
                           name: str = "radiomics") -> tuple[dict[str, FittedRadiomicsModel], dict]:
    """Fit the selection pipeline and both classifiers on training lesions ``X`` (rows:
    lesion ids, columns: ``<seq>_<feature>``). Returns the fitted models and a summary of
    the selection (ICC counts, features surviving each step).

    The fusion model (:mod:`HRMMPredictLib.fusion`) is trained by this same function on
    the selected radiomics features plus the deep PCA components, without reader tables
    (so without the ICC step) and with ``name="fusion"``."""
    from HRMMPredictLib.evaluation.stats import auc_or_none, youden_or_none

    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    _check_training_data(X, y, groups, cfg.cv_folds)
    say = progress or (lambda s: None)

    gmap = lesion_groups(X, groups)
    clfs = classifiers(cfg)
    if cfg.tune:
        clfs["extratrees"] = _tune_extratrees(cfg, X, y, groups, reader2, repeat, say)

    # selection once on all training lesions (identical for both classifiers)
    say("selecting features on the training set")
    sel = Pipeline(selection_steps(cfg, reader2, repeat, gmap)).fit(X, y)
    summary = _selection_summary(sel, X)
    selected = list(summary["selected"])
    scaler: StandardScaler = sel.named_steps["zscore"]
    zs_names = list(scaler.feature_names_in_)
    idx = [zs_names.index(f) for f in selected]
    mean, scale = scaler.mean_[idx], scaler.scale_[idx]
    Ztrain = (X[selected].to_numpy(dtype=float) - mean) / scale
    stats_df = range_stats(X[selected])

    models = {}
    for kind, clf in clfs.items():
        if kind == "extratrees" and cfg.tune:
            say(f"nested cross-validation of the tuned {kind} model ({cfg.cv_folds} outer folds; tuning and "
                "selection refitted inside each)")
            oof = _nested_tuned_oof(cfg, X, y, groups, reader2, repeat, say)
            rule = (f"the training lesions ({cfg.cv_folds}-fold by patient, nested: hyperparameters tuned and "
                    "selection refitted inside each outer fold's training part)")
        else:
            say(f"cross-validating the {kind} model ({cfg.cv_folds} folds, selection refitted per fold)")
            pipe = build_pipeline(cfg, clone(clf), reader2, repeat, gmap)
            oof = cross_validated_proba(pipe, X, y, groups, cfg.cv_folds, cfg.seed, say)
            rule = f"the training lesions ({cfg.cv_folds}-fold by patient, selection refitted per fold)"
        cv_res = auc_or_none(y, oof)
        cv_auc, threshold = _cv_auc(y, oof), youden_or_none(y, oof)
        threshold = 0.5 if threshold is None else threshold
        fitted = clone(clf).fit(Ztrain, y)
        models[kind] = FittedRadiomicsModel(
            name=f"{name}_{kind}", classifier_kind=kind, features=selected, mean=mean, scale=scale,
            classifier=fitted, threshold=threshold, train_stats=stats_df, cv_auc=cv_auc,
            cv_oof=pd.Series(oof, index=X.index, name=f"{name}_{kind}"),
            importances=_importances(fitted, selected), cv_auc_ci=None if cv_res is None else cv_res["ci95"],
            oof_honest=True, cv_rule=rule)
    return models, summary


def _cv_auc(y, oof) -> float:
    """AUC of out-of-fold probabilities; 0.5 when they cannot rank (all equal)."""
    from HRMMPredictLib.evaluation.stats import auc_or_none

    res = auc_or_none(y, oof)
    return 0.5 if res is None else float(res["auc"])


def _importances(clf, names: Sequence[str]) -> list[dict]:
    if hasattr(clf, "feature_importances_"):
        return [{"name": n, "importance": float(v)} for n, v in zip(names, clf.feature_importances_)]
    if hasattr(clf, "coef_"):
        return [{"name": n, "coefficient": float(v)} for n, v in zip(names, np.ravel(clf.coef_))]
    return [{"name": n} for n in names]


def _selection_summary(sel: Pipeline, X: pd.DataFrame) -> dict:
    counts = {"input": int(X.shape[1])}
    names = np.asarray(X.columns, dtype=object)
    out: dict = {}
    for step_name, step in sel.steps:
        if step_name == "zscore":
            continue
        if step_name == "lasso":
            lasso_in = [str(n) for n in names]
        names = names[step.support_]
        counts[step_name] = int(len(names))
        if step_name == "icc":
            out["icc"] = {k: v for k, v in step.icc_.items()}
            out["icc_features"] = list(step.feature_names_in_)
    out["counts"] = counts
    out["selected"] = [str(n) for n in names]
    lasso = sel.named_steps["lasso"]
    out["lasso_C"] = float(lasso.C_)
    out["lasso_path"] = lasso_path_record(lasso, lasso_in)
    return out


def lasso_path_record(lasso, names) -> dict:
    """The fitted LASSO's coefficient path and inner-CV curve, as the bundle stores them
    (``radiomics.lasso_path``): features that are non-zero at some C of the grid."""
    coefs = np.asarray(lasso.coef_path_, dtype=float)
    shown = [j for j in range(coefs.shape[1]) if np.any(coefs[:, j] != 0)]
    return {"C": [float(c) for c in lasso.Cs_],
            "coefficients": {names[j]: [float(v) for v in coefs[:, j]] for j in shown},
            "cv_mean": [float(v) for v in lasso.cv_auc_], "cv_se": [float(v) for v in lasso.cv_auc_se_],
            "cv_metric": "ROC AUC (inner CV, grouped by patient)", "chosen_C": float(lasso.C_),
            "rule": "the best mean inner-CV AUC; ties go to the stronger penalty (smaller C)",
            "n_features_in": int(coefs.shape[1])}


def _tune_extratrees(cfg, X, y, groups, reader2, repeat, say):
    """Small grid around the paper's hyperparameters, chosen by patient-grouped CV AUC with
    the selection refitted in every fold (nested within the training set only)."""
    from itertools import product

    keys = sorted(cfg.tune_grid)
    best, best_auc = None, -1.0
    groups = np.asarray(groups)
    # inside a nested outer fold the training part may hold fewer patients than cv_folds
    folds = max(2, min(cfg.cv_folds, *(len(np.unique(groups[np.asarray(y) == c])) for c in (0, 1))))
    gmap = lesion_groups(X, groups)
    for values in product(*(cfg.tune_grid[k] for k in keys)):
        params = dict(cfg.extratrees)
        params.update(dict(zip(keys, values)))
        say(f"tuning ExtraTrees {params}")
        pipe = build_pipeline(cfg, ExtraTreesClassifier(**params), reader2, repeat, gmap)
        oof = cross_validated_proba(pipe, X, y, groups, folds, cfg.seed)
        auc = _cv_auc(y, oof)
        if auc > best_auc + 1e-12:
            best, best_auc = params, auc
    return ExtraTreesClassifier(**best)


def _nested_tuned_oof(cfg, X, y, groups, reader2, repeat, say) -> np.ndarray:
    """Out-of-fold probabilities of the tuned ExtraTrees, honest: inside every outer fold
    the grid search (itself patient-grouped CV with the selection refitted) sees only that
    fold's training part, which then fits the selection and the chosen model; the held-out
    fold only gets predicted. (Choosing hyperparameters on the folds that report the AUC
    lifted the no-signal CV AUC from 0.53 to 0.61.)"""
    sgkf = StratifiedGroupKFold(n_splits=cfg.cv_folds, shuffle=True, random_state=cfg.seed)
    oof = np.full(len(y), np.nan)
    quiet = lambda s: None  # noqa: E731
    for k, (tr, te) in enumerate(sgkf.split(X, y, groups)):
        say(f"nested cross-validation: outer fold {k + 1}/{cfg.cv_folds} (tuning on its training part)")
        Xtr = X.iloc[tr]
        clf = _tune_extratrees(cfg, Xtr, y[tr], groups[tr], reader2, repeat, quiet)
        pipe = build_pipeline(cfg, clf, reader2, repeat, lesion_groups(Xtr, groups[tr])).fit(Xtr, y[tr])
        oof[te] = pipe.predict_proba(X.iloc[te])[:, 1]
    return oof
