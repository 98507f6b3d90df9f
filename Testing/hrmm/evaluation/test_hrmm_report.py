"""HRMMPredictLib.evaluation.report: evaluate_models on synthetic predictions (numpy RNG) gives exactly
the numbers of HRMMPredictLib.evaluation.stats, and write_evaluation_report writes an offline HTML page
plus strict-JSON metrics atomically."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.evaluation import report
from HRMMPredictLib.evaluation import stats

MODELS = ["radiomics", "deep", "fusion"]


def make_sets(seed: int = 0, overlap: bool = False) -> dict:
    """Synthetic lesions: two per patient; three models whose logits share the true signal."""
    rng = np.random.default_rng(seed)
    sets = {}
    for name, n, noise in (("training", 120, 0.6), ("validation", 50, 1.0)):
        y = rng.integers(0, 2, n)
        y[:2], y[2:4] = 0, 1  # both classes present
        base = rng.normal(0, 1, n) + 1.4 * y
        prefix = "t" if overlap else name[0]  # overlap: validation reuses training patient ids
        pids = [f"{prefix}{i // 2:03d}" for i in range(n)]
        df = pd.DataFrame({"label": y, "patient_id": pids, "lesion_id": [f"L{i % 2}" for i in range(n)]})
        for m, k in zip(MODELS, (1.0, 0.7, 1.3)):
            df[m] = 1 / (1 + np.exp(-(k * base + rng.normal(0, noise, n) - 0.7)))
        sets[name] = df
    return sets


def strict_json(path):
    def no_constants(c):
        raise AssertionError(f"non-standard JSON constant {c}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    sets = make_sets()
    thr = report.thresholds_from_training(sets["training"], MODELS)
    ev = report.evaluate_models(sets, MODELS, thr)
    ev["features"] = {"radiomics": [{"name": "T2_wavelet-LLH_glcm_Idmn", "coefficient": -0.8},
                                    {"name": "FS-T2_original_firstorder_Skewness", "coefficient": 1.2}],
                      "fusion": [{"name": f"deep_pca_{i}", "importance": 0.1 * (i + 1)} for i in range(5)]}
    ev["cohort"] = [{"split": "training", "patients": 60, "lesions": 120, "positives": 61, "negatives": 59},
                    {"split": "validation", "patients": 25, "lesions": 50, "positives": 24, "negatives": 26}]
    ev["settings"] = {"seed": 7, "selection": {"icc_threshold": 0.75, "lasso": "1-SE"}}
    ev["versions"] = {"numpy": np.__version__, "pandas": pd.__version__}
    out = tmp_path_factory.mktemp("report")
    index = report.write_evaluation_report(out, ev)
    return sets, thr, ev, out, index


def test_thresholds_are_youden_on_training(built):
    sets, thr, ev, _, _ = built
    tr = sets["training"]
    for m in MODELS:
        assert thr[m] == stats.youden_threshold(tr["label"], tr[m])["threshold"]
        assert ev["thresholds"][m] == thr[m]


def test_files_exist_and_metrics_json_equals_stats(built):
    sets, thr, ev, out, index = built
    assert index == out / "index.html" and index.is_file()
    metrics = strict_json(out / "metrics.json")
    assert metrics["models"] == MODELS and metrics["set_order"] == ["training", "validation"]
    for s, df in sets.items():
        y = df["label"].to_numpy()
        block = metrics["sets"][s]
        assert block["summary"]["lesions"] == len(df) and block["summary"]["patients"] == len(df) // 2
        assert block["summary"]["positives"] == int(y.sum())
        for m in MODELS:
            p = df[m].to_numpy()
            r = block["models"][m]
            auc = stats.roc_auc_delong(y, p)
            assert r["auc"]["auc"] == auc["auc"] and r["auc"]["ci95"] == auc["ci95"]
            assert r["roc"] == stats.roc_curve_points(y, p)
            assert r["classification"] == stats.classification_metrics(y, p, thr[m])
            cal = r["calibration"]
            assert cal["brier"] == stats.brier_score(y, p)
            assert cal["curve"] == stats.calibration_curve(y, p, block["summary"]["calibration_bins"])
            rec = {k: v for k, v in cal["recalibration"].items() if k != "not_estimable"}
            assert rec == stats.calibration_slope_intercept(y, p)
            # the reliability curve and Hosmer-Lemeshow share their groups (about 10 lesions each)
            g = block["summary"]["hosmer_lemeshow_groups"]
            assert g == block["summary"]["calibration_bins"] == min(10, len(df) // 10)
            assert cal["hosmer_lemeshow"] == stats.hosmer_lemeshow(y, p, g)
            assert [grp["n"] for grp in cal["hosmer_lemeshow"]["groups"]] == cal["curve"]["n"]
            dca = stats.decision_curve(y, p, [i / 100 for i in range(100)])
            assert r["dca"]["net_benefit"] == pytest.approx(dca["net_benefit"], abs=1e-15)
            assert r["dca"]["treat_all"] == pytest.approx(dca["treat_all"], abs=1e-15)
        pairs = [(d["model_a"], d["model_b"]) for d in block["delong"]]
        assert pairs == [("radiomics", "deep"), ("radiomics", "fusion"), ("deep", "fusion")]
        for d in block["delong"]:
            ref = stats.delong_paired(y, df[d["model_a"]], df[d["model_b"]])
            for k in ("auc_a", "auc_b", "diff", "z", "p", "diff_ci95"):
                assert d[k] == ref[k], (s, d["model_a"], d["model_b"], k)
        # Holm: the smallest p times the number of tests, monotone
        ps = sorted(d["p"] for d in block["delong"])
        holm = sorted(d["p_holm"] for d in block["delong"])
        assert holm[0] == pytest.approx(min(1.0, 3 * ps[0]))
        assert holm == sorted(holm) and all(h >= p for h, p in zip(holm, ps))
    assert metrics["checks"]["patients_in_several_sets"] == {}
    assert metrics["features"]["radiomics"][1]["coefficient"] == 1.2
    # ~10 lesions per reliability bin: 50 validation lesions -> 5 bins
    assert metrics["sets"]["validation"]["summary"]["calibration_bins"] == 5
    assert len(metrics["sets"]["validation"]["models"]["fusion"]["calibration"]["curve"]["n"]) == 5


def test_html_is_offline_and_has_all_sections(built):
    _, _, ev, _, index = built
    page = index.read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # ROC, calibration, DCA + one bar plot per model with features
    assert len(imgs) == 3 + 2
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"<img ", page)) == len(imgs)
    for text in ("ROC curves", "Calibration", "Decision curves", "paired DeLong", "Selected features",
                 "Cohort", "Settings", "Versions", "Methods", "FS-T2_original_firstorder_Skewness",
                 "selection.icc_threshold", "Hosmer-Lemeshow"):
        assert text in page, text
    # the validation AUC of the fused model with its CI, as printed in the metrics table
    a = ev["sets"]["validation"]["models"]["fusion"]["auc"]
    assert f"{a['auc']:.3f}" in page and f"{a['ci95'][0]:.3f}" in page


def test_report_escapes_html_and_warns_about_patient_overlap(tmp_path):
    sets = make_sets(seed=3, overlap=True)  # validation patients reuse training ids
    thr = report.thresholds_from_training(sets["training"], MODELS)
    ev = report.evaluate_models(sets, MODELS, thr, dca_thresholds=[0.1, 0.2, 0.3])
    assert ev["checks"]["patients_in_several_sets"]["training & validation"]
    ev["settings"] = {"note": "<b>bold</b> & more"}
    page = report.write_evaluation_report(tmp_path, ev).read_text(encoding="utf-8")
    assert "patient overlap: " in page and any(w.startswith("patient overlap") for w in ev["warnings"])
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page and "<b>bold</b>" not in page
    assert ev["sets"]["training"]["models"]["deep"]["dca"]["threshold"] == [0.1, 0.2, 0.3]


def test_perfect_separation_is_reported_not_fatal(tmp_path):
    sets = make_sets(seed=5)
    for df in sets.values():  # a model that separates the classes perfectly
        df["fusion"] = np.where(df["label"] == 1, 0.9, 0.1) + np.linspace(0, 0.05, len(df))
    thr = report.thresholds_from_training(sets["training"], MODELS)
    ev = report.evaluate_models(sets, MODELS, thr)
    r = ev["sets"]["validation"]["models"]["fusion"]
    assert r["auc"]["auc"] == 1.0
    assert "separate" in r["calibration"]["recalibration"]["error"]
    assert "no calibration fit" in r["calibration"]["recalibration"]["not_estimable"]
    # AUC 1 on every lesion: DeLong variance 0, so no 1.000-1.000 interval is printed
    assert "DeLong variance is 0" in r["auc"]["ci_not_estimable"]
    page = report.write_evaluation_report(tmp_path, ev).read_text(encoding="utf-8")
    assert "not estimable" in page and "1.000–1.000" not in page
    strict_json(tmp_path / "metrics.json")


def test_bad_input(tmp_path):
    sets = make_sets(seed=1)
    thr = report.thresholds_from_training(sets["training"], MODELS)
    with pytest.raises(UserError, match="no threshold given for model 'fusion'"):
        report.evaluate_models(sets, MODELS, {"radiomics": 0.5, "deep": 0.5})
    bad = {k: v.drop(columns=["lesion_id"]) if k == "validation" else v for k, v in sets.items()}
    with pytest.raises(UserError, match="set 'validation' lacks column"):
        report.evaluate_models(bad, MODELS, thr)
    const = {k: v.assign(deep=0.3) if k == "validation" else v for k, v in sets.items()}
    with pytest.raises(UserError, match="set 'validation' model 'deep'.*constant"):
        report.evaluate_models(const, MODELS, thr)
    dup = {k: pd.concat([v, v.head(1)]) if k == "training" else v for k, v in sets.items()}
    with pytest.raises(UserError, match="more than once"):
        report.evaluate_models(dup, MODELS, thr)
    (tmp_path / "afile").write_text("x")
    ev = report.evaluate_models(sets, MODELS, thr, dca_thresholds=[0.2])
    with pytest.raises(UserError, match="is a file"):
        report.write_evaluation_report(tmp_path / "afile", ev)


def test_failed_write_leaves_previous_report_untouched(tmp_path):
    (tmp_path / "index.html").write_text("previous report", encoding="utf-8")
    with pytest.raises(UserError):
        report.write_evaluation_report(tmp_path, {"models": MODELS})
    assert (tmp_path / "index.html").read_text(encoding="utf-8") == "previous report"
    assert not (tmp_path / "metrics.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]  # no temporary files left
