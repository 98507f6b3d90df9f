"""De-identification: a DICOM MR image built with pydicom, and the real ISLES'22 sidecars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ClinicalMRICommonLib.errors import UserError

pydicom = pytest.importorskip("pydicom", reason="pydicom (with dicom-anonymizer) is needed for DICOM de-identification")
pytest.importorskip("dicomanonymizer", reason="dicom-anonymizer is needed for DICOM de-identification")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402

from StrokeLesionLib import deid  # noqa: E402

STUDY_UID = generate_uid()


def make_dicom(path, *, burned_in=False):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.PatientName = "Zhang^San"
    ds.PatientID = "H123456789"
    ds.PatientBirthDate = "19640302"
    ds.PatientSex = "F"
    ds.PatientAge = "060Y"
    ds.PatientWeight = 82.0
    ds.PatientAddress = "1 Hospital Road, Xi'an"
    ds.AccessionNumber = "ACC0001"
    ds.InstitutionName = "Xijing Hospital"
    ds.ReferringPhysicianName = "Li^Si"
    ds.OperatorsName = "Wang^Wu"
    ds.StudyDate = "20250101"
    ds.StudyTime = "083000"
    ds.SeriesDescription = "DWI b1000 Zhang San"
    ds.DeviceSerialNumber = "SN-42"
    ds.StationName = "MR3T-ROOM2"
    ds.Manufacturer = "Philips Medical Systems"
    ds.MagneticFieldStrength = 3.0
    ds.EchoTime = 55.0
    ds.RepetitionTime = 9931.85
    ds.DiffusionBValue = 1000.0
    ds.SliceThickness = 2.0
    ds.PixelSpacing = [2.0, 2.0]
    ds.ImagePositionPatient = [-105.85, -122.02, 67.04]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", "patient Zhang San, bed 12")
    ds.Rows, ds.Columns = 8, 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = (np.arange(64, dtype=np.uint16) * 10).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_basic_profile(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    make_dicom(tmp_path / "in" / "a.dcm")
    make_dicom(tmp_path / "in" / "sub" / "b.dcm")
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    rep = deid.deidentify_folder(tmp_path / "in", tmp_path / "out")
    assert rep["n_files"] == 2 and rep["skipped_not_dicom"] == ["notes.txt"]
    a = pydicom.dcmread(str(tmp_path / "out" / "a.dcm"))
    b = pydicom.dcmread(str(tmp_path / "out" / "sub" / "b.dcm"))
    orig = pydicom.dcmread(str(tmp_path / "in" / "a.dcm"))
    text = str(a)
    for secret in ("Zhang", "H123456789", "19640302", "Xijing", "Li^Si", "Wang^Wu", "ACC0001", "SN-42",
                   "MR3T-ROOM2", "Hospital Road", "bed 12"):
        assert secret not in text, secret
    assert "PatientAge" not in a and "PatientWeight" not in a and "SeriesDescription" not in a
    assert a.StudyDate != "20250101"
    # UIDs replaced, consistently across the run (same study for both files)
    assert a.StudyInstanceUID != STUDY_UID and a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SOPInstanceUID != orig.SOPInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    # acquisition parameters (action K) and pixels kept
    assert (a.EchoTime, a.RepetitionTime, a.MagneticFieldStrength, a.DiffusionBValue) == (55.0, 9931.85, 3.0, 1000.0)
    assert a.Manufacturer == "Philips Medical Systems"
    np.testing.assert_array_equal(a.pixel_array, orig.pixel_array)
    # the profile's own record of what was done
    assert a.PatientIdentityRemoved == "YES"
    assert a.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert "Basic Application Level Confidentiality Profile" in a.DeidentificationMethod
    # never over existing output; burned-in annotation refused
    with pytest.raises(UserError, match="not empty"):
        deid.deidentify_folder(tmp_path / "in", tmp_path / "out")
    make_dicom(tmp_path / "burned.dcm", burned_in=True)
    with pytest.raises(UserError, match="Burned In Annotation"):
        deid.deidentify_file(tmp_path / "burned.dcm", tmp_path / "burned_out.dcm")
    assert not (tmp_path / "burned_out.dcm").exists()
    (tmp_path / "junk.dcm").write_bytes(b"nope")
    with pytest.raises(UserError, match="could not be read as DICOM"):
        deid.deidentify_file(tmp_path / "junk.dcm", tmp_path / "junk_out.dcm")


def test_keep_patient_characteristics_option(tmp_path):
    make_dicom(tmp_path / "a.dcm")
    deid.deidentify_file(tmp_path / "a.dcm", tmp_path / "o.dcm", keep_patient_characteristics=True)
    o = pydicom.dcmread(str(tmp_path / "o.dcm"))
    assert (o.PatientAge, o.PatientSex, o.PatientWeight) == ("060Y", "F", 82.0)
    assert "Zhang" not in str(o.PatientName)
    assert [c.CodeValue for c in o.DeidentificationMethodCodeSequence] == ["113100", "113108"]


def test_isles_sidecar_cleaned(shared_data, tmp_path):
    src = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001" / "sub-strokecase0009_ses-0001_dwi.json"
    rep = deid.clean_sidecar_file(src, tmp_path / "dwi.json")
    clean = json.loads((tmp_path / "dwi.json").read_text())
    assert set(rep["removed"]) == {"PatientSex", "PatientAge", "PatientWeight"}
    assert not {"PatientSex", "PatientAge", "PatientWeight"} & set(clean)
    assert clean["DiffusionBValue"] == 800.0 and clean["EchoTime"] == 55.0 and clean["MagneticFieldStrength"] == 3.0
    assert rep["kept_non_dicom"] == ["dataset"]
    # a dcm2niix-style sidecar with identifying fields
    meta = {"PatientName": "Zhang^San", "PatientID": "X1", "AcquisitionDateTime": "2025-01-01T08:30:00",
            "InstitutionName": "Xijing", "DeviceSerialNumber": "SN-42", "SeriesInstanceUID": "1.2.3",
            "ProtocolName": "DWI Zhang", "RepetitionTime": 9.9, "PhaseEncodingDirection": "j-"}
    clean, rep = deid.clean_sidecar(meta)
    assert clean == {"RepetitionTime": 9.9, "PhaseEncodingDirection": "j-"}
    assert rep["kept_non_dicom"] == ["PhaseEncodingDirection"]


def test_deid_command_line(tmp_path, capsys):
    from StrokeLesionLib.cli import main
    (tmp_path / "in").mkdir()
    make_dicom(tmp_path / "in" / "a.dcm")
    capsys.readouterr()
    assert main(["deid", "dicom", str(tmp_path / "in"), str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_files"] == 1
    assert "Zhang" not in str(pydicom.dcmread(str(tmp_path / "out" / "a.dcm")))
    assert main(["deid", "dicom", str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["deid", "dicom", str(tmp_path / "in"), str(tmp_path / "out"), "--overwrite"]) == 0
    assert "Zhang" not in str(pydicom.dcmread(str(tmp_path / "out" / "a.dcm")))
    assert main(["deid", "dicom", str(tmp_path / "in" / "a.dcm"), str(tmp_path / "in" / "a.dcm"), "--overwrite"]) == 2
    assert "also an input" in capsys.readouterr().err
    (tmp_path / "s.json").write_text(json.dumps({"PatientName": "Zhang^San", "EchoTime": 0.055}))
    assert main(["deid", "sidecar", str(tmp_path / "s.json"), str(tmp_path / "s_clean.json")]) == 0
    assert json.loads((tmp_path / "s_clean.json").read_text()) == {"EchoTime": 0.055}
