"""AnnotationQC's Slicer logic: MRML nodes <-> AnnotationQCLib, without Qt.

With :mod:`ClinicalMRICommonLib.mrml_bridge` this is the only AnnotationQC library file that
imports ``slicer``. It needs MRML only, so it runs in the Slicer application and under
``slicer-core``, where Testing/test_slicer_aqc_logic.py runs it on real scenes. The panel
(AnnotationQC.py) collects the user's choices and calls these functions; every number comes
from the library:

- reading: :class:`~AnnotationQCLib.sessions.ReaderStudy` (login, blinded case list with
  status, start/save with time spent, never overwriting); the reader's own segmentation
  gets one segment per label drawn on the sequence (the CNS-tumour terminology: standard
  names, colours and codes, :mod:`AnnotationQCLib.terminology`); saving exports each
  segment onto the source image's grid and stores ``<patient>_<sequence>_<content>.nii.gz``;
- compare: two segments -> ``compare_masks`` + ``lesion_detection`` as a table and
  ``consensus.disagreement_map`` as a segmentation (readers disagree / both agree);
- ICC: per-feature ICC of a study's two reads or of two feature tables -> table node, the
  per-class summary and the ICC-by-class plot (PNG);
- training: a trainee's case list, loading a case (never its reference), submitting, and the
  report (per case and overall, pass/fail);
- quality: signal/background/tissue ROI segments -> SNR/CNR, and the grade / Likert record
  that hides a flagged series from the case lists.

The generic segment helpers (``new_segmentation``, ``set_segment_mask``,
``segment_is_empty``) are :mod:`ClinicalMRICommonLib.mrml_bridge`'s, imported here.

What the panel's buttons compute lives here, not in AnnotationQC.py (which only wires
widgets): the checks of what is selected (:func:`compare_selected`), the ICC of a study or of
two tables (:func:`panel_icc`), a new training session (:func:`create_training_session`), the
grade/Likert choices (:func:`quality_scores`), the label set's terminology variant
(:func:`label_variant`).

Packages Slicer does not ship are installed on first use: every function that needs one
calls :func:`_needs` (``ClinicalMRICommonLib.slicer_packages.ensure_packages``) before it imports
the library code that uses it (pandas: reader studies, training sessions, ICC tables;
matplotlib: the ICC plot; pyradiomics: feature ICC and the training report).
Testing/slicer_layer/test_startup_imports.py checks that this module imports only the standard
library and what Slicer ships at module level, and that each function whose lazy imports
need more calls :func:`_needs` first.

Blinding: a reading loads the source image and the reader's own masks only; reviewers and
arbitrators also get the annotators' submitted masks (``ReaderStudy.visible_masks``). Case
labels never reach the scene.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.mrml_bridge import (
    new_segmentation,
    node_label,
    require_in_scene,
    results_to_table_node,
    segment_is_empty,
    segment_to_sitk_mask,
    set_segment_mask,
    sitk_to_volume_node,
    table_node_or_new,
    volume_node_to_sitk,
)
from ClinicalMRICommonLib.panel_support import path_or_none
from .terminology import Label, label_by_key, labels_for_sequence

if TYPE_CHECKING:  # pandas and the reader-study classes are imported where they are used
    import pandas as pd

    from .sessions import ReaderStudy

REQUESTER = "Annotation QC"

ATTRIBUTE_PREFIX = "AnnotationQC."
CONTENT_TAG = "AnnotationQC.Content"
DEFAULT_CONTENT = "lesion"
DEFAULT_COLOUR = (0.9, 0.45, 0.1)
#: consensus.disagreement_map values -> segment name and colour
DISAGREEMENT_SEGMENTS = {1: ("readers disagree", (1.0, 0.15, 0.15)), 2: ("both readers agree", (0.2, 0.85, 0.2))}
QUALITY_ROIS = {"signal": (0.95, 0.2, 0.2), "background": (0.2, 0.5, 1.0), "tissue": (0.2, 0.8, 0.3)}


# ---------------------------------------------------------------------------------------
# Packages, panel choices, result tables


def _needs(*features: str, purpose: str) -> None:
    """Install on first use what ``features`` need (ClinicalMRICommonLib.slicer_packages;
    nothing happens when it is installed)."""
    from ClinicalMRICommonLib.slicer_packages import ensure_packages, requirements_for

    ensure_packages(requirements_for(*features), REQUESTER, purpose)


def label_variant(label_set: str) -> str | None:
    """The terminology variant of the panel's label set ("none": one plain "lesion" segment)."""
    return None if label_set == "none" else label_set


