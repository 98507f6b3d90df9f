"""The AnnotationQC panel's "Pre-annotation review": MRML nodes <-> the loop folder, without Qt.

The expert takes the next case from the active-learning queue (:func:`next_case`) or picks
one, and :func:`open_review` loads it: one volume per sequence, the model's proposal as an
editable segmentation (one segment per label, named as a model proposal, e.g. "lesion (model
proposal, round 2)"; CNS-tumour labels with the terminology's names, colours and codes) and
the uncertainty (voxel-wise variance of the foreground probability) as a heat-map volume.
The expert corrects the segments in the Segment Editor, then:

- :func:`accept_review` - the segments, exported onto the case's first image grid, join the
  standard set; the verdict is ``accepted`` when the mask equals the proposal, ``corrected``
  when it was edited, ``redrawn`` after :func:`start_redraw`;
- :func:`start_redraw` - clears the segments (renamed "... (drawn by expert)") to draw from
  scratch;
- :func:`reject_review` - sends the case back to be drawn from scratch later;
- :func:`close_review` - removes the case's nodes.

The panel's decisions live here too: which of its buttons can act and why not
(:func:`panel_actions`), and the texts it shows (:func:`review_text`, :func:`decision_text`).

Every number and record comes from :class:`~AnnotationQCLib.loop.store.LoopFolder`; the
Slicer application and slicer-core run this the same way (Testing/loop/test_slicer_loop_review.py).

Module-level imports: the standard library, numpy, SimpleITK, slicer, vtk and library
modules that import only those (torch and MONAI are never needed here: the proposals are
files written by ``loop prelabel``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.mrml_bridge import (
    new_segmentation,
    node_label,
    require_in_scene,
    segment_is_empty,
    segment_to_sitk_mask,
    set_segment_mask,
    show_in_views,
    sitk_to_volume_node,
)

from .store import LoopFolder, label_values

ATTRIBUTE_PREFIX = "AnnotationQC.Loop."
LABEL_TAG = "AnnotationQC.Loop.Label"
#: heat-map colour tables, first available wins (the application's, then slicer-core's)
HEAT_COLOURS = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLPETProceduralColorNodePET-Heat",
                "vtkMRMLColorTableNodeIron")
BINARY_COLOUR = (0.95, 0.75, 0.1)


@dataclass
class Review:
    """One open review: the loop, the case, the proposal's round and the nodes."""

    loop_folder: Path
    case_id: str
    round: int
    score: float
    why: str
    volume_nodes: list
    segmentation_node: object
    segments: dict  # label value -> segment id
    uncertainty_node: object
    redrawn: bool = False
    labels: dict = field(default_factory=dict)

    def nodes(self) -> list:
        return [*self.volume_nodes, self.segmentation_node, self.uncertainty_node]


def next_case(loop_folder: str | os.PathLike, diversity: float = 0.5) -> dict | None:
    """The first case of the active-learning queue (rank, case_id, score, why, ...), or None
    when no pool case is left."""
    from .model import queue

    q = queue(LoopFolder(loop_folder), 1, diversity)["queue"]
    return q[0] if q else None


def _heat_colour_id(scene) -> str | None:
    for cid in HEAT_COLOURS:
        if scene.GetNodeByID(cid) is not None:
            return cid
    return None


def _segment_name(label_name: str, round_no: int) -> str:
    return f"{label_name} (model proposal, round {round_no})"


