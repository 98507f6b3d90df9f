"""Model evaluation across cohorts and its human-readable report.

:func:`evaluate_models` computes, for every set (training, validation, external ...) and
every model the set has probabilities for, the statistics of
:mod:`HRMMPredictLib.evaluation.stats`: AUC with DeLong CI and ROC points, classification
metrics and the 2x2 confusion table at the threshold fixed on training data (Wilson CIs),
calibration (reliability curve, Brier, slope, calibration-in-the-large, Hosmer-Lemeshow on
the same groups as the curve) and the decision curve; and per set the paired DeLong test
for every pair of models, with Holm-adjusted p-values. Statistics that a set is too small
or too degenerate to estimate carry ``not_estimable`` (the reason) next to their raw values;
the report prints the reason instead of the numbers (rules: :data:`ESTIMABILITY_RULES`).

:func:`write_evaluation_report` writes ``index.html`` (one self-contained page built with
:mod:`ClinicalMRICommonLib.report`: PNG plots embedded, inline CSS, no scripts, no network
resources) and ``metrics.json`` (the same numbers, strict JSON with null for undefined
values), each atomically.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe, write_text_atomic

from . import stats

__all__ = ["evaluate_models", "thresholds_from_training", "write_evaluation_report", "build_report",
           "DEFINITIONS", "ESTIMABILITY_RULES", "MIN_PER_CLASS_CI", "MIN_PER_CLASS_CALIBRATION",
           "MIN_PER_GROUP", "MAX_ABS_SLOPE", "MAX_SLOPE_SE", "DCA_PLOT_RANGE", "feature_class"]

REQUIRED_COLUMNS = ("label", "patient_id", "lesion_id")

#: AUC CIs and DeLong tests need at least this many lesions of EACH class.
MIN_PER_CLASS_CI = 5
#: Calibration slope / intercept need at least this many lesions of each class.
MIN_PER_CLASS_CALIBRATION = 10
#: Lesions per calibration group (reliability curve and Hosmer-Lemeshow share the groups).
MIN_PER_GROUP = 10
#: A fitted calibration slope beyond this magnitude, or with a larger standard error, is
#: near-separation, not a calibration estimate.
MAX_ABS_SLOPE = 10.0
MAX_SLOPE_SE = 5.0
#: Lesions per class below which a set is called small (a warning).
SMALL_SET_PER_CLASS = 10
#: Threshold probabilities shown on the decision-curve plot (all of 0..0.99 are in metrics.json).
DCA_PLOT_RANGE = (0.0, 0.6)

ESTIMABILITY_RULES = {
    "auc_ci": f"AUC 95% CI and the paired DeLong test: at least {MIN_PER_CLASS_CI} lesions of each class and a "
              "DeLong variance above 0 (a variance of 0 - every positive above every negative, or both models "
              "identical - gives a CI of zero width, which is not an interval estimate).",
    "calibration": f"Calibration slope and calibration-in-the-large: at least {MIN_PER_CLASS_CALIBRATION} lesions "
                   "of each class, a logistic fit that converges (no separation), and a slope with "
                   f"|slope| <= {MAX_ABS_SLOPE:g} and SE <= {MAX_SLOPE_SE:g} (beyond that the fit is "
                   "near-separation).",
    "groups": f"Reliability curve and Hosmer-Lemeshow use the same quantile groups: g = min(10, floor(n / "
              f"{MIN_PER_GROUP})) so each group has about {MIN_PER_GROUP} lesions or more (ties can merge "
              "groups); Hosmer-Lemeshow needs at least 3 realised groups (df = groups - 2 >= 1).",
}

DEFINITIONS = {
    "unit": "Every statistic is computed per lesion (one row per lesion). Lesions of one patient are "
            "not independent, so confidence intervals can be too narrow when patients contribute several.",
    "auc": "ROC AUC; 95% CI = AUC +/- 1.96 SE from the DeLong variance (midranks for ties), clipped to "
           "[0, 1] as in R pROC.",
    "delong": "Paired DeLong test of AUC(A) - AUC(B) on the same lesions: Z, two-sided p, 95% CI of the "
              "difference; Holm-adjusted p over the comparisons of one set.",
    "threshold": "Positive if predicted probability >= threshold. Each model's threshold was fixed on "
                 "training data (Youden J) and is not re-optimised on any other set.",
    "proportions": "Sensitivity, specificity, accuracy, PPV and NPV with Wilson score 95% CIs.",
    "calibration_curve": "Observed fraction of positives against mean predicted probability in groups at the "
                         "quantiles of the predictions (the Hosmer-Lemeshow groups), each with a Wilson 95% CI.",
    "brier": "Brier score: mean of (p - y)^2 (0 is perfect; 0.25 is an uninformative 0.5 prediction).",
    "calibration_slope": "Slope b of the logistic recalibration logit(P(y=1)) = a + b logit(p) (ideal 1; "
                         "below 1: predictions too extreme).",
    "calibration_intercept": "Calibration-in-the-large: a with b fixed at 1, logit(p) as offset (ideal 0; "
                             "above 0: risks under-estimated). p clipped to [1e-8, 1-1e-8].",
    "hosmer_lemeshow": "Hosmer-Lemeshow test with R ResourceSelection hoslem.test grouping (quantile cut "
                       "points, unique breaks), df = realised groups - 2, on the calibration curve's groups.",
    "dca": "Net benefit NB = TP/n - FP/n * pt/(1-pt), treating when predicted risk >= pt; treat-all and "
           "treat-none for reference (R dcurves conventions).",
    **{f"not_estimable_{k}": v for k, v in ESTIMABILITY_RULES.items()},
}


# ---------------------------------------------------------------------------------------
# Evaluation


def _check_set(name: str, df, models: Sequence[str]):
    try:
        cols = list(df.columns)
    except AttributeError:
        raise UserError(f"set '{name}' must be a pandas DataFrame, got {type(df).__name__}") from None
    missing = [c for c in (*REQUIRED_COLUMNS, *models) if c not in cols]
    if missing:
        raise UserError(f"set '{name}' lacks column(s) {', '.join(missing)}; it needs label, patient_id, "
                        f"lesion_id and one probability column per model ({', '.join(models)})")
    if len(df) == 0:
        raise UserError(f"set '{name}' has no rows")
    keys = df[["patient_id", "lesion_id"]].astype(str)
    dup = keys[keys.duplicated()]
    if len(dup):
        pid, lid = dup.iloc[0]["patient_id"], dup.iloc[0]["lesion_id"]
        raise UserError(f"set '{name}' lists lesion {lid!r} of patient {pid!r} more than once; "
                        "each lesion must appear once per set")
    y = stats.check_labels(df["label"].to_numpy(), name=f"set '{name}' label")
    probs = {m: stats.check_scores(df[m].to_numpy(), y.size, name=f"set '{name}' model '{m}' probability",
                                   probability=True, allow_constant=True) for m in models}
    return y, probs


def _optional(fn, *args, **kwargs) -> dict:
    """Statistics that can be undefined for a valid model (separation, too few distinct
    predictions) are recorded with their reason instead of stopping the evaluation."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        return {"error": str(exc), "not_estimable": str(exc)}


