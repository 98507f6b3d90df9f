"""What a reviewer checks first in the evaluation report (issue 14): the synthetic-data
banner and title, the model card and the TRIPOD+AI style checklist, the honest
cross-validated set per model, statistics marked not estimable on tiny or degenerate sets
(with the rules), confusion tables that add up, Holm-adjusted DeLong p-values with a
multiplicity note, the selection funnel / ICC figure, and autoescaping of hostile names."""

from __future__ import annotations

import html as html_mod
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from HRMMPredictLib.evaluation import report
from HRMMPredictLib.evaluation.evaluate import cv_status, detect_data_source, evaluate_bundle


def _frame(y, probs: dict, prefix="p"):
    n = len(y)
    df = pd.DataFrame({"label": y, "patient_id": [f"{prefix}{i}" for i in range(n)],
                       "lesion_id": [f"L{i}" for i in range(n)]})
    for m, p in probs.items():
        df[m] = p
    return df


def test_tiny_set_statistics_are_not_estimable_with_reasons(tmp_path):
    # 7 validation lesions (3 positive), both models separate them: the 1.000-1.000 and p 1.000
    y7 = np.array([0, 0, 0, 0, 1, 1, 1])
    a7 = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.9])
    b7 = np.array([0.05, 0.25, 0.3, 0.4, 0.55, 0.8, 0.95])
    rng = np.random.default_rng(0)
    y24 = np.r_[np.zeros(12, int), np.ones(12, int)]
    p24 = np.clip(0.3 + 0.3 * y24 + rng.normal(0, 0.15, 24), 0.01, 0.99)
    q24 = np.clip(0.35 + 0.25 * y24 + rng.normal(0, 0.15, 24), 0.01, 0.99)
    sets = {"validation": _frame(y7, {"a": a7, "b": b7}), "training": _frame(y24, {"a": p24, "b": q24}, "t")}
    ev = report.evaluate_models(sets, ["a", "b"], {"a": 0.5, "b": 0.5})
    v = ev["sets"]["validation"]
    for m in ("a", "b"):
        assert v["models"][m]["auc"]["auc"] == 1.0
        assert "at least 5 of each class" in v["models"][m]["auc"]["ci_not_estimable"]
        assert "at least 10 of each class" in v["models"][m]["calibration"]["recalibration"]["not_estimable"]
        assert "needs at least 3 groups" in v["models"][m]["calibration"]["hosmer_lemeshow"]["not_estimable"]
    assert "at least 5 of each class" in v["delong"][0]["not_estimable"] and v["delong"][0]["p_holm"] is None
    # 24 lesions: 2 groups of about 10 for both the plot and Hosmer-Lemeshow (not g = 10, df 8)
    t = ev["sets"]["training"]
    assert t["summary"]["calibration_bins"] == t["summary"]["hosmer_lemeshow_groups"] == 2
    assert len(t["models"]["a"]["calibration"]["curve"]["n"]) == 2
    assert "needs at least 3 groups" in t["models"]["a"]["calibration"]["hosmer_lemeshow"]["not_estimable"]
    assert "ci_not_estimable" not in t["models"]["a"]["auc"]  # 12 per class and a real variance
    page = report.write_evaluation_report(tmp_path, ev).read_text(encoding="utf-8")
    text = html_mod.unescape(page)
    assert "1.000–1.000" not in text and "0.000 (0.000–0.000)" not in text
    assert "not estimable" in text and "(CI not estimable)" in text
    for rule in report.ESTIMABILITY_RULES.values():
        assert rule in text  # the rules are stated on the page
    assert any(w.startswith("small set: 'validation' has 3 positive and 4 negative") for w in ev["warnings"])


def test_implausible_calibration_slope_is_not_estimable():
    # predictions squeezed near 0.5 while the outcome follows the ranking steeply: slope ~ 30
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-3 * x))).astype(int)
    p = 1 / (1 + np.exp(-0.1 * x))
    ev = report.evaluate_models({"s": _frame(y, {"m": p})}, ["m"], {"m": 0.5})
    rec = ev["sets"]["s"]["models"]["m"]["calibration"]["recalibration"]
    assert rec["slope"] > report.MAX_ABS_SLOPE
    assert "outside the plausible range" in rec["not_estimable"]


