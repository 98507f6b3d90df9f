"""The HRMMPredict panel's Qt-free helpers: guessing the sequences from series names, the
package check of first use, and the result as shown and exported."""

from __future__ import annotations

import csv
import json
import math
import re
import tomllib
from pathlib import Path

import pytest

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.slicer_packages import Requirement, _fallback_ok
from HRMMPredictLib.slicer import packages
from HRMMPredictLib.slicer.panel_results import (
    bundle_has_deep_model,
    bundle_model_kinds,
    bundle_summary_lines,
    export_result,
    feature_rows,
    manifest_model_kinds,
    model_rows,
    ordered_models,
    preview_images,
    read_result,
    result_lines,
)
from HRMMPredictLib.slicer.series_guess import guess_sequences, role_scores

ROOT = Path(__file__).resolve().parents[3]  # the project (Testing/hrmm/panel/this file)


# ---------------------------------------------------------------------------------------
# Series guess


def chosen(names: list[str]) -> dict[str, str | None]:
    guess = guess_sequences({f"vtkMRMLScalarVolumeNode{i}": name for i, name in enumerate(names)})
    return {role: (g.name if g else None) for role, g in guess.items()}


@pytest.mark.parametrize("names, expected", [
    # Siemens: TIRM is its STIR
    (["1: localizer", "2: t1_tse_sag", "3: T2 TSE SAG", "4: t2_tirm_sag"],
     {"t1": "2: t1_tse_sag", "t2": "3: T2 TSE SAG", "fst2": "4: t2_tirm_sag"}),
    # STIR without "t2"; an axial T2 and a post-contrast T1 are not taken
    (["T2 AX", "SAG STIR", "Sag T2 FSE", "Sag T1 FSE", "SAG T1 +C"],
     {"t1": "Sag T1 FSE", "t2": "Sag T2 FSE", "fst2": "SAG STIR"}),
    # "fs", "fat sat", SPAIR; "FSE"/"TSE" are not fat suppression
    (["t2_tse_fs_sag", "t1_tse_sag", "t2_fse_sag"], {"t1": "t1_tse_sag", "t2": "t2_fse_sag", "fst2": "t2_tse_fs_sag"}),
    (["T2W_TSE_SAG", "T2W_SPAIR_SAG", "T1W_TSE_SAG"],
     {"t1": "T1W_TSE_SAG", "t2": "T2W_TSE_SAG", "fst2": "T2W_SPAIR_SAG"}),
    (["sag t2 fat sat", "sag t2", "sag t1"], {"t1": "sag t1", "t2": "sag t2", "fst2": "sag t2 fat sat"}),
    # Dixon: the water image is the fat-suppressed one; fat / opposed-phase images are not T2WI
    (["t2_tse_dixon_sag_W", "t2_tse_dixon_sag_F", "t2_tse_dixon_sag_opp", "t1_tse_sag"],
     {"t1": "t1_tse_sag", "t2": None, "fst2": "t2_tse_dixon_sag_W"}),
    # nothing plausible: no guess rather than a bad one
    (["localizer", "t2_tse_tra", "DWI_b800", "ADC"], {"t1": None, "t2": None, "fst2": None}),
    # T2* gradient echo is not T2WI
    (["t2*_me2d_sag", "T1 SAG"], {"t1": "T1 SAG", "t2": None, "fst2": None}),
])
def test_guess_sequences(names, expected):
    assert chosen(names) == expected


def test_each_series_fills_one_role_and_sagittal_wins():
    guess = guess_sequences([("a", "T2 TSE COR"), ("b", "T2 TSE SAG"), ("c", "T2 TSE")])
    assert guess["t2"].key == "b" and "sagittal" in guess["t2"].reason
    assert guess["t1"] is None and guess["fst2"] is None
    assert role_scores("T2 TSE SAG")["t2"][0] > role_scores("T2 TSE")["t2"][0] > 0
    assert role_scores("T2 TSE COR")["t2"][0] < role_scores("T2 TSE")["t2"][0]


# ---------------------------------------------------------------------------------------
# First-use packages


def test_requirement_lower_bounds_follow_pyproject():
    """The panel installs what the library is developed with: same lower bounds."""
    declared = {}
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower()
        declared[name] = spec.replace(" ", "")
    for req in packages.requirements_for(["radiomics", "deep", "fusion"]):
        assert declared.get(req.distribution.lower()) == req.spec, f"{req.spec} vs pyproject {declared.get(req.distribution.lower())}"


def test_requirements_depend_on_the_bundle_models():
    radiomics_only = {r.distribution for r in packages.requirements_for(["radiomics"])}
    with_deep = {r.distribution for r in packages.requirements_for(["radiomics", "deep", "fusion"])}
    assert "torch" not in radiomics_only and {"pyradiomics", "scikit-learn", "skops"} <= radiomics_only
    assert with_deep - radiomics_only == {"torch", "monai", "safetensors", "Pillow"}


