"""ICC tests against the published reference values in ../shared/data/README.md.

Shrout & Fleiss (1979) table: 6 targets x 4 judges (wide CSV: S, J1..J4).
pingouin wine data: 8 wines x 4 judges (long CSV: Wine, Judge, Scores).
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from ClinicalMRICommonLib.agreement.icc import (
    FORMS,
    feature_class,
    feature_icc,
    feature_icc_filter,
    icc_all,
    icc_from_long,
    koo_li,
    plot_icc_by_class,
)
from ClinicalMRICommonLib.errors import UserError

# README: unrounded ICCs, F (df), 95% CIs to 0.01
SF_ICC = {"ICC(1,1)": 0.165742, "ICC(A,1)": 0.289764, "ICC(C,1)": 0.714841,
          "ICC(1,k)": 0.442797, "ICC(A,k)": 0.620051, "ICC(C,k)": 0.909316}
SF_CI = {"ICC(1,1)": (-0.13, 0.72), "ICC(A,1)": (0.02, 0.76), "ICC(C,1)": (0.34, 0.95),
         "ICC(1,k)": (-0.88, 0.91), "ICC(A,k)": (0.07, 0.93), "ICC(C,k)": (0.68, 0.99)}
SF_F = {"ICC(1,1)": (1.7947, 5, 18), "ICC(1,k)": (1.7947, 5, 18),
        "ICC(C,1)": (11.027, 5, 15), "ICC(C,k)": (11.027, 5, 15)}
SF_NAMES = {"ICC(1,1)": "ICC(1,1)", "ICC(A,1)": "ICC(2,1)", "ICC(C,1)": "ICC(3,1)",
            "ICC(1,k)": "ICC(1,k)", "ICC(A,k)": "ICC(2,k)", "ICC(C,k)": "ICC(3,k)"}
WINE_ICC = {"ICC(1,1)": (0.728, 5e-4), "ICC(A,1)": (0.728, 5e-4), "ICC(C,1)": (0.7295, 5e-5),
            "ICC(1,k)": (0.914, 5e-4), "ICC(A,k)": (0.914, 5e-4), "ICC(C,k)": (0.9152, 5e-5)}


@pytest.fixture(scope="module")
def sf_table(shared_data):
    df = pd.read_csv(shared_data / "stats" / "shrout_fleiss_1979.csv")
    assert list(df.columns) == ["S", "J1", "J2", "J3", "J4"] and len(df) == 6
    return df.set_index("S")


@pytest.fixture(scope="module")
def wine(shared_data):
    df = pd.read_csv(shared_data / "stats" / "pingouin_wine_icc.csv")
    assert list(df.columns) == ["Wine", "Judge", "Scores"] and len(df) == 32
    return df


def test_shrout_fleiss_all_forms(sf_table):
    res = icc_all(sf_table)
    assert list(res) == list(FORMS)
    for name, ref in SF_ICC.items():
        r = res[name]
        assert r["icc"] == pytest.approx(ref, abs=1e-5), name
        lo, hi = SF_CI[name]
        assert r["ci95"][0] == pytest.approx(lo, abs=0.005 + 1e-9), name
        assert r["ci95"][1] == pytest.approx(hi, abs=0.005 + 1e-9), name
        assert r["shrout_fleiss"] == SF_NAMES[name]
        assert r["n_dropped"] == 0 and r["n_targets"] == 6 and r["n_raters"] == 4
    for name, (f, df1, df2) in SF_F.items():
        assert res[name]["F"] == pytest.approx(f, abs=5e-4)
        assert (res[name]["df1"], res[name]["df2"]) == (df1, df2)
    # the absolute-agreement forms report the two-way F (as pingouin / psych do)
    assert res["ICC(A,1)"]["F"] == pytest.approx(11.027, abs=5e-4)
    assert (res["ICC(A,1)"]["df1"], res["ICC(A,1)"]["df2"]) == (5, 15)
    # p of the one-way F(5, 18) = 1.7947 (NAG g04ga example prints 0.165)
    assert res["ICC(1,1)"]["p"] == pytest.approx(0.165, abs=5e-4)
    assert res["ICC(C,1)"]["p"] < 0.001
    assert [res[n]["interpretation"] for n in FORMS] == ["poor", "poor", "moderate", "poor", "moderate",
                                                         "excellent"]


def test_wine_long_format(wine):
    res = icc_from_long(wine, "Wine", "Judge", "Scores")
    for name, (ref, tol) in WINE_ICC.items():
        assert res[name]["icc"] == pytest.approx(ref, abs=tol), name
        lo, hi = res[name]["ci95"]
        assert lo < res[name]["icc"] < hi
    assert (res["ICC(1,1)"]["df1"], res["ICC(1,1)"]["df2"]) == (7, 24)
    assert (res["ICC(C,1)"]["df1"], res["ICC(C,1)"]["df2"]) == (7, 21)


def test_long_and_wide_agree(sf_table):
    long = sf_table.reset_index().melt(id_vars="S", var_name="judge", value_name="score")
    a = icc_from_long(long, "S", "judge", "score")
    b = icc_all(sf_table.to_numpy())
    for name in FORMS:
        assert a[name]["icc"] == pytest.approx(b[name]["icc"], abs=1e-12)


def test_missing_ratings_drop_targets(sf_table):
    arr = sf_table.to_numpy(dtype=float)
    extra = np.vstack([arr, [[3.0, np.nan, 4.0, 5.0], [np.nan, np.nan, 1.0, 2.0]]])
    res = icc_all(extra)
    assert res["ICC(A,1)"]["n_dropped"] == 2 and res["ICC(A,1)"]["n_targets"] == 6
    assert res["ICC(A,1)"]["icc"] == pytest.approx(SF_ICC["ICC(A,1)"], abs=1e-5)
    # long format: a target missing a rater counts as dropped
    long = sf_table.reset_index().melt(id_vars="S", var_name="judge", value_name="score")
    long = pd.concat([long, pd.DataFrame({"S": [7, 7], "judge": ["J1", "J2"], "score": [4, 5]})])
    res2 = icc_from_long(long, "S", "judge", "score")
    assert res2["ICC(C,k)"]["n_dropped"] == 1
    assert res2["ICC(C,k)"]["icc"] == pytest.approx(SF_ICC["ICC(C,k)"], abs=1e-5)


def test_user_errors():
    good = pd.DataFrame({"t": [1, 1, 2, 2, 3, 3], "r": ["a", "b"] * 3, "y": [1, 2, 3, 3, 5, 6]})
    with pytest.raises(UserError, match="column 'score' not found"):
        icc_from_long(good, "t", "r", "score")
    with pytest.raises(UserError, match="at least 2 raters"):
        icc_from_long(good[good.r == "a"], "t", "r", "y")
    with pytest.raises(UserError, match="non-numeric value 'x'"):
        icc_from_long(good.assign(y=["1", "2", "x", "3", "4", "5"]), "t", "r", "y")
    with pytest.raises(UserError, match="more than one rating"):
        icc_from_long(pd.concat([good, good.iloc[[0]]]), "t", "r", "y")
    # numpy values read from a table are named as the user wrote them (1, not np.int64(1))
    numeric = pd.DataFrame({"t": [1, 1, 2, 2], "r": [1, 1, 1, 2], "y": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(UserError, match=r"^target 1 has more than one rating by rater 1;"):
        icc_from_long(numeric, "t", "r", "y")
    with pytest.raises(UserError, match=r"non-numeric value 'x' \(target 2, rater 1\)"):
        icc_from_long(numeric.assign(r=[1, 2, 1, 2], y=["1", "2", "x", "4"]), "t", "r", "y")
    with pytest.raises(UserError, match=r"^case id 3 appears more than once in the first feature table"):
        feature_icc(pd.DataFrame({"f": [1.0, 2.0, 3.0]}, index=np.array([3, 4, 3])),
                    pd.DataFrame({"f": [1.0, 2.0]}, index=[3, 4]))
    with pytest.raises(UserError, match="at least 2 targets"):
        icc_from_long(good[good.t == 1], "t", "r", "y")
    with pytest.raises(UserError, match="identical"):
        icc_from_long(good.assign(y=4.0), "t", "r", "y")
    with pytest.raises(UserError, match="at least 2 targets"):
        icc_all([[1.0, 2.0], [np.nan, 3.0], [4.0, np.nan]])


def test_koo_li_boundaries():
    assert [koo_li(x) for x in (0.49, 0.5, 0.74, 0.75, 0.9, 0.91, float("nan"))] == [
        "poor", "moderate", "moderate", "good", "good", "excellent", "undefined"]


def _two_reader_tables(n_cases=250, n_feat=3591, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n_cases, n_feat)) * rng.uniform(0.1, 1e4, n_feat)
    noise = rng.uniform(0.05, 1.5, n_feat) * truth.std(axis=0)
    a = truth + rng.normal(size=truth.shape) * noise
    b = truth + rng.normal(size=truth.shape) * noise + 0.2 * noise  # reader 2 with a bias
    classes = ["original_shape_X", "original_glcm_X", "wavelet-LLH_firstorder_X", "log-sigma-1-0-mm-3D_glszm_X"]
    cols = [f"{classes[i % 4]}{i}" for i in range(n_feat)]
    ids = [f"case{i:03d}" for i in range(n_cases)]
    return pd.DataFrame(a, index=ids, columns=cols), pd.DataFrame(b, index=ids, columns=cols)


def _anova_icc(y: np.ndarray) -> dict:
    """ICC(A,1) and ICC(C,1) of an n x k table from the two-way ANOVA mean squares, written here
    independently of the library (McGraw & Wong 1996, Table 4, cases 2A and 3)."""
    n, k = y.shape
    gm = y.mean()
    msr = k * ((y.mean(axis=1) - gm) ** 2).sum() / (n - 1)
    msc = n * ((y.mean(axis=0) - gm) ** 2).sum() / (k - 1)
    resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + gm
    mse = (resid ** 2).sum() / ((n - 1) * (k - 1))
    return {"A1": (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n),
            "C1": (msr - mse) / (msr + (k - 1) * mse)}


def test_feature_icc_matches_an_independent_anova():
    """The vectorised per-feature ICC against mean squares computed here (not the library's
    shared core); its confidence limits against icc_all (whose intervals are checked against
    independently written F-distribution formulas in Testing/mutation_killers/test_kill_icc.py).
    Speed is measured by hand (benchmarks), not here."""
    ta, tb = _two_reader_tables()
    tab = feature_icc(ta, tb, form="ICC(A,1)")
    assert list(tab.columns) == ["icc", "ci_low", "ci_high", "interpretation", "n"]
    assert tab.shape[0] == 3591
    rng = np.random.default_rng(1)
    for j in rng.choice(3591, 6, replace=False):
        f = ta.columns[j]
        y = np.column_stack([ta[f], tb[f]]).astype(float)
        ref = _anova_icc(y)
        assert tab.loc[f, "icc"] == pytest.approx(ref["A1"], rel=1e-9, abs=1e-12)
        lib = icc_all(y)["ICC(A,1)"]
        assert tab.loc[f, "ci_low"] == pytest.approx(lib["ci95"][0], rel=1e-9, abs=1e-12)
        assert tab.loc[f, "ci_high"] == pytest.approx(lib["ci95"][1], rel=1e-9, abs=1e-12)
        c1 = feature_icc(ta[[f]], tb[[f]], form="ICC(3,1)")
        assert c1.loc[f, "icc"] == pytest.approx(ref["C1"], rel=1e-9)


def test_feature_icc_alignment_missing_and_constant():
    ta, tb = _two_reader_tables(n_cases=30, n_feat=6, seed=3)
    ta["const"] = 7.25
    tb["const"] = 7.25
    ta["only_a"] = 1.0
    tb = tb.iloc[::-1]  # other order, aligned by index
    tb = tb.drop(index=tb.index[:2])  # two cases only in a
    ta.iloc[4, 0] = np.nan  # a missing value drops that case for that feature only
    tab = feature_icc(ta, tb)
    assert "only_a" not in tab.index
    assert np.isnan(tab.loc["const", "icc"]) and tab.loc["const", "interpretation"] == "undefined"
    f0 = ta.columns[0]
    common = ta.index.intersection(tb.index)
    assert tab.loc[f0, "n"] == len(common) - 1
    ref = icc_all(np.column_stack([ta.loc[common, f0], tb.loc[common, f0]]))
    assert tab.loc[f0, "icc"] == pytest.approx(ref["ICC(A,1)"]["icc"], rel=1e-9)
    with pytest.raises(UserError, match="unknown ICC form"):
        feature_icc(ta, tb, form="ICC(9,9)")


def test_filter_classes_and_plot(tmp_path):
    inter = pd.DataFrame({"icc": [0.9, 0.8, 0.74, np.nan, 0.95]},
                         index=["original_glcm_Contrast", "wavelet-LLH_firstorder_Mean",
                                "original_shape_Sphericity", "original_ngtdm_Busyness", "T2_original_gldm_X"])
    intra = pd.Series({"original_glcm_Contrast": 0.76, "wavelet-LLH_firstorder_Mean": 0.74,
                       "original_shape_Sphericity": 0.99, "original_ngtdm_Busyness": 0.99,
                       "T2_original_gldm_X": 0.75})
    assert feature_icc_filter(inter, intra, 0.75) == ["original_glcm_Contrast", "T2_original_gldm_X"]
    assert feature_class("original_glcm_Contrast") == "glcm"
    assert feature_class("wavelet-LLH_firstorder_Mean") == "firstorder"
    assert feature_class("log-sigma-3-0-mm-3D_glrlm_RunEntropy") == "glrlm"
    assert feature_class("diagnostics_Mask-original_VoxelNum") == "other"
    ta, tb = _two_reader_tables(n_cases=20, n_feat=40, seed=2)
    png = tmp_path / "icc.png"
    plot_icc_by_class(feature_icc(ta, tb), png, threshold=0.75)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
