"""ClinicalMRICommonLib.panel_support: unset path fields (defect 4), path history (defect 10)
and the error-display contract of the panels' buttons (defect 8)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.panel_support import path_is_set, path_or_none, remember_path, run_action

ROOT = Path(__file__).resolve().parents[2]


def test_an_unset_path_parameter_is_not_a_folder():
    # pathlib.Path's parameter default is Path(); Slicer's serializer stores str(Path()) == "."
    # and an emptied ctkPathLineEdit reads back as Path("") == Path(".")
    for unset in (None, "", " ", ".", Path(), Path("")):
        assert not path_is_set(unset) and path_or_none(unset) is None
    for chosen in ("/data/study", Path("relative/study"), "..", "./study"):
        assert path_is_set(chosen) and path_or_none(chosen) == Path(chosen)


class PathLineEdit:
    """The two members of CTK's ctkPathLineEdit that remember_path uses (currentPath and the
    addCurrentPathToHistory slot, ctkPathLineEdit.cpp); CTK's widget is not available here."""

    def __init__(self, path):
        self.currentPath = path
        self.history = []

    def addCurrentPathToHistory(self):
        self.history.insert(0, self.currentPath)


def test_remember_path_writes_the_history_only_for_a_chosen_path():
    edit = PathLineEdit(".")
    assert remember_path(edit) is False and edit.history == []  # "." would be remembered by CTK otherwise
    edit.currentPath = "/data/study"
    assert remember_path(edit) is True and edit.history == ["/data/study"]


@pytest.fixture
def slicer_util():
    """Slicer's own slicer.util (shipped by slicer-core) with the one member of the absent
    application it needs here: slicer.app.testingEnabled() (testing mode: no dialog)."""
    slicer = pytest.importorskip("slicer")

    class App:
        @staticmethod
        def testingEnabled():
            return True

    had = hasattr(slicer, "app")
    previous = getattr(slicer, "app", None)
    slicer.app = App()
    yield slicer.util
    if had:
        slicer.app = previous
    else:
        del slicer.app


def test_try_with_error_display_re_raises(slicer_util):
    """The behaviour the panels must live with (Base/Python/slicer/util.py)."""
    with pytest.raises(UserError):
        with slicer_util.tryWithErrorDisplay("Export failed."):
            raise UserError("output folder is not empty")


def test_run_action_shows_once_and_returns_instead_of_raising(slicer_util, caplog):
    assert run_action("Loading failed.", lambda a, b=0: a + b, 1, b=2, wait_cursor=False) == (True, 3)

    def fails():
        raise UserError("choose a session folder first")

    with caplog.at_level(logging.ERROR):
        assert run_action("Loading failed.", fails, wait_cursor=False) == (False, None)
    assert "Loading failed. choose a session folder first" in caplog.text  # testing mode: in the log


def _direct_try_with_error_display(module: str) -> list[int]:
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "tryWithErrorDisplay"]


@pytest.mark.parametrize("module", ("AnnotationQC", "StrokeLesion", "HRMMPredict"))
def test_buttons_use_run_action(module):
    """A button's handler that wraps its work in tryWithErrorDisplay itself gets the
    exception back after the dialog: StrokeLesion's "_run returns None on error" and its
    "return False" after an install were never reached, and HRMMPredict's Predict skipped
    _updateButtons and left its job folder (defect 8). Buttons go through run_action."""
    lines = _direct_try_with_error_display(module)
    assert not lines, f"{module}.py uses slicer.util.tryWithErrorDisplay directly at lines {lines}; use run_action"


def test_no_test_folder_is_named_like_the_slicer_package():
    """slicer-core's ``slicer`` package extends its path with every ``slicer`` folder on
    sys.path (pkgutil.extend_path) and imports every module in it (slicer/__init__.py). The
    test folders are on sys.path (pytest prepend mode), so a ``Testing/**/slicer`` folder has its
    test files imported as ``slicer.<name>`` by ``import slicer``, and one failing import
    there breaks ``import slicer`` for the whole test session."""
    bad = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "Testing").rglob("slicer") if p.is_dir()
                 and any(p.glob("*.py")))
    assert not bad, (f"{bad}: rename them (e.g. panel) so that `import slicer` does not import their "
                     "test files")
