"""StrokeLesion's Slicer logic: MRML nodes <-> StrokeLesionLib, without Qt.

With ClinicalMRICommonLib.mrml_bridge this is the only StrokeLesion library file that imports
``slicer``. It needs MRML only, so it runs in the Slicer application and under
``slicer-core``, where Testing/test_slicer_stroke.py runs it on real scenes with the real
ISLES'22 case. The panel (StrokeLesion.py) only collects the user's choices and calls these
functions; every number comes from the library. The generic node helpers (segments, views,
layouts, the Segment Editor node, RAS/LPS points) are ClinicalMRICommonLib.mrml_bridge's; the
panel's layout is :func:`panel_layout` (three axial views, set explicitly on the existing
slice nodes and undone when the user switches layout) and its Segment Editor node tag is
SEGMENT_EDITOR_TAG.

What the panel's buttons decide lives here, not in StrokeLesion.py (which only wires
widgets): what is missing for an action (:func:`missing_inputs`), the candidate's settings
(:func:`candidate_params`), which loaded node fills which field (:func:`loaded_fields`), the
authors list (:func:`parse_authors`). The BIDS export and the acceptance report run in a
separate process (:data:`JOBS`, run by ClinicalMRICommonLib.job_worker) with progress and
Cancel; the packages they need are installed on first use, in Slicer's process, before the
job starts (:func:`prepare_export`, :func:`prepare_acceptance`).

- loading: DWI/ADC(/FLAIR) from files or a session folder (bids.find_session_images), ADC
  units detected (diffusion.detect_adc_units), FLAIR resampled onto the DWI grid
  (diffusion.resample_to_grid) for display and the per-lesion checks;
- candidate: candidate.candidate_mask on the nodes' voxels, written as a segmentation with a
  "lesion candidate" and a separate "T2 shine-through" segment, and candidate.lesion_table;
- two readers: workflow.Study (annotate, blinding through Study.case_view, compare, review,
  arbitrate, notes), masks exchanged as segments on the case's DWI grid;
- review view: annotators A and B as two segmentations shown in two views, their
  disagreement (ClinicalMRICommonLib.agreement.consensus.disagreement_map) as a label map, the comparison's
  numbers and one row per lesion with the notes attached to it;
- export: bids.export_study + the official validator + our GeneratedBy check; acceptance.

Every node is checked to be in the scene before it is used and again before anything is
written (a node removed mid-way gives a UserError, never stale data or half a result).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import SimpleITK as sitk
import slicer

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.grids import same_grid
from ClinicalMRICommonLib.mrml_bridge import (
    PanelLayout,
    lps_to_ras,
    new_segmentation,
    node_label,
    nodes_by_class,
    ras_to_lps,
    require_in_scene,
    results_to_table_node,
    segment_is_empty,
    segment_to_sitk_mask,
    set_segment_mask,
    segment_id_by_name,
    sitk_to_volume_node,
    volume_node_to_sitk,
)
from ClinicalMRICommonLib.panel_support import path_or_none

from .candidate import CandidateParams, candidate_mask, lesion_table
from .diffusion import AdcUnits, DiffusionCase, diffusion_from_images, read_diffusion_images, resample_to_grid

CANDIDATE_SEGMENT = "lesion candidate"
SHINE_THROUGH_SEGMENT = "T2 shine-through"
LESION_SEGMENT = "lesion"
SEGMENT_COLORS = {CANDIDATE_SEGMENT: (0.95, 0.80, 0.10), SHINE_THROUGH_SEGMENT: (0.30, 0.60, 1.00),
                  LESION_SEGMENT: (0.90, 0.20, 0.20), "annotator A": (0.95, 0.55, 0.10),
                  "annotator B": (0.20, 0.75, 0.95), "consensus": (0.30, 0.85, 0.30)}
#: Disagreement label map values (ClinicalMRICommonLib.agreement.consensus): 1 only one reader, 2 both readers.
DISAGREEMENT_COLORS = {1: ("one reader only", (1.0, 0.15, 0.15)), 2: ("both readers", (0.2, 0.9, 0.2))}
#: The three axial views of the panel's layout (slice view names in Slicer).
VIEWS = ("Red", "Yellow", "Green")
LAYOUT_ID = 2604          # a custom layout id (Slicer's own ids are below 1000)
#: Singleton tag of the panel's own Segment Editor node (mrml_bridge.segment_editor_node)
SEGMENT_EDITOR_TAG = "StrokeLesionSegmentEditor"
REQUESTER = "Stroke Lesion"
#: The job functions ClinicalMRICommonLib.job_worker may run in a separate process.
JOBS = ("export_job", "acceptance_job")

Progress = Callable[[str], None]


def _say(progress: Progress | None) -> Progress:
    return progress or (lambda message: None)


def _needs(*features: str, purpose: str) -> None:
    """Install on first use what ``features`` need (ClinicalMRICommonLib.slicer_packages;
    nothing happens when it is installed)."""
    from ClinicalMRICommonLib.slicer_packages import ensure_packages, requirements_for

    ensure_packages(requirements_for(*features), REQUESTER, purpose)


# ---------------------------------------------------------------------------------------
# What the panel's buttons need


def missing_inputs(action: str, *, dwi=None, adc=None, study_folder=None, case_id: str = "", reader_id: str = "",
                   lesion_segmentation=None) -> list[str]:
    """What is missing before ``action`` ("candidate", "case", "submit") can run (empty
    when it can). An unset path ("" or ".", what an empty path field holds) is missing."""
    if action not in ("candidate", "case", "submit"):
        raise ValueError(f"unknown action {action!r}")
    missing = []
    if action == "candidate":
        missing += [what for node, what in ((dwi, "DWI volume"), (adc, "ADC volume")) if node is None]
    if action in ("case", "submit"):
        if path_or_none(study_folder) is None:
            missing.append("study folder")
        if not str(case_id).strip():
            missing.append("case")
        if not str(reader_id).strip():
            missing.append("reader id")
    if action == "submit" and lesion_segmentation is None:
        missing.append("an opened case (your lesion segment)")
    return missing


def candidate_params(adc_threshold_1e6: float, dwi_k: float, min_lesion_ml: float) -> CandidateParams:
    """The candidate's settings from the panel's fields (ADC threshold in 10^-6 mm2/s)."""
    return CandidateParams(adc_threshold_mm2s=float(adc_threshold_1e6) * 1e-6, dwi_k=float(dwi_k),
                           min_size_ml=float(min_lesion_ml)).check()


def loaded_fields(loaded: "LoadedCase") -> dict:
    """Parameter-node field -> node of a loaded case: DWI, ADC and the FLAIR on the DWI grid."""
    return {"dwiVolume": loaded.dwi, "adcVolume": loaded.adc, "flairVolume": loaded.flair}


def parse_authors(text: str) -> list[str]:
    """The dataset's authors from the panel's comma-separated field."""
    return [a.strip() for a in str(text).split(",") if a.strip()]


def export_job_kwargs(study_folder, out, *, name: str, authors: str, license: str = "", validate: bool = True) -> dict:
    """The arguments of :func:`export_job` from the panel's fields (unset folders refused)."""
    if path_or_none(study_folder) is None or path_or_none(out) is None:
        raise UserError("choose the study folder and an output folder first")
    return {"study_folder": str(path_or_none(study_folder)), "out": str(path_or_none(out)), "name": str(name),
            "authors": parse_authors(authors), "license": str(license).strip() or None, "validate": bool(validate)}


