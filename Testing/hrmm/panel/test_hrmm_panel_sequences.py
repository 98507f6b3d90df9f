"""What HRMMPredict.py used to compute itself, now in HRMMPredictLib.slicer.panel_logic and
tested on real MRML scenes (slicer-core): each parameter-node field gives its own sequence
(T1WI, T2WI and FS-T2WI swapped would predict on the wrong images without any error), the
side-by-side puts each series into its view and orients the application's existing views
(restored after Four-Up), and the module file calls these (no own copy)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import SimpleITK as sitk

from slicer_harness import box_mask, make_image, mrml_scene, segmentation_from_mask, slicer  # noqa: F401

from ClinicalMRICommonLib.mrml_bridge import nodes_by_class, sitk_to_volume_node  # noqa: E402
from HRMMPredictLib.slicer import panel_logic  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
LABELS = {"t1": "T1WI", "t2": "T2WI", "fst2": "FS-T2WI"}


def _case(core):
    """Three volumes whose voxels say which sequence they are (1, 2, 3 everywhere inside)."""
    images = {}
    for value, key in enumerate(("t1", "t2", "fst2"), start=1):
        image = make_image(seed=value)
        images[key] = sitk.Cast(image * 0 + value * 100, sitk.sitkFloat32)
        images[key].CopyInformation(image)
    nodes = {k: sitk_to_volume_node(img, f"{LABELS[k]} series", scene=core.scene) for k, img in images.items()}
    segmentation, segment_id = segmentation_from_mask(core, box_mask(images["t2"]))
    return nodes, segmentation, segment_id


def _parameter_node(nodes, **swap):
    """The panel's parameter-node fields (t1Volume, t2Volume, fst2Volume) as plain attributes."""
    fields = {"t1Volume": nodes["t1"], "t2Volume": nodes["t2"], "fst2Volume": nodes["fst2"], **swap}
    return SimpleNamespace(**fields)


def _means(case):
    return {k: float(sitk.GetArrayViewFromImage(img).mean()) for k, img in case.images.items()}


def test_each_field_gives_its_own_sequence(mrml_scene):
    nodes, segmentation, segment_id = _case(mrml_scene)
    volumes = panel_logic.volumes_by_key(_parameter_node(nodes))
    assert list(volumes) == ["t1", "t2", "fst2"]
    assert [volumes[k] for k in volumes] == [nodes["t1"], nodes["t2"], nodes["fst2"]]
    case = panel_logic.case_images_from_nodes(volumes, segmentation, segment_id, labels=LABELS)
    assert _means(case) == {"t1": 100.0, "t2": 200.0, "fst2": 300.0}


def test_t1_and_t2_swapped_in_the_panel_reach_the_library_swapped(mrml_scene):
    """The mapping is the fields', not the nodes' order or names: a user who swapped T1WI and
    T2WI gets exactly that (the panel's check is the user's), and a mapping that ignored the
    fields would fail here."""
    nodes, segmentation, segment_id = _case(mrml_scene)
    swapped = _parameter_node(nodes, t1Volume=nodes["t2"], t2Volume=nodes["t1"])
    case = panel_logic.case_images_from_nodes(panel_logic.volumes_by_key(swapped), segmentation, segment_id,
                                              labels=LABELS)
    assert _means(case) == {"t1": 200.0, "t2": 100.0, "fst2": 300.0}


def test_unselected_sequence_is_none_and_named_in_the_error(mrml_scene):
    nodes, segmentation, segment_id = _case(mrml_scene)
    volumes = panel_logic.volumes_by_key(_parameter_node(nodes, fst2Volume=None))
    assert volumes["fst2"] is None
    from ClinicalMRICommonLib.errors import UserError

    with pytest.raises(UserError, match="no volume selected for FS-T2WI"):
        panel_logic.case_images_from_nodes(volumes, segmentation, segment_id, labels=LABELS)


def test_side_by_side_on_the_applications_views_and_back_after_four_up(mrml_scene):
    nodes, _segmentation, _segment_id = _case(mrml_scene)
    layout_node = mrml_scene.add_standard_views()
    layout = panel_logic.panel_layout(40510)
    assignment = panel_logic.side_by_side_assignment(panel_logic.volumes_by_key(_parameter_node(nodes)))
    assert {v: a["background"] for v, a in assignment.items()} == {"Red": nodes["t1"], "Yellow": nodes["t2"],
                                                                  "Green": nodes["fst2"]}
    layout.show(layout_node, mrml_scene.scene, assignment)
    views = ("Red", "Yellow", "Green")
    assert [mrml_scene.slice_node(v).GetOrientation() for v in views] == ["Sagittal"] * 3
    composites = {n.GetLayoutName(): n for n in nodes_by_class(mrml_scene.scene, "vtkMRMLSliceCompositeNode")}
    assert [composites[v].GetBackgroundVolumeID() for v in views] == [nodes[k].GetID() for k in ("t1", "t2", "fst2")]
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert layout.layout_changed(mrml_scene.scene, layout_node.GetViewArrangement()) == ["Red", "Green"]
    assert [mrml_scene.slice_node(v).GetOrientation() for v in views] == ["Axial", "Sagittal", "Coronal"]


