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

The standard views (:meth:`SlicerCoreScene.add_standard_views`) are made the way the
application makes them, not by hand: ``qMRMLLayoutManager::setMRMLScene`` gives the scene to
a ``vtkMRMLLayoutLogic``, whose ``UpdateFromMRMLScene`` creates the conventional views (Red
axial, Yellow sagittal, Green coronal, the 3-D view) and the layout node; each slice view's
``qMRMLSliceControllerWidget::setMRMLSliceNode`` gives its slice node to a
``vtkMRMLSliceLogic``, which creates the view's slice composite node. Switching layouts is
then the layout node's ``SetViewArrangement`` (what ``qMRMLLayoutManager::setLayout`` does),
and the layout logic creates missing views and applies the layout's properties exactly as
in the application (defect 5 of issue 11 shows up here).

Use the ``mrml_scene`` fixture: ``from slicer_harness import mrml_scene  # noqa: F401``.
Test-data builders (an oblique image, a box mask, a segmentation from a mask) follow it.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
import vtk  # noqa: E402  (installed with slicer-core)

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

    def add_standard_views(self):
        """The application's views (see the module docstring); returns the layout node."""
        self.layout_logic = slicer.vtkMRMLLayoutLogic()
        self.layout_logic.SetMRMLScene(self.scene)
        self.slice_logics = vtk.vtkCollection()
        self.app_logic.SetSliceLogics(self.slice_logics)
        self._slice_logic_for = {}
        self._observe_slice_nodes()
        self._slice_node_observer = self.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent,
                                                           lambda caller, event: self._observe_slice_nodes())
        return self.layout_logic.GetLayoutNode()

    def _observe_slice_nodes(self) -> None:
        """One slice logic per slice view (the layout manager's slice view factory does this
        for every slice node the layout logic creates)."""
        new = [self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
               for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]
        new = [node for node in new if node.GetID() not in self._slice_logic_for]
        for node in new:  # registered first: a slice logic adds nodes itself (re-entering here)
            self._slice_logic_for[node.GetID()] = None
        for node in new:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            logic.SetSliceNode(node)
            self.slice_logics.AddItem(logic)
            self._slice_logic_for[node.GetID()] = logic

    def slice_node(self, view: str):
        return self.scene.GetSingletonNode(view, "vtkMRMLSliceNode")

    def close(self) -> None:
        """Clear the scene and drop the logics. (Detaching the Segmentations logic from its
        scene by hand makes it warn about a missing subject hierarchy; letting it go with
        the scene does not.)"""
        if getattr(self, "_slice_node_observer", None) is not None:
            self.scene.RemoveObserver(self._slice_node_observer)
            self._slice_node_observer = None
            for logic in self._slice_logic_for.values():  # the views go first, as when the application quits
                if logic is not None:
                    logic.SetMRMLScene(None)
            self._slice_logic_for.clear()
            self.app_logic.SetSliceLogics(None)
            self.layout_logic.SetMRMLScene(None)
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


# ---------------------------------------------------------------------------------------
# Test-data builders shared by the Slicer-layer tests

OBLIQUE = sitk.VersorTransform((0.2, 0.3, 0.9), 0.35).GetMatrix()  # a rotated (oblique) acquisition


def make_image(size=(40, 36, 10), spacing=(0.8, 0.8, 4.8), origin=(-14.3, 21.7, -30.2),
               direction=OBLIQUE, dtype=np.int16, seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    shape = size[::-1]
    if np.issubdtype(dtype, np.floating):
        array = rng.normal(300.0, 80.0, shape).astype(dtype)
    else:
        array = rng.integers(0, 1200, shape).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def box_mask(reference: sitk.Image, lo=(12, 10, 3), hi=(26, 24, 7)) -> sitk.Image:
    """A 0/1 mask on the reference grid: a box of voxels [lo, hi) in (x, y, z) index order."""
    array = np.zeros(reference.GetSize()[::-1], np.uint8)
    array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(reference)
    return mask


def segmentation_from_mask(core, mask: sitk.Image, name="ROI"):
    """A segmentation node whose one segment is the mask (as drawn on the mask's grid)."""
    from ClinicalMRICommonLib.mrml_bridge import sitk_to_volume_node

    labelmap = sitk_to_volume_node(mask, f"{name} labelmap", scene=core.scene, labelmap=True)
    segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    core.scene.RemoveNode(labelmap)
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    segmentation.GetSegmentation().GetSegment(segment_id).SetName(name)
    return segmentation, segment_id


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol=1e-9):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)