def quality_scores(grade: str, likert: str) -> tuple[int | None, int | None]:
    """The grade (1-3) and Likert score (1-5) of the panel's choices ("none": not given)."""
    return (None if grade == "none" else int(grade)), (None if likert == "none" else int(likert))


# ---------------------------------------------------------------------------------------
# Segments (the generic helpers are in mrml_bridge)


def add_segment(segmentation_node, content: str, label: Label | None = None, name: str | None = None,
                colour=None) -> str:
    """Add an empty segment for a mask content; with a terminology label it gets the label's
    standard name, colour and terminology entry. Returns the segment id."""
    require_in_scene(segmentation_node, "segmentation")
    segmentation = segmentation_node.GetSegmentation()
    seg_name = label.name if label else (name or content)
    rgb = label.colour_float if label else (colour or DEFAULT_COLOUR)
    segment_id = segmentation.AddEmptySegment("", seg_name, list(rgb))
    segment = segmentation.GetSegment(segment_id)
    if label is not None:
        segment.SetTerminology(label.terminology_entry)
    segment.SetTag(CONTENT_TAG, content)
    return segment_id


def content_segments(segmentation_node) -> dict[str, str]:
    """content -> segment id of the segments this module created (tagged with their content)."""
    require_in_scene(segmentation_node, "segmentation")
    segmentation = segmentation_node.GetSegmentation()
    out = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segment_id)
        value = vtk.reference("")
        if segment.GetTag(CONTENT_TAG, value):
            content = str(value)
            if content in out:
                raise UserError(f"{node_label(segmentation_node, 'segmentation')} has two segments for '{content}' "
                                f"('{segmentation.GetSegment(out[content]).GetName()}' and '{segment.GetName()}'); "
                                "delete one")
            out[content] = segment_id
    return out


def _attr(node, key: str) -> str:
    return node.GetAttribute(ATTRIBUTE_PREFIX + key) or ""


def _mask_or_blank(segmentation_node, segment_id: str, volume_node, source: Path) -> sitk.Image:
    if segment_is_empty(segmentation_node, segment_id):
        _needs("tables", purpose="save a reading")
        from .sessions import blank_mask_like

        return blank_mask_like(source)
    mask, _resampled = segment_to_sitk_mask(segmentation_node, segment_id, volume_node, what="source volume")
    return mask


# ---------------------------------------------------------------------------------------
# Reading


def login(study_folder: str | os.PathLike, reader_id: str, role: str) -> ReaderStudy:
    """Open a reader study as ``reader_id`` with ``role``. A new reader is registered with that
    role; a registered reader must give the role they were registered with. An unset folder
    (None, "" or ".", what an empty path field holds) is refused."""
    study_folder = path_or_none(study_folder)
    if study_folder is None:
        raise UserError("choose the reader study folder first")
    if not str(reader_id).strip():
        raise UserError("enter your reader id")
    _needs("tables", purpose="open a reader study")
    from .sessions import ROLES, ReaderStudy

    if role not in ROLES:
        raise UserError(f"role {role!r} unknown; use one of {', '.join(ROLES)}")
    study = ReaderStudy.open(study_folder)
    study.add_reader(reader_id.strip(), role)
    return study


def case_rows(study: ReaderStudy, reader_id: str, session: str = "first") -> list[dict]:
    """The reader's blinded work list, one row per case and sequence (flagged series are not
    offered): case_id, patient_id, sequence, status."""
    return [{"case_id": c["case_id"], "patient_id": c["patient_id"], "sequence": seq, "status": status}
            for c in study.case_list(reader_id, session) for seq, status in c["status"].items()]


@dataclass
class Reading:
    """One open reading: the source volume and the reader's own segmentation (content ->
    segment id), plus, for reviewers, the annotators' submitted masks."""

    reader_id: str
    role: str
    case_id: str
    patient_id: str
    sequence: str
    session: str
    volume_node: object
    segmentation_node: object
    segments: dict[str, str]
    others: list = field(default_factory=list)

    def nodes(self) -> list:
        return [self.volume_node, self.segmentation_node, *self.others]

    def segment_names(self) -> list[str]:
        """The names of the reader's segments (what the panel tells them to draw)."""
        segmentation = self.segmentation_node.GetSegmentation()
        return [segmentation.GetSegment(sid).GetName() for sid in self.segments.values()]