def acceptance_job_kwargs(dataset) -> dict:
    """The arguments of :func:`acceptance_job` (an unset folder refused)."""
    if path_or_none(dataset) is None:
        raise UserError("choose the exported dataset's folder first")
    return {"dataset": str(path_or_none(dataset))}


# ---------------------------------------------------------------------------------------
# Layout and views


def panel_layout() -> PanelLayout:
    """DWI | ADC | FLAIR side by side, all three axial (mrml_bridge.PanelLayout sets the
    orientation of the existing Red, Yellow and Green views and restores them afterwards)."""
    return PanelLayout(LAYOUT_ID, VIEWS, "Axial")


def restrict_to_views(node, views) -> None:
    """Show a displayable node (e.g. a segmentation) only in the given slice views
    (``None``: in all views)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    ids = [f"vtkMRMLSliceNode{v}" for v in views] if views else []
    node.GetDisplayNode().SetViewNodeIDs(ids)


def reading_views(loaded: "LoadedCase") -> dict:
    """DWI | ADC | FLAIR (on the DWI grid; the DWI again without FLAIR), linked."""
    return {"Red": {"background": loaded.dwi}, "Yellow": {"background": loaded.adc},
            "Green": {"background": loaded.flair if loaded.flair is not None else loaded.dwi}}


def review_views(dwi_node, review: "ReviewNodes") -> dict:
    """DWI with A | DWI with B | DWI with their disagreement (label layer), linked."""
    return {"Red": {"background": dwi_node, "label": None}, "Yellow": {"background": dwi_node, "label": None},
            "Green": {"background": dwi_node, "label": review.disagreement}}


# ---------------------------------------------------------------------------------------
# Whose node is it: tags for blinding inside one scene

TAG_CASE, TAG_READER, TAG_CONTENT = "StrokeLesion.case", "StrokeLesion.reader", "StrokeLesion.content"


def tag_node(node, case_id: str, reader_id: str, content: str):
    """Mark a node as holding ``content`` of ``case_id`` loaded for ``reader_id``."""
    node.SetAttribute(TAG_CASE, case_id)
    node.SetAttribute(TAG_READER, reader_id)
    node.SetAttribute(TAG_CONTENT, content)
    return node


def check_scene_blinding(scene, case_id: str, reader_id: str) -> None:
    """Refuse to open a case for a blinded annotator while the scene holds nodes of that case
    loaded for another reader (their masks, a review): nothing is removed, so nobody's
    unsaved work is lost; the user closes the scene or removes those nodes."""
    others = []
    for cls in ("vtkMRMLSegmentationNode", "vtkMRMLVolumeNode", "vtkMRMLTableNode"):
        for node in nodes_by_class(scene, cls):
            if node.GetAttribute(TAG_CASE) == case_id and node.GetAttribute(TAG_READER) not in (None, "", reader_id):
                others.append(f"'{node.GetName()}' ({node.GetAttribute(TAG_READER)})")
    if others:
        raise UserError(f"the scene holds case {case_id} data loaded for other readers ({', '.join(sorted(others)[:4])}"
                        f"{', ...' if len(others) > 4 else ''}); annotators are blinded to each other: close the scene "
                        "(File > Close Scene) or remove those nodes, then open the case again")


# ---------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedCase:
    """The volume nodes of one case and what was found while loading it."""

    dwi: object
    adc: object
    units: AdcUnits
    flair: object | None = None            # FLAIR resampled onto the DWI grid (display and checks)
    flair_native: object | None = None     # FLAIR as acquired (its own grid)
    paths: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def summary(self) -> dict:
        u = self.units
        return {"adc_units": u.units, "adc_units_detected": u.detected, "brain_median_adc_raw": u.brain_median_raw,
                "brain_median_adc_mm2s": u.brain_median_mm2s, "flair": self.flair is not None,
                "paths": dict(self.paths), "warnings": list(self.warnings)}


def _names(prefix: str) -> dict[str, str]:
    p = f"{prefix} " if prefix else ""
    return {"dwi": f"{p}DWI", "adc": f"{p}ADC", "flair": f"{p}FLAIR (DWI grid)", "flair_native": f"{p}FLAIR"}


def load_case_files(dwi: str | os.PathLike, adc: str | os.PathLike, flair: str | os.PathLike | None = None, *,
                    adc_units: str = "auto", scene=None, name_prefix: str = "",
                    progress: Progress | None = None) -> LoadedCase:
    """Read DWI, ADC and optionally FLAIR into new volume nodes.

    The files are read and checked by the library (one grid for DWI and ADC, finite values,
    3D), the ADC units are detected from the brain's median ADC (or ``adc_units`` is
    trusted) and reported, and FLAIR is resampled onto the DWI grid (a second node; the
    native one is kept for reading at full resolution). Nothing is added to the scene when
    a check fails.
    """
    say = _say(progress)
    scene = scene if scene is not None else slicer.mrmlScene
    say("reading DWI and ADC")
    dwi_img, adc_img = read_diffusion_images(dwi, adc)
    case = diffusion_from_images(dwi_img, adc_img, adc_units=adc_units, dwi_path=str(dwi), adc_path=str(adc))
    flair_img = flair_on_dwi = None
    warnings = []
    if flair is not None:
        say("reading FLAIR and resampling it onto the DWI grid")
        flair_img = read_image(flair, "FLAIR")
        if flair_img.GetDimension() != 3:
            raise UserError(f"FLAIR file {flair} is {flair_img.GetDimension()}D; expected one 3D volume")
        flair_on_dwi = resample_to_grid(flair_img, dwi_img, what=f"FLAIR file {flair}")
        if not same_grid(flair_img, dwi_img):
            warnings.append("FLAIR is on another grid than the DWI; a copy resampled onto the DWI grid "
                            "(linear, anti-aliased) is shown and used for the checks")
    names = _names(name_prefix)
    say("creating the volume nodes")
    loaded = LoadedCase(
        dwi=sitk_to_volume_node(dwi_img, names["dwi"], scene=scene),
        adc=sitk_to_volume_node(adc_img, names["adc"], scene=scene),
        units=case.units,
        paths={"dwi": str(dwi), "adc": str(adc), **({"flair": str(flair)} if flair is not None else {})},
        warnings=warnings)
    if flair_img is not None:
        loaded.flair = sitk_to_volume_node(flair_on_dwi, names["flair"], scene=scene)
        loaded.flair_native = sitk_to_volume_node(flair_img, names["flair_native"], scene=scene)
    return loaded


def load_session_folder(folder: str | os.PathLike, *, adc_units: str = "auto", scene=None,
                        progress: Progress | None = None) -> LoadedCase:
    """load_case_files for a (BIDS or ISLES-style) session folder; see bids.find_session_images."""
    from .bids import find_session_images
    files = find_session_images(folder)
    name = Path(folder).resolve()
    prefix = f"{name.parent.name}_{name.name}" if name.name.startswith("ses-") else name.name
    return load_case_files(files["dwi"], files["adc"], files.get("flair"), adc_units=adc_units, scene=scene,
                           name_prefix=prefix, progress=progress)


def load_case_file_fields(dwi, adc, flair=None, *, adc_units: str = "auto", scene=None,
                          progress: Progress | None = None) -> LoadedCase:
    """:func:`load_case_files` from the panel's path fields: DWI and ADC must be set, FLAIR
    is optional (an unset field, "" or ".", means none)."""
    if path_or_none(dwi) is None or path_or_none(adc) is None:
        raise UserError("choose the DWI and ADC files first")
    flair = path_or_none(flair)
    return load_case_files(path_or_none(dwi), path_or_none(adc), flair, adc_units=adc_units, scene=scene,
                           progress=progress)


def load_session_folder_field(folder, *, adc_units: str = "auto", scene=None,
                              progress: Progress | None = None) -> LoadedCase:
    """:func:`load_session_folder` from the panel's path field (an unset folder is refused)."""
    if path_or_none(folder) is None:
        raise UserError("choose a session folder first")
    return load_session_folder(path_or_none(folder), adc_units=adc_units, scene=scene, progress=progress)


