"""``hrmm compare-auc`` and ``hrmm dca``: the command-line front end of
:mod:`HRMMPredictLib.evaluation.stats`.

The ``hrmm`` parser (:mod:`HRMMPredictLib.cli.main`) calls :func:`register` to add both
subcommands.

Input: a CSV file with one row per case. The label column is read as TEXT and compared
with ``--positive`` exactly as written in the file (``Poor``, ``TRUE``, ``1``); it must have
exactly two distinct values. Score columns must be numeric; higher means more likely
positive (for ``dca``: a predicted probability in [0, 1]).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ClinicalMRICommonLib.cli import EXIT_OK, add_command, add_json, emit
from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.evaluation import stats

__all__ = ["register", "read_cases", "parse_thresholds"]


# ---------------------------------------------------------------------------------------
# Input


def read_cases(path: str | Path, label: str, positive: str, score_columns: list[str]) -> tuple[np.ndarray, dict]:
    """Read labels (as text) and numeric score columns from a CSV file.

    Returns (y as 0/1 ints with 1 = ``positive``, {column: float array}). Raises UserError
    naming the file, column and values for every problem found.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"input file not found: {p}")
    if p.is_dir():
        raise UserError(f"input path is a folder, expected a CSV file: {p}")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserError(f"input file {p} is empty; expected a CSV file with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"input file {p} could not be read as CSV ({first})") from None
    if len(df) == 0:
        raise UserError(f"input file {p} has a header but no rows")
    cols = list(df.columns)
    for c in [label] + score_columns:
        if c not in cols:
            shown = ", ".join(cols[:12]) + (" ..." if len(cols) > 12 else "")
            raise UserError(f"column '{c}' not found in {p}; columns are: {shown}")
    lab = df[label]
    classes = sorted(set(lab.tolist()))
    if len(classes) != 2:
        shown = ", ".join(repr(v) for v in classes[:8]) + (" ..." if len(classes) > 8 else "")
        hint = " (empty cells count as a value)" if "" in classes else ""
        raise UserError(f"label column '{label}' of {p} has {len(classes)} distinct values ({shown}){hint}; "
                        "expected exactly two classes")
    if positive not in classes:
        raise UserError(f"positive value {positive!r} not found in label column '{label}' of {p}; "
                        f"its values are {classes[0]!r} and {classes[1]!r} (compared exactly as written)")
    y = (lab == positive).to_numpy().astype(int)
    scores = {}
    for c in score_columns:
        num = pd.to_numeric(df[c].str.strip(), errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(num)
        if bad.any():
            lines = (np.flatnonzero(bad)[:5] + 2).tolist()  # header is line 1
            raise UserError(f"score column '{c}' of {p} has {int(bad.sum())} empty, non-numeric or NaN values "
                            f"(lines {', '.join(map(str, lines))}); every case needs a score")
        scores[c] = num
    return y, scores


def _split_names(text: str, flag: str) -> list[str]:
    names = [t for t in (s.strip() for s in text.split(",")) if t]
    if not names:
        raise UserError(f"{flag} needs at least one column name")
    return names


def parse_thresholds(text: str | None) -> list[float]:
    """Parse ``t1,t2,...``; an item ``start:stop:step`` expands to an inclusive range.
    None gives the default grid 0, 0.01, ..., 0.99."""
    if text is None:
        return [round(i / 100, 2) for i in range(100)]
    out: list[float] = []
    for tok in (s.strip() for s in text.split(",")):
        if not tok:
            continue
        try:
            if ":" in tok:
                a, b, step = (float(x) for x in tok.split(":"))
                if step <= 0:
                    raise ValueError
                k = int(np.floor((b - a) / step + 1e-9))
                out.extend(round(a + i * step, 10) for i in range(k + 1))
            else:
                out.append(float(tok))
        except ValueError:
            raise UserError(f"--thresholds: {tok!r} is not a number (or start:stop:step range)") from None
    if not out:
        raise UserError("--thresholds needs at least one value")
    return out


# ---------------------------------------------------------------------------------------
# Commands


def _fmt(x, digits: int = 4) -> str:
    return "NA" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None or not np.isfinite(p):
        return "NA"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def cmd_compare_auc(args: argparse.Namespace) -> int:
    names = _split_names(args.scores, "--scores")
    if len(names) != 2 or names[0] == names[1]:
        raise UserError(f"--scores needs exactly two different column names A,B; got {args.scores!r}")
    y, sc = read_cases(args.input, args.label, args.positive, names)
    a, b = names
    ra = stats.roc_auc_delong(y, sc[a], name=f"score column '{a}'")
    rb = stats.roc_auc_delong(y, sc[b], name=f"score column '{b}'")
    d = stats.delong_paired(y, sc[a], sc[b], names=(f"score column '{a}'", f"score column '{b}'"))
    if args.json:
        emit({"auc": {a: {"auc": ra["auc"], "ci95": ra["ci95"]}, b: {"auc": rb["auc"], "ci95": rb["ci95"]}},
              "delong": {"z": d["z"], "p": d["p"], "diff_ci95": d["diff_ci95"]}}, True)
        return EXIT_OK
    n_pos = int(y.sum())
    print(f"{args.input}: {y.size} cases, {n_pos} positive ({args.label} = {args.positive}), "
          f"{y.size - n_pos} negative")
    w = max(len(a), len(b), 5)
    print(f"{'score':<{w}}  {'AUC':>6}  {'95% CI (DeLong)':>17}  {'SE':>6}")
    for nm, r in ((a, ra), (b, rb)):
        print(f"{nm:<{w}}  {_fmt(r['auc']):>6}  {_fmt(r['ci95'][0]) + ' - ' + _fmt(r['ci95'][1]):>17}  "
              f"{_fmt(r['se']):>6}")
    print(f"Paired DeLong test, AUC({a}) - AUC({b}) = {_fmt(d['diff'])} "
          f"(95% CI {_fmt(d['diff_ci95'][0])} to {_fmt(d['diff_ci95'][1])}), "
          f"Z = {_fmt(d['z'], 3)}, p = {_fmt_p(d['p'])} (two-sided)")
    return EXIT_OK


def cmd_dca(args: argparse.Namespace) -> int:
    names = _split_names(args.score, "--score")
    if len(names) != 1:
        raise UserError(f"--score takes one column name; got {args.score!r}")
    thresholds = parse_thresholds(args.thresholds)
    y, sc = read_cases(args.input, args.label, args.positive, names)
    r = stats.decision_curve(y, sc[names[0]], thresholds, name=f"score column '{names[0]}'")
    if args.json:
        emit({"threshold": r["threshold"], "net_benefit": r["net_benefit"], "treat_all": r["treat_all"]}, True)
        return EXIT_OK
    print(f"{args.input}: {r['n']} cases, prevalence {r['prevalence']:.4f} ({args.label} = {args.positive}); "
          f"treat if {names[0]} >= threshold")
    print(f"{'threshold':>9}  {'net benefit':>11}  {'treat all':>9}  {'treat none':>10}")
    for t, nb, ta, tn in zip(r["threshold"], r["net_benefit"], r["treat_all"], r["treat_none"]):
        print(f"{t:>9.3f}  {nb:>11.5f}  {ta:>9.5f}  {tn:>10.5f}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# Parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, metavar="CSV", help="CSV file, one row per case")
    p.add_argument("--label", required=True, metavar="COL", help="column holding the true class")
    p.add_argument("--positive", required=True, metavar="VALUE",
                   help="the label text of the positive class, exactly as written in the file (e.g. Poor, TRUE, 1)")
    add_json(p, "the result (one JSON object instead of tables)")


def register(subparsers) -> None:
    """Add ``compare-auc`` and ``dca`` to the ``hrmm`` subcommands; each sets ``func``."""
    p = add_command(
        subparsers, "compare-auc", "AUCs with DeLong 95%% CIs and the paired DeLong test of two scores",
        description="ROC AUC of two score columns on the same cases, each with its DeLong 95% CI, and the "
                    "paired DeLong test of AUC(A) - AUC(B) (Z, two-sided p, 95% CI of the difference). "
                    "Higher scores mean more likely positive.",
        epilog="example: hrmm compare-auc --input cases.csv --label outcome --positive Poor --scores wfns,s100b")
    _add_common(p)
    p.add_argument("--scores", required=True, metavar="A,B", help="two numeric score columns, comma-separated")
    p.set_defaults(func=cmd_compare_auc)

    p = add_command(
        subparsers, "dca", "decision curve: net benefit of a risk score, treat-all and treat-none",
        description="Net benefit NB = TP/n - FP/n * pt/(1-pt) with 'treat if risk >= pt' (a risk of exactly 0 is "
                    "never treated, as in R dcurves), for each threshold probability pt in [0, 1).",
        epilog="example: hrmm dca --input cases.csv --label cancer --positive 1 --score risk --thresholds 0:0.5:0.05")
    _add_common(p)
    p.add_argument("--score", required=True, metavar="S", help="predicted probability column (values in [0, 1])")
    p.add_argument("--thresholds", metavar="t1,t2,...",
                   help="threshold probabilities in [0, 1); an item start:stop:step is an inclusive range "
                        "(default 0,0.01,...,0.99)")
    p.set_defaults(func=cmd_dca)