def _contents_for(sequence: str, variant: str | None, contents) -> list[tuple[str, Label | None]]:
    if contents:
        out = []
        for content in contents:
            label = label_by_key(content, variant) if variant else None
            out.append((content, label))
        return out
    labels = labels_for_sequence(sequence, variant) if variant else []
    return [(lab.key, lab) for lab in labels] or [(DEFAULT_CONTENT, None)]


def open_reading(study: ReaderStudy, reader_id: str, case_id: str, sequence: str, session: str = "first", *,
                 variant: str | None = "intra-axial", contents=None, scene=None) -> Reading:
    """Start reading one case/sequence: records the start (time spent counts from here; a
    flagged series is refused), loads the source image and the reader's own segmentation with
    one segment per content: the given ``contents``, else the CNS-tumour labels drawn on this
    sequence (``variant``), else "lesion"; the reader's earlier masks of this session are
    loaded into their segments. Reviewers/arbitrators also get each annotator's submitted
    masks as a separate segmentation. Nothing else of the study (other readers' work, case
    labels) is loaded."""
    scene = scene if scene is not None else slicer.mrmlScene
    role = study.role(reader_id)
    study.start_reading(reader_id, case_id, sequence, session)
    source = study.source_image(case_id, sequence)
    patient_id = study.meta["cases"][case_id]["patient_id"]
    image = read_image(source, "source image")
    volume = sitk_to_volume_node(image, f"{patient_id}_{sequence}", scene=scene)
    segmentation = new_segmentation(scene, f"{patient_id}_{sequence} {reader_id} ({session})", volume)
    for key, value in (("StudyFolder", str(study.folder.resolve())), ("ReaderId", reader_id), ("CaseId", case_id),
                       ("Sequence", sequence), ("Session", session)):
        segmentation.SetAttribute(ATTRIBUTE_PREFIX + key, value)
    own = [m for m in study.visible_masks(reader_id, case_id)
           if m["reader_id"] == reader_id and m["session"] == session and m["sequence"] == sequence]
    wanted = _contents_for(sequence, variant, contents)
    known = {c for c, _ in wanted}
    wanted += [(m["content"], label_by_key(m["content"], variant) if variant else None)
               for m in own if m["content"] not in known]
    segments = {content: add_segment(segmentation, content, label) for content, label in wanted}
    for m in own:
        set_segment_mask(segmentation, segments[m["content"]], sitk.ReadImage(m["path"]))
    others = []
    if role in ("reviewer", "arbitrator"):
        theirs: dict[str, list[dict]] = {}
        for m in study.visible_masks(reader_id, case_id):
            if m["reader_id"] != reader_id and m["sequence"] == sequence:
                theirs.setdefault(m["reader_id"], []).append(m)
        for other, masks in sorted(theirs.items()):
            node = new_segmentation(scene, f"{patient_id}_{sequence} {other} (submitted)", volume)
            node.SetAttribute(ATTRIBUTE_PREFIX + "ReaderId", other)
            node.SetAttribute(ATTRIBUTE_PREFIX + "ReadOnly", "1")
            for m in masks:
                label = label_by_key(m["content"], variant) if variant else None
                sid = add_segment(node, m["content"], label, name=f"{m['content']} ({m['session']})")
                set_segment_mask(node, sid, sitk.ReadImage(m["path"]))
            others.append(node)
    return Reading(reader_id, role, case_id, patient_id, sequence, session, volume, segmentation, segments, others)


