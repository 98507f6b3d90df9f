"""The extension's CMake files agree with what is on disk.

Slicer packages a scripted module from the explicit lists in its CMakeLists.txt
(``slicerMacroBuildScriptedModule(SCRIPTS ... RESOURCES ...)``): a library file that is not
listed is silently missing from the installed extension, and a listed file that does not
exist stops the build at configure time. These tests read the CMake files as text (no CMake
or Slicer needed) and name every file that is missing from, or stale in, the lists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Modules with a panel (the template classes, generic tests and a <M>Test each).
PANEL_MODULES = ("HRMMPredict", "AnnotationQC", "StrokeLesion")
#: Every module of the extension: the hidden library module ClinicalMRICommon too.
MODULES = ("ClinicalMRICommon",) + PANEL_MODULES


# --------------------------------------------------------------------------------------
# A small reader for the subset of CMake the extension uses


def _strip_comments(text: str) -> str:
    """Remove ``# ...`` comments (the files use no '#' inside quoted strings)."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(command name in lower case, argument tokens) for every command call, in order."""
    out = []
    for match in re.finditer(r"([A-Za-z_]\w*)\s*\(((?:[^()\"]|\"[^\"]*\")*)\)", _strip_comments(text)):
        args = re.findall(r"\"[^\"]*\"|[^\s\"]+", match.group(2))
        out.append((match.group(1).lower(), [a[1:-1] if a.startswith('"') else a for a in args]))
    return out


