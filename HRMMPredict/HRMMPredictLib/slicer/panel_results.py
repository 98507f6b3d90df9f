"""A prediction result (:func:`HRMMPredictLib.predict.predict_case`) as the HRMMPredict panel
shows and exports it; no Qt, no MRML.

Written over ``result["models"]`` and ``result["features"]`` generically: whatever models
a bundle has (radiomics only, or radiomics + deep + fusion) are listed, the fused model
first, then the bundle's primary model, then the others in the bundle's order.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, json_safe, write_json_atomic

FUSED_MODEL = "fusion"

# Columns of the per-model rows, in this order (then any other scalar the model entry has)
MODEL_COLUMNS = ("model", "probability", "threshold", "class", "primary")

__all__ = [
    "bundle_has_deep_model",
    "bundle_model_kinds",
    "bundle_summary_lines",
    "export_result",
    "manifest_model_kinds",
    "feature_rows",
    "model_rows",
    "ordered_models",
    "preview_images",
    "read_json_file",
    "read_result",
    "result_lines",
]


def ordered_models(result: dict) -> list[tuple[str, dict]]:
    """``(name, entry)`` of every model in the result: the fused model first, then the
    primary model, then the rest in the bundle's order."""
    models = list((result.get("models") or {}).items())
    primary = result.get("model")
    order = {name: i for i, (name, _) in enumerate(models)}
    return sorted(models, key=lambda item: (item[0] != FUSED_MODEL, item[0] != primary, order[item[0]]))


def model_rows(result: dict) -> list[dict]:
    """One row per model (ordered as :func:`ordered_models`): probability of high risk,
    the model's stored threshold, the class at that threshold, whether it is the primary
    model, and any other scalar (or list of scalars) the model entry carries (e.g.
    "classifier", "kind", the inputs of a fused model)."""
    rows = []
    primary = result.get("model")
    for name, entry in ordered_models(result):
        row = {"model": name, "probability": entry.get("probability"), "threshold": entry.get("threshold"),
               "class": entry.get("class"), "primary": name == primary}
        for key, value in entry.items():
            if key not in row and (value is None or isinstance(value, (str, int, float, bool)) or (
                    isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value))):
                row[key] = list(value) if isinstance(value, tuple) else value
        rows.append(row)
    return rows