def thresholds_from_training(train, models: Sequence[str]) -> dict:
    """Youden threshold of each model fitted on a TRAINING set frame (label + model columns)."""
    y, probs = _check_set("training", train, list(models))
    return {m: stats.youden_threshold(y, probs[m], name=f"training model '{m}'")["threshold"] for m in models}


def calibration_groups(n: int) -> int:
    """The number of quantile groups of the reliability curve and Hosmer-Lemeshow:
    min(10, floor(n / MIN_PER_GROUP)), at least 1."""
    return int(max(1, min(10, n // MIN_PER_GROUP)))


def _class_rule(n_pos: int, n_neg: int, need: int, what: str) -> str | None:
    if min(n_pos, n_neg) < need:
        return (f"{n_pos} positive and {n_neg} negative lesions; {what} needs at least {need} of each class")
    return None


def _auc_estimability(auc: dict) -> str | None:
    rule = _class_rule(auc["n_positive"], auc["n_negative"], MIN_PER_CLASS_CI, "a CI")
    if rule:
        return rule
    if auc["se"] <= 0.0:
        return (f"DeLong variance is 0 (AUC {auc['auc']:.3f}: every positive ranked above every negative, "
                "or the reverse); a zero-width interval is not an estimate")
    return None


def _delong_estimability(d: dict, n_pos: int, n_neg: int) -> str | None:
    rule = _class_rule(n_pos, n_neg, MIN_PER_CLASS_CI, "the DeLong test")
    if rule:
        return rule
    if d["se_diff"] <= 0.0:
        return ("the variance of the AUC difference is 0 (both models rank the lesions identically or both "
                "separate them perfectly); no test is possible")
    return None


def _recalibration(y: np.ndarray, p: np.ndarray, label: str) -> dict:
    rec = _optional(stats.calibration_slope_intercept, y, p, name=label)
    rule = _class_rule(int(y.sum()), int(y.size - y.sum()), MIN_PER_CLASS_CALIBRATION, "a calibration slope")
    if rule is None and "error" in rec:
        rule = f"no calibration fit: {rec['error']}"
    if rule is None:
        se = (rec["slope_ci95"][1] - rec["slope_ci95"][0]) / (2 * stats.Z95)
        if abs(rec["slope"]) > MAX_ABS_SLOPE or se > MAX_SLOPE_SE:
            rule = (f"slope {rec['slope']:.1f} with SE {se:.1f} is outside the plausible range "
                    f"(|slope| <= {MAX_ABS_SLOPE:g}, SE <= {MAX_SLOPE_SE:g}): near-separation")
    if rule:
        rec["not_estimable"] = rule
    return rec


def _hosmer_lemeshow(y: np.ndarray, p: np.ndarray, g: int, label: str) -> dict:
    if g < 3:
        return {"not_estimable": f"{y.size} lesions give {g} group(s) of at least {MIN_PER_GROUP}; the test "
                                 "needs at least 3 groups", "g_requested": int(g)}
    return _optional(stats.hosmer_lemeshow, y, p, g, name=label)


def holm_adjust(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (None stays None and does not count)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    k = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * float(pvalues[i])))
        out[i] = running
    return out


def evaluate_models(sets: Mapping[str, "object"], models: Sequence[str], thresholds: Mapping[str, float], *,
                    dca_thresholds: Iterable[float] | None = None, calibration_bins: int | None = None,
                    calibration_strategy: str = "quantile", hl_groups: int | None = None,
                    set_models: Mapping[str, Sequence[str]] | None = None,
                    unavailable: Mapping[str, Mapping[str, str]] | None = None,
                    descriptions: Mapping[str, str] | None = None) -> dict:
    """Every statistic for every set and model.

    ``sets``: set name -> DataFrame with ``label`` (0/1), ``patient_id``, ``lesion_id`` and one
    probability column per model. ``thresholds``: model -> threshold fixed on training data.
    ``set_models``: set -> the models that set has probabilities for (default: all);
    ``unavailable``: set -> model -> why it has none (shown as "not available: reason");
    ``descriptions``: set -> what its probabilities are (e.g. "apparent (resubstitution)").
    Returns a JSON-ready dict ``{"models", "thresholds", "set_order", "sets": {name: {"summary",
    "models": {model: {...}}, "unavailable", "delong": [...]}}, "checks", "warnings",
    "options", "definitions", "rules"}``.
    Statistics a set cannot estimate (rules: :data:`ESTIMABILITY_RULES`) keep their raw values
    and carry ``not_estimable``: the reason. ``calibration_bins`` / ``hl_groups`` None: the
    shared groups :func:`calibration_groups` (about 10 lesions each).
    """
    models = [str(m) for m in models]
    if not models:
        raise UserError("no models to evaluate")
    if len(set(models)) != len(models):
        raise UserError(f"model names must be unique, got {models}")
    if not sets:
        raise UserError("no sets to evaluate (expected e.g. training and validation)")
    thr = {}
    for m in models:
        if m not in thresholds:
            raise UserError(f"no threshold given for model '{m}'; fix it on the training set (Youden) first")
        t = float(thresholds[m])
        if not np.isfinite(t):
            raise UserError(f"threshold of model '{m}' is not a finite number ({thresholds[m]})")
        thr[m] = t
    grid = list(np.round(np.arange(100) / 100.0, 2)) if dca_thresholds is None else list(dca_thresholds)
    grid = stats.decision_curve([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], grid)["threshold"]  # validates the grid
    set_models = dict(set_models or {})
    unavailable = {str(k): dict(v) for k, v in (unavailable or {}).items()}
    descriptions = dict(descriptions or {})

    out_sets: dict = {}
    patients: dict[str, set] = {}
    lesions: dict[str, set] = {}
    warnings: list[str] = []
    for name, df in sets.items():
        name = str(name)
        here = [m for m in models if m in set(map(str, set_models.get(name, models)))]
        unknown = [str(m) for m in set_models.get(name, models) if str(m) not in models]
        if unknown:
            raise UserError(f"set '{name}' names model(s) {', '.join(unknown)} that are not evaluated")
        if not here:
            raise UserError(f"set '{name}' has no model to evaluate")
        y, probs = _check_set(name, df, here)
        pid = df["patient_id"].astype(str)
        patients[name] = set(pid)
        lesions[name] = set(zip(pid, df["lesion_id"].astype(str)))
        per_patient = pid.value_counts()
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        groups = int(calibration_bins) if calibration_bins else calibration_groups(int(y.size))
        g_hl = int(hl_groups) if hl_groups else groups
        summary = {"lesions": int(y.size), "patients": int(pid.nunique()), "positives": n_pos,
                   "negatives": n_neg, "prevalence": float(y.mean()),
                   "max_lesions_per_patient": int(per_patient.max()),
                   "calibration_bins": groups, "hosmer_lemeshow_groups": g_hl,
                   "description": str(descriptions.get(name, ""))}
        if min(n_pos, n_neg) < SMALL_SET_PER_CLASS:
            warnings.append(f"small set: '{name}' has {n_pos} positive and {n_neg} negative lesions "
                            f"(under {SMALL_SET_PER_CLASS} of a class); its estimates are very uncertain and "
                            "statistics below the report's minimum counts are marked not estimable")
        res_models = {}
        for m in here:
            p = probs[m]
            try:
                label = f"set '{name}' model '{m}'"
                auc = stats.roc_auc_delong(y, p, name=label)
                why = _auc_estimability(auc)
                if why:
                    auc["ci_not_estimable"] = why
                res_models[m] = {
                    "auc": auc,
                    "roc": stats.roc_curve_points(y, p, name=label),
                    "threshold": thr[m],
                    "classification": stats.classification_metrics(y, p, thr[m], name=label),
                    "calibration": {
                        "curve": stats.calibration_curve(y, p, groups, calibration_strategy, name=label),
                        "brier": stats.brier_score(y, p, name=label),
                        "recalibration": _recalibration(y, p, label),
                        "hosmer_lemeshow": _hosmer_lemeshow(y, p, g_hl, label),
                    },
                    "dca": stats.decision_curve(y, p, grid, name=label),
                    "distinct_probabilities": int(np.unique(p).size),
                }
            except UserError as exc:
                msg = str(exc)
                raise UserError(msg if msg.startswith("set '") else f"set '{name}' model '{m}': {msg}") from None
        delong = []
        for a, b in itertools.combinations(here, 2):
            r = stats.delong_paired(y, probs[a], probs[b], names=(f"set '{name}' model '{a}'",
                                                                  f"set '{name}' model '{b}'"))
            d = {"model_a": a, "model_b": b, **r}
            why = _delong_estimability(r, n_pos, n_neg)
            if why:
                d["not_estimable"] = why
            delong.append(d)
        adj = holm_adjust([None if "not_estimable" in d else d["p"] for d in delong])
        for d, pa in zip(delong, adj):
            d["p_holm"] = pa
        gone = {m: unavailable.get(name, {}).get(m, "no probabilities for this set") for m in models
                if m not in here}
        out_sets[name] = {"summary": summary, "models": res_models, "unavailable": gone, "delong": delong}

    overlap = {}
    for a, b in itertools.combinations(list(patients), 2):
        if lesions[a] == lesions[b]:
            continue  # the same lesions scored two ways (e.g. apparent and cross-validated): not a leak
        common = sorted(patients[a] & patients[b])
        if common:
            overlap[f"{a} & {b}"] = common
    for pair, ids in overlap.items():
        shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
        warnings.insert(0, f"patient overlap: {len(ids)} patient(s) appear in both {pair} ({shown}); their "
                           "results are not independent of training")
    multi = [s for s in out_sets if out_sets[s]["summary"]["max_lesions_per_patient"] > 1]
    if multi:
        warnings.append("several lesions per patient in " + ", ".join(multi) + ": statistics are per lesion and "
                        "treat lesions as independent, so CIs may be too narrow")
    return json_safe({
        "models": models,
        "thresholds": thr,
        "set_order": list(out_sets),
        "sets": out_sets,
        "checks": {"patients_in_several_sets": overlap},
        "warnings": warnings,
        "options": {"calibration_bins": calibration_bins, "calibration_strategy": calibration_strategy,
                    "hosmer_lemeshow_groups": hl_groups, "dca_thresholds": grid,
                    "dca_plot_range": list(DCA_PLOT_RANGE)},
        "rules": dict(ESTIMABILITY_RULES),
        "definitions": dict(DEFINITIONS),
    })


# ---------------------------------------------------------------------------------------
# Plots (matplotlib, Agg, no pyplot global state)

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
#: Line styles and markers per model, so curves that coincide stay distinguishable (also in grey print).
_LINES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1))]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _colors(models: Sequence[str]) -> dict:
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)}


