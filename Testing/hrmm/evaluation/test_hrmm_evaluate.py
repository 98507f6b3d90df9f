"""``hrmm evaluate``: report and metrics.json from a bundle, with an external cohort."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from HRMMPredictLib.evaluation import stats
from HRMMPredictLib.evaluation.evaluate import evaluate_bundle

HRMM = [sys.executable, "-m", "HRMMPredictLib.cli"]


@pytest.fixture(scope="module")
def external_cohort(tmp_path_factory):
    from hrmm_fixtures import SHAPE, SPACING

    from HRMMPredictLib.synthetic import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("external"), n_patients=6, seed=99, effect_size=1.5,
                           shape=SHAPE, spacing=SPACING, multi_lesion_fraction=0.0)


def test_evaluate_bundle_report_and_metrics(trained_bundle, small_cohort, external_cohort, tmp_path):
    path, _ = trained_bundle
    out = tmp_path / "report"
    res = evaluate_bundle(path, out, [small_cohort, external_cohort])
    html = (out / "index.html").read_text(encoding="utf-8")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert "http://" not in html and "https://" not in html and html.count("data:image/png;base64,") >= 4
    assert res["models"][0] == "radiomics"
    # the training cohort itself is recognised, not evaluated twice
    assert any("training cohort" in n for n in res["notes"])
    assert set(metrics["sets"]) == {"training (apparent)", "training (cross-validated)", "validation", "cohort"}
    assert "resubstitution" in metrics["sets"]["training (apparent)"]["summary"]["description"]
    assert "apparent (resubstitution)" in html
    man = json.loads((path / "manifest.json").read_text())
    preds = pd.read_csv(path / "training" / "predictions.csv")
    val = preds[preds["split"] == "validation"]
    for m in res["models"]:
        assert metrics["thresholds"][m] == man["models"][m]["threshold"]
        want = stats.roc_auc_delong(val["label"], val[m])
        got = metrics["sets"]["validation"]["models"][m]["auc"]
        assert got["auc"] == pytest.approx(want["auc"]) and got["ci95"] == pytest.approx(want["ci95"])
        cv = metrics["sets"]["training (cross-validated)"]["models"][m]["auc"]["auc"]
        tr = preds[preds["split"] == "train"]
        assert cv == pytest.approx(stats.roc_auc_delong(tr["label"], tr[f"{m}_cv"])["auc"])
    # no false "patient overlap" between apparent and cross-validated training sets
    assert "training & training (cross-validated)" not in metrics["checks"]["patients_in_several_sets"]
    ext = metrics["sets"]["cohort"]
    assert ext["summary"]["lesions"] == len(pd.read_csv(external_cohort))
    assert len(metrics["sets"]["validation"]["delong"]) == 1  # one pair of models
    # --json / the returned result: every AUC with its CI (or why there is none), metrics with CIs
    for s, per_model in res["results"].items():
        for m, r in per_model.items():
            a = metrics["sets"][s]["models"][m]["auc"]
            assert r["auc"] == a["auc"]
            assert (r["auc_ci95"] is None) == bool(a.get("ci_not_estimable"))
            assert r["sensitivity"]["ci95"] == metrics["sets"][s]["models"][m]["classification"]["sensitivity"]["ci95"]
    # the terminal gets the page's warnings: this cohort has patients with several lesions and small sets
    assert res["warnings"] == metrics["warnings"]
    assert any(w.startswith("small set: 'validation'") for w in res["warnings"])
    assert any("several lesions per patient" in w for w in res["warnings"])
    import html as html_mod

    for w in res["warnings"]:
        assert w in html_mod.unescape(html)


def test_external_probabilities_are_predict_case(trained_bundle, external_cohort):
    from HRMMPredictLib.bundle import load_bundle
    from HRMMPredictLib.evaluation.evaluate import predict_cohort
    from HRMMPredictLib.cohort import load_cohort_manifest
    from HRMMPredictLib.predict import predict_case

    path, _ = trained_bundle
    b = load_bundle(path)
    df = predict_cohort(b, external_cohort, ["radiomics"])
    row = load_cohort_manifest(external_cohort).iloc[0]
    direct = predict_case({s: row[s] for s in ("t1", "t2", "fst2")}, row["roi"], path)
    assert df.loc[0, "radiomics"] == direct["models"]["radiomics"]["probability"]
    assert np.all((df["radiomics"] >= 0) & (df["radiomics"] <= 1))


def test_evaluate_cli_json_and_bad_input(trained_bundle, tmp_path):
    path, _ = trained_bundle
    r = subprocess.run(HRMM + ["evaluate", "--model", str(path), "--out", str(tmp_path / "r"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (tmp_path / "r" / "index.html").is_file() and out["report"].endswith("index.html")
    r = subprocess.run(HRMM + ["evaluate", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "model folder not found" in r.stderr
