"""HRMMPredictLib.evaluation.stats against published reference values (pROC aSAH, R dcurves famhistory,
R ResourceSelection hoslem.test on mtcars) and against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.evaluation import stats as S

# ---------------------------------------------------------------------------------------
# pROC aSAH (README of ../shared/data: positive class = Poor, 41 of 113)


@pytest.fixture(scope="module")
def asah(shared_data):
    d = pd.read_csv(shared_data / "stats" / "pROC_aSAH.csv")
    y = (d["outcome"] == "Poor").astype(int).to_numpy()
    return y, d


def test_asah_auc_and_ndka_ci(asah):
    y, d = asah
    assert y.sum() == 41 and y.size == 113
    ref = {"wfns": 0.823678861788618, "s100b": 0.731368563685637, "ndka": 0.611957994579946}
    for col, auc in ref.items():
        r = S.roc_auc_delong(y, d[col])
        assert r["auc"] == pytest.approx(auc, abs=1e-9), col
        assert r["n_positive"] == 41 and r["n_negative"] == 72
        # independent check of the AUC (not of DeLong) with scikit-learn
        assert r["auc"] == pytest.approx(roc_auc_score(y, d[col]), abs=1e-12)
    ci = S.roc_auc_delong(y, d["ndka"])["ci95"]
    assert ci[0] == pytest.approx(0.501244999271703, abs=1e-9)
    assert ci[1] == pytest.approx(0.722670989888189, abs=1e-9)


def test_asah_paired_delong(asah):
    y, d = asah
    r = S.delong_paired(y, d["wfns"], d["s100b"])
    assert r["z"] == pytest.approx(2.20898359144091, abs=1e-9)
    assert r["p"] == pytest.approx(0.0271757822291882, abs=1e-9)
    assert r["diff_ci95"][0] == pytest.approx(0.0104061769564846, abs=1e-9)
    assert r["diff_ci95"][1] == pytest.approx(0.174214419249478, abs=1e-9)
    assert r["diff"] == pytest.approx(0.823678861788618 - 0.731368563685637, abs=1e-9)

    r = S.delong_paired(y, d["wfns"], d["ndka"])
    assert r["z"] == pytest.approx(2.79777591868904, abs=1e-9)
    assert r["p"] == pytest.approx(0.00514557970691098, abs=1e-9)

    r = S.delong_paired(y, d["ndka"], d["s100b"])
    assert r["z"] == pytest.approx(-1.39077002573558, abs=1e-9)
    assert r["p"] == pytest.approx(0.164295175223054, abs=1e-9)
    # swapping A and B flips the sign of z and keeps p
    r2 = S.delong_paired(y, d["s100b"], d["ndka"])
    assert r2["z"] == pytest.approx(-r["z"], abs=1e-12) and r2["p"] == pytest.approx(r["p"], abs=1e-12)


def test_asah_unpaired_delong_is_independent_variance_sum(asah):
    y, d = asah
    # Two disjoint halves of the cohort are independent samples.
    idx = np.arange(y.size)
    a, b = idx % 2 == 0, idx % 2 == 1
    r = S.delong_unpaired(y[a], d["wfns"][a], y[b], d["wfns"][b])
    ra, rb = S.roc_auc_delong(y[a], d["wfns"][a]), S.roc_auc_delong(y[b], d["wfns"][b])
    z = (ra["auc"] - rb["auc"]) / math.sqrt(ra["se"] ** 2 + rb["se"] ** 2)
    assert r["z"] == pytest.approx(z, abs=1e-12)
    assert r["p"] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))), abs=1e-12)
    # The same score on the same cases compared unpaired: difference 0, p 1.
    same = S.delong_unpaired(y, d["ndka"], y, d["ndka"])
    assert same["diff"] == 0.0 and same["p"] == pytest.approx(1.0)


def test_asah_youden_threshold_matches_pROC_coords_best(asah):
    # pROC documentation: coords(roc(aSAH$outcome, aSAH$s100b), "best") ->
    # threshold 0.205, specificity 0.8055556, sensitivity 0.6341463.
    y, d = asah
    r = S.youden_threshold(y, d["s100b"])
    assert r["threshold"] == pytest.approx(0.205, abs=1e-12)
    assert r["specificity"] == pytest.approx(0.8055556, abs=1e-7)
    assert r["sensitivity"] == pytest.approx(0.6341463, abs=1e-7)
    m = S.classification_metrics(y, d["s100b"], r["threshold"])
    assert m["sensitivity"]["value"] == pytest.approx(r["sensitivity"])
    assert m["specificity"]["value"] == pytest.approx(r["specificity"])


def test_roc_curve_points_trapezoid_equals_auc(asah):
    y, d = asah
    for col in ("wfns", "s100b", "ndka"):
        pts = S.roc_curve_points(y, d[col])
        assert pts["fpr"][0] == 0 and pts["tpr"][0] == 0 and pts["fpr"][-1] == 1 and pts["tpr"][-1] == 1
        assert pts["threshold"][0] is None
        area = np.trapezoid(pts["tpr"], pts["fpr"])
        assert area == pytest.approx(S.roc_auc_delong(y, d[col])["auc"], abs=1e-12)


# ---------------------------------------------------------------------------------------
# Youden tie rule and classification metrics


def test_youden_ties_go_to_lowest_candidate_midpoint():
    # scores 1..6, labels 0 0 1 0 1 1: J is 2/3 at candidate 3 and at candidate 5.
    y = np.array([0, 0, 1, 0, 1, 1])
    s = np.array([1, 2, 3, 4, 5, 6], dtype=float)
    r = S.youden_threshold(y, s)
    assert r["youden_j"] == pytest.approx(2 / 3)
    assert r["threshold"] == pytest.approx(2.5)  # midpoint between 3 and the next lower score 2
    assert r["sensitivity"] == 1.0 and r["specificity"] == pytest.approx(2 / 3)


def test_wilson_ci_hand_values():
    lo, hi = S.wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=5e-5) and hi == pytest.approx(0.9433, abs=5e-5)
    lo, hi = S.wilson_ci(0, 10)  # Wilson never collapses to a point at 0
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=5e-5)
    assert S.wilson_ci(0, 0) is None


def test_classification_metrics_counts_and_rule():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.5, 0.5, 0.2, 0.5, 0.1, 0.3, 0.05, 0.4, 0.7])
    m = S.classification_metrics(y, s, 0.5)  # score == threshold counts as positive
    assert m["counts"] == {"tp": 4, "fp": 1, "tn": 4, "fn": 1}
    assert m["sensitivity"]["value"] == pytest.approx(0.8)
    assert m["sensitivity"]["ci95"] == pytest.approx(S.wilson_ci(4, 5))
    assert m["specificity"]["numerator"] == 4 and m["specificity"]["denominator"] == 5
    assert m["accuracy"]["value"] == pytest.approx(0.8) and m["accuracy"]["denominator"] == 10
    assert m["ppv"]["value"] == pytest.approx(0.8) and m["npv"]["value"] == pytest.approx(0.8)
    # nobody called positive: PPV undefined, reported as None
    none = S.classification_metrics(y, s, 2.0)
    assert none["ppv"]["value"] is None and none["ppv"]["ci95"] is None
    assert none["npv"]["value"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------
# Decision curve: R dcurves famhistory, every threshold in the R output


def test_dcurves_famhistory_all_thresholds(shared_data):
    d = pd.read_csv(shared_data / "stats" / "dcurves_df_binary.csv", dtype={"cancer": str})
    r = pd.read_csv(shared_data / "stats" / "dcurves_r_dca_famhistory.csv")
    y = (d["cancer"] == "TRUE").astype(int).to_numpy()
    fam = r[r["variable"] == "famhistory"].reset_index(drop=True)
    all_ = r[r["variable"] == "all"].reset_index(drop=True)
    none = r[r["variable"] == "none"].reset_index(drop=True)
    assert len(fam) == len(all_) == len(none) == 100
    assert np.array_equal(fam["threshold"], all_["threshold"])
    res = S.decision_curve(y, d["famhistory"], fam["threshold"].to_numpy())
    np.testing.assert_allclose(res["net_benefit"], fam["net_benefit"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["treat_all"], all_["net_benefit"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["treat_none"], none["net_benefit"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["tp_rate"], fam["tp_rate"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["fp_rate"], fam["fp_rate"], rtol=0, atol=1e-12)
    assert res["prevalence"] == pytest.approx(0.14)
    # the five values quoted in the README
    quoted = {0.0: (0.032, 0.14), 0.05: (0.025614035, 0.094736842), 0.10: (0.018518519, 0.044444444),
              0.20: (0.001666667, -0.075), 0.30: (-0.02, -0.228571429)}
    few = S.decision_curve(y, d["famhistory"], list(quoted))
    for i, (nb, ta) in enumerate(quoted.values()):
        assert few["net_benefit"][i] == pytest.approx(nb, abs=1e-9)
        assert few["treat_all"][i] == pytest.approx(ta, abs=1e-9)


def test_decision_curve_rule_at_threshold_and_zero():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.2, 0.2, 0.0, 0.6])
    r = S.decision_curve(y, p, [0.0, 0.2, 0.5])
    # pt=0: risks > 0 treated (3 cases: TP 1, FP 2) -> NB = 1/4 - 2/4 * 0 = 0.25
    assert r["net_benefit"][0] == pytest.approx(0.25)
    # pt=0.2: risk >= 0.2 treated (TP 1, FP 2) -> 1/4 - 2/4 * 0.25
    assert r["net_benefit"][1] == pytest.approx(0.25 - 0.5 * 0.25)
    # pt=0.5: only 0.6 treated (FP 1) -> -1/4 * 1
    assert r["net_benefit"][2] == pytest.approx(-0.25)
    assert r["treat_all"][0] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------
# Calibration: Hosmer-Lemeshow on mtcars (glm(am ~ wt + hp), g = 6)

# R's datasets::mtcars (Motor Trend 1974), input data for the reference test: am, wt, hp.
MTCARS_AM = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
MTCARS_WT = [2.62, 2.875, 2.32, 3.215, 3.44, 3.46, 3.57, 3.19, 3.15, 3.44, 3.44, 4.07, 3.73, 3.78, 5.25, 5.424,
             5.345, 2.2, 1.615, 1.835, 2.465, 3.52, 3.435, 3.84, 3.845, 1.935, 2.14, 1.513, 3.17, 2.77, 3.57, 2.78]
MTCARS_HP = [110, 110, 93, 110, 175, 105, 245, 62, 95, 123, 123, 180, 180, 180, 205, 215, 230, 66, 52, 65, 97,
             150, 150, 245, 175, 66, 91, 113, 264, 175, 335, 109]


@pytest.fixture(scope="module")
def mtcars_fit():
    X = np.column_stack([MTCARS_WT, MTCARS_HP])
    y = np.array(MTCARS_AM)
    # unpenalised maximum likelihood, as R's glm(binomial)
    model = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=1000).fit(X, y)
    # R: coef(glm(am ~ wt + hp, binomial, mtcars)) = 18.86630, -8.08348, 0.03626
    assert model.intercept_[0] == pytest.approx(18.86630, abs=1e-4)
    assert model.coef_[0] == pytest.approx([-8.08348, 0.03626], abs=1e-4)
    return y, model.predict_proba(X)[:, 1]


def test_hosmer_lemeshow_mtcars(mtcars_fit):
    y, p = mtcars_fit
    r = S.hosmer_lemeshow(y, p, g=6)
    assert r["chi2"] == pytest.approx(2.3502, abs=5e-5)
    assert r["df"] == 4
    assert r["p"] == pytest.approx(0.6717, abs=5e-5)
    assert [g["n"] for g in r["groups"]] == [6, 5, 5, 5, 5, 6]
    assert sum(g["observed"] for g in r["groups"]) == 13


def test_hosmer_lemeshow_df_counts_realised_groups():
    # 4 distinct probabilities: quantile breaks collapse, only the realised groups count.
    rng = np.random.default_rng(1)
    p = np.repeat([0.1, 0.3, 0.6, 0.8], 25)
    y = (rng.random(p.size) < p).astype(int)
    r = S.hosmer_lemeshow(y, p, g=10)
    assert len(r["groups"]) < 10
    assert r["df"] == len(r["groups"]) - 2
    assert sum(g["n"] for g in r["groups"]) == 100


def test_calibration_slope_intercept_of_own_mle_fit_is_ideal(mtcars_fit):
    # The score equations of a logistic MLE with an intercept make its own in-sample
    # recalibration exactly slope 1, intercept 0.
    y, p = mtcars_fit
    r = S.calibration_slope_intercept(y, p)
    assert r["slope"] == pytest.approx(1.0, abs=1e-6)
    assert r["intercept"] == pytest.approx(0.0, abs=1e-6)
    assert r["intercept_joint"] == pytest.approx(0.0, abs=1e-6)
    assert r["slope_ci95"][0] < 1.0 < r["slope_ci95"][1]


def test_calibration_slope_recovers_overconfidence():
    # True risk q; a model reporting logit(p) = 2 * logit(q) is too extreme: slope 0.5.
    rng = np.random.default_rng(7)
    lq = rng.normal(0.0, 1.2, 20000)
    y = (rng.random(lq.size) < 1 / (1 + np.exp(-lq))).astype(int)
    p = 1 / (1 + np.exp(-2 * lq))
    r = S.calibration_slope_intercept(y, p)
    assert r["slope"] == pytest.approx(0.5, abs=0.03)
    # risks shifted up on the logit scale: calibration-in-the-large is negative
    r2 = S.calibration_slope_intercept(y, 1 / (1 + np.exp(-(lq + 1.0))))
    assert r2["intercept"] == pytest.approx(-1.0, abs=0.06)
    assert r2["slope"] == pytest.approx(1.0, abs=0.05)


def test_calibration_curve_and_brier():
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    assert S.brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2))
    c = S.calibration_curve(y, p, n_bins=4)
    assert c["n"] == [2, 2, 2, 2] and sum(c["n"]) == 8
    assert c["mean_predicted"] == pytest.approx([0.15, 0.35, 0.65, 0.85])
    assert c["observed"] == pytest.approx([0.0, 0.5, 1.0, 0.5])
    u = S.calibration_curve(y, p, n_bins=2, strategy="uniform")
    assert u["n"] == [4, 4] and u["observed"] == pytest.approx([0.25, 0.75])
    # a bin's CI is the Wilson interval of its observed fraction
    assert u["observed_ci95"][0] == pytest.approx(S.wilson_ci(1, 4))


# ---------------------------------------------------------------------------------------
# Bad input: one-line UserError


@pytest.mark.parametrize("call, text", [
    (lambda: S.roc_auc_delong([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]), "constant"),
    (lambda: S.roc_auc_delong([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4]), "NaN"),
    (lambda: S.roc_auc_delong([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4]), "0/1"),
    (lambda: S.roc_auc_delong([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]), "at least 2"),
    (lambda: S.roc_auc_delong([0, 1, 0, 1], [0.1, 0.2, 0.3]), "3 values but there are 4"),
    (lambda: S.delong_paired([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1], names=("a", "b")), "b is constant"),
    (lambda: S.decision_curve([0, 1, 0, 1], [0.1, 0.2, 0.3, 1.4]), "[0, 1]"),
    (lambda: S.decision_curve([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 1.0]), "[0, 1)"),
    (lambda: S.hosmer_lemeshow([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], g=2), "at least 3"),
    (lambda: S.calibration_slope_intercept([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]), "separate"),
])
def test_bad_input_raises_one_line_user_error(call, text):
    with pytest.raises(UserError) as exc:
        call()
    msg = str(exc.value)
    assert text in msg and "\n" not in msg
