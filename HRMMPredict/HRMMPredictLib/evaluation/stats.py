"""Statistics for judging a binary prediction model: discrimination, classification at a
fixed threshold, calibration and clinical usefulness.

Conventions used throughout (they are part of the contract, tests check them):

- Labels ``y`` are 0/1 (1 = positive, e.g. high-risk myeloma); ``score`` is any real number
  where higher means more likely positive; ``p`` is a predicted probability in [0, 1].
- ROC / AUC: DeLong et al. (1988) variance computed with the fast midrank algorithm of
  Sun & Xu (2014); ties count one half. The 95% CI is AUC +/- z(0.975) * SE clipped to
  [0, 1], exactly as pROC's ``ci.auc(method = "delong")``. Paired and unpaired tests follow
  pROC's ``roc.test(method = "delong")``.
- A case is called positive when ``score >= threshold``.
- Youden threshold: chosen on TRAINING data only (the caller's duty; this module never sees
  which set it is given). Among the observed score values the one maximising
  sensitivity + specificity - 1 wins; ties go to the lowest such value (highest
  sensitivity: missing a high-risk patient is the costlier error). The returned threshold is
  the midpoint between that value and the next lower observed value (as pROC reports
  thresholds), which classifies the training cases identically and leaves equal margin
  for new cases.
- Proportions (sensitivity, ...) carry Wilson score 95% intervals.
- Calibration: reliability curve on quantile (default) or uniform bins; Brier score;
  logistic recalibration ``logit(P(y=1)) = a + b * logit(p)`` where the **slope** is b of the
  joint fit and the **intercept** is calibration-in-the-large, a fitted with b fixed at 1
  (``logit(p)`` as offset; Van Calster et al. 2019). The jointly fitted a is reported as
  ``intercept_joint``. ``p`` is clipped to [1e-8, 1 - 1e-8] before taking logits.
- Hosmer-Lemeshow: the grouping of R ResourceSelection ``hoslem.test``: cut points are the
  type-7 quantiles of p at 0, 1/g, ..., 1 with duplicates removed; groups are right-closed
  intervals with the lowest value included; df = number of realised (non-empty) groups - 2.
- Decision curve: NB = TP/n - FP/n * pt / (1 - pt), treat when risk >= pt. As in R dcurves,
  a predicted risk of exactly 0 is never treated, so at pt = 0 the model treats the cases
  with risk > 0 and "treat all" treats everyone. Thresholds must lie in [0, 1).

Every function checks its input and raises :class:`ClinicalMRICommonLib.errors.UserError` with a
one-line message for: length mismatch, labels other than 0/1, fewer than two cases of a
class, NaN/infinite or constant scores, probabilities outside [0, 1].
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Iterable, Sequence

import numpy as np

from ClinicalMRICommonLib.errors import UserError

# scipy is imported lazily (only the Hosmer-Lemeshow p-value needs it): the command line
# starts faster without scipy.stats.
Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054, as R's qnorm(0.975)
PROB_EPS = 1e-8

__all__ = [
    "Z95", "check_labels", "check_scores", "roc_auc_delong", "delong_paired", "delong_unpaired",
    "roc_curve_points", "youden_threshold", "wilson_ci", "classification_metrics",
    "calibration_curve", "brier_score", "calibration_slope_intercept", "hosmer_lemeshow",
    "decision_curve", "rank_auc", "auc_or_none", "youden_or_none",
]


# ---------------------------------------------------------------------------------------
# Input checks


def check_labels(y, *, min_per_class: int = 2, name: str = "label") -> np.ndarray:
    """Return ``y`` as an int 0/1 array or raise UserError (other values, NaN, too few of a class)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise UserError(f"{name}: no cases given")
    if arr.dtype == bool:
        out = arr.astype(int)
    else:
        try:
            num = arr.astype(float)
        except (TypeError, ValueError):
            vals = sorted({str(v) for v in arr.tolist()})[:5]
            raise UserError(f"{name} must be 0/1 (1 = positive); found values {vals}") from None
        if np.isnan(num).any():
            raise UserError(f"{name} has {int(np.isnan(num).sum())} missing values; every case needs a 0/1 label")
        bad = sorted(set(np.unique(num).tolist()) - {0.0, 1.0})
        if bad:
            raise UserError(f"{name} must be 0/1 (1 = positive); found other values {bad[:5]}")
        out = num.astype(int)
    n_pos = int(out.sum())
    n_neg = int(out.size - n_pos)
    if n_pos < min_per_class or n_neg < min_per_class:
        raise UserError(f"{name}: {n_pos} positive and {n_neg} negative cases; at least {min_per_class} "
                        "of each class are needed")
    return out