def save_reading(study: ReaderStudy, segmentation_node, volume_node, *, final: bool = False,
                 notes: str = "") -> list[Path]:
    """Save every content segment of a reader's segmentation through the study: each one is
    exported onto the source volume's grid (an empty segment is saved as an empty mask:
    "nothing of this kind") as ``<patient>_<sequence>_<content>.nii.gz``. All segments are
    exported before the first file is written. ``final`` submits (locks) them. Returns the
    paths."""
    require_in_scene(segmentation_node, "segmentation")
    require_in_scene(volume_node, "source volume")
    folder = _attr(segmentation_node, "StudyFolder")
    if not folder:
        raise UserError(f"{node_label(segmentation_node, 'segmentation')} was not opened from a reader study; "
                        "open the case from the case list")
    if Path(folder).resolve() != study.folder.resolve():
        raise UserError(f"{node_label(segmentation_node, 'segmentation')} belongs to the study in {folder}, not to "
                        f"{study.folder}")
    reader_id, case_id = _attr(segmentation_node, "ReaderId"), _attr(segmentation_node, "CaseId")
    sequence, session = _attr(segmentation_node, "Sequence"), _attr(segmentation_node, "Session")
    segments = content_segments(segmentation_node)
    if not segments:
        raise UserError(f"{node_label(segmentation_node, 'segmentation')} has no segment to save")
    source = study.source_image(case_id, sequence)
    masks = {content: _mask_or_blank(segmentation_node, sid, volume_node, source) for content, sid in segments.items()}
    return [study.save_mask(reader_id, case_id, sequence, content, mask, session=session, final=final, notes=notes)
            for content, mask in masks.items()]


def close_nodes(nodes) -> None:
    """Remove a reading's nodes from the scene (the next case starts clean)."""
    for node in nodes:
        if node is not None and node.GetScene() is not None:
            node.GetScene().RemoveNode(node)


# ---------------------------------------------------------------------------------------
# Compare two segmentations

METRIC_ROWS = (("dice", "Dice", ""), ("jaccard", "Jaccard", ""), ("hd95_mm", "HD95", "mm"),
               ("assd_mm", "mean surface distance (ASSD)", "mm"), ("surface_dice", "surface Dice", ""),
               ("volume_ref_ml", "volume A", "mL"), ("volume_test_ml", "volume B", "mL"),
               ("volume_diff_ml", "volume B - A", "mL"))
LESION_ROWS = (("n_reference", "lesions A", ""), ("n_test", "lesions B", ""), ("matched", "lesions matched", ""),
               ("missed", "lesions of A missed by B", ""), ("extra", "lesions of B not in A", ""),
               ("lesion_f1", "lesion-wise F1", ""))


def metric_rows(metrics: dict, lesions: dict | None = None, tolerance_mm: float = 1.0) -> list[dict]:
    """Rows (metric, value, unit) for the compare table; undefined distances as None."""
    rows = []
    for key, name, unit in METRIC_ROWS:
        v = metrics[key]
        name = f"{name} @ {tolerance_mm:g} mm" if key == "surface_dice" else name
        rows.append({"metric": name, "value": None if v is None or not np.isfinite(v) else float(v), "unit": unit})
    for key, name, unit in LESION_ROWS if lesions else ():
        rows.append({"metric": name, "value": float(lesions[key]), "unit": unit})
    return rows


def compare_segments(segmentation_a, segment_a: str, segmentation_b, segment_b: str, reference_volume_node, *,
                     tolerance_mm: float = 1.0, connectivity: int = 26, table_node=None,
                     disagreement_node=None) -> dict:
    """Agreement of segment B with segment A (the reference), both exported onto the
    reference volume's grid: ``compare_masks`` (Dice, Jaccard, HD95, ASSD, surface Dice,
    volumes) and ``lesion_detection``. With ``table_node`` the metrics are written as rows
    (metric, value, unit); with ``disagreement_node`` (a segmentation) its content is replaced
    by ``disagreement_map``'s two labels as segments "readers disagree" and "both readers
    agree". Returns ``{"metrics", "lesions", "resampled": [a, b], "disagreement_voxels",
    "agreement_voxels"}``."""
    from ClinicalMRICommonLib.agreement.consensus import disagreement_map
    from ClinicalMRICommonLib.agreement.segmentation_metrics import compare_masks, lesion_detection

    mask_a, resampled_a = segment_to_sitk_mask(segmentation_a, segment_a, reference_volume_node)
    mask_b, resampled_b = segment_to_sitk_mask(segmentation_b, segment_b, reference_volume_node)
    metrics = compare_masks(mask_a, mask_b, tolerance_mm=tolerance_mm)
    lesions = lesion_detection(mask_a, mask_b, connectivity=connectivity)
    dmap = disagreement_map([mask_a, mask_b])
    counts = np.bincount(sitk.GetArrayViewFromImage(dmap).ravel(), minlength=3)
    result = {"metrics": metrics, "lesions": lesions, "resampled": [resampled_a, resampled_b],
              "disagreement_voxels": int(counts[1]), "agreement_voxels": int(counts[2])}
    if table_node is not None:
        results_to_table_node(metric_rows(metrics, lesions, tolerance_mm), table_node)
    if disagreement_node is not None:
        require_in_scene(disagreement_node, "disagreement segmentation")
        segmentation = disagreement_node.GetSegmentation()
        segmentation.RemoveAllSegments()
        disagreement_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
        arr = sitk.GetArrayViewFromImage(dmap)
        for value, (name, colour) in DISAGREEMENT_SEGMENTS.items():
            sid = segmentation.AddEmptySegment("", name, list(colour))
            if (arr == value).any():
                set_segment_mask(disagreement_node, sid, sitk.Equal(dmap, value))
        if disagreement_node.GetDisplayNode() is None:
            disagreement_node.CreateDefaultDisplayNodes()
    return result


