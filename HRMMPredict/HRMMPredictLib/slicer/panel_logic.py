"""The HRMMPredict panel's MRML logic: one case (three sequences + the ROI segment) read
from MRML nodes, and the prediction the panel runs (``predict_from_nodes``, the same numbers
as ``hrmm predict``).

The generic node <-> image and table helpers are :mod:`ClinicalMRICommonLib.mrml_bridge`'s
(the bottom of the extension's dependency graph; import them from there). Like that
module, this one needs MRML only (no Qt), so it runs in Slicer and under ``slicer-core``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe
from ClinicalMRICommonLib.grids import same_grid
from ClinicalMRICommonLib.mrml_bridge import (
    PanelLayout,
    require_in_scene,
    results_to_table_node,
    segment_to_sitk_mask,
    volume_node_to_sitk,
)
from HRMMPredictLib.slicer.panel_results import feature_rows, read_result
from HRMMPredictLib.slicer.panel_results import model_rows as prediction_summary_rows  # one row per model, fused first
from HRMMPredictLib.slicer.predict_worker import add_case_info, write_request
from HRMMPredictLib.sequences import SEQUENCE_LABELS

__all__ = [
    "LAYOUT_VIEWS",
    "RESULT_ATTRIBUTE",
    "SEQUENCE_FIELDS",
    "CaseImages",
    "case_images_from_nodes",
    "create_roi_segment",
    "import_prediction_result",
    "panel_layout",
    "predict_from_nodes",
    "prediction_summary_rows",
    "result_from_table_node",
    "side_by_side_assignment",
    "volumes_by_key",
    "write_prediction_request",
    "write_result_tables",
]


# ---------------------------------------------------------------------------------------
# The panel's parameter node -> the library's sequence keys

#: sequence key (HRMMPredictLib.sequences) -> the HRMMPredict parameter-node field holding its volume
SEQUENCE_FIELDS = {"t1": "t1Volume", "t2": "t2Volume", "fst2": "fst2Volume"}
#: the side-by-side views, in the order of SEQUENCE_FIELDS: T1WI | T2WI | FS-T2WI
LAYOUT_VIEWS = ("Red", "Yellow", "Green")


def volumes_by_key(parameter_node) -> dict[str, object]:
    """``{"t1": node, "t2": node, "fst2": node}`` from the panel's parameter node (each
    sequence key from its own field; None where nothing is selected)."""
    return {key: getattr(parameter_node, name) for key, name in SEQUENCE_FIELDS.items()}


def panel_layout(layout_id: int) -> PanelLayout:
    """The side-by-side layout: three sagittal slice views (Red, Yellow, Green), put back to
    their default orientation once the user switches to another layout."""
    return PanelLayout(layout_id, LAYOUT_VIEWS, "Sagittal")


def side_by_side_assignment(volumes: Mapping[str, object]) -> dict:
    """Which volume goes into which view (T1WI Red, T2WI Yellow, FS-T2WI Green); views of
    unselected sequences are left out."""
    return {view: {"background": volumes.get(key), "orientation": "Sagittal"}
            for view, key in zip(LAYOUT_VIEWS, SEQUENCE_FIELDS) if volumes.get(key) is not None}


# ---------------------------------------------------------------------------------------
# One case: the three sequences and the ROI


@dataclass
class CaseImages:
    """A case read from MRML nodes: one image per sequence and the ROI on each sequence's grid."""

    images: dict[str, sitk.Image]
    rois: dict[str, sitk.Image]
    resampled: dict[str, bool]
    warnings: list[str] = field(default_factory=list)

    @property
    def shared_grid(self) -> bool:
        """True when all the sequences lie on one voxel grid."""
        images = list(self.images.values())
        return all(same_grid(images[0], other) for other in images[1:])

    @property
    def roi(self) -> sitk.Image | dict[str, sitk.Image]:
        """The ROI as the library's predict wants it: one mask when the sequences share a grid
        (exactly what ``hrmm predict --roi`` reads), otherwise a mask per sequence."""
        if self.shared_grid:
            return next(iter(self.rois.values()))
        return dict(self.rois)


def case_images_from_nodes(volumes: Mapping[str, object], segmentation_node, segment_id: str, *,
                           labels: Mapping[str, str] | None = None,
                           progress: Callable[[str], None] | None = None) -> CaseImages:
    """Read a case's sequences and export its ROI segment onto each sequence's grid.

    ``volumes``: sequence key (e.g. ``t1``, ``t2``, ``fst2``) -> volume node, in order;
    ``labels``: key -> name used in messages (e.g. "T1WI"). Each step reports through
    ``progress`` and re-checks that its node is still in the scene, so a node removed while
    the case is being read gives a clear error instead of stale data.
    """
    say = progress or (lambda message: None)
    labels = dict(labels or {})
    if not volumes:
        raise UserError("no sequence volumes given")
    missing = [labels.get(k, k) for k, node in volumes.items() if node is None]
    if missing:
        raise UserError(f"no volume selected for {', '.join(missing)}; select all sequences and try again")
    if segmentation_node is None:
        raise UserError("no segmentation selected; select the segmentation holding the ROI")

    images: dict[str, sitk.Image] = {}
    for key, node in volumes.items():
        label = labels.get(key, key)
        say(f"reading {label} from '{node.GetName()}'")
        images[key] = volume_node_to_sitk(node, f"{label} volume")

    rois: dict[str, sitk.Image] = {}
    resampled: dict[str, bool] = {}
    warnings: list[str] = []
    for key, node in volumes.items():
        label = labels.get(key, key)
        say(f"exporting the ROI onto the {label} grid")
        rois[key], resampled[key] = segment_to_sitk_mask(segmentation_node, segment_id, node, f"{label} volume")
        if resampled[key]:
            warnings.append(f"the ROI was resampled onto the {label} grid (it was drawn on another voxel grid)")
    # The node may have been removed after it was read: the case must not mix in a stale volume.
    for key, node in volumes.items():
        require_in_scene(node, f"{labels.get(key, key)} volume")
    require_in_scene(segmentation_node, "segmentation")
    return CaseImages(images, rois, resampled, warnings)