def diffusion_from_nodes(dwi_node, adc_node, *, adc_units: str = "auto") -> DiffusionCase:
    """The nodes' voxels as the library's DiffusionCase (units detected or stated)."""
    dwi = volume_node_to_sitk(dwi_node, "DWI volume")
    adc = volume_node_to_sitk(adc_node, "ADC volume")
    if not same_grid(dwi, adc):
        raise UserError(f"{node_label(adc_node, 'ADC volume')} is not on the grid of {node_label(dwi_node, 'DWI volume')}"
                        "; select the ADC map of the same diffusion series")
    return diffusion_from_images(dwi, adc, adc_units=adc_units,
                                 dwi_path=dwi_node.GetName(), adc_path=adc_node.GetName())


# ---------------------------------------------------------------------------------------
# Segments


def mask_to_segment(mask: sitk.Image, segmentation_node, name: str, reference_volume_node=None,
                    color=None) -> str:
    """Write a 0/1 mask as the segment ``name`` of ``segmentation_node``: an existing segment
    of that name gets the mask's voxels (mrml_bridge.set_segment_mask: id, colour and tags
    kept), else a new segment is added (``color``, default SEGMENT_COLORS). Returns the
    segment id. With ``reference_volume_node`` the segmentation's reference geometry is set
    to it, so Segment Editor edits on that grid."""
    require_in_scene(segmentation_node, "segmentation")
    if reference_volume_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    added = not segment_id
    if added:
        segment_id = segmentation.AddEmptySegment("", name, list(color or SEGMENT_COLORS.get(name, (0.9, 0.2, 0.2))))
    try:
        set_segment_mask(segmentation_node, segment_id, mask)
    except BaseException:
        if added:
            segmentation.RemoveSegment(segment_id)
        raise
    return segment_id