def _look(models: Sequence[str]) -> dict:
    return {m: {"color": _PALETTE[i % len(_PALETTE)], "ls": _LINES[i % len(_LINES)],
                "marker": _MARKERS[i % len(_MARKERS)]} for i, m in enumerate(models)}


def _figure(n_panels: int, height: float = 4.25, width_per: float = 4.1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(1, n_panels) * width_per, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, max(1, n_panels), squeeze=False)[0]
    return fig, list(axes)


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10.5, loc="left")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)


def _set_title(ev: dict, s: str) -> str:
    sm = ev["sets"][s]["summary"]
    return f"{s} (n = {sm['lesions']}, {sm['positives']} pos.)"


def _offsets(curves: dict, scale: float) -> dict:
    """A small offset for every curve that (nearly) coincides with an earlier one, so both stay
    visible: curves compared on a common x grid (step-wise, as ROC and net-benefit curves are)."""
    grid = np.linspace(0.0, 1.0, 201)
    sampled = {}
    for m, (x, y) in curves.items():
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        order = np.argsort(x, kind="mergesort")
        xs, ys = x[order], y[order]
        idx = np.clip(np.searchsorted(xs, grid, side="right") - 1, 0, max(xs.size - 1, 0))
        sampled[m] = ys[idx] if xs.size else np.zeros_like(grid)
    out: dict = {}
    done: list = []
    for m in curves:
        k = sum(1 for o in done if np.nanmax(np.abs(sampled[o] - sampled[m])) < 0.02)
        out[m] = k * scale
        done.append(m)
    return out


