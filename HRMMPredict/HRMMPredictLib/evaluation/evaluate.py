"""``hrmm evaluate``: every statistic of every model in a bundle, on its training and
validation sets and on any other cohort (e.g. an external one), as an HTML report and
``metrics.json``.

Sets:
- ``training``: training lesions, the fitted model's own (apparent) probabilities, as the
  paper reports them;
- ``training (cross-validated)``: the same lesions' out-of-fold probabilities (each from a
  pipeline that never saw the lesion; the honest training-set estimate);
- ``validation``: the held-out patients of the bundle's own split;
- one set per further cohort manifest (CSV): probabilities from :func:`HRMMPredictLib.predict.predict_case`
  on each lesion's images (the same path as ``hrmm predict``).

Thresholds are the ones stored in the bundle (fixed on training data); nothing is refitted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import check_output_path
from HRMMPredictLib.bundle import Bundle, load_bundle, software_versions
from HRMMPredictLib.sequences import SEQUENCES

REPORT_FILES = ("index.html", "metrics.json")

ID_COLUMNS = ("lesion_id", "patient_id", "label", "split")


def bundle_models(bundle: Bundle, preds: pd.DataFrame) -> list[str]:
    """Models of the bundle that have stored predictions, primary model first."""
    names = [m for m in bundle.manifest.get("models", {}) if m in preds.columns]  # the bundle manifest
    primary = bundle.manifest.get("primary_model")
    if primary in names:
        names.remove(primary)
        names.insert(0, primary)
    return names


def stored_sets(bundle: Bundle, models: Sequence[str]) -> dict[str, pd.DataFrame]:
    preds = pd.read_csv(bundle.path / "training" / "predictions.csv", dtype={"lesion_id": str, "patient_id": str})
    sets: dict[str, pd.DataFrame] = {}
    train = preds[preds["split"] == "train"]
    sets["training"] = train[["lesion_id", "patient_id", "label", *models]].reset_index(drop=True)
    cv_cols = {f"{m}_cv": m for m in models if f"{m}_cv" in preds.columns}
    if len(cv_cols) == len(models):
        cv = train[["lesion_id", "patient_id", "label", *cv_cols]].rename(columns=cv_cols)
        sets["training (cross-validated)"] = cv.reset_index(drop=True)
    val = preds[preds["split"] == "validation"]
    if len(val):
        sets["validation"] = val[["lesion_id", "patient_id", "label", *models]].reset_index(drop=True)
    return sets


def predict_cohort(bundle: Bundle, cohort_path: str | os.PathLike, models: Sequence[str],
                   progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """Probabilities of every model for every lesion of a (new) cohort, given by its
    cohort manifest, via predict_case."""
    from HRMMPredictLib.cohort import load_cohort_manifest
    from HRMMPredictLib.predict import predict_case

    cohort = load_cohort_manifest(cohort_path)
    rows = []
    n = len(cohort)
    for i, r in enumerate(cohort.itertuples(index=False), start=1):
        rd = r._asdict()
        res = predict_case({s: rd[s] for s in SEQUENCES}, rd["roi"], bundle, preview=False)
        row = {"lesion_id": str(rd["lesion_id"]), "patient_id": str(rd["patient_id"]), "label": int(rd["label"])}
        for m in models:
            row[m] = res["models"][m]["probability"]
        rows.append(row)
        if progress:
            progress(i, n, str(rd["lesion_id"]))
    return pd.DataFrame(rows)


def check_report_folder(out_dir: str | os.PathLike, model_dir, cohorts: Sequence = (), overwrite: bool = False) -> Path:
    """The overwrite policy for a report folder: not a file, not the model bundle, and its
    ``index.html`` / ``metrics.json`` replaced only with ``overwrite``."""
    out = check_output_path(out_dir, overwrite=True, what="report folder", folder=True,
                            inputs=[model_dir, *cohorts])
    for name in REPORT_FILES:
        check_output_path(out / name, overwrite=overwrite, what="report file", inputs=cohorts)
    return out


def evaluate_bundle(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    cohorts: Sequence[str | os.PathLike] = (), progress: Callable[[str], None] | None = None,
                    bar: Callable[[int, int, str], None] | None = None, overwrite: bool = False) -> dict:
    """Evaluate every model of a bundle and write the report into ``out_dir``
    (``index.html``, ``metrics.json``; existing ones are replaced only with ``overwrite``).

    ``cohorts``: cohort manifests (CSV) to evaluate besides the bundle's own split; one
    identical to the training cohort (same cohort hash) adds nothing and is skipped with a
    note."""
    from HRMMPredictLib.cohort import cohort_hash, load_cohort_manifest
    from HRMMPredictLib.evaluation.report import evaluate_models, write_evaluation_report

    say = progress or (lambda s: None)
    check_report_folder(out_dir, model_dir, cohorts, overwrite)  # refused before any work
    bundle = load_bundle(model_dir)
    man = bundle.manifest
    preds = pd.read_csv(bundle.path / "training" / "predictions.csv", nrows=1)
    models = bundle_models(bundle, preds)
    if not models:
        raise UserError(f"model bundle {bundle.path} has no stored predictions to evaluate; retrain it")
    sets = stored_sets(bundle, models)
    notes = []
    cohort_rows = list(man.get("cohort", {}).get("summary", []))
    for mpath in cohorts:
        name = Path(mpath).stem
        cohort = load_cohort_manifest(mpath)
        if cohort_hash(cohort) == man.get("cohort", {}).get("hash"):
            notes.append(f"{mpath} is the training cohort; its training and validation sets are reported from "
                         "the bundle's own split")
            continue
        say(f"predicting the {len(cohort)} lesions of {mpath}")
        key = name if name not in sets else f"{name} ({len(sets)})"
        sets[key] = predict_cohort(bundle, mpath, models, bar)
        s = sets[key]
        cohort_rows.append({"split": key, "patients": int(s["patient_id"].nunique()), "lesions": int(len(s)),
                            "positives": int((s["label"] == 1).sum()), "negatives": int((s["label"] == 0).sum())})
    thresholds = {m: man["models"][m]["threshold"] for m in models}
    say(f"computing statistics for {len(models)} model(s) on {len(sets)} set(s)")
    ev = evaluate_models(sets, models, thresholds)
    ev["title"] = "HRMM model evaluation"
    ev["features"] = {m: man["models"][m].get("importances") or
                      [{"name": f["name"]} for f in man["models"][m].get("features", [])] for m in models}
    ev["cohort"] = cohort_rows
    ev["settings"] = {
        "model bundle": str(bundle.path), "created": man.get("created"), "primary model": man.get("primary_model"),
        "training": man.get("training", {}), "radiomics": man.get("radiomics", {}),
        "thresholds (fixed on training data)": {m: man["models"][m].get("threshold_rule") for m in models},
        "notes": notes,
    }
    ev["versions"] = {"bundle (training)": man.get("software", {}), "this evaluation": software_versions()}
    index = write_evaluation_report(out_dir, ev)
    return {"report": str(index), "metrics": str(Path(out_dir) / "metrics.json"), "models": models,
            "sets": {k: {m: ev["sets"][k]["models"][m]["auc"]["auc"] for m in models} for k in ev["sets"]},
            "notes": notes}
