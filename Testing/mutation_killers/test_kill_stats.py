"""HRMMPredictLib.evaluation.stats against independent fits and hand-worked cases:
calibration with a slope far from 1 (statsmodels GLM, logit(p) as offset), Wilson
intervals (statsmodels), Youden ties, the >= threshold rule, decision-curve and
Hosmer-Lemeshow edges, and the input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.evaluation import stats as S

sm = pytest.importorskip("statsmodels.api", reason="statsmodels is a test dependency (pip install -e '.[test]')")


def miscalibrated(n=400, a=0.3, b=0.5, seed=0):
    """Outcomes drawn from logit P = a + b logit(p): predictions too extreme (b < 1)."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(0, 2.0, n)))
    lp = np.log(p / (1 - p))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(a + b * lp)))).astype(int)
    return y, p, lp


@pytest.mark.parametrize("a,b,seed", [(0.3, 0.5, 0), (-0.8, 1.6, 1), (0.0, 0.3, 2)])
def test_calibration_in_the_large_and_slope_match_statsmodels(a, b, seed):
    y, p, lp = miscalibrated(a=a, b=b, seed=seed)
    r = S.calibration_slope_intercept(y, p)
    citl = sm.GLM(y, np.ones((y.size, 1)), family=sm.families.Binomial(), offset=lp).fit()
    joint = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    assert r["intercept"] == pytest.approx(citl.params[0], abs=1e-7)
    assert r["slope"] == pytest.approx(joint.params[1], abs=1e-7)
    assert r["intercept_joint"] == pytest.approx(joint.params[0], abs=1e-7)
    z = S.Z95
    for key, fit, i in (("intercept_ci95", citl, 0), ("slope_ci95", joint, 1), ("intercept_joint_ci95", joint, 0)):
        lo, hi = fit.params[i] - z * fit.bse[i], fit.params[i] + z * fit.bse[i]
        assert r[key] == pytest.approx([lo, hi], abs=1e-6), key
    # with a slope far from 1 the two intercepts are different numbers
    assert abs(r["intercept"] - r["intercept_joint"]) > 0.05
    assert r["intercept_definition"].startswith("calibration-in-the-large")


def test_calibration_clips_probabilities_of_0_and_1():
    y, p, _ = miscalibrated(n=200, seed=5)
    p = p.copy()
    p[y == 1][:1] = 1.0
    p[np.argmin(p)] = 0.0
    p[np.argmax(p)] = 1.0
    r = S.calibration_slope_intercept(y, p)
    q = np.clip(p, 1e-8, 1 - 1e-8)
    lq = np.log(q / (1 - q))
    joint = sm.GLM(y, sm.add_constant(lq), family=sm.families.Binomial()).fit()
    assert r["slope"] == pytest.approx(joint.params[1], abs=1e-6)


def test_calibration_refuses_perfect_separation():
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    p = np.r_[np.linspace(0.01, 0.4, 10), np.linspace(0.6, 0.99, 10)]
    with pytest.raises(UserError, match="separate the classes"):
        S.calibration_slope_intercept(y, p)


# ---------------------------------------------------------------------------------------
# Wilson intervals and proportions


@pytest.mark.parametrize("k,n", [(0, 5), (1, 5), (3, 7), (7, 7), (40, 113), (1, 1)])
def test_wilson_matches_statsmodels(k, n):
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    got = S.wilson_ci(k, n)
    assert got == pytest.approx([lo, hi], abs=1e-12)
    if k == 0:
        assert got[0] == 0.0
    if k == n:
        assert got[1] == 1.0
    assert S.wilson_ci(0, 0) is None and S.wilson_ci(3, -1) is None


