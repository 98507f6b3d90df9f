"""HRMMPredict's MRML logic against real MRML scenes from slicer-core (no fake slicer module):
one case (three sequences + the ROI) read from nodes, and the prediction the panel runs.

The generic node <-> image bridge is tested in test_slicer_panel_logic.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_harness import box_mask, make_image, mrml_scene, segmentation_from_mask, slicer  # noqa: F401

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import same_grid
from ClinicalMRICommonLib.mrml_bridge import segment_to_sitk_mask, sitk_to_volume_node, table_node_to_rows
from ClinicalMRICommonLib.process_runner import ProcessRunner, RunState  # noqa: E402
from HRMMPredictLib.sequences import SEQUENCES  # noqa: E402
from HRMMPredictLib.slicer import panel_logic, panel_results  # noqa: E402
from HRMMPredictLib.slicer.panel_logic import case_images_from_nodes  # noqa: E402
from HRMMPredictLib.slicer.predict_worker import worker_command  # noqa: E402

# ---------------------------------------------------------------------------------------
# A whole case (what HRMMPredictLogic reads before predicting)

LABELS = {"t1": "T1WI", "t2": "T2WI", "fst2": "FS-T2WI"}


def three_sequences(core, t1_grid=None):
    t2 = make_image(seed=2)
    images = {"t1": make_image(seed=1, **(t1_grid or {})), "t2": t2, "fst2": make_image(seed=3)}
    nodes = {k: sitk_to_volume_node(img, f"{LABELS[k]} series", scene=core.scene) for k, img in images.items()}
    drawn = box_mask(t2)
    segmentation, segment_id = segmentation_from_mask(core, drawn)
    return images, nodes, drawn, segmentation, segment_id


def test_case_on_one_grid_gives_the_drawn_roi_once(mrml_scene):
    images, nodes, drawn, segmentation, segment_id = three_sequences(mrml_scene)
    messages = []
    case = case_images_from_nodes(nodes, segmentation, segment_id, labels=LABELS, progress=messages.append)
    assert case.shared_grid and case.warnings == [] and not any(case.resampled.values())
    assert isinstance(case.roi, sitk.Image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(case.roi), sitk.GetArrayViewFromImage(drawn))
    for key, image in images.items():
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(case.images[key]), sitk.GetArrayViewFromImage(image))
    assert messages[0] == "reading T1WI from 'T1WI series'" and len(messages) == 6


def test_case_with_t1_on_another_grid_says_the_roi_was_resampled(mrml_scene):
    t1_grid = dict(size=(60, 52, 15), spacing=(0.55, 0.55, 3.3), origin=(-15.1, 21.3, -31.7))
    images, nodes, drawn, segmentation, segment_id = three_sequences(mrml_scene, t1_grid)
    case = case_images_from_nodes(nodes, segmentation, segment_id, labels=LABELS)
    assert case.resampled == {"t1": True, "t2": False, "fst2": False}
    assert case.warnings == ["the ROI was resampled onto the T1WI grid (it was drawn on another voxel grid)"]
    assert not case.shared_grid
    rois = case.roi
    assert set(rois) == {"t1", "t2", "fst2"}
    assert same_grid(rois["t1"], images["t1"]) and same_grid(rois["fst2"], images["fst2"])


def test_volume_removed_mid_way_is_a_user_error(mrml_scene):
    _, nodes, _, segmentation, segment_id = three_sequences(mrml_scene)

    def remove_fst2_after_first_step(message):
        if message.startswith("reading T1WI") and nodes["fst2"].GetScene() is not None:
            mrml_scene.scene.RemoveNode(nodes["fst2"])

    with pytest.raises(UserError, match="FS-T2WI volume 'FS-T2WI series' is no longer in the scene"):
        case_images_from_nodes(nodes, segmentation, segment_id, labels=LABELS, progress=remove_fst2_after_first_step)


def test_volume_removed_after_it_was_read_is_a_user_error(mrml_scene):
    _, nodes, _, segmentation, segment_id = three_sequences(mrml_scene)

    def remove_t1_during_export(message):
        if message.startswith("exporting the ROI onto the FS-T2WI") and nodes["t1"].GetScene() is not None:
            mrml_scene.scene.RemoveNode(nodes["t1"])

    with pytest.raises(UserError, match="T1WI volume 'T1WI series' is no longer in the scene"):
        case_images_from_nodes(nodes, segmentation, segment_id, labels=LABELS, progress=remove_t1_during_export)


def test_missing_selection_is_a_user_error(mrml_scene):
    _, nodes, _, segmentation, segment_id = three_sequences(mrml_scene)
    nodes["t2"] = None
    with pytest.raises(UserError, match="no volume selected for T2WI"):
        case_images_from_nodes(nodes, segmentation, segment_id, labels=LABELS)


def test_prediction_summary_rows_one_per_model_fused_first():
    result = {"model": "fusion", "models": {
        "radiomics": {"probability": 0.7, "threshold": 0.5, "class": "HRMM"},
        "fusion": {"probability": 0.4, "threshold": 0.45, "class": "SRMM"}}}
    rows = panel_logic.prediction_summary_rows(result)
    assert rows == [
        {"model": "fusion", "probability": 0.4, "threshold": 0.45, "class": "SRMM", "primary": True},
        {"model": "radiomics", "probability": 0.7, "threshold": 0.5, "class": "HRMM", "primary": False}]


# ---------------------------------------------------------------------------------------
# The prediction, three ways: in Slicer's process, in the panel's worker process, and
# `hrmm predict` on the files. The case comes from the trained test cohort.


@pytest.fixture(scope="module")
def cohort_case(small_cohort):
    """Files of the cohort's first lesion (sequence -> path, "roi" -> path)."""
    manifest = Path(small_cohort)
    with manifest.open(newline="") as f:
        row = next(csv.DictReader(f))
    return {k: str((manifest.parent / row[k]).resolve()) for k in (*SEQUENCES, "roi")}


