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

Which lesions the supervised fusion steps are fitted on (``fusion_fit``):

``"paper"`` (default, what the paper does)
    all training lesions. Their deep features come from a network trained on those same
    lesions, so they separate the classes far better than they will on new lesions: the
    fusion selection favours the deep components and the classifier trusts them, and the
    fusion's cross-validated AUC and Youden threshold are optimistic (the pipeline is
    refitted per fold, the network is not). The held-out validation set stays honest.
``"internal"`` (the honest variant, no extra training cost)
    only the lesions of the network's internal validation split (carved out of the
    training set for epoch selection; the network never fitted its weights on them, so
    their deep features are out-of-sample). PCA is still fitted on all training lesions
    (unsupervised; the projection of the held-out lesions is then honest). The price is a
    small fitting set (about ``val_fraction`` of the training lesions): raise the deep
    model's ``val_fraction`` (e.g. 0.34: the split uses ``round(1 / fraction)``
    folds, so a third of the training patients) for this mode. Their only remaining optimism is
    that they chose the epoch.

Out-of-fold deep features (a network per cross-validation fold) were not implemented:
five extra trainings are hours on a CPU, and features of different networks do not share
a coordinate system, so a PCA/classifier fitted on a mix of them would not apply to the
final network's features (docs/fusion.md).
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
    "paper": "all training lesions (the paper's method; their deep features are in-sample for the network, "
             "so the fusion's cross-validated AUC and threshold are optimistic)",
    "internal": "the deep network's internal-validation lesions only (out-of-sample deep features; the network "
                "never fitted its weights on them, it only chose its epoch on them)",
}


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
                      "threads": self.threads, "inference_batch_size": int(self.inference_batch_size)})
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


def train_fusion_models(X_fusion: pd.DataFrame, y: np.ndarray, groups: np.ndarray, cfg, fusion_fit: str = "paper",
                        progress: Callable[[str], None] | None = None):
    """Fit the fusion models on the rows given (chosen by ``fusion_fit``, see the module
    docstring) with the radiomics training function itself. Returns (models, selection)."""
    from HRMMPredictLib.radiomics.model import train_radiomics_models

    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    fcfg = fusion_config(cfg, y, groups, fusion_fit)
    return train_radiomics_models(X_fusion, y, groups, fcfg, progress=progress, name="fusion")
