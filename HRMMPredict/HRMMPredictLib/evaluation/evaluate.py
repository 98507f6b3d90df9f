"""``hrmm evaluate``: every statistic of every model in a bundle, on its training and
validation sets and on any other cohort (e.g. an external one), as an HTML report and
``metrics.json``.

Sets:
- ``training (apparent)``: training lesions, the fitted model's own probabilities
  (resubstitution: the lesions the model was fitted on; optimistic, as the paper reports them);
- ``training (cross-validated)``: the same lesions' out-of-fold probabilities (each from a
  pipeline that never saw the lesion), for every model whose out-of-fold estimate is honest;
  the others show "not available: <reason>" (the bundle manifest's
  ``oof_probabilities_honest`` / ``cv_unavailable_reason``; bundles older than that record
  are judged from what they do record and say so);
- ``validation``: the held-out patients of the bundle's own split;
- one set per further cohort manifest (CSV): probabilities from :func:`HRMMPredictLib.predict.predict_case`
  on each lesion's images (the same path as ``hrmm predict``).

Thresholds are the ones stored in the bundle (fixed on training data); nothing is refitted.
The report also carries a model card, a TRIPOD+AI style checklist, the selection funnel,
the reader-agreement ICCs and the warnings that :func:`evaluate_bundle` returns for the
terminal (``warnings``).
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

APPARENT = "training (apparent)"
CROSS_VALIDATED = "training (cross-validated)"
VALIDATION = "validation"

#: ExtraTrees with fewer trees than this give coarse probabilities (a note in the report).
COARSE_TREES = 50

#: The synthetic generator's provenance file beside its cohort.csv (HRMMPredictLib.synthetic).
SYNTHETIC_MARK = "synthetic.json"

STEP_LABELS = {"input": "extracted", "icc": "reader agreement (ICC)", "mannwhitney": "Mann-Whitney U",
               "correlation": "correlation pruning", "mrmr": "mRMR", "lasso": "LASSO"}

#: The fields training must store for the LASSO coefficient path / CV curve.
LASSO_PATH_FIELDS = ('radiomics.lasso_path = {"C": [grid of C], "coefficients": {feature: [one per C]}, '
                     '"cv_mean": [mean CV score per C], "cv_se": [its SE per C], "cv_metric": "name", '
                     '"chosen_C": C, "rule": "e.g. 1-SE"}')


def bundle_models(bundle: Bundle, preds: pd.DataFrame) -> list[str]:
    """Models of the bundle that have stored predictions, primary model first."""
    names = [m for m in bundle.manifest.get("models", {}) if m in preds.columns]  # the bundle manifest
    primary = bundle.manifest.get("primary_model")
    if primary in names:
        names.remove(primary)
        names.insert(0, primary)
    return names


def cv_status(manifest: dict, model: str, columns: Sequence[str]) -> dict:
    """Whether ``model`` has an honest out-of-fold estimate: ``{"honest", "column",
    "reason", "source", "cv_auc", "cv_auc_ci"}``. ``source``: ``recorded`` (the manifest's
    ``oof_probabilities_honest``) or ``inferred`` (older bundles: from the out-of-fold column
    and the fusion's ``deep_features_in_sample``)."""
    entry = manifest.get("models", {}).get(model, {})
    col = entry.get("cv_column") or f"{model}_cv"
    out = {"honest": False, "column": None, "reason": None, "source": "recorded",
           "cv_auc": entry.get("cv_auc"), "cv_auc_ci": entry.get("cv_auc_ci")}
    if "oof_probabilities_honest" in entry:
        if entry["oof_probabilities_honest"] is True and col in columns:
            out.update(honest=True, column=col)
        else:
            out["reason"] = (entry.get("cv_unavailable_reason") or
                             ("no out-of-fold probabilities stored" if col not in columns
                              else "training marked its out-of-fold probabilities as not honest"))
        return out
    out["source"] = "inferred (the bundle predates the out-of-fold honesty record)"
    fusion = manifest.get("fusion") or {}
    if not entry.get("cv_column") or col not in columns:
        out["reason"] = "no out-of-fold probabilities in this bundle (not recorded)"
    elif not col.endswith("_cv"):
        out["reason"] = f"only out-of-sample for part of the training lesions ({col})"
    elif entry.get("kind") == "fusion" and fusion.get("deep_features_in_sample"):
        out["reason"] = ("its deep features are in-sample for the network (fusion fit 'paper'), so its "
                         "out-of-fold probabilities are optimistic")
    else:
        out.update(honest=True, column=col)
    return out


def stored_sets(bundle: Bundle, models: Sequence[str]) -> tuple[dict[str, pd.DataFrame], dict]:
    """The bundle's own sets and, per set, which models have probabilities and why the others
    have none: ``(sets, {"set_models", "unavailable", "descriptions", "cv"})``."""
    preds = pd.read_csv(bundle.path / "training" / "predictions.csv", dtype={"lesion_id": str, "patient_id": str})
    man = bundle.manifest
    sets: dict[str, pd.DataFrame] = {}
    info: dict = {"set_models": {}, "unavailable": {}, "descriptions": {}, "cv": {}}
    train = preds[preds["split"] == "train"]
    sets[APPARENT] = train[["lesion_id", "patient_id", "label", *models]].reset_index(drop=True)
    info["descriptions"][APPARENT] = ("apparent (resubstitution): the final models on the lesions they were "
                                      "fitted on; optimistic")
    honest, gone = {}, {}
    for m in models:
        st = cv_status(man, m, list(preds.columns))
        if st["honest"]:
            missing = int(train[st["column"]].isna().sum())
            if missing:
                st.update(honest=False, reason=f"out-of-fold probabilities missing for {missing} training lesion(s)")
        info["cv"][m] = st
        if st["honest"]:
            honest[st["column"]] = m
        else:
            gone[m] = st["reason"]
    if honest:
        cv = train[["lesion_id", "patient_id", "label", *honest]].rename(columns=honest)
        sets[CROSS_VALIDATED] = cv.reset_index(drop=True)
        info["set_models"][CROSS_VALIDATED] = list(honest.values())
        info["unavailable"][CROSS_VALIDATED] = gone
        info["descriptions"][CROSS_VALIDATED] = ("out-of-fold: each lesion scored by a pipeline refitted without "
                                                 "its patient (the honest training estimate)")
    val = preds[preds["split"] == "validation"]
    if len(val):
        sets[VALIDATION] = val[["lesion_id", "patient_id", "label", *models]].reset_index(drop=True)
        info["descriptions"][VALIDATION] = "held-out patients of the bundle's own split, never used for fitting"
    return sets, info


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


# ---------------------------------------------------------------------------------------
# Data source, model card, checklist, selection records


def is_synthetic_cohort(manifest_path: str | os.PathLike) -> bool:
    """A cohort manifest written by :mod:`HRMMPredictLib.synthetic` (its provenance file beside it)."""
    p = Path(manifest_path)
    return (p.parent / SYNTHETIC_MARK).is_file()


def detect_data_source(bundle: Bundle, data_source: str | None = None) -> dict:
    """What the training data were: ``{"text", "synthetic", "how"}``.

    In order: ``data_source`` (the user's words, ``--data-source``); a source the bundle
    manifest records (``cohort.data_source`` / ``cohort.synthetic``); a synthetic cohort
    (its ``synthetic.json``) beside the bundle whose cohort hash equals the bundle's
    training-cohort hash (the demo's layout: ``cohort/`` next to ``model/``); else not recorded."""
    from HRMMPredictLib.cohort import cohort_hash, load_cohort_manifest

    coh = bundle.manifest.get("cohort") or {}
    if data_source:
        text = str(data_source).strip()
        return {"text": text, "synthetic": "synthetic" in text.lower(), "how": "given with --data-source"}
    if coh.get("synthetic") or coh.get("data_source"):
        syn = bool(coh.get("synthetic")) or "synthetic" in str(coh.get("data_source")).lower()
        text = str(coh.get("data_source") or "synthetic cohort (HRMMPredictLib.synthetic)")
        return {"text": text, "synthetic": syn, "how": "recorded in the bundle manifest"}
    name = coh.get("manifest") or "cohort.csv"
    want = coh.get("hash")
    if want:
        base = bundle.path.resolve().parent
        for mark in sorted([*base.glob(SYNTHETIC_MARK), *base.glob(f"*/{SYNTHETIC_MARK}")])[:20]:
            cand = mark.parent / name
            if not cand.is_file():
                continue
            try:
                if cohort_hash(load_cohort_manifest(cand)) == want:
                    return {"text": f"synthetic cohort generated by HRMMPredictLib.synthetic ({cand})",
                            "synthetic": True, "how": "the training cohort beside the bundle carries the synthetic "
                                                      "generator's synthetic.json and its hash matches the bundle's"}
            except UserError:
                continue
    return {"text": "not recorded (give hrmm evaluate --data-source TEXT)", "synthetic": False,
            "how": "not recorded"}


def _fitted_rows(man: dict, models: Sequence[str], info: dict, n_train: int, n_train_patients: int) -> list[dict]:
    rows = []
    for m in models:
        e = man["models"][m]
        kind = e.get("kind", "?")
        if kind == "deep":
            tr = (man.get("deep") or {}).get("training") or {}
            fitted = (f"network fitted on {tr.get('n_fit', '?')} training lesions; epoch chosen on "
                      f"{tr.get('n_val', '?')} internal-validation training lesions")
        elif kind == "fusion":
            fu = man.get("fusion") or {}
            fitted = (f"selection + classifier on {fu.get('n_fit_lesions', '?')} training lesions "
                      f"(fit '{fu.get('fit', '?')}'); PCA of deep features on the training lesions")
        else:
            fitted = (f"reader-agreement filter, selection and classifier on the {n_train} training lesions "
                      f"({n_train_patients} patients)")
        st = info["cv"].get(m, {})
        if st.get("honest"):
            cv = "available" + (f" (AUC {st['cv_auc']:.3f})" if isinstance(st.get("cv_auc"), (int, float)) else "")
        else:
            cv = f"not available: {st.get('reason') or 'not recorded'}"
        rows.append({"model": m, "kind": f"{kind} ({e.get('classifier', '?')})", "fitted_on": fitted,
                     "threshold_rule": e.get("threshold_rule") or "not recorded", "cv": cv})
    return rows


def model_card(man: dict, models: Sequence[str], info: dict, source: dict, sets: dict) -> dict:
    train = sets.get(APPARENT)
    n_train = int(len(train)) if train is not None else 0
    n_pat = int(train["patient_id"].nunique()) if train is not None else 0
    multi = train is not None and int(train["patient_id"].value_counts().max()) > 1
    limitations = [
        "Statistics are per lesion; " + ("some patients contribute several lesions, so " if multi else "")
        + "lesions of one patient are not independent and confidence intervals that treat them as such can be "
          "too narrow.",
        "The published study used a lesion-level split (lesions of one patient could fall on both sides); this "
        "bundle splits by patient, so its numbers are not directly comparable with the paper's and should be lower "
        "if the paper's split leaked.",
        "The apparent (resubstitution) training results are optimistic by construction; judge the models on the "
        "cross-validated and the held-out sets.",
        "Small sets: with few lesions per class, AUC CIs, DeLong tests, calibration slopes and Hosmer-Lemeshow "
        "tests are marked not estimable rather than shown as results.",
        "No external validation unless a further cohort is listed among the sets; no subgroup (fairness) analysis: "
        "the cohort manifest records no demographics or sites.",
    ]
    if source.get("synthetic"):
        limitations.insert(0, "SYNTHETIC DATA: the images are generated; no result here says anything about real "
                              "patients.")
    return {
        "intended_use": "Research use only. Estimating the probability that a lesion of a patient with multiple "
                        "myeloma belongs to the high-risk cytogenetic group (HRMM, label 1) rather than standard "
                        "risk (SRMM, label 0) from a sagittal spine MRI (T1WI, T2WI, FS-T2WI) and an ROI on the "
                        "largest involved vertebral body, as in the published study. Not a medical device; not for "
                        "diagnosis or treatment decisions.",
        "population": "Patients with multiple myeloma and sagittal spine MRI of the three sequences, as in the "
                      f"published study; this bundle was trained on the {n_train} training lesions of "
                      f"{n_pat} patients listed below. Eligibility criteria of the cohort are not recorded in "
                      "the bundle.",
        "data_source": f"{source.get('text')} ({source.get('how')}).",
        "outcome": "HRMM (label 1) against SRMM (label 0), as given in the cohort manifest's label column.",
        "sizes": list((man.get("cohort") or {}).get("summary") or []),
        "fitted": _fitted_rows(man, models, info, n_train, n_pat),
        "limitations": limitations,
    }


def checklist(ev: dict, info: dict) -> list[dict]:
    """A TRIPOD+AI style list of what this report contains (and what it does not)."""
    has_cv = CROSS_VALIDATED in ev["sets"]
    all_cv = has_cv and not ev["sets"][CROSS_VALIDATED].get("unavailable")
    ext = [s for s in ev["set_order"] if s not in (APPARENT, CROSS_VALIDATED, VALIDATION)]

    def row(item, status, where):
        return {"item": item, "status": status, "where": where}

    return [
        row("Title: development / evaluation, data source", "reported",
            "title (says SYNTHETIC DATA when it is)" if (ev.get("data_source") or {}).get("synthetic") else "title"),
        row("Intended use, target population, research use only", "reported", "model card"),
        row("Source of data", "reported" if (ev.get("data_source") or {}).get("how") != "not recorded"
            else "not reported", "model card: data source"),
        row("Eligibility criteria of participants", "not reported", "not recorded in the bundle"),
        row("Outcome definition", "reported", "model card: outcome"),
        row("Predictors (features) and their selection", "reported", "features and their selection"),
        row("Sample size (patients, lesions, events per set)", "reported", "cohort, summary"),
        row("Missing data", "partly", "the cohort manifest must name every image; incomplete lesions are refused, "
                                      "not imputed"),
        row("Model type, fitting, what was fitted on what", "reported", "model card"),
        row("Internal validation (cross-validation, held-out patients)",
            "reported" if all_cv else ("partly" if has_cv or VALIDATION in ev["sets"] else "not reported"),
            "sets 'training (cross-validated)' and 'validation'" + ("" if all_cv else
                                                                      "; some models have no honest out-of-fold estimate")),
        row("Discrimination with CIs", "reported", "ROC, metrics, summary"),
        row("Calibration (plot, slope, calibration-in-the-large)", "reported", "calibration"),
        row("Classification at a pre-specified threshold, confusion tables", "reported", "metrics"),
        row("Clinical utility (decision curves)", "reported", "decision curves"),
        row("Model comparison with multiplicity", "reported", "DeLong"),
        row("External validation", "reported" if ext else "not reported", ", ".join(ext) or "no external cohort given"),
        row("Fairness / subgroups", "not reported", "no demographic or site variables in the cohort manifest"),
        row("Limitations", "reported", "model card"),
        row("Software and versions", "reported", "settings and versions"),
    ]


def selection_records(bundle: Bundle) -> dict:
    """The selection funnels (radiomics; fusion when trained) and the LASSO record."""
    man = bundle.manifest
    funnels, missing = {}, {}
    for fam, rec in (("radiomics", man.get("radiomics") or {}), ("fusion", man.get("fusion") or {})):
        counts = rec.get("selection_counts") or {}
        if not counts:
            continue
        cfg = (man.get("training") or {}).get("config") or {}
        detail = {"icc": f" >= {cfg['icc_threshold']}" if "icc_threshold" in cfg else "",
                  "mannwhitney": f" p < {cfg['mw_alpha']}" if "mw_alpha" in cfg else "",
                  "correlation": f" |r| < {cfg['corr_threshold']}" if "corr_threshold" in cfg else "",
                  "mrmr": f" top {cfg['mrmr_k']}" if "mrmr_k" in cfg else ""}
        funnels[fam] = [{"step": k, "label": STEP_LABELS.get(k, k) + detail.get(k, ""), "features": int(v)}
                        for k, v in counts.items()]
        absent = [STEP_LABELS[k] for k in STEP_LABELS if k not in counts and not (fam == "fusion" and k == "icc")]
        if absent:
            missing[fam] = [f"not recorded in the bundle: {', '.join(absent)}"]
    lasso: dict = {"C": (man.get("radiomics") or {}).get("lasso_C")}
    path = (man.get("radiomics") or {}).get("lasso_path")
    if path:
        lasso["path"] = path
    else:
        lasso["missing"] = ("the bundle records only the chosen C "
                            f"({lasso['C']:.4g}); " if isinstance(lasso["C"], (int, float)) else "") + \
            "to show the coefficient path and the CV curve, training must store " + LASSO_PATH_FIELDS
    return {"funnels": funnels, "not_recorded": missing, "lasso": lasso}


def reader_agreement(bundle: Bundle) -> dict | None:
    """Per feature class, the inter- and intra-reader ICCs of ``training/feature_icc.csv``."""
    from HRMMPredictLib.evaluation.report import feature_class

    p = bundle.path / "training" / "feature_icc.csv"
    if not p.is_file():
        return None
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"{p} cannot be read ({exc}); the bundle is damaged, retrain it") from None
    if "feature" not in df.columns:
        return None
    cfg = (bundle.manifest.get("training") or {}).get("config") or {}
    thr = cfg.get("icc_threshold")
    kinds = [k for k in ("inter", "intra") if k in df.columns]
    classes: dict = {}
    for cls, g in df.groupby(df["feature"].map(feature_class), sort=True):
        rec = {"n": int(len(g))}
        ok = pd.Series(True, index=g.index)
        for k in kinds:
            v = pd.to_numeric(g[k], errors="coerce")
            rec[k] = [round(float(x), 4) for x in v.dropna()]
            rec[f"{k}_median"] = float(v.median()) if v.notna().any() else None
            if thr is not None:
                ok &= v.fillna(-float("inf")) >= float(thr)
        if thr is not None:
            rec["kept"] = int(ok.sum())
        classes[str(cls)] = rec
    return {"threshold": thr, "form": cfg.get("icc_form", "ICC"), "classes": classes,
            "file": "training/feature_icc.csv"}