def test_confusion_tables_add_up_and_holm_and_escaping(tmp_path):
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(40, int), np.ones(30, int)]
    probs = {m: np.clip(0.3 + k * y + rng.normal(0, 0.2, 70), 0, 1) for m, k in
             (("<script>alert(1)</script>", 0.2), ("b", 0.3), ("c", 0.1))}
    names = list(probs)
    ev = report.evaluate_models({"val": _frame(y, probs)}, names, {m: 0.45 for m in names})
    ev["features"] = {names[0]: [{"name": "<img src=x onerror=alert(1)>", "coefficient": 0.5}]}
    page = report.write_evaluation_report(tmp_path, ev).read_text(encoding="utf-8")
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    for m in names:
        k = ev["sets"]["val"]["models"][m]["classification"]["counts"]
        assert k["tp"] + k["fn"] == 30 and k["tn"] + k["fp"] == 40
        cap = html_mod.escape(f"val · {m}", quote=True)
        block = page[page.index(f"<caption>{cap}</caption>"):]
        block = block[:block.index("</table>")]
        cells = [int(c) for c in re.findall(r'<td class="num">(\d+)</td>', block)]
        assert cells == [k["tp"], k["fn"], 30, k["fp"], k["tn"], 40, k["tp"] + k["fp"], k["fn"] + k["tn"], 70]
    d = ev["sets"]["val"]["delong"]
    assert len(d) == 3
    ps = [x["p"] for x in d]
    order = np.argsort(ps)
    assert d[order[0]]["p_holm"] == pytest.approx(min(1, 3 * ps[order[0]]))
    assert "Multiplicity: this table holds 3 estimable test(s)" in html_mod.unescape(page)


def test_cv_status_rules():
    cols = ["radiomics", "radiomics_cv", "fusion", "fusion_cv", "deep"]
    man = {"models": {"radiomics": {"kind": "radiomics", "cv_column": "radiomics_cv", "oof_probabilities_honest": True},
                      "deep": {"kind": "deep", "cv_column": None, "oof_probabilities_honest": False,
                               "cv_unavailable_reason": "the network was not cross-validated (use --deep-cv K)"},
                      "fusion": {"kind": "fusion", "cv_column": "fusion_cv"}},
           "fusion": {"deep_features_in_sample": True}}
    assert cv_status(man, "radiomics", cols)["honest"] is True
    st = cv_status(man, "deep", cols)
    assert not st["honest"] and st["reason"].startswith("the network was not cross-validated")
    st = cv_status(man, "fusion", cols)  # an old bundle: no record, judged from what it records
    assert not st["honest"] and "in-sample" in st["reason"] and st["source"].startswith("inferred")
    man["fusion"]["deep_features_in_sample"] = False
    assert cv_status(man, "fusion", cols)["honest"] is True


def test_cross_validated_set_keeps_honest_models_only(tmp_path):
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    p = {m: np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 40), 0, 1) for m in ("radiomics", "deep")}
    sets = {"training (apparent)": _frame(y, p), "training (cross-validated)": _frame(y, {"radiomics": p["radiomics"]})}
    ev = report.evaluate_models(sets, ["radiomics", "deep"], {"radiomics": 0.5, "deep": 0.5},
                                set_models={"training (cross-validated)": ["radiomics"]},
                                unavailable={"training (cross-validated)": {"deep": "no out-of-fold network"}})
    cv = ev["sets"]["training (cross-validated)"]
    assert list(cv["models"]) == ["radiomics"] and cv["unavailable"] == {"deep": "no out-of-fold network"}
    assert cv["delong"] == []
    page = html_mod.unescape(report.write_evaluation_report(tmp_path, ev).read_text(encoding="utf-8"))
    assert "not available" in page and "no out-of-fold network" in page


