"""Slicer start-up cost of each module file's own imports (issue 11, defect 17). Run by hand.

Slicer executes every ``<M>/<M>.py`` when it starts. What that costs beyond Slicer itself is
the import of the project code the file imports at module level, with everything that pulls
in (numpy, SimpleITK, pandas, ...), in an interpreter where only Slicer's own ``slicer`` and
``vtk`` are loaded (they are, before any scripted module). This script measures exactly that
for each module file, in fresh interpreters (median of ``--repeat`` runs), and lists the
third-party packages each file loads at start-up. The module files themselves also import
``qt`` and ``slicer.ScriptedLoadableModule``, which exist only inside the application; their
cost is Slicer's, the same for every module.

    .venv/bin/python benchmarks/bench_startup_imports.py                 # this checkout
    .venv/bin/python benchmarks/bench_startup_imports.py --root OLD      # another checkout, to compare

``--root`` points at another checkout of the project (``git worktree add /tmp/old HEAD~5``);
its packages are imported from there instead of this one. Both runs print one line per
module: milliseconds and the packages loaded, and the ratio old/new when both are given
(``--compare OLD``).

Inside Slicer (``Slicer --no-main-window --python-script benchmarks/bench_startup_imports.py``)
the module files are imported for real, with Slicer's qt: each file is executed again under a
new name and timed (everything it imports is then already loaded, so that is the module's
own code only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT / "Testing" / "slicer_layer"))

import import_closure as ic  # noqa: E402

MEASURE = r"""
import importlib, json, sys, time
for name in ("slicer", "vtk"):   # loaded by Slicer before any scripted module
    try:
        importlib.import_module(name)
    except ImportError:
        pass
before = set(sys.modules)
start = time.perf_counter()
for name in NAMES:
    importlib.import_module(name)
seconds = time.perf_counter() - start
loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"seconds": seconds, "loaded": loaded}))
"""


def _package_path(root: Path) -> str:
    return os.pathsep.join(str(root / m) for m in ic.MODULES)


def measure(module: str, root: Path, repeat: int) -> dict:
    """Median seconds and the third-party packages loaded by ``module``'s start-up imports."""
    names = ic.direct_project_imports(root / module / f"{module}.py")
    env = dict(os.environ, PYTHONPATH=_package_path(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", f"NAMES = {names!r}\n" + MEASURE], env=env, cwd=str(root),
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            return {"module": module, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    third_party = [p for p in runs[0]["loaded"] if p not in ic.STDLIB and p not in ic.PACKAGES and p not in ic.LIGHT
                   and not p.startswith("_") and not re.fullmatch(r"swig_runtime_data\d+|cython_runtime", p)]
    return {"module": module, "imports": names, "ms": 1000 * statistics.median(r["seconds"] for r in runs),
            "third_party": third_party}


def in_slicer(repeat: int) -> list[dict]:
    """Inside the application: execute each module file again under a new name."""
    import importlib.util
    import time

    import slicer

    rows = []
    for module in ic.MODULES:
        path = slicer.util.modulePath(module) if hasattr(slicer.util, "modulePath") else None
        path = Path(path) if path else PROJECT / module / f"{module}.py"
        times = []
        for i in range(repeat):
            spec = importlib.util.spec_from_file_location(f"_bench_{module}_{i}", path)
            code = importlib.util.module_from_spec(spec)
            start = time.perf_counter()
            spec.loader.exec_module(code)
            times.append(time.perf_counter() - start)
        rows.append({"module": module, "ms": 1000 * statistics.median(times), "third_party": []})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=PROJECT, help="checkout to measure (default: this one)")
    parser.add_argument("--compare", type=Path, help="another checkout: also measure it and print old/new ratios")
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per module (median)")
    args = parser.parse_args(argv)
    try:
        import slicer

        inside = getattr(slicer, "app", None) is not None
    except ImportError:
        inside = False
    if inside:
        for row in in_slicer(args.repeat):
            print(f"{row['module']:18s} {row['ms']:8.1f} ms (module file only, inside Slicer)")
        return 0
    new = {m: measure(m, args.root.resolve(), args.repeat) for m in ic.MODULES}
    old = {m: measure(m, args.compare.resolve(), args.repeat) for m in ic.MODULES} if args.compare else {}
    for module, row in new.items():
        if "error" in row:
            print(f"{module:18s} error: {row['error']}")
            continue
        line = f"{module:18s} {row['ms']:8.1f} ms  loads: {', '.join(row['third_party']) or '-'}"
        before = old.get(module)
        if before and "error" not in before:
            ratio = before["ms"] / row["ms"] if row["ms"] > 0 else float("inf")
            line += f"   | before {before['ms']:8.1f} ms ({', '.join(before['third_party']) or '-'}), " \
                    f"before/now = {ratio:.1f}x"
        elif before:
            line += f"   | before: {before['error']}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
