"""Two-reader workflow on the real ISLES'22 case: qualification, blinding, comparison,
lesion-by-lesion review, dispute, arbitration, audit trail and no overwriting."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.agreement.segmentation_metrics import connected_components, dice
from StrokeLesionLib.workflow import (AuditLog, Reader, StudySettings, Study, Thresholds, apply_lesion_choices,
                                      qualification_problems)

CASE = "sub-strokecase0009_ses-0001"

READERS = [
    Reader("ann1", "attending", years=8, neuro_years=3, name="Annotator One"),
    Reader("ann2", "resident", years=5, neuro_years=2, name="Annotator Two"),
    Reader("rev1", "associate_chief", years=14, neuro_years=9),
    Reader("arb1", "chief", years=25, neuro_years=18),
    Reader("junior", "resident", years=3, neuro_years=1),
]


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz", "flair": raw / f"{CASE}_flair.nii.gz",
            "truth": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz"}


@pytest.fixture(scope="module")
def reader_masks(isles, tmp_path_factory):
    """Annotator A = the expert mask. Annotator B = the expert mask without its 3 smallest
    lesions, plus one lesion of its own (a 3x3x3 block away from every expert lesion)."""
    d = tmp_path_factory.mktemp("masks")
    truth = sitk.ReadImage(str(isles["truth"]))
    t = sitk.GetArrayFromImage(truth) != 0
    lab, n = connected_components(truth, 26)
    sizes = np.bincount(lab.ravel())[1:]
    smallest = np.argsort(sizes, kind="stable")[:3] + 1
    b = t & ~np.isin(lab, smallest)
    b[40:43, 60:63, 30:33] = True
    assert not t[39:44, 59:64, 29:34].any()
    out = {}
    for name, arr in (("A", t), ("B", b), ("empty", np.zeros_like(t))):
        img = sitk.GetImageFromArray(arr.astype(np.uint8))
        img.CopyInformation(truth)
        out[name] = d / f"{name}.nii.gz"
        sitk.WriteImage(img, str(out[name]))
    out["removed"] = [int(i) for i in smallest]
    return out


def _study(tmp_path, isles, **settings) -> Study:
    s = Study.create(tmp_path / "study", by="coord", settings=StudySettings(**settings))
    for r in READERS:
        s.add_reader(r, by="coord")
    s.init_case("c0009", dwi=isles["dwi"], adc=isles["adc"], others={"flair": isles["flair"]},
                subject="strokecase0009", session="0001", by="coord")
    for slot, rid in (("annotatorA", "ann1"), ("annotatorB", "ann2"), ("reviewer", "rev1"), ("arbitrator", "arb1")):
        s.assign("c0009", slot, rid, by="coord", why="rota")
    return s


def test_qualification_rules():
    by = {r.id: r for r in READERS}
    assert qualification_problems(by["ann2"], "annotator") == []          # exactly 5 y and 2 y neuro
    assert qualification_problems(by["junior"], "annotator")              # 3 y / 1 y
    assert qualification_problems(by["ann1"], "reviewer")                 # attending, not associate chief
    assert qualification_problems(by["rev1"], "reviewer") == []
    assert qualification_problems(by["rev1"], "arbitrator")               # not chief
    assert qualification_problems(by["arb1"], "arbitrator") == []
    assert qualification_problems(Reader("x", "chief", 30, 9), "arbitrator") == ["9 years in neuroradiology < 10"]


def test_full_workflow_with_dispute_and_arbitration(tmp_path, isles, reader_masks):
    s = _study(tmp_path, isles)
    # role checks when assigning
    with pytest.raises(UserError, match="does not qualify as annotator"):
        s.assign("c0009", "annotatorB", "junior", by="coord")
    with pytest.raises(UserError, match="already reviewer"):
        s.assign("c0009", "annotatorB", "rev1", by="coord")
    # only the assigned annotators annotate; masks must be on the DWI grid
    with pytest.raises(UserError, match="may not annotate"):
        s.annotate("c0009", "rev1", reader_masks["A"])
    with pytest.raises(UserError, match="not on the DWI grid"):
        s.annotate("c0009", "ann1", isles["flair"])
    with pytest.raises(UserError, match="--no-lesion"):
        s.annotate("c0009", "ann1", reader_masks["empty"])

    s.annotate("c0009", "ann1", reader_masks["B"], why="first pass")      # a first version...
    s.annotate("c0009", "ann1", reader_masks["A"], why="added the small cortical lesions")  # ...kept, superseded
    a_arr = sitk.GetArrayFromImage(sitk.ReadImage(str(reader_masks["A"])))
    z, y, x = (int(v) for v in np.argwhere(a_arr)[0])
    point = sitk.ReadImage(str(isles["dwi"])).TransformIndexToPhysicalPoint((x, y, z))
    s.note("c0009", "ann1", "faint DWI signal, ADC borderline: included conservatively", point_lps=point)
    # blinding: B sees that A exists, not A's masks or notes
    view_b = s.case_view("c0009", viewer="ann2")
    assert view_b["annotations"]["annotatorA"] == {"submitted": True, "hidden": "blinded until the case is final"}
    assert view_b["notes"] == []
    s.annotate("c0009", "ann2", reader_masks["B"])
    view_a = s.case_view("c0009", viewer="ann1")
    assert "hidden" in view_a["annotations"]["annotatorB"] and "compare" not in view_a
    assert len(view_a["annotations"]["annotatorA"]) == 2                  # own versions, both kept

    # compare: A (18 lesions) vs B (15 + 1 extra) -> over the thresholds -> review
    rec = s.compare("c0009", by="coord")
    cmp_ = rec["what"]
    det = cmp_["detection_B_vs_A"]
    assert (det["n_reference"], det["n_test"], det["matched"], det["missed"], det["extra"]) == (18, 16, 15, 3, 1)
    a_img, b_img = s.compared_masks("c0009")
    assert cmp_["agreement"]["dice"] == pytest.approx(dice(a_img, b_img))
    assert cmp_["needs_review"] and any("one annotator only" in r for r in cmp_["reasons"])
    assert cmp_["n_lesions"] == 19
    drawn = [les["drawn_by"] for les in cmp_["lesions"]]
    assert drawn.count("A only") == 3 and drawn.count("B only") == 1 and drawn.count("both") == 15
    assert s.state("c0009").status == "review"
    with pytest.raises(UserError, match="locked"):
        s.annotate("c0009", "ann2", reader_masks["A"])
    # the annotator's note (by point) now maps to a lesion id of the comparison
    s.note("c0009", "rev1", "B-only finding: likely a vessel (flow artefact)",
           lesion=next(les["id"] for les in cmp_["lesions"] if les["drawn_by"] == "B only"))

    # reviewer: keep everything both drew (union), drop B's extra, take A's small lesions; but dispute one
    extra_id = next(les["id"] for les in cmp_["lesions"] if les["drawn_by"] == "B only")
    with pytest.raises(UserError, match="no decision for lesion"):
        s.review("c0009", "rev1", choices={1: "A"}, why="partial")
    with pytest.raises(UserError, match="only for cases within the thresholds"):
        s.review("c0009", "rev1", accept_proposed=True, why="x")
    with pytest.raises(UserError, match="needs an edited mask"):
        s.review("c0009", "rev1", default="union", choices={1: "edited"}, why="x")
    # lesion 1 redrawn by the reviewer (here: the expert's outline, given as an edited mask file)
    s.review("c0009", "rev1", default="union", choices={extra_id: "none", 1: "edited"}, edited=reader_masks["A"],
             dispute=True, why="lesion near the sulcus unclear; arbitration requested")
    st = s.state("c0009")
    assert st.status == "arbitration" and st.consensus is None
    assert st.reviews[-1]["decisions"]["1"] == "edited" and st.reviews[-1]["report"]["edited_input"]
    with pytest.raises(UserError, match="state arbitration"):
        s.review("c0009", "rev1", default="A", why="again")
    with pytest.raises(UserError, match="may not arbitrate"):
        s.arbitrate("c0009", "rev1", default="A", why="x")

    # arbitration: the reviewer's proposal for all lesions -> final; equals A here
    s.arbitrate("c0009", "arb1", default="review", why="agree with the reviewer after discussion")
    st = s.state("c0009")
    assert st.status == "final"
    cons = s.read_mask_version("c0009", st.consensus)
    assert dice(a_img, cons) == 1.0
    with pytest.raises(UserError, match="final"):
        s.arbitrate("c0009", "arb1", default="B", why="changed my mind")

    # audit trail: who/when/what/why for every step, hash chain intact, all files as recorded
    recs = AuditLog(s.case_dir("c0009") / "audit.jsonl").records()
    actions = [r["action"] for r in recs]
    assert actions == ["case_init", "assign", "assign", "assign", "assign", "annotate", "annotate", "note",
                       "annotate", "compare", "note", "review", "arbitrate", "consensus"]
    assert all(r["who"] and r["ts"].endswith("Z") for r in recs)
    assert recs[6]["why"] == "added the small cortical lesions"
    assert s.verify("c0009") == []
    note = st.notes[0]
    assert note["resolved_on"] == "annotatorA v2" and note["component"] is not None
    assert note["voxel_ijk"] == [x, y, z]
    assert st.notes[1]["lesion"] == extra_id

    # nothing overwritten: every version is on disk, read-only; tampering is detected
    files = sorted(p.name for p in (s.case_dir("c0009") / "masks").rglob("*.nii.gz"))
    assert files == ["c0009_dwi_lesion-annotatorA_v001.nii.gz", "c0009_dwi_lesion-annotatorA_v002.nii.gz",
                     "c0009_dwi_lesion-annotatorB_v001.nii.gz", "c0009_dwi_lesion-arbitration_v001.nii.gz",
                     "c0009_dwi_lesion-consensus_v001.nii.gz", "c0009_dwi_lesion-review_v001.nii.gz"]
    p = s.case_dir("c0009") / "masks" / "consensus" / "c0009_dwi_lesion-consensus_v001.nii.gz"
    assert not os.stat(p).st_mode & stat.S_IWUSR
    log = s.case_dir("c0009") / "audit.jsonl"
    lines = log.read_text().splitlines()
    doctored = json.loads(lines[11])
    doctored["why"] = "rewritten history"
    os.chmod(log, 0o644)
    log.write_text("\n".join(lines[:11] + [json.dumps(doctored)] + lines[12:]) + "\n")
    with pytest.raises(UserError, match="fails its SHA-256 chain check"):
        s.state("c0009")


def test_agreed_case_signoff_and_study_thresholds(tmp_path, isles, reader_masks):
    # A vs A: identical masks are within any threshold -> sign-off of the STAPLE proposal
    s = _study(tmp_path, isles)
    s.annotate("c0009", "ann1", reader_masks["A"])
    s.annotate("c0009", "ann2", reader_masks["A"])
    rec = s.compare("c0009", by="coord")
    assert not rec["what"]["needs_review"] and s.state("c0009").status == "signoff"
    s.review("c0009", "rev1", accept_proposed=True, why="checked, agree")
    st = s.state("c0009")
    assert st.status == "final"
    assert dice(s.read_mask_version("c0009", st.consensus), sitk.ReadImage(str(reader_masks["A"]))) == 1.0

    # thresholds are the study's: a lax study lets A vs B through without review, no sign-off
    lax = _study(tmp_path / "lax", isles, thresholds=Thresholds(min_dice=0.5, max_abs_volume_diff_ml=5,
                                                                    max_unmatched_lesions=10),
                 signoff_agreed=False, agreed_consensus="union")
    lax.annotate("c0009", "ann1", reader_masks["A"])
    lax.annotate("c0009", "ann2", reader_masks["B"])
    lax.compare("c0009", by="coord")
    st = lax.state("c0009")
    assert st.status == "final" and st.consensus["decided_by"].startswith("compare")
    assert st.consensus["n_voxels"] == int((sitk.GetArrayFromImage(sitk.ReadImage(str(reader_masks["A"]))) |
                                            sitk.GetArrayFromImage(sitk.ReadImage(str(reader_masks["B"])))).sum())


def test_apply_lesion_choices_edited_territory():
    """Hand-checkable: two lesions 10 voxels apart; the edited mask grows lesion 1, draws
    over lesion 2 and adds a new far-away lesion."""
    shape = (5, 5, 40)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    a[2, 2, 5:8] = True             # lesion 1 (A: 3 voxels, B: 2)
    b[2, 2, 5:7] = True
    b[2, 2, 20:22] = True           # lesion 2 (B only)
    labels = np.zeros(shape, np.int32)
    labels[2, 2, 5:8] = 1
    labels[2, 2, 20:22] = 2
    e = np.zeros(shape, bool)
    e[2, 2, 4:10] = True            # grown lesion 1 (touches it)
    e[2, 2, 19:23] = True           # lesion 2 redrawn
    e[2, 2, 35] = True              # new lesion, touches nothing
    sp = (1.0, 1.0, 1.0)
    src = {"A": a, "B": b, "edited": e}
    m, rep = apply_lesion_choices(labels, 2, src, {1: "edited", 2: "none"}, sp, include_new=True)
    assert np.flatnonzero(m[2, 2]).tolist() == [4, 5, 6, 7, 8, 9, 35]
    assert rep["new_lesions_added"]["edited"] == {"n_components": 1, "n_voxels": 1}
    m, _ = apply_lesion_choices(labels, 2, src, {1: "intersection", 2: "edited"}, sp, include_new=False)
    assert np.flatnonzero(m[2, 2]).tolist() == [5, 6, 19, 20, 21, 22]
    m, _ = apply_lesion_choices(labels, 2, src, {1: "A", 2: "B"}, sp, include_new=False)
    assert np.flatnonzero(m[2, 2]).tolist() == [5, 6, 7, 20, 21]


def test_study_errors(tmp_path, isles):
    with pytest.raises(UserError, match="not a stroke-lesion study"):
        Study(tmp_path)
    s = Study.create(tmp_path / "s", by="coord")
    with pytest.raises(UserError, match="already holds a study"):
        Study.create(tmp_path / "s", by="coord")
    with pytest.raises(UserError, match="unknown reader"):
        s.reader("nobody")
    with pytest.raises(UserError, match="title"):
        s.add_reader(Reader("x", "professor", 10, 5), by="coord")
    with pytest.raises(UserError, match="different grid"):
        s.init_case("c1", dwi=isles["dwi"], adc=isles["flair"], by="coord")
    with pytest.raises(UserError, match="case id"):
        s.init_case("../escape", dwi=isles["dwi"], adc=isles["adc"], by="coord")
    with pytest.raises(UserError, match="no case"):
        s.state("c404")


def test_masks_given_as_images(tmp_path, isles):
    """The Slicer panel hands masks over as images (exported segments): checked against the
    case's DWI grid, stored with the DWI's exact header, the source recorded."""
    s = _study(tmp_path, isles)
    truth = sitk.ReadImage(str(isles["truth"]))
    moved = sitk.Image(truth)
    moved.SetOrigin(tuple(o + 2.0 for o in truth.GetOrigin()))
    with pytest.raises(UserError, match="^mask is not on the DWI grid of case c0009"):
        s.annotate("c0009", "ann1", moved)
    nearly = sitk.Image(truth)
    nearly.SetOrigin(tuple(o + 1e-6 for o in truth.GetOrigin()))       # float noise of a RAS/LPS round trip
    w = s.annotate("c0009", "ann1", nearly, source="Slicer: segment 'lesion'")["what"]
    assert w["input"] is None and w["source"] == "Slicer: segment 'lesion'" and w["n_voxels"] == 523
    saved = sitk.ReadImage(str(s.mask_path("c0009", w["file"])))
    assert saved.GetOrigin() == s.reference_image("c0009").GetOrigin()
    with pytest.raises(UserError, match="the mask is empty"):
        s.annotate("c0009", "ann1", truth * 0)


def test_workflow_command_line(tmp_path, isles, reader_masks, capsys):
    """The workflow through stroke-lesion's main() (in-process: same parser and exit codes as
    the console script, without paying a Python start per step)."""
    from StrokeLesionLib.cli import main

    def cli(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    st = tmp_path / "study"
    assert cli("study", "init", st, "--by", "coord", "--min-dice", "0.85")[0] == 0
    for r in READERS[:4]:
        rc, out, err = cli("reader", "add", st, "--id", r.id, "--title", r.title, "--years", r.years,
                           "--neuro-years", r.neuro_years, "--by", "coord", "--json")
        assert rc == 0, err
    assert json.loads(out)["qualifies_as"] == ["annotator", "reviewer", "arbitrator"]
    rc, out, err = cli("case", "init", st, "c9", "--dwi", isles["dwi"], "--adc", isles["adc"], "--subject", "s0009",
                       "--annotator-a", "ann1", "--annotator-b", "ann2", "--reviewer", "rev1", "--arbitrator", "arb1",
                       "--by", "coord")
    assert rc == 0, err
    rc, out, err = cli("case", "assign", st, "c9", "--slot", "annotatorB", "--reader", "rev1", "--by", "coord")
    assert rc == 2 and "already reviewer" in err and len(err.strip().splitlines()) == 1
    assert cli("annotate", st, "c9", "--reader", "ann1", "--mask", reader_masks["A"])[0] == 0
    assert cli("annotate", st, "c9", "--reader", "ann2", "--mask", reader_masks["B"], "--minutes", "12")[0] == 0
    rc, out, err = cli("status", st, "c9", "--reader", "ann2", "--json")
    v = json.loads(out)
    assert v["status"] == "ready_to_compare" and "hidden" in v["annotations"]["annotatorA"]
    rc, out, err = cli("compare", st, "c9", "--by", "coord", "--json")
    assert rc == 0 and json.loads(out)["needs_review"] is True
    rc, out, err = cli("review", st, "c9", "--reader", "rev1", "--all", "A", "--lesion", "99=B", "--why", "x")
    assert rc == 2 and "lesions 1..19" in err
    rc, out, err = cli("review", st, "c9", "--reader", "rev1", "--all", "A", "--why", "A found all; B's extra is a vessel")
    assert rc == 0, err
    rc, out, err = cli("status", st, "--json")
    rows = json.loads(out)
    assert [{k: r[k] for k in ("case_id", "status", "next", "assignments")} for r in rows] == [
        {"case_id": "c9", "status": "final", "next": "done",
         "assignments": {"annotatorA": "ann1", "annotatorB": "ann2", "reviewer": "rev1", "arbitrator": "arb1"}}]
    # final, but not yet acceptable: the pre-flight names the quality grades still missing, with the command
    assert rows[0]["ready_for_acceptance"] is False
    assert [m["what"] for m in rows[0]["missing"]] == ["dwi: no quality grade (Likert, SNR, CNR)",
                                                       "adc: no quality grade (Likert, SNR, CNR)"]
    assert rows[0]["missing"][1]["command"].endswith("quality " + str(st) + " c9 --series adc --reader rev1 "
                                                     "--likert N --snr X --cnr Y")
    rc, out, err = cli("note", st, "c9", "--reader", "ann1", "--text", "t", "--point-ras", "1,2")
    assert rc == 2 and "three numbers" in err


def test_quality_grading_excludes_series(tmp_path, isles, reader_masks):
    s = _study(tmp_path, isles)
    with pytest.raises(UserError, match="give the reason"):
        s.record_quality("c0009", "dwi", reader_id="rev1", likert=2)
    s.record_quality("c0009", "dwi", reader_id="rev1", likert=2, reason="motion artefact")
    with pytest.raises(UserError, match="excluded from annotation"):
        s.annotate("c0009", "ann1", reader_masks["A"])
    s.record_quality("c0009", "dwi", reader_id="rev1", likert=4, snr=30.0, cnr=9.0)   # re-graded: latest counts
    s.annotate("c0009", "ann1", reader_masks["A"])
    # SNR/CNR measured from ROIs (AnnotationQCLib.quality): the ISLES'22 DWI is skull-stripped, its
    # background is exactly 0, so there is no noise to measure and the measurement is refused
    dwi = sitk.ReadImage(str(isles["dwi"]))
    lab = np.zeros(sitk.GetArrayViewFromImage(dwi).shape, np.uint8)
    lab[sitk.GetArrayFromImage(sitk.ReadImage(str(reader_masks["A"]))) > 0] = 1
    lab[0:3, 0:10, 0:10] = 2
    lab[36, 50:55, 50:55] = 3
    li = sitk.GetImageFromArray(lab)
    li.CopyInformation(dwi)
    sitk.WriteImage(li, str(tmp_path / "roi.nii.gz"))
    with pytest.raises(UserError, match="no noise"):
        s.record_quality("c0009", "dwi", reader_id="rev1", likert=4, roi_labelmap=tmp_path / "roi.nii.gz")
    # with a background ROI inside the brain (noise + anatomy; only to exercise the measurement)
    lab[lab == 2] = 0
    lab[30:33, 40:45, 40:45] = 2
    li = sitk.GetImageFromArray(lab)
    li.CopyInformation(dwi)
    sitk.WriteImage(li, str(tmp_path / "roi2.nii.gz"))
    rec = s.record_quality("c0009", "dwi", reader_id="rev1", likert=4, roi_labelmap=tmp_path / "roi2.nii.gz")
    d = sitk.GetArrayFromImage(dwi)
    expected = d[lab == 1].mean() / d[lab == 2].std(ddof=1)
    assert rec["what"]["snr"] == pytest.approx(expected, rel=1e-9)
