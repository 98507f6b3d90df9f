"""The patient-wise train/validation split and the reader-agreement (ICC >= threshold) filter
of the radiomics training (HRMMPredictLib.radiomics.model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ClinicalMRICommonLib.agreement.icc import feature_icc
from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.radiomics.model import ReaderAgreementFilter, patient_split


def cohort(n_patients: int = 40, seed: int = 0) -> pd.DataFrame:
    """Lesions of patients, 1-3 lesions each; the label is the patient's."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % 3 == 0)  # 14 HRMM, 26 SRMM patients
        for j in range(int(rng.integers(1, 4))):
            rows.append({"lesion_id": f"P{p:02d}_L{j}", "patient_id": f"P{p:02d}", "label": label})
    return pd.DataFrame(rows).set_index("lesion_id", drop=False)


def _check_split(df: pd.DataFrame, split: pd.Series, fraction: float) -> None:
    assert set(split) == {"train", "validation"} and split.index.equals(df.index) and split.name == "split"
    sides = df.groupby("patient_id")["lesion_id"].apply(lambda ids: set(split[ids]))
    assert (sides.apply(len) == 1).all(), "a patient is on both sides"
    val_patients = df.loc[split == "validation", "patient_id"].unique()
    n_pat = df["patient_id"].nunique()
    assert abs(len(val_patients) - fraction * n_pat) <= 0.1 * n_pat
    for label in (0, 1):  # both classes on both sides, in roughly the cohort's proportion
        assert ((split == "validation") & (df["label"] == label)).any()
        assert ((split == "train") & (df["label"] == label)).any()


def test_same_seed_same_split_and_different_seeds_different_splits():
    df = cohort()
    splits = {seed: patient_split(df, 0.25, seed=seed) for seed in range(6)}
    for seed, split in splits.items():
        _check_split(df, split, 0.25)
        assert patient_split(df, 0.25, seed=seed).equals(split)
    distinct = {tuple(s) for s in splits.values()}
    assert len(distinct) >= 5, "the seed is not used"
    assert not splits[0].equals(splits[1])


def test_split_follows_the_fraction():
    df = cohort(60, seed=1)
    for fraction, n_splits in ((0.2, 5), (0.25, 4), (0.5, 2), (0.34, 3), (0.6, 2)):
        split = patient_split(df, fraction, seed=2)
        _check_split(df, split, 1 / n_splits)
    # the default is 20 % and seed 0
    assert patient_split(df).equals(patient_split(df, 0.2, 0))


def test_split_does_not_depend_on_the_row_order_of_patients_lesions_within_the_frame_index():
    df = cohort()
    split = patient_split(df, 0.25, seed=4)
    renamed = df.set_index(pd.Index([f"x{i}" for i in range(len(df))]))
    again = patient_split(renamed, 0.25, seed=4)
    assert list(again) == list(split)  # index labels play no part, only rows


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_refuses_fractions_outside_0_1(fraction):
    with pytest.raises(UserError, match="between 0 and 1"):
        patient_split(cohort(), fraction)


def test_split_refuses_too_few_patients_of_a_class_and_says_how_many():
    df = cohort(12)  # 4 HRMM patients, 8 SRMM
    with pytest.raises(UserError, match=r"80:20 by patient \(4 HRMM, 8 SRMM patients; need at least 5 of each\)"):
        patient_split(df, 0.2)
    split = patient_split(df, 0.25, seed=0)  # 4 folds: 4 of each is enough
    _check_split(df, split, 0.25)


# ---------------------------------------------------------------------------------------
# ReaderAgreementFilter: inter AND intra ICC >= threshold, on the fitted rows only


def _reads(n=20, seed=0):
    rng = np.random.default_rng(seed)
    idx = [f"L{i}" for i in range(n)]
    truth = rng.normal(size=(n, 3))
    r1 = pd.DataFrame(truth, index=idx, columns=["f1", "f2", "f3"])
    r2 = r1 + rng.normal(0, [0.2, 0.6, 0.3], size=(n, 3))
    rep = r1 + rng.normal(0, [0.3, 0.2, 0.7], size=(n, 3))
    return r1, r2, rep