def compare_selected(segmentation_a, segment_a: str, segmentation_b, segment_b: str, reference_volume_node, *,
                     tolerance_mm: float = 1.0, scene=None, table_node=None, disagreement_node=None) -> dict:
    """The panel's Compare: refuses incomplete selections (naming what is missing), creates
    the result table and the disagreement segmentation when there are none yet, then
    :func:`compare_segments`. Returns its result plus ``table_node`` and ``disagreement_node``."""
    missing = [label for node, sid, label in ((segmentation_a, segment_a, "segment A"),
                                              (segmentation_b, segment_b, "segment B")) if not node or not sid]
    if reference_volume_node is None:
        missing.append("the volume whose grid is used")
    if missing:
        raise UserError(f"select: {', '.join(missing)}")
    scene = scene if scene is not None else reference_volume_node.GetScene()
    table_node = table_node_or_new(scene, table_node, "Segmentation agreement")
    if disagreement_node is None or disagreement_node.GetScene() is None:
        disagreement_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Disagreement")
    result = compare_segments(segmentation_a, segment_a, segmentation_b, segment_b, reference_volume_node,
                              tolerance_mm=tolerance_mm, table_node=table_node, disagreement_node=disagreement_node)
    return {**result, "table_node": table_node, "disagreement_node": disagreement_node}


# ---------------------------------------------------------------------------------------
# Per-feature ICC


def icc_rows(table: pd.DataFrame, threshold: float = 0.75) -> list[dict]:
    """Rows of a ``feature_icc`` table: feature, class, icc, ci_low, ci_high, interpretation,
    n, and whether the feature reaches ``threshold``."""
    _needs("tables", purpose="show the feature ICC")
    from ClinicalMRICommonLib.agreement.icc import feature_class

    rows = []
    for feature, r in table.iterrows():
        icc = float(r["icc"])
        rows.append({"feature": str(feature), "class": feature_class(str(feature)),
                     "icc": icc if np.isfinite(icc) else None,
                     "ci_low": float(r["ci_low"]) if np.isfinite(r["ci_low"]) else None,
                     "ci_high": float(r["ci_high"]) if np.isfinite(r["ci_high"]) else None,
                     "interpretation": str(r["interpretation"]), "n": int(r["n"]),
                     "passes": bool(np.isfinite(icc) and icc >= threshold)})
    return rows


def icc_class_rows(table: pd.DataFrame, threshold: float = 0.75) -> list[dict]:
    """Per radiomics feature class: features, defined ICCs, median ICC and how many reach
    ``threshold`` (the numbers under the boxes of the ICC-by-class plot)."""
    _needs("tables", purpose="show the feature ICC")
    import pandas as pd

    from ClinicalMRICommonLib.agreement.icc import feature_class

    classes = pd.Series([feature_class(str(f)) for f in table.index], index=table.index)
    rows = []
    for cls in dict.fromkeys(classes):
        icc = table.loc[classes == cls, "icc"].astype(float)
        defined = icc.dropna()
        rows.append({"class": cls, "features": int(len(icc)), "defined": int(len(defined)),
                     "median_icc": float(defined.median()) if len(defined) else None,
                     f"reaching {threshold:g}": int((defined >= threshold).sum())})
    return rows


