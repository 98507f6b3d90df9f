"""The one embedded Segment Editor setup (ClinicalMRICommonLib.segment_editor; issue 11,
defects 9, 12 and 16), on Slicer's real ``vtkSlicerSegmentEditorLogic`` from slicer-core.

``qMRMLSegmentEditorWidget`` (Qt) is not available here, but its node methods only forward to
``vtkSlicerSegmentEditorLogic`` (Modules/Loadable/Segmentations/Widgets/
qMRMLSegmentEditorWidget.cxx, v5.10.0 and v5.12.0): :class:`EditorOverLogic` forwards them the
same way, so the order rules are those of Slicer's own logic ("need to set segment editor and
segmentation nodes first"). The widget's Qt-only calls (effects, keyboard shortcuts, view
observations) are recorded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from slicer_harness import make_image, mrml_scene, slicer  # noqa: F401
import vtk  # noqa: E402

from ClinicalMRICommonLib import segment_editor  # noqa: E402
from ClinicalMRICommonLib.mrml_bridge import new_segmentation, segment_editor_node, sitk_to_volume_node  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class EditorOverLogic:
    """qMRMLSegmentEditorWidget's node methods as the widget implements them."""

    def __init__(self, core):
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.calls = []
        self.core = core
        self.node = None

    # qMRMLSegmentEditorWidget::setMRMLScene: application logic, scene, verbose
    def setMRMLScene(self, scene):
        self.logic.SetMRMLApplicationLogic(self.core.app_logic)
        self.logic.SetMRMLScene(scene)
        self.logic.SetVerbose(True)

    def setMaximumNumberOfUndoStates(self, n):
        self.logic.SetMaximumNumberOfUndoStates(n)

    def mrmlSegmentEditorNode(self):
        return self.node

    def setMRMLSegmentEditorNode(self, node):
        self.node = node
        self.logic.SetSegmentEditorNode(node)

    def setSegmentationNode(self, node):
        if self.logic.GetSegmentationNode() == node:
            return
        self.logic.SetSegmentationNode(node)
        self.calls.append("setActiveEffect(None)")

    def setSourceVolumeNode(self, node):
        self.logic.SetSourceVolumeNode(node)

    def sourceVolumeNode(self):
        return self.logic.GetSourceVolumeNode()

    def __getattr__(self, name):  # the Qt-only methods: recorded
        if name in ("setSegmentationNodeSelectorVisible", "setSourceVolumeNodeSelectorVisible",
                    "setSwitchToSegmentationsButtonVisible", "installKeyboardShortcuts",
                    "uninstallKeyboardShortcuts", "removeViewObservations", "setActiveEffect"):
            return lambda *args: self.calls.append(f"{name}{args}")
        raise AttributeError(name)


@pytest.fixture
def vtk_errors(tmp_path):
    """VTK's error output (vtkErrorMacro) written to a file while the test runs."""
    path = tmp_path / "vtk.log"
    window = vtk.vtkFileOutputWindow()
    window.SetFileName(str(path))
    previous = vtk.vtkOutputWindow.GetInstance()
    vtk.vtkOutputWindow.SetInstance(window)
    yield lambda: path.read_text() if path.exists() else ""
    vtk.vtkOutputWindow.SetInstance(previous)


def test_source_volume_before_a_segmentation_is_refused_by_slicer(mrml_scene, vtk_errors):
    """What StrokeLesion's enter() did (defect 9): no segmentation yet, but a source volume."""
    editor = EditorOverLogic(mrml_scene)
    editor.setMRMLScene(mrml_scene.scene)
    editor.setMRMLSegmentEditorNode(segment_editor_node(mrml_scene.scene, "StrokeLesionSegmentEditor"))
    dwi = sitk_to_volume_node(make_image(), "DWI", scene=mrml_scene.scene)
    editor.setSegmentationNode(None)
    editor.setSourceVolumeNode(dwi)
    assert editor.sourceVolumeNode() is None
    assert "need to set segment editor and segmentation nodes first" in vtk_errors()


def test_bind_sets_the_segmentation_first_and_skips_the_volume_without_one(mrml_scene, vtk_errors):
    scene = mrml_scene.scene
    editor = segment_editor.setup(EditorOverLogic(mrml_scene), scene)
    assert editor.calls == ["setSegmentationNodeSelectorVisible(False,)", "setSourceVolumeNodeSelectorVisible(False,)",
                            "setSwitchToSegmentationsButtonVisible(False,)"]
    dwi = sitk_to_volume_node(make_image(), "DWI", scene=scene)
    segment_editor.bind(editor, scene, "StrokeLesionSegmentEditor", None, dwi)  # entering before a case is open
    assert editor.sourceVolumeNode() is None
    segmentation = new_segmentation(scene, "lesion", dwi)
    segment_editor.bind(editor, scene, "StrokeLesionSegmentEditor", segmentation, dwi)
    assert editor.logic.GetSegmentationNode() is segmentation and editor.sourceVolumeNode() is dwi
    assert editor.node is segment_editor_node(scene, "StrokeLesionSegmentEditor")
    assert vtk_errors() == ""  # no error on the way


def test_enter_installs_the_keyboard_shortcuts_and_exit_removes_them(mrml_scene):
    scene = mrml_scene.scene
    editor = EditorOverLogic(mrml_scene)
    editor.setMRMLScene(scene)
    node = segment_editor.enter(editor, scene, "AnnotationQC")
    assert node is segment_editor_node(scene, "AnnotationQC") is editor.node
    assert node is not segment_editor_node(scene, "SegmentEditor")  # not the Segment Editor module's
    assert editor.calls == ["installKeyboardShortcuts()"]
    segment_editor.exit(editor)
    assert editor.calls[1:] == ["setActiveEffect(None,)", "uninstallKeyboardShortcuts()", "removeViewObservations()"]
    segment_editor.release(editor)
    assert editor.logic.GetSegmentationNode() is None


def _method(tree: ast.Module, cls: str, name: str) -> ast.FunctionDef:
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(function: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(function) if isinstance(n, ast.Call)}


@pytest.mark.parametrize("module", ("AnnotationQC", "StrokeLesion", "HRMMPredict"))
def test_every_panel_sets_up_its_editor_with_the_one_helper(module):
    """enter() installs the keyboard shortcuts through segment_editor.enter, exit() removes
    them, and no module calls the editor's node setters in another order by hand (defect 16:
    one setup instead of three)."""
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    widget = f"{module}Widget"
    problems = []
    if "segment_editor.enter" not in _calls(_method(tree, widget, "enter")):
        problems.append("enter() does not call segment_editor.enter (keyboard shortcuts, editor node)")
    if "segment_editor.exit" not in _calls(_method(tree, widget, "exit")):
        problems.append("exit() does not call segment_editor.exit")
    by_hand = sorted(c for c in _calls(tree) if c.endswith((".setSourceVolumeNode", ".setMRMLSegmentEditorNode",
                                                            ".installKeyboardShortcuts")))
    if by_hand:
        problems.append(f"calls {by_hand} itself instead of segment_editor.bind/enter")
    assert not problems, f"{module}.py: " + "; ".join(problems)
