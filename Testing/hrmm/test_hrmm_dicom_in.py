"""DICOM in and the input warnings of issue 13: DICOM series folders in the cohort manifest,
extraction and prediction (through ClinicalMRICommonLib.images.read_image); warnings for the
same file given twice, ROIs at the edge of the field of view and intensity images as ROIs;
single-slice series refused (not an N4 traceback); truncated, NaN and vector images refused
by the manifest's validation (``hrmm validate``)."""

from __future__ import annotations

import gzip
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import InputWarning, UserError
from HRMMPredictLib.cohort import load_cohort_manifest
from HRMMPredictLib.predict import predict_case
from HRMMPredictLib.radiomics.features import (PreprocessConfig, extract_case_sequence, extract_cohort,
                                               extract_radiomics, load_params, SMALL_PARAMS)
from HRMMPredictLib.sequences import SEQUENCES

LABEL = 33      # one vertebra of the TotalSegmentator map


@pytest.fixture()
def dicom_case(shared_data, tmp_path):
    """Three copies of the real CT DICOM series (as T1WI, T2WI, FS-T2WI folders) and an ROI
    (label 33, slices 4-15) stored y-flipped, as dcm2niix stores the segmentation."""
    src = shared_data / "dicom" / "ct_totalsegmentator"
    folders = {}
    for s in SEQUENCES:
        folders[s] = tmp_path / f"dicom_{s}"
        shutil.copytree(src / "series", folders[s])
    seg = sitk.ReadImage(str(src / "example_seg_dicom.nii.gz"))
    arr = (sitk.GetArrayFromImage(seg) == LABEL).astype(np.uint8)
    arr[:4] = 0
    arr[16:] = 0          # the series has 20 slices: keep the ROI off its first and last ones
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(seg)
    roi = tmp_path / "roi.nii.gz"
    sitk.WriteImage(mask, str(roi), True)
    return folders, roi


def _manifest(tmp_path, rows, name="cohort.csv"):
    p = tmp_path / name
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def _row(lesion, images, roi, label=1):
    return {"patient_id": f"P{lesion}", "lesion_id": f"L{lesion}", "label": label,
            **{s: str(images[s]) for s in SEQUENCES}, "roi": str(roi)}


def test_cohort_manifest_with_dicom_folders_extracts_like_nifti(dicom_case, tmp_path):
    folders, roi = dicom_case
    nifti = {}
    for s in SEQUENCES:
        nifti[s] = tmp_path / f"{s}.nrrd"
        sitk.WriteImage(sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folders[s]))), str(nifti[s]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)      # a clean case: no warning
        cohort = load_cohort_manifest(_manifest(tmp_path, [_row(1, folders, roi), _row(2, nifti, roi, 0)]))
    params = load_params(SMALL_PARAMS)
    tables = extract_cohort(cohort, tmp_path / "cache", params, n_jobs=1)["roi"]
    dicom_row, nifti_row = tables.loc["L1"], tables.loc["L2"]
    assert len(dicom_row) == 3 * 35
    np.testing.assert_allclose(dicom_row.to_numpy(float), nifti_row.to_numpy(float), rtol=1e-6)
    # the cache key of a DICOM folder hashes its files: a rerun reads the cache
    again = extract_cohort(cohort, tmp_path / "cache", params, n_jobs=1)["roi"]
    pd.testing.assert_frame_equal(again, tables)


def test_predict_from_dicom_folders(dicom_case, trained_bundle):
    folders, roi = dicom_case
    res = predict_case({s: folders[s] for s in SEQUENCES}, roi, trained_bundle[0], preview=False)
    assert 0.0 <= res["probability"] <= 1.0
    assert not any("same file" in w for w in res["warnings"])


def test_same_file_for_two_sequences_is_warned(dicom_case, tmp_path, trained_bundle):
    folders, roi = dicom_case
    images = dict(folders, t2=folders["t1"])
    with pytest.warns(InputWarning, match=r"row 2: the same file .*dicom_t1 is given for T1WI and T2WI"):
        load_cohort_manifest(_manifest(tmp_path, [_row(1, images, roi)]))
    res = predict_case(images, roi, trained_bundle[0], preview=False)
    assert any("the same file" in w and "T1WI and T2WI" in w for w in res["warnings"])


