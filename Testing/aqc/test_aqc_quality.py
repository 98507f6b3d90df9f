"""Image quality: hand-computed SNR/CNR, grade/Likert records and flags, the quality log and
its effect on a reader study (flagged series are not offered), and the quality command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main
from AnnotationQCLib.quality import record_quality
from AnnotationQCLib.sessions import ReaderStudy
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.quality import flagged_series, make_record, read_quality_log, snr_cnr, snr_cnr_from_labelmap


def _im(arr, dtype=np.float32):
    x = sitk.GetImageFromArray(np.asarray(arr, dtype=dtype))
    x.SetSpacing((1.0, 1.0, 2.0))
    return x


@pytest.fixture
def phantom():
    """Signal 100 (4 voxels), tissue 40 (4 voxels), background 9/11 alternating (4 voxels):
    background SD (ddof 1) = sqrt(4 / 3)."""
    img = np.zeros((1, 3, 4))
    img[0, 0] = 100
    img[0, 1] = 40
    img[0, 2] = [9, 11, 9, 11]
    lab = np.zeros((1, 3, 4), np.uint8)
    lab[0, 0], lab[0, 1], lab[0, 2] = 1, 3, 2
    return _im(img), _im(lab, np.uint8)


def test_snr_cnr_hand_computed(phantom):
    img, lab = phantom
    sd = math.sqrt(4 / 3)
    r = snr_cnr_from_labelmap(img, lab, signal=1, background=2, tissue=3)
    assert r["snr"] == pytest.approx(100 / sd)
    assert r["cnr"] == pytest.approx(60 / sd)
    assert (r["n_signal"], r["n_background"], r["n_tissue"]) == (4, 4, 4)
    rr = snr_cnr_from_labelmap(img, lab, rayleigh_correction=True)
    assert rr["snr"] == pytest.approx(100 * 0.655 / sd) and rr["noise_sd"] == pytest.approx(sd / 0.655)
    # without a tissue label there is no CNR
    no_t = snr_cnr_from_labelmap(img, lab, tissue=7)
    assert no_t["cnr"] is None and no_t["snr"] == pytest.approx(100 / sd)


def test_snr_errors(phantom, shared_data):
    img, lab = phantom
    la = sitk.GetArrayFromImage(lab)
    empty = _im(np.zeros_like(la), np.uint8)
    with pytest.raises(UserError, match="signal ROI is empty"):
        snr_cnr(img, empty, _im(la == 2, np.uint8))
    other = _im(la == 1, np.uint8)
    other.SetSpacing((2.0, 2.0, 2.0))
    with pytest.raises(UserError, match="not on the image grid"):
        snr_cnr(img, other, _im(la == 2, np.uint8))
    # real data: the ISLES'22 DWI has a zero-filled background, which cannot give a noise SD
    case = shared_data / "isles22"
    dwi = sitk.ReadImage(str(case / "rawdata/sub-strokecase0009/ses-0001/sub-strokecase0009_ses-0001_dwi.nii.gz"))
    lesion = sitk.ReadImage(str(case / "derivatives/sub-strokecase0009/ses-0001/"
                                "sub-strokecase0009_ses-0001_msk.nii.gz"))
    corner = np.zeros(sitk.GetArrayViewFromImage(dwi).shape, np.uint8)
    corner[:, :8, :8] = 1
    air = sitk.GetImageFromArray(corner)
    air.CopyInformation(dwi)
    with pytest.raises(UserError, match="no noise.*zero-filled"):
        snr_cnr(dwi, lesion, air)


def test_records_and_flags():
    ok = make_record("c1", "T2", "r1", grade=2)
    assert not ok["flagged"] and ok["reason"] == ""
    bad = make_record("c1", "DWI", "r1", likert=2, reason="motion")
    assert bad["flagged"] and bad["flag_reasons"] == ["Likert 2 < 3"]
    assert make_record("c1", "T2", "r1", grade=1, reason="ghosting")["flag_reasons"] == ["grade 1 < 2"]
    assert make_record("c1", "T2", "r1", likert=3, snr=8.0, min_snr=10, reason="noisy")["flagged"]
    with pytest.raises(UserError, match="give the reason"):
        make_record("c1", "T2", "r1", grade=1)
    with pytest.raises(UserError, match="grade must be 1, 2 or 3"):
        make_record("c1", "T2", "r1", grade=4)
    with pytest.raises(UserError, match="Likert score must be 1-5"):
        make_record("c1", "T2", "r1", likert=0)
    with pytest.raises(UserError, match="grade .* or a Likert"):
        make_record("c1", "T2", "r1")


def test_log_and_reader_study(tmp_path):
    src = tmp_path / "img.nii.gz"
    sitk.WriteImage(_im(np.random.default_rng(0).normal(size=(4, 8, 8))), str(src))
    study = ReaderStudy.create(tmp_path / "study", "stroke")
    study.add_reader("r1")
    study.add_case("c1", "P1", {"DWI": src, "FLAIR": src})
    study.add_case("c2", "P2", {"DWI": src})
    record_quality(study.folder, "c1", "DWI", "qa1", likert=2, reason="susceptibility artefact")
    record_quality(study.folder, "c2", "DWI", "qa1", likert=4)
    with pytest.raises(UserError, match="has no 'T1' image"):
        record_quality(study.folder, "c2", "T1", "qa1", likert=4)
    assert flagged_series(read_quality_log(study.folder / "quality.jsonl")) == [("c1", "DWI")]
    view = study.case_list("r1")
    assert view == [{"case_id": "c1", "patient_id": "P1", "status": {"FLAIR": "not started"}},
                    {"case_id": "c2", "patient_id": "P2", "status": {"DWI": "not started"}}]
    with pytest.raises(UserError, match="insufficient image quality"):
        study.start_reading("r1", "c1", "DWI")
    # a later record of the same rater replaces the earlier one (re-scanned series)
    record_quality(study.folder, "c1", "DWI", "qa1", likert=4)
    assert flagged_series(read_quality_log(study.folder / "quality.jsonl")) == []
    # any rater's latest record flagging the series is enough
    record_quality(study.folder, "c2", "DWI", "qa2", grade=1, reason="blurred")
    assert flagged_series(read_quality_log(study.folder / "quality.jsonl")) == [("c2", "DWI")]
    assert len(read_quality_log(study.folder / "quality.jsonl")) == 4  # append-only


def test_quality_cli(tmp_path, phantom, capsys):
    img, lab = phantom
    la = sitk.GetArrayFromImage(lab)
    paths = {}
    for name, v in (("signal", 1), ("background", 2), ("tissue", 3)):
        m = _im(la == v, np.uint8)
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(m, str(paths[name]))
    ip = tmp_path / "img.nii.gz"
    sitk.WriteImage(img, str(ip))
    args = ["quality", "--image", str(ip), "--signal", str(paths["signal"]), "--background",
            str(paths["background"]), "--tissue", str(paths["tissue"]), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["snr"] == pytest.approx(100 / math.sqrt(4 / 3)) and out["cnr"] == pytest.approx(60 / math.sqrt(4 / 3))
    assert main(["quality", "--image", str(ip), "--signal", str(paths["signal"]), "--background",
                 str(paths["signal"])]) == 2
    assert "no noise" in capsys.readouterr().err
