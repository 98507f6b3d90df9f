"""Feature-selection transformers: each step does what the paper says, deterministically,
and the Pipeline refits all of it inside each CV fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.preprocessing import StandardScaler

from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig, build_pipeline, classifiers
from HRMMPredictLib.radiomics.selection import CorrelationFilter, LassoSelector, MannWhitneySelector, MRMRSelector


def _data(n=80, informative=4, noise=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    X = rng.normal(size=(n, informative + noise))
    X[:, :informative] += 1.2 * y[:, None]
    cols = [f"inf{i}" for i in range(informative)] + [f"noise{i}" for i in range(noise)]
    return pd.DataFrame(X, columns=cols), y


def test_mann_whitney_selector_matches_scipy():
    X, y = _data()
    sel = MannWhitneySelector(alpha=0.05).fit(X, y)
    for j, c in enumerate(X.columns):
        p = stats.mannwhitneyu(X[c][y == 1], X[c][y == 0], alternative="two-sided", method="asymptotic").pvalue
        assert sel.pvalues_[j] == pytest.approx(p, rel=1e-10)
        assert sel.support_[j] == (p < 0.05)
    assert all(c in sel.get_feature_names_out() for c in ["inf0", "inf1", "inf2", "inf3"])


def test_mann_whitney_fallback_keeps_best_feature_when_none_significant():
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(20, 5)), columns=list("abcde"))
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    sel = MannWhitneySelector(alpha=1e-9).fit(X, y)
    assert sel.support_.sum() == 1
    assert sel.get_feature_names_out()[0] == X.columns[np.argmin(sel.pvalues_)]


def test_correlation_filter_keeps_the_feature_more_associated_with_label():
    X, y = _data(noise=3)
    rng = np.random.default_rng(2)
    X["copy_of_inf0"] = X["inf0"] * 2 + rng.normal(scale=0.01, size=len(X))  # |r| ~ 1, equal association
    X["weak_twin"] = X["inf1"] + rng.normal(scale=0.3, size=len(X))          # |r| > 0.9, weaker association
    f = CorrelationFilter(0.9).fit(X, y)
    kept = set(f.get_feature_names_out())
    from HRMMPredictLib.radiomics.selection import mann_whitney_p

    p = dict(zip(X.columns, mann_whitney_p(X.to_numpy(), y)))
    stronger = min(("inf1", "weak_twin"), key=lambda c: p[c])
    assert stronger in kept and ({"inf1", "weak_twin"} - {stronger}).isdisjoint(kept)
    assert len(kept & {"inf0", "copy_of_inf0"}) == 1
    # every kept pair is below the threshold
    r = np.corrcoef(X[list(kept)].to_numpy().T)
    np.fill_diagonal(r, 0)
    assert np.abs(r).max() <= 0.9
    # deterministic under column permutation (no exact ties here except the copy pair)
    perm = X[list(reversed(X.columns))]
    kept2 = set(CorrelationFilter(0.9).fit(perm, y).get_feature_names_out())
    assert kept - {"inf0", "copy_of_inf0"} == kept2 - {"inf0", "copy_of_inf0"}


def test_mrmr_picks_relevant_and_non_redundant_features():
    X, y = _data(informative=3, noise=30)
    X["dup"] = X["inf0"] + 1e-3 * np.random.default_rng(3).normal(size=len(X))
    sel = MRMRSelector(k=3).fit(X, y)
    chosen = list(X.columns[sel.order_])
    assert chosen[0] in ("inf0", "dup", "inf1", "inf2")
    assert not ({"inf0", "dup"} <= set(chosen)), "mRMR must not pick two copies of the same feature"
    assert sel.support_.sum() == 3
    assert MRMRSelector(k=100).fit(X, y).support_.all()


def test_lasso_selector_keeps_informative_features():
    X, y = _data(informative=3, noise=20, n=120)
    Z = StandardScaler().fit_transform(X)
    sel = LassoSelector(cv=5, random_state=0).fit(pd.DataFrame(Z, columns=X.columns), y)
    kept = set(sel.get_feature_names_out())
    assert {"inf0", "inf1", "inf2"} <= kept
    assert len(kept) < X.shape[1]


def test_lasso_path_and_cv_curve_are_the_fits_they_claim_to_be():
    """The stored path is an L1 logistic fit on all rows at each C (checked against a fresh
    scikit-learn fit), the CV curve's mean/SE are those of an inner CV run here independently
    (same folds: StratifiedKFold with the selector's seed), and the chosen C is the best mean."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    X, y = _data(informative=3, noise=12, n=90, seed=4)
    Z = StandardScaler().fit_transform(X)
    Cs = [0.01, 0.05, 0.2, 1.0]
    sel = LassoSelector(Cs=Cs, cv=3, random_state=2).fit(Z, y)
    assert list(sel.Cs_) == Cs and sel.coef_path_.shape == (4, X.shape[1])
    for i, C in enumerate(Cs):
        ref = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", max_iter=2000, random_state=2).fit(Z, y)
        np.testing.assert_allclose(sel.coef_path_[i], ref.coef_.ravel(), rtol=0, atol=1e-10)
    # a weaker penalty never keeps fewer features on this data; the strongest keeps none
    nonzero = (sel.coef_path_ != 0).sum(axis=1)
    assert nonzero[0] == 0 and nonzero[-1] > nonzero[1]
    scores = np.zeros((4, 3))
    for f, (tr, te) in enumerate(StratifiedKFold(3, shuffle=True, random_state=2).split(Z, y)):
        for i, C in enumerate(Cs):
            m = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", max_iter=2000, random_state=2).fit(Z[tr], y[tr])
            s = m.decision_function(Z[te])
            scores[i, f] = roc_auc_score(y[te], s) if np.ptp(s) > 0 else 0.5
    np.testing.assert_allclose(sel.cv_auc_, scores.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(sel.cv_auc_se_, scores.std(axis=1, ddof=1) / np.sqrt(3), atol=1e-12)
    assert sel.C_ == Cs[int(np.argmax(scores.mean(axis=1)))]
    np.testing.assert_array_equal(sel.support_, sel.coef_path_[Cs.index(sel.C_)] != 0)


def test_pipeline_refits_selection_in_each_fold_without_leakage():
    """With pure noise, a pipeline whose selection is refitted per fold scores AUC ~0.5 out
    of fold; selecting on all data first (the leak) would look predictive."""
    from sklearn.model_selection import StratifiedKFold

    from HRMMPredictLib.evaluation.stats import roc_auc_delong

    rng = np.random.default_rng(4)
    X = pd.DataFrame(rng.normal(size=(60, 300)), columns=[f"f{i}" for i in range(300)])
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    cfg = RadiomicsTrainConfig(mrmr_k=20)
    pipe = build_pipeline(cfg, classifiers(cfg)["logistic"])
    oof = np.zeros(len(y))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        m = clone(pipe).fit(X.iloc[tr], y[tr])
        oof[te] = m.predict_proba(X.iloc[te])[:, 1]
        # the fold's selection saw only its training rows
        assert m.named_steps["zscore"].n_samples_seen_ == len(tr)
    assert roc_auc_delong(y, oof)["auc"] < 0.72
