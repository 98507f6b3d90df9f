"""ICC point estimates, F tests and confidence intervals against an independent reference.

The reference below is written from the papers, not from ClinicalMRICommonLib:

* mean squares from the classical two-way ANOVA decomposition SST = SSR + SSC + SSE
  (the product computes residuals directly, so a slip in either shows);
* ICC(1), ICC(C,1), ICC(1,k), ICC(C,k) and their F-based intervals: Shrout & Fleiss (1979),
  Psychol Bull 86:420-428, eqs. for ICC(1,1)/(3,1) and their F_L/F_U bounds;
* ICC(A,1) and ICC(A,k) intervals: McGraw & Wong (1996), Psychol Methods 1:30-46, Table 7
  (with the correction in Psychol Methods 1:390): Satterthwaite degrees of freedom
  v = (a MSC + b MSE)^2 / ((a MSC)^2/(k-1) + (b MSE)^2/((n-1)(k-1))),
  a = k rho / (n (1 - rho)), b = 1 + k rho (n - 1) / (n (1 - rho)), and for ICC(A,k) the
  direct formula n (MSR - F* MSE) / (F* (MSC - MSE) + n MSR) (not Spearman-Brown of the
  single-rater bounds as the product does).

The product uses 2 raters (two readers, or a read and its repeat), so most cases are k = 2.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ClinicalMRICommonLib.agreement.icc import (
    FORMS,
    _normalise_form,
    feature_class,
    feature_icc,
    feature_icc_filter,
    icc_all,
    icc_from_long,
)
from ClinicalMRICommonLib.errors import UserError


def mean_squares(y: np.ndarray) -> dict:
    n, k = y.shape
    grand = y.mean()
    sst = ((y - grand) ** 2).sum()
    ssr = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ssc = n * ((y.mean(axis=0) - grand) ** 2).sum()
    sse = sst - ssr - ssc
    ssw = sst - ssr
    return {"n": n, "k": k, "msr": ssr / (n - 1), "msc": ssc / (k - 1), "mse": sse / ((n - 1) * (k - 1)),
            "msw": ssw / (n * (k - 1))}


def reference(y, alpha: float = 0.05) -> dict[str, tuple[float, float, float, float, float, float, float]]:
    """name -> (icc, lo, hi, F, df1, df2, p)."""
    y = np.asarray(y, dtype=float)
    m = mean_squares(y)
    n, k, msr, msc, mse, msw = m["n"], m["k"], m["msr"], m["msc"], m["mse"], m["msw"]
    q = 1 - alpha / 2
    out = {}

    def f_bounds(f0, d1, d2):
        return f0 / stats.f.ppf(q, d1, d2), f0 * stats.f.ppf(q, d2, d1)

    # one-way random (Shrout & Fleiss case 1)
    f1 = msr / msw
    d1, d2 = n - 1, n * (k - 1)
    fl, fu = f_bounds(f1, d1, d2)
    p1 = stats.f.sf(f1, d1, d2)
    out["ICC(1,1)"] = ((msr - msw) / (msr + (k - 1) * msw), (fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1),
                       f1, d1, d2, p1)
    out["ICC(1,k)"] = ((msr - msw) / msr, 1 - 1 / fl, 1 - 1 / fu, f1, d1, d2, p1)
    # two-way mixed, consistency (case 3)
    f3 = msr / mse
    d1, d2 = n - 1, (n - 1) * (k - 1)
    fl, fu = f_bounds(f3, d1, d2)
    p3 = stats.f.sf(f3, d1, d2)
    out["ICC(C,1)"] = ((msr - mse) / (msr + (k - 1) * mse), (fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1),
                       f3, d1, d2, p3)
    out["ICC(C,k)"] = ((msr - mse) / msr, 1 - 1 / fl, 1 - 1 / fu, f3, d1, d2, p3)
    # two-way random, absolute agreement (case 2; McGraw & Wong Table 7)
    rho = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    a = k * rho / (n * (1 - rho))
    b = 1 + k * rho * (n - 1) / (n * (1 - rho))
    v = (a * msc + b * mse) ** 2 / ((a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1)))
    f_star = stats.f.ppf(q, n - 1, v)
    f_low = stats.f.ppf(q, v, n - 1)
    lo1 = n * (msr - f_star * mse) / (f_star * (k * msc + (k * n - k - n) * mse) + n * msr)
    hi1 = n * (f_low * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_low * msr)
    lok = n * (msr - f_star * mse) / (f_star * (msc - mse) + n * msr)
    hik = n * (f_low * msr - mse) / ((msc - mse) + n * f_low * msr)
    out["ICC(A,1)"] = (rho, lo1, hi1, f3, n - 1, (n - 1) * (k - 1), p3)
    out["ICC(A,k)"] = ((msr - mse) / (msr + (msc - mse) / n), lok, hik, f3, n - 1, (n - 1) * (k - 1), p3)
    return out


def two_raters(seed: int = 5, n: int = 30, bias: float = 0.8, noise: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.normal(10.0, 1.0, n)
    return np.column_stack([truth + rng.normal(0, noise, n), truth + bias + rng.normal(0, noise, n)])


def assert_matches_reference(y, alpha=0.05, tol=1e-9):
    got = icc_all(y, alpha=alpha)
    ref = reference(y, alpha)
    for name in FORMS:
        icc, lo, hi, f, d1, d2, p = ref[name]
        r = got[name]
        assert r["icc"] == pytest.approx(icc, abs=tol), name
        assert r["ci95"][0] == pytest.approx(lo, abs=tol), (name, "lower")
        assert r["ci95"][1] == pytest.approx(hi, abs=tol), (name, "upper")
        assert r["F"] == pytest.approx(f, rel=1e-9), name
        assert (r["df1"], r["df2"]) == (pytest.approx(d1), pytest.approx(d2)), name
        assert r["p"] == pytest.approx(p, rel=1e-6, abs=1e-300), name
    return got


@pytest.mark.parametrize("seed,bias", [(5, 0.8), (11, 0.0), (3, -2.0)])
def test_two_rater_intervals_match_the_papers_formulas(seed, bias):
    y = two_raters(seed, bias=bias)
    got = assert_matches_reference(y)
    # with a rater bias absolute agreement is below consistency (the forms are not mixed up)
    if abs(bias) > 0.5:
        assert got["ICC(A,1)"]["icc"] < got["ICC(C,1)"]["icc"] - 0.05
        assert got["ICC(A,k)"]["ci95"][0] < got["ICC(C,k)"]["ci95"][0]


def test_two_rater_intervals_small_n_and_other_alpha():
    y = two_raters(seed=2, n=6, bias=0.5, noise=0.9)
    assert_matches_reference(y)
    narrow = assert_matches_reference(y, alpha=0.2)
    wide = icc_all(y, alpha=0.05)
    for name in FORMS:
        assert wide[name]["ci95"][0] < narrow[name]["ci95"][0] < narrow[name]["icc"]
        assert narrow[name]["icc"] < narrow[name]["ci95"][1] < wide[name]["ci95"][1]


def test_two_judges_of_the_published_tables(shared_data):
    sf = pd.read_csv(shared_data / "stats" / "shrout_fleiss_1979.csv").set_index("S")
    for a, b in (("J1", "J2"), ("J2", "J3"), ("J1", "J4")):
        assert_matches_reference(sf[[a, b]].to_numpy(float))
    wine = pd.read_csv(shared_data / "stats" / "pingouin_wine_icc.csv")
    wide = wine.pivot(index="Wine", columns="Judge", values="Scores")
    assert_matches_reference(wide.iloc[:, :2].to_numpy(float))


# README: "Unrounded: 0.165742, 0.289764, 0.714841, 0.442797, 0.620051, 0.909316" and
# "F = 1.7947 (df 5,18) one-way, 11.027 (df 5,15) two-way"
SF_UNROUNDED = {"ICC(1,1)": 0.165742, "ICC(A,1)": 0.289764, "ICC(C,1)": 0.714841,
                "ICC(1,k)": 0.442797, "ICC(A,k)": 0.620051, "ICC(C,k)": 0.909316}
SF_CI_2DP = {"ICC(1,1)": (-0.13, 0.72), "ICC(A,1)": (0.02, 0.76), "ICC(C,1)": (0.34, 0.95),
             "ICC(1,k)": (-0.88, 0.91), "ICC(A,k)": (0.07, 0.93), "ICC(C,k)": (0.68, 0.99)}


def test_shrout_fleiss_table_to_its_unrounded_digits(shared_data):
    y = pd.read_csv(shared_data / "stats" / "shrout_fleiss_1979.csv").set_index("S").to_numpy(float)
    got = assert_matches_reference(y)
    ref = reference(y)
    for name, value in SF_UNROUNDED.items():
        assert abs(got[name]["icc"] - value) <= 5e-7, name  # six published decimals
        # the independent reference reproduces the published two-decimal intervals
        lo, hi = ref[name][1:3]
        assert (round(lo, 2), round(hi, 2)) == SF_CI_2DP[name], name
    assert round(got["ICC(1,1)"]["F"], 4) == 1.7947 and (got["ICC(1,1)"]["df1"], got["ICC(1,1)"]["df2"]) == (5, 18)
    assert round(got["ICC(C,1)"]["F"], 3) == 11.027 and (got["ICC(C,1)"]["df1"], got["ICC(C,1)"]["df2"]) == (5, 15)
    assert got["ICC(A,1)"]["F"] == got["ICC(C,1)"]["F"]
    assert [got[n]["shrout_fleiss"] for n in FORMS] == ["ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)",
                                                          "ICC(2,k)", "ICC(3,k)"]
    assert all(got[n]["n_targets"] == 6 and got[n]["n_raters"] == 4 and got[n]["n_dropped"] == 0 for n in FORMS)


def test_wine_icc_a_k_lower_bound(shared_data):
    """The bug of issue 18: wine ICC(A,k) lower bound 0.754 (a wrong step gave 0.635)."""
    wine = pd.read_csv(shared_data / "stats" / "pingouin_wine_icc.csv")
    wide = wine.pivot(index="Wine", columns="Judge", values="Scores").to_numpy(float)
    got = assert_matches_reference(wide)
    assert got["ICC(A,k)"]["ci95"][0] == pytest.approx(0.754, abs=5e-4)


def test_missing_ratings_drop_whole_targets():
    y = two_raters(seed=8, n=12)
    holes = y.copy()
    holes[3, 1] = np.nan
    holes[7, 0] = np.nan
    got = icc_all(holes)
    ref = reference(np.delete(y, [3, 7], axis=0))
    for name in FORMS:
        assert got[name]["icc"] == pytest.approx(ref[name][0], abs=1e-12)
        assert got[name]["ci95"][0] == pytest.approx(ref[name][1], abs=1e-9)
        assert (got[name]["n_targets"], got[name]["n_dropped"]) == (10, 2)


# ---------------------------------------------------------------------------------------
# feature_icc: per-feature ICC against the reference, feature by feature (not against icc_all,
# which shares the product's core)


def _feature_tables(seed=1, n=25):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, 4)) * [1.0, 5.0, 0.1, 3.0] + [0.0, 100.0, 1.0, -4.0]
    a = truth + rng.normal(0, 0.3, truth.shape) * [1.0, 5.0, 0.1, 3.0]
    b = truth + rng.normal(0, 0.5, truth.shape) * [1.0, 5.0, 0.1, 3.0] + [0.5, 0.0, 0.05, 0.0]
    idx = [f"c{i}" for i in range(n)]
    cols = ["original_shape_Volume", "original_firstorder_Mean", "wavelet-LLH_glcm_Contrast", "x"]
    return pd.DataFrame(a, index=idx, columns=cols), pd.DataFrame(b, index=idx, columns=cols)


@pytest.mark.parametrize("form", ["ICC(A,1)", "ICC(C,1)", "ICC(1,1)", "ICC(A,k)", "ICC(C,k)", "ICC(1,k)"])
def test_feature_icc_each_feature_matches_reference(form):
    ta, tb = _feature_tables()
    tb.iloc[2, 1] = np.nan  # feature 1 loses case c2 only
    tb.iloc[5, 3] = np.inf  # feature 3 loses case c5 only
    ta["label"] = "text"    # non-numeric columns are ignored
    got = feature_icc(ta, tb.iloc[::-1], form=form)  # order of the cases does not matter
    assert list(got.index) == ["original_shape_Volume", "original_firstorder_Mean",
                               "wavelet-LLH_glcm_Contrast", "x"]
    for j, feat in enumerate(got.index):
        pair = np.column_stack([ta[feat].to_numpy(float), tb[feat].to_numpy(float)])
        keep = np.isfinite(pair).all(axis=1)
        icc, lo, hi = reference(pair[keep])[form][:3]
        row = got.loc[feat]
        assert row["icc"] == pytest.approx(icc, abs=1e-9), feat
        assert row["ci_low"] == pytest.approx(lo, abs=1e-9), feat
        assert row["ci_high"] == pytest.approx(hi, abs=1e-9), feat
        assert row["n"] == keep.sum()
    assert list(got["n"]) == [25, 24, 25, 24]


def test_feature_icc_constant_and_too_few_cases_are_undefined():
    ta, tb = _feature_tables(n=6)
    ta["const"] = 2.0
    tb["const"] = 2.0
    ta["one_case"] = np.nan
    tb["one_case"] = np.nan
    ta.loc["c0", "one_case"] = 1.0
    tb.loc["c0", "one_case"] = 1.5
    got = feature_icc(ta, tb)
    for feat in ("const", "one_case"):
        assert np.isnan(got.loc[feat, ["icc", "ci_low", "ci_high"]].astype(float)).all(), feat
        assert got.loc[feat, "interpretation"] == "undefined"
    assert got.loc["x", "interpretation"] in {"poor", "moderate", "good", "excellent"}
    assert np.isfinite(got.loc["x", "icc"])


def test_feature_icc_refuses_bad_tables():
    ta, tb = _feature_tables(n=5)
    with pytest.raises(UserError, match="more than once"):
        feature_icc(pd.concat([ta, ta.iloc[:1]]), tb)
    with pytest.raises(UserError, match="more than once"):
        feature_icc(ta, pd.concat([tb, tb.iloc[:1]]))
    with pytest.raises(UserError, match="share 1 case"):
        feature_icc(ta.iloc[:1], tb)
    with pytest.raises(UserError, match="no numeric feature"):
        feature_icc(ta[["x"]], tb[["original_shape_Volume"]])
    with pytest.raises(UserError, match="two pandas DataFrames"):
        feature_icc(ta.to_numpy(), tb)
    with pytest.raises(UserError, match="unknown ICC form"):
        feature_icc(ta, tb, form="ICC(4,1)")


# ---------------------------------------------------------------------------------------
# the ICC >= 0.75 filter at its edge


def test_filter_keeps_exactly_the_threshold_and_drops_just_below():
    inter = pd.Series({"a": 0.75, "b": np.nextafter(0.75, 0), "c": 0.9, "d": np.nan, "e": 0.8, "f": 0.99})
    intra = {"a": 0.75, "b": 0.9, "c": np.nextafter(0.75, 0), "d": 0.9, "e": 0.76}  # no "f": never passes
    assert feature_icc_filter(inter, intra) == ["a", "e"]
    assert feature_icc_filter(inter, intra, threshold=0.7) == ["a", "b", "c", "e"]
    table = pd.DataFrame({"icc": [0.8, 0.5]}, index=["z", "y"])
    assert feature_icc_filter(table, table, threshold=0.5) == ["z", "y"]  # order of the inter table
    with pytest.raises(UserError, match="no 'icc' column"):
        feature_icc_filter(pd.DataFrame({"x": [1.0]}), table)
    with pytest.raises(UserError, match="ICC input"):
        feature_icc_filter([0.8], table)


# ---------------------------------------------------------------------------------------
# names, input checks


def test_form_spellings():
    for spelled, name in [("ICC(A,1)", "ICC(A,1)"), ("icc(a,k)", "ICC(A,k)"), (" ICC(2,1) ", "ICC(A,1)"),
                          ("ICC(3,k)", "ICC(C,k)"), ("ICC(1,1)", "ICC(1,1)"), ("icc2", "ICC(A,1)"),
                          ("ICC3K", "ICC(C,k)"), ("ICC1k", "ICC(1,k)"), ("icc3", "ICC(C,1)"), ("ICC 1", "ICC(1,1)"),
                          ("ICC2k", "ICC(A,k)"), ("ICC(C, 1)", "ICC(C,1)")]:
        assert _normalise_form(spelled) == name, spelled
    with pytest.raises(UserError, match="unknown ICC form"):
        _normalise_form("ICC(2,2)")


def test_icc_all_input_checks():
    with pytest.raises(UserError, match="at least 2 raters, got 1"):
        icc_all(np.ones((5, 1)))
    with pytest.raises(UserError, match="1 of 3 targets"):
        icc_all([[1, 2], [np.nan, 3], [4, np.nan]])
    with pytest.raises(UserError, match="identical"):
        icc_all([[3, 3], [3, 3], [3, 3]])
    with pytest.raises(UserError, match="alpha"):
        icc_all([[1, 2], [3, 5], [4, 4]], alpha=1.0)
    with pytest.raises(UserError, match="alpha"):
        icc_all([[1, 2], [3, 5], [4, 4]], alpha=0.0)
    with pytest.raises(UserError, match="infinite"):
        icc_all([[1, 2], [3, np.inf], [4, 4]])
    with pytest.raises(UserError, match="2-D"):
        icc_all([1, 2, 3])
    with pytest.raises(UserError, match="numbers"):
        icc_all([["a", "b"], ["c", "d"]])
    with pytest.raises(UserError, match="'r2' are not numeric"):
        icc_all(pd.DataFrame({"r1": [1.0, 2.0], "r2": ["x", "y"]}))
    # two complete targets are enough
    ok = icc_all([[1, 2], [3, 5]])
    assert ok["ICC(C,1)"]["n_targets"] == 2


def test_icc_from_long_checks_and_matches_wide():
    y = two_raters(seed=4, n=7)
    long = pd.DataFrame([{"case": f"c{i}", "reader": r, "v": y[i, j]}
                         for i in range(7) for j, r in enumerate(["R1", "R2"])])
    got = icc_from_long(long, "case", "reader", "v")
    ref = reference(y)
    for name in FORMS:
        assert got[name]["icc"] == pytest.approx(ref[name][0], abs=1e-12)
    with pytest.raises(UserError, match="column 'score' not found"):
        icc_from_long(long, "case", "reader", "score")
    bad = long.copy()
    bad["v"] = bad["v"].astype(object)
    bad.loc[3, "v"] = "n/a?"
    with pytest.raises(UserError, match="non-numeric value 'n/a\\?'"):
        icc_from_long(bad, "case", "reader", "v")
    dup = pd.concat([long, long.iloc[[0]]])
    with pytest.raises(UserError, match="more than one rating"):
        icc_from_long(dup, "case", "reader", "v")
    with pytest.raises(UserError, match="at least 2 raters"):
        icc_from_long(long[long["reader"] == "R1"], "case", "reader", "v")
    # an empty rating is a missing rating (target dropped), not an error
    blank = long.copy()
    blank["v"] = blank["v"].astype(object)
    blank.loc[0, "v"] = " "
    assert icc_from_long(blank, "case", "reader", "v")["ICC(A,1)"]["n_dropped"] == 1


def test_feature_class_names():
    assert feature_class("original_glcm_Contrast") == "glcm"
    assert feature_class("wavelet-LLH_firstorder_Mean") == "firstorder"
    assert feature_class("T2_original_shape_Sphericity") == "shape"
    assert feature_class("original_shape2D_Elongation") == "shape2D"
    assert feature_class("log-sigma-1-0-mm-3D_ngtdm_Busyness") == "ngtdm"
    assert feature_class("diagnostics_Mask_volume") == "other"
    assert math.isfinite(len(feature_class("")))
