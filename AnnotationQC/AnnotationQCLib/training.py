"""Training sessions: an instructor's reference cases, trainee submissions and a pass/fail
report with over-/under-segmentation overlays.

Folder layout::

    <session>/
      session.json                       name, criteria, cases (patient id, sequence, content,
                                         site, source image path, reference mask + SHA-256)
      reference/<patient>_<sequence>_<content>.nii.gz   copies of the reference masks (frozen)
      trainees/<trainee>/<patient>_<sequence>_<content>.nii.gz
      reports/<trainee>/report.json, report.html, <case>_overlay.png

Pass criteria (defaults from the annotation consensus; the instructor may change them):

* every reference case submitted;
* mean Dice over the cases >= ``dice`` (0.80);
* radiomics agreement: for each feature, ICC(A,1) between the trainee's and the reference
  masks' feature values over the cases; the median over the defined features must be >= ``icc``
  (0.75, "good" on Koo & Li).

Features: by default pyradiomics shape and first-order features of the original image
(robust and cheap); any ``feature_extractor(image, mask) -> dict[str, float]`` may be passed
instead (e.g. HRMMPredict's full extraction).

A session needs at least 5 reference cases. Varied size and site is checked and reported as
a warning when missing (one site only, or reference volumes within a factor of 2).
"""

from __future__ import annotations

import html
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, write_image_atomic, write_json_atomic, write_text_atomic
from ClinicalMRICommonLib.grids import grid_difference, same_grid
from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.agreement.icc import feature_icc, koo_li
from ClinicalMRICommonLib.agreement.segmentation_metrics import compare_masks, json_safe
from .sessions import check_name, mask_name, read_json_document
from ClinicalMRICommonLib.masks import binary_mask
from ClinicalMRICommonLib.files import sha256_file

FORMAT = "annotationqc-training/1"
MIN_CASES = 5
DEFAULT_CRITERIA = {"dice": 0.80, "icc": 0.75, "icc_form": "ICC(A,1)"}


def pyradiomics_shape_firstorder(image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """Default feature extractor: pyradiomics shape + first-order features, original image,
    bin width 25, no resampling or normalisation."""
    import logging

    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    ex = featureextractor.RadiomicsFeatureExtractor(binWidth=25, additionalInfo=False)
    ex.disableAllFeatures()
    ex.enableFeatureClassByName("shape")
    ex.enableFeatureClassByName("firstorder")
    try:
        res = ex.execute(sitk.Cast(image, sitk.sitkFloat32), binary_mask(mask), label=1)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"radiomics features could not be computed ({str(exc).splitlines()[0][:120]})") from None
    return {k: float(v) for k, v in res.items() if not k.startswith("diagnostics_")}


CASE_COLUMNS = ("case_id", "patient_id", "sequence", "image", "reference")


def cases_from_csv(path: str | os.PathLike) -> list[dict]:
    """Reference cases for :meth:`TrainingSession.create` from a CSV table (columns case_id,
    patient_id, sequence, image, reference; optional content and site). Relative image and
    mask paths are taken relative to the CSV file's folder."""
    import math

    from ClinicalMRICommonLib.tables import read_csv_table

    table = read_csv_table(path, "training cases")
    missing = [c for c in CASE_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"training cases file {path} lacks column(s) {', '.join(missing)}; "
                        f"needed: {', '.join(CASE_COLUMNS)} (optional: content, site)")
    base = Path(path).resolve().parent
    cases = []
    for row in table.to_dict("records"):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for k in ("case_id", "patient_id", "sequence", "content", "site"):
            if row.get(k) is not None:
                row[k] = str(row[k])
        for k in ("image", "reference"):
            if row.get(k):
                p = Path(str(row[k]))
                row[k] = str(p if p.is_absolute() else base / p)
        cases.append(row)
    return cases


