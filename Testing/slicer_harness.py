"""A real MRML scene for tests, from ``slicer-core`` (Slicer's MRML and module logics without
the application or Qt).

In the Slicer application, ``qSlicerCoreApplication`` creates the scene and the application
logic, and every loadable module registers its logic with them. ``slicer-core`` has the same
classes but nobody to wire them, so :class:`SlicerCoreScene` does what the application's
start-up does for the modules this extension uses:

- an application logic with the colour logic's default colour tables (labelmap and
  scalar-volume display nodes look them up by id; without them every new labelmap warns),
- the Volumes, Segmentations, Subject hierarchy, Tables and Data module logics, each given
  the scene and the application logic and registered under its module name.

The Segmentations logic is the one that matters for the bridge: it registers the
segmentation converter rules (closed surface <-> binary labelmap, fractional labelmap) when
it gets a scene. Without them a segment whose source representation is not a binary
labelmap cannot be exported onto a volume's grid.

Not available in slicer-core (so not here): ``slicer.app``, ``slicer.modules``, Qt, the
Terminologies logic's share files, CLI modules. ``slicer.mrmlScene`` is set to the fresh
scene for the ``slicer.util`` helpers, and restored afterwards.

Use the ``mrml_scene`` fixture: ``from slicer_harness import mrml_scene  # noqa: F401``.
"""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

_LOGICS = (
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Tables", "vtkSlicerTablesLogic"),
    ("Data", "vtkSlicerDataModuleLogic"),
)


class SlicerCoreScene:
    """A fresh MRML scene with an application logic and the module logics registered."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        color_logic = self.app_logic.GetColorLogic()
        color_logic.SetMRMLScene(self.scene)
        color_logic.AddDefaultColorNodes()
        self.logics = {}
        for name, class_name in _LOGICS:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic

    def logic(self, name: str):
        return self.logics[name]

    def close(self) -> None:
        """Clear the scene and drop the logics. (Detaching the Segmentations logic from its
        scene by hand makes it warn about a missing subject hierarchy; letting it go with
        the scene does not.)"""
        self.scene.Clear(True)
        self.logics.clear()


@pytest.fixture
def mrml_scene():
    """A fresh :class:`SlicerCoreScene`; ``slicer.mrmlScene`` points at its scene meanwhile."""
    core = SlicerCoreScene()
    had_scene = hasattr(slicer, "mrmlScene")
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = core.scene
    try:
        yield core
    finally:
        if had_scene:
            slicer.mrmlScene = previous
        else:
            del slicer.mrmlScene
        core.close()
