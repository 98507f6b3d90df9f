"""Training to a bundle and prediction from it: split by patient, fitted steps on training
data only, selective extraction = full extraction, CLI = API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.radiomics import features as rf
from HRMMPredictLib.bundle import BUNDLE_MANIFEST
from HRMMPredictLib.cohort import load_cohort_manifest
from HRMMPredictLib.radiomics.model import ReaderAgreementFilter, patient_split
from HRMMPredictLib.predict import predict_case

HRMM = [sys.executable, "-m", "HRMMPredictLib.cli"]


def _case(cohort_csv: Path, split: str, bundle_dir: Path) -> pd.Series:
    preds = pd.read_csv(bundle_dir / "training" / "predictions.csv")
    lesion = preds.loc[preds["split"] == split, "lesion_id"].iloc[0]
    return load_cohort_manifest(cohort_csv).set_index("lesion_id").loc[lesion]


def test_patient_split_keeps_patients_whole_and_stratifies(small_cohort):
    df = load_cohort_manifest(small_cohort)
    split = patient_split(df, 0.25, seed=3)
    by_patient = df.groupby("patient_id")["lesion_id"].apply(lambda s: set(split[s.index]))
    assert all(len(v) == 1 for v in by_patient), "a patient appears on both sides"
    val = df[split == "validation"]
    assert 0 < len(val) < len(df)
    assert set(val["label"]) == {0, 1}
    assert (patient_split(df, 0.25, seed=3) == split).all()  # seeded


def test_reader_agreement_filter_uses_only_fitted_rows():
    rng = np.random.default_rng(0)
    idx = [f"L{i}" for i in range(30)]
    truth = rng.normal(size=(30, 3))
    r1 = pd.DataFrame(truth, index=idx, columns=["good", "bad_inter", "bad_intra"])
    r2 = r1.copy()
    r2["bad_inter"] = rng.normal(size=30)  # reader 2 disagrees
    rep = r1.copy()
    rep["bad_intra"] = rng.normal(size=30)  # the repeat read disagrees
    f = ReaderAgreementFilter(r2, rep, threshold=0.75).fit(r1.iloc[:20])
    assert list(f.get_feature_names_out()) == ["good"]
    # rows outside the fitted ones must not matter: corrupt them and refit
    r2_corrupt = r2.copy()
    r2_corrupt.iloc[20:, 0] = 1e6
    f2 = ReaderAgreementFilter(r2_corrupt, rep, threshold=0.75).fit(r1.iloc[:20])
    np.testing.assert_array_equal(f.icc_["inter"], f2.icc_["inter"])


def test_bundle_contents(trained_bundle, small_cohort):
    path, summary = trained_bundle
    man = json.loads((path / BUNDLE_MANIFEST).read_text())
    assert man["format"] == "hrmm-model-bundle"
    for pkg in ("scikit-learn", "pyradiomics", "numpy", "SimpleITK", "python"):
        assert pkg in man["software"]
    assert set(man["files"]) >= {"radiomics_params.yaml", "models/radiomics.skops", "training/predictions.csv"}
    rad = man["models"]["radiomics"]
    assert rad["classifier"] == "extratrees"
    assert rad["hyperparameters"]["n_estimators"] == 4 and rad["hyperparameters"]["max_depth"] == 2
    assert 0 <= rad["threshold"] <= 1
    for f in rad["features"]:
        assert f["min"] <= f["mean"] <= f["max"] and f["sd"] >= 0
    assert len(man["cohort"]["hash"]) == 64
    # training statistics are from training lesions only
    preds = pd.read_csv(path / "training" / "predictions.csv")
    assert preds.loc[preds["split"] == "validation", "radiomics_cv"].isna().all()
    assert preds.loc[preds["split"] == "train", "radiomics_cv"].notna().all()
    cohort = load_cohort_manifest(small_cohort)
    train_ids = preds.loc[preds["split"] == "train", "lesion_id"]
    X = rf.extract_cohort(cohort, Path(small_cohort).parent / ".hrmm_cache", rf.load_params(path / "radiomics_params.yaml"),
                          lesion_ids=train_ids, n_jobs=1)["roi"]
    name = rad["features"][0]["name"]
    assert rad["features"][0]["mean"] == pytest.approx(X[name].mean(), rel=1e-9)
    assert rad["features"][0]["max"] == pytest.approx(X[name].max(), rel=1e-12)


def test_cohort_extraction_is_cached(trained_bundle, small_cohort, small_params):
    """A rerun computes nothing: every (image, ROI, settings) result is in the cache."""
    cohort = load_cohort_manifest(small_cohort)
    calls = []
    rf.extract_cohort(cohort, Path(small_cohort).parent / ".hrmm_cache", rf.load_params(small_params),
                      n_jobs=1, progress=lambda i, n, m: calls.append(m))
    assert calls[0].endswith(f"{len(cohort) * 3} cached") and len(calls) == 1


def test_prediction_matches_full_extraction_and_training_predictions(trained_bundle, small_cohort):
    path, _ = trained_bundle
    row = _case(small_cohort, "validation", path)
    res = predict_case({s: row[s] for s in ("t1", "t2", "fst2")}, row["roi"], path)
    assert res["model"] == "radiomics" and set(res["models"]) == {"radiomics", "radiomics_logistic"}
    assert res["class"] == ("HRMM" if res["probability"] >= res["threshold"] else "SRMM")
    # selective extraction == full extraction, feature by feature
    params = rf.load_params(path / "radiomics_params.yaml")
    for f in res["features"]:
        seq = {"T1WI": "t1", "T2WI": "t2", "FS-T2WI": "fst2"}[f["sequence"]]
        full = rf.extract_case_sequence(row[seq], row["roi"], params, rf.PreprocessConfig())
        assert f["value"] == full[f["feature"]], f["name"]
    # the probability equals the one the training run stored for this validation lesion
    preds = pd.read_csv(path / "training" / "predictions.csv").set_index("lesion_id")
    assert res["probability"] == pytest.approx(preds.loc[row.name, "radiomics"], abs=1e-12)
    assert res["models"]["radiomics_logistic"]["probability"] == pytest.approx(
        preds.loc[row.name, "radiomics_logistic"], abs=1e-12)


def test_cli_predict_json_equals_api(trained_bundle, small_cohort):
    path, _ = trained_bundle
    row = _case(small_cohort, "validation", path)
    api = predict_case({s: row[s] for s in ("t1", "t2", "fst2")}, row["roi"], path)
    out = subprocess.run(HRMM + ["predict", "--t1", row["t1"], "--t2", row["t2"], "--fst2", row["fst2"],
                                 "--roi", row["roi"], "--model", str(path), "--json"],
                         capture_output=True, text=True, check=True)
    cli = json.loads(out.stdout)
    assert cli["probability"] == api["probability"]
    assert cli["models"] == api["models"]
    assert [f["value"] for f in cli["features"]] == [f["value"] for f in api["features"]]


def test_train_refuses_to_overwrite_existing_folder(trained_bundle, small_cohort, small_params, small_config):
    from HRMMPredictLib.training import train_bundle

    path, _ = trained_bundle
    before = (path / BUNDLE_MANIFEST).read_bytes()
    with pytest.raises(UserError, match="already exists"):
        train_bundle(small_cohort, path, small_params, small_config)
    assert (path / BUNDLE_MANIFEST).read_bytes() == before