def probability_notes(man: dict, ev: dict) -> list[str]:
    """Say so where a model's probabilities are coarse (few shallow trees)."""
    notes = []
    for m in ev["models"]:
        e = man["models"].get(m, {})
        hp = e.get("hyperparameters") or {}
        distinct = max((ev["sets"][s]["models"][m]["distinct_probabilities"] for s in ev["set_order"]
                        if m in ev["sets"][s]["models"]), default=0)
        trees = hp.get("n_estimators")
        if e.get("classifier") == "extratrees" and isinstance(trees, int) and trees < COARSE_TREES:
            notes.append(f"{m}: an ExtraTrees of {trees} trees of depth {hp.get('max_depth')} averages {trees} "
                         f"leaf frequencies, so its probabilities are coarse (at most {distinct} distinct values in "
                         "any set here); a printed P = 0.000 means no tree's leaf held a positive lesion, not "
                         "certainty.")
    return notes


def json_results(ev: dict) -> dict:
    """Per set and model: AUC with CI and the metrics at the threshold with their CIs (for ``--json``)."""
    out: dict = {}
    for s in ev["set_order"]:
        blk = ev["sets"][s]
        out[s] = {}
        for m in ev["models"]:
            if m not in blk["models"]:
                out[s][m] = {"not_available": blk["unavailable"].get(m)}
                continue
            r = blk["models"][m]
            a = r["auc"]
            row = {"auc": a["auc"], "auc_ci95": None if a.get("ci_not_estimable") else a["ci95"],
                   "auc_ci_not_estimable": a.get("ci_not_estimable"), "threshold": r["threshold"],
                   "counts": r["classification"]["counts"]}
            for k in ("sensitivity", "specificity", "accuracy", "ppv", "npv"):
                row[k] = {"value": r["classification"][k]["value"], "ci95": r["classification"][k]["ci95"]}
            out[s][m] = row
    return out


