#!/usr/bin/env python
"""Mutation testing of the numeric core with cosmic-ray (run by hand, not in CI).

A mutant is a copy of a module with one small change (``<`` -> ``<=``, ``3.0e-3`` -> ``4.0e-3``,
``and`` -> ``or``, ...). The module's tests should fail on it ("killed"); a mutant whose tests
still pass ("survived") is a bug the suite would not notice. The score is killed / (killed +
survived) per module.

Usage (from the project root)::

    .venv/bin/pip install cosmic-ray          # once; a tool, not a project dependency
    .venv/bin/python benchmarks/mutation.py --list
    .venv/bin/python benchmarks/mutation.py --module icc --max-mutants 60
    .venv/bin/python benchmarks/mutation.py --max-mutants 60 --json /tmp/mutation.json

Modules, their tests and the settings are in ``benchmarks/mutation.toml``. For each module
the mutants are drawn (``--max-mutants N``: a sample with a fixed seed, the same one on every
run of the same source) and run against ``--tests``:

* ``current``: the module's existing tests only;
* ``all``: existing tests plus the killers in ``Testing/mutation_killers/``;
* ``both`` (default): ``current`` first, then the survivors again with ``all`` (a mutant
  killed by a subset of the tests is killed by the whole set), giving "before" and
  "after" scores from one run.

The project is copied (tracked and untracked-but-not-ignored files) into a temporary folder
and mutated there: cosmic-ray edits files in place, and other people (or your editor) keep
using the checkout meanwhile. ``PYTHONPATH`` points the tests at the copy's packages, ahead
of the editable install. See docs/testing.md for the scores and the survivors.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).with_suffix(".toml")
PACKAGE_DIRS = ("ClinicalMRICommon", "HRMMPredict", "AnnotationQC", "StrokeLesion")


def _need_cosmic_ray():
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        sys.exit("error: cosmic-ray is not installed in this environment; install it with\n"
                 f"  {sys.executable} -m pip install cosmic-ray\n"
                 "(a tool for this script only; it is not a dependency of the project)")


def load_config(path: Path) -> dict:
    try:
        cfg = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        sys.exit(f"error: cannot read the mutation config {path}: {exc}")
    if "modules" not in cfg or not cfg["modules"]:
        sys.exit(f"error: {path} lists no [modules.NAME] table")
    return cfg


def snapshot(dest: Path) -> None:
    """Copy the checkout's files (tracked + untracked, not ignored) to ``dest``."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if not src.is_file():  # deleted in the work tree but still in the index
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def top_level_definition(tree: ast.Module, line: int) -> str:
    """Name of the top-level def/class containing ``line``; "<module>" for module-level code."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if start <= line <= node.end_lineno:
                return node.name
    return "<module>"


def annotation_spans(tree: ast.Module) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every type annotation, where ``from __future__ import
    annotations`` keeps them unevaluated strings: a mutant there (``str | None`` ->
    ``str + None``) cannot change what the code does, so it is left out as equivalent."""
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    if not future:
        return []
    spans = []
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            anns = [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]
                    if x is not None and x.annotation is not None] + ([node.returns] if node.returns else [])
        elif isinstance(node, ast.AnnAssign):
            anns = [node.annotation]
        spans += [((x.lineno, x.col_offset), (x.end_lineno, x.end_col_offset)) for x in anns]
    return spans


def in_spans(spans, pos: tuple[int, int]) -> bool:
    return any(start <= tuple(pos) < end for start, end in spans)


def test_command(tests: list[str]) -> str:
    # -x: the first failure is enough to kill a mutant; no cache: the copy is thrown away
    return " ".join([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests])


def run_clean(tests: list[str]) -> float:
    from cosmic_ray.testing import run_tests
    from cosmic_ray.work_item import TestOutcome

    t0 = time.perf_counter()
    outcome, output = run_tests(test_command(tests), timeout=1800)
    took = time.perf_counter() - t0
    if outcome != TestOutcome.SURVIVED:
        tail = "\n".join(str(output).splitlines()[-15:])
        raise RuntimeError(f"the tests fail on the unmutated code:\n{tail}")
    return took