def test_classification_metrics_threshold_is_inclusive_and_counts():
    y = [0, 0, 0, 1, 1, 1, 0, 1]
    s = [0.1, 0.5, 0.5, 0.5, 0.9, 0.2, 0.95, 0.7]
    m = S.classification_metrics(y, s, 0.5)
    # positive when score >= 0.5: TP = 3 (0.5, 0.9, 0.7), FN = 1 (0.2), FP = 3 (0.5, 0.5, 0.95), TN = 1
    assert m["counts"] == {"tp": 3, "fp": 3, "tn": 1, "fn": 1}
    assert m["sensitivity"] == {"value": 0.75, "ci95": S.wilson_ci(3, 4), "numerator": 3, "denominator": 4}
    assert m["specificity"]["value"] == 0.25 and m["specificity"]["denominator"] == 4
    assert m["ppv"]["value"] == 0.5 and m["npv"]["value"] == 0.5
    assert m["accuracy"]["value"] == 0.5 and m["accuracy"]["numerator"] == 4
    above = S.classification_metrics(y, s, float(np.nextafter(0.5, 1)))
    assert above["counts"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 2}
    nobody = S.classification_metrics(y, s, 2.0)
    assert nobody["ppv"]["value"] is None and nobody["ppv"]["ci95"] is None and nobody["ppv"]["denominator"] == 0
    assert m["threshold"] == 0.5
    with pytest.raises(UserError, match="finite"):
        S.classification_metrics(y, s, float("nan"))
    # one case of a class is enough here
    assert S.classification_metrics([0, 1], [0.2, 0.8], 0.5)["accuracy"]["value"] == 1.0


# ---------------------------------------------------------------------------------------
# Youden threshold


def test_youden_three_way_tie_goes_to_the_lowest_candidate():
    # pos {2, 4, 6}, neg {1, 3, 5}: J = 1/3 at candidates 2, 4 and 6 -> 2, midpoint to 1
    r = S.youden_threshold([0, 1, 0, 1, 0, 1], [1, 2, 3, 4, 5, 6])
    assert r == {"threshold": 1.5, "youden_j": pytest.approx(1 / 3), "sensitivity": 1.0,
                 "specificity": pytest.approx(1 / 3)}


def test_youden_best_at_the_lowest_score_returns_that_score():
    # pos {1, 2}, neg {3, 4} (an inverted score): J = 0 at the lowest candidate, negative elsewhere
    r = S.youden_threshold([1, 1, 0, 0], [1, 2, 3, 4])
    assert r["threshold"] == 1.0 and r["youden_j"] == 0.0 and r["sensitivity"] == 1.0 and r["specificity"] == 0.0


