"""Intraclass correlation coefficients (ICC) for reader agreement.

All six forms of Shrout & Fleiss (1979) / McGraw & Wong (1996), computed from the two-way
ANOVA mean squares exactly as pingouin's ``intraclass_corr`` and R's ``psych::ICC`` do,
including their confidence intervals (the F-based intervals for the one-way and consistency
forms, and the Satterthwaite-type interval of McGraw & Wong for the absolute-agreement forms).

Names (McGraw & Wong -> Shrout & Fleiss):

=========  ==========  =====================================================
ICC(1,1)   ICC(1,1)    one-way random, single rater
ICC(A,1)   ICC(2,1)    two-way random, absolute agreement, single rater
ICC(C,1)   ICC(3,1)    two-way mixed, consistency, single rater
ICC(1,k)   ICC(1,k)    one-way random, mean of k raters
ICC(A,k)   ICC(2,k)    two-way random, absolute agreement, mean of k raters
ICC(C,k)   ICC(3,k)    two-way mixed, consistency, mean of k raters
=========  ==========  =====================================================

One vectorised core (:func:`_icc_core`) serves both a single ratings table
(:func:`icc_all`) and thousands of radiomics features at once (:func:`feature_icc`), so
the Slicer panel, the command line and HRMMPredict's reader-agreement filter get the same
numbers.

Missing ratings: a target (row) with any missing rating is dropped; the result reports how
many were dropped (``n_dropped``).
"""

from __future__ import annotations

import os
import re
import numpy as np
import pandas as pd
from scipy import special

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path

#: McGraw & Wong name -> Shrout & Fleiss name, in the order results are reported.
FORMS: dict[str, str] = {
    "ICC(1,1)": "ICC(1,1)",
    "ICC(A,1)": "ICC(2,1)",
    "ICC(C,1)": "ICC(3,1)",
    "ICC(1,k)": "ICC(1,k)",
    "ICC(A,k)": "ICC(2,k)",
    "ICC(C,k)": "ICC(3,k)",
}

DESCRIPTIONS: dict[str, str] = {
    "ICC(1,1)": "one-way random, single rater",
    "ICC(A,1)": "two-way random, absolute agreement, single rater",
    "ICC(C,1)": "two-way mixed, consistency, single rater",
    "ICC(1,k)": "one-way random, mean of k raters",
    "ICC(A,k)": "two-way random, absolute agreement, mean of k raters",
    "ICC(C,k)": "two-way mixed, consistency, mean of k raters",
}

