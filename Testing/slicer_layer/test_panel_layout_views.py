"""A panel's own layout on the application's standard views (issue 11, defect 5).

The views are created the way the application creates them (slicer_harness: a
vtkMRMLLayoutLogic given the scene, one vtkMRMLSliceLogic per slice view), so Red, Yellow
and Green exist with their conventional orientations before a panel switches layout, as in
Slicer. A layout description's ``action="default"`` orientation is applied only to views the
layout logic creates (vtkMRMLLayoutLogic::CreateMissingViews), which is why StrokeLesion's
"three axial views" showed ADC sagittal and FLAIR coronal.
"""

from __future__ import annotations

import pytest

from slicer_harness import make_image, mrml_scene, slicer  # noqa: F401

from ClinicalMRICommonLib.mrml_bridge import (  # noqa: E402
    PanelLayout,
    nodes_by_class,
    register_layout,
    slice_views_layout_xml,
    sitk_to_volume_node,
)

VIEWS = ("Red", "Yellow", "Green")


@pytest.fixture
def views(mrml_scene):
    layout_node = mrml_scene.add_standard_views()
    return mrml_scene, layout_node


def orientations(core):
    return [core.slice_node(v).GetOrientation() for v in VIEWS]


def test_standard_views_are_the_applications(views):
    core, layout_node = views
    assert orientations(core) == ["Axial", "Sagittal", "Coronal"]
    assert sorted(n.GetLayoutName() for n in nodes_by_class(core.scene, "vtkMRMLSliceCompositeNode")) == \
        sorted(VIEWS)  # one composite node per slice view, made by its slice logic
    assert layout_node is core.scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")


def test_a_layout_descriptions_default_orientation_leaves_existing_views_alone(views):
    """The defect as it was: the description alone does not make Yellow and Green axial."""
    core, layout_node = views
    register_layout(layout_node, 2604, slice_views_layout_xml(VIEWS, "Axial"))
    layout_node.SetViewArrangement(2604)
    assert orientations(core) == ["Axial", "Sagittal", "Coronal"]


def test_panel_layout_orients_the_views_and_restores_them(views):
    core, layout_node = views
    volumes = [sitk_to_volume_node(make_image(seed=i), f"v{i}", scene=core.scene) for i in range(3)]
    layout = PanelLayout(2604, VIEWS, "Axial")
    shown = layout.show(layout_node, core.scene, {v: {"background": vol} for v, vol in zip(VIEWS, volumes)})
    assert shown == list(VIEWS) and layout_node.GetViewArrangement() == 2604
    assert orientations(core) == ["Axial", "Axial", "Axial"]
    composites = {n.GetLayoutName(): n for n in nodes_by_class(core.scene, "vtkMRMLSliceCompositeNode")}
    assert [composites[v].GetBackgroundVolumeID() for v in VIEWS] == [vol.GetID() for vol in volumes]
    assert layout.layout_changed(core.scene, 2604) == []  # still this layout: nothing changes
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert layout.layout_changed(core.scene, layout_node.GetViewArrangement()) == ["Yellow", "Green"]
    assert orientations(core) == ["Axial", "Sagittal", "Coronal"]


def test_a_view_the_user_re_oriented_is_left_as_they_chose(views):
    core, layout_node = views
    layout = PanelLayout(2604, VIEWS, "Axial")
    layout.show(layout_node, core.scene)
    core.slice_node("Green").SetOrientation("Sagittal")  # the user's choice in the panel's layout
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    assert layout.layout_changed(core.scene, layout_node.GetViewArrangement()) == ["Yellow"]
    assert orientations(core) == ["Axial", "Sagittal", "Sagittal"]


def test_sagittal_side_by_side_puts_red_and_green_back(views):
    """HRMMPredict's side-by-side (three sagittal views): Red and Green must be axial and
    coronal again in Four-Up (what HRMMPredict should use, see docs/slicer_layer.md)."""
    core, layout_node = views
    layout = PanelLayout(40510, VIEWS, "Sagittal")
    layout.show(layout_node, core.scene)
    assert orientations(core) == ["Sagittal", "Sagittal", "Sagittal"]
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert layout.layout_changed(core.scene, layout_node.GetViewArrangement()) == ["Red", "Green"]
    assert orientations(core) == ["Axial", "Sagittal", "Coronal"]


def test_views_the_layout_logic_creates_get_the_orientation(views):
    """A view that does not exist yet (Red+ of a compare layout) is created by the layout
    logic with the description's default orientation; PanelLayout then has nothing to set."""
    core, layout_node = views
    layout = PanelLayout(2605, ("Red+", "Yellow+"), "Coronal")
    layout.show(layout_node, core.scene)
    assert [core.slice_node(v).GetOrientation() for v in ("Red+", "Yellow+")] == ["Coronal", "Coronal"]
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert layout.layout_changed(core.scene, layout_node.GetViewArrangement()) == []