def test_threshold_is_inclusive_and_both_iccs_must_pass():
    r1, r2, rep = _reads()
    inter = feature_icc(r1, r2, "ICC(A,1)")["icc"]
    intra = feature_icc(r1, rep, "ICC(A,1)")["icc"]
    low = np.minimum(inter, intra)
    # threshold exactly at a feature's lower ICC keeps it; just above drops it
    t = float(low["f1"])
    kept = ReaderAgreementFilter(r2, rep, threshold=t).fit(r1)
    expected = [f for f in r1.columns if low[f] >= t]
    assert list(kept.get_feature_names_out()) == expected and "f1" in expected
    t_up = float(np.nextafter(t, 2))
    expected_up = [f for f in r1.columns if low[f] >= t_up]
    assert "f1" not in expected_up
    if expected_up:
        assert list(ReaderAgreementFilter(r2, rep, threshold=t_up).fit(r1).get_feature_names_out()) == expected_up
    else:
        with pytest.raises(UserError, match="no feature reaches ICC"):
            ReaderAgreementFilter(r2, rep, threshold=t_up).fit(r1)
    np.testing.assert_allclose(kept.icc_["inter"], inter.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(kept.icc_["intra"], intra.to_numpy(), atol=1e-12)
    # a threshold between inter and intra of a feature: only the lower one counts
    f = "f2"
    mid = (inter[f] + intra[f]) / 2
    assert f not in ReaderAgreementFilter(r2, rep, threshold=mid).fit(r1).get_feature_names_out()
    # one table only: that check alone
    only_inter = ReaderAgreementFilter(r2, None, threshold=mid).fit(r1)
    assert (f in only_inter.get_feature_names_out()) == (inter[f] >= mid)
    assert "intra" not in only_inter.icc_
    only_intra = ReaderAgreementFilter(None, rep, threshold=mid).fit(r1)
    assert (f in only_intra.get_feature_names_out()) == (intra[f] >= mid)


def test_default_form_and_threshold_are_icc_a1_at_0_75():
    f = ReaderAgreementFilter()
    assert (f.threshold, f.form) == (0.75, "ICC(A,1)")
    r1, r2, rep = _reads(n=30, seed=3)
    r2 = r2 + np.array([0.0, 0.0, 2.0])  # reader 2 biased on f3: absolute agreement drops, consistency not
    a = ReaderAgreementFilter(r2, None, form="ICC(A,1)").fit(r1)
    c = ReaderAgreementFilter(r2, None, form="ICC(C,1)").fit(r1)
    assert a.icc_["inter"][2] < c.icc_["inter"][2] - 0.3
    assert "f3" in c.get_feature_names_out() and "f3" not in a.get_feature_names_out()


def test_filter_uses_the_fitted_rows_and_transforms():
    r1, r2, rep = _reads(n=30, seed=1)
    f = ReaderAgreementFilter(r2, rep, threshold=0.5).fit(r1.iloc[:12])
    ref = feature_icc(r1.iloc[:12], r2.loc[r1.index[:12]], "ICC(A,1)")["icc"].to_numpy()
    np.testing.assert_allclose(f.icc_["inter"], ref, atol=1e-12)
    out = f.transform(r1)
    assert list(out.columns) == list(f.get_feature_names_out()) and out.index.equals(r1.index)
    np.testing.assert_array_equal(f.transform(r1.to_numpy()), r1.to_numpy()[:, f.support_])
    assert f.n_features_in_ == 3 and list(f.feature_names_in_) == ["f1", "f2", "f3"]


def test_filter_refusals():
    r1, r2, rep = _reads(n=10)
    with pytest.raises(UserError, match=r"inter-reader ICC needs the second read of at least 3 training lesions \(found 2\)"):
        ReaderAgreementFilter(r2.iloc[:2], None).fit(r1)
    assert ReaderAgreementFilter(r2.iloc[:3], None, threshold=-1.0).fit(r1).support_.all()
    with pytest.raises(UserError, match="no feature reaches ICC >= 1.01"):
        ReaderAgreementFilter(r2, rep, threshold=1.01).fit(r1)
    with pytest.raises(TypeError, match="DataFrame"):
        ReaderAgreementFilter(r2, rep).fit(r1.to_numpy())
    # a constant feature (NaN ICC) never passes
    r1c, r2c = r1.copy(), r2.copy()
    r1c["f1"] = 1.0
    r2c["f1"] = 1.0
    g = ReaderAgreementFilter(r2c, None, threshold=-1.0).fit(r1c)
    assert list(g.get_feature_names_out()) == ["f2", "f3"]


# ---------------------------------------------------------------------------------------
# Small hand-made cohorts: fractions above 2/3 and the refusal's wording at other fractions


def _singletons(n_hrmm: int, n_srmm: int, lesions_per_patient: int = 1) -> pd.DataFrame:
    """One patient per label entry, ``lesions_per_patient`` lesions each (HRMM patients first)."""
    rows = []
    for p, label in enumerate([1] * n_hrmm + [0] * n_srmm):
        for j in range(lesions_per_patient):
            rows.append({"lesion_id": f"P{p}_L{j}", "patient_id": f"P{p}", "label": label})
    return pd.DataFrame(rows).set_index("lesion_id", drop=False)


@pytest.mark.parametrize("fraction", [0.7, 0.8, 0.9])
def test_split_above_two_thirds_uses_two_folds(fraction):
    """round(1 / fraction) is 1 for fractions above 2/3, and one fold is no split: at least 2
    folds are used, i.e. half the patients. 6 + 6 one-lesion patients in 2 stratified folds:
    the validation fold is 3 HRMM + 3 SRMM patients (the 50 % split with the same seed)."""
    df = _singletons(6, 6)
    for seed in (0, 1):
        split = patient_split(df, fraction, seed=seed)
        val = df[split == "validation"]
        assert len(val) == 6
        assert int(val["label"].sum()) == 3
        assert split.equals(patient_split(df, 0.5, seed=seed))


@pytest.mark.parametrize(("fraction", "ratio", "need"), [(0.7, "30:70", 2), (0.6, "40:60", 2), (0.3, "70:30", 3)])
def test_split_refusal_names_the_ratio_and_the_counts(fraction, ratio, need):
    """1 HRMM patient (2 lesions) and 3 SRMM patients: too few HRMM patients for any split; the
    message gives the train:validation ratio in percent (100 (1 - f) : 100 f, rounded), the
    patient counts per class (not lesion counts) and the folds needed (max(2, round(1 / f)))."""
    df = pd.concat([_singletons(1, 0, lesions_per_patient=2),
                    _singletons(0, 3).assign(patient_id=lambda d: d["patient_id"] + "s")])
    df.index = df["lesion_id"] = [f"L{i}" for i in range(len(df))]
    assert (df["label"].sum(), (df["label"] == 0).sum()) == (2, 3)
    msg = rf"split {ratio} by patient \(1 HRMM, 3 SRMM patients; need at least {need} of each\)"
    with pytest.raises(UserError, match=msg):
        patient_split(df, fraction)


def test_repeat_read_alone_is_still_checked():
    """Without a second reader (reader2=None) the intra-reader check still runs: a repeat read
    identical to reader 1 gives ICC 1 (no within-lesion variance), one that flips the sign of
    a feature gives all lesion means 0, no between-lesion variance and a negative ICC; that
    feature goes."""
    r1, _, _ = _reads(n=12, seed=4)
    rep = r1.copy()
    rep["f2"] = -r1["f2"]
    f = ReaderAgreementFilter(None, rep, threshold=0.75).fit(r1)
    assert list(f.icc_) == ["intra"]
    np.testing.assert_allclose(f.icc_["intra"][[0, 2]], [1.0, 1.0], atol=1e-12)
    assert f.icc_["intra"][1] < 0
    assert list(f.get_feature_names_out()) == ["f1", "f3"]
    # and the other way round: reader 2 alone
    g = ReaderAgreementFilter(rep, None, threshold=0.75).fit(r1)
    assert list(g.icc_) == ["inter"] and list(g.get_feature_names_out()) == ["f1", "f3"]
