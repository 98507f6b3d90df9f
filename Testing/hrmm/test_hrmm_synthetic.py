"""Tests of the synthetic sagittal spine MRI cohort generator (HRMMPredictLib.synthetic)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.stats import mannwhitneyu

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import same_grid
from HRMMPredictLib import synthetic as syn
from HRMMPredictLib.roi import ROI_KINDS
from HRMMPredictLib.sequences import SEQUENCES

SMALL = (7, 80, 80)          # 64 x 64 mm in-plane, 7 slices: big enough for one spine region
SPACING = (0.8, 0.8, 4.8)


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _read_manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The same small cohort written twice, and a shorter one from the same seed."""
    base = tmp_path_factory.mktemp("synthetic")
    calls = []
    a = syn.generate_cohort(base / "a", n_patients=4, seed=11, shape=SMALL, multi_lesion_fraction=0.5,
                            progress=lambda i, n, msg: calls.append((i, n, msg)))
    b = syn.generate_cohort(base / "b", n_patients=4, seed=11, shape=SMALL, multi_lesion_fraction=0.5)
    c = syn.generate_cohort(base / "c", n_patients=2, seed=11, shape=SMALL, multi_lesion_fraction=0.5)
    return a, b, c, calls


@pytest.fixture(scope="module")
def case_stats():
    """ROI statistics of 32 cases (16 per class, distinct seeds) at effect sizes 0 and 1."""
    out = {}
    for eff in (0.0, 1.0):
        rows = []
        for s in range(32):
            label = s % 2
            case = syn.generate_case(1000 + s, label, eff, SMALL, SPACING)
            roi = _arr(case["roi"]) > 0
            vals = _arr(case["fst2"])[roi]
            rows.append((label, float(vals.mean()), float(vals.std())))
        out[eff] = np.array(rows)
    return out


# ---------------------------------------------------------------------------------------
# Cohort: manifest, determinism, independence of n_patients