def check_scores(score, n: int | None = None, *, name: str = "score", probability: bool = False,
                 allow_constant: bool = False) -> np.ndarray:
    """Return ``score`` as a finite float array or raise UserError.

    ``n``: the expected length (the labels'); ``probability``: values must lie in [0, 1];
    constant scores are refused unless ``allow_constant`` (they cannot rank cases).
    """
    try:
        arr = np.asarray(score, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be numeric") from None
    if n is not None and arr.size != n:
        raise UserError(f"{name} has {arr.size} values but there are {n} labels; give one score per case")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)[:5].tolist()
        raise UserError(f"{name} has {int(bad.sum())} NaN/infinite values (positions {idx}); "
                        "every case needs a score")
    if not allow_constant and arr.size and np.all(arr == arr[0]):
        raise UserError(f"{name} is constant (every value is {arr[0]:g}); a constant score cannot "
                        "separate the classes")
    if probability and arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise UserError(f"{name} must be a probability in [0, 1]; found values from {arr.min():g} to "
                        f"{arr.max():g}")
    return arr


def _pair(y, score, name="score", probability=False, allow_constant=False):
    y_arr = np.asarray(y).reshape(-1)
    s = check_scores(score, y_arr.size, name=name, probability=probability, allow_constant=allow_constant)
    yy = check_labels(y_arr)
    return yy, s


# ---------------------------------------------------------------------------------------
# ROC, AUC and DeLong


def _norm_sf(z: float) -> float:
    """Upper tail of the standard normal distribution."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of each row, ties sharing their average rank (R's rank(), ties "average")."""
    x = np.atleast_2d(x)
    out = np.empty(x.shape, dtype=float)
    for i, row in enumerate(x):
        order = np.argsort(row, kind="mergesort")
        srt = row[order]
        edges = np.flatnonzero(np.concatenate([[True], srt[1:] != srt[:-1], [True]]))
        avg = (edges[:-1] + edges[1:] + 1) / 2.0  # mean of 1-based ranks start+1 .. end
        out[i, order] = np.repeat(avg, np.diff(edges))
    return out


