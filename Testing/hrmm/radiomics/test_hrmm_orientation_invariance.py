"""The same lesion gives the same numbers whatever order its files store the voxels in
(issue 13): every feature of the study's settings (3 x 1197) equal to 1e-6 relative and the
same probability from a trained bundle, for flips and axis permutations stored as NIfTI and
NRRD, and for a real DICOM series with its segmentation stored y-flipped (dcm2niix)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.images import read_image
from HRMMPredictLib.bundle import load_bundle
from HRMMPredictLib.radiomics.features import (DEFAULT_PARAMS, PreprocessConfig, crop_box, extract_case_sequence,
                                               load_params, to_canonical)
from HRMMPredictLib.predict import predict_case
from HRMMPredictLib.sequences import SEQUENCES

# storage orders (DICOM letters of index axes i, j, k): the synthetic cohort's own PIR, the
# ITK identity, the NIfTI/dcm2niix RAS, permutations, and two left-handed (mirror) storages
ORDERS = ("PIR", "LPS", "RAS", "SPR", "IAL", "RIP", "PIL", "ASR")
RTOL = 1e-6


def _resave(src, dst, code):
    sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(src)), code), str(dst), True)
    return dst


def _stored_lesion(manifest, tmp_path, code, ext):
    cohort_dir = manifest.parent
    row = pd.read_csv(manifest).iloc[0]
    out = {}
    for col in (*SEQUENCES, "roi"):
        out[col] = _resave(cohort_dir / row[col], tmp_path / f"{code}_{col}{ext}", code)
    return out


def _assert_same_features(ref: dict, got: dict, what: str):
    assert list(got) == list(ref), what
    a, b = np.array(list(ref.values())), np.array(list(got.values()))
    bad = ~np.isclose(b, a, rtol=RTOL, atol=1e-12)
    worst = [(k, ref[k], got[k]) for k, m in zip(ref, bad) if m][:5]
    assert not bad.any(), f"{what}: {int(bad.sum())} feature(s) differ, e.g. {worst}"


@pytest.fixture(scope="module")
def full_params():
    return load_params(DEFAULT_PARAMS)


def test_every_feature_equal_in_every_storage_order(small_cohort, tmp_path, full_params):
    cfg = PreprocessConfig()
    ref = None
    for code in ORDERS:
        for ext in (".nii.gz", ".nrrd"):
            files = _stored_lesion(small_cohort, tmp_path, code, ext)
            if code != "PIR":
                assert read_image(files["t1"]).GetDirection() != read_image(_stored_lesion(
                    small_cohort, tmp_path, "PIR", ".nii.gz")["t1"]).GetDirection()
            feats = {s: extract_case_sequence(files[s], files["roi"], full_params, cfg) for s in SEQUENCES}
            assert all(len(f) == 1197 for f in feats.values())
            if ref is None:
                ref = feats
                continue
            for s in SEQUENCES:
                _assert_same_features(ref[s], feats[s], f"{s} stored {code}{ext}")


def test_margins_are_anatomical(small_cohort, tmp_path):
    """(16, 16, 10) mm = anterior-posterior, superior-inferior, right-left in every storage."""
    boxes = set()
    for code in ("PIR", "LPS", "SPR"):
        files = _stored_lesion(small_cohort, tmp_path, code, ".nii.gz")
        img, mask = to_canonical(read_image(files["t1"]), read_image(files["roi"]))
        assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == "PIR"
        boxes.add(tuple(map(tuple, crop_box(mask, PreprocessConfig()))))
    assert len(boxes) == 1


def test_same_probability_in_every_storage_order(small_cohort, tmp_path, trained_bundle):
    bundle_dir, _ = trained_bundle
    probs = {}
    for code, ext in (("PIR", ".nii.gz"), ("RAS", ".nii.gz"), ("SPR", ".nrrd"), ("LPS", ".nrrd")):
        files = _stored_lesion(small_cohort, tmp_path, code, ext)
        res = predict_case({s: files[s] for s in SEQUENCES}, files["roi"], bundle_dir, preview=False)
        probs[code] = {m: r["probability"] for m, r in res["models"].items()}
    ref = probs["PIR"]
    for code, p in probs.items():
        for m in ref:
            assert p[m] == pytest.approx(ref[m], rel=1e-9, abs=1e-12), (code, m)


def test_roi_stored_in_another_order_is_reordered_not_resampled(small_cohort, tmp_path):
    row = pd.read_csv(small_cohort).iloc[0]
    image = small_cohort.parent / row["t1"]
    roi = _resave(small_cohort.parent / row["roi"], tmp_path / "roi_RAS.nii.gz", "RAS")
    params = load_params(None)
    same = extract_case_sequence(image, small_cohort.parent / row["roi"], params, PreprocessConfig())
    other = extract_case_sequence(image, roi, params, PreprocessConfig())   # no --resample-roi needed
    _assert_same_features(same, other, "ROI stored RAS")


def test_dicom_series_with_y_flipped_segmentation(shared_data, tmp_path, full_params):
    """A real CT series read from its DICOM folder, its TotalSegmentator label map stored the
    dcm2niix way (y flipped); label 33 (a vertebra) as ROI; the same image re-saved as NIfTI
    and NRRD in other orders gives the same 1197 features."""
    folder = shared_data / "dicom" / "ct_totalsegmentator"
    seg = sitk.ReadImage(str(folder / "example_seg_dicom.nii.gz"))
    roi = sitk.Cast(seg == 33, sitk.sitkUInt8)
    roi_file = tmp_path / "roi_label33.nii.gz"
    sitk.WriteImage(roi, str(roi_file), True)
    series = folder / "series"
    dicom_img = read_image(series)
    assert dicom_img.GetDirection() != seg.GetDirection()        # the segmentation is stored otherwise
    cfg = PreprocessConfig()
    ref = extract_case_sequence(series, roi_file, full_params, cfg)
    assert len(ref) == 1197
    for code, ext in (("RAS", ".nii.gz"), ("PIR", ".nrrd"), ("LPI", ".nii.gz")):
        img_file = tmp_path / f"ct_{code}{ext}"
        sitk.WriteImage(sitk.DICOMOrient(dicom_img, code), str(img_file), True)
        _assert_same_features(ref, extract_case_sequence(img_file, roi_file, full_params, cfg), f"CT {code}{ext}")


def _bundle_with_preprocess(src, folder, edit) -> dict:
    """A copy of bundle ``src`` in ``folder`` whose manifest's preprocessing record was
    changed by ``edit(record)`` in place (what an older release recorded); returns the record."""
    shutil.copytree(src, folder)
    mf = folder / "manifest.json"
    man = json.loads(mf.read_text())
    prep = man["radiomics"]["preprocess"]
    edit(prep)
    mf.write_text(json.dumps(man))
    return prep


def test_bundle_of_preprocessing_v1_is_refused(trained_bundle, tmp_path):
    src, _ = trained_bundle
    old = tmp_path / "old_bundle"

    def to_v1(prep):
        assert prep["version"] == 3 and prep["orientation"] == "PIR"
        del prep["version"], prep["orientation"]                 # what v1 bundles recorded

    _bundle_with_preprocess(src, old, to_v1)
    with pytest.raises(UserError, match=r"trained with preprocessing v1 \(storage-order dependent\); .*"
                                        r"retrain with hrmm train"):
        load_bundle(old)


def test_bundle_of_preprocessing_v2_still_predicts_with_its_own_n4(trained_bundle, small_cohort, tmp_path):
    """A bundle trained before v3 (its record: version 2, two N4 levels of 50, no FWHM/spline
    fields) loads and predicts with v2's N4: every feature equals an extraction with v2's
    settings and differs from v3's."""
    from HRMMPredictLib.cohort import load_cohort_manifest

    src, _ = trained_bundle
    old = tmp_path / "v2_bundle"

    def to_v2(prep):
        for k in ("n4_fwhm", "n4_control_points", "n4_spline_order"):
            del prep[k]
        prep.update({"version": 2, "n4_iterations": [50, 50], "n4_fitting_levels": 2})

    prep = _bundle_with_preprocess(src, old, to_v2)
    bundle = load_bundle(old)
    row = load_cohort_manifest(small_cohort).iloc[0]
    res = predict_case({s: row[s] for s in SEQUENCES}, row["roi"], bundle)
    v2 = PreprocessConfig.from_dict(prep)
    from HRMMPredictLib.radiomics.features import load_params

    params = load_params(old / "radiomics_params.yaml")
    seq_of = {"T1WI": "t1", "T2WI": "t2", "FS-T2WI": "fst2"}
    assert res["features"]
    differs = 0
    for f in res["features"]:
        seq = seq_of[f["sequence"]]
        want = extract_case_sequence(row[seq], row["roi"], params, v2, feature_names=[f["feature"]])
        assert f["value"] == want[f["feature"]], f["name"]
        now = extract_case_sequence(row[seq], row["roi"], params, PreprocessConfig(), feature_names=[f["feature"]])
        differs += now[f["feature"]] != want[f["feature"]]
    assert differs > 0