def _auc_label(m: str, a: dict) -> str:
    if a.get("ci_not_estimable"):
        return f"{m}: {a['auc']:.3f} (CI n.e.)"
    return f"{m}: {a['auc']:.3f} ({a['ci95'][0]:.3f}-{a['ci95'][1]:.3f})"


def _plot_roc(ev: dict, look: dict):
    sets = ev["set_order"]
    fig, axes = _figure(len(sets))
    for ax, s in zip(axes, sets):
        ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8)
        res = ev["sets"][s]["models"]
        curves = {m: (res[m]["roc"]["fpr"], res[m]["roc"]["tpr"]) for m in ev["models"] if m in res}
        off = _offsets(curves, 0.012)
        for m, (x, y) in curves.items():
            r, lk, o = res[m], look[m], off[m]
            ax.plot(np.asarray(x) + o, np.asarray(y) - o, color=lk["color"], ls=lk["ls"], lw=1.8,
                    label=_auc_label(m, r["auc"]) + (" (offset: coincides)" if o else ""))
            c = r["classification"]
            sens, spec = c["sensitivity"]["value"], c["specificity"]["value"]
            if sens is not None and spec is not None:
                ax.plot([1 - spec + o], [sens - o], marker=lk["marker"], ms=6, color=lk["color"], mec="white",
                        mew=0.8, ls="none")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        _style(ax, _set_title(ev, s), "1 - specificity", "Sensitivity")
        ax.legend(loc="lower right", fontsize=7, title="AUC (95% CI)", title_fontsize=7, frameon=True,
                  framealpha=0.9)
    return fig


def _plot_calibration(ev: dict, look: dict):
    sets = ev["set_order"]
    fig, axes = _figure(len(sets))
    for ax, s in zip(axes, sets):
        ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8, label="ideal")
        res = ev["sets"][s]["models"]
        curves = {m: (res[m]["calibration"]["curve"]["mean_predicted"], res[m]["calibration"]["curve"]["observed"])
                  for m in ev["models"] if m in res}
        off = _offsets(curves, 0.012)
        for m, (x, yv) in curves.items():
            cal, lk, o = res[m]["calibration"], look[m], off[m]
            ax.plot(np.asarray(x, dtype=float) + o, np.asarray(yv, dtype=float) - o, color=lk["color"], ls=lk["ls"],
                    lw=1.5, marker=lk["marker"], ms=4.5, mec="white", mew=0.7, alpha=0.95,
                    label=f"{m} (Brier {cal['brier']:.3f})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        bins = ev["sets"][s]["summary"].get("calibration_bins")
        _style(ax, _set_title(ev, s) + (f", {bins} group(s)" if bins else ""), "Mean predicted probability",
               "Observed fraction positive")
        ax.legend(loc="upper left", fontsize=7, frameon=True, framealpha=0.9)
    return fig


def _plot_dca(ev: dict, look: dict, plot_range=DCA_PLOT_RANGE):
    sets = ev["set_order"]
    lo, hi = float(plot_range[0]), float(plot_range[1])
    fig, axes = _figure(len(sets))
    for ax, s in zip(axes, sets):
        res = ev["sets"][s]["models"]
        first = res[next(m for m in ev["models"] if m in res)]["dca"]
        t = np.asarray(first["threshold"], dtype=float)
        keep = (t >= lo) & (t <= hi)
        prev = float(first["prevalence"])
        ta = np.asarray([np.nan if v is None else v for v in first["treat_all"]], dtype=float)
        ax.plot(t[keep], ta[keep], color="#7f7f7f", lw=1.4, label="Treat all")
        ax.plot(t[keep], np.zeros(int(keep.sum())), color="#000000", lw=1.0, label="Treat none")
        curves = {m: (np.asarray(res[m]["dca"]["threshold"])[keep], np.asarray(res[m]["dca"]["net_benefit"])[keep])
                  for m in ev["models"] if m in res}
        off = _offsets(curves, 0.006)
        for m, (x, y) in curves.items():
            lk = look[m]
            ax.plot(x, y + off[m], color=lk["color"], ls=lk["ls"], lw=1.8, label=m)
        top = prev * 1.15 + 0.02
        # treat-all falls below 0 after pt = prevalence; keep it visible down to -prevalence/2
        ax.set_ylim(-max(0.05, 0.5 * prev), top)
        ax.set_xlim(lo, hi)
        _style(ax, _set_title(ev, s), "Threshold probability", "Net benefit")
        ax.legend(loc="upper right", fontsize=7, frameon=True, framealpha=0.9)
    return fig


def _feature_value(f: dict) -> tuple[float | None, str]:
    if f.get("coefficient") is not None:
        return float(f["coefficient"]), "coefficient"
    if f.get("importance") is not None:
        return float(f["importance"]), "importance"
    return None, ""


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "..."


def _plot_features(name: str, feats: list[dict], color: str, top: int = 25):
    vals = [(str(f.get("name", "?")), *_feature_value(f)) for f in feats]
    vals = [v for v in vals if v[1] is not None and np.isfinite(v[1])]
    if not vals:
        return None
    vals.sort(key=lambda v: abs(v[1]), reverse=True)
    vals = vals[:top][::-1]
    kind = vals[0][2]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.6, 0.75 + 0.24 * len(vals)), dpi=110, layout="constrained")
    ax = fig.subplots()
    x = [v[1] for v in vals]
    cols = [color if v >= 0 else "#888888" for v in x]
    ax.barh(range(len(vals)), x, color=cols, height=0.7)
    ax.set_yticks(range(len(vals)))
    ax.set_yticklabels([_short(v[0], 60) for v in vals], fontsize=7.5)
    ax.set_ylim(-0.6, len(vals) - 0.4)
    ax.axvline(0, color="#333333", lw=0.8)
    _style(ax, f"{name}: {kind}s" + (f" (top {top} by magnitude)" if len(feats) > top else ""), kind, "")
    ax.grid(True, axis="x", color="#e5e5e5", linewidth=0.6)
    ax.grid(False, axis="y")
    return fig