def _variables(commands: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Values of ``set(VAR ...)`` with ``${VAR}`` references expanded (in order)."""
    variables: dict[str, list[str]] = {}

    def expand(token: str) -> list[str]:
        whole = re.fullmatch(r"\$\{(\w+)\}", token)
        if whole and whole.group(1) in variables:
            return list(variables[whole.group(1)])
        return [re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), token)]

    for name, args in commands:
        if name == "set" and args:
            values = [v for a in args[1:] for v in expand(a)]
            variables[args[0]] = values
    return variables


def _shipped_files(folder: Path, base: Path) -> list[str]:
    """Files under ``folder`` that belong in the package, relative to ``base`` (posix).

    Left out: __pycache__, compiled files, and hidden names (editors' and atomic writers'
    temporary files start with a dot)."""
    found = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(base)
        if not p.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if p.suffix in (".pyc", ".pyo"):
            continue
        found.append(rel.as_posix())
    return found


def _module_cmake(module: str) -> tuple[list[tuple[str, list[str]]], dict[str, list[str]]]:
    path = ROOT / module / "CMakeLists.txt"
    assert path.is_file(), f"{path} is missing"
    cmds = _commands(path.read_text(encoding="utf-8"))
    return cmds, _variables(cmds)


# --------------------------------------------------------------------------------------
# Module CMakeLists.txt: every library file listed, nothing stale


@pytest.mark.parametrize("module", MODULES)
def test_module_lists_every_file(module):
    cmds, variables = _module_cmake(module)
    mdir = ROOT / module
    assert variables.get("MODULE_NAME") == [module], f"{module}/CMakeLists.txt: set(MODULE_NAME {module}) expected"
    scripts = variables.get("MODULE_PYTHON_SCRIPTS", [])
    resources = variables.get("MODULE_PYTHON_RESOURCES", [])
    assert not any("*" in s for s in scripts + resources), f"{module}/CMakeLists.txt: list files explicitly, no globs"

    on_disk = _shipped_files(mdir / f"{module}Lib", mdir) + _shipped_files(mdir / "Resources", mdir)
    want_scripts = [f"{module}.py"] + [f for f in on_disk if f.endswith(".py")]
    want_resources = [f for f in on_disk if not f.endswith(".py")]

    problems = []
    for f in want_scripts:
        if f not in scripts:
            problems.append(f"not in MODULE_PYTHON_SCRIPTS: {f}")
    for f in want_resources:
        if f not in resources:
            problems.append(f"not in MODULE_PYTHON_RESOURCES: {f}")
    for f in scripts + resources:
        if not (mdir / f).is_file():
            problems.append(f"listed but absent: {f}")
    for f in scripts:
        if not f.endswith(".py"):
            problems.append(f"non-Python file in MODULE_PYTHON_SCRIPTS (move it to RESOURCES): {f}")
    for lst in (scripts, resources):
        dupes = sorted({f for f in lst if lst.count(f) > 1})
        problems += [f"listed twice: {f}" for f in dupes]
    assert not problems, (
        f"{module}/CMakeLists.txt does not match {module}/ on disk "
        f"(edit the explicit lists; paths are relative to {module}/):\n  " + "\n  ".join(problems))


@pytest.mark.parametrize("module", PANEL_MODULES)
def test_module_builds_scripted_module_with_tests(module):
    cmds, _ = _module_cmake(module)
    build = [args for name, args in cmds if name == "slicermacrobuildscriptedmodule"]
    assert len(build) == 1, f"{module}/CMakeLists.txt must call slicerMacroBuildScriptedModule once"
    args = build[0]
    for keyword, value in (("NAME", "${MODULE_NAME}"), ("SCRIPTS", "${MODULE_PYTHON_SCRIPTS}"),
                           ("RESOURCES", "${MODULE_PYTHON_RESOURCES}")):
        assert keyword in args and args[args.index(keyword) + 1] == value, \
            f"{module}: slicerMacroBuildScriptedModule needs {keyword} {value}"
    assert "WITH_GENERIC_TESTS" in args

    names = [name for name, _ in cmds]
    assert ("if", ["BUILD_TESTING"]) in cmds, f"{module}: tests must be inside if(BUILD_TESTING)"
    start = cmds.index(("if", ["BUILD_TESTING"]))
    end = names.index("endif", start)
    inside = cmds[start:end]
    assert ("slicer_add_python_unittest", ["SCRIPT", "${MODULE_NAME}.py"]) in inside, \
        f"{module}: slicer_add_python_unittest(SCRIPT ${{MODULE_NAME}}.py) must register {module}Test"
    assert ("add_subdirectory", ["Testing"]) in inside
    assert (ROOT / module / "Testing" / "CMakeLists.txt").is_file()
    assert ("add_subdirectory", ["Python"]) in _commands((ROOT / module / "Testing" / "CMakeLists.txt").read_text())
    assert (ROOT / module / "Testing" / "Python" / "CMakeLists.txt").is_file()


@pytest.mark.parametrize("module", MODULES)
def test_only_the_module_script_sits_at_the_top_of_the_module_folder(module):
    """Slicer's scripted-module factory registers every .py file it finds in a module path
    as a module of its own; helpers must live in <M>Lib/ (a sub-folder it does not scan)."""
    extra = sorted(p.name for p in (ROOT / module).glob("*.py") if p.name != f"{module}.py")
    assert not extra, f"{module}/ holds Python files other than {module}.py: {extra}; move them into {module}Lib/"


@pytest.mark.parametrize("module", PANEL_MODULES)
def test_module_script_has_the_template_classes(module):
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    expected = {
        module: "ScriptedLoadableModule",
        f"{module}Widget": "ScriptedLoadableModuleWidget",
        f"{module}Logic": "ScriptedLoadableModuleLogic",
        f"{module}Test": "ScriptedLoadableModuleTest",
    }
    for cls, base in expected.items():
        assert cls in classes, f"{module}.py lacks class {cls}"
        bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in classes[cls].bases]
        assert base in bases, f"{module}.py: {cls} must derive from {base} (has {bases})"
    param = classes.get(f"{module}ParameterNode")
    assert param is not None, f"{module}.py lacks class {module}ParameterNode"
    decorators = [d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in param.decorator_list]
    assert "parameterNodeWrapper" in decorators


# --------------------------------------------------------------------------------------
# Top-level CMakeLists.txt: a real Slicer extension


def test_extension_cmakelists():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    cmds = _commands(text)
    variables = _variables(cmds)
    names = [n for n, _ in cmds]
    assert "cmake_minimum_required" in names
    assert any(n == "project" and a for n, a in cmds)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_DEPENDS"):
        assert variables.get(var) and variables[var][0].strip(), f"CMakeLists.txt: {var} is not set"
    assert "EXTENSION_SCREENSHOTURLS" in variables
    assert variables["EXTENSION_ICONURL"][0].startswith("https://")
    icon = variables["EXTENSION_ICONURL"][0].rsplit("/main/", 1)[-1]
    assert (ROOT / icon).is_file(), f"EXTENSION_ICONURL points at {icon}, which is not in the repository"

    assert ("find_package", ["Slicer", "REQUIRED"]) in cmds
    assert ("include", ["${Slicer_USE_FILE}"]) in cmds
    modules_on_disk = sorted(p.parent.name for p in ROOT.glob("*/*.py") if p.stem == p.parent.name)
    assert sorted(modules_on_disk) == sorted(MODULES)
    for module in modules_on_disk:
        assert ("add_subdirectory", [module]) in cmds, f"CMakeLists.txt lacks add_subdirectory({module})"
    # generate-config and CPack come last, after the modules
    assert names[-2:] == ["include", "include"]
    assert [a for _, a in cmds[-2:]] == [["${Slicer_EXTENSION_GENERATE_CONFIG}"], ["${Slicer_EXTENSION_CPACK}"]]


def test_common_library_module_is_hidden_first_and_a_dependency():
    """ClinicalMRICommon is added first (CMake), is hidden, and the modules that use its library
    depend on it, not on AnnotationQC (so a failing AnnotationQC cannot take them down)."""
    cmds = _commands((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    subdirs = [a[0] for n, a in cmds if n == "add_subdirectory"]
    assert subdirs[0] == "ClinicalMRICommon", f"ClinicalMRICommon must be added first, not after {subdirs[:1]}"
    tree = ast.parse((ROOT / "ClinicalMRICommon" / "ClinicalMRICommon.py").read_text(encoding="utf-8"))
    src = ast.unparse(tree)
    assert "self.parent.hidden = True" in src
    for module in PANEL_MODULES:  # AnnotationQC imports ClinicalMRICommonLib too
        text = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
        deps = [ast.literal_eval(node.value) for node in ast.walk(ast.parse(text))
                if isinstance(node, ast.Assign) and any(ast.unparse(t) == "self.parent.dependencies" for t in node.targets)]
        assert deps and "ClinicalMRICommon" in deps[0] and "AnnotationQC" not in deps[0], (module, deps)
    offenders = [str(p.relative_to(ROOT)) for m in ("HRMMPredict", "StrokeLesion") for p in (ROOT / m).rglob("*.py")
                 if "AnnotationQCLib" in p.read_text(encoding="utf-8")]
    assert not offenders, f"these files name AnnotationQCLib (use ClinicalMRICommonLib): {offenders}"


def test_cmake_minimum_accepts_the_cmake_slicer_extensions_are_built_with():
    """Slicer 5.10's extension template says cmake_minimum_required(VERSION 3.20.6...3.22.6):
    a minimum above 3.20.6 refuses the CMake the extension index builds with."""
    cmds = _commands((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    version = [a for n, a in cmds if n == "cmake_minimum_required"][0][1]
    low = tuple(int(x) for x in version.split("...")[0].split("."))
    assert low <= (3, 20, 6), f"cmake_minimum_required VERSION {version}: the minimum must be at most 3.20.6"