def load_with_slicer(core, files):
    """The case as a user gets it in Slicer: volumes read by Slicer's NIfTI reader, the ROI
    file loaded as a labelmap and imported into a segmentation."""
    nodes = {}
    for key in SEQUENCES:
        storage = core.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(files[key])
        nodes[key] = core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{LABELS[key]} series")
        assert storage.ReadData(nodes[key])
    storage = core.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(files["roi"])
    labelmap = core.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "roi")
    assert storage.ReadData(labelmap)
    segmentation = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ROI")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    core.scene.RemoveNode(labelmap)
    return nodes, segmentation, segmentation.GetSegmentation().GetNthSegmentID(0)


def run_worker(request_path) -> tuple[ProcessRunner, list[str]]:
    runner = ProcessRunner()
    assert runner.start(worker_command(request_path, python=sys.executable))
    lines = runner.wait(180)
    progress = [line.message["message"] for line in lines if line.message and line.message["kind"] == "progress"]
    return runner, progress


def comparable(result: dict) -> dict:
    """A result without what differs between runs by design: the run times, which grids
    Slicer resampled the ROI onto (the CLI does not read from Slicer), and the preview picture
    of the 2.5D crops (the panel asks for it, `hrmm predict --json` only with --preview)."""
    out = {k: v for k, v in result.items() if k not in ("timings", "roi_resampled")}
    if "deep_input" in out:
        out["deep_input"] = {k: v for k, v in out["deep_input"].items() if not k.startswith("preview_png")}
    return out