def icc_to_nodes(table: pd.DataFrame, *, threshold: float = 0.75, table_node=None, class_table_node=None,
                 plot_png: str | os.PathLike | None = None, title: str | None = None) -> dict:
    """Write a ``feature_icc`` table into table nodes and draw the ICC-by-class plot (PNG).
    Returns ``{"rows", "class_rows", "plot", "n_features", "n_passing"}``."""
    _needs("tables", purpose="show the feature ICC")
    if plot_png is not None:
        _needs("plots", purpose="draw the ICC-by-class plot")
    from ClinicalMRICommonLib.agreement.icc import plot_icc_by_class

    rows, class_rows = icc_rows(table, threshold), icc_class_rows(table, threshold)
    if table_node is not None:
        results_to_table_node(rows, table_node)
    if class_table_node is not None:
        results_to_table_node(class_rows, class_table_node)
    plot = None
    if plot_png is not None:
        plot = plot_icc_by_class(table, plot_png, threshold=threshold, title=title)
    return {"rows": rows, "class_rows": class_rows, "plot": plot, "n_features": len(rows),
            "n_passing": sum(r["passes"] for r in rows)}


def feature_icc_from_csv(csv_a: str | os.PathLike, csv_b: str | os.PathLike, id_column: str,
                         form: str = "ICC(A,1)") -> pd.DataFrame:
    """``feature_icc`` of two feature tables (CSV files), as ``annotation-qc feature-icc``."""
    missing = [what for path, what in ((csv_a, "first"), (csv_b, "second")) if path_or_none(path) is None]
    if missing:
        raise UserError(f"choose the {' and the '.join(missing)} feature table (CSV) first")
    if not str(id_column).strip():
        raise UserError("enter the name of the case id column of the feature tables")
    _needs("tables", purpose="compute the feature ICC")
    from ClinicalMRICommonLib.agreement.icc import feature_icc
    from ClinicalMRICommonLib.tables import read_feature_table
    return feature_icc(read_feature_table(csv_a, id_column, "first feature table"),
                       read_feature_table(csv_b, id_column, "second feature table"), form=form)


def panel_icc(source: str, *, study=None, reader_a: str = "", reader_b: str = "", session_a: str = "first",
              session_b: str = "first", sequence: str = "", content: str = "", csv_a=None, csv_b=None,
              id_column: str = "case_id", form: str = "ICC(A,1)", threshold: float = 0.75, scene=None,
              table_node=None, class_table_node=None, plot_png=None) -> dict:
    """The panel's Compute ICC: from the logged-in reader ``study`` (``source`` "study": two
    readers, or one reader's 'first' and 'repeat' sessions) or from two feature tables
    (``source`` "csv"); the result goes into the two table nodes (created when missing) and
    the plot. Returns :func:`icc_to_nodes`' result with ``note`` (cases left out) and the
    table nodes."""
    note = ""
    if source == "study":
        if study is None:
            raise UserError("log in to a reader study first (Reading section), or use two feature tables")
        if not reader_a.strip() or not reader_b.strip():
            raise UserError("enter reader A and reader B (the same reader with sessions 'first' and 'repeat' for "
                            "the intra-reader ICC)")
        _needs("tables", "radiomics", purpose="compute the feature ICC of a reader study")
        result = study.feature_icc(reader_a.strip(), reader_b.strip(), session_a or "first", session_b or "first",
                                   sequence=sequence.strip() or None, content=content.strip() or None, form=form)
        table = result["table"]
        if result["skipped_empty"]:
            note = f"Left out for an empty mask: {', '.join(result['skipped_empty'])}."
    elif source == "csv":
        table = feature_icc_from_csv(csv_a, csv_b, id_column, form=form)
    else:
        raise UserError(f"unknown ICC source {source!r}; use 'study' or 'csv'")
    scene = scene if scene is not None else slicer.mrmlScene
    table_node = table_node_or_new(scene, table_node, "Feature ICC")
    class_table_node = table_node_or_new(scene, class_table_node, "Feature ICC by class")
    out = icc_to_nodes(table, threshold=threshold, table_node=table_node, class_table_node=class_table_node,
                       plot_png=plot_png, title=f"{form} per feature class")
    return {**out, "note": note, "table_node": table_node, "class_table_node": class_table_node}


# ---------------------------------------------------------------------------------------
# Training sessions


