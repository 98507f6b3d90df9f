"""Per-feature ICC straight from a reader study (inter- and intra-reader), through the library
and `annotation-qc feature-icc --study`, with real pyradiomics features.

Independent references: the ICC(A,1) of the mask volumes computed by hand from the box sizes
(icc_all, itself checked against Shrout & Fleiss in test_aqc_icc.py), and ICC = 1 for
identical reads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main
from AnnotationQCLib.sessions import ReaderStudy, blank_mask_like
from ClinicalMRICommonLib.agreement.icc import icc_all
from ClinicalMRICommonLib.errors import UserError

SHAPE = (6, 24, 24)
SPACING = (0.9, 0.9, 3.0)
# per case: (half-width in x/y of reader 1's box, extra columns drawn by reader 2)
BOXES = {"c1": (3, 1), "c2": (5, 0), "c3": (7, 2), "c4": (4, 1)}


def _box(source, half, extra=0, z=(1, 5)):
    m = blank_mask_like(source)
    arr = sitk.GetArrayFromImage(m)
    arr[z[0]:z[1], 12 - half:12 + half, 12 - half:12 + half + extra] = 1
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(m)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_icc")
    rng = np.random.default_rng(3)
    s = ReaderStudy.create(root / "study", "icc study")
    for reader in ("r1", "r2"):
        s.add_reader(reader, "annotator")
    for i, (case, (half, extra)) in enumerate(BOXES.items(), start=1):
        img = sitk.GetImageFromArray(rng.normal(100 + 20 * i, 15, SHAPE).astype(np.float32))
        img.SetSpacing(SPACING)
        path = root / f"P00{i}_T2.nii.gz"
        sitk.WriteImage(img, str(path))
        s.add_case(case, f"P00{i}", {"T2": path})
        s.save_mask("r1", case, "T2", "ROI", _box(path, half), final=True)
        s.save_mask("r2", case, "T2", "ROI", _box(path, half, extra), final=True)
        s.save_mask("r1", case, "T2", "ROI", _box(path, half), session="repeat", final=True)
    return s


def test_inter_reader_feature_icc_matches_hand_computed_volume_icc(study):
    res = study.feature_icc("r1", "r2")
    assert (res["sequence"], res["content"], res["n_cases"], res["skipped_empty"]) == ("T2", "ROI", 4, [])
    table = res["table"]
    voxel_ml = float(np.prod(SPACING))
    vol = np.array([[4 * (2 * h) * (2 * h) * voxel_ml, 4 * (2 * h) * (2 * h + e) * voxel_ml]
                    for h, e in BOXES.values()])
    expected = icc_all(vol)["ICC(A,1)"]["icc"]
    assert table.loc["original_shape_VoxelVolume", "icc"] == pytest.approx(expected, rel=1e-9)
    assert list(res["features_a"].index) == list(BOXES)
    assert {"icc", "ci_low", "ci_high", "interpretation", "n"} <= set(table.columns)


def test_intra_reader_identical_reads_give_icc_one(study):
    res = study.feature_icc("r1", "r1", "first", "repeat")
    defined = res["table"]["icc"].dropna()
    assert len(defined) > 10
    np.testing.assert_allclose(defined.to_numpy(), 1.0, atol=1e-9)


def test_study_feature_icc_errors(study, tmp_path):
    with pytest.raises(UserError, match="no case has submitted masks"):
        study.feature_icc("r1", "r2", content="whole-tumour")
    with pytest.raises(UserError, match="not registered"):
        study.feature_icc("r1", "nobody")


def test_empty_reads_are_left_out_and_several_structures_refused(tmp_path):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 10, SHAPE).astype(np.float32))
    img.SetSpacing(SPACING)
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    s = ReaderStudy.create(tmp_path / "s", "small")
    s.add_reader("r1")
    s.add_reader("r2")
    for case in ("c1", "c2"):
        s.add_case(case, case.upper(), {"T2": tmp_path / "a.nii.gz"})
    src = tmp_path / "a.nii.gz"
    s.save_mask("r1", "c1", "T2", "ROI", _box(src, 3), final=True)
    s.save_mask("r2", "c1", "T2", "ROI", _box(src, 3), final=True)
    s.save_mask("r1", "c2", "T2", "ROI", _box(src, 4), final=True)
    s.save_mask("r2", "c2", "T2", "ROI", blank_mask_like(src), final=True)  # "nothing to draw"
    with pytest.raises(UserError, match=r"at least 2 cases .* found 1 \(left out for an empty mask: c2\)"):
        s.feature_icc("r1", "r2")
    s.save_mask("r1", "c1", "T2", "oedema", _box(src, 5), final=True)
    s.save_mask("r2", "c1", "T2", "oedema", _box(src, 5), final=True)
    with pytest.raises(UserError, match="several sequence/content pairs .*T2/ROI, T2/oedema"):
        s.feature_icc("r1", "r2")


def test_feature_icc_command_from_a_study(study, tmp_path, capsys):
    out, png = tmp_path / "intra.csv", tmp_path / "intra.png"
    assert main(["feature-icc", "--study", str(study.folder), "--reader-a", "r1", "--reader-b", "r2",
                 "--out", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "T2/ROI of r1 (first) vs r2 (first)" in printed and "cases used: 4" in printed
    table = pd.read_csv(out, index_col=0)
    assert table.loc["original_shape_VoxelVolume", "icc"] == pytest.approx(
        study.feature_icc("r1", "r2")["table"].loc["original_shape_VoxelVolume", "icc"], abs=1e-6)
    assert png.stat().st_size > 1000
    # usage mistakes: both sources, or neither; a missing reader
    assert main(["feature-icc", "--study", str(study.folder), "--a", "x.csv", "--out", str(out)]) == 2
    assert main(["feature-icc", "--study", str(study.folder), "--reader-a", "r1", "--out", str(out)]) == 2
    assert main(["feature-icc", "--a", "x.csv", "--b", "y.csv", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "either two feature tables" in err and "--reader-b" in err and "--id-column" in err