def feature_class(name: str) -> str:
    """The pyradiomics feature class of an extracted feature name
    ``<sequence>_<image type>_<class>_<feature>`` (e.g. ``t1_wavelet-LLH_glcm_Contrast`` -> glcm)."""
    parts = str(name).split("_")
    return parts[2] if len(parts) >= 4 else "other"


def _plot_icc(agreement: dict):
    classes = agreement["classes"]
    names = list(classes)
    kinds = [k for k in ("inter", "intra") if any(classes[c].get(k) for c in names)]
    if not names or not kinds:
        return None
    fig, axes = _figure(1, height=3.8, width_per=max(5.5, 0.9 * len(names) + 1.5))
    ax = axes[0]
    width = 0.36
    colors = {"inter": "#1f77b4", "intra": "#ff7f0e"}
    for j, k in enumerate(kinds):
        data = [np.asarray(classes[c].get(k) or [np.nan], dtype=float) for c in names]
        data = [d[np.isfinite(d)] if np.isfinite(d).any() else np.asarray([np.nan]) for d in data]
        pos = np.arange(len(names)) + (j - (len(kinds) - 1) / 2) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, showfliers=True,
                        flierprops={"markersize": 2, "alpha": 0.4})
        for b in bp["boxes"]:
            b.set_facecolor(colors[k])
            b.set_alpha(0.55)
        ax.plot([], [], color=colors[k], lw=6, alpha=0.55,
                label={"inter": "inter-reader (reader 1 vs 2)", "intra": "intra-reader (repeat)"}[k])
    thr = agreement.get("threshold")
    if thr is not None:
        ax.axhline(float(thr), color="#9b1c1c", ls="--", lw=1, label=f"threshold {float(thr):.2f}")
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels([f"{c}\n(n={classes[c]['n']})" for c in names], fontsize=7.5)
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.02)
    _style(ax, "Reader agreement per feature class", "", "ICC")
    ax.legend(loc="lower left", fontsize=7, frameon=True, framealpha=0.9)
    return fig