def feature_rows(result: dict) -> list[dict]:
    """The selected features' values against their training range (the result's rows)."""
    return [dict(row) for row in result.get("features") or []]


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def result_lines(result: dict) -> list[str]:
    """Plain-text lines for the panel: one per model (fused first), then the number of
    features outside their training range."""
    lines = []
    primary = result.get("model")
    for name, entry in ordered_models(result):
        mark = " (primary)" if name == primary else ""
        lines.append(f"{name}{mark}: {entry.get('class', 'n/a')} - probability of high risk "
                     f"{_fmt(entry.get('probability'))} (threshold {_fmt(entry.get('threshold'))})")
    outside = [f["name"] for f in result.get("features") or [] if f.get("in_training_range") is False]
    if outside:
        lines.append(f"{len(outside)} of {len(result.get('features') or [])} selected features lie outside "
                     "their training range")
    return lines


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def preview_images(result: dict, base: str | os.PathLike | None = None) -> list[tuple[str, bytes]]:
    """The preview pictures a result carries, as ``(label, PNG bytes)``: e.g. the deep
    model's 2.5D crops (``deep_input.preview_png_base64``). Found anywhere in the result:
    a string under a key ending in ``png_base64`` (decoded), or a string ending in ``.png``
    naming an existing file (relative to ``base``). Labels are the key paths; the same
    picture is listed once; anything that is not a PNG is skipped."""
    import base64
    import binascii

    found: list[tuple[str, bytes]] = []

    def add(label: str, data: bytes | None) -> None:
        if data and data.startswith(PNG_SIGNATURE) and all(data != d for _, d in found):
            found.append((label, data))

    def walk(value, label: str, key: str) -> None:
        if isinstance(value, dict):
            for k, item in value.items():
                walk(item, f"{label} {k}".strip(), str(k))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{label} {i + 1}".strip(), key)
        elif isinstance(value, str) and key.lower().endswith("png_base64"):
            try:
                add(label, base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                pass
        elif isinstance(value, str) and value.lower().endswith(".png"):
            path = Path(value)
            if not path.is_absolute() and base is not None:
                path = Path(base) / path
            if path.is_file():
                add(label, path.read_bytes())

    walk({k: v for k, v in result.items() if k not in ("features", "warnings")}, "", "")
    return found


def read_json_file(path: str | os.PathLike, what: str):
    """The JSON value stored in a file; a UserError naming ``what`` and the file when it is
    missing, unreadable or not JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {p} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {p} could not be read ({exc.__class__.__name__})") from None


def read_result(path: str | os.PathLike) -> dict:
    """A result JSON file (the worker's ``result.json`` or an exported one)."""
    p = Path(path)
    result = read_json_file(p, "prediction result")
    if not isinstance(result, dict) or not isinstance(result.get("models"), dict):
        raise UserError(f"{p} is not an HRMM prediction result (no 'models')")
    return result


def export_result(result: dict, path: str | os.PathLike) -> Path:
    """Write a result as ``.json`` (the whole result, strict JSON: NaN as null) or ``.csv``
    (one row per model, then one per feature, with a "section" column); written atomically,
    so an existing file is replaced only by a complete one."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        write_json_atomic(p, json_safe(result))
        return p
    if suffix != ".csv":
        raise UserError(f"cannot export to {p.name}: use a .json or .csv file name")
    rows = [{"section": "model", **row} for row in model_rows(result)]
    rows += [{"section": "feature", **row} for row in feature_rows(result)]
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with atomic_path(p) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return p


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)  # repr: the exact double
    if isinstance(value, (list, dict)):
        return json.dumps(json_safe(value))
    return value


# ---------------------------------------------------------------------------------------
# The model bundle (HRMMPredictLib.bundle.load_bundle(...).summary())


def bundle_model_kinds(summary: dict) -> list[str]:
    """The kinds of the bundle's models ("radiomics", "deep", "fusion"), in the bundle's order."""
    kinds: list[str] = []
    for entry in (summary.get("models") or {}).values():
        kind = (entry or {}).get("kind") or "radiomics"
        if kind not in kinds:
            kinds.append(kind)
    return kinds or ["radiomics"]


def manifest_model_kinds(model_dir: str | os.PathLike) -> list[str]:
    """The model kinds named in a bundle folder's ``manifest.json``, read as plain JSON (no
    checks, no packages needed): what the panel needs to know before installing packages.
    The bundle itself is checked by ``HRMMPredictLib.bundle.load_bundle`` afterwards."""
    manifest = Path(model_dir) / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{model_dir} is not a model bundle (no manifest.json); give the folder written by "
                        "'hrmm train'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"model manifest {manifest} could not be read ({exc.__class__.__name__})") from None
    return bundle_model_kinds(data if isinstance(data, dict) else {})


def bundle_has_deep_model(summary: dict) -> bool:
    """True when predicting runs the DenseNet (a deep or fused model)."""
    return any(kind in ("deep", "fusion") for kind in bundle_model_kinds(summary))


def _auc_text(value) -> str | None:
    if isinstance(value, dict):
        auc = value.get("auc")
        if auc is None:
            return None
        text = f"{auc:.3f}"
        ci = value.get("ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            text += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f}"
            text += f", n = {value['n']})" if value.get("n") is not None else ")"
        return text
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:.3f}"
    return None


def _cohort_lines(cohort) -> list[str]:
    if isinstance(cohort, list):
        lines = []
        for split in cohort:
            if not isinstance(split, dict):
                continue
            text = f"{split.get('split', 'cohort')}: {split.get('patients', '?')} patients, " \
                   f"{split.get('lesions', '?')} lesions"
            if split.get("positives") is not None and split.get("negatives") is not None:
                text += f" ({split['positives']} HRMM / {split['negatives']} SRMM)"
            lines.append(text)
        return lines
    if isinstance(cohort, dict):
        return [", ".join(f"{k}: {v}" for k, v in cohort.items() if isinstance(v, (str, int, float)))]
    return []


def bundle_summary_lines(summary: dict) -> list[str]:
    """What the panel shows about a bundle: when it was trained, on how many patients and
    lesions, and each model's AUCs (fused first, as in the results) and threshold."""
    created = str(summary.get("created") or "")
    if re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d", created):  # ISO 8601 from the bundle writer
        created = f"{created[:10]} {created[11:16]}"
    lines = [f"Trained {created or 'on an unknown date'}"
             + (f"; primary model: {summary['primary_model']}" if summary.get("primary_model") else "")]
    lines += ["Cohort " + line for line in _cohort_lines(summary.get("cohort"))]
    ordered = ordered_models({"model": summary.get("primary_model"), "models": summary.get("models") or {}})
    for name, entry in ordered:
        parts = []
        validation = _auc_text(entry.get("validation_auc"))
        if validation:
            parts.append(f"validation AUC {validation}")
        cv = _auc_text(entry.get("cv_auc"))
        if cv:
            parts.append(f"cross-validation AUC {cv}")
        elif entry.get("cv_unavailable_reason"):
            parts.append(f"cross-validation AUC not available: {entry['cv_unavailable_reason']}")
        if entry.get("threshold") is not None:
            parts.append(f"threshold {entry['threshold']:.3f}")
        kind = entry.get("classifier") or entry.get("kind")
        lines.append(f"{name}" + (f" ({kind})" if kind else "") + (": " + ", ".join(parts) if parts else ""))
    return lines