def test_youden_with_repeated_scores_and_unsorted_input():
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.1, 0.7, 0.7, 0.7, 0.3, 0.2, 0.95])
    r = S.youden_threshold(y, s)
    # candidates 0.1 0.2 0.3 0.7 0.9 0.95; at 0.7: sens 4/4, spec 3/4 -> J 0.75 (best)
    assert r["threshold"] == pytest.approx((0.7 + 0.3) / 2)
    assert r["youden_j"] == pytest.approx(0.75) and r["sensitivity"] == 1.0 and r["specificity"] == 0.75
    perm = np.random.default_rng(0).permutation(len(y))
    assert S.youden_threshold(y[perm], s[perm]) == r
    assert S.youden_or_none(y, s) == pytest.approx(r["threshold"])
    assert S.youden_or_none([0, 1, 1], [0.1, 0.2, 0.3]) is None      # one negative
    assert S.youden_or_none([0, 0, 1, 1], [0.5] * 4) is None          # constant score
    assert S.auc_or_none([0, 0, 1, 1], [0.5] * 4) is None
    assert S.auc_or_none([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["auc"] == pytest.approx(0.75)


def test_rank_auc_counts_ties_one_half():
    assert S.rank_auc([0, 1], [0.3, 0.3]) == 0.5
    assert S.rank_auc([0, 0, 1], [0.1, 0.5, 0.5]) == pytest.approx(0.75)
    assert S.rank_auc([1, 1], [0.1, 0.2]) is None and S.rank_auc([0, 0], [0.1, 0.2]) is None
    assert S.rank_auc([1, 0, 0], [0.1, 0.2, 0.3]) == 0.0


def test_roc_curve_points_by_hand():
    r = S.roc_curve_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert r["threshold"] == [None, 0.8, 0.4, 0.35, 0.1]
    assert r["tpr"] == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert r["fpr"] == [0.0, 0.0, 0.5, 0.5, 1.0]


def test_delong_se_by_hand():
    # 2 positives, 2 negatives: V10 = [0.5, 1], V01 = [1, 0.5]; var = var(V10)/2 + var(V01)/2
    r = S.roc_auc_delong([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert r["auc"] == 0.75 and (r["n"], r["n_positive"], r["n_negative"]) == (4, 2, 2)
    var = np.var([0.5, 1.0], ddof=1) / 2 + np.var([1.0, 0.5], ddof=1) / 2
    assert r["se"] == pytest.approx(math.sqrt(var), abs=1e-12)
    assert r["ci95"] == pytest.approx([0.75 - S.Z95 * r["se"], min(1.0, 0.75 + S.Z95 * r["se"])], abs=1e-12)
    perfect = S.roc_auc_delong([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    assert perfect["auc"] == 1.0 and perfect["se"] == 0.0 and perfect["ci95"] == [1.0, 1.0]
    both = S.delong_paired([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.5])
    assert (both["z"], both["p"], both["diff"]) == (0.0, 1.0, 0.0)


# ---------------------------------------------------------------------------------------
# Decision curve and Hosmer-Lemeshow edges


def test_decision_curve_by_hand():
    y = [1, 0, 1, 0]
    p = [0.8, 0.6, 0.3, 0.0]
    r = S.decision_curve(y, p, [0.0, 0.3, 0.6, 0.7])
    # pt 0: risk > 0 treated: 0.8, 0.6, 0.3 -> TP 2, FP 1; NB = 2/4 - 1/4 * 0 = 0.5
    # pt 0.3: risk >= 0.3: same three; NB = 0.5 - 0.25 * 3/7
    # pt 0.6: 0.8, 0.6 -> TP 1 FP 1; NB = 0.25 - 0.25 * 1.5; pt 0.7: 0.8 -> 0.25
    assert r["net_benefit"] == pytest.approx([0.5, 0.5 - 0.25 * 3 / 7, 0.25 - 0.25 * 1.5, 0.25])
    assert r["treat_all"] == pytest.approx([0.5, 0.5 - 0.5 * 3 / 7, 0.5 - 0.5 * 1.5, 0.5 - 0.5 * 7 / 3])
    assert r["tp_rate"] == pytest.approx([0.5, 0.5, 0.25, 0.25]) and r["fp_rate"] == pytest.approx([0.25, 0.25, 0.25, 0])
    assert r["treat_none"] == [0.0] * 4 and r["n"] == 4 and r["prevalence"] == 0.5
    default = S.decision_curve(y, p)
    assert len(default["threshold"]) == 100 and default["threshold"][0] == 0.0 and default["threshold"][-1] == 0.99
    for bad in ([1.0], [-0.01], [float("nan")], []):
        with pytest.raises(UserError, match="threshold"):
            S.decision_curve(y, p, bad)
    with pytest.raises(UserError, match=r"must lie in \[0, 1\) \(net benefit is undefined at 1\); got \[1.0, -0.5\]"):
        S.decision_curve(y, p, [0.5, 1.0, -0.5])
    with pytest.raises(UserError, match="numbers"):
        S.decision_curve(y, p, ["a"])
    assert S.decision_curve(y, p, [0.999])["threshold"] == [0.999]


def test_hosmer_lemeshow_by_hand():
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1])
    p = np.array([0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9])
    r = S.hosmer_lemeshow(y, p, g=3)
    # three groups of three: observed 1, 2, 2 positives; expected 0.3, 1.5, 2.7
    chi2 = sum((o - e) ** 2 / e + ((3 - o) - (3 - e)) ** 2 / (3 - e) for o, e in ((1, 0.3), (2, 1.5), (2, 2.7)))
    assert r["chi2"] == pytest.approx(chi2, abs=1e-12) and r["df"] == 1
    from scipy import stats

    assert r["p"] == pytest.approx(stats.chi2.sf(chi2, 1), rel=1e-10)
    assert [g["n"] for g in r["groups"]] == [3, 3, 3]
    assert [g["observed"] for g in r["groups"]] == [1, 2, 2]
    assert [g["expected"] for g in r["groups"]] == pytest.approx([0.3, 1.5, 2.7])
    assert r["groups"][0]["lower"] == 0.1 and r["groups"][-1]["upper"] == 0.9 and r["g_requested"] == 3
    with pytest.raises(UserError, match="at least 3 groups"):
        S.hosmer_lemeshow(y, p, g=2)
    with pytest.raises(UserError, match="too few distinct values"):
        S.hosmer_lemeshow([0, 1, 0, 1], [0.2, 0.2, 0.8, 0.8], g=3)


def test_hosmer_lemeshow_probability_zero_with_an_event_is_infinite():
    y = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1])
    p = np.array([0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9])
    assert S.hosmer_lemeshow(y, p, g=3)["chi2"] == math.inf


def test_calibration_curve_bins_by_hand():
    y = [0, 0, 1, 0, 1, 1, 1, 1]
    p = [0.05, 0.1, 0.2, 0.3, 0.55, 0.6, 0.9, 1.0]
    u = S.calibration_curve(y, p, n_bins=2, strategy="uniform")
    assert u["n"] == [4, 4] and u["observed"] == [0.25, 1.0]
    assert u["mean_predicted"] == pytest.approx([0.1625, 0.7625])
    assert u["bin_lower"] == [0.0, 0.5] and u["bin_upper"] == [0.5, 1.0]
    assert u["observed_ci95"][0] == S.wilson_ci(1, 4)
    edge = S.calibration_curve([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.7], n_bins=2, strategy="uniform")
    assert edge["n"] == [3, 1]  # right-closed: 0.5 belongs to the lower bin
    q = S.calibration_curve(y, p, n_bins=4)
    assert q["n"] == [2, 2, 2, 2] and q["observed"] == [0.0, 0.5, 1.0, 1.0]
    one = S.calibration_curve([0, 1, 0, 1], [0.3] * 4, n_bins=3)
    assert one["n"] == [4] and one["bin_lower"] == [0.3] and one["bin_upper"] == [0.3]
    with pytest.raises(UserError, match="n_bins"):
        S.calibration_curve(y, p, n_bins=0)
    with pytest.raises(UserError, match="strategy"):
        S.calibration_curve(y, p, strategy="kmeans")
    assert S.brier_score([0, 1, 0, 1], [0.2, 0.6, 0.0, 1.0]) == pytest.approx((0.04 + 0.16) / 4)


# ---------------------------------------------------------------------------------------
# input checks


def test_input_checks():
    with pytest.raises(UserError, match="no cases"):
        S.check_labels([])
    with pytest.raises(UserError, match="other values"):
        S.check_labels([0, 1, 2, 1, 0])
    with pytest.raises(UserError, match="found values"):
        S.check_labels(["yes", "no"])
    with pytest.raises(UserError, match="2 missing"):
        S.check_labels([0, 1, np.nan, np.nan])
    with pytest.raises(UserError, match="1 positive and 3 negative"):
        S.check_labels([0, 0, 0, 1])
    assert list(S.check_labels(np.array([True, False, True, False]))) == [1, 0, 1, 0]
    assert list(S.check_labels([[0, 1], [1, 0]])) == [0, 1, 1, 0]
    assert list(S.check_labels([0, 1], min_per_class=1)) == [0, 1]
    with pytest.raises(UserError, match="3 values but there are 4 labels"):
        S.check_scores([1, 2, 3], 4)
    with pytest.raises(UserError, match=r"1 NaN/infinite values \(positions \[1\]\)"):
        S.check_scores([1, np.inf, 3])
    with pytest.raises(UserError, match="constant"):
        S.check_scores([2, 2, 2])
    assert list(S.check_scores([2, 2], allow_constant=True)) == [2, 2]
    with pytest.raises(UserError, match=r"probability in \[0, 1\]; found values from -0.1 to 0.5"):
        S.check_scores([-0.1, 0.5], probability=True)
    with pytest.raises(UserError, match=r"from 0.5 to 1.1"):
        S.check_scores([0.5, 1.1], probability=True)
    assert list(S.check_scores([0.0, 1.0], probability=True)) == [0.0, 1.0]
    with pytest.raises(UserError, match="numeric"):
        S.check_scores(["a", "b"])
