"""Feature selection as scikit-learn transformers, so one Pipeline refits every step inside
each cross-validation fold (no information from held-out cases leaks into selection).

The paper's order: z-score -> Mann-Whitney U (p < 0.05) -> Pearson |r| > 0.9 pruning ->
mRMR to 100 -> LASSO. Each selector keeps column names (``get_feature_names_out``) and a
``support_`` mask over its input; fallbacks when a step would keep nothing are documented
on each class (a model must always have at least one feature).
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.validation import check_is_fitted


class _Selector(TransformerMixin, BaseEstimator):
    """Base: subclasses set ``support_`` (bool mask over input columns) in ``fit``."""

    def _names_in(self, X):
        names = getattr(X, "columns", None)
        if names is not None:
            return np.asarray([str(c) for c in names], dtype=object)
        return np.asarray([f"x{i}" for i in range(np.asarray(X).shape[1])], dtype=object)

    def _prepare(self, X, y=None):
        self.feature_names_in_ = self._names_in(X)
        self.n_features_in_ = len(self.feature_names_in_)
        Xa = np.asarray(X, dtype=float)
        if y is None:
            return Xa
        ya = np.asarray(y).astype(int)
        if set(np.unique(ya)) != {0, 1}:
            raise ValueError("feature selection needs both classes (0 and 1) in the training data")
        return Xa, ya

    def transform(self, X):
        check_is_fitted(self, "support_")
        if hasattr(X, "iloc"):
            return X.iloc[:, np.flatnonzero(self.support_)]
        return np.asarray(X)[:, self.support_]

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "support_")
        names = self.feature_names_in_ if input_features is None else np.asarray(input_features, dtype=object)
        return names[self.support_]

    def get_support(self, indices=False):
        check_is_fitted(self, "support_")
        return np.flatnonzero(self.support_) if indices else self.support_


class MannWhitneySelector(_Selector):
    """Keep features whose Mann-Whitney U test between classes gives p < ``alpha``.

    Fallback: when none passes, the ``min_features`` with the smallest p are kept.
    """

    def __init__(self, alpha: float = 0.05, min_features: int = 1):
        self.alpha = alpha
        self.min_features = min_features

    def fit(self, X, y):
        Xa, ya = self._prepare(X, y)
        self.pvalues_ = mann_whitney_p(Xa, ya)
        keep = self.pvalues_ < self.alpha
        if keep.sum() < self.min_features:
            order = np.argsort(self.pvalues_, kind="stable")
            keep = np.zeros_like(keep)
            keep[order[: self.min_features]] = True
        self.support_ = keep
        return self


def mann_whitney_p(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-value per column (asymptotic with tie correction);
    constant columns get p = 1."""
    a, b = X[y == 1], X[y == 0]
    with np.errstate(all="ignore"):
        res = stats.mannwhitneyu(a, b, alternative="two-sided", axis=0, method="asymptotic")
    p = np.asarray(res.pvalue, dtype=float)
    return np.where(np.isfinite(p), p, 1.0)


class CorrelationFilter(_Selector):
    """Of every pair with |Pearson r| > ``threshold`` keep one: features are visited from the
    most to the least associated with the label (Mann-Whitney p, ties by column order) and
    a feature is kept only if it is not too correlated with any already-kept one. The result
    does not depend on column order except for exact ties."""

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def fit(self, X, y):
        Xa, ya = self._prepare(X, y)
        n = Xa.shape[1]
        p = mann_whitney_p(Xa, ya)
        order = np.lexsort((np.arange(n), p))
        corr = np.abs(_corrcoef(Xa))
        keep = np.zeros(n, dtype=bool)
        kept_idx: list[int] = []
        for j in order:
            if kept_idx and np.any(corr[j, kept_idx] > self.threshold):
                continue
            keep[j] = True
            kept_idx.append(j)
        self.support_ = keep
        return self


def _corrcoef(X: np.ndarray) -> np.ndarray:
    """Pearson correlation of columns; constant columns correlate 0 with everything."""
    Xc = X - X.mean(axis=0)
    sd = np.sqrt((Xc ** 2).sum(axis=0))
    sd[sd == 0] = np.inf
    Z = Xc / sd
    c = Z.T @ Z
    np.fill_diagonal(c, 1.0)
    return np.clip(c, -1.0, 1.0)


class MRMRSelector(_Selector):
    """Minimum-redundancy maximum-relevance, greedy, to ``k`` features.

    Relevance: |Pearson r| with the label (monotone in the ANOVA F statistic for two
    classes); redundancy: mean |Pearson r| with the features already chosen; score =
    relevance - redundancy (Ding & Peng's difference criterion, with correlation in place
    of mutual information so both terms share one scale; the quotient form lets a feature
    with near-zero redundancy win on noise). The first feature is the most relevant; ties go
    to the earlier column. If fewer than ``k`` features are given, all are kept.
    """

    def __init__(self, k: int = 100):
        self.k = k

    def fit(self, X, y):
        Xa, ya = self._prepare(X, y)
        n = Xa.shape[1]
        rel = np.abs(_corrcoef(np.column_stack([ya.astype(float), Xa]))[0, 1:])
        self.relevance_ = rel
        if n <= self.k:
            self.support_ = np.ones(n, dtype=bool)
            self.order_ = np.argsort(-rel, kind="stable")
            return self
        corr = np.abs(_corrcoef(Xa))
        chosen = [int(np.argmax(rel))]
        red_sum = corr[:, chosen[0]].copy()
        available = np.ones(n, dtype=bool)
        available[chosen[0]] = False
        while len(chosen) < self.k:
            score = rel - red_sum / len(chosen)
            score[~available] = -np.inf
            j = int(np.argmax(score))
            chosen.append(j)
            available[j] = False
            red_sum += corr[:, j]
        keep = np.zeros(n, dtype=bool)
        keep[chosen] = True
        self.support_ = keep
        self.order_ = np.asarray(chosen)
        return self