# ---------------------------------------------------------------------------------------
# Candidate


def run_candidate(dwi_node, adc_node, *, adc_units: str = "auto", params: CandidateParams | None = None,
                  segmentation_node=None, flair_node=None, table_node=None,
                  progress: Progress | None = None) -> dict:
    """One-click candidate: candidate.candidate_mask on the nodes' voxels.

    Writes the segments "lesion candidate" and "T2 shine-through" (DWI high, ADC not low:
    not lesion) into ``segmentation_node`` (a new segmentation when None; segments of those
    names are replaced), the per-lesion checks into ``table_node`` (FLAIR ratios with a
    ``flair_node``, resampled onto the DWI grid when needed), and returns the library's
    summary (detected ADC units, volume, lesion count, shine-through) with the node and
    segment ids.
    """
    say = _say(progress)
    params = (params or CandidateParams()).check()
    say("reading DWI and ADC")
    case = diffusion_from_nodes(dwi_node, adc_node, adc_units=adc_units)
    flair = None
    if flair_node is not None:
        say("reading FLAIR")
        flair = resample_to_grid(volume_node_to_sitk(flair_node, "FLAIR volume"), case.dwi,
                                 what=node_label(flair_node, "FLAIR volume"))
    say("computing the candidate (ADC < threshold, DWI high, brain)")
    res = candidate_mask(case, params)
    rows = lesion_table(res.mask, case, flair, params.connectivity)
    # nothing is written unless every input is still there
    for node, what in ((dwi_node, "DWI volume"), (adc_node, "ADC volume"), (flair_node, "FLAIR volume"),
                       (segmentation_node, "segmentation"), (table_node, "table")):
        if node is not None:
            require_in_scene(node, what)
    say("writing the segments")
    scene = dwi_node.GetScene()
    if segmentation_node is None:
        segmentation_node = new_segmentation(scene, f"{dwi_node.GetName()} candidate", dwi_node)
    ids = {CANDIDATE_SEGMENT: mask_to_segment(res.mask, segmentation_node, CANDIDATE_SEGMENT, dwi_node),
           SHINE_THROUGH_SEGMENT: mask_to_segment(res.shine_through, segmentation_node, SHINE_THROUGH_SEGMENT,
                                                  dwi_node)}
    if table_node is not None:
        results_to_table_node(table_rows(rows), table_node)
    summary = res.summary(case)
    summary.update({"segmentation_node_id": segmentation_node.GetID(), "segment_ids": ids, "lesions": rows})
    return summary


def table_rows(rows: list[dict]) -> list[dict]:
    """Rows for a table node: centroids in RAS (as Slicer shows them) instead of LPS."""
    out = []
    for r in rows:
        r = dict(r)
        for key in ("centroid_lps",):
            if key in r:
                r["centroid_ras"] = [round(v, 1) for v in lps_to_ras(r.pop(key))]
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------
# Two readers: study, annotator identity, blinding


def open_study(folder: str | os.PathLike):
    """The two-reader study in ``folder`` (an unset folder is refused)."""
    folder = path_or_none(folder)
    if folder is None:
        raise UserError("choose the study folder first")
    from .workflow import Study
    return Study(folder)