def test_missing_requirements_on_this_python():
    # everything the library needs is installed here (the test environment is the library's)
    assert packages.missing_requirements(packages.requirements_for(["radiomics", "deep"])) == []
    import numpy

    too_new = Requirement("numpy>=999.0", "numpy")
    absent = Requirement("hrmm-no-such-package>=1.0", "hrmm_no_such_package")
    fine = Requirement("numpy>=1.0", "numpy")
    missing = packages.missing_requirements([fine, too_new, absent])
    assert [m.requirement for m in missing] == [too_new, absent]
    assert missing[0].reason == f"version {numpy.__version__} is installed, >=999.0 is needed"
    assert str(missing[1]) == "hrmm-no-such-package>=1.0 (not installed)"


def test_version_check_without_packaging():
    assert _fallback_ok("1.8.0", "scikit-learn>=1.8")
    assert _fallback_ok("3.0.1", "pyradiomics>=3.0.1")
    assert not _fallback_ok("1.7.2", "scikit-learn>=1.8")
    assert not _fallback_ok("0.9", "skops>=0.10")  # numbers, not strings


# ---------------------------------------------------------------------------------------
# Results


RESULT = {
    "model": "fusion", "probability": 0.71, "class": "HRMM", "threshold": 0.45,
    "models": {
        "radiomics_t2": {"probability": 0.62, "threshold": 0.5, "class": "HRMM", "classifier": "ExtraTrees"},
        "deep": {"probability": 0.38, "threshold": 0.41, "class": "SRMM", "kind": "deep"},
        "fusion": {"probability": 0.71, "threshold": 0.45, "class": "HRMM", "inputs": ["radiomics_t2", "deep"]},
    },
    "features": [
        {"name": "t2_original_firstorder_Mean", "sequence": "T2WI", "feature": "original_firstorder_Mean",
         "value": 412.5, "train_min": 300.0, "train_max": 500.0, "in_training_range": True},
        {"name": "fst2_original_glcm_Idm", "sequence": "FS-T2WI", "feature": "original_glcm_Idm",
         "value": 0.91, "train_min": 0.2, "train_max": 0.8, "in_training_range": False},
    ],
    "warnings": ["fst2_original_glcm_Idm = 0.91 lies outside the training range [0.2, 0.8]"],
}


def test_models_are_listed_fused_first_then_primary():
    assert [name for name, _ in ordered_models(RESULT)] == ["fusion", "radiomics_t2", "deep"]
    radiomics_primary = {"model": "radiomics_b", "models": {"radiomics_a": {}, "radiomics_b": {}}}
    assert [name for name, _ in ordered_models(radiomics_primary)] == ["radiomics_b", "radiomics_a"]
    rows = model_rows(RESULT)
    assert rows[0] == {"model": "fusion", "probability": 0.71, "threshold": 0.45, "class": "HRMM", "primary": True,
                       "inputs": ["radiomics_t2", "deep"]}
    assert rows[1]["classifier"] == "ExtraTrees" and rows[2]["kind"] == "deep" and rows[2]["primary"] is False
    assert feature_rows(RESULT) == RESULT["features"] and feature_rows(RESULT) is not RESULT["features"]


def test_result_lines():
    assert result_lines(RESULT) == [
        "fusion (primary): HRMM - probability of high risk 0.710 (threshold 0.450)",
        "radiomics_t2: HRMM - probability of high risk 0.620 (threshold 0.500)",
        "deep: SRMM - probability of high risk 0.380 (threshold 0.410)",
        "1 of 2 selected features lie outside their training range",
    ]