def _plot_funnel(steps: list[dict]):
    if not steps:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.6, 0.6 + 0.42 * len(steps)), dpi=110, layout="constrained")
    ax = fig.subplots()
    n = [s["features"] for s in steps][::-1]
    labels = [s["label"] for s in steps][::-1]
    ax.barh(range(len(n)), n, color="#1f4e79", height=0.6)
    ax.set_xscale("log")
    for i, v in enumerate(n):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_yticks(range(len(n)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(0.8, max(n) * 3)
    _style(ax, "Feature selection funnel (training lesions only)", "features kept (log scale)", "")
    ax.grid(False, axis="y")
    return fig


def _plot_lasso(path: dict):
    """Coefficient path and CV curve over log10(C) (or lambda) from the bundle's record."""
    try:
        cs = np.asarray(path["C"], dtype=float)
        coefs = {str(k): np.asarray(v, dtype=float) for k, v in path["coefficients"].items()}
        mean = np.asarray(path["cv_mean"], dtype=float)
        se = np.asarray(path.get("cv_se") or np.zeros_like(mean), dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if cs.size < 2 or mean.size != cs.size or any(v.size != cs.size for v in coefs.values()):
        return None
    fig, (a1, a2) = _figure(2, height=3.6, width_per=4.6)
    x = np.log10(cs)
    chosen = path.get("chosen_C")
    # name the (at most 6) features with the largest |coefficient| at the chosen C
    at = int(np.argmin(np.abs(cs - float(chosen)))) if chosen else len(cs) - 1
    named = sorted(coefs, key=lambda k: -abs(coefs[k][at]))[:6]
    named = [k for k in named if coefs[k][at] != 0]
    for k, v in coefs.items():          # the others in grey, behind
        if k not in named:
            a1.plot(x, v, lw=0.8, color="#b0b0b0", zorder=1)
    for i, k in enumerate(named):
        a1.plot(x, coefs[k], lw=1.5, color=f"C{i}", zorder=2, label=k if len(k) <= 48 else k[:45] + "...")
    if named:
        a1.legend(fontsize=6, loc="best", frameon=False)
    for ax in (a1, a2):
        if chosen:
            ax.axvline(math.log10(float(chosen)), color="#9b1c1c", ls="--", lw=1)
    _style(a1, "LASSO coefficient path", "log10 C (inverse penalty)", "coefficient")
    a2.errorbar(x, mean, yerr=se, fmt="o-", ms=3, lw=1, color="#1f4e79", ecolor="#999999")
    _style(a2, "Cross-validation curve", "log10 C", str(path.get("cv_metric", "CV score")))
    return fig


# ---------------------------------------------------------------------------------------
# The page (ClinicalMRICommonLib.report: one template and stylesheet for the extension)

_DEF_LABELS = {"unit": "Unit of analysis", "auc": "AUC and CI", "delong": "DeLong test", "threshold": "Threshold",
               "proportions": "Proportions", "calibration_curve": "Calibration curve", "brier": "Brier score",
               "calibration_slope": "Calibration slope", "calibration_intercept": "Calibration intercept",
               "hosmer_lemeshow": "Hosmer-Lemeshow", "dca": "Decision curve",
               "not_estimable_auc_ci": "Not estimable: AUC CI", "not_estimable_calibration":
               "Not estimable: calibration", "not_estimable_groups": "Calibration groups"}


def _check_evaluation(ev) -> None:
    if not isinstance(ev, Mapping):
        raise UserError("evaluation must be the dict returned by evaluate_models()")
    for k in ("models", "set_order", "sets"):
        if k not in ev:
            raise UserError(f"evaluation lacks '{k}'; build it with evaluate_models()")
    for s in ev["set_order"]:
        if s not in ev["sets"]:
            raise UserError(f"evaluation lists set '{s}' in set_order but has no results for it")
        res = ev["sets"][s].get("models", {})
        gone = ev["sets"][s].get("unavailable", {}) or {}
        for m in ev["models"]:
            if m not in res and m not in gone:
                raise UserError(f"evaluation has no results for model '{m}' in set '{s}'")


def _f(x, d: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _p(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ne(reason: str):
    from ClinicalMRICommonLib.report import Cell

    return Cell("not estimable", muted=True, title=reason, sub=reason)


def _auc_cell(a: dict):
    from ClinicalMRICommonLib.report import Cell

    if a.get("ci_not_estimable"):
        return Cell(a["auc"], digits=3, ci="(CI not estimable)", title=a["ci_not_estimable"])
    return Cell(a["auc"], digits=3, ci=a["ci95"])


def _na(reason: str):
    from ClinicalMRICommonLib.report import Cell

    return Cell("not available", muted=True, sub=reason, title=reason)


def _prop_cell(pr: dict):
    from ClinicalMRICommonLib.report import Cell

    return Cell(pr["value"], ci=pr["ci95"], pct=True, sub=f"{pr['numerator']}/{pr['denominator']}")


def _model_cell(m: str, look: dict):
    from ClinicalMRICommonLib.report import Cell

    return Cell(m, bold=True, color=look[m]["color"])


def evaluation_title(ev: Mapping) -> str:
    title = ev.get("title") or "HRMMPredict — model evaluation"
    if (ev.get("data_source") or {}).get("synthetic") and "synthetic" not in title.lower():
        title += " — SYNTHETIC DATA"
    return title


def build_report(ev: dict):
    """The evaluation page as a :class:`ClinicalMRICommonLib.report.Report`."""
    from ClinicalMRICommonLib.report import Cell, Report

    models, sets = ev["models"], ev["set_order"]
    look = _look(models)
    src = ev.get("data_source") or {}
    rep = Report(evaluation_title(ev),
                 subtitle=f"Models: {', '.join(models)} · sets: {', '.join(sets)}",
                 footer="Generated by HRMMPredictLib.evaluation.report. The numbers are in metrics.json beside "
                        "this page. Research use only.")
    if src.get("synthetic"):
        rep.banner("warning", "SYNTHETIC DATA: these models were trained and evaluated on generated images "
                              f"({src.get('text', 'synthetic cohort')}). The numbers show the pipeline working; "
                              "they say nothing about clinical accuracy.")
    rep.banner("info", "Research use only: not a medical device, not for diagnosis or treatment decisions.")
    for w in ev.get("warnings") or []:
        rep.top.warning(w)

    # summary
    s = rep.section("summary", "Summary")
    src_txt = src.get("text") or "not recorded"
    s.text(f"Data source: {src_txt}.", lead="SYNTHETIC DATA." if src.get("synthetic") else None)
    hdr = ["Set", "What the probabilities are", "Lesions", "Positive"] + [f"AUC {m}" for m in models]
    rows = []
    for name in sets:
        blk = ev["sets"][name]
        sm = blk["summary"]
        r = [name, sm.get("description") or "", sm["lesions"], f"{sm['positives']} ({100 * sm['prevalence']:.0f}%)"]
        for m in models:
            r.append(_auc_cell(blk["models"][m]["auc"]) if m in blk["models"] else _na(blk["unavailable"][m]))
        rows.append(r)
    s.table(hdr, rows, num_cols=range(2, len(hdr)))
    if "thresholds" in ev:
        s.text("Decision thresholds fixed on the training set: "
               + ", ".join(f"{m} {_f(ev['thresholds'][m], 3)}" for m in models) + ".", muted=True)
    shown = " ".join(ev.get("warnings") or [])
    for note in ev.get("probability_notes") or []:
        if note not in shown:
            s.note(note, lead="Coarse probabilities:")

    # model card + checklist
    card = ev.get("model_card")
    if card:
        c = rep.section("model-card", "Model card")
        for key, label in (("intended_use", "Intended use."), ("population", "Population."),
                           ("data_source", "Data source."), ("outcome", "Outcome.")):
            if card.get(key):
                c.text(card[key], lead=label)
        if card.get("sizes"):
            c.heading("Sizes")
            c.table(["Split", "Patients", "Lesions", "Positive", "Negative"],
                    [[r.get("split"), r.get("patients"), r.get("lesions"), r.get("positives"), r.get("negatives")]
                     for r in card["sizes"]], num_cols=[1, 2, 3, 4])
        if card.get("fitted"):
            c.heading("What was fitted on what")
            c.table(["Model", "Kind", "Fitted on", "Threshold", "Out-of-fold (cross-validated) estimate"],
                    [[f["model"], f["kind"], f["fitted_on"], f["threshold_rule"], f["cv"]] for f in card["fitted"]])
        if card.get("limitations"):
            c.heading("Limitations")
            c.bullets(card["limitations"])
        c.note("Research use only. Not a medical device; not validated for clinical decisions.", kind="warning")
    checklist = ev.get("checklist")
    if checklist:
        c = rep.section("checklist", "Reporting checklist (TRIPOD+AI style)")
        c.table(["Item", "Status", "Where / what"],
                [[i["item"], Cell(i["status"], bold=i["status"] != "reported"), i["where"]] for i in checklist])

    # cohort
    if ev.get("cohort"):
        rows_in = list(ev["cohort"])
        keys: list = []
        for r in rows_in:
            keys.extend(k for k in r if k not in keys)
        hdr = [k.replace("_", " ").capitalize() for k in keys]
        add_pct = "positives" in keys and ("lesions" in keys or "negatives" in keys)
        if add_pct:
            hdr.append("% positive")
        rows = []
        for r in rows_in:
            row = [r.get(k, "") for k in keys]
            if add_pct:
                tot = r.get("lesions") or (r.get("positives", 0) + r.get("negatives", 0))
                row.append(f"{100 * r['positives'] / tot:.1f}%" if tot else "–")
            rows.append(row)
        numeric = [i for i, k in enumerate(keys) if all(isinstance(r.get(k), (int, float)) for r in rows_in)]
        rep.section("cohort", "Cohort").table(hdr, rows, num_cols=numeric + ([len(keys)] if add_pct else []))

    # ROC
    r_ = rep.section("roc", "Discrimination: ROC curves")
    r_.figure(_plot_roc(ev, look), alt="ROC curves",
              caption="ROC curve of each model per set (line style and marker per model; a curve identical to an "
                      "earlier one is drawn with a small offset and says so in the legend); legend: AUC with DeLong "
                      "95% CI (n.e.: not estimable). Markers: the operating point at the training threshold.")

    # metrics and confusion tables
    mt = rep.section("metrics", "Metrics at the training threshold")
    hdr = ["Set", "Model", "AUC (95% CI)", "Threshold", "Sensitivity", "Specificity", "Accuracy", "PPV", "NPV"]
    rows = []
    for name in sets:
        blk = ev["sets"][name]
        for m in models:
            if m not in blk["models"]:
                rows.append([name, _model_cell(m, look), _na(blk["unavailable"][m]), "", "", "", "", "", ""])
                continue
            r = blk["models"][m]
            c = r["classification"]
            rows.append([name, _model_cell(m, look), _auc_cell(r["auc"]), Cell(r["threshold"], digits=3),
                         _prop_cell(c["sensitivity"]), _prop_cell(c["specificity"]), _prop_cell(c["accuracy"]),
                         _prop_cell(c["ppv"]), _prop_cell(c["npv"])])
    mt.table(hdr, rows, num_cols=range(2, len(hdr)))
    mt.text("Proportions with Wilson 95% CIs; small numbers are counts (numerator/denominator). Positive if "
            "predicted probability >= threshold.", muted=True)
    mt.heading("Confusion tables", detail="(at the stored threshold)")
    conf = mt.columns(1)[0]
    for name in sets:
        blk = ev["sets"][name]
        for m in models:
            if m not in blk["models"]:
                continue
            k = blk["models"][m]["classification"]["counts"]
            tp, fp, tn, fn = k["tp"], k["fp"], k["tn"], k["fn"]
            conf.table(["", "Predicted +", "Predicted −", "Total"],
                       [["Observed +", tp, fn, tp + fn], ["Observed −", fp, tn, fp + tn],
                        ["Total", tp + fp, fn + tn, tp + fp + tn + fn]],
                       num_cols=[1, 2, 3], caption=f"{name} · {m}", compact=True)

    # calibration
    cb = rep.section("calibration", "Calibration")
    cb.figure(_plot_calibration(ev, look), alt="Calibration curves",
              caption="Observed fraction of positives against mean predicted probability in the quantile groups "
                      "that the Hosmer-Lemeshow test uses (about 10 lesions or more each). Points on the dashed "
                      "line are perfectly calibrated; each group's Wilson 95% CI is in metrics.json.")
    hdr = ["Set", "Model", "Brier", "Slope (95% CI)", "Intercept, CITL (95% CI)", "Groups",
           "Hosmer-Lemeshow χ²", "df", "p"]
    rows = []
    for name in sets:
        blk = ev["sets"][name]
        for m in models:
            if m not in blk["models"]:
                continue
            cal = blk["models"][m]["calibration"]
            rec, hl = cal["recalibration"], cal["hosmer_lemeshow"]
            if rec.get("not_estimable"):
                sl = ic = _ne(rec["not_estimable"])
            else:
                sl = Cell(rec["slope"], digits=2, ci=rec["slope_ci95"])
                ic = Cell(rec["intercept"], digits=2, ci=rec["intercept_ci95"])
            groups = len(cal["curve"]["n"])
            if hl.get("not_estimable"):
                hls = [_ne(hl["not_estimable"]), "", ""]
            else:
                hls = [Cell(hl["chi2"], digits=2), hl["df"], _p(hl["p"])]
            rows.append([name, _model_cell(m, look), Cell(cal["brier"], digits=3), sl, ic, groups, *hls])
    cb.table(hdr, rows, num_cols=range(2, len(hdr)))
    cb.text(ESTIMABILITY_RULES["calibration"] + " " + ESTIMABILITY_RULES["groups"], muted=True)

    # DCA
    lo, hi = (ev.get("options") or {}).get("dca_plot_range") or DCA_PLOT_RANGE
    rep.section("dca", "Clinical usefulness: decision curves").figure(
        _plot_dca(ev, look, (lo, hi)), alt="Decision curves",
        caption=f"Net benefit against threshold probability from {100 * lo:.0f}% to {100 * hi:.0f}% (the range in "
                "which one would act on a high-risk prediction; the full 0-99% grid is in metrics.json). A model "
                "is useful where its curve lies above both treat-all (grey) and treat-none (black).")

    # DeLong
    dl = rep.section("delong", "Comparison of AUCs (paired DeLong test)")
    rows = []
    for name in sets:
        for d in ev["sets"][name]["delong"]:
            pair = f"{d['model_a']} vs {d['model_b']}"
            if d.get("not_estimable"):
                rows.append([name, pair, Cell(d["auc_a"], digits=3), Cell(d["auc_b"], digits=3),
                             _ne(d["not_estimable"]), "", "", ""])
                continue
            rows.append([name, pair, Cell(d["auc_a"], digits=3), Cell(d["auc_b"], digits=3),
                         Cell(d["diff"], digits=3, ci=d["diff_ci95"]), Cell(d["z"], digits=2),
                         Cell(_p(d["p"]), bold=d["p"] is not None and d["p"] < 0.05), _p(d.get("p_holm"))])
    if rows:
        n_tests = sum(1 for name in sets for d in ev["sets"][name]["delong"] if not d.get("not_estimable"))
        dl.table(["Set", "Comparison", "AUC A", "AUC B", "Difference (95% CI)", "Z", "p", "p (Holm, per set)"],
                 rows, num_cols=range(2, 8))
        dl.note(f"Multiplicity: this table holds {n_tests} estimable test(s). The p column is unadjusted (bold "
                f"where p < 0.05): with {n_tests} tests at the 0.05 level about {0.05 * n_tests:.1f} false "
                "positive(s) are expected by chance alone. The Holm column adjusts within each set; sets share "
                "lesions (apparent and cross-validated training), so they are not independent either. "
                "Difference = AUC A − AUC B.")
        dl.text(ESTIMABILITY_RULES["auc_ci"], muted=True)
    else:
        dl.text("Only one model: no comparison.", muted=True)

    # features, funnel, reader agreement, LASSO
    if ev.get("features") or ev.get("selection") or ev.get("reader_agreement"):
        ft = rep.section("features", "Features and their selection")
        sel = ev.get("selection") or {}
        for fam, steps in (sel.get("funnels") or {}).items():
            ft.heading(f"Selection funnel: {fam}")
            fig = _plot_funnel(steps)
            cols = ft.columns(2)
            if fig is not None:
                cols[0].figure(fig, alt=f"{fam} selection funnel",
                               caption="Features kept after each step, fitted on the training lesions only.")
            cols[1].table(["Step", "Features kept"], [[s_["label"], s_["features"]] for s_ in steps], num_cols=[1])
            for miss in sel.get("not_recorded", {}).get(fam, []):
                cols[1].text(miss, muted=True)
        ra = ev.get("reader_agreement")
        if ra:
            ft.heading("Reader agreement (ICC) per feature class")
            fig = _plot_icc(ra)
            if fig is not None:
                ft.figure(fig, alt="ICC per feature class",
                          caption=f"{ra.get('form', 'ICC')} of every extracted feature between reader 1 and reader "
                                  "2 (inter) and reader 1's repeat (intra) on the training lesions; features below "
                                  "the threshold are removed.")
            ft.table(["Class", "Features", "Median inter", "Median intra", "Kept"],
                     [[k, v["n"], Cell(v.get("inter_median"), digits=3), Cell(v.get("intra_median"), digits=3),
                       v.get("kept", "–")] for k, v in ra["classes"].items()], num_cols=[1, 2, 3, 4])
        lasso = sel.get("lasso") or {}
        if lasso.get("path"):
            fig = _plot_lasso(lasso["path"])
            if fig is not None:
                ft.heading("LASSO")
                ft.figure(fig, alt="LASSO path", caption="Coefficient path and cross-validation curve; the dashed "
                                                         "line marks the chosen penalty.")
        elif lasso.get("missing"):
            ft.note(lasso["missing"], lead="LASSO path:")
        for m, feats in (ev.get("features") or {}).items():
            feats = list(feats or [])
            ft.heading(f"Selected features: {m}", detail=f"({len(feats)} features)")
            ranked = sorted(feats, key=lambda f: -abs(_feature_value(f)[0] or 0.0))
            rows = []
            for i, f in enumerate(ranked, 1):
                v, kind = _feature_value(f)
                rows.append([i, Cell(f.get("name", "?"), code=True), kind or "–", Cell(v, digits=4)])
            cols = ft.columns(2)
            fig = _plot_features(str(m), feats, look.get(m, {"color": _PALETTE[0]})["color"])
            if fig is not None:
                cols[0].figure(fig, alt=f"{m} features", caption="Coefficients (on standardised features) or "
                                                                 "importances; grey bars are negative coefficients.")
            cols[1].table(["#", "Feature", "Kind", "Value"], rows, num_cols=[0, 3])

    # settings and versions
    if ev.get("settings") or ev.get("versions"):
        st = rep.section("settings", "Settings and versions")
        cols = st.columns(2)
        if ev.get("settings"):
            cols[0].heading("Settings")
            cols[0].kv(ev["settings"])
        if ev.get("versions"):
            cols[1].heading("Versions")
            cols[1].kv(ev["versions"], ("Component", "Version"))

    defs = ev.get("definitions") or DEFINITIONS
    rep.section("methods", "Methods").definitions(
        {_DEF_LABELS.get(k, k.replace("_", " ").capitalize()): v for k, v in defs.items()})
    return rep


def write_evaluation_report(out_dir: str | Path, evaluation: dict) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/metrics.json`` (each atomically) and return
    the path of index.html.

    ``evaluation``: the dict of :func:`evaluate_models`, optionally with ``features``
    (model -> [{"name", "coefficient" or "importance"}]), ``cohort`` (rows with split,
    patients, lesions, positives, negatives), ``settings``, ``versions``, ``title``,
    ``data_source`` ({"text", "synthetic"}), ``model_card``, ``checklist``, ``selection``,
    ``reader_agreement`` and ``probability_notes`` (see :mod:`.evaluate`).
    """
    _check_evaluation(evaluation)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"report folder {out} exists and is a file; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create report folder {out} ({exc.strerror or exc})") from None
    clean = json_safe(dict(evaluation))
    page = build_report(clean).render()
    write_text_atomic(out / "metrics.json", json.dumps(clean, indent=1, allow_nan=False) + "\n")
    index = out / "index.html"
    write_text_atomic(index, page)
    _readable(out / "metrics.json", index)
    return index


def _readable(*paths: Path) -> None:
    """Temporary files are created private (0600); a report is meant to be shared, so give it
    the permissions of an ordinary new file (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in paths:
        try:
            os.chmod(p, 0o666 & ~mask)
        except OSError:
            pass