def _assigned_slot(study, case_id: str, reader_id: str) -> str:
    if not reader_id:
        raise UserError("enter your reader id first (the study records who did what)")
    slot = study.slot_of(case_id, reader_id)
    if slot is None:
        who = ", ".join(f"{s}={r}" for s, r in study.state(case_id).assignments.items()) or "nobody yet"
        raise UserError(f"reader {reader_id} is not assigned to case {case_id} ({who})")
    return slot


def reader_view(study, case_id: str, reader_id: str) -> dict:
    """What ``reader_id`` may see of the case (Study.case_view: blinded for annotators until
    the case is final), with the reader's slot."""
    slot = _assigned_slot(study, case_id, reader_id)
    view = study.case_view(case_id, viewer=reader_id)
    view["slot"] = slot
    view["blinded"] = slot in ("annotatorA", "annotatorB") and view["status"] != "final"
    return view


def load_study_case(study, case_id: str, reader_id: str, *, scene=None, adc_units: str = "auto",
                    progress: Progress | None = None) -> tuple[LoadedCase, object | None, dict]:
    """Load the case's images (the study's copies, so masks drawn on this DWI are on the
    case's grid) for an assigned reader. For an annotator also a segmentation with their own
    latest mask as the segment "lesion" (empty before the first version): never the other
    annotator's. Returns (loaded case, the reader's segmentation or None, reader_view)."""
    view = reader_view(study, case_id, reader_id)
    scene = scene if scene is not None else slicer.mrmlScene
    if view["blinded"]:
        check_scene_blinding(scene, case_id, reader_id)
    info = study.case_info(case_id)
    flair = study.image_path(case_id, "flair") if "flair" in info["images"] else None
    loaded = load_case_files(study.image_path(case_id, "dwi"), study.image_path(case_id, "adc"), flair,
                             adc_units=adc_units, scene=scene, name_prefix=case_id, progress=progress)
    for key in ("dwi", "adc", "flair", "flair_native"):
        if getattr(loaded, key) is not None:
            tag_node(getattr(loaded, key), case_id, "", key)           # the images are no reader's data
    segmentation = None
    if view["slot"] in ("annotatorA", "annotatorB"):
        segmentation = tag_node(new_segmentation(scene, f"{case_id} {view['slot']} ({reader_id})", loaded.dwi),
                                case_id, reader_id, view["slot"])
        versions = view["annotations"].get(view["slot"]) or []
        if versions:
            st = study.state(case_id)
            mask = study.read_mask_version(case_id, st.annotations[view["slot"]][-1])
        else:
            mask = sitk.Image(study.reference_image(case_id).GetSize(), sitk.sitkUInt8)
            mask.CopyInformation(study.reference_image(case_id))
        mask_to_segment(mask, segmentation, LESION_SEGMENT, loaded.dwi)
    return loaded, segmentation, view


def load_annotation(study, case_id: str, viewer: str, slot: str, reference_volume_node, *, version: int | None = None,
                    segmentation_node=None, segment_name: str | None = None):
    """Load an annotator's mask version (latest by default) as a segment, if ``viewer`` may
    see it: an annotator sees only their own masks until the case is final (Study.case_view
    decides). Returns the segmentation node."""
    view = reader_view(study, case_id, viewer)
    entry = view["annotations"].get(slot)
    if isinstance(entry, dict) and entry.get("hidden"):
        raise UserError(f"{slot}'s mask of case {case_id} is hidden from {viewer} ({view['slot']}): annotators are "
                        "blinded to each other until the case is final")
    if not entry:
        raise UserError(f"{slot} has not annotated case {case_id} yet")
    st = study.state(case_id)
    recs = st.annotations[slot]
    rec = recs[-1] if version is None else next((r for r in recs if r["version"] == version), None)
    if rec is None:
        raise UserError(f"{slot} of case {case_id} has versions {', '.join(str(r['version']) for r in recs)}; "
                        f"no version {version}")
    mask = study.read_mask_version(case_id, rec)
    require_in_scene(reference_volume_node, "DWI volume")
    if segmentation_node is None:
        segmentation_node = tag_node(new_segmentation(reference_volume_node.GetScene(),
                                                      f"{case_id} {slot} v{rec['version']:03d}", reference_volume_node),
                                     case_id, viewer, slot)
    mask_to_segment(mask, segmentation_node, segment_name or slot, reference_volume_node)
    return segmentation_node


def segment_mask_on_dwi(segmentation_node, segment_id: str, dwi_node) -> tuple[sitk.Image, list[str]]:
    """A segment exported onto the DWI node's grid (Slicer's exporter), with a warning when
    it was drawn on another grid and had to be resampled."""
    mask, resampled = segment_to_sitk_mask(segmentation_node, segment_id, dwi_node, "DWI volume")
    warnings = ["the segment was drawn on another grid and was resampled onto the DWI grid (nearest neighbour)"] \
        if resampled else []
    return mask, warnings