def test_export_json_and_csv(tmp_path):
    result = json.loads(json.dumps(RESULT))
    result["models"]["deep"]["probability"] = math.nan  # strict JSON on export
    exported = export_result(result, tmp_path / "case.json")
    back = json.loads(exported.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert back["models"]["deep"]["probability"] is None and back["features"] == RESULT["features"]
    assert read_result(exported)["model"] == "fusion"

    assert export_result(RESULT, tmp_path / "case.csv") == tmp_path / "case.csv"
    with (tmp_path / "case.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["section"] for r in rows] == ["model"] * 3 + ["feature"] * 2
    assert [r["model"] for r in rows[:3]] == ["fusion", "radiomics_t2", "deep"]
    assert float(rows[0]["probability"]) == 0.71 and rows[0]["primary"] == "True"
    assert rows[4]["name"] == "fst2_original_glcm_Idm" and float(rows[4]["value"]) == 0.91
    assert rows[4]["in_training_range"] == "False" and rows[0]["value"] == ""
    assert json.loads(rows[0]["inputs"]) == ["radiomics_t2", "deep"]


def test_export_never_leaves_a_half_written_file(tmp_path):
    target = tmp_path / "case.csv"
    target.write_text("the user's earlier export\n")
    with pytest.raises(UserError, match=r"cannot export to case\.xlsx: use a \.json or \.csv"):
        export_result(RESULT, tmp_path / "case.xlsx")
    bad = dict(RESULT, features=[{"name": object()}])  # cannot be written
    with pytest.raises(TypeError, match="not JSON serialisable"):  # a programming error, not bad input
        export_result(bad, tmp_path / "case.json")
    assert not (tmp_path / "case.json").exists()
    assert target.read_text() == "the user's earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.csv"]  # no temporary left behind


def test_read_result_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_result(tmp_path / "none.json")
    (tmp_path / "x.json").write_text('{"model": "a"}')
    with pytest.raises(UserError, match="is not an HRMM prediction result"):
        read_result(tmp_path / "x.json")


def test_preview_images_from_base64_and_files(tmp_path):
    import base64
    import io

    from PIL import Image

    def png(colour) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    crops, other = png((255, 0, 0)), png((0, 255, 0))
    (tmp_path / "crops.png").write_bytes(crops)  # the same picture as the base64 one: listed once
    (tmp_path / "other.png").write_bytes(other)
    (tmp_path / "fake.png").write_text("not a png")
    result = dict(RESULT, deep_input={"preview_png_base64": base64.b64encode(crops).decode(),
                                      "preview_png": "crops.png", "crops": [{"slice": 3}]},
                  extra={"pictures": [str(tmp_path / "other.png"), "fake.png", "missing.png"],
                         "bad_png_base64": "%%% not base64"})
    assert preview_images(result, base=tmp_path) == [("deep_input preview_png_base64", crops),
                                                     ("extra pictures 1", other)]
    assert preview_images(RESULT, base=tmp_path) == []


# A bundle summary as HRMMPredictLib.bundle.Bundle.summary() gives it (the fused bundle of the
# test cohort; shortened)
SUMMARY = {
    "path": "/models/bundle", "created": "2026-11-21T00:56:48+00:00", "primary_model": "fusion",
    "cohort": [{"split": "all", "patients": 16, "lesions": 20, "positives": 7, "negatives": 13},
               {"split": "train", "patients": 13, "lesions": 15, "positives": 5, "negatives": 10}],
    "models": {
        "radiomics": {"kind": "radiomics", "classifier": "extratrees", "threshold": 0.3125, "cv_auc": 0.91,
                      "validation_auc": {"auc": 0.8333, "se": 0.1, "ci95": [0.5, 1.0], "n": 5}},
        "deep": {"kind": "deep", "classifier": "densenet169", "threshold": 0.4722, "cv_auc": None,
                 "validation_auc": {"auc": 0.5, "ci95": [0.0, 1.0], "n": 5}},
        "fusion": {"kind": "fusion", "classifier": "extratrees", "threshold": 0.290625, "cv_auc": 1.0,
                   "validation_auc": None},
    },
}


def test_bundle_summary_lines():
    assert bundle_summary_lines(SUMMARY) == [
        "Trained 2026-11-21 00:56; primary model: fusion",
        "Cohort all: 16 patients, 20 lesions (7 HRMM / 13 SRMM)",
        "Cohort train: 13 patients, 15 lesions (5 HRMM / 10 SRMM)",
        "fusion (extratrees): cross-validation AUC 1.000, threshold 0.291",
        "radiomics (extratrees): validation AUC 0.833 (95% CI 0.500-1.000, n = 5), cross-validation AUC 0.910, "
        "threshold 0.312",
        "deep (densenet169): validation AUC 0.500 (95% CI 0.000-1.000, n = 5), threshold 0.472",
    ]
    assert bundle_summary_lines({"created": None, "models": {}}) == ["Trained on an unknown date"]
    assert bundle_summary_lines({"created": "21 Nov 2026", "cohort": {"patients": 16}})[:2] == [
        "Trained 21 Nov 2026", "Cohort patients: 16"]


def test_bundle_model_kinds_decide_the_packages():
    assert bundle_model_kinds(SUMMARY) == ["radiomics", "deep", "fusion"] and bundle_has_deep_model(SUMMARY)
    radiomics_only = {"models": {"radiomics": {"kind": "radiomics"}, "radiomics_logistic": {"kind": "radiomics"}}}
    assert bundle_model_kinds(radiomics_only) == ["radiomics"] and not bundle_has_deep_model(radiomics_only)
    assert "torch" in {r.distribution for r in packages.requirements_for(bundle_model_kinds(SUMMARY))}
    assert "torch" not in {r.distribution for r in packages.requirements_for(bundle_model_kinds(radiomics_only))}


def test_manifest_model_kinds_without_packages(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"models": SUMMARY["models"]}))
    assert manifest_model_kinds(tmp_path) == ["radiomics", "deep", "fusion"]
    with pytest.raises(UserError, match="is not a model bundle \\(no manifest.json\\)"):
        manifest_model_kinds(tmp_path / "elsewhere")
    (tmp_path / "manifest.json").write_text("{damaged")
    with pytest.raises(UserError, match="could not be read \\(JSONDecodeError\\)"):
        manifest_model_kinds(tmp_path)