def _delong_core(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k score rows on the same cases.

    Sun & Xu (2014): midranks among positives (tx), negatives (ty) and all cases (tz).
    V10_i (structural component of positive i) = (tz_i - tx_i) / n_neg;
    V01_j (of negative j) = 1 - (tz_j - ty_j) / n_pos; S = cov(V10)/m + cov(V01)/n with
    sample (n-1) covariances, as in DeLong 1988 and pROC.
    """
    scores = np.atleast_2d(scores)
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m = pos.shape[1]
    n = neg.shape[1]
    tx = _midranks(pos)
    ty = _midranks(neg)
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def _ci(center: float, se: float, lo: float = -math.inf, hi: float = math.inf) -> list[float]:
    return [float(max(lo, center - Z95 * se)), float(min(hi, center + Z95 * se))]


def roc_auc_delong(y, score, *, name: str = "score") -> dict:
    """AUC with DeLong standard error and 95% CI (clipped to [0, 1], as pROC).

    Returns ``{"auc", "se", "ci95": [lo, hi], "n", "n_positive", "n_negative"}``.
    """
    yy, s = _pair(y, score, name)
    aucs, cov = _delong_core(yy, s[None, :])
    auc = float(aucs[0])
    se = float(math.sqrt(max(cov[0, 0], 0.0)))
    return {"auc": auc, "se": se, "ci95": _ci(auc, se, 0.0, 1.0), "n": int(yy.size),
            "n_positive": int(yy.sum()), "n_negative": int(yy.size - yy.sum())}


def rank_auc(y, score) -> float | None:
    """The AUC alone (Mann-Whitney: the share of positive-negative pairs ranked right, ties
    one half) whenever both classes are present, else None. Without a variance one case of
    each class suffices (e.g. choosing an epoch on a small internal validation split)."""
    yy = np.asarray(y).astype(int).reshape(-1)
    s = np.asarray(score, dtype=float).reshape(-1)
    m, n = int((yy == 1).sum()), int((yy == 0).sum())
    if m == 0 or n == 0:
        return None
    ranks = _midranks(s)[0]
    return float((ranks[yy == 1].sum() - m * (m + 1) / 2.0) / (m * n))


def _estimable(y, p) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, p) when AUC and threshold are estimable: >= 2 cases of each class and varying
    scores; else None."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    if min(int((y == 0).sum()), int((y == 1).sum())) < 2 or np.ptp(p) <= 0:
        return None
    return y, p


def auc_or_none(y, p) -> dict | None:
    """:func:`roc_auc_delong` where it is defined (>= 2 cases of each class, scores that
    vary), else None: for sets that may be too small (a validation split, a fold)."""
    ok = _estimable(y, p)
    return None if ok is None else roc_auc_delong(*ok)


def _z_test(diff: float, var: float) -> tuple[float, float]:
    if var <= 0.0:
        # Both AUCs estimated without variance (e.g. both perfect): only equality is possible.
        return (0.0, 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), 0.0)
    z = diff / math.sqrt(var)
    return float(z), float(2.0 * _norm_sf(abs(z)))


def delong_paired(y, score_a, score_b, *, names: Sequence[str] = ("A", "B")) -> dict:
    """Paired DeLong test of AUC(A) - AUC(B) for two scores on the same cases.

    Returns ``{"auc_a", "auc_b", "diff", "se_diff", "z", "p", "diff_ci95"}``; p is two-sided.
    """
    y_arr = np.asarray(y).reshape(-1)
    a = check_scores(score_a, y_arr.size, name=names[0])
    b = check_scores(score_b, y_arr.size, name=names[1])
    yy = check_labels(y_arr)
    aucs, cov = _delong_core(yy, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    z, p = _z_test(diff, var)
    se = math.sqrt(max(var, 0.0))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se_diff": se, "z": z, "p": p,
            "diff_ci95": _ci(diff, se)}


def delong_unpaired(y_a, score_a, y_b, score_b, *, names: Sequence[str] = ("A", "B")) -> dict:
    """Unpaired DeLong test of AUC(A) - AUC(B) for two independent sets of cases
    (e.g. an internal and an external cohort): z = diff / sqrt(var_A + var_B)."""
    ra = roc_auc_delong(y_a, score_a, name=names[0])
    rb = roc_auc_delong(y_b, score_b, name=names[1])
    diff = ra["auc"] - rb["auc"]
    var = ra["se"] ** 2 + rb["se"] ** 2
    z, p = _z_test(diff, var)
    se = math.sqrt(var)
    return {"auc_a": ra["auc"], "auc_b": rb["auc"], "diff": float(diff), "se_diff": float(se), "z": z, "p": p,
            "diff_ci95": _ci(diff, se)}


def roc_curve_points(y, score, *, name: str = "score") -> dict:
    """Empirical ROC curve: one point per distinct score (positive if score >= threshold).

    Returns ``{"fpr": [...], "tpr": [...], "threshold": [...]}`` from (0, 0) to (1, 1); the
    first point's threshold is None (nobody called positive).
    """
    yy, s = _pair(y, score, name)
    thr = np.unique(s)[::-1]
    pos = np.sort(s[yy == 1])
    neg = np.sort(s[yy == 0])
    # count of values >= t in a sorted array: len - searchsorted(left)
    tp = pos.size - np.searchsorted(pos, thr, side="left")
    fp = neg.size - np.searchsorted(neg, thr, side="left")
    tpr = np.concatenate([[0.0], tp / pos.size])
    fpr = np.concatenate([[0.0], fp / neg.size])
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": [None] + thr.tolist()}


# ---------------------------------------------------------------------------------------
# Threshold and classification metrics


def youden_threshold(y, score, *, name: str = "score") -> dict:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (fit on TRAINING data).

    Rule (see module docstring): candidates are the observed scores, positive if
    score >= candidate; ties in J go to the lowest candidate; the returned ``threshold`` is
    the midpoint to the next lower observed score (the candidate itself when it is the
    lowest). Returns ``{"threshold", "youden_j", "sensitivity", "specificity"}``.
    """
    yy, s = _pair(y, score, name)
    cand = np.unique(s)  # ascending
    pos = np.sort(s[yy == 1])
    neg = np.sort(s[yy == 0])
    sens = (pos.size - np.searchsorted(pos, cand, side="left")) / pos.size
    spec = np.searchsorted(neg, cand, side="left") / neg.size
    j = sens + spec - 1.0
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # lowest candidate among ties
    thr = float(cand[best]) if best == 0 else float((cand[best] + cand[best - 1]) / 2.0)
    return {"threshold": thr, "youden_j": float(j[best]), "sensitivity": float(sens[best]),
            "specificity": float(spec[best])}


def youden_or_none(y, p) -> float | None:
    """The :func:`youden_threshold` where it is defined (>= 2 cases of each class, scores
    that vary), else None (the caller says which fallback it uses)."""
    ok = _estimable(y, p)
    return None if ok is None else float(youden_threshold(*ok)["threshold"])


def wilson_ci(k: int, n: int) -> list[float] | None:
    """Wilson score 95% interval for k successes out of n (None when n == 0)."""
    if n <= 0:
        return None
    p = k / n
    z2 = Z95 * Z95
    den = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / den
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / den
    lo = 0.0 if k == 0 else max(0.0, center - half)  # exact at the ends (avoid 1e-17 rounding)
    hi = 1.0 if k == n else min(1.0, center + half)
    return [lo, hi]


def _proportion(k: int, n: int) -> dict:
    return {"value": (k / n) if n else None, "ci95": wilson_ci(k, n), "numerator": int(k), "denominator": int(n)}


def classification_metrics(y, score, threshold: float, *, name: str = "score") -> dict:
    """Sensitivity, specificity, accuracy, PPV and NPV at a fixed threshold, each as
    ``{"value", "ci95" (Wilson), "numerator", "denominator"}``; plus the confusion counts.
    Positive if score >= threshold. Values with an empty denominator are None."""
    y_arr = np.asarray(y).reshape(-1)
    s = check_scores(score, y_arr.size, name=name, allow_constant=True)
    yy = check_labels(y_arr, min_per_class=1)
    if not np.isfinite(threshold):
        raise UserError(f"threshold must be a finite number, got {threshold}")
    pred = s >= threshold
    tp = int(np.sum(pred & (yy == 1)))
    fp = int(np.sum(pred & (yy == 0)))
    tn = int(np.sum(~pred & (yy == 0)))
    fn = int(np.sum(~pred & (yy == 1)))
    return {
        "threshold": float(threshold),
        "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "sensitivity": _proportion(tp, tp + fn),
        "specificity": _proportion(tn, tn + fp),
        "accuracy": _proportion(tp + tn, tp + tn + fp + fn),
        "ppv": _proportion(tp, tp + fp),
        "npv": _proportion(tn, tn + fn),
    }


# ---------------------------------------------------------------------------------------
# Calibration


def _quantile_groups(p: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """ResourceSelection grouping: unique type-7 quantile breaks, right-closed intervals,
    lowest value included. Returns (breaks, group index per case)."""
    breaks = np.unique(np.quantile(p, np.linspace(0.0, 1.0, g + 1)))
    if breaks.size < 2:
        return breaks, np.zeros(p.size, dtype=int)
    idx = np.searchsorted(breaks[1:-1], p, side="left")
    return breaks, idx


def calibration_curve(y, p, n_bins: int = 10, strategy: str = "quantile", *, name: str = "probability") -> dict:
    """Reliability curve: mean predicted probability vs observed fraction per bin.

    ``strategy="quantile"``: breaks at the quantiles of p (duplicates removed, like the
    Hosmer-Lemeshow groups); ``"uniform"``: n_bins equal-width bins on [0, 1]. Bins are
    right-closed with the lowest value included; empty bins are left out. Each bin has
    its observed fraction's Wilson 95% CI.
    """
    yy, pp = _pair(y, p, name, probability=True, allow_constant=True)
    if int(n_bins) < 1:
        raise UserError(f"n_bins must be at least 1, got {n_bins}")
    if strategy == "quantile":
        breaks, idx = _quantile_groups(pp, int(n_bins))
    elif strategy == "uniform":
        breaks = np.linspace(0.0, 1.0, int(n_bins) + 1)
        idx = np.searchsorted(breaks[1:-1], pp, side="left")
    else:
        raise UserError(f"calibration strategy must be 'quantile' or 'uniform', got '{strategy}'")
    out = {"strategy": strategy, "n_bins": int(n_bins), "bin_lower": [], "bin_upper": [], "n": [],
           "mean_predicted": [], "observed": [], "observed_ci95": []}
    nb = max(breaks.size - 1, 1)
    for b in range(nb):
        sel = idx == b
        k = int(sel.sum())
        if k == 0:
            continue
        pos = int(yy[sel].sum())
        out["bin_lower"].append(float(breaks[b]) if breaks.size > 1 else float(pp.min()))
        out["bin_upper"].append(float(breaks[b + 1]) if breaks.size > 1 else float(pp.max()))
        out["n"].append(k)
        out["mean_predicted"].append(float(pp[sel].mean()))
        out["observed"].append(pos / k)
        out["observed_ci95"].append(wilson_ci(pos, k))
    return out


def brier_score(y, p, *, name: str = "probability") -> float:
    """Mean squared difference between predicted probability and outcome."""
    yy, pp = _pair(y, p, name, probability=True, allow_constant=True)
    return float(np.mean((pp - yy) ** 2))


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    return np.log(q / (1.0 - q))


def _logistic_fit(X: np.ndarray, y: np.ndarray, offset: np.ndarray | None = None,
                  max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic regression by Newton-Raphson with step halving.

    Returns (coefficients, covariance). Raises UserError when the fit does not converge
    (perfect separation: the coefficients run off to infinity)."""
    off = np.zeros(y.size) if offset is None else offset
    beta = np.zeros(X.shape[1])

    def nll(b):
        eta = X @ b + off
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    cur = nll(beta)
    for _ in range(max_iter):
        eta = X @ beta + off
        mu = 0.5 * (1.0 + np.tanh(0.5 * eta))  # logistic without exp overflow
        w = mu * (1.0 - mu)
        grad = X.T @ (y - mu)
        info = X.T @ (X * w[:, None])
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            raise UserError("logistic recalibration failed (singular information matrix); "
                            "the predictions may separate the classes perfectly") from None
        t = 1.0
        while True:
            new = beta + t * step
            val = nll(new)
            if val <= cur + 1e-12 or t < 1e-8:
                break
            t /= 2.0
        beta, prev = new, cur
        cur = val
        if np.max(np.abs(beta)) > 1e4:
            break
        if abs(prev - cur) < tol * (abs(cur) + tol) and np.max(np.abs(t * step)) < 1e-8:
            eta = X @ beta + off
            mu = 0.5 * (1.0 + np.tanh(0.5 * eta))  # logistic without exp overflow
            info = X.T @ (X * (mu * (1.0 - mu))[:, None])
            try:
                cov = np.linalg.inv(info)
            except np.linalg.LinAlgError:
                break
            return beta, cov
    raise UserError("logistic recalibration did not converge: the predictions separate the classes "
                    "perfectly, so the calibration slope is unbounded")


def calibration_slope_intercept(y, p, *, name: str = "probability") -> dict:
    """Logistic recalibration of logit(p).

    - ``slope``: b of the joint fit logit(P(y=1)) = a + b * logit(p) (ideal 1; < 1 means
      predictions too extreme, the usual sign of overfitting).
    - ``intercept``: calibration-in-the-large, a of logit(P(y=1)) = a + 1 * logit(p) (slope
      fixed at 1, logit(p) as offset; ideal 0; > 0 means risks under-estimated on average).
    - ``intercept_joint``: a of the joint fit.
    Each with a Wald 95% CI. p is clipped to [1e-8, 1 - 1e-8].
    """
    yy, pp = _pair(y, p, name, probability=True)
    lp = _logit(pp)
    X = np.column_stack([np.ones(lp.size), lp])
    b, cov = _logistic_fit(X, yy.astype(float))
    a1, cov1 = _logistic_fit(np.ones((lp.size, 1)), yy.astype(float), offset=lp)
    se_b = math.sqrt(max(cov[1, 1], 0.0))
    se_aj = math.sqrt(max(cov[0, 0], 0.0))
    se_a = math.sqrt(max(cov1[0, 0], 0.0))
    return {"slope": float(b[1]), "slope_ci95": _ci(float(b[1]), se_b),
            "intercept": float(a1[0]), "intercept_ci95": _ci(float(a1[0]), se_a),
            "intercept_joint": float(b[0]), "intercept_joint_ci95": _ci(float(b[0]), se_aj),
            "intercept_definition": "calibration-in-the-large (slope fixed at 1)"}


def hosmer_lemeshow(y, p, g: int = 10, *, name: str = "probability") -> dict:
    """Hosmer-Lemeshow goodness-of-fit test with R ResourceSelection ``hoslem.test`` grouping.

    Returns ``{"chi2", "df", "p", "g_requested", "groups": [{"lower", "upper", "n",
    "observed", "expected"}]}`` where observed/expected count positives. df = realised
    groups - 2; fewer than 3 realised groups is a UserError.
    """
    yy, pp = _pair(y, p, name, probability=True)
    if int(g) < 3:
        raise UserError(f"Hosmer-Lemeshow needs at least 3 groups, got g={g}")
    breaks, idx = _quantile_groups(pp, int(g))
    groups = []
    chi2 = 0.0
    for b in range(max(breaks.size - 1, 1)):
        sel = idx == b
        k = int(sel.sum())
        if k == 0:
            continue
        o1 = float(yy[sel].sum())
        e1 = float(pp[sel].sum())
        o0, e0 = k - o1, k - e1
        for o, e in ((o0, e0), (o1, e1)):
            if e > 0:
                chi2 += (o - e) ** 2 / e
            elif o > 0:
                chi2 = math.inf
        groups.append({"lower": float(breaks[b]), "upper": float(breaks[min(b + 1, breaks.size - 1)]),
                       "n": k, "observed": o1, "expected": e1})
    realised = len(groups)
    if realised < 3:
        raise UserError(f"{name} has too few distinct values for the Hosmer-Lemeshow test "
                        f"({realised} group(s) from g={g}); at least 3 groups are needed")
    df = realised - 2
    from scipy.special import chdtrc  # chi-square upper tail

    return {"chi2": float(chi2), "df": int(df), "p": float(chdtrc(df, chi2)), "g_requested": int(g),
            "groups": groups}


# ---------------------------------------------------------------------------------------
# Decision curve analysis


def _check_thresholds(thresholds: Iterable[float]) -> np.ndarray:
    try:
        t = np.asarray(list(thresholds), dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise UserError("decision-curve thresholds must be numbers in [0, 1)") from None
    if t.size == 0:
        raise UserError("give at least one decision-curve threshold")
    if not np.all(np.isfinite(t)) or t.min() < 0.0 or t.max() >= 1.0:
        bad = [float(v) for v in t if not (np.isfinite(v) and 0.0 <= v < 1.0)][:5]
        raise UserError(f"decision-curve thresholds must lie in [0, 1) (net benefit is undefined at 1); "
                        f"got {bad}")
    return t


def decision_curve(y, p, thresholds: Iterable[float] | None = None, *, name: str = "probability") -> dict:
    """Net benefit of a model, of treat-all and of treat-none over threshold probabilities.

    NB(pt) = TP/n - FP/n * pt / (1 - pt), treat when risk >= pt (risk exactly 0 never
    treated, as in R dcurves). Default thresholds 0, 0.01, ..., 0.99.
    Returns ``{"threshold", "net_benefit", "treat_all", "treat_none", "tp_rate", "fp_rate",
    "n", "prevalence"}`` (lists aligned with ``threshold``).
    """
    yy, pp = _pair(y, p, name, probability=True)
    t = _check_thresholds(np.round(np.arange(0, 100) / 100.0, 2) if thresholds is None else thresholds)
    n = yy.size
    pos = yy == 1
    prev = float(pos.mean())
    odds = t / (1.0 - t)
    treat = (pp[None, :] >= t[:, None]) & (pp[None, :] > 0.0)
    tp_rate = (treat & pos[None, :]).sum(axis=1) / n
    fp_rate = (treat & ~pos[None, :]).sum(axis=1) / n
    nb = tp_rate - fp_rate * odds
    all_nb = prev - (1.0 - prev) * odds
    return {"threshold": t.tolist(), "net_benefit": nb.tolist(), "treat_all": all_nb.tolist(),
            "treat_none": [0.0] * t.size, "tp_rate": tp_rate.tolist(), "fp_rate": fp_rate.tolist(),
            "n": int(n), "prevalence": prev}
