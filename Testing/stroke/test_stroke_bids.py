"""BIDS export of a finished two-reader study on the real ISLES'22 case, checked by the
official validator (bids-validator-deno) and by our own derivative checks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from StrokeLesionLib.bids import (ExportOptions, check_derivative_description, export_study, run_validator,
                                  validator_executable)
from StrokeLesionLib.workflow import Reader, Study

CASE = "sub-strokecase0009_ses-0001"


@pytest.fixture(scope="module")
def finished_study(shared_data, tmp_path_factory):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    truth = shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz"
    d = tmp_path_factory.mktemp("bids")
    t = sitk.ReadImage(str(truth))
    arr = sitk.GetArrayFromImage(t) > 0
    b = arr.copy()
    b[40:43, 60:63, 30:33] = True                      # annotator B adds one lesion
    bimg = sitk.GetImageFromArray(b.astype(np.uint8))
    bimg.CopyInformation(t)
    sitk.WriteImage(bimg, str(d / "b.nii.gz"))
    s = Study.create(d / "study", by="coord", name="isles-demo")
    for r in (Reader("ann1", "attending", 8, 3), Reader("ann2", "attending", 6, 2),
              Reader("rev1", "associate_chief", 14, 9), Reader("arb1", "chief", 25, 18)):
        s.add_reader(r, by="coord")
    s.init_case("c0009", dwi=raw / f"{CASE}_dwi.nii.gz", adc=raw / f"{CASE}_adc.nii.gz",
                others={"flair": raw / f"{CASE}_flair.nii.gz"}, subject="strokecase0009", session="0001", by="coord")
    for slot, rid in (("annotatorA", "ann1"), ("annotatorB", "ann2"), ("reviewer", "rev1"), ("arbitrator", "arb1")):
        s.assign("c0009", slot, rid, by="coord")
    s.annotate("c0009", "ann1", truth)
    s.annotate("c0009", "ann2", d / "b.nii.gz")
    s.compare("c0009", by="coord")
    s.review("c0009", "rev1", default="A", why="B's extra lesion is a flow void")
    for series, lk in (("dwi", 4), ("adc", 4), ("flair", 3)):
        s.record_quality("c0009", series, reader_id="rev1", likert=lk, snr=25.0, cnr=8.0)
    # a second case (same images, another pseudonym) still being annotated: no consensus, no grades
    s.init_case("c0010", dwi=raw / f"{CASE}_dwi.nii.gz", adc=raw / f"{CASE}_adc.nii.gz", subject="strokecase0010",
                session="0001", by="coord")
    s.assign("c0010", "annotatorA", "ann1", by="coord")
    s.annotate("c0010", "ann1", truth)
    return s, truth, d


@pytest.fixture(scope="module")
def exported(finished_study):
    s, truth, d = finished_study
    out = d / "ds"
    rep = export_study(s, out, ExportOptions(name="ISLES22 case 0009 demo", authors=["A. Reader", "B. Reader"],
                                             license="CC-BY-SA-4.0", keep_patient_characteristics=True))
    return out, rep


def test_export_is_valid_bids(finished_study, exported):
    s, truth, d = finished_study
    out, rep = exported
    assert rep["warnings"] == ["case c0010 (sub-strokecase0010_ses-0001) has no accepted consensus mask "
                               "(state annotating)"]
    assert rep["cases"][0]["masks"] == ["annotatorA", "annotatorB", "consensus"]
    assert rep["cases"][1]["masks"] == ["annotatorA"]
    sub = out / "sub-strokecase0009" / "ses-0001"
    for rel in ("dwi/sub-strokecase0009_ses-0001_dwi.nii.gz", "dwi/sub-strokecase0009_ses-0001_dwi.bval",
                "dwi/sub-strokecase0009_ses-0001_dwi.bvec", "dwi/sub-strokecase0009_ses-0001_ADC.nii.gz",
                "anat/sub-strokecase0009_ses-0001_FLAIR.nii.gz", "sub-strokecase0009_ses-0001_scans.tsv"):
        assert (sub / rel).exists(), rel
    dm = out / "derivatives" / "lesions" / "sub-strokecase0009" / "ses-0001" / "dwi"
    cons = dm / "sub-strokecase0009_ses-0001_space-orig_label-lesion_desc-consensus_mask.nii.gz"
    assert cons.exists() and (dm / "sub-strokecase0009_ses-0001_space-orig_label-lesion_desc-annotatorB_mask.json").exists()
    # the consensus equals the expert mask voxel for voxel, on the raw DWI's grid
    c = nib.load(str(cons))
    assert c.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(c.dataobj), np.asanyarray(nib.load(str(truth)).dataobj) != 0)
    dwi = nib.load(str(sub / "dwi/sub-strokecase0009_ses-0001_dwi.nii.gz"))
    np.testing.assert_allclose(c.affine, dwi.affine, atol=1e-4)
    side = json.loads(cons.with_name(cons.name.replace(".nii.gz", ".json")).read_text())
    assert side["Type"] == "Lesion" and side["SpatialReference"].startswith("bids:raw:sub-strokecase0009")
    assert side["ConsensusDecision"]["review"][0]["decisions"]
    # voxels unchanged, headers and gzip streams clean, identifying sidecar keys gone, TE in seconds
    src = nib.load(str(s.image_path("c0009", "dwi")))
    np.testing.assert_array_equal(np.asanyarray(dwi.dataobj), np.asanyarray(src.dataobj))
    assert bytes(dwi.header["descrip"]).strip(b"\0") == b""
    raw_gz = (sub / "dwi/sub-strokecase0009_ses-0001_dwi.nii.gz").read_bytes()
    assert raw_gz[4:8] == b"\0\0\0\0" and not raw_gz[3] & 0x08          # gzip MTIME 0, no FNAME flag
    meta = json.loads((sub / "dwi/sub-strokecase0009_ses-0001_dwi.json").read_text())
    assert meta["PatientAge"] == "060Y"              # kept: Retain Patient Characteristics Option asked for
    assert meta["EchoTime"] == pytest.approx(0.055)
    assert (sub / "dwi/sub-strokecase0009_ses-0001_dwi.bval").read_text().split() == ["800"]
    assert json.loads((sub / "dwi/sub-strokecase0009_ses-0001_ADC.json").read_text())["Units"] == "um^2/ms"
    assert (out / "participants.tsv").read_text() == ("participant_id\tage\tsex\nsub-strokecase0009\t60\tF\n"
                                                      "sub-strokecase0010\t60\tF\n")
    assert "4\t25.0\t8.0\tentered\tentered\tn/a\trev1" in (sub / "sub-strokecase0009_ses-0001_scans.tsv").read_text()
    # GeneratedBy: the validator does not check it, we do
    assert check_derivative_description(out / "derivatives" / "lesions" / "dataset_description.json") == []
    bad = d / "bad_description.json"
    bad.write_text(json.dumps({"Name": "x", "BIDSVersion": "1.11.0", "DatasetType": "derivative"}))
    assert check_derivative_description(bad) == ["GeneratedBy must be a non-empty list"]

    if validator_executable() is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno); validator not run")
    v = run_validator(out)
    assert v["n_errors"] == 0, [(i["code"], i.get("location")) for i in v["errors"]] + [
        (name, i["code"], i.get("location")) for name, dv in v["derivatives"].items() for i in dv["errors"]]
    assert "/derivatives/lesions/" in v["derivatives"]
    codes = {i["code"] for i in v["warnings"]}
    assert not codes & {"GZIP_HEADER_MTIME", "GZIP_HEADER_FILENAME", "TSV_ADDITIONAL_COLUMNS_UNDEFINED"}


def test_consensus_document_naming_is_reported_invalid(finished_study):
    s, _, d = finished_study
    out = d / "ds_doc"
    rep = export_study(s, out, ExportOptions(name="doc naming", authors=["A", "B"], mask_naming="consensus-document",
                                             include_eadc=False, masks=("consensus",), cases=("c0009",),
                                             series=("dwi",)))
    assert any("NOT valid BIDS" in w for w in rep["warnings"])
    doc = out / "derivatives" / "lesions" / "sub-strokecase0009" / "ses-0001" / \
        "sub-strokecase0009_ses-0001_dwi_lesionmask.nii.gz"
    assert doc.exists()
    meta = json.loads((out / "sub-strokecase0009/ses-0001/dwi/sub-strokecase0009_ses-0001_dwi.json").read_text())
    assert not {"PatientAge", "PatientSex", "PatientWeight"} & set(meta)          # the Basic Profile default
    assert (out / "participants.tsv").read_text() == "participant_id\nsub-strokecase0009\n"
    assert not (out / "sub-strokecase0009/ses-0001/anat").exists()
    if validator_executable() is None:
        pytest.skip("bids-validator-deno is not installed; validator not run")
    v = run_validator(out)
    derr = v["derivatives"]["/derivatives/lesions/"]["errors"]
    assert any("lesionmask" in str(i.get("location", "")) for i in derr), derr


def test_export_command_line(finished_study, capsys):
    from StrokeLesionLib.cli import main
    s, _, d = finished_study
    capsys.readouterr()
    rc = main(["export-bids", str(s.root), str(d / "cli_ds"), "--name", "cli", "--author", "A", "--author", "B",
               "--case", "c0009", "--no-eadc", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["cases"][0]["masks"] == ["annotatorA", "annotatorB", "consensus"]
    rc = main(["export-bids", str(s.root), str(d / "cli_ds"), "--name", "cli", "--author", "A"])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    rc = main(["accept", str(d / "cli_ds"), "--report-dir", str(d / "cli_report")])
    text = capsys.readouterr().out
    assert rc == 0 and text.startswith("ACCEPTED"), text


def test_export_refuses_non_empty_output(finished_study):
    s, _, d = finished_study
    (d / "full").mkdir()
    (d / "full" / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not empty"):
        export_study(s, d / "full", ExportOptions(name="x", authors=["a"]))
    assert (d / "full" / "keep.txt").read_text() == "user data"
    with pytest.raises(UserError, match="author"):
        export_study(s, d / "new", ExportOptions(name="x", authors=[]))


def test_acceptance(exported, tmp_path):
    import shutil

    from StrokeLesionLib.acceptance import check_dataset, write_report
    out, _ = exported
    rep = check_dataset(out)
    assert rep["accepted"] is False
    by = {x["subject"]: x for x in rep["sessions"]}
    assert by["strokecase0009"]["passed"] is True
    assert by["strokecase0009"]["info"]["consensus_lesions"] == 18          # the expert mask: 18 lesions
    assert by["strokecase0009"]["info"]["consensus_volume_ml"] == pytest.approx(4.184)
    # A = expert (523 voxels), B = expert + a 27-voxel block: Dice = 2*523 / (523 + 550)
    assert rep["summary"]["mean_reader_dice"] == pytest.approx(2 * 523 / (523 + 550))
    assert rep["summary"]["decided_by"] == {"reviewer": 1}
    failed = [c["message"] for c in by["strokecase0010"]["checks"] if not c["ok"] and c["severity"] == "error"]
    assert "no consensus mask (case not accepted: no final decision)" in failed
    assert "no annotatorB mask" in failed
    assert any("Likert grade missing" in m for m in failed)
    jp, hp = write_report(rep, tmp_path / "report")
    assert json.loads(jp.read_text())["accepted"] is False
    assert "NOT ACCEPTED" in hp.read_text() and "sub-strokecase0010" in hp.read_text()
    with pytest.raises(UserError, match="already exists"):
        write_report(rep, tmp_path / "report")

    # the same dataset without the unfinished case is accepted (official validator included)
    ok = tmp_path / "ok"
    shutil.copytree(out, ok)
    shutil.rmtree(ok / "sub-strokecase0010")
    shutil.rmtree(ok / "derivatives" / "lesions" / "sub-strokecase0010")
    (ok / "derivatives/lesions/sourcedata/audit/sub-strokecase0010_ses-0001_audit.jsonl").unlink()
    lines = (ok / "participants.tsv").read_text().splitlines()
    (ok / "participants.tsv").write_text("\n".join(lines[:2]) + "\n")
    rep = check_dataset(ok, run_official_validator=validator_executable() is not None)
    assert rep["accepted"] is True, [c for s_ in rep["sessions"] for c in s_["checks"] if not c["ok"]]
    # patient characteristics kept by choice: reported as a warning, not a failure
    assert any("Retain Patient Characteristics" in c["message"] for c in rep["sessions"][0]["checks"])

    # the command line: accepted -> exit 0, report beside the dataset
    import subprocess
    import sys
    from pathlib import Path
    exe = Path(sys.executable).with_name("stroke-lesion")
    assert exe.exists(), f"{exe}: the stroke-lesion console script is not installed (pip install -e .)"
    p = subprocess.run([str(exe), "accept", str(ok)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("ACCEPTED: 1/1 session(s) pass; 1 consensus mask(s), 18 lesion(s), 4.184 mL")
    assert (tmp_path / "ok-acceptance" / "acceptance_report.html").exists()

    # each kind of defect is caught
    sub = ok / "sub-strokecase0009" / "ses-0001"
    scans = sub / "sub-strokecase0009_ses-0001_scans.tsv"
    scans.write_text(scans.read_text().replace("FLAIR.nii.gz\t3\t", "FLAIR.nii.gz\t2\t"))
    side = sub / "dwi" / "sub-strokecase0009_ses-0001_ADC.json"
    meta = json.loads(side.read_text())
    meta["PatientName"] = "Zhang^San"
    side.write_text(json.dumps(meta))
    (sub / "dwi" / "sub-strokecase0009_ses-0001_dwi.bvec").rename(sub / "dwi" / "dwi_bvec.txt")
    mask = ok / "derivatives/lesions/sub-strokecase0009/ses-0001/dwi/" \
        "sub-strokecase0009_ses-0001_space-orig_label-lesion_desc-annotatorA_mask.nii.gz"
    mask.write_bytes(b"broken")
    rep = check_dataset(ok)
    msgs = [c["message"] for c in rep["sessions"][0]["checks"] if not c["ok"] and c["severity"] == "error"]
    assert rep["accepted"] is False
    assert "anat/sub-strokecase0009_ses-0001_FLAIR.nii.gz: Likert 2 < 3: the series should have been excluded" in msgs
    assert "dwi/sub-strokecase0009_ses-0001_ADC.nii.gz: identifying sidecar key(s) ['PatientName']" in msgs
    assert any("unexpected raw file(s): ['dwi/dwi_bvec.txt']" in m for m in msgs)
    assert any(m.startswith("annotatorA mask unreadable") for m in msgs)


def test_find_session_images(exported, shared_data, tmp_path):
    """A session folder, flat (ISLES'22) or BIDS (dwi/ + anat/, as exported here)."""
    from StrokeLesionLib.bids import find_session_images

    out, _ = exported
    ses = out / "sub-strokecase0009" / "ses-0001"
    found = find_session_images(ses)
    assert found == {"dwi": ses / "dwi" / "sub-strokecase0009_ses-0001_dwi.nii.gz",
                     "adc": ses / "dwi" / "sub-strokecase0009_ses-0001_ADC.nii.gz",
                     "flair": ses / "anat" / "sub-strokecase0009_ses-0001_FLAIR.nii.gz"}
    isles = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    assert sorted(find_session_images(isles)) == ["adc", "dwi", "flair"]
    (tmp_path / "two").mkdir()
    for name in ("sub-1_run-1_dwi.nii.gz", "sub-1_run-2_dwi.nii.gz", "sub-1_adc.nii.gz"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(UserError, match="has 2 DWI files"):
        find_session_images(tmp_path / "two")
    with pytest.raises(UserError, match="no DWI and no ADC"):
        find_session_images(out)
    with pytest.raises(UserError, match="does not exist"):
        find_session_images(tmp_path / "nowhere")
