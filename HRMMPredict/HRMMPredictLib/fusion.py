"""Deep features for the fusion model: DenseNet169 outputs, PCA, and the radiomics + deep
fusion (see ``docs/fusion.md`` for the reasoning behind every choice here).

Pipeline (the paper's "fusion model"; docs/hrmm_method.md and docs/fusion.md):

1. the trained network's pooled 1664-d output for every lesion (:func:`deep_outputs`);
2. PCA fitted on TRAINING lesions only, to ``min(256, n_train - 1)`` components (a PCA of
   ``n`` centred rows has at most ``n - 1`` non-zero components, so a cohort with fewer
   than 257 training lesions gets fewer than the paper's 256; :func:`n_pca_components`);
3. the radiomics model's selected features + those components -> the same selection
   pipeline (z-score, Mann-Whitney, correlation pruning, mRMR, LASSO; no ICC step, the
   components have no second read) -> ExtraTrees (paper hyperparameters) and logistic
   regression, thresholds by Youden on out-of-fold probabilities:
   :func:`HRMMPredictLib.radiomics.model.train_radiomics_models` itself, with ``name="fusion"``.

Everything the fusion depends on is refitted wherever it is estimated: a
:class:`FusionEstimator` starts from ALL radiomics features of the lesions it is fitted
on, runs the radiomics selection (reader-agreement ICC, z-score, Mann-Whitney, |r| pruning,
mRMR, LASSO) on those lesions, adds the deep components and runs the fusion selection and
the classifier. Cross-validating it therefore refits the radiomics selection inside every
fold (selecting the radiomics inputs once on all training lesions and then
cross-validating the fusion on the same lesions gave a fusion CV AUC of 0.61-0.69 with
pure noise in place of the deep components on no-signal cohorts).

Which lesions the supervised fusion steps are fitted on (``fusion_fit``):

``"paper"`` (default, what the paper does)
    all training lesions; the network is trained on them as well (its epoch chosen on its
    internal-validation split). Their deep features are in-sample for the network, so
    without ``deep_cv`` no training estimate of the fusion (or of the network) is
    reported: ``cv_auc`` is null with ``cv_unavailable_reason`` "deep features are
    in-sample", the thresholds are a fixed 0.5, and the held-out validation set speaks.
``"internal"``
    the network is trained for a fixed schedule (all epochs, the last one kept: no epoch
    is chosen on any lesion) on the fit part of its internal split; the fusion is fitted
    only on the internal-validation lesions, which the network never saw, so their deep
    features are out-of-sample and the fusion's cross-validation over them (radiomics
    selection refitted per fold) is honest. PCA is fitted on all training lesions
    (unsupervised). The price is a small fitting set (about ``val_fraction`` of the
    training lesions): raise it (e.g. 0.34: a third of the training patients).

``deep_cv = K`` (``hrmm train --deep-cv K``, practical on a GPU): the whole procedure
(network, deep features, PCA, radiomics selection, fusion) is run once per outer fold of
the training lesions (K folds by patient) and applied to the held-out fold: honest
out-of-fold probabilities of the network and of the fusion for every training lesion,
from which their CV AUC and Youden thresholds come. Each fold's features are projected
with that fold's own PCA and fused by that fold's own fusion, so no coordinate system is
mixed; the final models are the procedure run once more on all training lesions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.deep.cohort import DeepInputConfig

PCA_MAX_COMPONENTS = 256
MIN_INTERNAL_PATIENTS = 3     # per class, for fusion fit "internal"
DEEP_FEATURE_PREFIX = "deep_pc"
FUSION_FIT_MODES = {
    "paper": "all training lesions (the paper's method; their deep features are in-sample for the network, so "
             "a training estimate needs --deep-cv K: one network per outer fold)",
    "internal": "the deep network's internal-validation lesions only (the network is trained for a fixed number "
                "of epochs on the other training lesions and never sees them: out-of-sample deep features)",
}
IN_SAMPLE_REASON = "deep features are in-sample"


@dataclass
class DeepOptions:
    """Everything about the deep model and the fusion in one place (``hrmm train`` options).

    ``train``: :class:`HRMMPredictLib.deep.model.DeepTrainConfig` (paper defaults: 300 epochs,
    batch 16, Adamax 1e-4); ``input``: the 2.5D crop settings; ``device``: auto/cpu/cuda;
    ``threads``: torch CPU threads during training (None: torch's default);
    ``enabled=False``: radiomics only (``--no-deep``).
    """

    enabled: bool = True
    train: object = None                      # deep.model.DeepTrainConfig (imported lazily: torch is heavy)
    input: DeepInputConfig = field(default_factory=DeepInputConfig)
    device: str = "auto"
    fusion_fit: str = "paper"
    pca_components: int = PCA_MAX_COMPONENTS
    threads: int | None = None
    inference_batch_size: int = 32
    deep_cv: int | None = None                # K: one network per outer fold (honest deep/fusion estimates)

    def __post_init__(self):
        if self.train is None and self.enabled:
            from HRMMPredictLib.deep.model import DeepTrainConfig

            self.train = DeepTrainConfig()

    def validate(self) -> "DeepOptions":
        if not self.enabled:
            return self
        if self.fusion_fit not in FUSION_FIT_MODES:
            raise UserError(f"fusion fit {self.fusion_fit!r} is not known; use {' or '.join(FUSION_FIT_MODES)}")
        if int(self.pca_components) < 1:
            raise UserError(f"the number of PCA components must be >= 1, got {self.pca_components}")
        if self.deep_cv is not None and int(self.deep_cv) < 2:
            raise UserError(f"--deep-cv must be >= 2 folds, got {self.deep_cv}")
        if self.threads is not None and int(self.threads) < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.fusion_fit == "internal" and self.train.val_fraction <= 0:
            raise UserError("fusion fit 'internal' needs the deep model's internal validation split "
                            "(val_fraction > 0); use e.g. 0.34 (a third of the training patients)")
        self.train.validate()
        if self.train.pretrained_weights is not None:
            from pathlib import Path

            if not Path(self.train.pretrained_weights).is_file():
                raise UserError(f"pretrained weights file not found: {self.train.pretrained_weights}")
        from HRMMPredictLib.deep.model import select_device

        select_device(self.device)  # refuses 'cuda' without a GPU before any work is done
        return self

    def to_dict(self) -> dict:
        d = {"enabled": self.enabled}
        if self.enabled:
            d.update({"train": self.train.to_dict(), "input": self.input.to_dict(), "device": self.device,
                      "fusion_fit": self.fusion_fit, "pca_components": int(self.pca_components),
                      "threads": self.threads, "inference_batch_size": int(self.inference_batch_size),
                      "deep_cv": None if self.deep_cv is None else int(self.deep_cv)})
        return d


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run with ``n`` torch CPU threads (None: leave as is); restores the previous number."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------
# Network outputs


def deep_outputs(model, stacks, device="cpu", batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(P(HRMM) (N,), pooled features (N, 1664)) from ONE pass through the network.

    The probability is the network's own classifier (its last Linear + softmax) applied
    to the pooled features, i.e. exactly the network's output (tested in the deep-model
    tests), without a second forward pass. Training and prediction both use this.
    """
    import torch

    from HRMMPredictLib.deep.model import deep_features

    feats = deep_features(model, stacks, device, batch_size)
    head = model.class_layers.out
    with torch.inference_mode():
        logits = head(torch.from_numpy(feats.astype(np.float32)).to(head.weight.device))
        p = torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy().astype(np.float64)
    return p, feats


# ---------------------------------------------------------------------------------------
# PCA


def n_pca_components(n_train: int, n_features: int, max_components: int = PCA_MAX_COMPONENTS) -> int:
    """``min(max_components, n_train - 1, n_features)``: a PCA of ``n`` centred rows has at
    most ``n - 1`` informative components."""
    k = min(int(max_components), int(n_train) - 1, int(n_features))
    if k < 1:
        raise UserError(f"PCA of the deep features needs at least 2 training lesions, got {n_train}")
    return k


def fit_pca(train_features: np.ndarray, max_components: int = PCA_MAX_COMPONENTS):
    """PCA (scikit-learn, exact SVD: deterministic) fitted on training lesions' features."""
    from sklearn.decomposition import PCA

    X = np.asarray(train_features, dtype=np.float64)
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise UserError("deep features must be a finite 2-D array (lesions x features)")
    k = n_pca_components(X.shape[0], X.shape[1], max_components)
    return PCA(n_components=k, svd_solver="full").fit(X)


def component_names(k: int) -> list[str]:
    return [f"{DEEP_FEATURE_PREFIX}{i + 1:03d}" for i in range(int(k))]


def is_deep_feature(name: str) -> bool:
    return str(name).startswith(DEEP_FEATURE_PREFIX)


def pca_frame(pca, features: np.ndarray, index) -> pd.DataFrame:
    """The PCA components of ``features`` as a DataFrame (columns ``deep_pc001`` ...)."""
    Z = pca.transform(np.asarray(features, dtype=np.float64))
    return pd.DataFrame(Z, index=pd.Index(index, name="lesion_id"), columns=component_names(Z.shape[1]))


# ---------------------------------------------------------------------------------------
# Fusion


def fusion_table(radiomics: pd.DataFrame, components: pd.DataFrame) -> pd.DataFrame:
    """The fusion model's input: the radiomics model's selected features + the components,
    rows matched by lesion id."""
    missing = radiomics.index.difference(components.index)
    if len(missing):
        raise UserError(f"deep features missing for lesion(s) {', '.join(map(str, missing[:5]))}")
    return pd.concat([radiomics, components.loc[radiomics.index]], axis=1)


def fusion_config(cfg, y: np.ndarray, groups: np.ndarray, fusion_fit: str):
    """The RadiomicsTrainConfig for the fusion: the same, except that the 'internal' mode
    fits on a small set, so its cross-validation uses at most as many folds as it has
    patients of the rarer class. It needs at least 3 patients of each class, so that every
    fold's fitting part keeps 2 of each for the LASSO's inner cross-validation; otherwise a
    UserError says what to change."""
    if fusion_fit != "internal":
        return cfg
    n_pat = min(len(np.unique(groups[y == c])) for c in (0, 1))
    folds = min(cfg.cv_folds, n_pat)
    if n_pat < MIN_INTERNAL_PATIENTS:
        raise UserError(f"fusion fit 'internal': the deep model's internal validation split holds only {n_pat} "
                        f"patient(s) of one class (at least {MIN_INTERNAL_PATIENTS} of each are needed to fit and "
                        "cross-validate the fusion); raise the deep "
                        "model's internal validation fraction (e.g. --deep-val-fraction 0.34), train on more patients, or use "
                        "fusion fit 'paper'")
    return replace(cfg, cv_folds=folds)


class FusionEstimator:
    """The whole supervised fusion procedure as one estimator, so that cross-validating it
    refits every step inside each fold.

    ``fit(X, y)``: ``X`` holds, per lesion (index: lesion id), every radiomics feature
    (``radiomics_columns``) and the deep components (``deep_pc*``). The radiomics
    selection (the radiomics model's own steps, ICC filter included when reader tables
    are given) is fitted on these rows; its selected features plus the components go
    through the selection again (no ICC step) and into the classifier (``kind``).
    ``groups``: lesion id -> patient id (LASSO's inner folds).
    """

    def __init__(self, cfg, kind: str, radiomics_columns, reader2=None, repeat=None, groups=None):
        self.cfg = cfg
        self.kind = kind
        self.radiomics_columns = list(radiomics_columns)
        self.reader2 = reader2
        self.repeat = repeat
        self.groups = groups

    def fit(self, X: pd.DataFrame, y):
        from sklearn.pipeline import Pipeline

        from HRMMPredictLib.radiomics.model import _selection_summary, build_pipeline, classifiers, selection_steps

        y = np.asarray(y).astype(int)
        Xr = X[self.radiomics_columns]
        rad = Pipeline(selection_steps(self.cfg, self.reader2, self.repeat, self.groups)).fit(Xr, y)
        self.radiomics_summary_ = _selection_summary(rad, Xr)
        self.radiomics_selected_ = list(self.radiomics_summary_["selected"])
        self.components_ = [c for c in X.columns if is_deep_feature(c)]
        Xf = X[self.radiomics_selected_ + self.components_]
        self.pipe_ = build_pipeline(self.cfg, classifiers(self.cfg)[self.kind], groups=self.groups).fit(Xf, y)
        self.summary_ = _selection_summary(Pipeline(self.pipe_.steps[:-1]), Xf)
        self.y_fit_ = y
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.pipe_.predict_proba(X[self.radiomics_selected_ + self.components_])

    def clone(self) -> "FusionEstimator":
        return FusionEstimator(self.cfg, self.kind, self.radiomics_columns, self.reader2, self.repeat, self.groups)

    def to_fitted(self, X_fit: pd.DataFrame, name: str):
        """The fitted model in the bundle's form (selected features, their z-score, the classifier)."""
        from HRMMPredictLib.radiomics.model import FittedRadiomicsModel, _importances, range_stats

        selected = list(self.summary_["selected"])
        scaler = self.pipe_.named_steps["zscore"]
        names = list(scaler.feature_names_in_)
        idx = [names.index(f) for f in selected]
        # the same classifier refitted on the plain z-score array prediction uses (identical fit:
        # same rows, values and seed), so the stored estimator carries no column names
        from sklearn.base import clone

        mean, scale = scaler.mean_[idx], scaler.scale_[idx]
        Z = (X_fit[selected].to_numpy(dtype=float) - mean) / scale
        clf = clone(self.pipe_.named_steps["clf"]).fit(Z, self.y_fit_)
        return FittedRadiomicsModel(
            name=name, classifier_kind=self.kind, features=selected, mean=mean, scale=scale,
            classifier=clf, threshold=0.5, train_stats=range_stats(X_fit[selected]), cv_auc=None,
            cv_oof=pd.Series(np.nan, index=X_fit.index), importances=_importances(clf, selected),
            oof_honest=False)


def fusion_cross_validated_proba(est: FusionEstimator, X: pd.DataFrame, y, groups, folds: int, seed: int,
                                 progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Out-of-fold probabilities of the whole fusion procedure (radiomics selection
    included), folds by patient."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y).astype(int)
    oof = np.full(len(y), np.nan)
    for k, (tr, te) in enumerate(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
                                 .split(X, y, groups)):
        if progress:
            progress(f"fusion cross-validation fold {k + 1}/{folds} (radiomics selection refitted)")
        oof[te] = est.clone().fit(X.iloc[tr], y[tr]).predict_proba(X.iloc[te])[:, 1]
    return oof


def train_fusion_models(X_fusion: pd.DataFrame, y: np.ndarray, groups: np.ndarray, cfg, fusion_fit: str = "paper",
                        progress: Callable[[str], None] | None = None):
    """Fit selection + classifiers on a fusion table whose radiomics columns were chosen
    beforehand (a building block and its tests; ``hrmm train`` uses
    :class:`FusionEstimator`, which refits the radiomics selection too). Returns (models,
    selection)."""
    from HRMMPredictLib.radiomics.model import train_radiomics_models

    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    fcfg = fusion_config(cfg, y, groups, fusion_fit)
    return train_radiomics_models(X_fusion, y, groups, fcfg, progress=progress, name="fusion")