class LassoSelector(_Selector):
    """LASSO (L1-penalised logistic regression) with C chosen by inner stratified CV
    (ROC AUC; the largest penalty within one SE of the best is not used: the best mean
    AUC wins, ties to the stronger penalty). Keeps features with non-zero coefficients.

    ``groups``: a mapping lesion id -> patient id (a pandas Series indexed by lesion id);
    when given and ``X`` is a DataFrame indexed by lesion id, the inner folds are
    ``StratifiedGroupKFold`` by patient (no patient on both sides of an inner fold; at
    most as many folds as the rarer class has patients). Without it (plain arrays), plain
    ``StratifiedKFold`` on rows.

    Fallback: when the chosen penalty zeroes every coefficient, the feature with the largest
    |coefficient| at the weakest penalty of the grid is kept.
    """

    def __init__(self, Cs=None, cv: int = 5, random_state: int = 0, max_features: int | None = None,
                 groups=None):
        self.Cs = Cs
        self.cv = cv
        self.random_state = random_state
        self.max_features = max_features
        self.groups = groups

    def _inner_folds(self, X, ya):
        """(splitter, n_folds, groups or None) for the inner CV of C."""
        g = None
        if self.groups is not None and hasattr(X, "index"):
            import pandas as pd

            mapping = pd.Series(self.groups) if not isinstance(self.groups, pd.Series) else self.groups
            g = mapping.reindex(X.index).to_numpy()
            if pd.isna(g).any():
                raise ValueError("LassoSelector: no patient id for some lesions of the training data")
            n_min = int(min(len(np.unique(g[ya == c])) for c in (0, 1)))
        else:
            n_min = int(min(np.bincount(ya)))
        folds = max(2, min(self.cv, n_min))
        if g is not None:
            return StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=self.random_state), folds, g
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.random_state), folds, None

    def fit(self, X, y):
        from sklearn.metrics import roc_auc_score

        Xa, ya = self._prepare(X, y)
        Cs = np.asarray(self.Cs if self.Cs is not None else np.logspace(-2, 1, 10), dtype=float)
        splitter, folds, g = self._inner_folds(X, ya)
        scores = np.zeros((len(Cs), folds))
        for fi, (tr, te) in enumerate(splitter.split(Xa, ya, g)):
            for ci, C in enumerate(Cs):
                if len(np.unique(ya[tr])) < 2:
                    scores[ci, fi] = 0.5
                    continue
                m = _l1_logistic(C, self.random_state).fit(Xa[tr], ya[tr])
                s = m.decision_function(Xa[te])
                scores[ci, fi] = roc_auc_score(ya[te], s) if np.ptp(s) > 0 and len(np.unique(ya[te])) == 2 else 0.5
        mean = scores.mean(axis=1)
        best = int(np.flatnonzero(mean >= mean.max() - 1e-12)[0])  # ties -> stronger penalty (smaller C)
        self.C_ = float(Cs[best])
        self.cv_auc_ = mean
        # standard error of the mean inner-CV AUC per C (for the report's CV curve)
        self.cv_auc_se_ = scores.std(axis=1, ddof=1) / np.sqrt(folds) if folds > 1 else np.zeros_like(mean)
        # coefficient path: the L1 model refitted on all the training rows at every C of the grid
        # (the fit at the chosen C is the selector's model)
        self.Cs_ = Cs
        self.coef_path_ = np.vstack([_l1_logistic(float(C), self.random_state).fit(Xa, ya).coef_.ravel()
                                     for C in Cs])
        coef = self.coef_path_[best].copy()
        keep = coef != 0
        if not keep.any():
            weak = self.coef_path_[int(np.argmax(Cs))]
            keep = np.zeros_like(keep)
            keep[int(np.argmax(np.abs(weak)))] = True
        if self.max_features is not None and keep.sum() > self.max_features:
            idx = np.flatnonzero(keep)
            top = idx[np.argsort(-np.abs(coef[idx]), kind="stable")[: self.max_features]]
            keep = np.zeros_like(keep)
            keep[top] = True
        self.coef_ = coef
        self.support_ = keep
        return self


def _l1_logistic(C: float, random_state: int) -> LogisticRegression:
    # scikit-learn >= 1.8 spells the L1 penalty as l1_ratio=1 ("penalty" is deprecated)
    return LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", max_iter=2000, random_state=random_state)
