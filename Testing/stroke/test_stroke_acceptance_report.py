"""The dataset quality report of 'accept' (failures first with their fixes, distributions,
per-case thumbnails, checks folded), quality-number sources, 'validate-bids' on a study folder
and with --json, 'export-bids --validate' and --overwrite, on the real ISLES'22 case."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage as ndi

from ClinicalMRICommonLib.errors import UserError
from StrokeLesionLib.acceptance import check_dataset, render_html, write_report
from StrokeLesionLib.bids import ExportOptions, export_study, validator_executable
from StrokeLesionLib.cli import main
from StrokeLesionLib.report_figures import LOW_DICE, flagged, largest_lesion_slice
from StrokeLesionLib.workflow import Reader, Study

CASE = "sub-strokecase0009_ses-0001"


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz", "flair": raw / f"{CASE}_flair.nii.gz",
            "truth": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz"}


@pytest.fixture(scope="module")
def study(isles, tmp_path_factory):
    """c1 finished (A = expert, B = expert + one lesion, reviewer chose A) with quality grades
    entered, measured-style and not measurable; c2 annotated by A only."""
    d = tmp_path_factory.mktemp("acc")
    t = sitk.ReadImage(str(isles["truth"]))
    b = sitk.GetArrayFromImage(t) > 0
    b[40:43, 60:63, 30:33] = True
    bimg = sitk.GetImageFromArray(b.astype(np.uint8))
    bimg.CopyInformation(t)
    sitk.WriteImage(bimg, str(d / "b.nii.gz"))
    s = Study.create(d / "study", by="coord")
    for r in (Reader("ann1", "attending", 8, 3), Reader("ann2", "attending", 6, 2),
              Reader("rev1", "associate_chief", 14, 9)):
        s.add_reader(r, by="coord")
    slots = {"annotatorA": "ann1", "annotatorB": "ann2", "reviewer": "rev1"}
    s.init_case("c1", dwi=isles["dwi"], adc=isles["adc"], others={"flair": isles["flair"]}, subject="p1",
                by="coord", assignments=slots)
    s.annotate("c1", "ann1", isles["truth"])
    s.annotate("c1", "ann2", d / "b.nii.gz")
    s.compare("c1", by="coord")
    s.review("c1", "rev1", default="A", why="B's extra lesion is a vessel")
    s.record_quality("c1", "dwi", reader_id="rev1", likert=4, snr=25.0, cnr=8.0)
    s.record_quality("c1", "adc", reader_id="rev1", likert=4, snr_not_measurable="ADC is a computed map",
                     cnr_not_measurable="ADC is a computed map")
    s.record_quality("c1", "flair", reader_id="rev1", likert=3, snr=30.0, cnr=5.0)
    s.init_case("c2", dwi=isles["dwi"], adc=isles["adc"], subject="p2", by="coord", assignments=slots)
    s.annotate("c2", "ann1", isles["truth"])
    return s, d


@pytest.fixture(scope="module")
def datasets(study):
    s, d = study
    full = d / "full"
    export_study(s, full, ExportOptions(name="demo", authors=["A. Reader"], license="CC-BY-SA-4.0"))
    ok = d / "ok"
    export_study(s, ok, ExportOptions(name="demo", authors=["A. Reader"], license="CC-BY-SA-4.0", cases=("c1",)))
    return full, ok


def _pngs(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r"src=[\'\"]data:image/png;base64,([A-Za-z0-9+/=]+)[\'\"]", text)]


def test_quality_number_sources_reach_scans_tsv_and_acceptance(datasets):
    _, ok = datasets
    tsv = (ok / "sub-p1" / "ses-01" / "sub-p1_ses-01_scans.tsv").read_text().splitlines()
    head = tsv[0].split("\t")
    rows = {r.split("\t")[0]: dict(zip(head, r.split("\t"))) for r in tsv[1:]}
    adc = rows["dwi/sub-p1_ses-01_ADC.nii.gz"]
    assert (adc["snr"], adc["snr_source"], adc["cnr_source"]) == ("n/a", "not measurable", "not measurable")
    assert adc["quality_note"] == "SNR not measurable: ADC is a computed map; CNR not measurable: ADC is a computed map"
    assert rows["dwi/sub-p1_ses-01_dwi.nii.gz"]["snr_source"] == "entered"
    rep = check_dataset(ok)
    assert rep["accepted"] is True, [c for x in rep["sessions"] for c in x["checks"] if not c["ok"]]
    nums = rep["sessions"][0]["info"]["quality_numbers"]
    assert nums["dwi/sub-p1_ses-01_ADC.nii.gz"] == {"snr": "not measurable", "cnr": "not measurable"}
    assert nums["dwi/sub-p1_ses-01_dwi.nii.gz"] == {"snr": "entered", "cnr": "entered"}
    # "not measurable" without a reason is a missing number
    p = ok / "sub-p1" / "ses-01" / "sub-p1_ses-01_scans.tsv"
    saved = p.read_text()
    p.write_text(saved.replace("SNR not measurable: ADC is a computed map; CNR not measurable: ADC is a computed map",
                               "n/a"))
    try:
        msgs = [c["message"] for c in check_dataset(ok)["sessions"][0]["checks"] if not c["ok"]]
        assert "dwi/sub-p1_ses-01_ADC.nii.gz: SNR missing" in msgs
    finally:
        p.write_text(saved)


def test_report_failures_first_with_fixes_pictures_and_folded_checks(datasets, tmp_path, capsys):
    full, _ = datasets
    rc, out, err = cli(capsys, "accept", full, "--report-dir", tmp_path / "rep")
    assert rc == 1 and out.startswith("NOT ACCEPTED: 1/2 session(s) pass"), err
    rep = json.loads((tmp_path / "rep" / "acceptance_report.json").read_text())
    failed = [c for x in rep["sessions"] for c in x["checks"] if not c["ok"]]
    assert failed and all(c["fix"] for c in failed)                       # every failure says what to do
    no_b = next(c for c in failed if c["message"] == "no annotatorB mask")
    assert "stroke-lesion annotate" in no_b["fix"]
    cons = next(c for c in failed if c["message"].startswith("no consensus mask"))
    assert "stroke-lesion status STUDY" in cons["fix"]
    html = (tmp_path / "rep" / "acceptance_report.html").read_text()
    i_fail, i_dist, i_cases = (html.index("What fails"), html.index("Distributions across the dataset"),
                               html.index("<h2>Cases</h2>"))
    assert i_fail < i_dist < i_cases                                      # failures first
    assert "no annotatorB mask</td><td>annotatorB has not saved a mask" in html
    assert html.count("<details>") == 3 and "checks (0 not ok)" in html   # 2 cases + dataset, folded
    assert "SNR not measurable: 2" not in html and "SNR not measurable: 1" in html
    # the extension's one report page (ClinicalMRICommonLib.report): its banner, navigation and sections
    assert '<div class="status status-failed">NOT ACCEPTED</div>' in html
    assert '<nav><a href="#summary">Summary</a>' in html and '<section id="cases">' in html
    pngs = _pngs(html)
    assert len(pngs) == 3                                                 # distributions + 2 thumbnails
    assert pngs[0].size[0] > 2 * pngs[0].size[1]                          # the three panels side by side
    assert all(im.format == "PNG" and min(im.size) > 100 for im in pngs)
    # replaced only with --overwrite
    rc, _, err = cli(capsys, "accept", full, "--report-dir", tmp_path / "rep")
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    rc, _, _ = cli(capsys, "accept", full, "--report-dir", tmp_path / "rep", "--overwrite")
    assert rc == 1
    with pytest.raises(UserError, match="already exists"):
        write_report(rep, tmp_path / "rep")
    assert "<img" not in render_html(rep, pictures=False)


def test_thumbnail_slice_is_the_largest_lesion_slice(isles):
    t = sitk.GetArrayFromImage(sitk.ReadImage(str(isles["truth"]))) > 0
    lab, n = ndi.label(t, structure=np.ones((3, 3, 3)))
    biggest = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    k = largest_lesion_slice(t)
    assert biggest[k].sum() == biggest.sum(axis=(1, 2)).max() and n == 18
    assert largest_lesion_slice(np.zeros_like(t), [t]) == int(np.argmax(t.sum(axis=(1, 2))))
    assert largest_lesion_slice(np.zeros_like(t)) == t.shape[0] // 2


def test_cases_to_look_at_again_are_flagged():
    dice = {f"c{i}": 0.85 + 0.01 * (i % 5) for i in range(12)}
    dice["odd"] = 0.62                                   # inside [0.5, 1] but far below the others
    dice["bad"] = 0.3
    got = flagged(dice, LOW_DICE)
    assert got == {"odd", "bad"}
    vols = {f"c{i}": 10.0 + i for i in range(10)} | {"huge": 300.0}
    assert flagged(vols) == {"huge"}
    assert flagged({"a": 0.2, "b": 0.9}, LOW_DICE) == {"a"}   # too few for fences: only the low-Dice rule


def test_validate_bids_names_a_study_folder_and_keeps_warnings(study, datasets, capsys):
    s, _ = study
    rc, _, err = cli(capsys, "validate-bids", s.root)
    assert rc == 2 and "study folder, not a BIDS dataset" in err and "export-bids" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "accept", s.root)
    assert rc == 2 and "study folder, not a BIDS dataset" in err
    if validator_executable() is None:
        pytest.skip("bids-validator-deno is not installed")
    _, ok = datasets
    rc, out, err = cli(capsys, "validate-bids", ok, "--json")
    v = json.loads(out)
    assert rc == 0, err
    assert v["n_errors"] == 0 and "warnings" in v and v["n_warnings"] == len(v["warnings"]) + sum(
        len(d["warnings"]) for d in v["derivatives"].values())
    rc, out, _ = cli(capsys, "validate-bids", ok)
    assert re.search(r"BIDS validator: 0 error\(s\), \d+ warning\(s\) in the raw dataset", out)


def test_export_validate_counts_warnings_and_overwrite_replaces_an_export(study, tmp_path, capsys):
    s, _ = study
    out = tmp_path / "ds"
    args = ["export-bids", s.root, out, "--name", "demo", "--author", "A. Reader", "--case", "c1", "--no-eadc"]
    if validator_executable() is not None:
        rc, text, err = cli(capsys, *args, "--validate")
        assert rc == 0, err
        assert re.search(r"BIDS validator: 0 error\(s\), \d+ warning\(s\)", text), text
    else:
        assert cli(capsys, *args)[0] == 0
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "not empty" in err and "--overwrite" in err
    (out / "marker.txt").write_text("from the first export")
    rc, text, err = cli(capsys, *args, "--overwrite")
    assert rc == 0, err
    assert not (out / "marker.txt").exists() and (out / "dataset_description.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # no staging folder left behind
    # --overwrite never replaces a folder that is not an earlier export
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("user data")
    rc, _, err = cli(capsys, "export-bids", s.root, other, "--name", "x", "--author", "a", "--overwrite")
    assert rc == 2 and "holds no BIDS dataset" in err and (other / "mine.txt").read_text() == "user data"
    rc, _, err = cli(capsys, "export-bids", s.root, s.root / "inside", "--name", "x", "--author", "a")
    assert rc == 2 and "overlap" in err
    rc, _, err = cli(capsys, "export-bids", s.root, tmp_path / "x2", "--name", "x")
    assert rc == 2 and "--author" in err and "required" in err