def test_demo_layout_report_says_synthetic_and_has_model_card(trained_bundle, small_cohort, tmp_path):
    """The demo's layout (cohort/ from the synthetic generator beside model/): the report's
    title and summary say SYNTHETIC DATA; model card, checklist, funnel and ICC figure present."""
    path, _ = trained_bundle
    shutil.copytree(small_cohort.parent, tmp_path / "cohort")
    shutil.copytree(path, tmp_path / "model")
    res = evaluate_bundle(tmp_path / "model", tmp_path / "report")
    assert res["data_source"]["synthetic"] and "hash matches" in res["data_source"]["how"]
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    assert "SYNTHETIC DATA" in title and res["title"] == html_mod.unescape(title)
    summary = page[page.index('<section id="summary">'):page.index('<section id="model-card">')]
    assert "SYNTHETIC DATA." in summary
    assert res["warnings"][0].startswith("SYNTHETIC DATA")
    text = html_mod.unescape(page)
    for needle in ("Model card", "Intended use.", "Population.", "Data source.", "What was fitted on what",
                   "Limitations", "lesion-level", "Research use only", "Reporting checklist (TRIPOD+AI style)",
                   "Eligibility criteria of participants", "Selection funnel: radiomics",
                   "Reader agreement (ICC) per feature class", "Confusion tables", 'alt="LASSO path"',
                   "coarse probabilities: radiomics: an ExtraTrees of", "apparent (resubstitution)"):
        assert needle in text, needle
    assert "training must store" not in text        # the bundle records the LASSO path
    path_rec = json.loads((path / "manifest.json").read_text())["radiomics"]["lasso_path"]
    assert len(path_rec["C"]) == len(path_rec["cv_mean"]) == len(path_rec["cv_se"]) >= 2
    assert path_rec["chosen_C"] in path_rec["C"] and path_rec["coefficients"]
    assert all(len(v) == len(path_rec["C"]) for v in path_rec["coefficients"].values())
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [s["features"] for s in metrics["selection"]["funnels"]["radiomics"]] == \
        list(json.loads((path / "manifest.json").read_text())["radiomics"]["selection_counts"].values())
    assert sum(c["n"] for c in metrics["reader_agreement"]["classes"].values()) == \
        len(pd.read_csv(path / "training" / "feature_icc.csv"))
    # without the cohort beside it, nothing marks the data; --data-source says it
    from HRMMPredictLib.bundle import load_bundle

    assert detect_data_source(load_bundle(path))["how"] == "not recorded"
    given = detect_data_source(load_bundle(path), "Site A, 2019-2023 (retrospective)")
    assert given == {"text": "Site A, 2019-2023 (retrospective)", "synthetic": False, "how": "given with --data-source"}


def test_deep_model_does_not_drop_the_honest_estimate(fused_bundle, tmp_path):
    """The issue's headline: with a deep model (no out-of-fold probabilities) the radiomics
    models' cross-validated results stay; deep and the in-sample-deep fusion say why not."""
    path, _ = fused_bundle
    res = evaluate_bundle(path, tmp_path / "r", data_source="synthetic test cohort")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    cv = metrics["sets"]["training (cross-validated)"]
    assert "radiomics" in cv["models"] and "deep" not in cv["models"]
    assert cv["unavailable"]["deep"]
    preds = pd.read_csv(path / "training" / "predictions.csv")
    tr = preds[preds["split"] == "train"]
    from HRMMPredictLib.evaluation import stats

    assert cv["models"]["radiomics"]["auc"]["auc"] == pytest.approx(
        stats.roc_auc_delong(tr["label"], tr["radiomics_cv"])["auc"])
    assert any(w.startswith("no honest cross-validated estimate for deep") for w in res["warnings"])
    page = html_mod.unescape((tmp_path / "r" / "index.html").read_text(encoding="utf-8"))
    assert "not available" in page and res["title"].endswith("SYNTHETIC DATA")