#: Radiomics feature classes recognised by :func:`feature_class`.
FEATURE_CLASSES = ("shape2D", "shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


def _normalise_form(form: str) -> str:
    """Accept McGraw & Wong or Shrout & Fleiss spellings ("ICC(A,1)", "ICC(2,1)", "icc2")."""
    f = str(form).strip().replace(" ", "")
    upper = f.upper()
    if upper in {k.upper() for k in FORMS}:
        return next(k for k in FORMS if k.upper() == upper)
    sf = {v.upper(): k for k, v in FORMS.items()}
    if upper in sf:
        return sf[upper]
    short = {"ICC1": "ICC(1,1)", "ICC2": "ICC(A,1)", "ICC3": "ICC(C,1)",
             "ICC1K": "ICC(1,k)", "ICC2K": "ICC(A,k)", "ICC3K": "ICC(C,k)"}
    if upper in short:
        return short[upper]
    raise UserError(f"unknown ICC form {form!r}; use one of {', '.join(FORMS)} "
                    "(or the Shrout & Fleiss names ICC(2,1), ICC(3,1), ...)")


def koo_li(icc: float) -> str:
    """Koo & Li (2016) interpretation of an ICC point estimate.

    < 0.5 "poor", 0.5 to 0.75 "moderate", 0.75 to 0.9 "good", > 0.9 "excellent"
    (0.5 and 0.75 fall in the upper class, 0.9 is still "good"). NaN gives "undefined".
    """
    if icc is None or not np.isfinite(icc):
        return "undefined"
    if icc < 0.5:
        return "poor"
    if icc < 0.75:
        return "moderate"
    if icc <= 0.9:
        return "good"
    return "excellent"


def _koo_li_array(icc: np.ndarray) -> np.ndarray:
    icc = np.asarray(icc, dtype=float)
    out = np.full(icc.shape, "undefined", dtype=object)
    fin = np.isfinite(icc)
    out[fin & (icc < 0.5)] = "poor"
    out[fin & (icc >= 0.5) & (icc < 0.75)] = "moderate"
    out[fin & (icc >= 0.75) & (icc <= 0.9)] = "good"
    out[fin & (icc > 0.9)] = "excellent"
    return out


# ---------------------------------------------------------------------------------------
# Core (vectorised over a trailing "feature" axis)


def _icc_core(y: np.ndarray, valid: np.ndarray, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """ICCs for ``y`` of shape (n_targets, k_raters, p) where ``valid`` (n_targets, p) marks
    complete rows. Returns arrays of length p per quantity. Constant columns give NaN."""
    n_all, k, p = y.shape
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = valid.astype(float)                          # (n, p)
        y0 = np.where(valid[:, None, :], y, 0.0)         # (n, k, p)
        n = w.sum(axis=0)                                # (p,)
        grand = y0.sum(axis=(0, 1)) / (n * k)            # (p,)
        row_mean = y0.mean(axis=1)                       # (n, p)
        col_mean = y0.sum(axis=0) / n                    # (k, p)
        ssr = k * (((row_mean - grand) ** 2) * w).sum(axis=0)
        ssc = n * ((col_mean - grand) ** 2).sum(axis=0)
        # residuals computed directly (not SST - SSR - SSC) to avoid cancellation for
        # features with large values
        resid = (y0 - row_mean[:, None, :] - col_mean[None, :, :] + grand) * w[:, None, :]
        sse = (resid ** 2).sum(axis=(0, 1))
        ssw = (((y0 - row_mean[:, None, :]) ** 2) * w[:, None, :]).sum(axis=(0, 1))

        df_r = n - 1.0
        df_w = n * (k - 1.0)
        df_e = (n - 1.0) * (k - 1.0)
        msr = ssr / df_r
        msc = ssc / (k - 1.0)
        mse = sse / df_e
        msw = ssw / df_w

        icc1 = (msr - msw) / (msr + (k - 1) * msw)
        icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        icc3 = (msr - mse) / (msr + (k - 1) * mse)
        icc1k = (msr - msw) / msr
        icc2k = (msr - mse) / (msr + (msc - mse) / n)
        icc3k = (msr - mse) / msr

        f1 = msr / msw
        f3 = msr / mse
        p1 = special.fdtrc(df_r, df_w, f1)
        p3 = special.fdtrc(df_r, df_e, f3)
        # F of the absolute-agreement forms as reported by pingouin / psych: MSR / MSE
        f2, p2 = f3, p3

        q = 1 - alpha / 2  # F quantiles and tails via scipy.special (cheaper to import than scipy.stats)
        # one-way forms
        f1l = f1 / special.fdtri(df_r, df_w, q)
        f1u = f1 * special.fdtri(df_w, df_r, q)
        # (F - 1) / (F + k - 1) written as 1 - k / (F + k - 1) so an infinite F gives 1
        l1, u1 = 1 - k / (f1l + k - 1), 1 - k / (f1u + k - 1)
        l1k, u1k = 1 - 1 / f1l, 1 - 1 / f1u
        # consistency forms
        f3l = f3 / special.fdtri(df_r, df_e, q)
        f3u = f3 * special.fdtri(df_e, df_r, q)
        l3, u3 = 1 - k / (f3l + k - 1), 1 - k / (f3u + k - 1)
        l3k, u3k = 1 - 1 / f3l, 1 - 1 / f3u
        # absolute agreement (McGraw & Wong 1996, as psych::ICC / pingouin)
        fj = msc / mse
        a = n * (1 + (k - 1) * icc2) - k * icc2
        vn = df_e * (k * icc2 * fj + a) ** 2
        vd = df_r * k ** 2 * icc2 ** 2 * fj ** 2 + a ** 2
        v = vn / vd
        f2u = special.fdtri(df_r, v, q)
        f2l = special.fdtri(v, df_r, q)
        denom = k * msc + (k * n - k - n) * mse
        l2 = n * (msr - f2u * mse) / (f2u * denom + n * msr)
        u2 = n * (f2l * msr - mse) / (denom + n * f2l * msr)
        l2k = l2 * k / (1 + l2 * (k - 1))
        u2k = u2 * k / (1 + u2 * (k - 1))

    # constant columns (no variance at all among the valid values): undefined, not garbage
    big = np.where(valid[:, None, :], y, np.nan)
    with np.errstate(invalid="ignore"):
        constant = ~(np.nanmax(big, axis=(0, 1)) > np.nanmin(big, axis=(0, 1)))
    constant |= n < 2

    out = {
        "ICC(1,1)": (icc1, l1, u1, f1, df_r, df_w, p1),
        "ICC(A,1)": (icc2, l2, u2, f2, df_r, df_e, p2),
        "ICC(C,1)": (icc3, l3, u3, f3, df_r, df_e, p3),
        "ICC(1,k)": (icc1k, l1k, u1k, f1, df_r, df_w, p1),
        "ICC(A,k)": (icc2k, l2k, u2k, f2, df_r, df_e, p2),
        "ICC(C,k)": (icc3k, l3k, u3k, f3, df_r, df_e, p3),
    }
    res: dict[str, np.ndarray] = {}
    for name, arrays in out.items():
        arrs = [np.broadcast_to(np.asarray(a, dtype=float), (p,)).copy() for a in arrays]
        for a in (arrs[0], arrs[1], arrs[2], arrs[3], arrs[6]):
            a[constant] = np.nan
        res[name] = np.stack(arrs)  # rows: icc, lo, hi, F, df1, df2, p
    res["n"] = n
    return res


def _shown(value) -> str:
    """A table value in a message as the user wrote it: numpy scalars as plain numbers
    (``1``, not ``np.int64(1)``), strings quoted."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return repr(value)


def _as_matrix(ratings) -> np.ndarray:
    if isinstance(ratings, pd.DataFrame):
        bad = [c for c in ratings.columns if not pd.api.types.is_numeric_dtype(ratings[c])]
        if bad:
            raise UserError(f"ratings of rater column {_shown(bad[0])} are not numeric; give numbers only")
    try:
        arr = np.asarray(ratings, dtype=float)
    except (TypeError, ValueError):
        raise UserError("ratings must be numbers (a targets x raters table)") from None
    if arr.ndim != 2:
        raise UserError(f"ratings must be a 2-D targets x raters table, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise UserError("ratings contain infinite values; fix or remove them")
    return arr


def icc_all(ratings, alpha: float = 0.05) -> dict[str, dict]:
    """All six ICC forms for an (n_targets x k_raters) ratings table.

    Rows with any missing (NaN) rating are dropped. Returns a dict keyed by the McGraw &
    Wong names ``FORMS``; each value is ``{"icc", "ci95": [lo, hi], "F", "df1", "df2", "p",
    "shrout_fleiss", "description", "interpretation", "n_targets", "n_raters", "n_dropped"}``
    (``interpretation`` after Koo & Li; ``n_targets`` counts the complete targets used).
    ``ci95`` is the (1 - alpha) interval; the key keeps its name for other alphas.

    Raises UserError for fewer than 2 raters, fewer than 2 complete targets, or ratings
    that are all identical (the ICC is then undefined).
    """
    arr = _as_matrix(ratings)
    n_total, k = arr.shape
    if k < 2:
        raise UserError(f"ICC needs at least 2 raters, got {k}")
    complete = ~np.isnan(arr).any(axis=1)
    n = int(complete.sum())
    if n < 2:
        raise UserError(f"ICC needs at least 2 targets rated by every rater; {n} of {n_total} targets "
                        "are complete (targets with a missing rating are dropped)")
    used = arr[complete]
    if np.all(used == used.flat[0]):
        raise UserError(f"all {used.size} ratings are identical ({used.flat[0]:g}); the ICC is undefined "
                        "when there is no variance")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1, got {alpha}")
    core = _icc_core(used[:, :, None], np.ones((n, 1), dtype=bool), alpha)
    result: dict[str, dict] = {}
    for name, sf in FORMS.items():
        icc, lo, hi, f, df1, df2, p = (float(x) for x in core[name][:, 0])
        result[name] = {
            "icc": icc,
            "ci95": [lo, hi],
            "F": f,
            "df1": df1,
            "df2": df2,
            "p": p,
            "shrout_fleiss": sf,
            "description": DESCRIPTIONS[name],
            "interpretation": koo_li(icc),
            "n_targets": n,
            "n_raters": int(k),
            "n_dropped": int(n_total - n),
        }
    return result


def icc_from_long(df: pd.DataFrame, target: str, rater: str, rating: str,
                  alpha: float = 0.05) -> dict[str, dict]:
    """ICCs from a long-format table (one row per rating: target, rater, rating).

    Targets missing a rating from any rater are dropped (and counted in ``n_dropped``).
    Raises UserError naming the problem for missing columns, non-numeric ratings, duplicate
    target/rater pairs, fewer than 2 raters or fewer than 2 complete targets.
    """
    missing = [c for c in (target, rater, rating) if c not in df.columns]
    if missing:
        raise UserError(f"column {missing[0]!r} not found; the table has columns: "
                        f"{', '.join(map(str, df.columns))}")
    data = df[[target, rater, rating]].copy()
    data = data.dropna(subset=[target, rater])
    values = pd.to_numeric(data[rating], errors="coerce")
    bad = values.isna() & data[rating].notna() & (data[rating].astype(str).str.strip() != "")
    if bad.any():
        i = bad.idxmax()
        raise UserError(f"rating column {rating!r} has a non-numeric value {_shown(data.loc[i, rating])} "
                        f"(target {_shown(data.loc[i, target])}, rater {_shown(data.loc[i, rater])}); "
                        "give numbers only")
    data[rating] = values
    dup = data.duplicated(subset=[target, rater], keep=False)
    if dup.any():
        first = data[dup].iloc[0]
        raise UserError(f"target {_shown(first[target])} has more than one rating by rater {_shown(first[rater])}; "
                        "each target/rater pair must appear once")
    wide = data.pivot(index=target, columns=rater, values=rating)
    if wide.shape[1] < 2:
        raise UserError(f"ICC needs at least 2 raters; column {rater!r} has {wide.shape[1]}")
    return icc_all(wide.to_numpy(dtype=float), alpha=alpha)


# ---------------------------------------------------------------------------------------
# Per-feature ICC (radiomics)


def feature_icc(table_a: pd.DataFrame, table_b: pd.DataFrame, form: str = "ICC(A,1)",
                alpha: float = 0.05) -> pd.DataFrame:
    """Per-feature ICC between two readers (inter) or two sessions (intra).

    ``table_a`` / ``table_b``: DataFrames indexed by case id, one numeric column per
    feature. They are aligned on their common index and common columns (non-numeric
    columns are ignored). For each feature, cases with a missing value in either table are
    left out of that feature only. Vectorised over features (one numpy pass).

    Returns a DataFrame indexed by feature with columns ``icc, ci_low, ci_high,
    interpretation, n``. Constant features (no variance in either table) get NaN and
    "undefined".
    """
    name = _normalise_form(form)
    if not isinstance(table_a, pd.DataFrame) or not isinstance(table_b, pd.DataFrame):
        raise UserError("feature_icc needs two pandas DataFrames (cases x features)")
    for t, label in ((table_a, "first"), (table_b, "second")):
        if t.index.has_duplicates:
            dup = t.index[t.index.duplicated()][0]
            raise UserError(f"case id {_shown(dup)} appears more than once in the {label} feature table")
    cases = table_a.index.intersection(table_b.index, sort=False)
    # select_dtypes works per dtype block, not per column (thousands of features)
    num_a = table_a.select_dtypes(include="number").columns
    num_b = table_b.select_dtypes(include="number").columns
    features = list(num_a[num_a.isin(num_b)])
    if len(cases) < 2:
        raise UserError(f"the two feature tables share {len(cases)} case id(s); at least 2 common cases "
                        "are needed (check the id column)")
    if not features:
        raise UserError("the two feature tables have no numeric feature column in common")
    a = table_a.loc[cases, features].to_numpy(dtype=float)
    b = table_b.loc[cases, features].to_numpy(dtype=float)
    y = np.stack([a, b], axis=1)                       # (n, 2, p)
    valid = np.isfinite(a) & np.isfinite(b)
    core = _icc_core(y, valid, alpha)[name]
    out = pd.DataFrame({
        "icc": core[0],
        "ci_low": core[1],
        "ci_high": core[2],
        "interpretation": _koo_li_array(core[0]),
        "n": valid.sum(axis=0).astype(int),
    }, index=pd.Index(features, name="feature"))
    return out


def _icc_series(x) -> pd.Series:
    if isinstance(x, pd.DataFrame):
        if "icc" not in x.columns:
            raise UserError("ICC table has no 'icc' column")
        return x["icc"].astype(float)
    if isinstance(x, pd.Series):
        return x.astype(float)
    if isinstance(x, dict):
        return pd.Series(x, dtype=float)
    raise UserError("ICC input must be a feature_icc table, a Series or a dict feature -> icc")


def feature_icc_filter(icc_inter, icc_intra, threshold: float = 0.75) -> list[str]:
    """Features whose inter-reader AND intra-reader ICC are both >= ``threshold``.

    Inputs: :func:`feature_icc` tables (or Series / dicts feature -> ICC). NaN ICCs
    (constant features) never pass. Order follows ``icc_inter``.
    """
    inter = _icc_series(icc_inter)
    intra = _icc_series(icc_intra)
    intra = intra.reindex(inter.index)
    keep = (inter >= threshold) & (intra >= threshold)
    return [str(f) for f in inter.index[keep.to_numpy()]]


def feature_class(name: str) -> str:
    """Radiomics feature class from a pyradiomics column name.

    ``original_glcm_Contrast`` -> ``glcm``; ``wavelet-LLH_firstorder_Mean`` -> ``firstorder``;
    a sequence prefix (``T2_original_shape_Sphericity``) is allowed. Unknown -> ``other``.
    """
    parts = re.split(r"_", str(name))
    for token in parts:
        if token in FEATURE_CLASSES:
            return token
    return "other"


def plot_icc_by_class(icc_table, out_png: str | os.PathLike, threshold: float = 0.75,
                      title: str | None = None) -> str:
    """Box + strip plot of the ICC distribution per radiomics feature class with the
    threshold line. ``icc_table``: a :func:`feature_icc` table (or Series feature -> ICC).
    Writes a PNG atomically and returns its path."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = _icc_series(icc_table).dropna()
    if s.empty:
        raise UserError("no defined ICC values to plot (all features constant?)")
    classes = pd.Series([feature_class(f) for f in s.index], index=s.index)
    order = [c for c in FEATURE_CLASSES + ("other",) if (classes == c).any()]
    data = [s[classes == c].to_numpy() for c in order]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(order) + 2), 4.5))
    try:
        ax.boxplot(data, showfliers=False, widths=0.6)
        ax.set_xticks(range(1, len(order) + 1), order)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.18, 0.18, d.size), d, s=6, alpha=0.4, color="tab:blue")
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1,
                   label=f"threshold {threshold:g}")
        for i, d in enumerate(data, start=1):
            frac = float(np.mean(d >= threshold))
            ax.annotate(f"n={d.size}\n{frac:.0%} kept", (i, 1.02), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=7)
        lo = min(0.0, float(np.nanmin(s.to_numpy())))
        ax.set_ylim(lo - 0.05, 1.05)
        ax.set_ylabel("ICC")
        ax.set_xlabel("feature class")
        ax.legend(loc="lower left", fontsize=8)
        if title:
            ax.set_title(title, pad=28)
        fig.tight_layout()
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return str(out_png)


def format_icc_table(result: dict[str, dict]) -> str:
    """Readable table of an :func:`icc_all` result (Shrout & Fleiss names, Koo & Li)."""
    lines = []
    any_form = next(iter(result.values()))
    lines.append(f"targets: {any_form['n_targets']} complete ({any_form['n_dropped']} dropped for missing "
                 f"ratings), raters: {any_form['n_raters']}")
    header = f"{'McGraw&Wong':<11} {'Shrout&Fleiss':<13} {'ICC':>7} {'95% CI':>17} {'F':>9} {'df1':>5} " \
             f"{'df2':>5} {'p':>9}  interpretation"
    lines.append(header)
    for name, r in result.items():
        ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        lines.append(f"{name:<11} {r['shrout_fleiss']:<13} {r['icc']:>7.4f} {ci:>17} {r['F']:>9.4g} "
                     f"{r['df1']:>5g} {r['df2']:>5g} {r['p']:>9.3g}  {r['interpretation']}")
    return "\n".join(lines)