def test_roi_at_the_edge_of_the_field_of_view_is_warned(dicom_case, tmp_path):
    folders, _ = dicom_case
    img = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folders["t1"])))
    arr = np.zeros(sitk.GetArrayViewFromImage(img).shape, np.uint8)
    arr[5:12, 200:240, 0:30] = 1               # columns 0..29: the patient's right edge of this axial CT
    edge = sitk.GetImageFromArray(arr)
    edge.CopyInformation(img)
    edge_file = tmp_path / "edge.nrrd"
    sitk.WriteImage(edge, str(edge_file))
    with pytest.warns(InputWarning, match=r"row 2: roi: the ROI touches the right edge"):
        load_cohort_manifest(_manifest(tmp_path, [_row(1, folders, edge_file)]))
    with pytest.warns(InputWarning, match="touches the right edge"):
        extract_case_sequence(folders["t1"], edge_file, load_params(SMALL_PARAMS), PreprocessConfig())
    seen = []
    extract_radiomics(img, edge, load_params(SMALL_PARAMS), on_warning=seen.append)
    assert len(seen) == 1 and "right edge" in seen[0]


def test_intensity_image_given_as_roi(dicom_case, tmp_path, shared_data):
    folders, _ = dicom_case
    # the image file itself as the ROI: refused, naming it
    nifti_t1 = tmp_path / "t1.nii.gz"
    sitk.WriteImage(sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folders["t1"]))), str(nifti_t1))
    images = dict(folders, t1=nifti_t1)
    with pytest.raises(UserError, match=r"row 2: roi is the t1 image file"):
        load_cohort_manifest(_manifest(tmp_path, [_row(1, images, nifti_t1)]))
    # an 8-bit image with few grey values (passes the label checks) covering the field of view
    img = sitk.ReadImage(str(nifti_t1))
    coarse = sitk.Cast(sitk.Clamp((sitk.Cast(img, sitk.sitkFloat32) + 1100) / 200 + 1, lowerBound=1, upperBound=20), sitk.sitkUInt8)
    coarse_file = tmp_path / "coarse.nii.gz"
    sitk.WriteImage(coarse, str(coarse_file))
    with pytest.warns(InputWarning, match=r"covers 100% of the t1 image's field of view: is an intensity image"):
        load_cohort_manifest(_manifest(tmp_path, [_row(1, images, coarse_file)], "c2.csv"))


def test_single_slice_series_is_refused(dicom_case, tmp_path, trained_bundle):
    folders, roi = dicom_case
    one = tmp_path / "one_slice"
    one.mkdir()
    shutil.copy(sorted(folders["t1"].iterdir())[5], one)
    images = dict(folders, t1=one)
    with pytest.raises(UserError, match=r"row 2: t1 image .*one_slice has a single slice \(size 512 x 512 x 1\)"):
        load_cohort_manifest(_manifest(tmp_path, [_row(1, images, roi)]))
    with pytest.raises(UserError, match="single slice"):
        extract_case_sequence(one, roi, load_params(SMALL_PARAMS), PreprocessConfig(), resample_roi=True)
    with pytest.raises(UserError, match="T1WI image .*one_slice has a single slice"):
        predict_case(images, roi, trained_bundle[0], preview=False)


def test_validate_refuses_truncated_nan_and_vector_images(small_cohort, tmp_path):
    row = pd.read_csv(small_cohort).iloc[0]
    base = small_cohort.parent
    rows = {s: base / row[s] for s in SEQUENCES}
    roi = base / row["roi"]
    good = sitk.ReadImage(str(rows["t1"]))
    # truncated gzip
    truncated = tmp_path / "truncated.nii.gz"
    data = (rows["t1"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    # NaN voxels
    arr = sitk.GetArrayFromImage(good).astype(np.float32)
    arr[2, 10, 10] = np.nan
    nan_img = sitk.GetImageFromArray(arr)
    nan_img.CopyInformation(good)
    nan_file = tmp_path / "nan.nii.gz"
    sitk.WriteImage(nan_img, str(nan_file))
    # a vector image (3 components per voxel)
    vec = sitk.Compose(good, good, good)
    vec_file = tmp_path / "vector.nrrd"
    sitk.WriteImage(vec, str(vec_file))
    manifest = _manifest(tmp_path, [_row(1, dict(rows, t1=truncated), roi), _row(2, dict(rows, t2=nan_file), roi),
                                    _row(3, dict(rows, fst2=vec_file), roi)])
    with pytest.raises(UserError) as info:
        load_cohort_manifest(manifest)
    msg = str(info.value)
    assert "3 problem(s)" in msg
    assert "row 2:" in msg and "truncated.nii.gz" in msg
    assert "row 3:" in msg and "nan.nii.gz" in msg and "NaN" in msg
    assert "row 4:" in msg and "vector.nrrd" in msg and "3 components" in msg
    assert gzip  # the truncation is a cut gzip stream