class TrainingSession:
    """An instructor-defined training session folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta = read_json_document(self.folder / "session.json", FORMAT,
                                       f"{self.folder} is not a training session (no session.json)")

    # ---- definition ------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, name: str, cases: list[dict],
               criteria: dict | None = None) -> "TrainingSession":
        """Define a session. ``cases``: dicts with ``case_id, patient_id, sequence, image,
        reference`` and optionally ``content`` ("lesion") and ``site``. The reference masks are
        copied into the session (checked against their image's grid); images stay where
        they are (absolute paths are stored)."""
        folder = Path(folder)
        if (folder / "session.json").exists():
            raise UserError(f"{folder} already holds a training session; choose another folder")
        if len(cases) < MIN_CASES:
            raise UserError(f"a training session needs at least {MIN_CASES} reference cases, got {len(cases)}")
        crit = dict(DEFAULT_CRITERIA)
        for k, v in (criteria or {}).items():
            if k not in DEFAULT_CRITERIA:
                raise UserError(f"unknown pass criterion {k!r}; use {', '.join(DEFAULT_CRITERIA)}")
            crit[k] = v
        for k in ("dice", "icc"):
            if not (isinstance(crit[k], (int, float)) and 0 < float(crit[k]) <= 1):
                raise UserError(f"pass criterion {k} must be in (0, 1], got {crit[k]!r}")
        stored: dict[str, dict] = {}
        problems: list[str] = []
        volumes: list[float] = []
        for i, c in enumerate(cases, start=1):
            try:
                missing = [k for k in ("case_id", "patient_id", "sequence", "image", "reference") if not c.get(k)]
                if missing:
                    raise UserError(f"missing {', '.join(missing)}")
                cid = check_name(c["case_id"], "case id")
                if cid in stored:
                    raise UserError(f"case id {cid!r} appears twice")
                content = c.get("content") or "lesion"
                mname = mask_name(c["patient_id"], c["sequence"], content)
                img_path = Path(c["image"]).resolve()
                image = read_image(img_path, "source image")
                ref = read_image(c["reference"], "reference mask")
                if not same_grid(ref, image):
                    raise UserError(f"reference mask {c['reference']} is not on the grid of {img_path} "
                                    f"({grid_difference(ref, image)})")
                n = int(sitk.GetArrayViewFromImage(ref).astype(bool).sum())
                if n == 0:
                    raise UserError(f"reference mask {c['reference']} is empty")
                volumes.append(n * float(np.prod(ref.GetSpacing())) / 1000.0)
                stored[cid] = {"patient_id": c["patient_id"], "sequence": c["sequence"], "content": content,
                               "site": str(c.get("site") or ""), "image": str(img_path),
                               "reference": f"reference/{mname}", "_src": str(c["reference"])}
            except UserError as exc:
                problems.append(f"case {i}: {exc}")
        if problems:
            raise UserError("training session not created: " + "; ".join(problems))
        warnings = []
        sites = {c["site"] for c in stored.values() if c["site"]}
        if len(sites) < 2:
            warnings.append("all reference cases come from one site (or no site given); include varied sites")
        if max(volumes) < 2 * min(volumes):
            warnings.append(f"reference volumes vary only from {min(volumes):.2f} to {max(volumes):.2f} mL; "
                            "include small and large lesions")
        (folder / "reference").mkdir(parents=True, exist_ok=True)
        for cid, c in stored.items():
            dest = folder / c["reference"]
            write_image_atomic(binary_mask(sitk.ReadImage(c.pop("_src"))), dest)
            c["reference_sha256"] = sha256_file(dest)
        write_json_atomic(folder / "session.json", {
            "format": FORMAT, "name": str(name), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "criteria": crit, "warnings": warnings, "cases": stored})
        return cls(folder)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "TrainingSession":
        return cls(folder)

    @property
    def case_ids(self) -> list[str]:
        return list(self.meta["cases"])

    def _case(self, case_id: str) -> dict:
        try:
            return self.meta["cases"][case_id]
        except KeyError:
            raise UserError(f"case {case_id!r} is not part of training session {self.meta['name']!r} "
                            f"(cases: {', '.join(self.case_ids)})") from None

    def trainee_mask_path(self, trainee_id: str, case_id: str) -> Path:
        c = self._case(case_id)
        return self.folder / "trainees" / check_name(trainee_id, "trainee id") / \
            mask_name(c["patient_id"], c["sequence"], c["content"])

    # ---- trainee side ------------------------------------------------------------------

    def trainee_cases(self) -> list[dict]:
        """What a trainee sees: case id, patient id, sequence, content and the image path (never
        the reference mask)."""
        return [{"case_id": cid, "patient_id": c["patient_id"], "sequence": c["sequence"],
                 "content": c["content"], "image": c["image"]} for cid, c in self.meta["cases"].items()]

    def submit(self, trainee_id: str, case_id: str, mask: sitk.Image) -> Path:
        """Save a trainee's mask for a case (on the case image's grid). A submitted mask is
        never overwritten."""
        c = self._case(case_id)
        path = self.trainee_mask_path(trainee_id, case_id)
        if path.exists():
            raise UserError(f"trainee {trainee_id!r} already submitted case {case_id!r} ({path}); submissions "
                            "are never overwritten")
        image = read_image(c["image"], "source image")
        if not isinstance(mask, sitk.Image) or not same_grid(mask, image):
            diff = grid_difference(mask, image) if isinstance(mask, sitk.Image) else "not an image"
            raise UserError(f"mask for case {case_id!r} is not on the grid of {c['image']} ({diff})")
        write_image_atomic(binary_mask(mask), path)
        return path

    # ---- evaluation -------------------------------------------------------------------

    def _reference(self, case_id: str) -> sitk.Image:
        c = self._case(case_id)
        p = self.folder / c["reference"]
        if not p.exists() or sha256_file(p) != c["reference_sha256"]:
            raise UserError(f"reference mask {p} is missing or was changed after the session was defined")
        return sitk.ReadImage(str(p))

    def evaluate(self, trainee_id: str,
                 feature_extractor: Callable[[sitk.Image, sitk.Image], dict] | None = None) -> dict:
        """Score a trainee: per-case metrics and the overall verdict (see module docstring)."""
        extractor = feature_extractor or pyradiomics_shape_firstorder
        crit = self.meta["criteria"]
        rows, feats_ref, feats_tr, missing = [], {}, {}, []
        for cid, c in self.meta["cases"].items():
            tpath = self.trainee_mask_path(trainee_id, cid)
            if not tpath.exists():
                missing.append(cid)
                continue
            ref = self._reference(cid)
            tr = binary_mask(sitk.ReadImage(str(tpath)))
            m = compare_masks(ref, tr)
            r = sitk.GetArrayViewFromImage(ref).astype(bool)
            t = sitk.GetArrayViewFromImage(tr).astype(bool)
            vox_ml = float(np.prod(ref.GetSpacing())) / 1000.0
            over, under = int((t & ~r).sum()), int((r & ~t).sum())
            rows.append({"case_id": cid, "patient_id": c["patient_id"], "sequence": c["sequence"],
                         "site": c["site"], **m, "over_ml": over * vox_ml, "under_ml": under * vox_ml,
                         "tendency": _tendency(over, under, int(r.sum())),
                         "dice_pass": m["dice"] >= crit["dice"]})
            if t.any():
                image = sitk.ReadImage(c["image"])
                feats_ref[cid] = extractor(image, ref)
                feats_tr[cid] = extractor(image, tr)
        reasons = []
        if missing:
            reasons.append(f"{len(missing)} of {len(self.meta['cases'])} cases not submitted: {', '.join(missing)}")
        mean_dice = float(np.mean([r["dice"] for r in rows])) if rows else float("nan")
        if rows and mean_dice < crit["dice"]:
            reasons.append(f"mean Dice {mean_dice:.3f} < {crit['dice']:.2f}")
        icc_summary = {"form": crit["icc_form"], "n_cases": len(feats_ref), "n_features": 0,
                       "n_defined": 0, "median": float("nan"), "fraction_ge_threshold": float("nan"),
                       "interpretation": "undefined"}
        icc_table = None
        if len(feats_ref) >= 2:
            ta, tb = pd.DataFrame(feats_ref).T, pd.DataFrame(feats_tr).T
            icc_table = feature_icc(ta, tb, form=crit["icc_form"])
            vals = icc_table["icc"].dropna()
            icc_summary.update(n_features=int(len(icc_table)), n_defined=int(len(vals)))
            if len(vals):
                med = float(vals.median())
                icc_summary.update(median=med, fraction_ge_threshold=float((vals >= crit["icc"]).mean()),
                                   interpretation=koo_li(med))
        if not np.isfinite(icc_summary["median"]):
            reasons.append("feature ICC undefined (fewer than 2 non-empty submissions or constant features)")
        elif icc_summary["median"] < crit["icc"]:
            reasons.append(f"median feature {crit['icc_form']} {icc_summary['median']:.3f} < {crit['icc']:.2f}")
        overall = {"cases_submitted": len(rows), "cases_total": len(self.meta["cases"]),
                   "mean_dice": mean_dice,
                   "min_dice": float(min(r["dice"] for r in rows)) if rows else float("nan"),
                   "cases_dice_pass": int(sum(r["dice_pass"] for r in rows)),
                   "feature_icc": icc_summary, "passed": not reasons, "reasons": reasons}
        report = {"session": self.meta["name"], "trainee": trainee_id,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "criteria": crit, "warnings": self.meta.get("warnings", []), "cases": rows, "overall": overall}
        if icc_table is not None:
            report["feature_icc_table"] = {f: (None if not np.isfinite(v) else float(v))
                                           for f, v in icc_table["icc"].items()}
        return report

    def write_report(self, trainee_id: str, out_dir: str | os.PathLike | None = None,
                     feature_extractor: Callable[[sitk.Image, sitk.Image], dict] | None = None) -> dict:
        """Evaluate and write ``report.json``, ``report.html`` and one overlay PNG per case into
        ``out_dir`` (default ``<session>/reports/<trainee>``). Returns the report with the paths."""
        report = self.evaluate(trainee_id, feature_extractor)
        out = Path(out_dir) if out_dir else self.folder / "reports" / check_name(trainee_id, "trainee id")
        out.mkdir(parents=True, exist_ok=True)
        for row in report["cases"]:
            c = self._case(row["case_id"])
            png = out / f"{row['case_id']}_overlay.png"
            shown = overlay_png(sitk.ReadImage(c["image"]), self._reference(row["case_id"]),
                                sitk.ReadImage(str(self.trainee_mask_path(trainee_id, row["case_id"]))), png)
            row["overlay"] = png.name
            row["overlay_slices"] = shown
        write_json_atomic(out / "report.json", json_safe(report))
        write_text_atomic(out / "report.html", report_html(report))
        report["files"] = {"json": str(out / "report.json"), "html": str(out / "report.html")}
        return report


def _tendency(over: int, under: int, n_ref: int) -> str:
    """"over-segments" / "under-segments" when one kind of error dominates (> 2x and > 5% of
    the reference), else "balanced"."""
    if n_ref == 0:
        return "balanced"
    if over > 2 * under and over > 0.05 * n_ref:
        return "over-segments"
    if under > 2 * over and under > 0.05 * n_ref:
        return "under-segments"
    return "balanced"


OVERLAY_COLOURS = {"agree": (30, 200, 30), "over": (230, 30, 30), "under": (30, 80, 240)}


def _overlay_slice(sl: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(sl, [1, 99])
    grey = np.clip((sl - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for sel, col in ((r & t, OVERLAY_COLOURS["agree"]), (t & ~r, OVERLAY_COLOURS["over"]),
                     (r & ~t, OVERLAY_COLOURS["under"])):
        rgb[sel] = 0.4 * rgb[sel] + 0.6 * np.asarray(col, dtype=float)
    return rgb


def overlay_png(image: sitk.Image, reference: sitk.Image, test: sitk.Image, out_png: str | os.PathLike,
                min_size: int = 256) -> dict:
    """PNG of two acquired slices side by side: the one with the largest annotated area
    (reference or test) and the one with the most disagreement; the image in grey with
    agreement (green), over-segmentation (test only, red) and under-segmentation (reference
    only, blue). Pixels are made square (in-plane spacing) and small slices are enlarged
    (nearest neighbour) to about ``min_size`` pixels. Written atomically with SimpleITK's PNG
    writer (no plotting library needed). Returns the slice indices shown."""
    img = sitk.GetArrayFromImage(image).astype(float)
    r = sitk.GetArrayFromImage(reference) != 0
    t = sitk.GetArrayFromImage(test) != 0
    if img.ndim == 2:
        img, r, t = img[None], r[None], t[None]
    per_slice = lambda m: m.reshape(m.shape[0], -1).sum(axis=1)  # noqa: E731
    k_area = int(np.argmax(per_slice(r | t)))
    dis = per_slice(r ^ t)
    k_dis = int(np.argmax(dis)) if dis.any() else k_area
    panels = [_overlay_slice(img[k], r[k], t[k]) for k in dict.fromkeys((k_area, k_dis))]
    sep = np.full((panels[0].shape[0], 2, 3), 255.0)
    rgb = np.concatenate([p for panel in panels for p in (panel, sep)][:-1], axis=1)
    sx, sy = image.GetSpacing()[:2]
    fy, fx = (max(1, round(sy / sx)), 1) if sy >= sx else (1, max(1, round(sx / sy)))
    rgb = np.repeat(np.repeat(rgb, fy, axis=0), fx, axis=1)
    f = max(1, int(np.ceil(min_size / max(rgb.shape[:2]))))
    rgb = np.repeat(np.repeat(rgb, f, axis=0), f, axis=1)
    out = sitk.GetImageFromArray(np.round(rgb).astype(np.uint8), isVector=True)
    with atomic_path(out_png) as tmp:
        sitk.WriteImage(out, str(tmp))
    return {"largest_area_slice": k_area, "most_disagreement_slice": k_dis}


def _f(v, nd=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def report_html(report: dict) -> str:
    """A self-contained HTML page of a training report (overlays referenced by file name)."""
    e = html.escape
    ov = report["overall"]
    verdict = "PASSED" if ov["passed"] else "NOT PASSED"
    colour = "#1a7f37" if ov["passed"] else "#b42318"
    crit = report["criteria"]
    rows = []
    for c in report["cases"]:
        rows.append(
            f"<tr><td>{e(c['case_id'])}</td><td>{e(c['sequence'])}</td><td>{e(c['site'])}</td>"
            f"<td>{_f(c['dice'])}</td><td>{_f(c['hd95_mm'], 2)}</td><td>{_f(c['assd_mm'], 2)}</td>"
            f"<td>{_f(c['surface_dice'])}</td><td>{_f(c['volume_ref_ml'])}</td><td>{_f(c['volume_test_ml'])}</td>"
            f"<td>{_f(c['over_ml'])}</td><td>{_f(c['under_ml'])}</td><td>{e(c['tendency'])}</td>"
            f"<td>{'yes' if c['dice_pass'] else 'no'}</td></tr>")
    figs = "".join(f"<figure><img src='{e(c['overlay'])}' alt='overlay {e(c['case_id'])}'>"
                   f"<figcaption>{e(c['case_id'])}: Dice {_f(c['dice'])}, {e(c['tendency'])}</figcaption></figure>"
                   for c in report["cases"] if c.get("overlay"))
    icc = ov["feature_icc"]
    reasons = "".join(f"<li>{e(r)}</li>" for r in ov["reasons"]) or "<li>all criteria met</li>"
    warnings = "".join(f"<li>{e(w)}</li>" for w in report.get("warnings", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Training report {e(report['trainee'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:3px 6px;text-align:right}}figure{{display:inline-block;margin:6px}}img{{max-width:320px}}</style></head>
<body><h1>Training report: {e(report['trainee'])}</h1>
<p>Session <b>{e(report['session'])}</b>, {e(report['created'])}</p>
<h2 style="color:{colour}">{verdict}</h2><ul>{reasons}</ul>
<p>Criteria: mean Dice &ge; {crit['dice']:.2f}; median {e(crit['icc_form'])} of radiomics features &ge;
{crit['icc']:.2f} (Koo &amp; Li "good"); all cases submitted.</p>
<p>Cases submitted {ov['cases_submitted']} / {ov['cases_total']}; mean Dice {_f(ov['mean_dice'])}
(min {_f(ov['min_dice'])}); feature {e(icc['form'])}: median {_f(icc['median'])} ({e(icc['interpretation'])}),
{_f(icc['fraction_ge_threshold'], 2)} of {icc['n_defined']} defined features &ge; {crit['icc']:.2f}.</p>
{f'<h3>Session warnings</h3><ul>{warnings}</ul>' if warnings else ''}
<h2>Per case</h2><table><tr><th>case</th><th>sequence</th><th>site</th><th>Dice</th><th>HD95 mm</th>
<th>ASSD mm</th><th>surface Dice</th><th>ref mL</th><th>trainee mL</th><th>over mL</th><th>under mL</th>
<th>tendency</th><th>Dice pass</th></tr>{''.join(rows)}</table>
<h2>Where the trainee over- or under-segments</h2>
<p>Per case: the slice with the largest annotated area and (right) the slice with the most
disagreement. <span style="color:rgb(30,200,30)">green</span>: agree,
<span style="color:rgb(230,30,30)">red</span>: trainee only (over-segmented),
<span style="color:rgb(30,80,240)">blue</span>: reference only (under-segmented).</p>{figs}
</body></html>
"""

