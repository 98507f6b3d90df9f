"""HRMMPredict's MRML bridge: one case (three sequences + the ROI segment) read from MRML
nodes, and the prediction the panel runs (``predict_from_nodes``, the same numbers as
``hrmm predict``).

The generic node <-> image and table helpers live in :mod:`AnnotationQCLib.mrml_bridge`
(the bottom of the extension's dependency graph) and are re-exported here. Like that
module, this one needs MRML only (no Qt), so it runs in Slicer and under ``slicer-core``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import SimpleITK as sitk

from AnnotationQCLib.common import UserError, same_grid
from AnnotationQCLib.mrml_bridge import (  # noqa: F401  (re-exported for the module file)
    require_in_scene,
    results_to_table_node,
    segment_to_sitk_mask,
    sitk_to_volume_node,
    table_node_to_rows,
    volume_node_to_sitk,
)

__all__ = [
    "CaseImages",
    "case_images_from_nodes",
    "predict_from_nodes",
    "prediction_summary_rows",
]


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


def prediction_summary_rows(result: dict) -> list[dict]:
    """One row per model of a :func:`HRMMPredictLib.predict.predict_case` result."""
    return [{"model": name, "probability": entry["probability"], "threshold": entry["threshold"],
             "class": entry["class"], "primary": name == result.get("model")}
            for name, entry in result.get("models", {}).items()]


def predict_from_nodes(volumes: Mapping[str, object], segmentation_node, segment_id: str, model_dir, *,
                       device: str = "auto", summary_table=None, feature_table=None,
                       progress: Callable[[str], None] | None = None) -> dict:
    """Predict one case from MRML nodes with the library's ``predict_case`` (same numbers as
    ``hrmm predict``), adding the bridge's resampling warnings, and fill the result tables.

    ``volumes``: ``{"t1": node, "t2": node, "fst2": node}``.
    """
    from HRMMPredictLib.predict import predict_case  # heavy (pyradiomics, torch): import on use
    from HRMMPredictLib.radiomics_features import SEQUENCE_NAMES

    case = case_images_from_nodes(volumes, segmentation_node, segment_id, labels=SEQUENCE_NAMES, progress=progress)
    result = predict_case(case.images, case.roi, model_dir, device=device, progress=progress)
    result["warnings"] = case.warnings + list(result.get("warnings", []))
    result["roi_resampled"] = dict(case.resampled)
    if summary_table is not None:
        results_to_table_node(prediction_summary_rows(result), summary_table)
    if feature_table is not None:
        results_to_table_node(result.get("features", []), feature_table)
    return result