def mutants_for(name: str, mod: dict, settings: dict, db_path: Path):
    """Initialise a cosmic-ray session for one module; return (work DB, kept work items)."""
    from cosmic_ray.commands.init import init
    from cosmic_ray.work_db import WorkDB, use_db  # noqa: F401
    from cosmic_ray.work_item import WorkResult, WorkerOutcome

    path = Path(mod["path"])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    excluded = [re.compile(p) for p in settings.get("exclude_operators", [])]
    wanted = set(mod.get("definitions", [])) or None
    spans = annotation_spans(tree)
    db = WorkDB(str(db_path), WorkDB.Mode.create)
    init([path], db, {})
    keep, skip = [], []
    for item in db.work_items:
        m = item.mutations[0]
        op = m.operator_name.split("/")[-1]
        definition = top_level_definition(tree, m.start_pos[0])
        if any(rx.search(op) for rx in excluded) or (wanted is not None and definition not in wanted) \
                or in_spans(spans, m.start_pos):
            skip.append(item.job_id)
        else:
            keep.append(item)
    if skip:
        db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
    keep.sort(key=lambda w: (w.mutations[0].start_pos, w.mutations[0].operator_name, w.mutations[0].occurrence))
    return db, keep, tree


def changed_lines(diff: str) -> str:
    lines = [ln for ln in (diff or "").splitlines()
             if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]
    return " | ".join(ln[:1] + " " + ln[1:].strip() for ln in lines)


def source_sha(mod: dict) -> str:
    return hashlib.sha256(Path(mod["path"]).read_bytes()).hexdigest()


def run_module(name: str, mod: dict, settings: dict, args, workdir: Path, previous: dict | None = None) -> dict:
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    current = list(mod["tests"])
    # the killers first: they are quick and aimed at the survivors, and -x stops at the first failure
    full = [k for k in mod.get("killers", []) if Path(k.split("::")[0]).exists()] + current
    first = current if args.tests in ("current", "both") else full
    print(f"\n== {name}: {mod['path']}", flush=True)
    if set(full) == set(current):
        full = current
    if previous is not None:
        return rerun_survivors(name, mod, settings, full, workdir, previous)
    try:
        clean = run_clean(first)
        clean_full = run_clean(full) if args.tests == "both" and full != current else clean
    except RuntimeError as exc:
        print(f"   skipped: {exc}", flush=True)
        return {"module": name, "path": mod["path"], "error": str(exc)}
    timeout = max(float(settings.get("min_timeout", 60)), float(settings.get("timeout_factor", 4)) * max(clean, clean_full))
    db, items, _ = mutants_for(name, mod, settings, workdir / f"{name}.sqlite")
    total = len(items)
    seed = args.seed if args.seed is not None else int(settings.get("seed", 0))
    if args.max_mutants and total > args.max_mutants:
        items = sorted(random.Random(seed).sample(items, args.max_mutants),
                       key=lambda w: (w.mutations[0].start_pos, w.mutations[0].operator_name))
    print(f"   {total} mutants after filters, running {len(items)} (seed {seed}); clean test run {clean:.1f} s, "
          f"timeout {timeout:.0f} s", flush=True)

    def run(item, tests):
        return mutate_and_test(item.mutations, test_command(tests), timeout)

    rows = []
    t0 = time.perf_counter()
    for i, item in enumerate(items, 1):
        m = item.mutations[0]
        res = run(item, first)
        status = ("killed" if res.test_outcome == TestOutcome.KILLED else
                  "survived" if res.test_outcome == TestOutcome.SURVIVED else
                  "no-mutation" if res.worker_outcome == WorkerOutcome.NO_TEST else "incompetent")
        after = status
        if args.tests == "both" and status == "survived" and full != current:
            res2 = run(item, full)
            after = "killed" if res2.test_outcome == TestOutcome.KILLED else (
                "survived" if res2.test_outcome == TestOutcome.SURVIVED else "incompetent")
        db.set_result(item.job_id, res)
        rows.append({"line": m.start_pos[0], "operator": m.operator_name.split("/")[-1],
                     "occurrence": m.occurrence, "definition": top_level_definition(_tree(mod), m.start_pos[0]),
                     "before": status, "after": after, "change": changed_lines(res.diff)})
        if i % 10 == 0 or i == len(items):
            el = time.perf_counter() - t0
            print(f"   {i}/{len(items)} done, {el / i:.1f} s per mutant, "
                  f"{sum(r['before'] == 'survived' for r in rows)} survived so far", flush=True)
    db.close()
    return {"module": name, "path": mod["path"], "sha256": source_sha(mod), "mutants_total": total,
            "mutants_run": len(items), "seed": seed, "tests": args.tests, "tests_before": first, "tests_after": full,
            "rows": rows, **scores(rows)}