def test_side_by_side_leaves_out_unselected_series(mrml_scene):
    nodes, _s, _i = _case(mrml_scene)
    volumes = panel_logic.volumes_by_key(_parameter_node(nodes, t1Volume=None, fst2Volume=None))
    assert list(panel_logic.side_by_side_assignment(volumes)) == ["Yellow"]
    assert panel_logic.side_by_side_assignment({"t1": None, "t2": None, "fst2": None}) == {}


def _method(tree, cls, name):
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_the_module_file_uses_the_library_mapping_and_layout():
    """HRMMPredict.py keeps no own field -> sequence mapping nor layout code: volumesByKey,
    guessSequences and showSeriesSideBySide go through panel_logic, and the widget passes the
    layout manager's layoutChanged(int) on (views restored after Four-Up)."""
    source = (ROOT / "HRMMPredict" / "HRMMPredict.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    calls = {m: {ast.unparse(n.func) for n in ast.walk(_method(tree, "HRMMPredictLogic", m)) if isinstance(n, ast.Call)}
             for m in ("volumesByKey", "showSeriesSideBySide", "layoutChanged")}
    assert "_panelLogic().volumes_by_key" in calls["volumesByKey"]
    assert {"pl.side_by_side_assignment", "pl.panel_layout", "self._panelLayout.show"} <= calls["showSeriesSideBySide"]
    assert "self._panelLayout.layout_changed" in calls["layoutChanged"]
    assert "_panelLogic().SEQUENCE_FIELDS" in ast.unparse(_method(tree, "HRMMPredictLogic", "guessSequences"))
    setup = ast.unparse(_method(tree, "HRMMPredictWidget", "setup"))
    assert "'layoutChanged(int)', self.onLayoutChanged" in setup


def test_the_model_folder_signal_is_connected_after_the_parameter_node():
    """Defect 4: connected before initializeParameterNode(), currentPathChanged fired with the
    unset Path()'s "." and "." was remembered as the last model folder."""
    tree = ast.parse((ROOT / "HRMMPredict" / "HRMMPredict.py").read_text(encoding="utf-8"))
    setup = _method(tree, "HRMMPredictWidget", "setup")
    lines = {}
    for node in ast.walk(setup):
        if isinstance(node, ast.Call):
            text = ast.unparse(node)
            if text == "self.initializeParameterNode()":
                lines["init"] = node.lineno
            elif "currentPathChanged" in text:
                lines["connect"] = node.lineno
    assert lines["init"] < lines["connect"], lines
    changed = ast.unparse(_method(tree, "HRMMPredictWidget", "onModelDirectoryChanged"))
    assert "panel_support.path_is_set(path)" in changed
    restore = ast.unparse(_method(tree, "HRMMPredictWidget", "initializeParameterNode"))
    assert "panel_support.path_is_set(last)" in restore


def test_the_stored_result_cache_key_changes_with_the_result(mrml_scene):
    """Defect 14: the panel parses the stored result once per (table ID, table MTime); a new
    result written into the same table must change that key (SetAttribute and the rows modify
    the node), and the same table unchanged keeps it."""
    table = mrml_scene.scene.AddNewNodeByClass("vtkMRMLTableNode", "HRMM prediction")
    result = {"model": "radiomics", "probability": 0.25, "class": 0, "threshold": 0.5,
              "models": {"radiomics": {"probability": 0.25, "class": 0, "threshold": 0.5}}, "features": [],
              "warnings": []}
    panel_logic.write_result_tables(result, table)
    key = (table.GetID(), table.GetMTime())
    assert panel_logic.result_from_table_node(table)["probability"] == 0.25
    assert (table.GetID(), table.GetMTime()) == key  # reading does not modify
    panel_logic.write_result_tables({**result, "probability": 0.75}, table)
    assert (table.GetID(), table.GetMTime()) != key
    assert panel_logic.result_from_table_node(table)["probability"] == 0.75
    source = (ROOT / "HRMMPredict" / "HRMMPredict.py").read_text(encoding="utf-8")
    stored = ast.unparse(_method(ast.parse(source), "HRMMPredictWidget", "_storedResult"))
    assert "key = (table.GetID(), table.GetMTime())" in stored and "self._storedResultCache" in stored
