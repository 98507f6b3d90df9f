"""Model evaluation across cohorts and its human-readable report.

:func:`evaluate_models` computes, for every set (training, validation, external ...) and
every model, the statistics of :mod:`HRMMPredictLib.evaluation.stats`: AUC with DeLong CI and ROC
points, classification metrics at the threshold fixed on training data (Wilson CIs),
calibration (reliability curve, Brier, slope, calibration-in-the-large, Hosmer-Lemeshow)
and the decision curve; and per set the paired DeLong test for every pair of models.

:func:`write_evaluation_report` writes ``index.html`` (one self-contained file: PNG plots
embedded as base64, inline CSS, no scripts, no network resources) and ``metrics.json``
(the same numbers, strict JSON with null for undefined values), each atomically.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import itertools
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe, write_text_atomic

from . import stats

__all__ = ["evaluate_models", "thresholds_from_training", "write_evaluation_report", "DEFINITIONS"]

REQUIRED_COLUMNS = ("label", "patient_id", "lesion_id")

DEFINITIONS = {
    "unit": "Every statistic is computed per lesion (one row per lesion). Lesions of one patient are "
            "not independent, so confidence intervals can be too narrow when patients contribute several.",
    "auc": "ROC AUC; 95% CI = AUC +/- 1.96 SE from the DeLong variance (midranks for ties), clipped to "
           "[0, 1] as in R pROC.",
    "delong": "Paired DeLong test of AUC(A) - AUC(B) on the same lesions: Z, two-sided p, 95% CI of the "
              "difference.",
    "threshold": "Positive if predicted probability >= threshold. Each model's threshold was fixed on "
                 "training data (Youden J) and is not re-optimised on any other set.",
    "proportions": "Sensitivity, specificity, accuracy, PPV and NPV with Wilson score 95% CIs.",
    "calibration_curve": "Observed fraction of positives against mean predicted probability in bins at the "
                         "quantiles of the predictions (duplicates removed), each with a Wilson 95% CI.",
    "brier": "Brier score: mean of (p - y)^2 (0 is perfect; 0.25 is an uninformative 0.5 prediction).",
    "calibration_slope": "Slope b of the logistic recalibration logit(P(y=1)) = a + b logit(p) (ideal 1; "
                         "below 1: predictions too extreme).",
    "calibration_intercept": "Calibration-in-the-large: a with b fixed at 1, logit(p) as offset (ideal 0; "
                             "above 0: risks under-estimated). p clipped to [1e-8, 1-1e-8].",
    "hosmer_lemeshow": "Hosmer-Lemeshow test with R ResourceSelection hoslem.test grouping (quantile cut "
                       "points, unique breaks), df = realised groups - 2.",
    "dca": "Net benefit NB = TP/n - FP/n * pt/(1-pt), treating when predicted risk >= pt; treat-all and "
           "treat-none for reference (R dcurves conventions).",
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
        return {"error": str(exc)}


def thresholds_from_training(train, models: Sequence[str]) -> dict:
    """Youden threshold of each model fitted on a TRAINING set frame (label + model columns)."""
    y, probs = _check_set("training", train, list(models))
    return {m: stats.youden_threshold(y, probs[m], name=f"training model '{m}'")["threshold"] for m in models}


def evaluate_models(sets: Mapping[str, "object"], models: Sequence[str], thresholds: Mapping[str, float], *,
                    dca_thresholds: Iterable[float] | None = None, calibration_bins: int | None = None,
                    calibration_strategy: str = "quantile", hl_groups: int = 10) -> dict:
    """Every statistic for every set and model.

    ``sets``: set name -> DataFrame with ``label`` (0/1), ``patient_id``, ``lesion_id`` and one
    probability column per model. ``thresholds``: model -> threshold fixed on training data.
    Returns a JSON-ready dict ``{"models", "thresholds", "set_order", "sets": {name: {"summary",
    "models": {model: {...}}, "delong": [...]}}, "checks", "options", "definitions"}``.
    Calibration slope/intercept and Hosmer-Lemeshow that are undefined for a set (perfect
    separation, too few distinct predictions) carry ``{"error": reason}`` instead.
    ``calibration_bins=None`` picks about 10 lesions per reliability bin (3 to 10 bins), so
    small validation sets do not show 10 bins of 5 lesions each.
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

    out_sets: dict = {}
    patients: dict[str, set] = {}
    lesions: dict[str, set] = {}
    for name, df in sets.items():
        name = str(name)
        y, probs = _check_set(name, df, models)
        pid = df["patient_id"].astype(str)
        patients[name] = set(pid)
        lesions[name] = set(zip(pid, df["lesion_id"].astype(str)))
        per_patient = pid.value_counts()
        summary = {"lesions": int(y.size), "patients": int(pid.nunique()), "positives": int(y.sum()),
                   "negatives": int(y.size - y.sum()), "prevalence": float(y.mean()),
                   "max_lesions_per_patient": int(per_patient.max())}
        bins = int(calibration_bins) if calibration_bins else int(min(10, max(3, y.size // 10)))
        summary["calibration_bins"] = bins
        res_models = {}
        for m in models:
            p = probs[m]
            try:
                label = f"set '{name}' model '{m}'"
                res_models[m] = {
                    "auc": stats.roc_auc_delong(y, p, name=label),
                    "roc": stats.roc_curve_points(y, p, name=label),
                    "threshold": thr[m],
                    "classification": stats.classification_metrics(y, p, thr[m], name=label),
                    "calibration": {
                        "curve": stats.calibration_curve(y, p, bins, calibration_strategy, name=label),
                        "brier": stats.brier_score(y, p, name=label),
                        "recalibration": _optional(stats.calibration_slope_intercept, y, p, name=label),
                        "hosmer_lemeshow": _optional(stats.hosmer_lemeshow, y, p, hl_groups, name=label),
                    },
                    "dca": stats.decision_curve(y, p, grid, name=label),
                }
            except UserError as exc:
                msg = str(exc)
                raise UserError(msg if msg.startswith("set '") else f"set '{name}' model '{m}': {msg}") from None
        delong = []
        for a, b in itertools.combinations(models, 2):
            r = stats.delong_paired(y, probs[a], probs[b], names=(f"set '{name}' model '{a}'",
                                                                  f"set '{name}' model '{b}'"))
            delong.append({"model_a": a, "model_b": b, **r})
        out_sets[name] = {"summary": summary, "models": res_models, "delong": delong}

    overlap = {}
    for a, b in itertools.combinations(list(patients), 2):
        if lesions[a] == lesions[b]:
            continue  # the same lesions scored two ways (e.g. apparent and cross-validated): not a leak
        common = sorted(patients[a] & patients[b])
        if common:
            overlap[f"{a} & {b}"] = common
    return json_safe({
        "models": models,
        "thresholds": thr,
        "set_order": list(out_sets),
        "sets": out_sets,
        "checks": {"patients_in_several_sets": overlap},
        "options": {"calibration_bins": calibration_bins, "calibration_strategy": calibration_strategy,
                    "hosmer_lemeshow_groups": int(hl_groups), "dca_thresholds": grid},
        "definitions": dict(DEFINITIONS),
    })


# ---------------------------------------------------------------------------------------
# Plots (matplotlib, Agg, no pyplot global state)

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _colors(models: Sequence[str]) -> dict:
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)}


def _figure(n_panels: int, height: float = 4.0, width_per: float = 4.1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(1, n_panels) * width_per, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, max(1, n_panels), squeeze=False)[0]
    return fig, list(axes)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)


