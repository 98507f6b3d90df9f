"""The layout of HRMMPredictLib shows its architecture: few modules at the top level, the
rest in packages, and no import cycle between its modules (module-level or lazy imports
inside functions alike: a cycle there is a design knot even when Python tolerates it)."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "HRMMPredict" / "HRMMPredictLib"  # Testing/hrmm/this file
PACKAGE = "HRMMPredictLib"
MAX_TOP_LEVEL_MODULES = 12
PACKAGES = ("cli", "deep", "evaluation", "radiomics", "slicer")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(LIB.rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """HRMMPredictLib modules that ``path`` imports anywhere in the file."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a list of modules, first == last) or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_at_most_twelve_modules_at_the_top_level():
    assert (LIB / "__init__.py").is_file(), LIB
    top = sorted(p.name for p in LIB.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} modules at the top of {LIB}: {top}"
    for pkg in PACKAGES:
        assert (LIB / pkg / "__init__.py").is_file(), f"{pkg}/ is not a package"


def test_no_import_cycle():
    graph = import_graph()
    assert "HRMMPredictLib.cli.main" in graph and "HRMMPredictLib.cli.demo" in graph["HRMMPredictLib.cli.main"]
    assert "HRMMPredictLib.evaluation.stats" in graph["HRMMPredictLib.evaluation.report"]  # relative import seen
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_inits_import_nothing():
    """Slicer's start-up imports HRMMPredictLib.slicer.*: the package __init__ files stay empty
    of imports, so importing one module never drags in pyradiomics, pandas or torch."""
    for init in [LIB / "__init__.py"] + [LIB / pkg / "__init__.py" for pkg in PACKAGES]:
        tree = ast.parse(init.read_text(encoding="utf-8"))
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        assert not imports, f"{init} imports {[ast.unparse(n) for n in imports]}"