def training_session_in(folder):
    """The training session in ``folder``, or None when the folder is unset or holds no
    ``session.json`` (an empty path field: nothing is looked up in Slicer's working folder)."""
    folder = path_or_none(folder)
    if folder is None or not (folder / "session.json").is_file():
        return None
    _needs("tables", purpose="open a training session")
    from .training import TrainingSession

    return TrainingSession.open(folder)


def create_training_session(folder, cases_file, name: str):
    """A new training session in ``folder`` from the reference cases table (CSV)."""
    folder, cases_file = path_or_none(folder), path_or_none(cases_file)
    if folder is None or cases_file is None or not str(name).strip():
        raise UserError("choose the new session folder, the reference cases table and a name")
    _needs("tables", purpose="create a training session")
    from .training import TrainingSession, cases_from_csv

    return TrainingSession.create(folder, str(name).strip(), cases_from_csv(cases_file))


def training_case_rows(session) -> list[dict]:
    """A trainee's case list (never the reference masks)."""
    return [{"case_id": c["case_id"], "patient_id": c["patient_id"], "sequence": c["sequence"],
             "content": c["content"]} for c in session.trainee_cases()]


def open_training_case(session, trainee_id: str, case_id: str, *, variant: str | None = "intra-axial",
                       scene=None) -> Reading:
    """Load a training case's image and an empty segmentation for the trainee (one segment:
    the case's content, with the terminology's name and colour when it is a CNS-tumour
    label). The reference mask is never loaded."""
    _needs("tables", purpose="load a training case")
    from .sessions import check_name

    scene = scene if scene is not None else slicer.mrmlScene
    check_name(trainee_id, "trainee id")
    cases = session.trainee_cases()
    case = next((c for c in cases if c["case_id"] == case_id), None)
    if case is None:
        raise UserError(f"case {case_id!r} is not part of training session {session.meta['name']!r} "
                        f"(cases: {', '.join(c['case_id'] for c in cases)})")
    if session.trainee_mask_path(trainee_id, case_id).exists():
        raise UserError(f"trainee {trainee_id!r} already submitted case {case_id!r}; submissions are never "
                        "overwritten")
    image = read_image(case["image"], "training case image")
    volume = sitk_to_volume_node(image, f"{case['patient_id']}_{case['sequence']} (training)", scene=scene)
    segmentation = new_segmentation(scene, f"{case['patient_id']}_{case['sequence']} {trainee_id} (training)",
                                     volume)
    segmentation.SetAttribute(ATTRIBUTE_PREFIX + "TrainingSession", str(session.folder.resolve()))
    segmentation.SetAttribute(ATTRIBUTE_PREFIX + "ReaderId", trainee_id)
    segmentation.SetAttribute(ATTRIBUTE_PREFIX + "CaseId", case_id)
    label = label_by_key(case["content"], variant) if variant else None
    sid = add_segment(segmentation, case["content"], label)
    return Reading(trainee_id, "trainee", case_id, case["patient_id"], case["sequence"], "training", volume,
                   segmentation, {case["content"]: sid})


def submit_training_case(session, segmentation_node, volume_node) -> Path:
    """Submit the trainee's segment (exported onto the case image's grid) for the case the
    segmentation was opened for."""
    require_in_scene(segmentation_node, "segmentation")
    folder = _attr(segmentation_node, "TrainingSession")
    if not folder or Path(folder).resolve() != session.folder.resolve():
        raise UserError(f"{node_label(segmentation_node, 'segmentation')} was not opened from training session "
                        f"{session.meta['name']!r}; load the case from the training case list")
    trainee_id, case_id = _attr(segmentation_node, "ReaderId"), _attr(segmentation_node, "CaseId")
    segments = content_segments(segmentation_node)
    if len(segments) != 1:
        raise UserError(f"{node_label(segmentation_node, 'segmentation')} must hold exactly one training segment")
    (sid,) = segments.values()
    if segment_is_empty(segmentation_node, sid):
        name = segmentation_node.GetSegmentation().GetSegment(sid).GetName()
        raise UserError(f"segment '{name}' is empty; draw the lesion first")
    mask, _resampled = segment_to_sitk_mask(segmentation_node, sid, volume_node, what="training case volume")
    return session.submit(trainee_id, case_id, mask)