def open_review(loop_folder: str | os.PathLike, case_id: str | None = None, *, scene=None,
                diversity: float = 0.5) -> Review:
    """Load a pool case for review (the next in the queue when ``case_id`` is None): its
    volumes, the proposal as editable segments and the uncertainty as a heat map."""
    scene = scene if scene is not None else slicer.mrmlScene
    if str(loop_folder) in ("", "."):
        raise UserError("choose the loop folder first")
    loop = LoopFolder(loop_folder)
    why = ""
    if case_id is None:
        item = next_case(loop_folder, diversity)
        if item is None:
            raise UserError(f"no pool case is left to review in {loop_folder}")
        case_id, why = item["case_id"], item["why"]
    st = loop.state()
    loop.case(case_id)
    status = st["cases"][case_id]["status"]
    if status != "pool":
        raise UserError(f"case {case_id!r} is not waiting for review (it is {'in the standard set' if status == 'standard' else 'rejected, to be drawn from scratch'})")
    entry, proposal, uncertainty = loop.proposal(case_id, st)
    images = loop.read_images(case_id)
    volumes = [sitk_to_volume_node(img, f"{case_id}_{seq}", scene=scene) for seq, img in zip(loop.sequences, images)]
    r = entry["round"]
    seg = new_segmentation(scene, f"{case_id} model proposal (round {r})", volumes[0])
    for key, value in (("Folder", str(loop.folder.resolve())), ("CaseId", case_id), ("Round", str(r)),
                       ("ProposalSha256", entry["proposal_sha256"])):
        seg.SetAttribute(ATTRIBUTE_PREFIX + key, value)
    labels = loop.labels
    arr = sitk.GetArrayFromImage(proposal)
    segments = {}
    segmentation = seg.GetSegmentation()
    if labels["mode"] == "binary":
        named = {1: (labels["content"], None)}
    else:
        from ..terminology import label_by_key

        named = {v: (label_by_key(k, labels["mode"]).name, label_by_key(k, labels["mode"]))
                 for v, k in label_values(labels).items()}
    for value, (name, label) in named.items():
        colour = label.colour_float if label is not None else BINARY_COLOUR
        sid = segmentation.AddEmptySegment("", _segment_name(name, r), list(colour))
        segment = segmentation.GetSegment(sid)
        if label is not None:
            segment.SetTerminology(label.terminology_entry)
        segment.SetTag(LABEL_TAG, str(value))
        part = sitk.GetImageFromArray((arr == value).astype(np.uint8))
        part.CopyInformation(proposal)
        set_segment_mask(seg, sid, part)
        segments[value] = sid
    unc = sitk_to_volume_node(uncertainty, f"{case_id} uncertainty (round {r})", scene=scene)
    unc.SetAttribute(ATTRIBUTE_PREFIX + "CaseId", case_id)
    display = unc.GetDisplayNode()
    colour = _heat_colour_id(scene)
    if display is not None:
        if colour:
            display.SetAndObserveColorNodeID(colour)
        top = float(sitk.GetArrayViewFromImage(uncertainty).max())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, max(top, 1e-6))
    show_in_views(scene, {v: {"background": volumes[0], "foreground": unc, "opacity": 0.4}
                          for v in ("Red", "Yellow", "Green")})
    return Review(loop.folder, case_id, r, float(entry["score"]), why, volumes, seg, segments, unc,
                  labels=dict(labels))


def _check_review(review: Review) -> None:
    require_in_scene(review.segmentation_node, "proposal segmentation")
    require_in_scene(review.volume_nodes[0], "case volume")
    attr = review.segmentation_node.GetAttribute(ATTRIBUTE_PREFIX + "CaseId") or ""
    if attr != review.case_id:
        raise UserError(f"{node_label(review.segmentation_node, 'segmentation')} does not belong to case "
                        f"{review.case_id!r}; open the case again")


def review_mask(review: Review) -> sitk.Image:
    """The segments as the loop stores a mask: on the case's first image grid, value k where
    segment k is drawn (the higher, more specific label wins where segments overlap)."""
    _check_review(review)
    ref = review.volume_nodes[0]
    seg = review.segmentation_node
    blank = LoopFolder(review.loop_folder).reference_grid(review.case_id).image(sitk.sitkUInt8)
    out = np.zeros(blank.GetSize()[::-1], np.uint8)
    for value in sorted(review.segments):
        sid = review.segments[value]
        if seg.GetSegmentation().GetSegment(sid) is None:
            raise UserError(f"segment of label {value} was deleted from {node_label(seg, 'segmentation')}; open the "
                            "case again")
        if segment_is_empty(seg, sid):
            continue
        mask, _resampled = segment_to_sitk_mask(seg, sid, ref, what="case volume")
        out[sitk.GetArrayViewFromImage(mask) != 0] = value
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(blank)
    return img