def copy_segment(source_segmentation, source_segment_id: str, target_segmentation, target_name: str, dwi_node) -> str:
    """Start a reader's segment from another one (e.g. the one-click candidate): the source
    exported onto the DWI grid replaces the target segment. Returns the target segment id."""
    if segment_is_empty(source_segmentation, source_segment_id):
        raise UserError(f"segment '{source_segmentation.GetSegmentation().GetSegment(source_segment_id).GetName()}' "
                        "is empty; nothing to start from")
    mask, _ = segment_mask_on_dwi(source_segmentation, source_segment_id, dwi_node)
    require_in_scene(target_segmentation, "segmentation")
    return mask_to_segment(mask, target_segmentation, target_name, dwi_node)


def lesion_segment_id(segmentation_node) -> str:
    """The id of the reader's "lesion" segment."""
    return segment_id_by_name(segmentation_node, LESION_SEGMENT)


def start_from_candidate(candidate_segmentation, lesion_segmentation, dwi_node) -> str:
    """The panel's Start from the candidate: the one-click candidate replaces the reader's
    lesion segment (both must exist: open the case and compute the candidate first)."""
    if candidate_segmentation is None or lesion_segmentation is None:
        raise UserError("open the case and compute the candidate first")
    source = segment_id_by_name(candidate_segmentation, CANDIDATE_SEGMENT)
    return copy_segment(candidate_segmentation, source, lesion_segmentation, LESION_SEGMENT, dwi_node)


def submit_annotation(study, case_id: str, reader_id: str, segmentation_node, segment_id: str, dwi_node, *,
                      no_lesion: bool = False, time_spent_s: float | None = None, why: str = "",
                      progress: Progress | None = None) -> dict:
    """Save the reader's segment as a new version of their mask (Study.annotate: never
    overwrites; only annotator A or B of the case). ``no_lesion``: the case shows no acute
    lesion (the segment must then be empty). Returns the audit record's ``what``."""
    say = _say(progress)
    _assigned_slot(study, case_id, reader_id)
    require_in_scene(segmentation_node, "segmentation")
    require_in_scene(dwi_node, "DWI volume")
    seg_name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName() \
        if segmentation_node.GetSegmentation().GetSegment(segment_id) else segment_id
    empty = segment_is_empty(segmentation_node, segment_id)
    warnings: list[str] = []
    if empty and not no_lesion:
        raise UserError(f"segment '{seg_name}' is empty; draw the lesion (Segment Editor), or state that the case "
                        "shows no acute lesion")
    if not empty and no_lesion:
        raise UserError(f"'no acute lesion' was ticked but segment '{seg_name}' labels voxels; clear one of them")
    say("exporting the segment onto the DWI grid")
    mask = None
    if not empty:
        mask, warnings = segment_mask_on_dwi(segmentation_node, segment_id, dwi_node)
    require_in_scene(segmentation_node, "segmentation")
    require_in_scene(dwi_node, "DWI volume")
    say("saving a new version")
    rec = study.annotate(case_id, reader_id, mask, no_lesion=no_lesion, time_spent_s=time_spent_s, why=why,
                         source=f"Slicer: segment '{seg_name}' of '{segmentation_node.GetName()}'")
    return {**rec["what"], "warnings": warnings}


def add_note(study, case_id: str, reader_id: str, text: str, *, lesion: int | None = None,
             point_ras=None) -> dict:
    """Attach a note on an ambiguous region to a lesion (its id after the comparison) or to
    the lesion under a point (RAS mm, e.g. a markup's position). Returns the note."""
    point = ras_to_lps(point_ras) if point_ras is not None else None
    if lesion is None and point is None:
        raise UserError("a note needs a lesion number or a point (place a fiducial on the lesion)")
    return study.note(case_id, reader_id, text, lesion=lesion, point_lps=point)["what"]


# ---------------------------------------------------------------------------------------
# Review: A and B side by side, their disagreement, per-lesion decisions


@dataclass
class ReviewNodes:
    segmentation_a: object
    segmentation_b: object
    disagreement: object          # label map: 1 one reader only, 2 both
    lesion_map: object            # label map: lesion ids of the comparison (components of A union B)
    compare: dict                 # agreement, detection, reasons, needs_review
    lesions: list                 # one row per lesion, with its notes
    status: str


def compare_case(study, case_id: str, by: str) -> dict:
    """Study.compare (ClinicalMRICommonLib.agreement: Dice, lesion-wise matching, volume difference)."""
    if not by:
        raise UserError("enter your reader id first (the study records who did what)")
    return study.compare(case_id, by=by)["what"]


def _disagreement_colors(scene):
    node = scene.GetFirstNodeByName("StrokeLesion disagreement colours")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "StrokeLesion disagreement colours")
        node.SetTypeToUser()
        node.SetNumberOfColors(3)
        node.SetColor(0, "agree: background", 0, 0, 0, 0)
        for value, (name, rgb) in DISAGREEMENT_COLORS.items():
            node.SetColor(value, name, *rgb, 1.0)
    return node


