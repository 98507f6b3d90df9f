"""Feature selection on examples small enough to work by hand.

The features are sums of columns of an 8 x 8 Hadamard matrix: those columns have mean 0 and
are orthogonal, so every Pearson correlation is a ratio of dot products of the coefficient
vectors, e.g. corr(2 h1 + h2, h1) = 2 / sqrt(5). The label is y = (h1 + 1) / 2, so
relevance |corr(X, y)| = |coefficient of h1| / |coefficients|.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import hadamard

from HRMMPredictLib.radiomics.selection import (
    CorrelationFilter,
    LassoSelector,
    MannWhitneySelector,
    MRMRSelector,
    _corrcoef,
    mann_whitney_p,
)

H = hadamard(8).astype(float)[:, 1:]  # 7 orthogonal +-1 columns with mean 0
Y = ((H[:, 0] + 1) / 2).astype(int)    # label = h1 in 0/1


def combo(*coef) -> np.ndarray:
    return H[:, : len(coef)] @ np.asarray(coef, dtype=float)


def mrmr_example() -> pd.DataFrame:
    """Worked example (coefficients on h1..h5; relevance = |c1| / |c|):

    A      = 2 h1 + h2          relevance 2/sqrt5 = 0.894   (most relevant: picked first)
    B      = h1 - 2 h2 + 2 h3   relevance 1/3,  corr(B, A) = (2 - 2) / (sqrt5 * 3) = 0
    B_copy = B                  relevance 1/3,  corr(B_copy, B) = 1
    C      = h1 + 2 h4          relevance 1/sqrt5 = 0.447, corr(C, A) = 2/5, corr(C, B) = 1/(3 sqrt5)
    D      = h5                 relevance 0, uncorrelated with everything

    pick 2 (chosen A): score = relevance - |corr(., A)|
        B 1/3 - 0 = 0.333, B_copy 0.333 (tie: the earlier column, B), C 0.447 - 0.4 = 0.047, D 0
    pick 3 (chosen A, B): score = relevance - mean |corr| with A and B
        B_copy 1/3 - (0 + 1)/2 = -0.167, C 0.447 - (0.4 + 0.149)/2 = 0.173, D 0  -> C
    pick 4 (chosen A, B, C): B_copy 1/3 - (0 + 1 + 0.149)/3 = -0.050, D 0 - 0 = 0 -> D
    A redundancy that is never updated after the first pick would give [A, B, B_copy].
    """
    b = combo(1, -2, 2)
    return pd.DataFrame({"A": combo(2, 1), "B": b, "B_copy": b.copy(), "C": combo(1, 0, 0, 2),
                         "D": H[:, 4]})


def test_mrmr_greedy_order_worked_by_hand():
    X = mrmr_example()
    corr = np.abs(_corrcoef(X.to_numpy()))
    assert corr[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert corr[0, 3] == pytest.approx(0.4, abs=1e-12)
    assert corr[1, 3] == pytest.approx(1 / (3 * math.sqrt(5)), abs=1e-12)
    sel = MRMRSelector(k=3).fit(X, Y)
    np.testing.assert_allclose(sel.relevance_, [2 / math.sqrt(5), 1 / 3, 1 / 3, 1 / math.sqrt(5), 0.0], atol=1e-12)
    assert list(X.columns[sel.order_]) == ["A", "B", "C"]
    assert list(sel.get_feature_names_out()) == ["A", "B", "C"]  # column order, not pick order
    assert list(X.columns[MRMRSelector(k=4).fit(X, Y).order_]) == ["A", "B", "C", "D"]
    assert list(X.columns[MRMRSelector(k=2).fit(X, Y).order_]) == ["A", "B"]
    assert list(X.columns[MRMRSelector(k=1).fit(X, Y).order_]) == ["A"]


def test_mrmr_tie_goes_to_the_earlier_column_and_order_does_not_depend_on_columns_otherwise():
    X = mrmr_example()[["D", "C", "B_copy", "B", "A"]]
    sel = MRMRSelector(k=3).fit(X, Y)
    assert list(X.columns[sel.order_]) == ["A", "B_copy", "C"]


def test_mrmr_with_fewer_features_than_k_keeps_all_ordered_by_relevance():
    X = mrmr_example()
    sel = MRMRSelector(k=5).fit(X, Y)
    assert sel.support_.all()
    assert list(X.columns[sel.order_]) == ["A", "C", "B", "B_copy", "D"]
    assert MRMRSelector(k=6).fit(X, Y).support_.all()


def test_mrmr_on_numpy_input_and_transform():
    X = mrmr_example()
    sel = MRMRSelector(k=3).fit(X.to_numpy(), Y)
    assert list(sel.get_feature_names_out()) == ["x0", "x1", "x3"]
    np.testing.assert_array_equal(sel.transform(X.to_numpy()), X.to_numpy()[:, [0, 1, 3]])
    assert list(sel.transform(X).columns) == ["A", "B", "C"]
    np.testing.assert_array_equal(sel.get_support(indices=True), [0, 1, 3])
    np.testing.assert_array_equal(sel.get_support(), [True, True, False, True, False])


def test_selection_needs_both_classes():
    X = mrmr_example()
    for selector in (MRMRSelector(k=2), MannWhitneySelector(), CorrelationFilter(), LassoSelector(cv=2)):
        with pytest.raises(ValueError, match="both classes"):
            selector.fit(X, np.ones(8, int))


def test_corrcoef_of_constant_columns_is_zero():
    X = np.column_stack([H[:, 0], np.full(8, 3.0), 2 * H[:, 0] + 1])
    c = _corrcoef(X)
    np.testing.assert_allclose(c, [[1, 0, 1], [0, 1, 0], [1, 0, 1]], atol=1e-12)


# ---------------------------------------------------------------------------------------
# Pearson pruning at its threshold: |r| > threshold drops the less relevant feature


def test_correlation_filter_at_the_threshold():
    """P = 4 h1 + 3 h2 and Q = 5 h2 + 4 h4: corr = 15 / (5 * sqrt(41)); P carries the label
    (h1), Q does not, so Q goes once |r| exceeds the threshold (strictly)."""
    X = pd.DataFrame({"P": combo(4, 3), "Q": combo(0, 5, 0, 4), "R": H[:, 5]})
    r = float(np.abs(_corrcoef(X.to_numpy()))[0, 1])
    assert r == pytest.approx(15 / (5 * math.sqrt(41)), abs=1e-12)
    assert list(CorrelationFilter(threshold=r + 1e-9).fit(X, Y).get_feature_names_out()) == ["P", "Q", "R"]
    assert list(CorrelationFilter(threshold=r - 1e-9).fit(X, Y).get_feature_names_out()) == ["P", "R"]
    # |r| equal to the threshold is not "above" it
    assert list(CorrelationFilter(threshold=r).fit(X, Y).get_feature_names_out()) == ["P", "Q", "R"]
    assert CorrelationFilter().threshold == 0.9  # the paper's |r| > 0.9
    # the same with the more relevant feature in the second column
    Xr = X[["Q", "P", "R"]]
    assert list(CorrelationFilter(threshold=r - 1e-9).fit(Xr, Y).get_feature_names_out()) == ["P", "R"]


def test_correlation_filter_keeps_the_most_relevant_of_a_chain():
    """a ~ b and b ~ c above 0.9, a ~ c below; a most relevant, then b, then c. Visiting by
    relevance keeps a, drops b (too close to a) and keeps c: c is compared with the KEPT
    features only (b was dropped)."""
    rng = np.random.default_rng(11)
    y = np.r_[np.zeros(15, int), np.ones(15, int)]
    a = rng.normal(size=30) + 1.0 * y
    b = a + 0.35 * rng.normal(size=30)
    c = b + 0.35 * rng.normal(size=30)
    X = pd.DataFrame({"c": c, "b": b, "a": a})
    cr = np.abs(_corrcoef(X.to_numpy()))
    assert cr[0, 1] > 0.9 and cr[1, 2] > 0.9 and cr[0, 2] < 0.9
    p = mann_whitney_p(X.to_numpy(), y)
    assert p[2] < p[1] < p[0]
    assert list(CorrelationFilter(0.9).fit(X, y).get_feature_names_out()) == ["c", "a"]
    # above every correlation nothing is pruned, below all only the most relevant stays
    assert list(CorrelationFilter(0.95).fit(X, y).get_feature_names_out()) == ["c", "b", "a"]
    assert list(CorrelationFilter(0.5).fit(X, y).get_feature_names_out()) == ["a"]


# ---------------------------------------------------------------------------------------
# Mann-Whitney: the p < alpha rule and the fallback


def test_mann_whitney_p_and_alpha_edge():
    X = np.column_stack([H[:, 0] + 0.01 * np.arange(8), H[:, 1], np.ones(8)])
    p = mann_whitney_p(X, Y)
    assert p[2] == 1.0  # constant column
    from scipy import stats

    ref = stats.mannwhitneyu(X[Y == 1, 0], X[Y == 0, 0], alternative="two-sided", method="asymptotic").pvalue
    assert p[0] == pytest.approx(ref, rel=1e-12)
    assert p[0] < p[1]
    at = MannWhitneySelector(alpha=float(p[0])).fit(X, Y)  # p < alpha is strict: none passes,
    assert list(at.support_) == [True, False, False]        # the fallback keeps the smallest p
    assert list(MannWhitneySelector(alpha=float(p[0]), min_features=0).fit(X, Y).support_) == [False] * 3
    above = MannWhitneySelector(alpha=float(np.nextafter(p[0], 1))).fit(X, Y)
    assert list(above.support_) == [True, False, False]
    two = MannWhitneySelector(alpha=1e-12, min_features=2).fit(X, Y)
    assert two.support_.sum() == 2 and two.support_[0]
    none_needed = MannWhitneySelector(alpha=1e-12, min_features=0).fit(X, Y)
    assert none_needed.support_.sum() == 0


# ---------------------------------------------------------------------------------------
# LASSO: the chosen C and the fallback


def test_lasso_fallback_and_max_features():
    rng = np.random.default_rng(0)
    n = 40
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=list("abcdef"))
    X["a"] += 2.0 * y
    X["b"] += 1.5 * y
    X["c"] += 1.0 * y
    # a penalty so strong that every coefficient is 0: the fallback keeps one feature, the one
    # with the largest |coefficient| at the weakest penalty of the grid
    sel = LassoSelector(Cs=[1e-4, 1e-3], cv=3).fit(X, y)
    assert sel.support_.sum() == 1
    from sklearn.linear_model import LogisticRegression

    weak = LogisticRegression(l1_ratio=1.0, C=1e-3, solver="liblinear", max_iter=2000, random_state=0).fit(X, y)
    if np.any(weak.coef_ != 0):
        assert sel.support_[int(np.argmax(np.abs(weak.coef_.ravel())))]
    full = LassoSelector(Cs=[10.0], cv=3).fit(X, y)
    assert full.support_.sum() >= 3
    capped = LassoSelector(Cs=[10.0], cv=3, max_features=2).fit(X, y)
    assert capped.support_.sum() == 2
    top2 = np.argsort(-np.abs(full.coef_), kind="stable")[:2]
    assert set(np.flatnonzero(capped.support_)) == set(top2)
    assert full.C_ == 10.0 and full.cv_auc_.shape == (1,)


def test_lasso_c_choice_prefers_the_best_mean_auc_and_ties_go_to_the_stronger_penalty():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    X = pd.DataFrame(rng.normal(size=(60, 5)), columns=list("abcde"))
    X["a"] += 1.5 * y
    sel = LassoSelector(Cs=[1e-4, 0.05, 1.0, 10.0], cv=3).fit(X, y)
    best = np.flatnonzero(sel.cv_auc_ >= sel.cv_auc_.max() - 1e-12)[0]
    assert sel.C_ == [1e-4, 0.05, 1.0, 10.0][best]
    assert sel.cv_auc_[0] == 0.5  # all-zero coefficients score 0.5 (no ranking)
    assert sel.cv_auc_.max() > 0.7


def test_lasso_defaults_and_small_minority_class():
    sel = LassoSelector()
    assert (sel.cv, sel.random_state, sel.max_features, sel.Cs) == (5, 0, None, None)
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    X = pd.DataFrame(rng.normal(size=(20, 4)), columns=list("abcd"))
    X["a"] += 2.5 * y
    fitted = LassoSelector().fit(X, y)  # the default grid: 10 values from 0.01 to 10
    assert fitted.cv_auc_.shape == (10,) and fitted.C_ in set(np.logspace(-2, 1, 10))
    assert fitted.support_[0]
    # 2 cases of the minority class: 2 folds (not more than the class has)
    y2 = np.r_[np.zeros(18, int), np.ones(2, int)]
    X2 = X.copy()
    X2["a"] = rng.normal(size=20) + 3.0 * y2
    two = LassoSelector(Cs=[1.0, 10.0]).fit(X2, y2)
    assert two.cv_auc_.shape == (2,)


def test_lasso_tie_in_cv_auc_goes_to_the_stronger_penalty():
    y = np.r_[np.zeros(12, int), np.ones(12, int)]
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"a": y * 10.0 + rng.normal(0, 0.1, 24), "b": rng.normal(size=24)})
    sel = LassoSelector(Cs=[1.0, 10.0], cv=3).fit(X, y)
    assert list(sel.cv_auc_) == [1.0, 1.0]  # perfectly separated in every fold at both penalties
    assert sel.C_ == 1.0


def test_mrmr_never_picks_a_feature_twice():
    """With E = h6 added and k = 5 the fifth pick is B_copy: 1/3 - (0 + 1 + 0.149 + 0)/4 = 0.046
    beats E (0). B itself would score the same (and win the tie) if it stayed available."""
    X = mrmr_example()
    X["E"] = H[:, 5]
    order = list(X.columns[MRMRSelector(k=5).fit(X, Y).order_])
    assert order == ["A", "B", "C", "D", "B_copy"]


def test_negative_correlations_count_by_their_size():
    X = np.column_stack([H[:, 0], -H[:, 0], H[:, 1] - 0.5 * H[:, 0]])
    c = _corrcoef(X)
    assert c[0, 1] == pytest.approx(-1.0, abs=1e-12)
    assert c[0, 2] == pytest.approx(-0.5 / math.sqrt(1.25), abs=1e-12)


def test_mann_whitney_p_of_a_column_with_nan_is_one():
    X = np.column_stack([np.r_[1.0, 2, 3, np.nan, 5, 6, 7, 8], H[:, 0]])
    p = mann_whitney_p(X, Y)
    assert p[0] == 1.0 and p[1] < 0.05


# ---------------------------------------------------------------------------------------
# LASSO's inner CV: number of folds (by patient when grouped), the default grid, the
# 0.5 of a fold that cannot rank, and the standard error of the CV curve


def _l1(C):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", max_iter=2000, random_state=0)


def _inner_cv_auc(X: np.ndarray, y: np.ndarray, Cs, folds: int, groups=None) -> np.ndarray:
    """The inner CV written out independently of LassoSelector: a (len(Cs), folds) table of
    ROC AUCs of the L1 logistic decision function on each held-out fold (0.5 where a fold
    cannot rank: one class in its training or test part, or a constant decision)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(X, y)
    else:
        splits = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0).split(X, y, groups)
    out = np.full((len(Cs), folds), np.nan)
    for fi, (tr, te) in enumerate(splits):
        if groups is not None:
            assert not set(groups[tr]) & set(groups[te]), "a patient on both sides of an inner fold"
        for ci, C in enumerate(Cs):
            if len(set(y[tr])) < 2 or len(set(y[te])) < 2:
                out[ci, fi] = 0.5
                continue
            s = _l1(C).fit(X[tr], y[tr]).decision_function(X[te])
            out[ci, fi] = roc_auc_score(y[te], s) if s.max() > s.min() else 0.5
    assert not np.isnan(out).any()
    return out


