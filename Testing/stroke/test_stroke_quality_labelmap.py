"""``stroke-lesion quality`` measures SNR/CNR from an ROI label map with the label-map checks of
ClinicalMRICommonLib.quality (the ones ``annotation-qc quality grade`` has): on the series'
grid, whole labels 0-3, signal and background present; each refusal is one UserError and no
record is written. On the synthetic phantom the measured SNR is checked against numpy."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
from stroke_phantom import LESION, build_study, write_images

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.quality import snr_cnr_from_labelmap


@pytest.fixture
def study(tmp_path):
    images = write_images(tmp_path / "img", extension=False)
    return build_study(tmp_path / "study", images, until="created"), images


def _labels(images, tmp_path, name, change=None):
    dwi = sitk.ReadImage(str(images["dwi"]))
    lab = np.zeros(sitk.GetArrayViewFromImage(dwi).shape, np.float32)
    lab[LESION] = 1
    lab[2:8, 4:8, 4:8] = 2                      # inside the phantom: noise
    lab[2:8, 16:20, 16:20] = 3
    img = sitk.GetImageFromArray(lab)
    img.CopyInformation(dwi)
    if change is not None:
        img = change(img, lab)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path, lab


def _reread(arr, like):
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(like)
    return img


def test_stroke_quality_measures_with_the_common_checks(study, tmp_path):
    s, images = study
    ok, lab = _labels(images, tmp_path, "roi.nii.gz")
    rec = s.record_quality("c1", "dwi", reader_id="rev1", likert=4, roi_labelmap=ok)["what"]
    d = sitk.GetArrayFromImage(sitk.ReadImage(str(images["dwi"]))).astype(np.float64)
    noise = d[lab == 2].std(ddof=1)
    assert rec["snr"] == pytest.approx(d[lab == 1].mean() / noise, rel=1e-9)
    assert rec["cnr"] == pytest.approx(abs(d[lab == 1].mean() - d[lab == 3].mean()) / noise, rel=1e-9)

    def shifted(img, _):
        img.SetOrigin((0.0, 0.0, 0.0))
        return img

    def five(img, arr):
        arr = arr.copy()
        arr[0, 0, 0] = 5
        return _reread(arr, img)

    def half(img, arr):
        arr = arr.copy()
        arr[0, 0, 0] = 0.5
        return _reread(arr, img)

    def no_background(img, arr):
        return _reread(np.where(arr == 2, 0, arr).astype(np.float32), img)

    for name, change, needle in (("grid.nii.gz", shifted, "not on the grid of the series"),
                                 ("five.nii.gz", five, "values other than 0-3"),
                                 ("half.nii.gz", half, "values other than 0-3"),
                                 ("nobg.nii.gz", no_background, "no background (2) voxels")):
        bad, _ = _labels(images, tmp_path, name, change)
        with pytest.raises(UserError, match=re.escape(needle)) as exc:
            s.record_quality("c1", "dwi", reader_id="rev1", likert=4, roi_labelmap=bad)
        assert "\n" not in str(exc.value)


def test_common_function_reads_and_names_the_file(study, tmp_path):
    _, images = study
    dwi = sitk.ReadImage(str(images["dwi"]))
    bad, _ = _labels(images, tmp_path, "five.nii.gz",
                     lambda img, arr: _reread(np.where(arr == 3, 7, arr).astype(np.float32), img))
    with pytest.raises(UserError, match=f"ROI label map {bad}.*values other than 0-3 .e.g. 7"):
        snr_cnr_from_labelmap(dwi, bad)
    # the same map is fine when 7 is the tissue label asked for
    r = snr_cnr_from_labelmap(dwi, bad, tissue=7)
    assert r["cnr"] is not None and r["n_tissue"] == 4 * 4 * 6