def review_rows(view: dict) -> list[dict]:
    """One row per lesion of the comparison, with the notes attached to it."""
    notes: dict[int, list[str]] = {}
    for n in view.get("notes", []):
        if n.get("lesion"):
            notes.setdefault(int(n["lesion"]), []).append(f"{n['who']}: {n['text']}")
    rows = []
    for les in view["compare"]["lesions"]:
        rows.append({"lesion": les["id"], "volume_ml": les["volume_ml"], "voxels_A": les["voxels_A"],
                     "voxels_B": les["voxels_B"], "voxels_both": les["voxels_both"], "drawn_by": les["drawn_by"],
                     "centroid_ras": [round(v, 1) for v in lps_to_ras(les["centroid_lps"])],
                     "notes": " | ".join(notes.get(les["id"], []))})
    return rows


def load_review(study, case_id: str, viewer: str, dwi_node, *, views=("Red", "Yellow"), table_node=None,
                progress: Progress | None = None) -> ReviewNodes:
    """The review view: A and B (the compared versions) as two segmentations, each shown in
    one of ``views``, their disagreement map and the lesion-id map as label maps, and a
    table with one row per lesion (notes attached). Annotators cannot open it before the
    case is final (blinding)."""
    from ClinicalMRICommonLib.agreement.consensus import disagreement_map

    say = _say(progress)
    view = reader_view(study, case_id, viewer)
    if view["blinded"]:
        raise UserError(f"{viewer} is {view['slot']} of case {case_id}: annotators do not see the other reader's mask "
                        "or the comparison until the case is final")
    if "compare" not in view:
        raise UserError(f"case {case_id} has not been compared yet ({view['next']})")
    require_in_scene(dwi_node, "DWI volume")
    dwi = volume_node_to_sitk(dwi_node, "DWI volume")
    ref = study.reference_image(case_id)
    if not same_grid(dwi, ref):
        raise UserError(f"{node_label(dwi_node, 'DWI volume')} is not the DWI of case {case_id}; load the case first")
    say("reading the compared masks")
    st = study.state(case_id)
    a_img, b_img = study.compared_masks(case_id, st)
    lesion_ids = sitk.ReadImage(str(study.mask_path(case_id, st.compare["lesion_map"])))
    dis = disagreement_map([a_img, b_img])
    require_in_scene(dwi_node, "DWI volume")
    if table_node is not None:
        require_in_scene(table_node, "table")
    say("creating the review nodes")
    scene = dwi_node.GetScene()
    seg_a = new_segmentation(scene, f"{case_id} annotator A v{st.compare['A']['version']:03d}", dwi_node)
    mask_to_segment(a_img, seg_a, "annotator A", dwi_node)
    seg_b = new_segmentation(scene, f"{case_id} annotator B v{st.compare['B']['version']:03d}", dwi_node)
    mask_to_segment(b_img, seg_b, "annotator B", dwi_node)
    if views:
        restrict_to_views(seg_a, views[:1])
        restrict_to_views(seg_b, views[1:2])
    dis.CopyInformation(ref)
    lesion_ids.CopyInformation(ref)
    dis_node = sitk_to_volume_node(dis, f"{case_id} A vs B disagreement", scene=scene, labelmap=True)
    dis_node.GetDisplayNode().SetAndObserveColorNodeID(_disagreement_colors(scene).GetID())
    map_node = sitk_to_volume_node(sitk.Cast(lesion_ids, sitk.sitkUInt16), f"{case_id} lesion ids", scene=scene,
                                   labelmap=True)
    for node, content in ((seg_a, "annotatorA"), (seg_b, "annotatorB"), (dis_node, "disagreement"),
                          (map_node, "lesion ids")):
        tag_node(node, case_id, viewer, content)
    rows = review_rows(view)
    if table_node is not None:
        results_to_table_node(rows, tag_node(table_node, case_id, viewer, "review table"))
    return ReviewNodes(seg_a, seg_b, dis_node, map_node, view["compare"], rows, view["status"])


def submit_review(study, case_id: str, reviewer_id: str, *, choices: dict[int, str] | None = None,
                  default: str | None = None, edited_segment: tuple | None = None, dwi_node=None,
                  accept_proposed: bool = False, dispute: bool = False, why: str) -> dict:
    """The reviewer's decision (Study.review): per-lesion choices (A, B, union, intersection,
    edited, none), ``edited_segment`` = (segmentation node, segment id) drawn on ``dwi_node``
    for 'edited', or accept the proposed consensus of an agreed case, or dispute (to the
    arbitrator). Returns the audit record's ``what``."""
    edited, source, warnings = _edited_mask(edited_segment, dwi_node)
    rec = study.review(case_id, reviewer_id, choices=choices, default=default, edited=edited,
                       accept_proposed=accept_proposed, dispute=dispute, why=why, edited_source=source)
    return {**rec["what"], "warnings": warnings}


def submit_arbitration(study, case_id: str, arbitrator_id: str, *, choices: dict[int, str] | None = None,
                       default: str | None = None, edited_segment: tuple | None = None, dwi_node=None,
                       why: str) -> dict:
    """The arbitrator's final decision (Study.arbitrate; choices include 'review', the
    reviewer's proposal)."""
    edited, source, warnings = _edited_mask(edited_segment, dwi_node)
    rec = study.arbitrate(case_id, arbitrator_id, choices=choices, default=default, edited=edited, why=why,
                          edited_source=source)
    return {**rec["what"], "warnings": warnings}


