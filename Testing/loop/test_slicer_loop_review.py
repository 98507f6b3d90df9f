"""The "Pre-annotation review" logic (AnnotationQCLib.loop.review_logic) on real MRML scenes
from slicer-core: the next case from the queue, the proposal as editable segments named as a
model proposal, the uncertainty as a heat-map volume, and accept (unchanged / corrected),
redraw and reject, each checked against the loop's files and records."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationQCLib.loop import review_logic as rl
from AnnotationQCLib.loop.store import LoopFolder
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.mrml_bridge import segment_to_sitk_mask, set_segment_mask, volume_node_to_sitk
from loop_phantoms import dice, phantom, to_image, write_cases
from slicer_harness import mrml_scene, slicer  # noqa: F401

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def _arr(img) -> np.ndarray:
    return sitk.GetArrayFromImage(img if isinstance(img, sitk.Image) else sitk.ReadImage(str(img)))


def _train_and_prelabel(loop, epochs):
    from AnnotationQCLib.loop import model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train_round(loop, epochs=epochs, device="cpu", seed=0)
        model.prelabel(loop, samples=3, device="cpu")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prelabelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    specs = [{"case_id": f"S{i}", "standard": True} for i in range(3)] + [{"case_id": f"P{i}"} for i in range(5)]
    csv_path, truths = write_cases(root / "data", specs, seed=7)
    loop, _ = LoopFolder.create(root / "loop", csv_path)
    _train_and_prelabel(loop, 12)
    pristine = root / "pristine"  # before any review: for the tests that work on a copy
    shutil.copytree(loop.folder, pristine)
    return loop, truths, pristine


def test_open_the_next_case_with_its_proposal_and_uncertainty(prelabelled, mrml_scene):  # noqa: F811
    loop, _, _ = prelabelled
    first = rl.next_case(loop.folder)
    review = rl.open_review(loop.folder, scene=mrml_scene.scene)
    assert review.case_id == first["case_id"] and review.why == first["why"] and review.round == 1
    _, proposal, uncertainty = loop.proposal(review.case_id)
    vol = review.volume_nodes[0]
    assert vol.GetName() == f"{review.case_id}_image"
    np.testing.assert_array_equal(_arr(volume_node_to_sitk(vol)), _arr(loop.read_images(review.case_id)[0]))
    seg = review.segmentation_node
    assert seg.GetName() == f"{review.case_id} model proposal (round 1)"
    segment = seg.GetSegmentation().GetSegment(review.segments[1])
    assert segment.GetName() == "lesion (model proposal, round 1)"
    exported, resampled = segment_to_sitk_mask(seg, review.segments[1], vol)
    assert not resampled
    np.testing.assert_array_equal(_arr(exported), _arr(proposal))
    unc = review.uncertainty_node
    np.testing.assert_allclose(_arr(volume_node_to_sitk(unc)), _arr(uncertainty))
    display = unc.GetDisplayNode()
    assert display.GetColorNodeID() in rl.HEAT_COLOURS
    assert display.GetWindowLevelMin() == 0.0 and display.GetWindowLevelMax() == pytest.approx(_arr(uncertainty).max())
    rl.close_review(review)
    assert mrml_scene.scene.GetNodeByID(seg.GetID()) is None


def test_panel_decisions_buttons_and_texts_through_four_reviews(prelabelled, mrml_scene, tmp_path):  # noqa: F811
    """What the panel's buttons may do at each step (AnnotationQC.py only wires them) and what
    it says, on a copy of the loop: accepted, corrected, redrawn and rejected."""
    _, truths, pristine = prelabelled
    folder = tmp_path / "loop"
    shutil.copytree(pristine, folder)
    scene = mrml_scene.scene
    no_case = "Take a case with Next case first."
    assert rl.panel_actions(Path("."), "", None) == {"next": (False, "Choose the loop folder first."),
                                                     "accept": (False, no_case), "redraw": (False, no_case),
                                                     "reject": (False, no_case)}
    assert rl.panel_actions(folder, "", None)["next"] == (True, "Choose the loop folder first.")
    texts = {}
    for step in ("accepted", "corrected", "redrawn", "rejected"):
        first = rl.next_case(folder)
        review = rl.open_review(folder, scene=scene)
        assert review.case_id == first["case_id"]
        text = rl.review_text(review)
        assert text.startswith(f"Case {review.case_id}, proposal of round 1: {first['why']}.")
        assert f"uncertainty {first['score']:.3f}" in text
        actions = rl.panel_actions(folder, " ", review, "")
        assert actions["accept"] == (False, "Enter your reader id first.") and actions["redraw"][0]
        assert actions["reject"] == (False, "Enter your reader id first.")
        actions = rl.panel_actions(folder, "expert1", review, "  ")
        assert actions["accept"][0] and actions["reject"] == (False, "Give the reason for rejecting the proposal.")
        assert rl.panel_actions(folder, "expert1", review, "merged")["reject"][0]
        truth = sitk.ReadImage(str(truths[review.case_id]))
        if step == "corrected":
            set_segment_mask(review.segmentation_node, review.segments[1], truth)
        if step == "redrawn":
            rl.start_redraw(review)
            assert rl.panel_actions(folder, "expert1", review)["redraw"] == (
                False, "The segments were cleared already: draw the case, then Accept.")
            set_segment_mask(review.segmentation_node, review.segments[1], truth)
        if step == "rejected":
            record = rl.reject_review(review, "expert1", "two lesions merged")
        else:
            record = rl.accept_review(review, "expert1")
            assert record["verdict"] == step
        texts[step] = (review.case_id, record, rl.decision_text(review, record))
        rl.close_review(review)
    case, rec, text = texts["accepted"]
    assert text == (f"{case} accepted as proposed (Dice 1.000 with the proposal, 0.0% of the labelled voxels changed); "
                    "it joins the standard set.")
    for step, word in (("corrected", "corrected"), ("redrawn", "redrawn from scratch")):
        case, rec, text = texts[step]
        assert 0 < rec["changed_fraction"] < 1
        assert text == (f"{case} {word} (Dice {rec['dice']:.3f} with the proposal, {rec['changed_fraction']:.1%} of "
                        "the labelled voxels changed); it joins the standard set.")
    case, rec, text = texts["rejected"]
    assert text == f"{case} rejected (two lesions merged): it is to be drawn from scratch and left the queue."
    assert LoopFolder(folder).state()["cases"][case]["status"] == "redraw"


def test_accept_unchanged_corrected_redrawn_and_reject(prelabelled, mrml_scene):  # noqa: F811
    loop, truths, _ = prelabelled
    scene = mrml_scene.scene
    pool = sorted(c for c, v in loop.state()["cases"].items() if v["status"] == "pool")
    a, b, c, d = pool[:4]
    # unchanged
    review = rl.open_review(loop.folder, a, scene=scene)
    rec = rl.accept_review(review, "expert1")
    assert rec["verdict"] == "accepted" and rec["dice"] == 1.0 and rec["changed_fraction"] == 0.0 and rec["by"] == "expert1"
    np.testing.assert_array_equal(_arr(loop.standard_path(a)), _arr(loop.proposal(a)[1]))
    rl.close_review(review)
    with pytest.raises(UserError, match="is not waiting for review"):
        rl.open_review(loop.folder, a, scene=scene)
    # corrected: the expert draws the truth into the proposal's segment
    review = rl.open_review(loop.folder, b, scene=scene)
    set_segment_mask(review.segmentation_node, review.segments[1], sitk.ReadImage(str(truths[b])))
    rec = rl.accept_review(review, "expert1", note="fixed the rim")
    prop = _arr(loop.proposal(b)[1])
    assert rec["verdict"] == "corrected" and rec["dice"] == pytest.approx(dice(prop, _arr(truths[b])))
    np.testing.assert_array_equal(_arr(loop.standard_path(b)), _arr(truths[b]))
    rl.close_review(review)
    # redrawn from scratch
    review = rl.open_review(loop.folder, c, scene=scene)
    rl.start_redraw(review)
    segment = review.segmentation_node.GetSegmentation().GetSegment(review.segments[1])
    assert segment.GetName() == "lesion (drawn by expert)"
    assert not _arr(rl.review_mask(review)).any()
    set_segment_mask(review.segmentation_node, review.segments[1], sitk.ReadImage(str(truths[c])))
    rec = rl.accept_review(review, "expert2")
    assert rec["verdict"] == "redrawn" and rec["by"] == "expert2"
    rl.close_review(review)
    # rejected
    review = rl.open_review(loop.folder, d, scene=scene)
    rec = rl.reject_review(review, "expert2", reason="two lesions merged")
    assert rec["reason"] == "two lesions merged" and loop.state()["cases"][d]["status"] == "redraw"
    rl.close_review(review)
    st = loop.status()["rounds"][0]
    assert (st["accepted_unchanged"], st["corrected"], st["redrawn"], st["rejected"]) == (1, 1, 1, 1)


def test_cns_label_proposals_become_terminology_segments(tmp_path, mrml_scene):  # noqa: F811
    from AnnotationQCLib.terminology import label_set

    rng = np.random.default_rng(4)
    rows = []
    for cid in ("S1", "S2", "P1"):
        img, whole = phantom(rng)
        labels = whole.astype(np.uint8)
        labels[whole.astype(bool) & (np.indices(whole.shape)[2] % 2 == 0)] = 2
        sitk.WriteImage(to_image(img + 30.0 * (labels == 2)), str(tmp_path / f"{cid}.nii.gz"))
        sitk.WriteImage(to_image(labels), str(tmp_path / f"{cid}_m.nii.gz"))
        rows.append(f"{cid},{cid}.nii.gz,{'' if cid == 'P1' else cid + '_m.nii.gz'}")
    (tmp_path / "cases.csv").write_text("case_id,image,mask\n" + "\n".join(rows) + "\n")
    loop, _ = LoopFolder.create(tmp_path / "loop", tmp_path / "cases.csv", sequence="FLAIR", labels="intra-axial")
    _train_and_prelabel(loop, 2)
    review = rl.open_review(loop.folder, "P1", scene=mrml_scene.scene)
    segmentation = review.segmentation_node.GetSegmentation()
    names = [segmentation.GetSegment(review.segments[v]).GetName() for v in sorted(review.segments)]
    assert names == [f"{lab.name} (model proposal, round 1)" for lab in label_set("intra-axial")]
    for v, lab in zip(sorted(review.segments), label_set("intra-axial")):
        assert segmentation.GetSegment(review.segments[v]).GetTerminology() == lab.terminology_entry
    np.testing.assert_array_equal(_arr(rl.review_mask(review)), _arr(loop.proposal("P1")[1]))
    assert rl.accept_review(review, "expert1")["verdict"] == "accepted"


def test_review_logic_imports_no_torch_monai_or_pandas():
    code = ("import sys; import AnnotationQCLib.loop.review_logic; "
            "print([m for m in ('torch', 'monai', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


def test_the_review_runs_without_torch_monai_or_pandas(prelabelled, tmp_path):
    """A stock Slicer has no torch, MONAI or pandas: the whole review (queue, open, accept,
    reject) runs in a process where importing them fails."""
    folder = tmp_path / "loop"
    shutil.copytree(prelabelled[2], folder)
    code = textwrap.dedent(f"""
        import sys
        for m in ("torch", "monai", "pandas", "safetensors"):
            sys.modules[m] = None  # import fails
        sys.path.insert(0, {str(ROOT / "Testing")!r})
        from slicer_harness import SlicerCoreScene
        from AnnotationQCLib.loop import review_logic as rl
        scene = SlicerCoreScene().scene
        review = rl.open_review({str(folder)!r}, scene=scene)
        print(rl.accept_review(review, "expert1")["verdict"])
        rl.close_review(review)
        review = rl.open_review({str(folder)!r}, scene=scene)
        print(rl.reject_review(review, "expert1", "unusable")["reason"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["accepted", "unusable"]