def _set_title(ev: dict, s: str) -> str:
    sm = ev["sets"][s]["summary"]
    return f"{s.capitalize()} (n = {sm['lesions']}, {sm['positives']} positive)"


def _plot_roc(ev: dict, colors: dict) -> str:
    sets = ev["set_order"]
    fig, axes = _figure(len(sets))
    for ax, s in zip(axes, sets):
        ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8)
        for m in ev["models"]:
            r = ev["sets"][s]["models"][m]
            a = r["auc"]
            lab = f"{m}: {a['auc']:.3f} ({a['ci95'][0]:.3f}–{a['ci95'][1]:.3f})"
            ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], color=colors[m], lw=1.8, label=lab, drawstyle="default")
            c = r["classification"]
            sens, spec = c["sensitivity"]["value"], c["specificity"]["value"]
            if sens is not None and spec is not None:
                ax.plot([1 - spec], [sens], marker="o", ms=5, color=colors[m], mec="white", mew=0.8)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        _style(ax, _set_title(ev, s), "1 - specificity", "Sensitivity")
        ax.legend(loc="lower right", fontsize=7.5, title="AUC (95% CI)", title_fontsize=7.5, frameon=True,
                  framealpha=0.9)
    return _png(fig)


def _plot_calibration(ev: dict, colors: dict) -> str:
    sets = ev["set_order"]
    fig, axes = _figure(len(sets))
    for ax, s in zip(axes, sets):
        ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8, label="ideal")
        for m in ev["models"]:
            cal = ev["sets"][s]["models"][m]["calibration"]
            cur = cal["curve"]
            x = np.asarray(cur["mean_predicted"], dtype=float)
            yv = np.asarray(cur["observed"], dtype=float)
            rec = cal["recalibration"]
            slope = f", slope {rec['slope']:.2f}" if rec.get("slope") is not None else ""
            ax.plot(x, yv, color=colors[m], lw=1.5, marker="o", ms=4.5, mec="white", mew=0.7, alpha=0.95,
                    label=f"{m} (Brier {cal['brier']:.3f}{slope})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        bins = ev["sets"][s]["summary"].get("calibration_bins")
        _style(ax, _set_title(ev, s) + (f", {bins} bins" if bins else ""), "Mean predicted probability",
               "Observed fraction positive")
        ax.legend(loc="lower right", fontsize=7.5, frameon=True, framealpha=0.9)
    return _png(fig)


def _plot_dca(ev: dict, colors: dict) -> str:
    sets = ev["set_order"]
    fig, axes = _figure(len(sets))
    for ax, s in zip(axes, sets):
        first = ev["sets"][s]["models"][ev["models"][0]]["dca"]
        t = np.asarray(first["threshold"], dtype=float)
        prev = float(first["prevalence"])
        ta = np.asarray([np.nan if v is None else v for v in first["treat_all"]], dtype=float)
        ax.plot(t, ta, color="#7f7f7f", lw=1.2, label="Treat all")
        ax.plot(t, np.zeros_like(t), color="#000000", lw=1.2, label="Treat none")
        for m in ev["models"]:
            d = ev["sets"][s]["models"][m]["dca"]
            ax.plot(d["threshold"], d["net_benefit"], color=colors[m], lw=1.8, label=m)
        top = prev * 1.15 + 0.01
        ax.set_ylim(-max(0.05, 0.3 * prev), top)
        ax.set_xlim(float(t.min()), float(t.max()))
        _style(ax, _set_title(ev, s), "Threshold probability", "Net benefit")
        ax.legend(loc="upper right", fontsize=7.5, frameon=True, framealpha=0.9)
    return _png(fig)


def _feature_value(f: dict) -> tuple[float | None, str]:
    if f.get("coefficient") is not None:
        return float(f["coefficient"]), "coefficient"
    if f.get("importance") is not None:
        return float(f["importance"]), "importance"
    return None, ""


def _plot_features(name: str, feats: list[dict], color: str, top: int = 25) -> str | None:
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
    return _png(fig)


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------------------------------
# HTML

_CSS = """
:root { --ink:#1d2330; --muted:#5b6472; --line:#d9dee5; --soft:#f4f6f9; --accent:#1f4e79; --warn:#8a5300; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #fff; line-height: 1.45; font-size: 14px; }
main { max-width: 1260px; margin: 0 auto; padding: 28px 32px 48px; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 10px; margin-bottom: 18px; }
h1 { font-size: 24px; margin: 0 0 4px; color: var(--accent); }
h2 { font-size: 18px; margin: 30px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.sub, .muted { color: var(--muted); margin: 2px 0; }
nav { font-size: 13px; margin: 8px 0 0; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td .ci { color: var(--muted); font-size: 12px; }
td .cnt { color: var(--muted); font-size: 11px; display: block; }
figure { margin: 8px 0 18px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; max-width: 980px; }
.note { background: var(--soft); border-left: 4px solid var(--accent); padding: 8px 12px; margin: 10px 0;
        font-size: 13px; }
.warn { background: #fff6e5; border-left: 4px solid #e0a100; color: var(--warn); padding: 8px 12px; margin: 10px 0;
        font-size: 13px; }
.sig { font-weight: 600; }
dl.defs { display: grid; grid-template-columns: 190px 1fr; gap: 4px 14px; font-size: 13px; }
dl.defs dt { font-weight: 600; } dl.defs dd { margin: 0; color: var(--muted); }
.grid2 { display: flex; flex-wrap: wrap; gap: 0 40px; }
code { font-size: 12px; background: var(--soft); padding: 1px 4px; border-radius: 3px; word-break: break-all; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print {
  main { max-width: none; padding: 0; }
  body { font-size: 11px; }
  nav { display: none; }
  h2 { break-after: avoid; }
  figure, table, .note, .warn { break-inside: avoid; }
  tbody tr:nth-child(even) td, th { background: none; }
}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _f(x, d: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _p(p) -> str:
    if p is None:
        return "–"
    return "&lt; 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(ci, d: int = 3, pct: bool = False) -> str:
    if not ci:
        return ""
    if pct:
        return f'<span class="ci">({100 * ci[0]:.1f}–{100 * ci[1]:.1f})</span>'
    sep = " to " if min(ci) < 0 else "–"  # "-0.13–-0.01" would read as a range of negatives badly
    return f'<span class="ci">({_f(ci[0], d)}{sep}{_f(ci[1], d)})</span>'


def _prop_cell(pr: dict) -> str:
    if pr["value"] is None:
        return f'<td class="num">–<span class="cnt">{pr["numerator"]}/{pr["denominator"]}</span></td>'
    return (f'<td class="num">{100 * pr["value"]:.1f}% {_ci(pr["ci95"], pct=True)}'
            f'<span class="cnt">{pr["numerator"]}/{pr["denominator"]}</span></td>')


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], num_cols: Iterable[int] = ()) -> str:
    nums = set(num_cols)
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in nums else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            if isinstance(c, str) and c.startswith("<td"):
                cells.append(c)
            else:
                cells.append(f'<td class="num">{c}</td>' if i in nums else f"<td>{c}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(b64: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _flatten(d, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    if isinstance(d, Mapping):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.extend(_flatten(v, key))
            else:
                out.append((key, v))
    return out


def _val(v) -> str:
    if isinstance(v, (dict, list, tuple)):
        return f"<code>{_e(json.dumps(json_safe(v)))}</code>"
    if isinstance(v, float):
        return _e(f"{v:.6g}")
    return _e(v)


def _kv_table(d: Mapping, headers: Sequence[str] = ("Setting", "Value")) -> str:
    return _table(list(headers), [(f"<code>{_e(k)}</code>", _val(v)) for k, v in _flatten(d)])


_DEF_LABELS = {"unit": "Unit of analysis", "auc": "AUC and CI", "delong": "DeLong test", "threshold": "Threshold",
               "proportions": "Proportions", "calibration_curve": "Calibration curve", "brier": "Brier score",
               "calibration_slope": "Calibration slope", "calibration_intercept": "Calibration intercept",
               "hosmer_lemeshow": "Hosmer-Lemeshow", "dca": "Decision curve"}


def _check_evaluation(ev) -> None:
    if not isinstance(ev, Mapping):
        raise UserError("evaluation must be the dict returned by evaluate_models()")
    for k in ("models", "set_order", "sets"):
        if k not in ev:
            raise UserError(f"evaluation lacks '{k}'; build it with evaluate_models()")
    for s in ev["set_order"]:
        if s not in ev["sets"]:
            raise UserError(f"evaluation lists set '{s}' in set_order but has no results for it")
        for m in ev["models"]:
            if m not in ev["sets"][s].get("models", {}):
                raise UserError(f"evaluation has no results for model '{m}' in set '{s}'")


def _render(ev: dict) -> str:
    models, sets = ev["models"], ev["set_order"]
    colors = _colors(models)
    title = ev.get("title") or "HRMMPredict — model evaluation"
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"]
    sect = [("summary", "Summary"), ("cohort", "Cohort"), ("roc", "ROC"), ("metrics", "Metrics"),
            ("calibration", "Calibration"), ("dca", "Decision curves"), ("delong", "DeLong"),
            ("features", "Features"), ("settings", "Settings"), ("methods", "Methods")]
    has = {"cohort": bool(ev.get("cohort")), "features": bool(ev.get("features")),
           "settings": bool(ev.get("settings") or ev.get("versions"))}
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in sect if has.get(a, True))
    parts.append(f"<header><h1>{_e(title)}</h1><p class='sub'>Models: {_e(', '.join(models))} · "
                 f"sets: {_e(', '.join(sets))} · generated {_e(now)}</p><nav>{nav}</nav></header>")

    # warnings
    overlap = (ev.get("checks") or {}).get("patients_in_several_sets") or {}
    for pair, ids in overlap.items():
        shown = ", ".join(map(str, ids[:10])) + (" …" if len(ids) > 10 else "")
        parts.append(f"<div class='warn'><b>Patient overlap:</b> {len(ids)} patient(s) appear in both "
                     f"{_e(pair)} ({_e(shown)}). Their results are not independent of training.</div>")
    multi = [s for s in sets if ev["sets"][s]["summary"].get("max_lesions_per_patient", 1) > 1]
    if multi:
        parts.append("<div class='note'>Some patients contribute several lesions ("
                     + _e(", ".join(multi)) + "). Statistics are per lesion; confidence intervals assume "
                     "independent lesions and may be too narrow.</div>")

    # summary
    parts.append("<h2 id='summary'>Summary</h2>")
    hdr = ["Set", "Lesions", "Positive"] + [f"AUC {m}" for m in models]
    rows = []
    for s in sets:
        sm = ev["sets"][s]["summary"]
        r = [_e(s), str(sm["lesions"]), f"{sm['positives']} ({100 * sm['prevalence']:.0f}%)"]
        for m in models:
            a = ev["sets"][s]["models"][m]["auc"]
            r.append(f"{_f(a['auc'])} {_ci(a['ci95'])}")
        rows.append(r)
    parts.append(_table(hdr, rows, num_cols=range(1, len(hdr))))
    thr_txt = ", ".join(f"{_e(m)} {_f(ev['thresholds'][m], 3)}" for m in models) if "thresholds" in ev else ""
    if thr_txt:
        parts.append(f"<p class='muted'>Decision thresholds fixed on the training set: {thr_txt}.</p>")

    # cohort
    if ev.get("cohort"):
        rows_in = list(ev["cohort"])
        keys = []
        for r in rows_in:
            keys.extend(k for k in r if k not in keys)
        hdr = [k.replace("_", " ").capitalize() for k in keys]
        add_pct = "positives" in keys and ("lesions" in keys or "negatives" in keys)
        if add_pct:
            hdr.append("% positive")
        rows = []
        for r in rows_in:
            row = [_e(r.get(k, "")) for k in keys]
            if add_pct:
                tot = r.get("lesions") or (r.get("positives", 0) + r.get("negatives", 0))
                row.append(f"{100 * r['positives'] / tot:.1f}%" if tot else "–")
            rows.append(row)
        numeric = [i for i, k in enumerate(keys) if all(isinstance(r.get(k), (int, float)) for r in rows_in)]
        parts.append("<h2 id='cohort'>Cohort</h2>" + _table(hdr, rows, num_cols=numeric + ([len(keys)] if add_pct
                                                                                             else [])))

    # ROC
    parts.append("<h2 id='roc'>Discrimination: ROC curves</h2>")
    parts.append(_img(_plot_roc(ev, colors), "ROC curves",
                      "ROC curve of each model per set; legend: AUC with DeLong 95% CI. Dots mark the operating "
                      "point at the threshold fixed on the training set."))

    # metrics
    parts.append("<h2 id='metrics'>Metrics at the training threshold</h2>")
    hdr = ["Set", "Model", "AUC (95% CI)", "Threshold", "Sensitivity", "Specificity", "Accuracy", "PPV", "NPV"]
    rows = []
    for s in sets:
        for m in models:
            r = ev["sets"][s]["models"][m]
            c = r["classification"]
            rows.append([_e(s), f"<b style='color:{colors[m]}'>{_e(m)}</b>",
                         f"{_f(r['auc']['auc'])} {_ci(r['auc']['ci95'])}", _f(r["threshold"], 3),
                         _prop_cell(c["sensitivity"]), _prop_cell(c["specificity"]), _prop_cell(c["accuracy"]),
                         _prop_cell(c["ppv"]), _prop_cell(c["npv"])])
    parts.append(_table(hdr, rows, num_cols=range(2, len(hdr))))
    parts.append("<p class='muted'>Proportions with Wilson 95% CIs; small numbers are counts "
                 "(numerator/denominator). Positive if predicted probability &ge; threshold.</p>")

    # calibration
    parts.append("<h2 id='calibration'>Calibration</h2>")
    parts.append(_img(_plot_calibration(ev, colors), "Calibration curves",
                      "Observed fraction of positives against mean predicted probability in quantile bins of "
                      "the predictions. Points on the dashed line are perfectly calibrated; each bin's Wilson "
                      "95% CI is in metrics.json."))
    hdr = ["Set", "Model", "Brier", "Slope (95% CI)", "Intercept, CITL (95% CI)", "Hosmer-Lemeshow χ²", "df", "p"]
    rows = []
    for s in sets:
        for m in models:
            cal = ev["sets"][s]["models"][m]["calibration"]
            rec, hl = cal["recalibration"], cal["hosmer_lemeshow"]
            if "error" in rec:
                sl = ic = f"<span class='muted' title='{_e(rec['error'])}'>undefined</span>"
            else:
                sl = f"{_f(rec['slope'], 2)} {_ci(rec['slope_ci95'], 2)}"
                ic = f"{_f(rec['intercept'], 2)} {_ci(rec['intercept_ci95'], 2)}"
            if "error" in hl:
                hls = [f"<span class='muted' title='{_e(hl['error'])}'>undefined</span>", "", ""]
            else:
                hls = [_f(hl["chi2"], 2), str(hl["df"]), _p(hl["p"])]
            rows.append([_e(s), f"<b style='color:{colors[m]}'>{_e(m)}</b>", _f(cal["brier"]), sl, ic, *hls])
    parts.append(_table(hdr, rows, num_cols=range(2, len(hdr))))

    # DCA
    parts.append("<h2 id='dca'>Clinical usefulness: decision curves</h2>")
    parts.append(_img(_plot_dca(ev, colors), "Decision curves",
                      "Net benefit against threshold probability; a model is useful where its curve lies above "
                      "both treat-all (grey) and treat-none (black)."))

    # DeLong
    parts.append("<h2 id='delong'>Comparison of AUCs (paired DeLong test)</h2>")
    rows = []
    for s in sets:
        for d in ev["sets"][s]["delong"]:
            sig = d["p"] is not None and d["p"] < 0.05
            ptxt = f"<span class='sig'>{_p(d['p'])}</span>" if sig else _p(d["p"])
            rows.append([_e(s), f"{_e(d['model_a'])} vs {_e(d['model_b'])}", _f(d["auc_a"]), _f(d["auc_b"]),
                         f"{_f(d['diff'])} {_ci(d['diff_ci95'])}", _f(d["z"], 2), ptxt])
    if rows:
        parts.append(_table(["Set", "Comparison", "AUC A", "AUC B", "Difference (95% CI)", "Z", "p"], rows,
                            num_cols=range(2, 7)))
        parts.append("<p class='muted'>Two-sided p; bold where p &lt; 0.05. Difference = AUC A − AUC B.</p>")
    else:
        parts.append("<p class='muted'>Only one model: no comparison.</p>")

    # features
    if ev.get("features"):
        parts.append("<h2 id='features'>Selected features</h2>")
        for m, feats in ev["features"].items():
            feats = list(feats or [])
            parts.append(f"<h3>{_e(m)} <span class='muted'>({len(feats)} features)</span></h3>")
            png = _plot_features(str(m), feats, colors.get(m, _PALETTE[0]))
            ranked = sorted(feats, key=lambda f: -abs(_feature_value(f)[0] or 0.0))
            rows = []
            for i, f in enumerate(ranked, 1):
                v, kind = _feature_value(f)
                rows.append([str(i), f"<code>{_e(f.get('name', '?'))}</code>", _e(kind or "–"), _f(v, 4)])
            parts.append("<div class='grid2'>")
            if png:
                parts.append(_img(png, f"{m} features", "Coefficients (on standardised features) or "
                                  "importances; grey bars are negative coefficients."))
            parts.append("<div>" + _table(["#", "Feature", "Kind", "Value"], rows, num_cols=[0, 3]) + "</div></div>")

    # settings and versions
    if ev.get("settings") or ev.get("versions"):
        parts.append("<h2 id='settings'>Settings and versions</h2><div class='grid2'>")
        if ev.get("settings"):
            parts.append("<div><h3>Settings</h3>" + _kv_table(ev["settings"]) + "</div>")
        if ev.get("versions"):
            parts.append("<div><h3>Versions</h3>" + _kv_table(ev["versions"], ("Component", "Version")) + "</div>")
        parts.append("</div>")

    # methods
    defs = ev.get("definitions") or DEFINITIONS
    parts.append("<h2 id='methods'>Methods</h2><dl class='defs'>"
                 + "".join(f"<dt>{_e(_DEF_LABELS.get(k, k.replace('_', ' ').capitalize()))}</dt><dd>{_e(v)}</dd>"
                           for k, v in defs.items()) + "</dl>")
    parts.append(f"<footer>Generated by HRMMPredictLib.evaluation.report on {_e(now)}. The numbers are in "
                 "<code>metrics.json</code> beside this page.</footer></main></body></html>")
    return "\n".join(parts)


def write_evaluation_report(out_dir: str | Path, evaluation: dict) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/metrics.json`` (each atomically) and return
    the path of index.html.

    ``evaluation``: the dict of :func:`evaluate_models`, optionally with ``features``
    (model -> [{"name", "coefficient" or "importance"}]), ``cohort`` (rows with split,
    patients, lesions, positives, negatives), ``settings``, ``versions`` and ``title``.
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
    page = _render(clean)
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