def _edited_mask(edited_segment, dwi_node):
    if edited_segment is None:
        return None, "", []
    segmentation_node, segment_id = edited_segment
    mask, warnings = segment_mask_on_dwi(segmentation_node, segment_id, dwi_node)
    require_in_scene(segmentation_node, "edited segmentation")
    name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
    return mask, f"Slicer: segment '{name}' of '{segmentation_node.GetName()}'", warnings


def load_consensus(study, case_id: str, viewer: str, dwi_node, segmentation_node=None):
    """The accepted consensus mask as the segment "consensus" (when the viewer may see it)."""
    view = reader_view(study, case_id, viewer)
    if "consensus" not in view:
        raise UserError(f"case {case_id} has no consensus mask yet ({view['next']})")
    st = study.state(case_id)
    mask = study.read_mask_version(case_id, st.consensus)
    require_in_scene(dwi_node, "DWI volume")
    if segmentation_node is None:
        segmentation_node = tag_node(new_segmentation(dwi_node.GetScene(),
                                                      f"{case_id} consensus v{st.consensus['version']:03d}", dwi_node),
                                     case_id, viewer, "consensus")
    mask_to_segment(mask, segmentation_node, "consensus", dwi_node)
    return segmentation_node


# ---------------------------------------------------------------------------------------
# Export and acceptance

def prepare_export(validate: bool) -> None:
    """Install on first use what the BIDS export needs (and the official validator when the
    export is validated); call in Slicer's process before the export job starts."""
    _needs("bids", purpose="export the study to BIDS")
    if validate:
        _needs("bids-validator", purpose="validate the exported dataset")


def prepare_acceptance() -> None:
    """Install on first use what the acceptance report needs."""
    _needs("bids", purpose="check an exported dataset")


def export_dataset(study, out: str | os.PathLike, *, name: str, authors: list[str], license: str | None = None,
                   validate: bool = True, keep_patient_characteristics: bool = False,
                   mask_naming: str = "bids", progress: Progress | None = None) -> dict:
    """bids.export_study, then (``validate``) the official validator and our GeneratedBy
    check of the derivative. The report's ``valid`` is False when either finds an error;
    ``validator`` is None when bids-validator-deno is not installed (said in ``warnings``)."""
    from .bids import ExportOptions, check_derivative_description, export_study, run_validator, validator_executable

    say = _say(progress)
    say("writing the BIDS dataset")
    rep = export_study(study, out, ExportOptions(name=name, authors=list(authors), license=license or None,
                                                 mask_naming=mask_naming,
                                                 keep_patient_characteristics=keep_patient_characteristics))
    rep["generated_by_problems"] = check_derivative_description(
        Path(out) / "derivatives" / "lesions" / "dataset_description.json")
    rep["validator"] = None
    if validate:
        if validator_executable() is None:
            rep["warnings"].append("bids-validator-deno is not installed; the dataset was not validated "
                                   "(pip install bids-validator-deno)")
        else:
            say("running the BIDS validator")
            v = run_validator(out)
            rep["validator"] = {"n_errors": v["n_errors"], "errors": sorted(
                {i["code"] for i in v["errors"]} | {i["code"] for d in v["derivatives"].values() for i in d["errors"]})}
    rep["valid"] = not rep["generated_by_problems"] and (rep["validator"] is None or rep["validator"]["n_errors"] == 0)
    return rep


def acceptance_report(dataset: str | os.PathLike, report_dir: str | os.PathLike | None = None, *,
                      validate: bool = False) -> dict:
    """acceptance.check_dataset + write_report (HTML + JSON; default folder DATASET-acceptance)."""
    from .acceptance import check_dataset, write_report

    rep = check_dataset(dataset, run_official_validator=validate)
    ds = Path(dataset).resolve()
    out_dir = Path(report_dir) if report_dir else ds.with_name(ds.name + "-acceptance")
    json_path, html_path = write_report(rep, out_dir)
    return {**rep, "report_json": str(json_path), "report_html": str(html_path)}


# ---------------------------------------------------------------------------------------
# Jobs run in a separate process (ClinicalMRICommonLib.job_worker): plain arguments, JSON out


def export_job(study_folder: str, out: str, name: str, authors: list[str], license: str | None = None,
               validate: bool = True, progress=None) -> dict:
    """:func:`export_dataset` of the study in ``study_folder`` (what the panel's Export runs
    in a separate process)."""
    prepare_export(validate)
    say = _say(progress)
    say("opening the study")
    study = open_study(study_folder)
    if path_or_none(out) is None:
        raise UserError("choose an output folder first")
    return export_dataset(study, out, name=name, authors=list(authors), license=license, validate=validate,
                          progress=say)


def acceptance_job(dataset: str, progress=None) -> dict:
    """:func:`acceptance_report` of an exported dataset (the panel's Acceptance report)."""
    prepare_acceptance()
    if path_or_none(dataset) is None:
        raise UserError("choose the exported dataset's folder first")
    _say(progress)("checking the dataset")
    return acceptance_report(dataset)
