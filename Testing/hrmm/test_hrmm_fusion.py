"""The deep model and the radiomics + deep fusion in training, the bundle and prediction.

Tiny settings (64 x 64 crops, one epoch, one torch thread; see hrmm_fixtures): the network,
the PCA, the selection and the classifiers are the real ones. What is checked: what was
fitted on which lesions (nothing on the held-out set), what the bundle records, that
prediction gives the training run's numbers, and the command line.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.bundle import BUNDLE_MANIFEST, load_bundle
from HRMMPredictLib.cohort import load_cohort_manifest
from HRMMPredictLib.predict import predict_case

ALL_MODELS = ["radiomics", "radiomics_logistic", "deep", "fusion", "fusion_logistic"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)   # 2 shared cores: more threads only oversubscribe them
    yield
    torch.set_num_threads(old)


def _preds(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "training" / "predictions.csv", dtype={"lesion_id": str, "patient_id": str},
                       keep_default_na=False, na_values=[""])


def _manifest(path: Path) -> dict:
    return json.loads((path / BUNDLE_MANIFEST).read_text())


def test_radiomics_only_bundle_has_no_deep_part(trained_bundle):
    path, summary = trained_bundle
    man = _manifest(path)
    assert man["primary_model"] == "radiomics" and summary["primary_model"] == "radiomics"
    assert "deep" not in man and "fusion" not in man and man["training"]["deep_options"] == {"enabled": False}
    assert not any(f.endswith(".safetensors") for f in man["files"])


def test_fused_bundle_records_three_models(fused_bundle):
    path, summary = fused_bundle
    man = _manifest(path)
    preds = _preds(path)
    is_train = preds["split"] == "train"
    assert man["primary_model"] == "fusion" == summary["primary_model"]
    assert list(man["models"]) == ALL_MODELS
    for name, m in man["models"].items():
        assert m["prediction_column"] == name and name in preds.columns
        assert 0 <= m["threshold"] <= 1 and m["threshold_rule"]
        assert preds[name].between(0, 1).all()
    for f in ("models/deep.safetensors", "models/deep_pca.skops", "models/fusion.skops",
              "models/fusion_logistic.skops", "training/deep_history.csv", "training/deep_inputs.csv"):
        assert len(man["files"][f]) == 64  # checksummed like every file
    # the deep model: device, selected epoch, rule, history
    tr = man["deep"]["training"]
    assert tr["device"].startswith("cpu") and tr["best_epoch"] == 1 and tr["epochs_run"] == 1
    assert "best internal-validation" in tr["selection"] and tr["config"]["epochs"] == 1
    hist = pd.read_csv(path / "training" / "deep_history.csv")
    assert list(hist["epoch"]) == [1] and np.isfinite(hist["train_loss"]).all()
    assert [r["epoch"] for r in tr["history"]] == [1] and tr["history"][0]["train_loss"] == pytest.approx(
        hist["train_loss"][0], rel=1e-5)
    # the network fitted on training lesions only; its internal validation split is part of the training set
    roles = preds["deep_role"].fillna("")
    assert (roles[~is_train] == "").all()
    assert (roles[is_train] == "fit").sum() == tr["n_fit"]
    assert (roles[is_train] == "internal_validation").sum() == tr["n_val"]
    assert tr["n_fit"] + tr["n_val"] == is_train.sum()
    fit_p = set(preds.loc[roles == "fit", "patient_id"])
    assert not fit_p & set(preds.loc[roles == "internal_validation", "patient_id"])
    internal = roles == "internal_validation"
    np.testing.assert_array_equal(preds.loc[internal, "deep_internal"], preds.loc[internal, "deep"])
    assert preds.loc[~internal, "deep_internal"].isna().all()
    # PCA: min(256, n_train - 1) components
    n_train = int(is_train.sum())
    assert man["deep"]["pca"]["n_components"] == min(256, n_train - 1) == summary["deep"]["pca_components"]
    # fusion: radiomics selection (refitted on the fusion's rows: here all training lesions, so the radiomics
    # model's) + the components, fitted (paper) on all training lesions
    fu = man["fusion"]
    assert fu["fit"] == "paper" and fu["deep_features_in_sample"] is True and fu["n_fit_lesions"] == n_train
    assert fu["radiomics_inputs"] == summary["selected_features"]
    allowed = set(fu["radiomics_inputs"]) | {f"deep_pc{i + 1:03d}" for i in range(fu["deep_components"])}
    assert fu["selection_counts"]["input"] == len(allowed)
    for name in ("fusion", "fusion_logistic"):
        feats = [f["name"] for f in man["models"][name]["features"]]
        assert feats == fu["selected"] and set(feats) <= allowed
        # fit 'paper' without deep_cv: deep features in-sample, so no (leaky) out-of-fold column or CV AUC
        assert f"{name}_cv" not in preds.columns and man["models"][name]["cv_auc"] is None
    assert "deep_cv" not in preds.columns  # the network has no out-of-fold probability for its own fit lesions
    b = load_bundle(path).summary()
    assert b["primary_model"] == "fusion" and b["deep"]["pca_components"] == fu["deep_components"]


def test_deep_features_and_pca_come_from_training_lesions(fused_bundle, small_cohort):
    from HRMMPredictLib.deep.cohort import DeepInputConfig, cohort_stacks
    from HRMMPredictLib.deep.model import predict_proba
    from HRMMPredictLib.fusion import deep_outputs

    path, _ = fused_bundle
    man = _manifest(path)
    preds = _preds(path)
    b = load_bundle(path)
    net = b.load_deep_model(man["deep"]["file"], "cpu")
    cohort = load_cohort_manifest(small_cohort)
    stacks, info = cohort_stacks(cohort, Path(small_cohort).parent / ".hrmm_cache",
                                 DeepInputConfig.from_dict(man["deep"]["input"]))
    assert info["cached"].all()          # the training run cached every lesion's stack
    assert list(info["lesion_id"]) == list(preds["lesion_id"])
    p, feats = deep_outputs(net, stacks, "cpu")
    np.testing.assert_allclose(p, preds["deep"], atol=1e-5)
    # one pass gives what the whole network gives
    np.testing.assert_allclose(predict_proba(net, stacks[:3], "cpu")[:, 1], p[:3], atol=1e-5)
    pca = b.load_estimator(man["deep"]["pca"]["file"])
    is_train = (preds["split"] == "train").to_numpy()
    np.testing.assert_allclose(pca.mean_, feats[is_train].mean(axis=0), rtol=1e-6, atol=1e-7)
    assert np.abs(pca.mean_ - feats.mean(axis=0)).max() > 1e-4   # the validation lesions are not in it


def test_prediction_gives_the_training_runs_numbers(fused_bundle, small_cohort, tmp_path):
    from PIL import Image

    path, _ = fused_bundle
    preds = _preds(path).set_index("lesion_id")
    lesion = preds.index[preds["split"] == "validation"][0]
    row = load_cohort_manifest(small_cohort).set_index("lesion_id").loc[lesion]
    res = predict_case({s: row[s] for s in ("t1", "t2", "fst2")}, row["roi"], path, device="cpu",
                       preview_path=tmp_path / "input.png")
    assert res["model"] == "fusion" and list(res["models"]) == ALL_MODELS
    assert res["probability"] == res["models"]["fusion"]["probability"]
    for m in ALL_MODELS:
        assert res["models"][m]["probability"] == pytest.approx(preds.loc[lesion, m], abs=1e-5), m
        r = res["models"][m]
        assert r["class"] == ("HRMM" if r["probability"] >= r["threshold"] else "SRMM")
    man = _manifest(path)
    used = {f["name"] for f in res["features"] if f["used_by_primary"]}
    assert used == set(man["fusion"]["selected"])
    for f in res["features"]:
        assert (f["sequence"] == "deep") == f["name"].startswith("deep_pc")
    # the stack's preview: base64 in the answer, the same PNG in the file asked for
    d = res["deep_input"]
    png = base64.b64decode(d["preview_png_base64"])
    assert png == (tmp_path / "input.png").read_bytes() and d["preview_png"] == str(tmp_path / "input.png")
    im = Image.open(io.BytesIO(png))
    assert im.size == (4 * 64 + 3 * 4, 64 + 14 + 14)  # a title row and the orientation caption row
    inputs = pd.read_csv(path / "training" / "deep_inputs.csv", dtype={"lesion_id": str}).set_index("lesion_id")
    for seq in ("T1WI", "T2WI", "FS-T2WI"):
        assert d["crops"][seq]["slice_index"] == inputs.loc[lesion, f"slice_{seq}"]


def test_cli_predict_and_train_errors(fused_bundle, small_cohort, tmp_path, capsys):
    from HRMMPredictLib.cli.main import main

    path, _ = fused_bundle
    row = load_cohort_manifest(small_cohort).iloc[-1]
    png = tmp_path / "p.png"
    args = ["predict", "--t1", row["t1"], "--t2", row["t2"], "--fst2", row["fst2"], "--roi", row["roi"],
            "--model", str(path), "--device", "cpu", "--json", "--preview", str(png)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    api = predict_case({s: row[s] for s in ("t1", "t2", "fst2")}, row["roi"], path, device="cpu", preview=False)
    assert out["models"] == api["models"] and out["model"] == "fusion"
    assert out["deep_input"]["preview_png"] == str(png) and out["deep_input"]["preview_png_base64"] is None
    before = png.read_bytes()
    assert main(args) == 2                        # never overwrites a file
    assert "already exists" in capsys.readouterr().err and png.read_bytes() == before

    def train_error(*extra) -> str:
        out_dir = tmp_path / "never"
        rc = main(["train", "--manifest", str(small_cohort), "--out", str(out_dir), *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and not out_dir.exists(), err
        last = err.splitlines()[-1]      # after progress lines, one error line, no traceback
        assert last.startswith("error: ") and "Traceback" not in err
        return last

    if not torch.cuda.is_available():
        assert "cuda" in train_error("--device", "cuda")
    assert "pretrained weights file not found" in train_error("--weights", str(tmp_path / "missing.pth"))
    assert "epochs=0" in train_error("--epochs", "0")
    # the honest fusion fit needs >= 3 patients of each class in the network's internal split:
    # refused at once, not after training the network
    assert "internal validation split holds only" in train_error("--fusion-fit", "internal")


def _fusion_table(n_patients: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pid, y = [], []
    for p in range(n_patients):
        for _ in range(1 + p % 2):
            pid.append(f"P{p:02d}")
            y.append(p % 2)
    y = np.asarray(y)
    n = len(y)
    X = pd.DataFrame(rng.normal(size=(n, 8)), index=[f"L{i}" for i in range(n)],
                     columns=["t1_a", "t2_b", "fst2_c", "deep_pc001", "deep_pc002", "deep_pc003", "deep_pc004",
                              "deep_pc005"])
    X["deep_pc002"] += 2.0 * y          # one informative deep component
    X["t1_a"] += 1.0 * y
    return X, y, np.asarray(pid)


def test_fusion_fit_internal_uses_only_the_rows_given(small_config):
    from HRMMPredictLib.fusion import fusion_config, train_fusion_models

    X, y, groups = _fusion_table(8)     # 4 patients per class
    models, sel = train_fusion_models(X, y, groups, small_config, "internal")
    assert set(models) == {"extratrees", "logistic"}
    m = models["extratrees"]
    assert m.name == "fusion_extratrees" and m.cv_oof.index.equals(X.index) and m.cv_oof.notna().all()
    assert "deep_pc002" in sel["selected"] and "icc" not in sel["counts"]     # no reader step for components
    np.testing.assert_allclose(m.mean, X[m.features].mean().to_numpy())        # z-score of the rows given
    from dataclasses import replace

    assert fusion_config(replace(small_config, cv_folds=5), y, groups, "internal").cv_folds == 4
    assert fusion_config(replace(small_config, cv_folds=5), y, groups, "paper").cv_folds == 5
    X2, y2, g2 = _fusion_table(4)       # 2 patients per class: too few
    with pytest.raises(UserError, match="at least 3 of each"):
        train_fusion_models(X2, y2, g2, small_config, "internal")


def test_pca_component_rule():
    from HRMMPredictLib.fusion import component_names, fit_pca, n_pca_components

    assert n_pca_components(300, 1664) == 256
    assert n_pca_components(206, 1664) == 205      # the paper's 206 training lesions allow 205 at most
    assert n_pca_components(15, 1664) == 14
    assert n_pca_components(500, 100) == 100
    with pytest.raises(UserError):
        n_pca_components(1, 1664)
    X = np.random.default_rng(1).normal(size=(12, 40))
    pca = fit_pca(X)
    assert pca.n_components_ == 11 and component_names(3) == ["deep_pc001", "deep_pc002", "deep_pc003"]
    np.testing.assert_allclose(fit_pca(X).components_, pca.components_)      # exact SVD: deterministic


def test_fusion_fit_internal_end_to_end(small_cohort, small_params, small_config, tmp_path):
    """The honest fit: the fusion's z-scores, selection and classifiers come from the
    network's internal-validation lesions only, and its out-of-fold column covers exactly them."""
    from hrmm_fixtures import tiny_deep_options

    from HRMMPredictLib.radiomics import features as rf
    from HRMMPredictLib.deep.cohort import DeepInputConfig, cohort_stacks
    from HRMMPredictLib.deep.model import DeepTrainConfig
    from HRMMPredictLib.deep.model import internal_validation_split
    from HRMMPredictLib.fusion import deep_outputs, pca_frame
    from HRMMPredictLib.radiomics.model import patient_split
    from HRMMPredictLib.training import train_bundle

    cohort = load_cohort_manifest(small_cohort)
    tr = cohort[(patient_split(cohort, small_config.validation_fraction, small_config.seed) == "train").to_numpy()]
    y, g = tr["label"].to_numpy(), tr["patient_id"].astype(str).to_numpy()

    def enough(seed):  # >= 3 patients of each class in the network's internal split (small cohort)
        val = internal_validation_split(y, g, 0.45, seed)[1]
        return min(len(set(g[val][y[val] == c])) for c in (0, 1)) >= 3

    seed = next(s for s in range(100) if enough(s))
    deep = tiny_deep_options(train=DeepTrainConfig(epochs=1, batch_size=4, val_fraction=0.45, eval_batch_size=8,
                                                   seed=seed), fusion_fit="internal")
    path = tmp_path / "bundle"
    train_bundle(small_cohort, path, small_params, small_config, n_jobs=1, deep=deep)
    man = _manifest(path)
    preds = _preds(path)
    internal = (preds["deep_role"] == "internal_validation").to_numpy()
    fu = man["fusion"]
    assert fu["fit"] == "internal" and fu["deep_features_in_sample"] is False
    assert fu["n_fit_lesions"] == internal.sum() == man["deep"]["training"]["n_val"]
    assert "fusion_cv" not in preds.columns
    for name in ("fusion", "fusion_logistic"):
        assert man["models"][name]["cv_column"] == f"{name}_internal"
        assert man["models"][name]["cv_covers"] == "internal_validation"
        assert man["models"][name]["oof_probabilities_honest"] is True
        assert (preds[f"{name}_internal"].notna().to_numpy() == internal).all()
        assert "internal-validation lesions" in man["models"][name]["threshold_rule"]
    # the fusion's z-score parameters are the internal lesions' means, not the training set's
    b = load_bundle(path)
    stacks, _ = cohort_stacks(cohort, Path(small_cohort).parent / ".hrmm_cache", DeepInputConfig(size=64))
    _, feats = deep_outputs(b.load_deep_model(man["deep"]["file"], "cpu"), stacks, "cpu")
    pcs = pca_frame(b.load_estimator(man["deep"]["pca"]["file"]), feats, preds["lesion_id"])
    rad = rf.extract_cohort(cohort, Path(small_cohort).parent / ".hrmm_cache", rf.load_params(small_params),
                            n_jobs=1)["roi"].loc[preds["lesion_id"]]
    X = pd.concat([rad, pcs], axis=1)
    sel = fu["selected"]
    np.testing.assert_allclose(man["models"]["fusion"]["zscore"]["mean"], X.loc[internal, sel].mean(), rtol=1e-6,
                               atol=1e-8)