# ---------------------------------------------------------------------------------------
# HRMM prediction from nodes (what the HRMMPredict panel runs)


def create_roi_segment(reference_volume_node, *, scene=None, name: str = "HRMM ROI", segment_name: str = "ROI",
                       color=(0.9, 0.1, 0.1)) -> tuple[object, str]:
    """A new segmentation with one empty segment to draw the ROI in, on the grid of
    ``reference_volume_node`` (the series the user draws on, usually T2WI); returns
    ``(segmentation node, segment id)``."""
    require_in_scene(reference_volume_node, "reference volume")
    scene = scene if scene is not None else reference_volume_node.GetScene()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", segment_name, list(color))
    return segmentation, segment_id


RESULT_ATTRIBUTE = "HRMMPredict.Result"  # the whole result (JSON) on the summary table node


def write_result_tables(result: dict, summary_table=None, feature_table=None) -> None:
    """Fill the result tables: one row per model (fused first) in ``summary_table``, with the
    whole result as JSON in its ``HRMMPredict.Result`` attribute (saved with the scene, so
    the result can be exported again after the scene is reloaded), and the selected
    features against their training range in ``feature_table``."""
    if summary_table is not None:
        results_to_table_node(prediction_summary_rows(result), summary_table)
        summary_table.SetAttribute(RESULT_ATTRIBUTE, json.dumps(json_safe(result)))
    if feature_table is not None:
        results_to_table_node(feature_rows(result), feature_table)


def result_from_table_node(summary_table) -> dict | None:
    """The result stored by :func:`write_result_tables` (None when the table has none)."""
    require_in_scene(summary_table, "results table")
    text = summary_table.GetAttribute(RESULT_ATTRIBUTE)
    if not text:
        return None
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"the result stored in table '{summary_table.GetName()}' is damaged; predict again") from None
    return result if isinstance(result, dict) else None


def predict_from_nodes(volumes: Mapping[str, object], segmentation_node, segment_id: str, model_dir, *,
                       device: str = "auto", summary_table=None, feature_table=None,
                       progress: Callable[[str], None] | None = None) -> dict:
    """Predict one case from MRML nodes in this process with the library's ``predict_case``
    (same numbers as ``hrmm predict``), adding the bridge's resampling warnings, and fill the
    result tables. (The panel runs the same prediction in a worker process:
    :func:`write_prediction_request` + :mod:`HRMMPredictLib.slicer.predict_worker` +
    :func:`import_prediction_result`.)

    ``volumes``: ``{"t1": node, "t2": node, "fst2": node}``.
    """
    from HRMMPredictLib.predict import predict_case  # heavy (pyradiomics, torch): import on use

    case = case_images_from_nodes(volumes, segmentation_node, segment_id, labels=SEQUENCE_LABELS, progress=progress)
    result = predict_case(case.images, case.roi, model_dir, device=device, progress=progress)
    add_case_info(result, case.warnings, case.resampled)
    write_result_tables(result, summary_table, feature_table)
    return result


def write_prediction_request(volumes: Mapping[str, object], segmentation_node, segment_id: str, model_dir,
                             folder, *, device: str = "auto",
                             progress: Callable[[str], None] | None = None) -> Path:
    """Read the case from the nodes (main thread: MRML is not thread-safe) and write it with
    the prediction request into ``folder`` for :mod:`HRMMPredictLib.slicer.predict_worker`;
    returns the request file. The worker then gives exactly the numbers of
    :func:`predict_from_nodes`."""
    case = case_images_from_nodes(volumes, segmentation_node, segment_id, labels=SEQUENCE_LABELS, progress=progress)
    if progress:
        progress("writing the case for the prediction process")
    return write_request(folder, case.images, case.roi, model_dir, device=device, warnings=case.warnings,
                         roi_resampled=case.resampled)


def import_prediction_result(result_or_path, summary_table=None, feature_table=None) -> dict:
    """Read the worker's result (a dict or its ``result.json``) and fill the result tables."""
    result = result_or_path if isinstance(result_or_path, dict) else read_result(result_or_path)
    write_result_tables(result, summary_table, feature_table)
    return result