def training_report(session, trainee_id: str, *, table_node=None, out_dir=None, feature_extractor=None) -> dict:
    """Evaluate a trainee and write the report (JSON, HTML, overlays); with ``table_node`` one
    row per case (Dice, HD95, over/under-segmentation, tendency, pass)."""
    _needs("tables", "plots", purpose="write the training report")
    if feature_extractor is None:
        _needs("radiomics", purpose="compare the trainee's radiomics features with the reference")
    report = session.write_report(trainee_id, out_dir, feature_extractor=feature_extractor)
    if table_node is not None:
        keys = ("case_id", "sequence", "dice", "hd95_mm", "assd_mm", "volume_ref_ml", "volume_test_ml", "over_ml",
                "under_ml", "tendency", "dice_pass")
        results_to_table_node([{k: c.get(k) for k in keys} for c in report["cases"]], table_node)
    return report


def training_summary(report: dict) -> str:
    """One paragraph: PASSED / NOT PASSED, the reasons and the overall scores."""
    ov = report["overall"]
    icc = ov["feature_icc"]

    def f(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"

    lines = [f"{report['trainee']}: {'PASSED' if ov['passed'] else 'NOT PASSED'}"]
    lines += [f"- {r}" for r in ov["reasons"]]
    lines.append(f"cases {ov['cases_submitted']}/{ov['cases_total']}, mean Dice {f(ov['mean_dice'])}, median "
                 f"feature {icc['form']} {f(icc['median'])} ({icc['interpretation']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Image quality


def quality_roi_segmentation(volume_node, *, scene=None):
    """A segmentation for the SNR/CNR ROIs on a volume, with empty segments "signal",
    "background" (noisy air outside the body) and "tissue" (optional, for the CNR)."""
    require_in_scene(volume_node, "volume")
    scene = scene if scene is not None else volume_node.GetScene()
    node = new_segmentation(scene, f"{volume_node.GetName()} quality ROIs", volume_node)
    for name, colour in QUALITY_ROIS.items():
        sid = node.GetSegmentation().AddEmptySegment("", name, list(colour))
        node.GetSegmentation().GetSegment(sid).SetTag(CONTENT_TAG, name)
    return node


def measure_snr_cnr(volume_node, roi_segmentation_node, *, rayleigh_correction: bool = False) -> dict:
    """SNR (and CNR when the "tissue" segment is drawn) of a volume from the ROI segments of
    :func:`quality_roi_segmentation`, exported onto the volume's grid (quality.snr_cnr)."""
    from ClinicalMRICommonLib.quality import snr_cnr

    rois = content_segments(roi_segmentation_node)
    missing = [r for r in ("signal", "background") if r not in rois]
    if missing:
        raise UserError(f"{node_label(roi_segmentation_node, 'ROI segmentation')} has no {' or '.join(missing)} "
                        "segment; create the quality ROIs first")
    image = volume_node_to_sitk(volume_node, "graded volume")
    masks = {}
    for name in ("signal", "background", "tissue"):
        if name in rois and not segment_is_empty(roi_segmentation_node, rois[name]):
            masks[name], _ = segment_to_sitk_mask(roi_segmentation_node, rois[name], volume_node, what="graded volume")
        elif name != "tissue":
            raise UserError(f"the {name} ROI is empty; draw it on the image (Segment Editor) first")
    return snr_cnr(image, masks["signal"], masks["background"], masks.get("tissue"),
                   rayleigh_correction=rayleigh_correction)


def record_series_quality(study: ReaderStudy, case_id: str, sequence: str, rater: str, *, grade: int | None = None,
                          likert: int | None = None, reason: str = "", measurement: dict | None = None,
                          min_snr: float | None = None, min_cnr: float | None = None) -> dict:
    """Record a series' grade / Likert score (and the measured SNR/CNR) in the study's quality
    log; a flagged series (grade < 2, Likert < 3, or below the given SNR/CNR minima) needs a
    reason and is no longer offered for annotation."""
    _needs("tables", purpose="record the image quality")
    from .quality import record_quality

    m = measurement or {}
    return record_quality(study.folder, case_id, sequence, rater, grade=grade, likert=likert, reason=reason,
                          snr=m.get("snr"), cnr=m.get("cnr"), min_snr=min_snr, min_cnr=min_cnr)
