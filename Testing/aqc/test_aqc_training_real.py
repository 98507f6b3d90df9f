"""Training sessions on real images (../shared/data): the pyradiomics breast1 NRRD case that
used to break every report, cases that cannot be scored, lesion-wise feedback on the real
ISLES'22 lesion mask (18 lesions), and why the feature-ICC criterion is no longer a default
(the numbers quoted in docs/annotation_qc.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main
from AnnotationQCLib.training import TrainingSession
from ClinicalMRICommonLib.errors import UserError
from scipy import ndimage as ndi

ISLES = "isles22/{}/sub-strokecase0009/ses-0001/sub-strokecase0009_ses-0001_{}.nii.gz"
IN_PLANE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                     [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                     [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], bool)


@pytest.fixture(scope="module")
def real_cases(shared_data, tmp_path_factory):
    """Five real, heterogeneous cases from four body sites: breast (NRRD, float64 origin),
    brain glioma (NRRD), acute stroke (DWI, 18 lesions), spinal cord, a cervical vertebra."""
    d = tmp_path_factory.mktemp("real_cases")
    vert = sitk.ReadImage(str(shared_data / "spine/cervical_tptbox/sub-mri_seg-vert_label-6_msk.nii.gz"))
    sitk.WriteImage(sitk.Cast(vert == 7, sitk.sitkUInt8), str(d / "c7.nii.gz"))
    p = shared_data / "pyradiomics"
    return [
        {"case_id": "breast1", "patient_id": "B1", "sequence": "T1", "site": "breast",
         "image": str(p / "breast1_image.nrrd"), "reference": str(p / "breast1_label.nrrd")},
        {"case_id": "brain1", "patient_id": "G1", "sequence": "T1", "site": "brain",
         "image": str(p / "brain1_image.nrrd"), "reference": str(p / "brain1_label.nrrd")},
        {"case_id": "stroke", "patient_id": "S9", "sequence": "DWI", "site": "brain",
         "image": str(shared_data / ISLES.format("rawdata", "dwi")),
         "reference": str(shared_data / ISLES.format("derivatives", "msk"))},
        {"case_id": "cord", "patient_id": "C1", "sequence": "T2", "site": "spine",
         "image": str(shared_data / "spine/cervical_sct/t2/t2.nii.gz"),
         "reference": str(shared_data / "spine/cervical_sct/t2/t2_seg-manual.nii.gz")},
        {"case_id": "c7", "patient_id": "V7", "sequence": "T2", "site": "vertebra",
         "image": str(shared_data / "spine/cervical_tptbox/sub-mri_label-6_T2w.nii.gz"), "reference": str(d / "c7.nii.gz")},
    ]


@pytest.fixture(scope="module")
def real_session(real_cases, tmp_path_factory):
    return TrainingSession.create(tmp_path_factory.mktemp("real") / "session", "four sites", real_cases)


def _ref(session, cid) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(session.folder / session.meta["cases"][cid]["reference"]))
    return sitk.GetArrayFromImage(img) != 0, img


def _mask(arr, like) -> sitk.Image:
    m = sitk.GetImageFromArray(arr.astype(np.uint8))
    m.CopyInformation(like)
    return m


def test_nrrd_reference_keeps_its_geometry_and_is_scored(real_session, real_cases, tmp_path, capsys):
    """The reported failure: an NRRD reference with a float64 origin stored as .nii.gz
    (float32) and then refused by pyradiomics against its own image."""
    s = real_session
    case = s.meta["cases"]["breast1"]
    assert case["reference"].endswith(".nrrd")
    src = sitk.ReadImage(real_cases[0]["reference"])
    stored = sitk.ReadImage(str(s.folder / case["reference"]))
    assert stored.GetOrigin() == src.GetOrigin() and stored.GetSpacing() == src.GetSpacing()
    assert src.GetOrigin()[1] == -48.14465400000001  # not representable in NIfTI's float32
    assert len(case["reference_features"]) == 32 and s.meta["cases"]["stroke"]["reference"].endswith(".nii.gz")
    # the trainee's mask comes back as NIfTI, its origin rounded to float32: within same_grid's
    # tolerance, so it is accepted, stored on the image's exact grid and scored for features
    nii = tmp_path / "breast1_trainee.nii.gz"
    sitk.WriteImage(_mask(_ref(s, "breast1")[0], src), str(nii))
    assert sitk.ReadImage(str(nii)).GetOrigin() != src.GetOrigin()
    assert main(["training-submit", "--session", str(s.folder), "--trainee", "nrrd-t", "--case", "breast1",
                 "--mask", str(nii)]) == 0
    capsys.readouterr()
    assert s.trainee_mask_path("nrrd-t", "breast1").name == "B1_T1_lesion.nrrd"
    assert sitk.ReadImage(str(s.trainee_mask_path("nrrd-t", "breast1"))).GetOrigin() == \
        sitk.ReadImage(real_cases[0]["image"]).GetOrigin()
    rep = s.evaluate("nrrd-t")
    row = rep["cases"][0]
    assert row["case_id"] == "breast1" and row["dice"] == 1.0 and "feature_problem" not in row
    assert row["features"]["median_error"] == 0.0 and row["features"]["n_features"] >= 25


def test_a_case_that_cannot_be_scored_is_refused_by_name(real_cases, tmp_path):
    one = sitk.ReadImage(real_cases[0]["reference"]) * 0
    one[20, 60, 9] = 1  # a single voxel: pyradiomics cannot compute shape features
    path = tmp_path / "one_voxel.nrrd"
    sitk.WriteImage(one, str(path))
    bad = [dict(c) for c in real_cases]
    bad[0]["reference"] = str(path)
    with pytest.raises(UserError, match=r"case 1 \(breast1\): case 'breast1': the reference cannot be scored: "
                                        r"radiomics features could not be computed"):
        TrainingSession.create(tmp_path / "s", "bad", bad)
    assert not (tmp_path / "s" / "session.json").exists()


def test_dice_and_hd95_still_reported_when_features_fail_for_one_case(real_session, capsys):
    s = real_session
    for cid in s.case_ids:
        r, img = _ref(s, cid)
        if cid == "brain1":
            r = np.zeros_like(r)
            r[tuple(np.argwhere(_ref(s, cid)[0])[0])] = True   # one voxel of the lesion
        s.submit("one-bad", cid, _mask(r, img))
    assert main(["training-report", "--session", str(s.folder), "--trainee", "one-bad", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = {r["case_id"]: r for r in rep["cases"]}
    assert rows["brain1"]["dice"] == pytest.approx(2 / (rows["brain1"]["volume_ref_ml"] /
                                                       (np.prod(_ref(s, "brain1")[1].GetSpacing()) / 1000) + 1))
    assert rows["brain1"]["hd95_mm"] > 10 and "case 'brain1'" in rows["brain1"]["feature_problem"]
    assert all("feature_problem" not in r for c, r in rows.items() if c != "brain1")
    assert any("case 'brain1'" in n for n in rep["overall"]["notes"])
    # with the default criteria (mean Dice only) one failed case out of five still passes:
    # why the optional per-case minimum Dice exists (see the criteria test below)
    assert rep["overall"]["passed"] and rep["overall"]["min_dice"] < 0.01


def test_lesion_feedback_on_the_isles_lesions(real_session, shared_data):
    """A stroke trainee who misses the small lesions and the last slice of the larger ones."""
    import nibabel as nib

    s = real_session
    r, _img = _ref(s, "stroke")
    lab, n = ndi.label(r, np.ones((3, 3, 3)))
    assert n == 18
    sizes = ndi.sum(r, lab, range(1, n + 1))
    kept = np.isin(lab, 1 + np.nonzero(sizes >= 20)[0])
    trainee = kept.copy()
    klab, kn = ndi.label(kept, np.ones((3, 3, 3)))
    cut = 0
    for i in range(1, kn + 1):
        zs = np.unique(np.nonzero(klab == i)[0])
        if len(zs) > 2:
            trainee[zs[-1]][klab[zs[-1]] == i] = False
            cut += 1
    extra = np.zeros_like(r)
    extra[10:12, 40:42, 40:42] = True   # a lesion the reference does not have
    assert not (ndi.binary_dilation(extra, np.ones((3, 3, 3))) & r).any()
    for cid in s.case_ids:
        rr, im = _ref(s, cid)
        s.submit("stroke-t", cid, _mask(trainee | extra if cid == "stroke" else rr, im))
    rep = s.evaluate("stroke-t")
    row = next(x for x in rep["cases"] if x["case_id"] == "stroke")
    les = row["lesions"]
    n_small = int((sizes < 20).sum())
    assert (les["n_reference"], les["matched"], les["missed"], les["extra"]) == (18, 18 - n_small, n_small, 1)
    missed = [x for x in les["reference_lesions"] if not x["detected"]]
    assert sorted(x["voxels"] for x in missed) == sorted(int(v) for v in sizes[sizes < 20])
    # positions: RAS from the NIfTI affine (nibabel, independent of the ITK path)
    aff = nib.load(str(shared_data / ISLES.format("derivatives", "msk"))).affine
    expected = []
    for i in 1 + np.nonzero(sizes < 20)[0]:
        vox = np.argwhere(lab == i)            # (k, j, i) rows of the SimpleITK array
        ras = aff @ np.array([*vox.mean(axis=0)[::-1], 1.0])
        expected.append((ras[:3], [int(vox[:, 0].min()), int(vox[:, 0].max())], len(vox)))
    for x in missed:
        ras, slices, nvox = min(expected, key=lambda e: np.abs(e[0] - x["centroid_ras"]).sum())
        assert x["centroid_ras"] == pytest.approx(ras.tolist(), abs=0.006)
        assert (x["slices"], x["voxels"]) == (slices, nvox)
    ex = les["extra_lesions"]
    assert len(ex) == 1 and ex[0]["voxels"] == 8 and ex[0]["slices"] == [10, 11]
    assert row["slice_coverage"]["end_slices_missed"] == cut
    hints = " ".join(rep["overall"]["hints"])
    n_all = sum(c["lesions"]["n_reference"] for c in rep["cases"])
    assert f"You miss small lesions: {n_small} of {n_all} reference lesions missed (cases stroke)" in hints
    assert "You drew 1 lesion(s) the reference does not have" in hints
    assert f"You miss the first/last slices of lesions: {cut} of" in hints
    assert any(h.startswith("missed lesion: ") and "RAS (" in h for h in row["hints"])


def _variant(session, name):
    out = {}
    for k, cid in enumerate(session.case_ids):
        r, img = _ref(session, cid)
        if name == "good":            # one voxel wider in x
            t = r.copy()
            t[:, :, 1:] |= r[:, :, :-1]
        elif name == "two-bad":       # only a quarter of the lesion (in y) on the first two cases
            t = r.copy()
            if k < 2:
                ys = np.nonzero(r)[1]
                t[:, int(np.quantile(ys, 0.25)) + 1:, :] = False
        elif name == "dilate":        # one voxel too wide all round, in plane
            t = ndi.binary_dilation(r, IN_PLANE)
        out[cid] = _mask(t, img)
    return out


def test_feature_icc_does_not_separate_trainees_but_dice_criteria_do(real_cases, tmp_path):
    """The numbers of docs/annotation_qc.md: on heterogeneous real cases the median feature
    ICC(A,1) over the cases stays above 0.95 for every trainee (between-case variance
    dominates), even with Dice 0.41-0.49 on two cases; the Dice criteria separate them."""
    s = TrainingSession.create(tmp_path / "s", "criteria", real_cases, criteria={"min_case_dice": 0.70})
    numbers = {}
    for name in ("good", "two-bad", "dilate"):
        for cid, m in _variant(s, name).items():
            s.submit(name, cid, m)
        rep = s.evaluate(name)
        ov = rep["overall"]
        numbers[name] = (ov["mean_dice"], ov["min_dice"], ov["feature_icc"]["median"], ov["median_feature_error"],
                         ov["passed"])
        print(f"\n{name}: per case (Dice / median relative feature error / share of features within 10 %)")
        for r in rep["cases"]:
            f = r["features"]
            print(f"  {r['case_id']:<8} {r['dice']:.3f} / {f['median_error']:.3f} / {f['within_10pct']:.2f}")
    print("\ntrainee   mean Dice  min Dice  median ICC(A,1)  median feature error  passed")
    for name, (mean, low, icc, err, ok) in numbers.items():
        print(f"{name:<9} {mean:9.3f} {low:9.3f} {icc:16.3f} {err:21.3f}  {ok}")
    assert all(v[2] > 0.95 for v in numbers.values())               # ICC: everyone "excellent"
    assert numbers["two-bad"][1] < 0.5 < numbers["good"][1]          # the per-case minimum separates
    assert numbers["good"][4] and not numbers["two-bad"][4] and not numbers["dilate"][4]
    assert numbers["dilate"][0] < 0.85 and numbers["dilate"][1] < 0.70