def rerun_survivors(name: str, mod: dict, settings: dict, full: list[str], workdir: Path, previous: dict) -> dict:
    """--after: the survivors of an earlier run (same source) against the full test set."""
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_item import TestOutcome

    if previous.get("sha256") != source_sha(mod):
        msg = f"{mod['path']} changed since the earlier run; run it again from scratch"
        print(f"   skipped: {msg}", flush=True)
        return {"module": name, "path": mod["path"], "error": msg}
    clean = run_clean(full)
    timeout = max(float(settings.get("min_timeout", 60)), float(settings.get("timeout_factor", 4)) * clean)
    _, items, _ = mutants_for(name, mod, settings, workdir / f"{name}-after.sqlite")
    by_key = {(w.mutations[0].operator_name.split("/")[-1], w.mutations[0].occurrence): w for w in items}
    rows = [dict(r) for r in previous["rows"]]
    todo = [r for r in rows if r["before"] == "survived"]
    print(f"   re-running {len(todo)} survivors of the earlier run with {len(full)} test files", flush=True)
    for i, r in enumerate(todo, 1):
        item = by_key.get((r["operator"], r["occurrence"]))
        if item is None:  # left out by a filter added since (an annotation mutant): equivalent
            r["before"] = r["after"] = "excluded"
            continue
        res = mutate_and_test(item.mutations, test_command(full), timeout)
        r["after"] = ("killed" if res.test_outcome == TestOutcome.KILLED else
                      "survived" if res.test_outcome == TestOutcome.SURVIVED else "incompetent")
        if i % 10 == 0 or i == len(todo):
            print(f"   {i}/{len(todo)} re-run, {sum(x['after'] == 'survived' for x in todo[:i])} still survive",
                  flush=True)
    out = {k: v for k, v in previous.items() if k not in ("rows",)}
    out.update(tests="both", tests_after=full, rows=rows, **scores(rows))
    return out


_TREES: dict = {}


def _tree(mod: dict) -> ast.Module:
    if mod["path"] not in _TREES:
        _TREES[mod["path"]] = ast.parse(Path(mod["path"]).read_text(encoding="utf-8"))
    return _TREES[mod["path"]]


def scores(rows: list[dict]) -> dict:
    out = {}
    for phase in ("before", "after"):
        k = sum(r[phase] == "killed" for r in rows)
        s = sum(r[phase] == "survived" for r in rows)
        out[f"killed_{phase}"] = k
        out[f"survived_{phase}"] = s
        out[f"score_{phase}"] = (100.0 * k / (k + s)) if k + s else None
    out["incompetent"] = sum(r["before"] in ("incompetent", "no-mutation") for r in rows)
    out["excluded"] = sum(r["before"] == "excluded" for r in rows)
    return out


