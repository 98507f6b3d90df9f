"""The start-up rule of the extension's module files (issue 11, defects 1 and 17).

Slicer executes every ``<M>/<M>.py`` when it starts. A module file and everything it imports
at module level (package ``__init__`` files, class bodies, decorators) may use only the
standard library and what Slicer ships (numpy, scipy, SimpleITK, VTK, pydicom, Pillow,
requests, qt/ctk/slicer); otherwise ``setPythonSource`` fails, the module is not created,
and every module that depends on it is refused. Slicer does not ship pandas: AnnotationQC
imported it through ``AnnotationQCLib.panel_logic`` and failed to load.

The closure is found statically (Testing/slicer_layer/import_closure.py), so the test needs no
Slicer and fails on an import that would only break inside it. Where the rule is met, the
module files should also keep to qt, vtk, slicer and the standard library (numpy and
SimpleITK imported on first use in the panel code): that is checked for the modules that do.

The panels' own MRML logic (``<M>Lib/panel_logic.py``) is imported on first use; it may use
numpy and SimpleITK at module level, and each of its functions that needs more (pandas,
pyradiomics, ...) installs it on first use through ``_needs`` before importing it.
"""

from __future__ import annotations

import ast

import pytest

import import_closure as ic
from ClinicalMRICommonLib.slicer_packages import REQUIREMENTS

#: The panel libraries imported on first use (their module level may use numpy/SimpleITK).
PANEL_LOGIC = {
    "AnnotationQC": ic.PACKAGES["AnnotationQCLib"] / "panel_logic.py",
    "StrokeLesion": ic.PACKAGES["StrokeLesionLib"] / "panel_logic.py",
}
#: ClinicalMRICommonLib's Slicer-layer helpers the module files import at start-up.
LIGHT_HELPERS = ("panel_support", "segment_editor", "slicer_packages", "process_runner", "job_worker")


def _report(offenders: dict[str, list[str]]) -> str:
    return "\n".join(f"  {top}: imported at start-up via {chains[0]}" for top, chains in offenders.items())


@pytest.mark.parametrize("module", ic.MODULES)
def test_module_file_imports_only_what_slicer_ships(module):
    found = ic.closure(ic.MODULE_FILES[module])
    offenders = found.offenders()
    assert not offenders, (f"{module}.py would fail to load in Slicer (setPythonSource): these are not shipped "
                           f"with Slicer; import them inside the function that needs them:\n{_report(offenders)}")


@pytest.mark.parametrize("module", ("ClinicalMRICommon", "AnnotationQC", "StrokeLesion", "HRMMPredict"))
def test_module_file_start_up_is_light(module):
    """qt, vtk, slicer and the standard library only: numpy, SimpleITK and scipy are loaded by
    the panel code when it is first used, not when Slicer starts (defect 17)."""
    offenders = ic.closure(ic.MODULE_FILES[module]).offenders(allowed=ic.LIGHT)
    assert not offenders, f"{module}.py loads more than qt/vtk/slicer at start-up:\n{_report(offenders)}"


def test_the_light_common_helpers_import_only_the_standard_library():
    for name in LIGHT_HELPERS:
        path = ic.PACKAGES["ClinicalMRICommonLib"] / f"{name}.py"
        offenders = ic.closure(path).offenders(allowed=frozenset())
        assert not offenders, f"ClinicalMRICommonLib/{name}.py imports more than the standard library:\n" \
                              f"{_report(offenders)}"


@pytest.mark.parametrize("module", sorted(PANEL_LOGIC))
def test_panel_logic_imports_only_what_slicer_ships(module):
    offenders = ic.closure(PANEL_LOGIC[module]).offenders()
    assert not offenders, f"{module}Lib/panel_logic.py: not shipped with Slicer:\n{_report(offenders)}"


def test_hrmm_panel_logic_imports_only_what_slicer_ships():
    """HRMMPredict's panel libraries (imported on first use) need only numpy, SimpleITK and MRML
    at module level; its packages are installed by the panel before the worker starts
    (HRMMPredictLogic.ensurePythonPackages), and the science runs in the worker process."""
    for name in ("panel_logic", "panel_results", "series_guess", "packages", "predict_worker"):
        path = ic.PACKAGES["HRMMPredictLib"] / "slicer" / f"{name}.py"
        offenders = ic.closure(path).offenders()
        assert not offenders, f"HRMMPredictLib/slicer/{name}.py: not shipped with Slicer:\n{_report(offenders)}"


