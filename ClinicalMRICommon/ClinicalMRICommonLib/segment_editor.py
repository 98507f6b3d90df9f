"""The embedded Segment Editor of the panels, set up one way (HRMMPredict, AnnotationQC,
StrokeLesion).

A panel embeds a ``slicer.qMRMLSegmentEditorWidget`` bound to the segmentation it works on.
The widget keeps its state in a ``vtkMRMLSegmentEditorNode`` and forwards the node choices to
``vtkSlicerSegmentEditorLogic`` (Modules/Loadable/Segmentations/Widgets/
qMRMLSegmentEditorWidget.cxx, v5.10.0 and v5.12.0: ``setSegmentationNode`` ->
``Logic->SetSegmentationNode``, ``setSourceVolumeNode`` -> ``Logic->SetSourceVolumeNode``).
The logic refuses, with an error in the log, a segmentation before the editor node is set and
a source volume before a segmentation is set (vtkSlicerSegmentEditorLogic.cxx:
"need to set segment editor and segmentation nodes first"). So the order is fixed here:

1. :func:`setup` once in the widget's ``setup()``: scene, undo states, selectors hidden (the
   panel decides what is edited);
2. :func:`enter` in ``enter()``: the panel's own editor node (a scene singleton per panel,
   :func:`ClinicalMRICommonLib.mrml_bridge.segment_editor_node`, so the Segment Editor
   module's state is not shared), then the keyboard shortcuts (1-9 effects, Escape, Z/Y undo;
   ``installKeyboardShortcuts``), which the editor does not install by itself;
3. :func:`bind` whenever the edited segmentation changes: the segmentation first, and the
   source volume only when there is a segmentation;
4. :func:`exit` in ``exit()``: the active effect off, the shortcuts uninstalled, the view
   observations removed (otherwise the panel's effect keeps reacting in the views);
5. :func:`release` on scene close (nothing of the closed scene is kept).

``editor`` is the ``qMRMLSegmentEditorWidget`` (duck-typed; nothing is imported at module level).
"""

from __future__ import annotations

__all__ = ["bind", "enter", "exit", "release", "setup"]


def setup(editor, scene, *, undo_states: int = 10, selectors_visible: bool = False):
    """Give the widget the scene; hide the segmentation/volume selectors unless asked."""
    editor.setMaximumNumberOfUndoStates(undo_states)
    editor.setMRMLScene(scene)
    if not selectors_visible:
        editor.setSegmentationNodeSelectorVisible(False)
        editor.setSourceVolumeNodeSelectorVisible(False)
        editor.setSwitchToSegmentationsButtonVisible(False)
    return editor


def enter(editor, scene, tag: str):
    """The panel's own editor node, then the keyboard shortcuts; returns the editor node."""
    from .mrml_bridge import segment_editor_node

    node = segment_editor_node(scene, tag)
    if editor.mrmlSegmentEditorNode() is not node:
        editor.setMRMLSegmentEditorNode(node)
    editor.installKeyboardShortcuts()
    return node


def bind(editor, scene, tag: str, segmentation, source_volume=None) -> None:
    """Edit ``segmentation`` drawing on ``source_volume``: editor node first (when the
    panel has not entered yet), then the segmentation, then the source volume (only with a
    segmentation; ``None`` keeps the editor's choice)."""
    from .mrml_bridge import segment_editor_node

    node = segment_editor_node(scene, tag)
    if editor.mrmlSegmentEditorNode() is not node:
        editor.setMRMLSegmentEditorNode(node)
    editor.setSegmentationNode(segmentation)
    if segmentation is not None and source_volume is not None:
        editor.setSourceVolumeNode(source_volume)


def exit(editor) -> None:  # noqa: A001 - the panel method it belongs to is called exit()
    """Active effect off, keyboard shortcuts and view observations removed."""
    editor.setActiveEffect(None)
    editor.uninstallKeyboardShortcuts()
    editor.removeViewObservations()


def release(editor) -> None:
    """Before the scene closes: no effect, no segmentation (the nodes are going away)."""
    editor.setActiveEffect(None)
    editor.setSegmentationNode(None)
    editor.removeViewObservations()