def _grouped_cohort(n_hrmm: int, n_srmm: int, seed: int):
    """Lesions of patients (1-3 each, the label is the patient's); 4 features, the first
    two shifted with the label, lesions of one patient share a patient effect."""
    rng = np.random.default_rng(seed)
    rows, pid, labels = [], [], []
    for p, label in enumerate([1] * n_hrmm + [0] * n_srmm):
        effect = rng.normal(size=4)
        for _ in range(int(rng.integers(1, 4))):
            rows.append(effect + 0.5 * rng.normal(size=4) + label * np.array([1.2, 0.8, 0.0, 0.0]))
            pid.append(f"P{p:02d}")
            labels.append(label)
    idx = [f"L{i:03d}" for i in range(len(rows))]
    X = pd.DataFrame(np.asarray(rows), index=idx, columns=["a", "b", "c", "d"])
    return X, np.asarray(labels), pd.Series(pid, index=idx, name="patient_id")


@pytest.mark.parametrize(("cv", "n_hrmm", "folds"), [(3, 6, 3), (5, 3, 3), (5, 7, 5), (4, 9, 4)])
def test_grouped_lasso_uses_min_of_cv_and_patients_of_the_rarer_class_folds(cv, n_hrmm, folds):
    """Grouped inner CV: StratifiedGroupKFold by patient with min(cv, patients of the rarer
    class) folds (counted in patients, not lesions: the rarer class has more lesions than
    patients). The curve equals the CV written out in the test with that many folds, and its
    standard error is the sample SD of the fold AUCs / sqrt(folds)."""
    X, y, groups = _grouped_cohort(n_hrmm, 12, seed=cv + n_hrmm)
    assert int(y.sum()) > n_hrmm  # more HRMM lesions than HRMM patients
    Cs = [0.05, 0.3, 1.0, 5.0]
    sel = LassoSelector(Cs=Cs, cv=cv, groups=groups).fit(X, y)
    ref = _inner_cv_auc(X.to_numpy(), y, Cs, folds, groups.to_numpy())
    np.testing.assert_allclose(sel.cv_auc_, ref.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(sel.cv_auc_se_, ref.std(axis=1, ddof=1) / math.sqrt(folds), atol=1e-12)
    best = int(np.flatnonzero(ref.mean(axis=1) >= ref.mean(axis=1).max() - 1e-12)[0])
    assert sel.C_ == Cs[best]
    assert np.ptp(ref.mean(axis=1)) > 0  # the curve is not flat: a different fold count shows


def test_lasso_standard_error_of_the_cv_curve_without_groups():
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(12, int), np.ones(9, int)]
    X = rng.normal(size=(21, 3)) + np.outer(y, [1.0, 0.8, 0.0])
    Cs = [0.3, 2.0]
    sel = LassoSelector(Cs=Cs, cv=3).fit(X, y)
    ref = _inner_cv_auc(X, y, Cs, 3)
    assert np.all(ref.std(axis=1) > 0)
    np.testing.assert_allclose(sel.cv_auc_, ref.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(sel.cv_auc_se_, ref.std(axis=1, ddof=1) / math.sqrt(3), atol=1e-12)


def test_lasso_default_grid_is_ten_log_spaced_values_from_0_01_to_10():
    X, y, groups = _grouped_cohort(7, 9, seed=8)
    grid = 10.0 ** np.linspace(-2, 1, 10)  # 0.01, 0.0215, ..., 4.64, 10
    assert grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(10.0)
    sel = LassoSelector(cv=3, groups=groups).fit(X, y)
    ref = _inner_cv_auc(X.to_numpy(), y, grid, 3, groups.to_numpy())
    np.testing.assert_allclose(sel.cv_auc_, ref.mean(axis=1), atol=1e-12)
    best = int(np.flatnonzero(ref.mean(axis=1) >= ref.mean(axis=1).max() - 1e-12)[0])
    assert sel.C_ == pytest.approx(grid[best], rel=1e-12)


@pytest.mark.parametrize("grouped", [False, True])
def test_lasso_with_one_case_of_a_class_scores_every_c_at_0_5(grouped):
    """One HRMM lesion (one patient): 2 inner folds; the fold that holds it out trains on one
    class only, the other has one class in its test part: neither can rank, so every C
    scores 0.5 with standard error 0 and the tie goes to the strongest penalty."""
    rng = np.random.default_rng(6)
    y = np.r_[np.zeros(7, int), 1]
    X = pd.DataFrame(rng.normal(size=(8, 2)) + np.outer(y, [3.0, 0.0]), columns=["a", "b"],
                     index=[f"L{i}" for i in range(8)])
    groups = pd.Series([f"P{i}" for i in range(8)], index=X.index) if grouped else None
    with pytest.warns(UserWarning, match="least populated class"):
        sel = LassoSelector(Cs=[0.5, 2.0, 8.0], cv=5, groups=groups).fit(X, y)
    np.testing.assert_array_equal(sel.cv_auc_, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(sel.cv_auc_se_, [0.0, 0.0, 0.0])
    assert sel.C_ == 0.5