def start_redraw(review: Review) -> None:
    """Clear the proposal's segments to draw the case from scratch (the verdict becomes
    ``redrawn``)."""
    _check_review(review)
    seg = review.segmentation_node
    empty = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    for sid in review.segments.values():
        set_segment_mask(seg, sid, empty)
        segment = seg.GetSegmentation().GetSegment(sid)
        segment.SetName(segment.GetName().replace(f"(model proposal, round {review.round})", "(drawn by expert)"))
    seg.SetName(f"{review.case_id} drawn by expert")
    review.redrawn = True


def accept_review(review: Review, reader: str, verdict: str | None = None, note: str = "") -> dict:
    """The expert's segments join the standard set. ``verdict`` None: ``redrawn`` after
    :func:`start_redraw`, else ``accepted`` when unchanged, ``corrected`` when edited.
    Returns the audit record's data (Dice and changed fraction against the proposal)."""
    mask = review_mask(review)
    loop = LoopFolder(review.loop_folder)
    if verdict is None:
        if review.redrawn:
            verdict = "redrawn"
        else:
            _, proposal, _ = loop.proposal(review.case_id)
            same = np.array_equal(sitk.GetArrayViewFromImage(proposal), sitk.GetArrayViewFromImage(mask))
            verdict = "accepted" if same else "corrected"
    rec = loop.accept(review.case_id, mask, reader, verdict, note)
    return {"time": rec["time"], "by": rec["by"], **rec["data"]}


def reject_review(review: Review, reader: str, reason: str = "") -> dict:
    """Send the case back to be drawn from scratch."""
    rec = LoopFolder(review.loop_folder).reject(review.case_id, reader, reason)
    return {"time": rec["time"], "by": rec["by"], **rec["data"]}


def close_review(review: Review) -> None:
    """Remove the review's nodes from the scene."""
    for node in review.nodes():
        if node is not None and node.GetScene() is not None:
            node.GetScene().RemoveNode(node)


# ---------------------------------------------------------------------------------------
# The panel's decisions (AnnotationQC.py only wires widgets to these)


def panel_actions(loop_folder, reader: str, review: Review | None, reason: str = "") -> dict[str, tuple[bool, str]]:
    """For each button of the "Pre-annotation review" section (``next``, ``accept``,
    ``redraw``, ``reject``): (enabled, why not). Next case needs a loop folder; the decisions
    need an open case and the reader id; Redraw is done once per case; Reject needs a
    reason (it is recorded in the audit trail)."""
    from ClinicalMRICommonLib.panel_support import path_is_set

    no_case = "Take a case with Next case first."
    actions = {"next": (path_is_set(loop_folder), "Choose the loop folder first.")}
    if review is None:
        return {**actions, "accept": (False, no_case), "redraw": (False, no_case), "reject": (False, no_case)}
    who = bool(str(reader or "").strip())
    need_reader = "Enter your reader id first."
    actions["accept"] = (who, need_reader)
    actions["redraw"] = (not review.redrawn, "The segments were cleared already: draw the case, then Accept.")
    actions["reject"] = (who and bool(str(reason or "").strip()),
                         need_reader if not who else "Give the reason for rejecting the proposal.")
    return actions


def review_text(review: Review) -> str:
    """What the panel says about an open case: id, round, uncertainty score and why."""
    why = review.why or f"uncertainty {review.score:.3f}"
    return (f"Case {review.case_id}, proposal of round {review.round}: {why}. Correct the segments in the Segment "
            "Editor (the uncertainty is the heat map over the image), then Accept, Redraw or Reject.")


def decision_text(review: Review, record: dict) -> str:
    """What the panel says after Accept or Reject (from the audit record's data)."""
    case = review.case_id
    if "verdict" not in record:  # a reject record
        return f"{case} rejected ({record.get('reason') or 'no reason given'}): it is to be drawn from scratch and left the queue."
    verdict = record["verdict"]  # every review has a proposal, so Dice and changed fraction are recorded
    changed = (f"Dice {record['dice']:.3f} with the proposal, {record['changed_fraction']:.1%} of the labelled "
               "voxels changed")
    what = {"accepted": "accepted as proposed", "corrected": "corrected", "redrawn": "redrawn from scratch"}[verdict]
    return f"{case} {what} ({changed}); it joins the standard set."
