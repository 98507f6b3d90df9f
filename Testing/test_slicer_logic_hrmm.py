"""HRMMPredict's MRML logic against real MRML scenes from slicer-core (no fake slicer module):
one case (three sequences + the ROI) read from nodes, and the prediction the panel runs.

The generic node <-> image bridge is tested in test_slicer_mrml_bridge.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_harness import box_mask, make_image, mrml_scene, segmentation_from_mask, slicer  # noqa: F401

from AnnotationQCLib.common import UserError, same_grid  # noqa: E402
from AnnotationQCLib.mrml_bridge import sitk_to_volume_node  # noqa: E402
from HRMMPredictLib import mrml_bridge  # noqa: E402
from HRMMPredictLib.mrml_bridge import case_images_from_nodes  # noqa: E402


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
    rows = mrml_bridge.prediction_summary_rows(result)
    assert rows == [
        {"model": "fusion", "probability": 0.4, "threshold": 0.45, "class": "SRMM", "primary": True},
        {"model": "radiomics", "probability": 0.7, "threshold": 0.5, "class": "HRMM", "primary": False}]