def evaluate_bundle(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    cohorts: Sequence[str | os.PathLike] = (), progress: Callable[[str], None] | None = None,
                    bar: Callable[[int, int, str], None] | None = None, overwrite: bool = False,
                    data_source: str | None = None) -> dict:
    """Evaluate every model of a bundle and write the report into ``out_dir``
    (``index.html``, ``metrics.json``; existing ones are replaced only with ``overwrite``).

    ``cohorts``: cohort manifests (CSV) to evaluate besides the bundle's own split; one
    identical to the training cohort (same cohort hash) adds nothing and is skipped with a
    note. ``data_source``: what the training data were (else detected, see
    :func:`detect_data_source`). The result's ``warnings`` are the report's warnings, for the
    terminal; ``results`` has every AUC and metric with its CI."""
    from HRMMPredictLib.cohort import cohort_hash, load_cohort_manifest
    from HRMMPredictLib.evaluation.report import evaluate_models, evaluation_title, write_evaluation_report

    say = progress or (lambda s: None)
    check_report_folder(out_dir, model_dir, cohorts, overwrite)  # refused before any work
    bundle = load_bundle(model_dir)
    man = bundle.manifest
    preds = pd.read_csv(bundle.path / "training" / "predictions.csv", nrows=1)
    models = bundle_models(bundle, preds)
    if not models:
        raise UserError(f"model bundle {bundle.path} has no stored predictions to evaluate; retrain it")
    sets, info = stored_sets(bundle, models)
    notes = []
    cohort_rows = list(man.get("cohort", {}).get("summary", []))
    synthetic_sets = []
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
        info["descriptions"][key] = f"cohort manifest {Path(mpath).name}: predicted lesion by lesion (hrmm predict)"
        if is_synthetic_cohort(mpath):
            synthetic_sets.append(key)
            info["descriptions"][key] += "; SYNTHETIC"
        s = sets[key]
        cohort_rows.append({"split": key, "patients": int(s["patient_id"].nunique()), "lesions": int(len(s)),
                            "positives": int((s["label"] == 1).sum()), "negatives": int((s["label"] == 0).sum())})
    thresholds = {m: man["models"][m]["threshold"] for m in models}
    say(f"computing statistics for {len(models)} model(s) on {len(sets)} set(s)")
    ev = evaluate_models(sets, models, thresholds, set_models=info["set_models"], unavailable=info["unavailable"],
                         descriptions=info["descriptions"])
    source = detect_data_source(bundle, data_source)
    if synthetic_sets and not source["synthetic"]:
        source["text"] += f"; evaluated on synthetic cohort(s) {', '.join(synthetic_sets)}"
        source["synthetic"] = True
    ev["data_source"] = source
    ev["title"] = "HRMM model evaluation"
    ev["title"] = evaluation_title(ev)
    ev["features"] = {m: man["models"][m].get("importances") or
                      [{"name": f["name"]} for f in man["models"][m].get("features", [])] for m in models}
    ev["cohort"] = cohort_rows
    ev["cross_validation"] = info["cv"]
    ev["model_card"] = model_card(man, models, info, source, sets)
    ev["checklist"] = checklist(ev, info)
    ev["selection"] = selection_records(bundle)
    agreement = reader_agreement(bundle)
    if agreement:
        ev["reader_agreement"] = agreement
    ev["probability_notes"] = probability_notes(man, ev)
    gone = (ev["sets"][CROSS_VALIDATED]["unavailable"] if CROSS_VALIDATED in ev["sets"]
            else {m: info["cv"][m]["reason"] for m in models})
    for m, why in gone.items():
        ev["warnings"].append(f"no honest cross-validated estimate for {m}: {why}")
    if source["synthetic"]:
        ev["warnings"].insert(0, "SYNTHETIC DATA: the numbers show the pipeline working, not clinical accuracy")
    ev["warnings"].extend(f"coarse probabilities: {n}" for n in ev["probability_notes"])
    ev["settings"] = {
        "model bundle": str(bundle.path), "created": man.get("created"), "primary model": man.get("primary_model"),
        "data source": f"{source['text']} ({source['how']})",
        "training": man.get("training", {}), "radiomics": man.get("radiomics", {}),
        "thresholds (fixed on training data)": {m: man["models"][m].get("threshold_rule") for m in models},
        "notes": notes,
    }
    ev["versions"] = {"bundle (training)": man.get("software", {}), "this evaluation": software_versions()}
    index = write_evaluation_report(out_dir, ev)
    return {"report": str(index), "metrics": str(Path(out_dir) / "metrics.json"), "models": models,
            "title": ev["title"], "data_source": source,
            "sets": {k: {m: ev["sets"][k]["models"][m]["auc"]["auc"] for m in models if m in ev["sets"][k]["models"]}
                     for k in ev["set_order"]},
            "results": json_results(ev), "warnings": list(ev["warnings"]), "notes": notes}
