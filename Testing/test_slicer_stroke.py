"""StrokeLesion's Slicer logic (StrokeLesionLib.panel_logic) on real MRML scenes from
slicer-core, with the real ISLES'22 case (no fake slicer module, no mocks).

References, independent of the code under test:
- the library run on the same files (diffusion.load_diffusion + candidate.candidate_mask,
  what ``stroke-lesion candidate`` runs) for the candidate and shine-through segments;
- the expert mask (523 voxels, 18 lesions, data README) and numpy set operations on the
  readers' masks for the annotation files and the disagreement map;
- the study's own audit trail and files (SHA-256) for versions and blinding.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_harness import mrml_scene, slicer  # noqa: F401  (fixture + the slicer-core module)

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib import job_worker
from ClinicalMRICommonLib.mrml_bridge import (
    new_segmentation,
    nodes_by_class,
    segment_editor_node,
    segment_id_by_name,
    segment_is_empty,
    segment_to_sitk_mask,
    show_in_views,
    volume_node_to_sitk,
)
from ClinicalMRICommonLib.agreement.segmentation_metrics import connected_components
from StrokeLesionLib import panel_logic as pl  # noqa: E402
from StrokeLesionLib.candidate import candidate_mask  # noqa: E402
from StrokeLesionLib.diffusion import load_diffusion  # noqa: E402
from StrokeLesionLib.workflow import Reader, Study, sha256_file  # noqa: E402

CASE = "sub-strokecase0009_ses-0001"


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"session": raw, "dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz",
            "flair": raw / f"{CASE}_flair.nii.gz",
            "truth": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz"}


def arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img) != 0


def segment_array(segmentation, name, reference):
    mask, resampled = segment_to_sitk_mask(segmentation, segment_id_by_name(segmentation, name), reference)
    assert resampled is False                     # drawn on the DWI grid itself: copied voxel for voxel
    return arr(mask)


def node_count(scene, cls):
    return scene.GetNumberOfNodesByClass(cls)


def test_session_folder_and_one_click_candidate_match_the_library(mrml_scene, isles):
    scene = mrml_scene.scene
    loaded = pl.load_session_folder(isles["session"], scene=scene)
    s = loaded.summary()
    assert s["adc_units"] == "1e-3mm2/s" and s["adc_units_detected"] is True    # data README: 10^-3 mm2/s
    assert 0.8 < s["brain_median_adc_raw"] < 1.0
    dwi_file = sitk.ReadImage(str(isles["dwi"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume_node_to_sitk(loaded.dwi)),
                                  sitk.GetArrayFromImage(dwi_file))
    # FLAIR: native 512x512x29 kept, a copy on the DWI grid for display and checks
    assert volume_node_to_sitk(loaded.flair_native).GetSize() == (512, 512, 29)
    assert volume_node_to_sitk(loaded.flair).GetSize() == dwi_file.GetSize() and s["warnings"]

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "checks")
    summary = pl.run_candidate(loaded.dwi, loaded.adc, flair_node=loaded.flair_native, table_node=table)
    reference = candidate_mask(load_diffusion(isles["dwi"], isles["adc"]))        # what the CLI computes
    seg = scene.GetNodeByID(summary["segmentation_node_id"])
    lesion = segment_array(seg, pl.CANDIDATE_SEGMENT, loaded.dwi)
    shine = segment_array(seg, pl.SHINE_THROUGH_SEGMENT, loaded.dwi)
    np.testing.assert_array_equal(lesion, arr(reference.mask))
    np.testing.assert_array_equal(shine, arr(reference.shine_through))
    assert not (lesion & shine).any()                                             # shine-through is not lesion
    assert summary["n_voxels"] == int(lesion.sum()) == reference.stats["n_voxels"] > 0
    assert summary["volume_ml"] == pytest.approx(lesion.sum() * 8 / 1000)       # 2 mm isotropic voxels
    assert summary["n_lesions"] == reference.stats["n_lesions"] == connected_components(reference.mask, 26)[1]
    assert summary["adc_units"] == "1e-3mm2/s"
    # per-lesion checks: one row per lesion, ADC below the 620 threshold, FLAIR ratios present
    assert table.GetNumberOfRows() == summary["n_lesions"]
    assert all(r["adc_median_1e-6mm2/s"] < 620 and r["flair_to_brain"] > 0 for r in summary["lesions"])

    # a reader starts from the candidate; the views show DWI | ADC | FLAIR on the DWI grid
    own = new_segmentation(scene, "mine", loaded.dwi)
    pl.copy_segment(seg, summary["segment_ids"][pl.CANDIDATE_SEGMENT], own, pl.LESION_SEGMENT, loaded.dwi)
    np.testing.assert_array_equal(segment_array(own, pl.LESION_SEGMENT, loaded.dwi), lesion)
    assert [v["background"] for v in pl.reading_views(loaded).values()] == [loaded.dwi, loaded.adc, loaded.flair]
    editor = segment_editor_node(scene, pl.SEGMENT_EDITOR_TAG)
    assert segment_editor_node(scene, pl.SEGMENT_EDITOR_TAG) is editor
    assert editor.GetSingletonTag() == pl.SEGMENT_EDITOR_TAG

    # running it again replaces the two segments (same ids), nothing piles up
    again = pl.run_candidate(loaded.dwi, loaded.adc, segmentation_node=seg)
    assert again["segment_ids"] == summary["segment_ids"]
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    # stated units: trusted and reported as stated
    assert pl.run_candidate(loaded.dwi, loaded.adc, adc_units="1e-3mm2/s",
                            segmentation_node=seg)["adc_units_detected"] is False


def test_loading_errors_add_nothing(mrml_scene, isles, tmp_path):
    scene = mrml_scene.scene
    before = node_count(scene, "vtkMRMLScalarVolumeNode")
    with pytest.raises(UserError, match="different grid"):
        pl.load_case_files(isles["dwi"], isles["flair"], scene=scene)          # FLAIR given as the ADC
    bad = sitk.ReadImage(str(isles["adc"])) * 50.0                             # fits no ADC unit
    sitk.WriteImage(bad, str(tmp_path / "adc50.nii.gz"))
    with pytest.raises(UserError, match="fits none of the known ADC units"):
        pl.load_case_files(isles["dwi"], tmp_path / "adc50.nii.gz", scene=scene)
    with pytest.raises(UserError, match="no ADC"):
        (tmp_path / "ses").mkdir()
        (tmp_path / "ses" / "sub-1_ses-1_dwi.nii.gz").symlink_to(isles["dwi"])
        pl.load_session_folder(tmp_path / "ses", scene=scene)
    assert node_count(scene, "vtkMRMLScalarVolumeNode") == before


def test_node_removed_mid_way_is_a_user_error(mrml_scene, isles):
    scene = mrml_scene.scene
    loaded = pl.load_case_files(isles["dwi"], isles["adc"], scene=scene)

    def remove_adc(message):
        if message.startswith("computing"):
            scene.RemoveNode(loaded.adc)

    segmentations = node_count(scene, "vtkMRMLSegmentationNode")
    with pytest.raises(UserError, match="ADC volume 'ADC' is no longer in the scene"):
        pl.run_candidate(loaded.dwi, loaded.adc, progress=remove_adc)
    assert node_count(scene, "vtkMRMLSegmentationNode") == segmentations      # nothing half-written
    with pytest.raises(UserError, match="no longer in the scene"):
        pl.run_candidate(loaded.dwi, loaded.adc)


@pytest.fixture
def study(tmp_path, isles):
    s = Study.create(tmp_path / "study", by="coord", name="panel")
    for r in (Reader("ann1", "attending", 8, 3), Reader("ann2", "resident", 5, 2),
              Reader("rev1", "associate_chief", 14, 9), Reader("arb1", "chief", 25, 18)):
        s.add_reader(r, by="coord")
    s.init_case("c0009", dwi=isles["dwi"], adc=isles["adc"], others={"flair": isles["flair"]},
                subject="strokecase0009", session="0001", by="coord")
    for slot, rid in (("annotatorA", "ann1"), ("annotatorB", "ann2"), ("reviewer", "rev1"), ("arbitrator", "arb1")):
        s.assign("c0009", slot, rid, by="coord")
    return s


def test_two_blinded_annotators_review_arbitration_and_export(mrml_scene, study, isles, tmp_path):
    scene = mrml_scene.scene
    truth = sitk.ReadImage(str(isles["truth"]))
    t = arr(truth)
    assert t.sum() == 523                                          # data README
    lab, n = connected_components(truth, 26)
    assert n == 18
    smallest = int(np.argmin(np.bincount(lab.ravel())[1:])) + 1

    # annotator A draws (here: the expert mask put into the segment) and submits twice
    loaded_a, seg_a, view_a = pl.load_study_case(study, "c0009", "ann1", scene=scene)
    assert view_a["slot"] == "annotatorA" and view_a["blinded"] and loaded_a.flair is not None
    lesion_a = segment_id_by_name(seg_a, pl.LESION_SEGMENT)
    assert segment_is_empty(seg_a, lesion_a)
    with pytest.raises(UserError, match="is empty; draw the lesion"):
        pl.submit_annotation(study, "c0009", "ann1", seg_a, lesion_a, loaded_a.dwi)
    first = np.where(lab == smallest, False, t)                        # first draft misses one lesion
    pl.mask_to_segment(_like(first, truth), seg_a, pl.LESION_SEGMENT, loaded_a.dwi)
    v1 = pl.submit_annotation(study, "c0009", "ann1", seg_a, lesion_a, loaded_a.dwi, why="first pass")
    pl.mask_to_segment(truth, seg_a, pl.LESION_SEGMENT, loaded_a.dwi)
    v2 = pl.submit_annotation(study, "c0009", "ann1", seg_a, lesion_a, loaded_a.dwi, time_spent_s=600)
    assert (v1["version"], v1["n_voxels"], v2["version"], v2["n_voxels"]) == (1, first.sum(), 2, 523)
    f1, f2 = study.mask_path("c0009", v1["file"]), study.mask_path("c0009", v2["file"])
    assert f1 != f2 and sha256_file(f1) == v1["sha256"]                    # version 1 kept unchanged
    np.testing.assert_array_equal(arr(sitk.ReadImage(str(f2))), t)
    assert v2["source"].startswith("Slicer: segment 'lesion'")

    # annotator B cannot open the case in a scene holding A's work (nothing is removed) ...
    with pytest.raises(UserError, match="annotators are blinded to each other"):
        pl.load_study_case(study, "c0009", "ann2", scene=scene)
    # ... and in B's own scene gets an empty segment, never A's mask
    from slicer_harness import SlicerCoreScene
    scene_b = SlicerCoreScene()
    loaded_b, seg_b, view_b = pl.load_study_case(study, "c0009", "ann2", scene=scene_b.scene)
    assert view_b["annotations"]["annotatorA"] == {"submitted": True, "hidden": "blinded until the case is final"}
    assert segment_is_empty(seg_b, segment_id_by_name(seg_b, pl.LESION_SEGMENT))
    b = t.copy()
    b[40:43, 60:63, 30:33] = True                                        # B adds a 27-voxel lesion
    pl.mask_to_segment(_like(b, truth), seg_b, pl.LESION_SEGMENT, loaded_b.dwi)
    vb = pl.submit_annotation(study, "c0009", "ann2", seg_b, segment_id_by_name(seg_b, pl.LESION_SEGMENT),
                              loaded_b.dwi)
    assert (vb["slot"], vb["version"], vb["n_voxels"]) == ("annotatorB", 1, 550)
    # blinding: A cannot open B's mask nor the review; B cannot submit as A
    with pytest.raises(UserError, match="blinded"):
        pl.load_annotation(study, "c0009", "ann1", "annotatorB", loaded_a.dwi)
    with pytest.raises(UserError, match="not assigned"):
        pl.load_study_case(study, "c0009", "stranger", scene=scene)
    reloaded = pl.load_annotation(study, "c0009", "ann1", "annotatorA", loaded_a.dwi, version=1)
    np.testing.assert_array_equal(segment_array(reloaded, "annotatorA", loaded_a.dwi), first)

    compare = pl.compare_case(study, "c0009", by="coord")
    assert compare["needs_review"] and compare["n_lesions"] == 19
    with pytest.raises(UserError, match="annotators do not see"):
        pl.load_review(study, "c0009", "ann2", loaded_b.dwi)
    scene_b.close()

    # the reviewer's view: A and B side by side, the disagreement, one row per lesion
    loaded_r, _, view_r = pl.load_study_case(study, "c0009", "rev1", scene=scene)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "lesions")
    review = pl.load_review(study, "c0009", "rev1", loaded_r.dwi, table_node=table)
    np.testing.assert_array_equal(segment_array(review.segmentation_a, "annotator A", loaded_r.dwi), t)
    np.testing.assert_array_equal(segment_array(review.segmentation_b, "annotator B", loaded_r.dwi), b)
    assert review.segmentation_a.GetDisplayNode().GetViewNodeIDs() == ("vtkMRMLSliceNodeRed",)
    assert review.segmentation_b.GetDisplayNode().GetViewNodeIDs() == ("vtkMRMLSliceNodeYellow",)
    assert pl.review_views(loaded_r.dwi, review)["Green"]["label"] is review.disagreement
    dis = slicer.util.arrayFromVolume(review.disagreement)
    assert (dis == 1).sum() == (t ^ b).sum() == 27 and (dis == 2).sum() == (t & b).sum() == 523
    assert review.compare["agreement"]["dice"] == pytest.approx(2 * 523 / (523 + 550))
    assert table.GetNumberOfRows() == len(review.lesions) == 19
    extra = next(r for r in review.lesions if r["drawn_by"] == "B only")
    ids = slicer.util.arrayFromVolume(review.lesion_map)
    assert set(np.unique(ids[b & ~t])) == {extra["lesion"]}

    # a note placed on B's extra lesion (RAS point, as a markup gives it) attaches to it
    note = pl.add_note(study, "c0009", "rev1", "flow void, not infarct?", point_ras=extra["centroid_ras"])
    assert note["lesion"] == extra["lesion"]
    rows = pl.review_rows(pl.reader_view(study, "c0009", "rev1"))
    assert next(r for r in rows if r["lesion"] == extra["lesion"])["notes"] == "rev1: flow void, not infarct?"

    # reviewer disputes with a proposal (A everywhere, B's extra lesion dropped); the arbitrator
    # takes the proposal but edits one lesion: a segment drawn on the DWI
    rv = pl.submit_review(study, "c0009", "rev1", default="A", choices={extra["lesion"]: "none"}, dispute=True,
                          why="B's extra lesion looks like a flow void")
    assert rv["outcome"] == "disputed" and rv["n_voxels"] == 523
    edited = new_segmentation(scene, "arbitrator edit", loaded_r.dwi)
    keep = np.where(lab == smallest, False, t)
    sid = pl.mask_to_segment(_like(keep, truth), edited, "edit", loaded_r.dwi)
    small_id = int(np.unique(ids[lab == smallest])[0])               # that lesion's id in the comparison
    arb = pl.submit_arbitration(study, "c0009", "arb1", default="review", choices={small_id: "edited"},
                                edited_segment=(edited, sid), dwi_node=loaded_r.dwi, why="lesion too small to call")
    assert arb["final"] is True and arb["n_voxels"] == keep.sum()
    assert arb["report"]["edited_input"] == "Slicer: segment 'edit' of 'arbitrator edit'"
    cons = pl.load_consensus(study, "c0009", "ann1", loaded_a.dwi)        # final: annotators see it now
    np.testing.assert_array_equal(segment_array(cons, "consensus", loaded_a.dwi), keep)
    pl.load_annotation(study, "c0009", "ann1", "annotatorB", loaded_a.dwi)  # and each other's masks

    # export with the official validator and our GeneratedBy check, then acceptance
    for series in ("dwi", "adc", "flair"):
        study.record_quality("c0009", series, reader_id="rev1", likert=4, snr=20.0, cnr=6.0)
    rep = pl.export_dataset(study, tmp_path / "bids", name="panel export", authors=["A. Reader"])
    assert rep["generated_by_problems"] == [] and rep["valid"] is True, rep
    from StrokeLesionLib.bids import validator_executable
    if validator_executable() is not None:                             # installed with the test extra
        assert rep["validator"] == {"n_errors": 0, "errors": []}
    acc = pl.acceptance_report(tmp_path / "bids")
    assert acc["accepted"] is True and acc["summary"]["total_consensus_volume_ml"] == pytest.approx(keep.sum() * 0.008)

    # the panel's Export and Acceptance report: the same functions in a separate process
    seen = []
    kwargs = pl.export_job_kwargs(study.root, tmp_path / "bids-worker", name="panel export", authors="A. Reader",
                                  validate=False)
    worker = job_worker.run_job("StrokeLesionLib.panel_logic:export_job", kwargs, tmp_path / "job",
                                packages=("StrokeLesionLib",), progress=seen.append, timeout=600)
    assert seen[:2] == ["opening the study", "writing the BIDS dataset"]      # progress from the worker
    assert worker["files"] == rep["files"] and worker["cases"] == json.loads(json.dumps(rep["cases"]))
    acc_worker = job_worker.run_job("StrokeLesionLib.panel_logic:acceptance_job",
                                    pl.acceptance_job_kwargs(tmp_path / "bids-worker"), tmp_path / "job2",
                                    packages=("StrokeLesionLib",), timeout=600)
    assert acc_worker["accepted"] is True


def _like(a: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(a.astype(np.uint8))
    img.CopyInformation(ref)
    return img


def test_submission_with_node_removed_mid_way_saves_nothing(mrml_scene, study):
    scene = mrml_scene.scene
    loaded, seg, _ = pl.load_study_case(study, "c0009", "ann1", scene=scene)
    ref = study.reference_image("c0009")
    block = np.zeros(sitk.GetArrayViewFromImage(ref).shape, bool)
    block[30:33, 50:55, 50:55] = True
    sid = pl.mask_to_segment(_like(block, ref), seg, pl.LESION_SEGMENT, loaded.dwi)

    def remove_segmentation(message):
        if message.startswith("exporting"):
            scene.RemoveNode(seg)

    with pytest.raises(UserError, match="segmentation .* is no longer in the scene"):
        pl.submit_annotation(study, "c0009", "ann1", seg, sid, loaded.dwi, progress=remove_segmentation)
    assert study.state("c0009").annotations == {}


def test_three_axial_views_on_the_applications_views(mrml_scene, isles):
    """DWI | ADC | FLAIR, all axial, in the standard views the application creates (Yellow
    and Green exist sagittal and coronal before the panel's layout is shown); back to their
    orientations in Four-Up."""
    scene = mrml_scene.scene
    layout_node = mrml_scene.add_standard_views()
    loaded = pl.load_session_folder(isles["session"], scene=scene)
    layout = pl.panel_layout()
    assert [v.get("singletontag") for v in ET.fromstring(layout.description).iter("view")] == list(pl.VIEWS)
    shown = layout.show(layout_node, scene, pl.reading_views(loaded))
    assert shown == ["Red", "Yellow", "Green"] and layout_node.GetViewArrangement() == pl.LAYOUT_ID
    assert [mrml_scene.slice_node(v).GetOrientation() for v in pl.VIEWS] == ["Axial"] * 3
    composites = {n.GetLayoutName(): n for n in nodes_by_class(scene, "vtkMRMLSliceCompositeNode")}
    assert [composites[v].GetBackgroundVolumeID() for v in pl.VIEWS] == \
        [loaded.dwi.GetID(), loaded.adc.GetID(), loaded.flair.GetID()]
    assert all(c.GetLinkedControl() and c.GetHotLinkedControl() for c in composites.values())
    layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    layout.layout_changed(scene, layout_node.GetViewArrangement())
    assert [mrml_scene.slice_node(v).GetOrientation() for v in pl.VIEWS] == ["Axial", "Sagittal", "Coronal"]
    # show_in_views skips a view the layout does not have
    assert show_in_views(scene, {"Red+": {"background": loaded.dwi}}) == []


def test_each_loaded_node_fills_the_field_of_its_sequence(mrml_scene, isles):
    """loaded_fields: the DWI file's voxels are in dwiVolume, the ADC's in adcVolume, FLAIR
    (on the DWI grid) in flairVolume; missing_inputs names what each action lacks."""
    loaded = pl.load_case_file_fields(isles["dwi"], isles["adc"], isles["flair"], scene=mrml_scene.scene)
    fields = pl.loaded_fields(loaded)
    assert list(fields) == ["dwiVolume", "adcVolume", "flairVolume"]
    for field, path in (("dwiVolume", isles["dwi"]), ("adcVolume", isles["adc"])):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(volume_node_to_sitk(fields[field])),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    flair = volume_node_to_sitk(fields["flairVolume"])
    assert flair.GetSize() == sitk.ReadImage(str(isles["dwi"])).GetSize()      # resampled onto the DWI grid
    assert pl.missing_inputs("candidate", dwi=fields["dwiVolume"], adc=fields["adcVolume"]) == []
    assert pl.missing_inputs("candidate") == ["DWI volume", "ADC volume"]
    assert pl.missing_inputs("case", study_folder=".", case_id="c1", reader_id=" ") == ["study folder", "reader id"]
    assert pl.missing_inputs("submit", study_folder="/s", case_id="c1", reader_id="r") == \
        ["an opened case (your lesion segment)"]
    with pytest.raises(UserError, match="choose the DWI and ADC files first"):
        pl.load_case_file_fields(isles["dwi"], ".")                          # an empty path field holds "."
    with pytest.raises(UserError, match="choose a session folder first"):
        pl.load_session_folder_field("")


def test_panel_fields_to_library_values():
    params = pl.candidate_params(620.0, 3.0, 0.01)
    assert params.adc_threshold_mm2s == pytest.approx(620e-6) and params.dwi_k == 3.0 and params.min_size_ml == 0.01
    assert pl.parse_authors(" A. Reader, ,B. Reader ") == ["A. Reader", "B. Reader"]
    kwargs = pl.export_job_kwargs("/study", "/out", name="n", authors="A, B", license=" ", validate=True)
    assert kwargs == {"study_folder": "/study", "out": "/out", "name": "n", "authors": ["A", "B"], "license": None,
                      "validate": True}
    with pytest.raises(UserError, match="choose the study folder and an output folder"):
        pl.export_job_kwargs("/study", ".", name="n", authors="")
    with pytest.raises(UserError, match="dataset's folder"):
        pl.acceptance_job_kwargs(".")
    with pytest.raises(UserError, match="choose the study folder first"):
        pl.open_study(".")


def test_start_from_candidate_needs_both_segmentations(mrml_scene, isles):
    loaded = pl.load_case_files(isles["dwi"], isles["adc"], scene=mrml_scene.scene)
    with pytest.raises(UserError, match="open the case and compute the candidate first"):
        pl.start_from_candidate(None, None, loaded.dwi)
    summary = pl.run_candidate(loaded.dwi, loaded.adc)
    candidate = mrml_scene.scene.GetNodeByID(summary["segmentation_node_id"])
    own = new_segmentation(mrml_scene.scene, "mine", loaded.dwi)
    sid = pl.start_from_candidate(candidate, own, loaded.dwi)
    assert sid == pl.lesion_segment_id(own)
    np.testing.assert_array_equal(segment_array(own, pl.LESION_SEGMENT, loaded.dwi),
                                  segment_array(candidate, pl.CANDIDATE_SEGMENT, loaded.dwi))