def test_manifest_columns_paths_labels_and_grouping(cohorts):
    manifest, _, _, calls = cohorts
    with open(manifest, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["patient_id", "lesion_id", "label", "t1", "t2", "fst2", "roi", "roi_reader2", "roi_repeat"]
    rows = _read_manifest(manifest)
    pids = sorted({r["patient_id"] for r in rows})
    assert pids == ["P001", "P002", "P003", "P004"]
    assert len(rows) > 4, "with multi_lesion_fraction=0.5 and this seed some patient has several lesions"
    labels_by_patient: dict[str, set] = {}
    for r in rows:
        assert r["label"] in ("0", "1")
        assert r["lesion_id"].startswith(r["patient_id"] + "_L")
        labels_by_patient.setdefault(r["patient_id"], set()).add(r["label"])
        for key in SEQUENCES + ROI_KINDS:
            rel = Path(r[key])
            assert not rel.is_absolute() and rel.parts[0] == "images"
            assert rel.name == f"{r['lesion_id']}_{key}.nii.gz"
            assert (manifest.parent / rel).is_file()
    assert all(len(v) == 1 for v in labels_by_patient.values()), "a patient's lesions share the label"
    assert {v.pop() for v in labels_by_patient.values()} == {"0", "1"}
    counts = [sum(r["patient_id"] == p for r in rows) for p in pids]
    assert set(counts) <= {1, 2, 3}
    # progress: one call per lesion, counting up to the total
    assert [c[0] for c in calls] == list(range(1, len(rows) + 1))
    assert all(c[1] == len(rows) for c in calls)
    assert (manifest.parent / "synthetic.json").is_file()


def test_cohort_is_deterministic(cohorts):
    a, b, _, _ = cohorts
    assert a.read_text() == b.read_text()
    for row in _read_manifest(a):
        for key in SEQUENCES + ROI_KINDS:
            x = sitk.ReadImage(str(a.parent / row[key]))
            y = sitk.ReadImage(str(b.parent / row[key]))
            assert np.array_equal(_arr(x), _arr(y)), (row["lesion_id"], key)
            assert same_grid(x, y)


def test_cases_do_not_depend_on_cohort_size(cohorts):
    a, _, c, _ = cohorts
    rows_a = {r["lesion_id"]: r for r in _read_manifest(a)}
    rows_c = _read_manifest(c)
    assert rows_c and all(r["lesion_id"] in rows_a for r in rows_c)
    for r in rows_c:
        assert r["label"] == rows_a[r["lesion_id"]]["label"]
        for key in ("fst2", "roi_reader2"):
            x = _arr(sitk.ReadImage(str(c.parent / r[key])))
            y = _arr(sitk.ReadImage(str(a.parent / rows_a[r["lesion_id"]][key])))
            assert np.array_equal(x, y), (r["lesion_id"], key)


def test_positive_fraction_is_kept_in_every_prefix():
    labels = syn._labels(5, 200, 0.45)
    for n in (10, 30, 200):
        assert abs(sum(labels[:n]) - 0.45 * n) <= 1
    assert syn._labels(5, 30, 0.45) == labels[:30]


# ---------------------------------------------------------------------------------------
# One case: grid, types, ROIs


def test_case_images_share_one_grid_with_given_spacing():
    case = syn.generate_case(4, 1, 1.0, (8, 96, 112), (0.7, 0.75, 5.0))
    assert set(case) == {"t1", "t2", "fst2", "roi", "roi_reader2", "roi_repeat"}
    ref = case["t1"]
    assert ref.GetSize() == (112, 96, 8)  # SimpleITK order (cols, rows, slices)
    assert np.allclose(ref.GetSpacing(), (0.7, 0.75, 5.0))
    assert np.allclose(ref.GetDirection(), syn.SAGITTAL_DIRECTION)
    assert any(abs(o) > 1 for o in ref.GetOrigin())
    for key, img in case.items():
        assert same_grid(img, ref), key
    for key in SEQUENCES:
        a = _arr(case[key])
        assert a.dtype == np.float32 and np.isfinite(a).all()
        assert 0 <= a.min() and 200 < np.percentile(a, 99) < 3000, key
    for key in ROI_KINDS:
        a = _arr(case[key])
        assert a.dtype == np.uint8 and set(np.unique(a)) == {0, 1}, key


def test_roi_sizes_and_reader_agreement():
    d2, d3 = [], []
    for s in range(10):
        case = syn.generate_case(200 + s, s % 2, 1.0)  # default 12 x 160 x 160 grid
        r1, r2, r3 = (_arr(case[k]) for k in ROI_KINDS)
        assert 2000 <= r1.sum() <= 6500, r1.sum()
        assert r2.sum() > 0 and r3.sum() > 0
        assert len(np.nonzero(r1.any(axis=(1, 2)))[0]) >= 3, "the ROI spans several slices"
        d2.append(_dice(r1, r2))
        d3.append(_dice(r1, r3))
    d2, d3 = np.array(d2), np.array(d3)
    assert 0.85 <= np.median(d2) <= 0.93, d2
    assert 0.92 <= np.median(d3) <= 0.97, d3
    assert d2.min() >= 0.80 and d2.max() < 0.97, d2
    assert d3.min() >= 0.90 and d3.max() < 0.99, d3
    assert np.all(d3 > d2 - 0.02) and d3.mean() > d2.mean() + 0.02, "the repeat agrees better than reader 2"


def test_roi_lies_in_the_involved_vertebral_body_and_lesion_contrast():
    for s in range(3):
        case = syn.generate_case(300 + s, s % 2, 1.0, SMALL, SPACING, with_truth=True)
        roi = _arr(case["roi"]) > 0
        tissue = _arr(case["tissue"])
        body = _arr(case["body"]) > 0
        lesion = _arr(case["lesion"])
        bone = np.isin(tissue, [syn.TISSUE_LABELS["marrow"], syn.TISSUE_LABELS["cortex"]])
        assert (bone[roi]).mean() > 0.93
        assert _dice(roi, body) > 0.9
        # one connected body: the ROI does not reach a neighbouring vertebra
        _, n = ndi.label(roi)
        assert n == 1
        marrow = tissue == syn.TISSUE_LABELS["marrow"]
        tumour = marrow & body & (lesion > 0.5)
        normal = marrow & ~ndi.binary_dilation(body, iterations=2)  # the other vertebral bodies
        assert tumour.sum() > 50 and normal.sum() > 50
        fst2, t1 = _arr(case["fst2"]), _arr(case["t1"])
        assert fst2[tumour].mean() > 2.0 * fst2[normal].mean(), "FS-T2: lesion hyperintense"
        assert t1[tumour].mean() < 0.8 * t1[normal].mean(), "T1: lesion hypointense"
        # fatty normal marrow: brighter than muscle on T1, darker than muscle on FS-T2
        muscle = tissue == syn.TISSUE_LABELS["muscle"]
        assert t1[normal].mean() > 1.2 * t1[muscle].mean()
        assert fst2[normal].mean() < 0.8 * fst2[muscle].mean()


# ---------------------------------------------------------------------------------------
# Class effect


def test_effect_size_zero_makes_classes_identical(case_stats):
    for s in (1, 2):
        a = syn.generate_case(s, 0, 0.0, SMALL, SPACING)
        b = syn.generate_case(s, 1, 0.0, SMALL, SPACING)
        for key in a:
            assert np.array_equal(_arr(a[key]), _arr(b[key])), key
    stats = case_stats[0.0]
    y = stats[:, 0]
    for col in (1, 2):  # ROI mean and SD on FS-T2
        p = mannwhitneyu(stats[y == 1, col], stats[y == 0, col]).pvalue
        assert p > 0.05, (col, p)


def test_effect_size_one_separates_roi_sd(case_stats):
    stats = case_stats[1.0]
    y = stats[:, 0]
    sd1, sd0 = stats[y == 1, 2], stats[y == 0, 2]
    res = mannwhitneyu(sd1, sd0, alternative="greater")
    assert res.pvalue < 0.05, res.pvalue
    auc = res.statistic / (len(sd1) * len(sd0))
    assert 0.65 < auc < 1.0, auc  # learnable, not trivially perfect
    # same seeds, labels swapped at effect 0 vs 1: HRMM lesion texture is coarser/more variable
    assert np.median(sd1) > np.median(case_stats[0.0][y == 1, 2])


# ---------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs, fragment", [
    ({"n_patients": 0}, "n_patients"),
    ({"positive_fraction": 1.5}, "positive_fraction"),
    ({"multi_lesion_fraction": -0.1}, "multi_lesion_fraction"),
    ({"effect_size": -1}, "effect_size"),
    ({"shape": (2, 160, 160)}, "too small"),
    ({"shape": (12, 40, 160)}, "too small"),
    ({"spacing": (0.8, 0.0, 4.8)}, "spacing"),
    ({"seed": -3}, "seed"),
])
def test_bad_arguments_give_one_line_errors(tmp_path, kwargs, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        syn.generate_cohort(tmp_path / "out", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "cohort.csv").exists()


def test_bad_label_is_refused():
    with pytest.raises(UserError, match="label"):
        syn.generate_case(0, 2, 1.0, SMALL, SPACING)


def test_does_not_overwrite_a_real_manifest(tmp_path):
    real = tmp_path / "cohort.csv"
    real.write_text("patient_id,lesion_id,label\nX,X_L1,1\n")
    with pytest.raises(UserError, match="not written by the synthetic generator"):
        syn.generate_cohort(tmp_path, n_patients=1, shape=SMALL)
    assert real.read_text() == "patient_id,lesion_id,label\nX,X_L1,1\n"