@pytest.mark.slow  # three predictions (two in subprocesses) + the session's trained bundles
@pytest.mark.parametrize("bundle_fixture", ["trained_bundle", "fused_bundle"])
def test_panel_numbers_are_the_cli_numbers(mrml_scene, bundle_fixture, cohort_case, tmp_path, request):
    """THE check of the issue: the panel (nodes -> worker process -> tables) and in-process
    prediction from nodes give exactly what `hrmm predict --json` gives on the same files,
    for a radiomics-only bundle and for one with the deep model and the fusion."""
    bundle = str(Path(request.getfixturevalue(bundle_fixture)[0]).resolve())
    cli = subprocess.run([sys.executable, "-m", "HRMMPredictLib.cli", "predict", "--t1", cohort_case["t1"],
                          "--t2", cohort_case["t2"], "--fst2", cohort_case["fst2"], "--roi", cohort_case["roi"],
                          "--model", bundle, "--device", "cpu", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)

    nodes, segmentation, segment_id = load_with_slicer(mrml_scene, cohort_case)
    scene = mrml_scene.scene
    summary = scene.AddNewNodeByClass("vtkMRMLTableNode", "HRMM prediction")
    features = scene.AddNewNodeByClass("vtkMRMLTableNode", "HRMM prediction features")

    # the panel's path: read the nodes, hand the case to the worker process, import its result
    messages = []
    request = panel_logic.write_prediction_request(nodes, segmentation, segment_id, bundle, tmp_path / "job",
                                                   device="cpu", progress=messages.append)
    runner, progress = run_worker(request)
    assert runner.state is RunState.IMPORTING, runner.error
    panel = panel_logic.import_prediction_result(runner.result["path"], summary, features)
    runner.finish_import()

    assert panel["roi_resampled"] == {"t1": False, "t2": False, "fst2": False}
    assert comparable(panel) == comparable(expected)  # every number, exactly
    assert messages[-1] == "writing the case for the prediction process"
    assert progress[0] == "reading the case" and any(p.startswith("extracting") for p in progress)

    # the tables hold the same numbers, the fused/primary model first, and the whole result
    rows = table_node_to_rows(summary)
    assert rows[0]["model"] == expected["model"] and rows[0]["primary"] is True
    assert {r["model"]: r["probability"] for r in rows} == \
        {name: m["probability"] for name, m in expected["models"].items()}
    assert [r["value"] for r in table_node_to_rows(features)] == [f["value"] for f in expected["features"]]
    assert panel_logic.result_from_table_node(summary) == json.loads(json.dumps(panel))

    # in Slicer's own process (predict_from_nodes): the same numbers again
    in_process = panel_logic.predict_from_nodes(nodes, segmentation, segment_id, bundle, device="cpu")
    assert comparable(json.loads(json.dumps(in_process))) == comparable(expected)
    if bundle_fixture == "fused_bundle":  # the fused model is listed first, the 2.5D crops come along
        assert rows[0]["model"] == "fusion" and {"deep", "fusion"} <= {r["model"] for r in rows}
        assert [label for label, _ in panel_results.preview_images(panel)] == ["deep_input preview_png_base64"]


@pytest.mark.slow
def test_worker_with_t1_on_another_grid_matches_in_process_prediction(mrml_scene, trained_bundle, cohort_case,
                                                                      tmp_path):
    """The ROI drawn on T2 while T1 has another grid: resampled by Slicer's exporter, said so
    in the warnings, and the worker predicts exactly what the in-process path predicts."""
    bundle = str(Path(trained_bundle[0]).resolve())
    nodes, segmentation, segment_id = load_with_slicer(mrml_scene, cohort_case)
    t1 = sitk.ReadImage(cohort_case["t1"])
    finer = sitk.Resample(t1, [s * 2 for s in t1.GetSize()[:2]] + [t1.GetSize()[2]], sitk.Transform(),
                          sitk.sitkLinear, t1.GetOrigin(), [t1.GetSpacing()[0] / 2, t1.GetSpacing()[1] / 2,
                                                            t1.GetSpacing()[2]], t1.GetDirection(), 0.0,
                          t1.GetPixelID())
    sitk_to_volume_node(finer, node=nodes["t1"])  # T1 now on a 2x finer in-plane grid

    request = panel_logic.write_prediction_request(nodes, segmentation, segment_id, bundle, tmp_path / "job",
                                                   device="cpu")
    runner, _ = run_worker(request)
    assert runner.state is RunState.IMPORTING, runner.error
    panel = panel_logic.import_prediction_result(runner.result["path"])
    in_process = panel_logic.predict_from_nodes(nodes, segmentation, segment_id, bundle, device="cpu")
    assert comparable(panel) == comparable(json.loads(json.dumps(in_process)))
    assert panel["roi_resampled"] == {"t1": True, "t2": False, "fst2": False}
    assert panel["warnings"][0] == "the ROI was resampled onto the T1WI grid (it was drawn on another voxel grid)"
    request_files = sorted(p.name for p in (tmp_path / "job").iterdir())
    assert request_files == ["fst2.mha", "request.json", "result.json", "roi_fst2.mha", "roi_t1.mha", "roi_t2.mha",
                             "t1.mha", "t2.mha"]


def test_empty_segment_or_removed_volume_stops_before_any_process(mrml_scene, trained_bundle, cohort_case,
                                                                  tmp_path):
    bundle = trained_bundle[0]
    nodes, segmentation, _ = load_with_slicer(mrml_scene, cohort_case)
    empty = segmentation.GetSegmentation().AddEmptySegment("", "not drawn yet")
    with pytest.raises(UserError, match="segment 'not drawn yet' of segmentation 'ROI' is empty; draw"):
        panel_logic.write_prediction_request(nodes, segmentation, empty, bundle, tmp_path / "a")
    assert not (tmp_path / "a" / "request.json").exists()

    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)

    def remove_fst2(message):
        if message.startswith("exporting the ROI onto the T2WI") and nodes["fst2"].GetScene() is not None:
            mrml_scene.scene.RemoveNode(nodes["fst2"])

    with pytest.raises(UserError, match="FS-T2WI volume 'FS-T2WI series' is no longer in the scene"):
        panel_logic.write_prediction_request(nodes, segmentation, segment_id, bundle, tmp_path / "b",
                                             progress=remove_fst2)
    assert not (tmp_path / "b" / "request.json").exists()


def test_create_roi_segment_on_the_t2_grid(mrml_scene):
    t2 = make_image()
    t2_node = sitk_to_volume_node(t2, "T2 sag", scene=mrml_scene.scene)
    segmentation, segment_id = panel_logic.create_roi_segment(t2_node)
    assert segmentation.GetScene() is mrml_scene.scene and segmentation.GetDisplayNode() is not None
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "ROI" and segmentation.GetSegmentation().GetNumberOfSegments() == 1
    geometry = segmentation.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert [f for f in geometry.split(";") if f][-6:] == ["0", "39", "0", "35", "0", "9"]  # T2's extent
    # empty until drawn: Predict refuses it with the message that says to draw
    with pytest.raises(UserError, match="segment 'ROI' of segmentation 'HRMM ROI' is empty; draw"):
        segment_to_sitk_mask(segmentation, segment_id, t2_node)
    # what Segment Editor's Paint does, in short: set voxels of the segment on the reference grid
    drawn = box_mask(t2)
    labelmap = sitk_to_volume_node(drawn, "painted", scene=mrml_scene.scene, labelmap=True)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, "")
    painted_id = segmentation.GetSegmentation().GetNthSegmentID(1)
    mask, resampled = segment_to_sitk_mask(segmentation, painted_id, t2_node)
    assert resampled is False
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(drawn))