def test_the_walker_sees_what_slicer_would_execute(tmp_path):
    """The walker itself: module level, class bodies and try blocks count; function bodies,
    TYPE_CHECKING and __main__ blocks do not."""
    source = tmp_path / "Fake.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "try:\n    import yaml\nexcept ImportError:\n    yaml = None\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "class Panel:\n    import pandas\n    def run(self):\n        import sklearn\n"
        "def lazy():\n    import monai\n"
        "if __name__ == '__main__':\n    import matplotlib\n"
        "from AnnotationQCLib import sessions\n")
    found = ic.closure(source)
    assert set(found.offenders()) == {"yaml", "pandas"}
    assert "AnnotationQCLib.sessions" in found.modules and "AnnotationQCLib" in found.modules


def _feature_modules(features) -> set[str]:
    return {req.module for feature in features for req in REQUIREMENTS[feature]}


def _needs_calls(function: ast.AST) -> list[tuple[int, tuple[str, ...]]]:
    calls = []
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_needs":
            calls.append((node.lineno, tuple(a.value for a in node.args if isinstance(a, ast.Constant))))
    return sorted(calls)


@pytest.mark.parametrize("module", sorted(PANEL_LOGIC))
def test_panel_functions_install_what_they_import_first(module):
    """Every panel function whose lazy imports reach a package Slicer does not ship calls
    ``_needs`` (install on first use) with a feature providing it, before that import."""
    path = PANEL_LOGIC[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    importer = f"{module}Lib.panel_logic"
    problems, checked = [], 0
    for function in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        for st in ic.function_imports(function):
            found = ic.closure_of_statements([st], importer, False, f"{function.name}()")
            needed = set(found.offenders())
            if not needed:
                continue
            checked += 1
            before = [features for line, features in _needs_calls(function) if line < st.lineno]
            provided = _feature_modules(f for features in before for f in features)
            if not needed <= provided:
                problems.append(f"{function.name}() line {st.lineno} imports {sorted(needed - provided)} "
                                "without _needs(...) for it first")
    if module == "AnnotationQC":  # reader studies, training sessions and ICC tables import pandas
        assert checked, f"{module}Lib/panel_logic.py: no lazy import needs a package; the check would be empty"
    assert not problems, f"{module}Lib/panel_logic.py:\n  " + "\n  ".join(problems)


#: panel function -> the library files whose work it starts (anything they import, in any
#: function, must be covered by the function's _needs features)
DEEP = [
    ("AnnotationQC", "training_report", ["AnnotationQC/AnnotationQCLib/training.py"]),
    ("AnnotationQC", "icc_to_nodes", ["ClinicalMRICommon/ClinicalMRICommonLib/agreement/icc.py"]),
    ("AnnotationQC", "feature_icc_from_csv", ["ClinicalMRICommon/ClinicalMRICommonLib/tables.py"]),
    ("StrokeLesion", "prepare_export", ["StrokeLesion/StrokeLesionLib/bids.py", "StrokeLesion/StrokeLesionLib/deid.py"]),
    ("StrokeLesion", "prepare_acceptance", ["StrokeLesion/StrokeLesionLib/acceptance.py"]),
]


@pytest.mark.parametrize("module,function,files", DEEP, ids=[f"{m}.{f}" for m, f, _ in DEEP])
def test_panel_actions_install_what_their_library_code_imports(module, function, files):
    """The packages the library imports lazily deep inside an action (nibabel for the BIDS
    export, pyradiomics and matplotlib for the training report...) are installed by the
    panel function that starts it."""
    tree = ast.parse(PANEL_LOGIC[module].read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    provided = _feature_modules(f for _, features in _needs_calls(node) for f in features)
    needed = set()
    for rel in files:
        needed |= {top for top in ic.all_imports(ic.ROOT / rel) if not ic.is_allowed(top)}
    assert needed, f"{files} import nothing Slicer lacks; the check would be empty"
    assert needed <= provided, (f"{module}Lib.panel_logic.{function}() starts work that imports "
                                f"{sorted(needed - provided)} without installing it (_needs)")
