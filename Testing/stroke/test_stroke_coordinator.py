"""A coordinator running a dataset (issue 17) on the real ISLES'22 case: atomic case init,
masks that are not masks, the acceptance pre-flight in 'status', quality numbers that cannot be
measured, where the lesions are, review choices from a CSV, and 'case import' from a folder or
a CSV."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from StrokeLesionLib.cli import main
from StrokeLesionLib.workflow import LARGE_LESION_ML, Reader, Study

CASE = "sub-strokecase0009_ses-0001"
READERS = [Reader("ann1", "attending", 8, 3), Reader("ann2", "attending", 6, 2),
           Reader("rev1", "associate_chief", 14, 9), Reader("arb1", "chief", 25, 18),
           Reader("junior", "resident", 3, 1)]
ALL = {"annotatorA": "ann1", "annotatorB": "ann2", "reviewer": "rev1", "arbitrator": "arb1"}


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz", "flair": raw / f"{CASE}_flair.nii.gz",
            "truth": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz",
            "root": shared_data / "isles22"}


@pytest.fixture(scope="module")
def b_mask(isles, tmp_path_factory):
    """Annotator B: the expert mask plus one 3x3x3 lesion of its own."""
    t = sitk.ReadImage(str(isles["truth"]))
    a = sitk.GetArrayFromImage(t) > 0
    a[40:43, 60:63, 30:33] = True
    img = sitk.GetImageFromArray(a.astype(np.uint8))
    img.CopyInformation(t)
    p = tmp_path_factory.mktemp("b") / "b.nii.gz"
    sitk.WriteImage(img, str(p))
    return p


def _study(tmp_path) -> Study:
    s = Study.create(tmp_path / "study", by="coord")
    for r in READERS:
        s.add_reader(r, by="coord")
    return s


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_case_init_is_atomic(tmp_path, isles, capsys):
    s = _study(tmp_path)
    st = s.root
    rc, _, err = cli(capsys, "case", "init", st, "c1", "--dwi", isles["dwi"], "--adc", isles["adc"],
                     "--annotator-a", "ann1", "--annotator-b", "junior", "--by", "coord")
    assert rc == 2 and "junior does not qualify as annotator" in err
    assert s.case_ids() == [] and not (st / "cases" / "c1").exists()
    assert not list((st / ".staging").iterdir()) if (st / ".staging").exists() else True
    # a bad optional image is refused before anything is created, too
    (tmp_path / "junk_flair.nii.gz").write_bytes(b"\x1f\x8b junk")
    rc, _, err = cli(capsys, "case", "init", st, "c1", "--dwi", isles["dwi"], "--adc", isles["adc"],
                     "--flair", tmp_path / "junk_flair.nii.gz", "--annotator-a", "ann1", "--by", "coord")
    assert rc == 2 and "junk_flair.nii.gz" in err and not (st / "cases" / "c1").exists()
    # the same reader in two slots: refused before creation
    with pytest.raises(UserError, match="already annotatorA"):
        s.init_case("c1", dwi=isles["dwi"], adc=isles["adc"], by="coord",
                    assignments={"annotatorA": "ann1", "annotatorB": "ann1"})
    assert s.case_ids() == []
    # the corrected command simply works (no "case already exists")
    rc, out, err = cli(capsys, "case", "init", st, "c1", "--dwi", isles["dwi"], "--adc", isles["adc"],
                       "--annotator-a", "ann1", "--annotator-b", "ann2", "--by", "coord", "--json")
    assert rc == 0, err
    v = json.loads(out)
    assert v["assignments"] == {"annotatorA": "ann1", "annotatorB": "ann2"}
    info = s.case_info("c1")
    assert info["images"]["adc"]["units"]["units"] == "1e-3mm2/s"
    assert 1000 < info["brain_volume_ml"] < 1600
    assert [r["action"] for r in s.state("c1").records] == ["case_init", "assign", "assign"]
    assert s.verify("c1") == []                         # hash chain and file checksums of the staged build
    rc, _, err = cli(capsys, "case", "init", st, "c1", "--dwi", isles["dwi"], "--adc", isles["adc"])
    assert rc == 2 and "already exists" in err
    rc, _, err = cli(capsys, "case", "init", st, "c2", "--dwi", isles["dwi"], "--adc", isles["adc"],
                     "--subject", "c1")
    assert rc == 2 and "already has subject c1 session 01" in err


def test_masks_that_are_not_masks(tmp_path, isles, capsys):
    s = _study(tmp_path)
    s.init_case("c1", dwi=isles["dwi"], adc=isles["adc"], by="coord", assignments=ALL)
    # the issue: the DWI itself given as a mask was saved as "1449.880 mL"
    rc, _, err = cli(capsys, "annotate", s.root, "c1", "--reader", "ann1", "--mask", isles["dwi"])
    assert rc == 2 and "is this an image" in err and "Traceback" not in err
    t = sitk.ReadImage(str(isles["truth"]))
    lab = (sitk.GetArrayFromImage(t) > 0).astype(np.uint8)
    lab[40:43, 60:63, 30:33] = 2
    two = sitk.GetImageFromArray(lab)
    two.CopyInformation(t)
    sitk.WriteImage(two, str(tmp_path / "two.nii.gz"))
    rc, _, err = cli(capsys, "annotate", s.root, "c1", "--reader", "ann1", "--mask", tmp_path / "two.nii.gz")
    assert rc == 2 and "several labels (1, 2)" in err
    # a binary mask covering the whole brain: implausible (more than half of the brain)
    from StrokeLesionLib.diffusion import brain_mask
    brain = brain_mask(sitk.ReadImage(str(isles["dwi"])))
    sitk.WriteImage(brain, str(tmp_path / "brain.nii.gz"))
    rc, _, err = cli(capsys, "annotate", s.root, "c1", "--reader", "ann1", "--mask", tmp_path / "brain.nii.gz")
    assert rc == 2 and "100% of the brain" in err and "--allow-large-lesion" in err
    assert s.state("c1").annotations == {}
    rc, out, err = cli(capsys, "annotate", s.root, "c1", "--reader", "ann1", "--mask", tmp_path / "brain.nii.gz",
                       "--allow-large-lesion", "--json")
    w = json.loads(out)
    assert rc == 0 and w["brain_fraction"] == pytest.approx(1.0)
    assert w["warnings"] and f"above {LARGE_LESION_ML:g} mL" in w["warnings"][0]
    # an ordinary mask: its fraction of the brain is stated, no warning
    rc, out, _ = cli(capsys, "annotate", s.root, "c1", "--reader", "ann2", "--mask", isles["truth"])
    assert rc == 0 and "4.184 mL, 0.3" in out and "warning" not in out


def _finish(s: Study, isles, b_mask, case="c1"):
    s.annotate(case, "ann1", isles["truth"])
    s.annotate(case, "ann2", b_mask)
    s.compare(case, by="coord")
    s.review(case, "rev1", default="A", why="B's extra lesion is a vessel")


def test_status_preflight(tmp_path, isles, b_mask, capsys):
    s = _study(tmp_path)
    s.init_case("c1", dwi=isles["dwi"], adc=isles["adc"], others={"flair": isles["flair"]}, by="coord",
                assignments={"annotatorA": "ann1"})
    rc, out, _ = cli(capsys, "status", s.root, "--json")
    row = json.loads(out)[0]
    assert row["next"].startswith("assign annotator B") and "--annotator-b READER" in row["next"]
    what = [m["what"] for m in row["missing"]]
    assert what[:2] == ["annotator B not assigned", "reviewer not assigned"]
    assert row["missing"][0]["command"] == f"stroke-lesion case assign {s.root} c1 --annotator-b READER"
    assert "annotator A (ann1) has not saved a mask" in what
    assert {"dwi: no quality grade (Likert, SNR, CNR)", "adc: no quality grade (Likert, SNR, CNR)",
            "flair: no quality grade (Likert, SNR, CNR)"} <= set(what)
    s.assign("c1", "annotatorB", "ann2", by="coord")
    s.assign("c1", "reviewer", "rev1", by="coord")
    assert s.case_view("c1")["next"] == "annotator A (ann1) and annotator B (ann2) draw their masks"
    _finish(s, isles, b_mask)
    s.record_quality("c1", "dwi", reader_id="rev1", likert=4, snr=25.0, cnr=8.0)
    s.record_quality("c1", "flair", reader_id="rev1", likert=4, snr=30.0)
    rc, out, _ = cli(capsys, "status", s.root, "c1")
    assert "missing for acceptance (2):" in out
    assert "- adc: no quality grade" in out and "--not-measurable \"ADC is a computed map\"" in out
    assert f"- flair: CNR missing: stroke-lesion quality {s.root} c1 --series flair --reader rev1 --likert 4 --cnr X" \
        in out
    rc, out, err = cli(capsys, "quality", s.root, "c1", "--series", "adc", "--reader", "rev1", "--likert", "4",
                       "--not-measurable", "ADC is a computed map")
    assert rc == 0 and "SNR not measurable (ADC is a computed map)" in out, err
    s.record_quality("c1", "flair", reader_id="rev1", likert=4, snr=30.0, cnr_not_measurable="no lesion on FLAIR")
    rc, out, _ = cli(capsys, "status", s.root)
    assert "c1: final (done)\n  ready for acceptance\n1 case(s): 1 ready for acceptance" in out
    # blinded view for an annotator: no pre-flight (it would describe the other reader's work)
    rc, out, _ = cli(capsys, "status", s.root, "--reader", "ann1", "--json")
    assert "missing" not in json.loads(out)[0]


def test_quality_numbers_that_cannot_be_measured(tmp_path, isles):
    s = _study(tmp_path)
    s.init_case("c1", dwi=isles["dwi"], adc=isles["adc"], by="coord", assignments=ALL)
    rec = s.record_quality("c1", "adc", reader_id="rev1", likert=4, snr_not_measurable="computed map",
                           cnr_not_measurable="computed map")["what"]
    assert rec["snr"] is None and rec["snr_source"] == "not measurable" and rec["not_measurable"] == {
        "snr": "computed map", "cnr": "computed map"}
    with pytest.raises(UserError, match="both as a value and as not measurable"):
        s.record_quality("c1", "adc", reader_id="rev1", likert=4, snr=3.0, snr_not_measurable="computed map")
    rec = s.record_quality("c1", "dwi", reader_id="rev1", likert=4, snr=22.0, cnr=6.0)["what"]
    assert (rec["snr_source"], rec["cnr_source"]) == ("entered", "entered")
    # an ROI measurement on the skull-stripped ISLES'22 DWI (background exactly 0): refused, saying what to do
    dwi = sitk.ReadImage(str(isles["dwi"]))
    lab = np.zeros(sitk.GetArrayViewFromImage(dwi).shape, np.uint8)
    lab[sitk.GetArrayFromImage(sitk.ReadImage(str(isles["truth"]))) > 0] = 1
    lab[0:3, 0:10, 0:10] = 2
    roi = sitk.GetImageFromArray(lab)
    roi.CopyInformation(dwi)
    sitk.WriteImage(roi, str(tmp_path / "roi.nii.gz"))
    with pytest.raises(UserError, match="no noise.*skull-stripped.*--not-measurable"):
        s.record_quality("c1", "dwi", reader_id="rev1", likert=4, roi_labelmap=tmp_path / "roi.nii.gz")
    lab[lab == 2] = 0
    lab[30:33, 40:45, 40:45] = 2
    roi = sitk.GetImageFromArray(lab)
    roi.CopyInformation(dwi)
    sitk.WriteImage(roi, str(tmp_path / "roi2.nii.gz"))
    rec = s.record_quality("c1", "dwi", reader_id="rev1", likert=4, roi_labelmap=tmp_path / "roi2.nii.gz",
                           cnr_not_measurable="no tissue ROI")["what"]
    assert rec["snr_source"] == "measured" and rec["cnr_source"] == "not measurable" and rec["cnr"] is None


def test_compare_lists_ras_centroids_and_slices(tmp_path, isles, b_mask, capsys):
    s = _study(tmp_path)
    s.init_case("c1", dwi=isles["dwi"], adc=isles["adc"], by="coord", assignments=ALL)
    s.annotate("c1", "ann1", isles["truth"])
    s.annotate("c1", "ann2", b_mask)
    rc, out, _ = cli(capsys, "compare", s.root, "c1", "--by", "coord")
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("  lesion ")]
    assert len(lines) == 19 and all("RAS (" in ln and "slice" in ln for ln in lines)
    lesions = s.state("c1").compare["lesions"]
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(s.mask_path("c1", s.state("c1").compare["lesion_map"]))))
    for les in lesions:
        lps, ras = les["centroid_lps"], les["centroid_ras"]
        assert ras == [-lps[0], -lps[1], lps[2]]
        ks = np.nonzero((lab == les["id"]).any(axis=(1, 2)))[0]
        assert les["slices"] == [int(ks.min()), int(ks.max())] and ks.min() <= les["slice_center"] <= ks.max()
    # the extra lesion of B (voxels k = 40..42) is listed with its slices
    extra = next(les for les in lesions if les["drawn_by"] == "B only")
    assert extra["slices"] == [40, 42] and f"slices k=40-42" in lines[extra["id"] - 1]
    # the printed RAS point is the one 'note --point-ras' takes
    x, y, z = extra["centroid_ras"]
    rc, out, err = cli(capsys, "note", s.root, "c1", "--reader", "rev1", "--text", "vessel?", "--point-ras",
                       f"{x},{y},{z}", "--json")
    assert rc == 0 and json.loads(out)["lesion"] == extra["id"], err


def test_review_choices_from_a_csv_with_a_default(tmp_path, isles, b_mask, capsys):
    s = _study(tmp_path)
    s.init_case("c1", dwi=isles["dwi"], adc=isles["adc"], by="coord", assignments=ALL)
    s.annotate("c1", "ann1", isles["truth"])
    s.annotate("c1", "ann2", b_mask)
    s.compare("c1", by="coord")
    extra = next(les["id"] for les in s.state("c1").compare["lesions"] if les["drawn_by"] == "B only")
    csv = tmp_path / "choices.csv"
    csv.write_text(f"lesion,choice,note\n{extra},none,a vessel\n1,union,\n")
    rc, _, err = cli(capsys, "review", s.root, "c1", "--reader", "rev1", "--choices", csv, "--lesion", "1=A",
                     "--default", "A", "--why", "x")
    assert rc == 2 and "lesion 1 given twice" in err and "line 3" in err
    rc, _, err = cli(capsys, "review", s.root, "c1", "--reader", "rev1", "--lesion", "2-4=B", "--lesion", "3=A",
                     "--default", "A", "--why", "x")
    assert rc == 2 and "lesion 3 given twice" in err
    (tmp_path / "bad.csv").write_text("id,decision\n1,A\n")
    rc, _, err = cli(capsys, "review", s.root, "c1", "--reader", "rev1", "--choices", tmp_path / "bad.csv",
                     "--why", "x")
    assert rc == 2 and "needs the columns 'lesion' and 'choice'" in err
    rc, out, err = cli(capsys, "review", s.root, "c1", "--reader", "rev1", "--choices", csv, "--lesion", "2,3=B",
                       "--default", "A", "--why", "CSV for the exceptions", "--json")
    assert rc == 0, err
    d = json.loads(out)["decisions"]
    assert d[str(extra)] == "none" and d["1"] == "union" and d["2"] == d["3"] == "B"
    assert {v for k, v in d.items() if k not in {str(extra), "1", "2", "3"}} == {"A"}
    cons = s.read_mask_version("c1", s.state("c1").consensus)
    assert int(sitk.GetArrayFromImage(cons).sum()) == 523     # the expert's lesions; B's extra lesion left out


def test_case_import_from_a_folder_and_a_csv(tmp_path, isles, capsys):
    s = _study(tmp_path)
    rc, out, err = cli(capsys, "case", "import", s.root, "--from", isles["root"], "--annotator-a", "ann1",
                       "--annotator-b", "ann2", "--reviewer", "rev1", "--by", "coord", "--json")
    rep = json.loads(out)
    assert rc == 0, err
    assert [r["case"] for r in rep["imported"]] == [CASE] and rep["refused"] == []
    assert "[1/1] sub-strokecase0009_ses-0001: imported" in err            # progress on stderr
    info = s.case_info(CASE)
    assert (info["subject"], info["session"]) == ("strokecase0009", "0001")
    assert sorted(info["images"]) == ["adc", "dwi", "flair"]
    assert s.state(CASE).assignments == {"annotatorA": "ann1", "annotatorB": "ann2", "reviewer": "rev1"}
    rc, out, _ = cli(capsys, "case", "import", s.root, "--from", isles["root"], "--json")
    assert rc == 0 and [r["case"] for r in json.loads(out)["skipped"]] == [CASE]
    # an unqualified reader for every case: refused before any case is imported
    rc, _, err = cli(capsys, "case", "import", s.root, "--from", isles["root"], "--annotator-a", "junior")
    assert rc == 2 and "junior does not qualify" in err
    # a CSV: relative paths, per-case readers; bad rows refused with their reason, good rows imported
    d = tmp_path / "list"
    d.mkdir()
    for k in ("dwi", "adc"):
        shutil.copyfile(isles[k], d / f"{k}.nii.gz")
    shutil.copyfile(isles["adc"].with_suffix("").with_suffix(".json"), d / "adc.json")
    (d / "cases.csv").write_text(
        "case_id,dwi,adc,flair,subject,annotator_a,annotator_b\n"
        "p1,dwi.nii.gz,adc.nii.gz,,p1,ann1,ann2\n"
        "p2,missing.nii.gz,adc.nii.gz,,p2,ann1,ann2\n"
        "p3,dwi.nii.gz,adc.nii.gz,,p3,ann1,junior\n"
        "p4,dwi.nii.gz,dwi.nii.gz,,p4,ann1,ann2\n")
    rc, out, err = cli(capsys, "case", "import", s.root, "--from", d / "cases.csv", "--reviewer", "rev1",
                       "--by", "coord")
    assert rc == 1, err                                       # done, but some cases refused
    assert out.startswith("imported 1, skipped 0 (already in the study), refused 3 case(s)")
    assert "refused p2" in out and "missing.nii.gz" in out
    assert "refused p3" in out and "junior does not qualify" in out
    assert "refused p4" in out and "the same image was given twice" in out     # the DWI given as the ADC
    assert sorted(s.case_ids()) == ["p1", CASE]
    assert not any((s.root / "cases" / c).exists() for c in ("p2", "p3", "p4"))
    assert s.state("p1").assignments == {"annotatorA": "ann1", "annotatorB": "ann2", "reviewer": "rev1"}
