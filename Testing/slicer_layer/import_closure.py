"""What a Slicer module file imports when Slicer starts: its static import closure.

Slicer's scripted-module factory executes every ``<M>/<M>.py`` at start-up
(qSlicerScriptedLoadableModule::setPythonSource), so everything those files import at
module level runs then: the package ``__init__`` files of every project module on the way,
class bodies (decorators and annotations included) and module-level ``if``/``try``/``with``
blocks. Function bodies do not run (imports there are lazy), nor ``if TYPE_CHECKING:`` and
``if __name__ == "__main__":`` blocks.

:func:`closure` follows these imports through the project's own packages (statically: no
import is executed) and returns every project module reached and every outside module
named, with the chain of imports that leads to it. Used by
Testing/slicer_layer/test_startup_imports.py and benchmarks/bench_startup_imports.py.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("ClinicalMRICommon", "HRMMPredict", "AnnotationQC", "StrokeLesion")
#: project package -> its folder
PACKAGES = {f"{m}Lib": ROOT / m / f"{m}Lib" for m in MODULES}
#: module name -> module file (what Slicer executes at start-up)
MODULE_FILES = {m: ROOT / m / f"{m}.py" for m in MODULES}

#: What Slicer ships besides the standard library (its SuperBuild: numpy, scipy, pydicom,
#: Pillow, requests, SimpleITK, VTK; and the application's own qt, ctk and slicer packages).
SLICER_SHIPPED = frozenset({"numpy", "scipy", "SimpleITK", "vtk", "vtkmodules", "pydicom", "PIL", "requests",
                            "qt", "ctk", "slicer"})
#: What a module file should need at start-up where it can (issue 11, defect 17).
LIGHT = frozenset({"qt", "ctk", "vtk", "vtkmodules", "slicer"})
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


def is_allowed(top: str, allowed=SLICER_SHIPPED) -> bool:
    return top in STDLIB or top in allowed or top in PACKAGES


@dataclass
class Closure:
    """Project modules reached (dotted name -> file) and outside modules named (top-level
    name -> the import chains that name it)."""

    modules: dict[str, Path] = field(default_factory=dict)
    external: dict[str, list[str]] = field(default_factory=dict)

    def offenders(self, allowed=SLICER_SHIPPED) -> dict[str, list[str]]:
        return {top: chains for top, chains in sorted(self.external.items()) if not is_allowed(top, allowed)}


def project_file(dotted: str) -> Path | None:
    """The file of a project module or package (None when it is not one)."""
    parts = dotted.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = PACKAGES[parts[0]].joinpath(*parts[1:])
    if base.is_dir() and (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_main_guard(test: ast.expr) -> bool:
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"


def executed_imports(statements) -> list[ast.stmt]:
    """The import statements that run when a module (or class body) is executed."""
    out: list[ast.stmt] = []
    for st in statements:
        if isinstance(st, (ast.Import, ast.ImportFrom)):
            out.append(st)
        elif isinstance(st, ast.If):
            if _is_type_checking(st.test) or _is_main_guard(st.test):
                out += executed_imports(st.orelse)
            else:
                out += executed_imports(st.body) + executed_imports(st.orelse)
        elif isinstance(st, ast.Try) or type(st).__name__ == "TryStar":
            out += executed_imports(st.body) + executed_imports(st.orelse) + executed_imports(st.finalbody)
            for handler in st.handlers:
                out += executed_imports(handler.body)
        elif isinstance(st, (ast.With, ast.For, ast.While)):
            out += executed_imports(st.body) + executed_imports(getattr(st, "orelse", []))
        elif isinstance(st, ast.ClassDef):
            out += executed_imports(st.body)  # a class body runs at import
    return out


def function_imports(function: ast.AST) -> list[ast.stmt]:
    """Every import statement inside a function (lazy imports), in source order."""
    found = [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return sorted(found, key=lambda n: n.lineno)


def imported_names(statement: ast.stmt, importer: str, importer_is_package: bool) -> list[str]:
    """Dotted names an import statement loads (for ``from X import Y``: X, and X.Y when that
    is a project module)."""
    if isinstance(statement, ast.Import):
        return [alias.name for alias in statement.names]
    if statement.level:
        package = importer.split(".") if importer_is_package else importer.split(".")[:-1]
        if statement.level > 1:
            package = package[:-(statement.level - 1)]
        base = ".".join(package + ([statement.module] if statement.module else []))
    else:
        base = statement.module or ""
    names = [base]
    for alias in statement.names:
        if alias.name != "*" and project_file(f"{base}.{alias.name}") is not None:
            names.append(f"{base}.{alias.name}")
    return names


def _with_parents(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure_of_statements(statements, importer: str, importer_is_package: bool, chain: str,
                          result: Closure | None = None) -> Closure:
    """Follow the given import statements (of module ``importer``) through the project."""
    result = result if result is not None else Closure()
    for st in statements:
        for dotted in imported_names(st, importer, importer_is_package):
            top = dotted.split(".")[0]
            if top not in PACKAGES:
                result.external.setdefault(top, []).append(f"{chain} -> {dotted} (line {st.lineno})")
                continue
            for name in _with_parents(dotted):
                path = project_file(name)
                if path is None or name in result.modules:
                    continue
                result.modules[name] = path
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
                closure_of_statements(executed_imports(tree.body), name, path.name == "__init__.py",
                                      f"{chain} -> {name}", result)
    return result


def closure(path: Path) -> Closure:
    """The start-up import closure of a module file (or of a project module's file)."""
    path = Path(path).resolve()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = path.stem
    for package, folder in PACKAGES.items():
        if folder in path.parents or path.parent == folder:
            rel = path.relative_to(folder.parent).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
    label = path.relative_to(ROOT).as_posix() if ROOT in path.parents else path.name
    return closure_of_statements(executed_imports(tree.body), name, path.name == "__init__.py", label)


def all_imports(path: Path) -> set[str]:
    """Top-level names of every module a file imports anywhere (function bodies included)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def direct_project_imports(path: Path) -> list[str]:
    """The project modules a module file imports itself at module level (for the benchmark)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    out: list[str] = []
    for st in executed_imports(tree.body):
        for dotted in imported_names(st, Path(path).stem, False):
            if dotted.split(".")[0] in PACKAGES and project_file(dotted) is not None and dotted not in out:
                out.append(dotted)
    return out