def report(results: list[dict], tests: str) -> None:
    print("\nmutation score per module (killed / (killed + survived)):")
    head = f"{'module':<22} {'mutants':>8} {'run':>5} {'before':>16} {'after':>16}"
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['module']:<22} {'-':>8} {'-':>5}  not run: {r['error'].splitlines()[0]}")
            continue

        def fmt(phase):
            sc = r[f"score_{phase}"]
            return "-" if sc is None else f"{sc:5.1f}% ({r[f'killed_{phase}']}/{r[f'killed_{phase}'] + r[f'survived_{phase}']})"
        before = fmt("before") if tests != "all" else "-"
        after = fmt("after") if tests != "current" else "-"
        print(f"{r['module']:<22} {r['mutants_total']:>8} {r['mutants_run']:>5} {before:>16} {after:>16}")
    for r in results:
        surv = [x for x in r.get("rows", []) if x["after"] == "survived"]
        if surv:
            print(f"\nsurvivors in {r['module']} ({r['path']}):")
            for x in surv:
                print(f"  line {x['line']:>4} {x['definition']:<26} {x['operator']:<44} {x['change'][:150]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Modules and their tests: benchmarks/mutation.toml. Scores: docs/testing.md.")
    p.add_argument("--config", type=Path, default=CONFIG, help="module/test table (default: %(default)s)")
    p.add_argument("--module", action="append", metavar="NAME", help="run only this module (repeatable)")
    p.add_argument("--max-mutants", type=int, metavar="N", help="a sample of N mutants per module (fixed seed)")
    p.add_argument("--seed", type=int, help="seed of the sample (default: the config's)")
    p.add_argument("--tests", choices=("current", "all", "both"), default="both",
                   help="current: existing tests; all: plus Testing/mutation_killers; both (default): before and after")
    p.add_argument("--list", action="store_true", help="list the modules and their mutant counts, run nothing")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--after", type=Path, metavar="JSON",
                   help="re-run only the survivors recorded in an earlier --json result, with all tests")
    p.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = p.parse_args(argv)
    if args.json:
        args.json = args.json.resolve()
    previous = {}
    if args.after:
        try:
            previous = {r["module"]: r for r in json.loads(args.after.read_text()) if "rows" in r}
        except (OSError, ValueError, TypeError) as exc:
            print(f"error: cannot read the earlier results {args.after}: {exc}", file=sys.stderr)
            return 2
    args.config = args.config.resolve()
    cfg = load_config(args.config)
    settings, modules = cfg.get("settings", {}), cfg["modules"]
    names = args.module or (list(previous) if args.after else list(modules))
    unknown = [n for n in names if n not in modules]
    if unknown:
        print(f"error: unknown module {unknown[0]!r}; the config lists {', '.join(modules)}", file=sys.stderr)
        return 2
    if args.max_mutants is not None and args.max_mutants < 1:
        print("error: --max-mutants must be at least 1", file=sys.stderr)
        return 2
    _need_cosmic_ray()

    work = Path(tempfile.mkdtemp(prefix="clinicalmri-mutation-"))
    print(f"copy of the project: {work}", flush=True)
    snapshot(work)
    (work / ".mutation").mkdir()
    os.chdir(work)
    shared = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
    os.environ.update({"PYTHONPATH": os.pathsep.join(str(work / d) for d in PACKAGE_DIRS)
                       + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
                       "SHARED_DATA": str(shared), "QT_QPA_PLATFORM": "offscreen",
                       "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"})
    results = []
    try:
        if args.list:
            for n in names:
                _, items, _ = mutants_for(n, modules[n], settings, work / ".mutation" / f"{n}.sqlite")
                print(f"{n:<22} {len(items):>5} mutants  {modules[n]['path']}")
            return 0
        for n in names:
            if args.after and n not in previous:
                print(f"\n== {n}: not in {args.after}; skipped")
                continue
            results.append(run_module(n, modules[n], settings, args, work / ".mutation", previous.get(n)))
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
        report(results, args.tests)
    finally:
        os.chdir(ROOT)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
