"""Nothing forged, nothing shown that should not be (issue 12), on the small synthetic study of
stroke_phantom: tampering with the audit trail, the study log, case.json, study.json and the
images is noticed by every command that reads them and listed by `stroke-lesion verify`;
older unsigned studies are read and signed from their next change; the blinded status; the
BIDS export's de-identification (NIfTI extensions, BIDS-schema sidecar keys, redacted audit
trail); DICOM overlays, file-meta AE titles and secondary captures in `deid`."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest
import SimpleITK as sitk

import stroke_phantom as sp
from ClinicalMRICommonLib.audit import SITE_KEY_ENV, record_hash
from StrokeLesionLib.cli import main
from StrokeLesionLib.workflow import AuditLog, Study


@pytest.fixture(scope="module")
def site_key(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        key = tmp_path_factory.mktemp("site") / "site.key"
        mp.setenv(SITE_KEY_ENV, str(key))
        yield key


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return sp.write_images(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def final_study(tmp_path_factory, images, site_key):
    return sp.build_study(tmp_path_factory.mktemp("template") / "study", images).root


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _rechain(path, start: int, edit) -> None:
    """Edit record ``start`` (0-based) of a JSON-lines log with ``edit(record)`` and recompute
    the SHA-256 chain from there on, as someone without the site key would."""
    recs = [json.loads(ln) for ln in path.read_text().splitlines()]
    edit(recs[start])
    prev = recs[start - 1]["hash"] if start else ""
    for r in recs[start:]:
        r["prev"] = prev
        r["hash"] = record_hash(r)
        prev = r["hash"]
    os.chmod(path, 0o644)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _edit_json(path, edit) -> None:
    d = json.loads(path.read_text())
    edit(d)
    os.chmod(path, 0o644)
    path.write_text(json.dumps(d, indent=2))


def _truncate(study):
    log = study / "cases" / "c1" / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    os.chmod(log, 0o644)
    log.write_text("".join(lines[:-3]))          # the review and the consensus are gone


def _edit_record(study):
    def edit(r):
        r["what"]["volume_ml"] = 9.9
    _rechain(study / "cases" / "c1" / "audit.jsonl", 5, edit)


def _promote_junior(study):
    def edit(r):
        assert r["what"]["id"] == "junior"
        r["what"].update(title="chief", years=30, neuro_years=20)
    _rechain(study / "readers.jsonl", 4, edit)


def _rename_subject(study):
    _edit_json(study / "cases" / "c1" / "case.json", lambda d: d.update(subject="renamed"))


def _path_outside(study):
    _edit_json(study / "cases" / "c1" / "case.json", lambda d: d["images"]["dwi"].update(file="../../x.nii.gz"))


def _dwi_replaced_by_adc(study):
    img = study / "cases" / "c1" / "images"
    os.chmod(img / "c1_dwi.nii.gz", 0o644)
    shutil.copyfile(img / "c1_adc.nii.gz", img / "c1_dwi.nii.gz")


def _threshold_lowered(study):
    _edit_json(study / "study.json", lambda d: d["settings"]["thresholds"].update(min_dice=0.1))


def _head_removed(study):
    (study / "cases" / "c1" / "audit.jsonl.head").unlink()


def _case_deleted(study):
    shutil.rmtree(study / "cases" / "c1")


TAMPERING = {
    "last records deleted": (_truncate, "the last 3 record(s) were removed"),
    "record edited, chain recomputed": (_edit_record, "does not carry the site key's signature"),
    "junior reader made chief": (_promote_junior, "does not carry the site key's signature"),
    "subject renamed in case.json": (_rename_subject, "edited after the case was created"),
    "image path outside the study": (_path_outside, "leads outside"),
    "DWI replaced by its ADC": (_dwi_replaced_by_adc, "does not match the SHA-256"),
    "study threshold lowered": (_threshold_lowered, "edited after it was signed"),
    "head file removed": (_head_removed, "head file audit.jsonl.head is missing"),
    "case folder deleted": (_case_deleted, "registered in the study log but its folder"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_noticed_by_verify_and_by_the_commands(kind, final_study, tmp_path, capsys):
    study = sp.copy_study(final_study, tmp_path / "study")
    tamper, expected = TAMPERING[kind]
    tamper(study)
    rc, out, err = cli(capsys, "verify", study, "--json")
    rep = json.loads(out)
    problems = rep["study"]["problems"] + rep["readers"]["problems"] + [
        p for c in rep["cases"].values() for p in c["problems"]]
    assert rc == 1 and not rep["ok"] and any(expected in p for p in problems), problems
    # the commands that read what was altered refuse in one line; nothing is exported
    commands = {"junior reader made chief": [("reader", "list", study)],
                "study threshold lowered": [("status", study)],
                "case folder deleted": []}.get(kind, [("status", study, "c1"),
                                                      ("export-bids", study, tmp_path / "ds", "--name", "x",
                                                       "--author", "y")])
    for argv in commands:
        rc, out, err = cli(capsys, *argv)
        assert rc == 2 and len(_errors(err)) == 1 and "Traceback" not in err, (argv, err)
        assert expected in err or "altered" in err or "does not verify" in err, err
    assert not (tmp_path / "ds").exists()


def test_every_record_signed_with_the_os_user_next_to_the_reader(final_study):
    recs = AuditLog(final_study / "cases" / "c1" / "audit.jsonl").records()
    assert [r["action"] for r in recs][:2] == ["case_init", "assign"]
    ann = next(r for r in recs if r["action"] == "annotate")
    assert ann["who"] == "ann1" and ann["os_user"] and ann["host"] and ann["sig"] and ann["key_id"]
    assert all(r.get("os_user") and r.get("sig") for r in recs)
    study_log = AuditLog(final_study / "readers.jsonl").records()
    assert [r["action"] for r in study_log] == ["reader"] * 5 + ["case"]


def _as_old_study(study) -> None:
    """Make a study look as the versions before issue 12 wrote it: unsigned study.json, logs
    hash-chained but unsigned and without heads, no case registrations, no case.json digest."""
    _edit_json(study / "study.json", lambda d: [d.pop(k) for k in ("signature", "signed_logs")])

    def unsign(path, keep=lambda r: True, edit=lambda r: None):
        recs = [json.loads(ln) for ln in path.read_text().splitlines()]
        recs = [r for r in recs if keep(r)]
        prev = ""
        for i, r in enumerate(recs, start=1):
            for k in ("sig", "key_id", "legacy", "os_user", "host"):
                r.pop(k, None)
            edit(r)
            r.update(seq=i, prev=prev)
            r["hash"] = record_hash(r)
            prev = r["hash"]
        os.chmod(path, 0o644)
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        path.with_name(path.name + ".head").unlink()

    unsign(study / "readers.jsonl", keep=lambda r: r["action"] == "reader")
    unsign(study / "cases" / "c1" / "audit.jsonl",
           edit=lambda r: r["what"].pop("case_json_sha256", None) if r["action"] == "case_init" else None)


def test_an_old_unsigned_study_is_read_and_signed_from_its_next_change(final_study, images, tmp_path, capsys):
    study = sp.copy_study(final_study, tmp_path / "old")
    _as_old_study(study)
    s = Study(study)
    assert not s.signed and s.state("c1").status == "final"
    rc, out, err = cli(capsys, "verify", study)
    assert rc == 0 and "unsigned (created before version" in out and "not registered in the study log" in out, out
    # an edit of an old record whose chain was not recomputed is still noticed (the SHA-256 chain)
    log = study / "cases" / "c1" / "audit.jsonl"
    text = log.read_text()
    log.write_text(text.replace('"why": "checked"', '"why": "rewritten"'))
    assert cli(capsys, "status", study, "c1")[0] == 2
    log.write_text(text)
    # the next change signs: the reader list (and study.json as found), then the case's trail
    assert cli(capsys, "reader", "add", study, "--id", "ann3", "--title", "attending", "--years", "7",
               "--neuro-years", "3")[0] == 0
    assert Study(study).signed and (study / "readers.jsonl.head").exists()
    rc, out, err = cli(capsys, "quality", study, "c1", "--series", "dwi", "--reader", "rev1", "--likert", "4",
                       "--snr", "20", "--cnr", "5")
    assert rc == 0, err
    recs = AuditLog(log).records()
    assert "sig" not in recs[0] and recs[-1]["legacy"]["records"] == len(recs) - 1 and recs[-1]["sig"]
    rc, out, err = cli(capsys, "verify", study)
    assert rc == 0 and "frozen as found when signing began" in out, out
    # the unsigned part is frozen now: editing it and recomputing the whole chain is noticed
    _rechain(log, 2, lambda r: r["what"].update(reader="rev1"))
    rc, out, err = cli(capsys, "verify", study)
    assert rc == 1 and "are not those the log was signed after" in out, out


def test_status_is_blinded_unless_the_coordinator_asks(images, tmp_path, site_key, capsys):
    s = sp.build_study(tmp_path / "study", images, until="annotated")
    masks = ("c1_dwi_lesion-annotatorA", "c1_dwi_lesion-annotatorB")
    rc, out, err = cli(capsys, "status", s.root, "c1", "--json")
    v = json.loads(out)
    assert rc == 0 and v["view"] == "blinded" and not any(m in out for m in masks)
    assert v["annotations"]["annotatorB"] == {"submitted": True, "hidden": "blinded until the case is final"}
    rc, out, err = cli(capsys, "status", s.root, "c1", "--reader", "ann1")
    assert rc == 0 and masks[0] in out and masks[1] not in out
    rc, out, err = cli(capsys, "status", s.root, "c1", "--coordinator")
    assert rc == 0 and masks[0] in out and masks[1] in out
    rc, out, err = cli(capsys, "status", s.root, "c1", "--reader", "ann1", "--coordinator")
    assert rc == 2 and len(_errors(err)) == 1
    s.compare("c1", by="coord")
    rc, out, err = cli(capsys, "status", s.root, "--json")
    assert "dice_A_B" not in json.loads(out)[0]                  # agreement is not for everyone's eyes yet
    rc, out, err = cli(capsys, "status", s.root, "--json", "--coordinator")
    assert json.loads(out)[0]["dice_A_B"] == pytest.approx(36 / 37)


def test_export_strips_identifiers_and_redacts_the_audit_trail(final_study, images, tmp_path, capsys):
    import nibabel as nib

    from StrokeLesionLib.bids import SIDECAR_ALLOW_LIST, bids_metadata_keys
    ds = tmp_path / "ds"
    rc, out, err = cli(capsys, "export-bids", final_study, ds, "--name", "x", "--author", "y", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["removed"]["sidecar_keys_deidentification"] == ["InstitutionName", "PatientName"]
    assert rep["removed"]["sidecar_keys_not_in_bids_schema"] == ["ProcedureStepDescription", "SiteNote"]
    assert rep["removed"]["nifti_extensions"] == 2 and rep["removed"]["schema"].startswith("bidsschematools")
    keys, _ = bids_metadata_keys()
    for p in ds.rglob("*"):
        if p.is_file():
            raw = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
            for secret in (b"Zhang", b"H123456789", b"Realname", b"St Elsewhere", b"ward 7", str(images["dwi"].parent)
                           .encode(), os.fsencode(str(final_study))):
                assert secret not in raw, (p, secret)
    dwi = nib.load(str(ds / "sub-c1" / "ses-01" / "dwi" / "sub-c1_ses-01_dwi.nii.gz"))
    assert len(dwi.header.extensions) == 0
    for side in (ds / "sub-c1" / "ses-01" / "dwi").glob("*.json"):
        assert set(json.loads(side.read_text())) <= keys | set(SIDECAR_ALLOW_LIST), side
    audit = [json.loads(ln) for ln in (ds / "derivatives" / "lesions" / "sourcedata" / "audit" /
                                        "sub-c1_ses-01_audit.jsonl").read_text().splitlines()]
    ann = next(r for r in audit if r["action"] == "annotate")
    assert ann["what"]["input"] == "mask.nii.gz" and ann["who"] == "ann1" and "os_user" not in ann
    assert {r["who"] for r in audit} <= {"coordinator", "system", "ann1", "ann2", "rev1", "arb1"}
    readers = [json.loads(ln) for ln in (ds / "derivatives" / "lesions" / "sourcedata" /
                                          "readers.jsonl").read_text().splitlines()]
    assert all("name" not in r["what"] for r in readers if r["action"] == "reader")


def test_the_shipped_bids_key_list_is_the_installed_schema():
    bst = pytest.importorskip("bidsschematools", reason="bidsschematools (a test dependency) is not installed")
    from bidsschematools import schema

    from StrokeLesionLib.bids import bids_metadata_keys
    s = schema.load_schema()
    keys, source = bids_metadata_keys()
    assert keys == frozenset(v["name"] for v in s.objects.metadata.values()), \
        "regenerate StrokeLesionLib/bids_schema_keys.py (see its docstring)"
    assert source == f"bidsschematools {bst.__version__} (BIDS {s.bids_version}, schema {s.schema_version})"
    assert {"MagneticFieldStrength", "EchoTime", "RepetitionTime", "Units"} <= keys
    assert not {"PatientName", "ProcedureStepDescription", "DiffusionBValue"} & keys


def test_uncompressed_nii_dwi_exports_its_bval(tmp_path, site_key, capsys):
    im = sp.write_images(tmp_path / "in", suffix=".nii", extension=False)
    (tmp_path / "in" / "ph_dwi.bval").write_text("1000\n")
    (tmp_path / "in" / "ph_dwi.bvec").write_text("1\n0\n0\n")
    s = sp.build_study(tmp_path / "study", im)
    assert s.case_info("c1")["images"]["dwi"]["bval"] == "images/c1_dwi.bval"
    rc, out, err = cli(capsys, "export-bids", s.root, tmp_path / "ds", "--name", "x", "--author", "y")
    assert rc == 0, err
    assert (tmp_path / "ds" / "sub-c1" / "ses-01" / "dwi" / "sub-c1_ses-01_dwi.bval").read_text() == "1000\n"


def test_torn_last_line_is_ignored_reported_and_cut_by_the_next_change(images, tmp_path, site_key, capsys):
    s = sp.build_study(tmp_path / "study", images, until="created")
    log = s.root / "cases" / "c1" / "audit.jsonl"
    with open(log, "ab") as f:
        f.write(b'{"action": "annotate", "what": {"slot": "annot')        # an append cut by a crash
    rc, out, err = cli(capsys, "status", s.root, "c1", "--coordinator")
    assert rc == 0 and "last line is incomplete" in err and "annotating" in out
    rc, out, err = cli(capsys, "annotate", s.root, "c1", "--reader", "ann1", "--mask", images["mask"])
    assert rc == 0, err
    assert log.read_bytes().endswith(b"\n") and cli(capsys, "verify", s.root)[0] == 0


def test_deid_overlays_file_meta_and_secondary_captures(tmp_path, capsys):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("dicomanonymizer")
    from test_stroke_deid import make_dicom
    src = tmp_path / "in"
    src.mkdir()
    make_dicom(src / "a.dcm")
    ds = pydicom.dcmread(str(src / "a.dcm"))
    ds.add_new(0x60000022, "LO", "Zhang San overlay")
    ds.add_new(0x60000010, "US", 8)
    ds.file_meta.SourceApplicationEntityTitle = "XIJING_MR3T"
    ds.save_as(str(src / "a.dcm"))
    rc, out, err = cli(capsys, "deid", "dicom", src, tmp_path / "out", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["overlay_curve_groups_removed"] == ["6000"]
    assert rep["file_meta_removed"] == ["SourceApplicationEntityTitle"]
    clean = pydicom.dcmread(str(tmp_path / "out" / "a.dcm"))
    assert 0x60000022 not in clean and "SourceApplicationEntityTitle" not in clean.file_meta
    assert b"XIJING" not in (tmp_path / "out" / "a.dcm").read_bytes() and b"Zhang" not in \
        (tmp_path / "out" / "a.dcm").read_bytes()
    # a secondary capture that may show the patient: refused like burned-in text, no partial output folder
    for flags in ({"RecognizableVisualFeatures": "YES"},
                  {"RecognizableVisualFeatures": "YES", "BurnedInAnnotation": "NO"}, {}):
        sc = pydicom.dcmread(str(src / "a.dcm"))
        sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        del sc.BurnedInAnnotation
        for k, v in flags.items():
            setattr(sc, k, v)
        sc.save_as(str(src / "z_sc.dcm"))
        rc, out, err = cli(capsys, "deid", "dicom", src, tmp_path / "refused")
        assert rc == 2 and "secondary capture" in err and len(_errors(err)) == 1, err
        assert not (tmp_path / "refused").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]
    # with --overwrite a refused run leaves the earlier output as it was
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    rc, out, err = cli(capsys, "deid", "dicom", src, tmp_path / "out", "--overwrite")
    assert rc == 2 and {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_masks_are_checked_against_the_trail_before_use(final_study, tmp_path, capsys):
    study = sp.copy_study(final_study, tmp_path / "study")
    cons = next((study / "cases" / "c1" / "masks" / "consensus").glob("*.nii.gz"))
    os.chmod(cons, 0o644)
    img = sitk.ReadImage(str(cons))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 1
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(cons))
    rc, out_, err = cli(capsys, "export-bids", study, tmp_path / "ds", "--name", "x", "--author", "y")
    assert rc == 2 and "changed after it was recorded" in err and not (tmp_path / "ds").exists()
