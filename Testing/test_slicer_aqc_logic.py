"""AnnotationQC's Slicer logic (AnnotationQCLib.panel_logic) on real MRML scenes from slicer-core.

Segmentations are drawn from arrays on an oblique source grid; results are checked against
hand counts of the drawn boxes, against the library functions applied to the same arrays
without MRML, and against Slicer's own terminology loader (vtkSlicerTerminologiesModuleLogic)
for the CNS-tumour terminology.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from slicer_harness import box_mask, make_image, mrml_scene, segmentation_from_mask, slicer  # noqa: F401

from AnnotationQCLib import panel_logic as pl
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import same_grid
from ClinicalMRICommonLib.agreement.icc import feature_icc
from ClinicalMRICommonLib.mrml_bridge import (
    new_segmentation,
    segment_to_sitk_mask,
    table_node_to_rows,
    volume_node_to_sitk,
)
from ClinicalMRICommonLib.agreement.segmentation_metrics import compare_masks
from AnnotationQCLib.sessions import ReaderStudy
from AnnotationQCLib.terminology import TERMINOLOGY_FILE, VARIANTS, label_by_key, label_set  # noqa: E402
from AnnotationQCLib.training import TrainingSession  # noqa: E402

SIZE = (40, 36, 10)


def _voxels(mask: sitk.Image) -> int:
    return int(sitk.GetArrayFromImage(mask).astype(bool).sum())


@pytest.fixture
def cns_study(tmp_path):
    """One CNS-tumour case (FLAIR, T2, T1C on an oblique grid) read by r1 and r2; r2 has
    submitted a whole-tumour mask; the case label is "GBM-secret"."""
    images = {}
    for i, seq in enumerate(("FLAIR", "T2", "T1C")):
        path = tmp_path / f"P001_{seq}.nii.gz"
        sitk.WriteImage(make_image(size=SIZE, seed=i), str(path))
        images[seq] = path
    study = ReaderStudy.create(tmp_path / "study", "CNS readers")
    study.add_reader("r1", "annotator")
    study.add_reader("r2", "annotator")
    study.add_case("c1", "P001", images, label="GBM-secret")
    flair = sitk.ReadImage(str(images["FLAIR"]))
    study.save_mask("r2", "c1", "FLAIR", "whole-tumour", box_mask(flair, (8, 8, 2), (30, 28, 8)), final=True)
    return study, images


def test_terminology_loads_in_slicers_own_logic_and_colours_segments(mrml_scene):
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    assert context == label_set()[0].context
    category = slicer.vtkSlicerTerminologyCategory()
    assert logic.GetNthCategoryInTerminology(context, 0, category)
    slicer_types = {}
    for j in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
        t = slicer.vtkSlicerTerminologyType()
        assert logic.GetNthTypeInTerminologyCategory(context, category, j, t)
        slicer_types[(t.GetCodingSchemeDesignator(), t.GetCodeValue())] = tuple(t.GetRecommendedDisplayRGBValue())
    assert len(slicer_types) == 5
    volume = slicer.util.addVolumeFromArray(np.zeros(SIZE[::-1], np.int16))
    segmentation = new_segmentation(mrml_scene.scene, "labels", volume)
    for variant in VARIANTS:
        for label in label_set(variant):
            sid = pl.add_segment(segmentation, label.key, label)
            segment = segmentation.GetSegmentation().GetSegment(sid)
            assert segment.GetName() == label.name
            # Slicer parses the segment's terminology and finds its colour in the loaded file
            entry = slicer.vtkSlicerTerminologyEntry()
            assert logic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
            assert logic.UpdateEntryFromLoadedTerminologies(entry, [context], [])
            assert entry.GetTypeObject().GetCodeValue() == label.type_code.value
            assert entry.GetRegionObject().GetCodeValue() == label.region.value
            recommended = tuple(entry.GetTypeObject().GetRecommendedDisplayRGBValue())
            assert recommended == slicer_types[(label.type_code.scheme, label.type_code.value)] == label.colour
            np.testing.assert_allclose(segment.GetColor(), np.array(recommended) / 255.0)
            assert logic.SerializeTerminologyEntry(entry) == label.terminology_entry


def test_reading_is_blinded_and_saves_on_the_source_grid(mrml_scene, cns_study):
    study, images = cns_study
    study = pl.login(study.folder, "r1", "annotator")
    with pytest.raises(UserError, match="already registered as annotator"):
        pl.login(study.folder, "r1", "reviewer")
    rows = pl.case_rows(study, "r1")
    assert [(r["sequence"], r["status"]) for r in rows] == [("FLAIR", "not started"), ("T2", "not started"),
                                                             ("T1C", "not started")]
    reading = pl.open_reading(study, "r1", "c1", "FLAIR")
    scene = mrml_scene.scene
    # blinding: one volume and the reader's own segmentation; nothing of r2 or of the label
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        texts = [node.GetName() or ""] + [node.GetAttribute(a) or "" for a in (node.GetAttributeNames() or ())]
        assert not any("r2" in t.split() or "GBM" in t for t in texts), texts
    assert reading.segments.keys() == {"whole-tumour"}
    segment = reading.segmentation_node.GetSegmentation().GetSegment(reading.segments["whole-tumour"])
    assert segment.GetName() == "Whole tumour"
    assert segment.GetTerminology() == label_by_key("whole-tumour").terminology_entry
    source = sitk.ReadImage(str(images["FLAIR"]))
    assert same_grid(volume_node_to_sitk(reading.volume_node), source)

    drawn = box_mask(source, (12, 10, 3), (26, 24, 7))
    pl.set_segment_mask(reading.segmentation_node, reading.segments["whole-tumour"], drawn)
    (path,) = pl.save_reading(study, reading.segmentation_node, reading.volume_node)
    assert path == study.folder / "readers" / "r1" / "first" / "P001_FLAIR_whole-tumour.nii.gz"
    saved = sitk.ReadImage(str(path))
    assert same_grid(saved, source)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(saved), sitk.GetArrayFromImage(drawn))
    assert pl.case_rows(study, "r1")[0]["status"] == "in progress"

    # reopening the draft brings the reader's own mask back; submitting locks it
    pl.close_nodes(reading.nodes())
    again = pl.open_reading(study, "r1", "c1", "FLAIR")
    mask, _ = segment_to_sitk_mask(again.segmentation_node, again.segments["whole-tumour"], again.volume_node)
    assert _voxels(mask) == _voxels(drawn) == 14 * 14 * 4
    pl.save_reading(study, again.segmentation_node, again.volume_node, final=True, notes="checked first/last slice")
    assert pl.case_rows(study, "r1")[0]["status"] == "submitted"
    with pytest.raises(UserError, match="never overwritten"):
        pl.save_reading(study, again.segmentation_node, again.volume_node)
    reads = study.reads()
    mine = reads[reads["reader_id"] == "r1"].iloc[0]
    assert mine["saves"] == 2 and mine["final"] and mine["seconds_spent"] >= 0


def test_a_segment_drawn_on_another_grid_is_saved_on_the_source_grid(mrml_scene, cns_study):
    study, images = cns_study
    reading = pl.open_reading(study, "r1", "c1", "T1C")
    assert list(reading.segments) == ["enhancing", "non-enhancing"]
    source = sitk.ReadImage(str(images["T1C"]))
    # drawn on a grid with half the slice spacing (as on a reformatted view): Slicer resamples
    fine = sitk.Resample(box_mask(source, (12, 10, 3), (26, 24, 7)), [SIZE[0], SIZE[1], 2 * SIZE[2]],
                         sitk.Transform(), sitk.sitkNearestNeighbor, source.GetOrigin(),
                         (source.GetSpacing()[0], source.GetSpacing()[1], source.GetSpacing()[2] / 2),
                         source.GetDirection(), 0, sitk.sitkUInt8)
    pl.set_segment_mask(reading.segmentation_node, reading.segments["enhancing"], fine)
    paths = pl.save_reading(study, reading.segmentation_node, reading.volume_node, final=True)
    assert [p.name for p in paths] == ["P001_T1C_enhancing.nii.gz", "P001_T1C_non-enhancing.nii.gz"]
    enhancing, non_enhancing = (sitk.ReadImage(str(p)) for p in paths)
    assert same_grid(enhancing, source) and same_grid(non_enhancing, source)
    assert _voxels(enhancing) == 14 * 14 * 4   # the box, back on the source grid
    assert _voxels(non_enhancing) == 0         # not drawn: saved as "nothing of this kind"


def test_reviewer_gets_the_annotators_submitted_masks(mrml_scene, cns_study):
    study, _ = cns_study
    study.add_reader("rev", "reviewer")
    reading = pl.open_reading(study, "rev", "c1", "FLAIR")
    assert [n.GetName() for n in reading.others] == ["P001_FLAIR r2 (submitted)"]
    other = reading.others[0]
    (sid,) = pl.content_segments(other).values()
    mask, _ = segment_to_sitk_mask(other, sid, reading.volume_node)
    assert _voxels(mask) == 22 * 20 * 6


def test_compare_two_segmentations_table_and_disagreement(mrml_scene):
    scene = mrml_scene.scene
    image = make_image(size=SIZE)
    volume = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image))
    from ClinicalMRICommonLib.mrml_bridge import sitk_to_volume_node

    sitk_to_volume_node(image, node=volume)
    a = box_mask(image, (10, 10, 2), (20, 20, 6))   # 10 x 10 x 4 = 400 voxels
    b = box_mask(image, (12, 10, 2), (22, 20, 6))   # shifted by 2 voxels in x: overlap 8 x 10 x 4 = 320
    seg_a, id_a = segmentation_from_mask(mrml_scene, a, "reader A")
    seg_b, id_b = segmentation_from_mask(mrml_scene, b, "reader B")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    disagreement = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "disagreement")
    result = pl.compare_segments(seg_a, id_a, seg_b, id_b, volume, table_node=table, disagreement_node=disagreement)
    assert result["metrics"]["dice"] == pytest.approx(2 * 320 / 800)
    assert result["metrics"] == pytest.approx(compare_masks(a, b))
    assert result["lesions"]["matched"] == 1 and result["resampled"] == [False, False]
    assert (result["disagreement_voxels"], result["agreement_voxels"]) == (160, 320)
    rows = {r["metric"]: r["value"] for r in table_node_to_rows(table)}
    assert rows["Dice"] == pytest.approx(0.8) and rows["Jaccard"] == pytest.approx(320 / 480)
    assert rows["lesions matched"] == 1.0 and rows["volume B - A"] == pytest.approx(0.0)
    segments = {disagreement.GetSegmentation().GetNthSegment(i).GetName(): disagreement.GetSegmentation().GetNthSegmentID(i)
                for i in range(disagreement.GetSegmentation().GetNumberOfSegments())}
    assert set(segments) == {"readers disagree", "both readers agree"}
    dis, _ = segment_to_sitk_mask(disagreement, segments["readers disagree"], volume)
    both, _ = segment_to_sitk_mask(disagreement, segments["both readers agree"], volume)
    arr_a, arr_b = sitk.GetArrayFromImage(a).astype(bool), sitk.GetArrayFromImage(b).astype(bool)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(dis).astype(bool), arr_a ^ arr_b)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(both).astype(bool), arr_a & arr_b)
    # a second comparison replaces the node's content
    pl.compare_segments(seg_a, id_a, seg_a, id_a, volume, disagreement_node=disagreement)
    assert disagreement.GetSegmentation().GetNumberOfSegments() == 2
    assert pl.segment_is_empty(disagreement, disagreement.GetSegmentation().GetSegmentIdBySegmentName("readers disagree"))
    with pytest.raises(UserError, match="is empty"):
        empty = seg_b.GetSegmentation().AddEmptySegment("", "nothing")
        pl.compare_segments(seg_a, id_a, seg_b, empty, volume)


def test_icc_table_nodes_and_plot(mrml_scene, tmp_path):
    rng = np.random.default_rng(1)
    cases = [f"c{i}" for i in range(8)]
    truth = pd.DataFrame({"original_shape_VoxelVolume": rng.normal(1000, 200, 8),
                          "original_firstorder_Mean": rng.normal(300, 40, 8),
                          "original_glcm_Contrast": rng.normal(5, 1, 8),
                          "original_shape_Constant": np.ones(8)}, index=pd.Index(cases, name="case_id"))
    noisy = truth + rng.normal(0, [5, 30, 1.0, 0.0], truth.shape)
    truth.to_csv(tmp_path / "a.csv")
    noisy.to_csv(tmp_path / "b.csv")
    table = pl.feature_icc_from_csv(tmp_path / "a.csv", tmp_path / "b.csv", "case_id")
    pd.testing.assert_frame_equal(table, feature_icc(truth, noisy))
    scene = mrml_scene.scene
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", "icc")
    class_node = scene.AddNewNodeByClass("vtkMRMLTableNode", "icc by class")
    out = pl.icc_to_nodes(table, table_node=node, class_table_node=class_node, plot_png=tmp_path / "icc.png")
    rows = {r["feature"]: r for r in table_node_to_rows(node)}
    assert rows["original_shape_VoxelVolume"]["icc"] == pytest.approx(table.loc["original_shape_VoxelVolume", "icc"])
    assert rows["original_shape_Constant"]["icc"] is None and rows["original_shape_Constant"]["interpretation"] == "undefined"
    assert rows["original_glcm_Contrast"]["class"] == "glcm"
    assert out["n_passing"] == int((table["icc"] >= 0.75).sum())
    classes = {r["class"]: r for r in table_node_to_rows(class_node)}
    assert classes["shape"]["features"] == 2.0 and classes["shape"]["defined"] == 1.0
    png = sitk.ReadImage(str(tmp_path / "icc.png"))
    assert png.GetSize()[0] > 300
    with pytest.raises(UserError, match="id column 'patient' not found"):
        pl.feature_icc_from_csv(tmp_path / "a.csv", tmp_path / "b.csv", "patient")


def _volume_and_mean(image: sitk.Image, mask: sitk.Image) -> dict:
    """A small real feature extractor (volume in voxels and mean intensity inside the mask)."""
    arr, m = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask) != 0
    return {"original_shape_VoxelCount": float(m.sum()), "original_firstorder_Mean": float(arr[m].mean())}


def test_training_mode_loads_no_reference_submits_and_reports(mrml_scene, tmp_path):
    boxes = [((8, 8, 2), (20, 18, 6)), ((10, 12, 1), (30, 28, 8)), ((5, 5, 3), (12, 11, 5)),
             ((15, 9, 2), (33, 30, 9)), ((9, 20, 4), (17, 32, 7))]
    cases = []
    for i, (lo, hi) in enumerate(boxes, start=1):
        image = make_image(size=SIZE, seed=10 + i, dtype=np.float32)
        ref = box_mask(image, lo, hi)
        sitk.WriteImage(image, str(tmp_path / f"P00{i}.nii.gz"))
        sitk.WriteImage(ref, str(tmp_path / f"P00{i}_ref.nii.gz"))
        cases.append({"case_id": f"case{i}", "patient_id": f"P00{i}", "sequence": "FLAIR", "content": "whole-tumour",
                      "image": str(tmp_path / f"P00{i}.nii.gz"), "reference": str(tmp_path / f"P00{i}_ref.nii.gz"),
                      "site": ["frontal", "temporal"][i % 2]})
    session = TrainingSession.create(tmp_path / "session", "CNS training", cases)
    assert [r["case_id"] for r in pl.training_case_rows(session)] == [c["case_id"] for c in cases]
    for i, (lo, hi) in enumerate(boxes, start=1):
        reading = pl.open_training_case(session, "t1", f"case{i}")
        scene = mrml_scene.scene
        assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # no reference loaded
        segment = reading.segmentation_node.GetSegmentation().GetSegment(reading.segments["whole-tumour"])
        assert segment.GetName() == "Whole tumour"
        source = sitk.ReadImage(cases[i - 1]["image"])
        with pytest.raises(UserError, match="is empty"):
            pl.submit_training_case(session, reading.segmentation_node, reading.volume_node)
        pl.set_segment_mask(reading.segmentation_node, reading.segments["whole-tumour"], box_mask(source, lo, hi))
        path = pl.submit_training_case(session, reading.segmentation_node, reading.volume_node)
        assert path.name == f"P00{i}_FLAIR_whole-tumour.nii.gz"
        pl.close_nodes(reading.nodes())
    with pytest.raises(UserError, match="already submitted"):
        pl.open_training_case(session, "t1", "case1")
    table = mrml_scene.scene.AddNewNodeByClass("vtkMRMLTableNode", "training")
    report = pl.training_report(session, "t1", table_node=table, feature_extractor=_volume_and_mean)
    assert report["overall"]["passed"] and report["overall"]["mean_dice"] == pytest.approx(1.0)
    rows = table_node_to_rows(table)
    assert len(rows) == 5 and all(r["dice"] == pytest.approx(1.0) and r["dice_pass"] for r in rows)
    assert pl.training_summary(report).startswith("t1: PASSED")
    assert json.loads((session.folder / "reports" / "t1" / "report.json").read_text())["overall"]["passed"]


def test_quality_rois_snr_cnr_and_flagged_series(mrml_scene, cns_study):
    study, images = cns_study
    rng = np.random.default_rng(7)
    source = sitk.ReadImage(str(images["T2"]))
    arr = rng.normal(20.0, 4.0, SIZE[::-1])           # noisy background
    arr[2:8, 8:20, 8:20] = 400.0 + rng.normal(0, 4.0, (6, 12, 12))   # signal
    arr[2:8, 22:30, 22:34] = 250.0                                    # tissue
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.CopyInformation(source)
    from ClinicalMRICommonLib.mrml_bridge import sitk_to_volume_node

    volume = sitk_to_volume_node(image, "graded T2", scene=mrml_scene.scene)
    rois = pl.quality_roi_segmentation(volume)
    ids = pl.content_segments(rois)
    assert list(ids) == ["signal", "background", "tissue"]
    with pytest.raises(UserError, match="signal ROI is empty"):
        pl.measure_snr_cnr(volume, rois)
    boxes = {"signal": ((10, 10, 3), (18, 18, 7)), "background": ((30, 0, 0), (40, 6, 10)),
             "tissue": ((24, 24, 3), (32, 28, 7))}
    for name, (lo, hi) in boxes.items():
        pl.set_segment_mask(rois, ids[name], box_mask(image, lo, hi))
    res = pl.measure_snr_cnr(volume, rois)

    def vals(name):
        (lo, hi) = boxes[name]
        return arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32).astype(float).ravel()

    sd = np.std(vals("background"), ddof=1)
    assert res["snr"] == pytest.approx(vals("signal").mean() / sd, rel=1e-6)
    assert res["cnr"] == pytest.approx(abs(vals("signal").mean() - vals("tissue").mean()) / sd, rel=1e-6)

    with pytest.raises(UserError, match="give the reason"):
        pl.record_series_quality(study, "c1", "T2", "r1", grade=1, measurement=res)
    rec = pl.record_series_quality(study, "c1", "T2", "r1", grade=1, reason="motion artefact", measurement=res)
    assert rec["flagged"] and rec["snr"] == pytest.approx(res["snr"])
    assert [r["sequence"] for r in pl.case_rows(study, "r1")] == ["FLAIR", "T1C"]
    with pytest.raises(UserError, match="not offered for annotation"):
        pl.open_reading(study, "r1", "c1", "T2")


# ---------------------------------------------------------------------------------------
# What the panel's buttons decide (moved out of AnnotationQC.py, issue 11 / issue 18)


def test_empty_path_fields_are_unset(tmp_path, monkeypatch):
    """An unset pathlib.Path parameter is "." (Slicer's Path serializer): login refuses it and
    no training session is looked up in the working folder, even when one is there."""
    with pytest.raises(UserError, match="choose the reader study folder first"):
        pl.login(".", "r1", "annotator")
    (tmp_path / "session.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert pl.training_session_in(".") is None and pl.training_session_in("") is None
    with pytest.raises(UserError, match="choose the new session folder"):
        pl.create_training_session(tmp_path / "new", ".", "name")
    with pytest.raises(UserError, match="choose the first and the second feature table"):
        pl.feature_icc_from_csv(".", "", "case_id")


def test_panel_choices_to_library_values():
    assert pl.label_variant("none") is None and pl.label_variant("intra-axial") == "intra-axial"
    assert pl.quality_scores("none", "none") == (None, None)
    assert pl.quality_scores("2", "5") == (2, 5)


def test_compare_selected_names_what_is_missing_and_creates_its_nodes(mrml_scene):
    from ClinicalMRICommonLib.mrml_bridge import sitk_to_volume_node

    scene = mrml_scene.scene
    image = make_image(size=SIZE)
    volume = sitk_to_volume_node(image, "grid", scene=scene)
    seg_a, id_a = segmentation_from_mask(mrml_scene, box_mask(image, (8, 8, 2), (20, 18, 6)), "A")
    seg_b, id_b = segmentation_from_mask(mrml_scene, box_mask(image, (9, 8, 2), (21, 18, 6)), "B")
    with pytest.raises(UserError, match="select: segment B, the volume whose grid is used"):
        pl.compare_selected(seg_a, id_a, seg_b, "", None)
    result = pl.compare_selected(seg_a, id_a, seg_b, id_b, volume)
    assert result["table_node"].GetScene() is scene and result["disagreement_node"].GetScene() is scene
    again = pl.compare_selected(seg_a, id_a, seg_b, id_b, volume, table_node=result["table_node"],
                                disagreement_node=result["disagreement_node"])
    assert again["table_node"] is result["table_node"]                       # reused, not piled up
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert again["metrics"]["dice"] == pytest.approx(2 * 11 * 10 * 4 / (2 * 12 * 10 * 4))


def test_panel_icc_from_tables_fills_new_table_nodes(mrml_scene, tmp_path):
    rng = np.random.default_rng(3)
    truth = pd.DataFrame({"original_shape_VoxelVolume": rng.normal(1000, 200, 8),
                          "original_firstorder_Mean": rng.normal(300, 40, 8)},
                         index=pd.Index([f"c{i}" for i in range(8)], name="case_id"))
    truth.to_csv(tmp_path / "a.csv")
    (truth + rng.normal(0, [5, 30], truth.shape)).to_csv(tmp_path / "b.csv")
    with pytest.raises(UserError, match="log in to a reader study first"):
        pl.panel_icc("study", scene=mrml_scene.scene)
    out = pl.panel_icc("csv", csv_a=tmp_path / "a.csv", csv_b=tmp_path / "b.csv", scene=mrml_scene.scene,
                       plot_png=tmp_path / "icc.png")
    assert out["n_features"] == 2 and out["note"] == ""
    assert out["table_node"].GetNumberOfRows() == 2 and out["class_table_node"].GetNumberOfRows() == 2
    assert (tmp_path / "icc.png").stat().st_size > 0
