"""Data acceptance of an exported stroke BIDS dataset (consensus section 3.3) and the
dataset quality report.

Checks, each case (subject/session) and the dataset as a whole:

* completeness - every session has an accepted consensus mask
  (``derivatives/lesions/.../dwi/*_label-lesion_desc-consensus_mask.nii.gz``), and the two
  annotators' masks;
* format - every image and mask is a readable NIfTI; masks are binary (0/1), on the raw
  DWI's grid (shape and affine);
* metadata - dataset_description.json (raw: Name, BIDSVersion, Authors, License; the lesion
  derivative: DatasetType and GeneratedBy, see bids.check_derivative_description),
  participants.tsv/.json (every subject listed, no stranger), README, a JSON sidecar for every
  image with the acquisition parameters (MagneticFieldStrength, EchoTime, RepetitionTime;
  the DWI's b-value; the ADC's Units), mask sidecars with Type, Sources and SpatialReference,
  and no identifying sidecar key left (deid.clean_sidecar finds nothing to remove);
* file naming - every file matches the names this layout allows (and, with
  ``run_official_validator``, bids-validator-deno reports no error);
* quality - every image has a Likert grade >= 3 (ClinicalMRICommonLib.quality.MIN_LIKERT) and SNR
  and CNR in scans.tsv, each measured, entered or "not measurable" with a reason (a computed
  map such as the ADC, a skull-stripped image); the report says which is which.

Every failed check carries a ``fix``: what to do (usually the stroke-lesion command that
supplies what is missing). Writes ``acceptance_report.json`` and ``acceptance_report.html``
(existing ones only replaced with ``overwrite``): failures first with their fixes, the
dataset's distributions of lesion volume, lesion count and A-vs-B Dice, a thumbnail per case
(report_figures), and the row-by-row checks folded below.
"""

from __future__ import annotations

import csv
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ClinicalMRICommonLib.errors import UserError

from .bids import check_derivative_description, require_bids_dataset

_SUBSES = re.compile(r"^sub-([A-Za-z0-9]+)$")
RAW_PATTERNS = [
    r"sub-{s}_ses-{t}_scans\.tsv",
    r"dwi/sub-{s}_ses-{t}(_acq-[A-Za-z0-9]+)?_(dwi|trace)\.(nii\.gz|json|bval|bvec)",
    r"dwi/sub-{s}_ses-{t}_(ADC|expADC|FA|trace)\.(nii\.gz|json)",
    r"anat/sub-{s}_ses-{t}_(FLAIR|T1w|T2w)\.(nii\.gz|json)",
]
DERIV_PATTERNS = [
    r"dwi/sub-{s}_ses-{t}_space-orig_label-lesion_desc-(annotatorA|annotatorB|consensus)_mask\.(nii\.gz|json)",
    r"dwi/sub-{s}_ses-{t}_space-orig_expADC\.(nii\.gz|json)",
]
REQUIRED_ACQ = ("MagneticFieldStrength", "EchoTime", "RepetitionTime")


class _Case:
    def __init__(self, sub: str, ses: str):
        self.sub, self.ses = sub, ses
        self.checks: list[dict] = []
        self.info: dict = {}

    def add(self, category: str, ok: bool, message: str, severity: str = "error", fix: str = ""):
        self.checks.append(_check(category, ok, message, severity, fix))

    @property
    def passed(self) -> bool:
        return all(c["ok"] or c["severity"] != "error" for c in self.checks)


def _check(category: str, ok: bool, message: str, severity: str = "error", fix: str = "") -> dict:
    out = {"category": category, "ok": bool(ok), "severity": "ok" if ok else severity, "message": message}
    if not ok:
        out["fix"] = fix
    return out


FIX_EXPORT = "export the study again: stroke-lesion export-bids STUDY NEW_FOLDER --name NAME --author NAME"
FIX_QUALITY = ("grade the series: stroke-lesion quality STUDY CASE --series SERIES --reader ID --likert N --snr X "
               "--cnr Y (or --roi LABELMAP to measure, or --not-measurable REASON), then export again")
FIX_SIDECAR = ("the source image had no complete JSON sidecar: convert the DICOM with dcm2niix (it writes the "
               "acquisition parameters), create the case again and export again")


def _load_nifti(path: Path):
    import nibabel as nib
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        return img, data
    except Exception as exc:  # noqa: BLE001
        return None, f"{exc.__class__.__name__}: {str(exc)[:100]}"


def _read_json(path: Path) -> tuple[dict | None, str]:
    if not path.exists():
        return None, f"{path.name} missing"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, f"{path.name} is not valid JSON"
    if not isinstance(d, dict):
        return None, f"{path.name} is not a JSON object"
    return d, ""


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def check_dataset(dataset: str | os.PathLike, *, run_official_validator: bool = False) -> dict:
    """Run the acceptance checks; returns the report dict (``accepted`` True/False)."""
    from ClinicalMRICommonLib.quality import MIN_LIKERT

    from .deid import clean_sidecar
    root = require_bids_dataset(dataset)
    dataset_checks: list[dict] = []

    def dcheck(category, ok, message, severity="error", fix=""):
        dataset_checks.append(_check(category, ok, message, severity, fix))

    # dataset-level metadata
    desc, err = _read_json(root / "dataset_description.json")
    if desc is None:
        dcheck("metadata", False, err, fix=FIX_EXPORT)
    else:
        for key in ("Name", "BIDSVersion", "Authors"):
            dcheck("metadata", bool(desc.get(key)), f"dataset_description.json {key}"
                   + (" present" if desc.get(key) else " missing"), fix=FIX_EXPORT)
        dcheck("metadata", bool(desc.get("License")), "dataset_description.json License"
               + (" present" if desc.get("License") else " missing (state the data licence)"), "warning",
               fix="export again with --license (e.g. CC-BY-4.0)")
    deriv = root / "derivatives" / "lesions"
    probs = check_derivative_description(deriv / "dataset_description.json")
    dcheck("metadata", not probs, "derivatives/lesions/dataset_description.json: "
           + ("DatasetType derivative, GeneratedBy present" if not probs else "; ".join(probs)), fix=FIX_EXPORT)
    for f in ("README", "participants.tsv", "participants.json"):
        dcheck("metadata", (root / f).exists(), f"{f} " + ("present" if (root / f).exists() else "missing"),
               fix=FIX_EXPORT)
    dcheck("metadata", (deriv / "README").exists(), "derivatives/lesions/README "
           + ("present" if (deriv / "README").exists() else "missing"), "warning", fix=FIX_EXPORT)

    subjects = sorted(m.group(1) for p in root.iterdir() if p.is_dir() and (m := _SUBSES.match(p.name)))
    if not subjects:
        dcheck("completeness", False, "no sub-* folder: the dataset holds no subject", fix=FIX_EXPORT)
    listed = []
    if (root / "participants.tsv").exists():
        rows = _read_tsv(root / "participants.tsv")
        listed = [r.get("participant_id", "") for r in rows]
        missing = sorted(set(f"sub-{s}" for s in subjects) - set(listed))
        extra = sorted(set(listed) - set(f"sub-{s}" for s in subjects))
        dcheck("metadata", not missing and not extra,
               "participants.tsv lists every subject" if not missing and not extra else
               f"participants.tsv: missing {missing or '-'}, without data {extra or '-'}",
               fix=FIX_EXPORT + " (participants.tsv is written from the exported sessions)")

    cases: list[_Case] = []
    for s in subjects:
        sessions = sorted(p.name[4:] for p in (root / f"sub-{s}").iterdir() if p.is_dir() and p.name.startswith("ses-"))
        if not sessions:
            c = _Case(s, "")
            c.add("completeness", False, f"sub-{s} has no ses-* folder", fix=FIX_EXPORT)
            cases.append(c)
        for t in sessions:
            cases.append(_check_session(root, deriv, s, t, MIN_LIKERT, clean_sidecar))

    validator = None
    if run_official_validator:
        from .bids import run_validator
        validator = run_validator(root)
        n = validator["n_errors"]
        codes = sorted({i["code"] for i in validator["errors"]} | {
            i["code"] for d in validator["derivatives"].values() for i in d["errors"]})
        dcheck("naming", n == 0, "bids-validator-deno: " + ("no errors" if n == 0 else f"{n} error(s): "
                                                              + ", ".join(codes)),
               fix="stroke-lesion validate-bids DATASET lists the files; export with --mask-naming bids")

    n_ok = sum(c.passed for c in cases)
    accepted = all(c["ok"] or c["severity"] != "error" for c in dataset_checks) and n_ok == len(cases) and bool(cases)
    report = {
        "dataset": str(root),
        "checked": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "accepted": accepted,
        "summary": {"sessions": len(cases), "sessions_passed": n_ok,
                    "consensus_masks": sum(1 for c in cases if c.info.get("consensus")),
                    "total_consensus_volume_ml": float(sum(c.info.get("consensus_volume_ml") or 0 for c in cases)),
                    "total_lesions": int(sum(c.info.get("consensus_lesions") or 0 for c in cases)),
                    "mean_reader_dice": (float(np.mean(dices)) if (dices := [c.info["reader_dice"] for c in cases
                                                                              if c.info.get("reader_dice") is not None])
                                         else None),
                    "decided_by": {k: sum(1 for c in cases if c.info.get("decided_by") == k)
                                   for k in sorted({str(c.info.get("decided_by")) for c in cases
                                                    if c.info.get("decided_by")})}},
        "dataset_checks": dataset_checks,
        "sessions": [{"subject": c.sub, "session": c.ses, "passed": c.passed, "info": c.info, "checks": c.checks}
                     for c in cases],
    }
    if validator is not None:
        report["validator"] = {"n_errors": validator["n_errors"],
                               "warnings": sorted({i["code"] for i in validator["warnings"]})}
    return report


def _check_session(root: Path, deriv: Path, s: str, t: str, min_likert: int, clean_sidecar) -> _Case:
    c = _Case(s, t)
    stem = f"sub-{s}_ses-{t}"
    sdir = root / f"sub-{s}" / f"ses-{t}"
    ddir = deriv / f"sub-{s}" / f"ses-{t}"
    # naming
    pats = [re.compile("^" + p.format(s=s, t=t) + "$") for p in RAW_PATTERNS]
    bad = [str(p.relative_to(sdir)) for p in sdir.rglob("*") if p.is_file()
           and not any(r.match(str(p.relative_to(sdir)).replace(os.sep, "/")) for r in pats)]
    c.add("naming", not bad, "raw file names follow the layout" if not bad else f"unexpected raw file(s): {bad}",
          fix="remove or rename the files (export-bids writes only valid names)")
    if ddir.exists():
        dpats = [re.compile("^" + p.format(s=s, t=t) + "$") for p in DERIV_PATTERNS]
        dbad = [str(p.relative_to(ddir)) for p in ddir.rglob("*") if p.is_file()
                and not any(r.match(str(p.relative_to(ddir)).replace(os.sep, "/")) for r in dpats)]
        c.add("naming", not dbad, "derivative file names follow the BIDS mask template" if not dbad else
              f"derivative file(s) not named by the BIDS mask template: {dbad}",
              fix="export with --mask-naming bids (the default)")

    # images: format + metadata
    images = sorted(p for p in sdir.rglob("*.nii.gz"))
    dwi = [p for p in images if re.search(r"_(dwi|trace)\.nii\.gz$", p.name) and "_acq-b0_" not in p.name]
    c.add("completeness", bool(dwi), "DWI present" if dwi else "no DWI image (dwi/*_dwi.nii.gz or *_trace.nii.gz)",
          fix=FIX_EXPORT)
    c.add("completeness", any(p.name.endswith("_ADC.nii.gz") for p in images),
          "ADC present" if any(p.name.endswith("_ADC.nii.gz") for p in images) else "no ADC map", "warning",
          fix="the case has no ADC: create it with --adc")
    if dwi:
        c.info.setdefault("files", {})["dwi"] = str(dwi[0])
    ref = None
    for p in images:
        img, data = _load_nifti(p)
        rel = p.relative_to(sdir)
        if img is None:
            c.add("format", False, f"{rel}: not a readable NIfTI ({data})", fix=FIX_EXPORT)
            continue
        c.add("format", True, f"{rel}: readable NIfTI {img.shape}")
        if dwi and p == dwi[0]:
            ref = img
        meta, err = _read_json(p.with_name(p.name.replace(".nii.gz", ".json")))
        if meta is None:
            c.add("metadata", False, f"{rel}: {err}", fix=FIX_SIDECAR)
            continue
        miss = [k for k in REQUIRED_ACQ if k not in meta]
        c.add("metadata", not miss, f"{rel}: acquisition parameters " + ("present" if not miss else f"missing {miss}"),
              fix=FIX_SIDECAR)
        if p in dwi:
            bval = p.with_name(p.name.replace(".nii.gz", ".bval"))
            has_b = bval.exists() or "DiffusionBValue" in meta
            c.add("metadata", has_b, f"{rel}: b-value " + ("recorded" if has_b else "missing (.bval or DiffusionBValue)"),
                  fix="the DWI needs its b-value (DiffusionBValue in the sidecar or a .bval): " + FIX_SIDECAR)
        if p.name.endswith("_ADC.nii.gz"):
            c.add("metadata", bool(meta.get("Units")), f"{rel}: ADC Units " + (meta.get("Units") or "missing"),
                  fix="the ADC units were not found: create the case with --adc-units, then export again")
        _, rep = clean_sidecar(meta, keep_patient_characteristics=True)
        _, strict = clean_sidecar(meta)
        ident = list(rep["removed"])
        c.add("metadata", not ident, f"{rel}: sidecar de-identified" if not ident else
              f"{rel}: identifying sidecar key(s) {ident}",
              fix="export again (export-bids removes them) or clean the file: stroke-lesion deid sidecar IN OUT")
        pc = [k for k in strict["removed"] if k not in ident]
        if pc:
            c.add("metadata", False, f"{rel}: patient characteristics kept in the sidecar {pc} (allowed only "
                  "under the Retain Patient Characteristics Option)", "warning",
                  fix="export without --keep-patient-characteristics unless that option applies to the dataset")

    # masks
    for desc in ("consensus", "annotatorA", "annotatorB"):
        mp = ddir / "dwi" / f"{stem}_space-orig_label-lesion_desc-{desc}_mask.nii.gz"
        sev = "error"
        if not mp.exists():
            doc = ddir / f"{stem}_dwi_lesionmask.nii.gz"
            if desc == "consensus" and doc.exists():
                c.add("naming", False, f"consensus mask uses the consensus document's name {doc.name} (not valid "
                      "BIDS); export with BIDS mask naming", fix="export with --mask-naming bids (the default)")
                mp = doc
            else:
                c.add("completeness", False, f"no {desc} mask" + (" (case not accepted: no final decision)"
                                                                  if desc == "consensus" else ""), sev,
                      fix=("finish the case (stroke-lesion status STUDY lists what is missing, with the commands), "
                           "then export again") if desc == "consensus" else
                      f"{desc} has not saved a mask: stroke-lesion annotate STUDY CASE --reader ID --mask FILE, "
                      "then export again")
                continue
        img, data = _load_nifti(mp)
        if img is None:
            c.add("format", False, f"{desc} mask unreadable ({data})", fix=FIX_EXPORT)
            continue
        c.info.setdefault("files", {})[desc] = str(mp)
        vals = np.unique(data)
        binary = set(vals.tolist()) <= {0, 1}
        c.add("format", binary, f"{desc} mask binary 0/1" if binary else f"{desc} mask has values {vals[:6]}",
              fix=FIX_EXPORT)
        if ref is not None:
            ok = img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-3)
            c.add("format", ok, f"{desc} mask on the DWI grid" if ok else
                  f"{desc} mask not on the DWI grid (shape {img.shape} vs {ref.shape} or affine differs)", fix=FIX_EXPORT)
        n = int((data != 0).sum())
        vv = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        if desc == "consensus":
            from scipy import ndimage as ndi
            c.info["consensus"] = True
            c.info["consensus_volume_ml"] = n * vv
            c.info["consensus_lesions"] = int(ndi.label(data != 0, structure=np.ones((3, 3, 3)))[1])
            if n == 0:
                c.add("completeness", False, "consensus mask is empty (no acute lesion): confirm this is intended",
                      "warning", fix="look at the case: an empty consensus is right only when it shows no acute lesion")
        meta, err = _read_json(mp.with_name(mp.name.replace(".nii.gz", ".json")))
        if meta is None:
            c.add("metadata", False, f"{desc} mask: {err}", fix=FIX_EXPORT)
        else:
            miss = [k for k in ("Type", "Sources", "SpatialReference") if not meta.get(k)]
            c.add("metadata", not miss, f"{desc} mask sidecar " + ("complete" if not miss else f"missing {miss}"),
                  fix=FIX_EXPORT)
            if desc == "consensus":
                agree = meta.get("ReaderAgreement") or {}
                c.info["reader_dice"] = agree.get("dice")
                c.info["decided_by"] = (meta.get("ConsensusDecision") or {}).get("decided_by")

    # quality grades
    scans = sdir / f"{stem}_scans.tsv"
    c.info["quality_numbers"] = {}
    if not scans.exists():
        c.add("quality", False, f"{scans.name} missing: no quality grades recorded", fix=FIX_QUALITY)
    else:
        rows = {r["filename"]: r for r in _read_tsv(scans)}
        for p in images:
            rel = str(p.relative_to(sdir)).replace(os.sep, "/")
            r = rows.get(rel)
            if r is None:
                c.add("quality", False, f"{rel}: not graded", fix=FIX_QUALITY)
                continue
            lk = r.get("quality_likert", "n/a")
            try:
                lk_i = int(lk)
            except (TypeError, ValueError):
                c.add("quality", False, f"{rel}: Likert grade missing", fix=FIX_QUALITY)
            else:
                c.add("quality", lk_i >= min_likert, f"{rel}: Likert {lk_i}" + ("" if lk_i >= min_likert else
                      f" < {min_likert}: the series should have been excluded"),
                      fix="re-grade the series if the grade is wrong; otherwise leave the case out of the export "
                          "(export-bids --case for each case to keep)")
            nums = c.info["quality_numbers"].setdefault(rel, {})
            for k in ("snr", "cnr"):
                v = r.get(k, "n/a")
                src = (r.get(f"{k}_source") or "").strip()
                has_value = v not in (None, "", "n/a")
                note = (r.get("quality_note") or "").strip()
                note = "" if note == "n/a" else note
                if has_value:
                    nums[k] = src if src in ("measured", "entered") else "recorded (source not stated)"
                    c.add("quality", True, f"{rel}: {k.upper()} {v} ({nums[k]})")
                elif src == "not measurable" and note:
                    nums[k] = "not measurable"
                    c.add("quality", True, f"{rel}: {k.upper()} not measurable ({note})")
                else:
                    nums[k] = "missing"
                    c.add("quality", False, f"{rel}: {k.upper()} missing", fix=FIX_QUALITY)
    return c


# ---------------------------------------------------------------------------------------
# Report


def write_report(report: dict, out_dir: str | os.PathLike, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write acceptance_report.json and .html into ``out_dir`` (existing ones are replaced
    only with ``overwrite``; each file is written atomically)."""
    from ClinicalMRICommonLib.files import check_output_path, json_safe, write_text_atomic
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"report folder {out} is a file; give a folder")
    jp, hp = out / "acceptance_report.json", out / "acceptance_report.html"
    for p in (jp, hp):
        check_output_path(p, overwrite=overwrite, what="report")
    html_text = render_html(report)
    write_text_atomic(jp, json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    write_text_atomic(hp, html_text)
    return jp, hp


def _case_label(sess: dict) -> str:
    return f"sub-{sess['subject']} ses-{sess['session']}"


#: colour of a check's result (the report's own palette: passed green, warning amber, failed red)
_SEVERITY_COLOUR = {"ok": "#1a7f37", "warning": "#b54708", "error": "#b42318"}


def _check_rows(checks) -> list[list]:
    from ClinicalMRICommonLib.report import Cell
    return [[c["category"], Cell(c["severity"], color=_SEVERITY_COLOUR[c["severity"]]), c["message"],
             c.get("fix", "")] for c in checks]


CHECK_HEADERS = ["check", "result", "detail", "fix"]


def render_html(report: dict, *, pictures: bool = True) -> str:
    """The dataset quality report (one page of ClinicalMRICommonLib.report, the extension's
    one template): verdict and summary; every failed check first, each with its fix; the
    dataset's distributions (lesion volume, lesion count, A-vs-B Dice; cases to look at again
    named); which quality numbers were measured, entered or not measurable; per case a
    thumbnail of the consensus (and A/B outlines) on the DWI, with its row-by-row checks
    folded below (<details>). ``pictures=False`` leaves the images out."""
    from ClinicalMRICommonLib.report import Cell, Report

    s = report["summary"]
    no_pictures = ""
    if pictures:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:   # e.g. a Slicer without it: the report without pictures
            pictures, no_pictures = False, "(pictures need matplotlib: pip install matplotlib)"
    verdict = "ACCEPTED" if report["accepted"] else "NOT ACCEPTED"
    rep = Report("Dataset quality report", subtitle=f"Dataset: {report['dataset']}",
                 status=("passed" if report["accepted"] else "failed", verdict),
                 meta=[f"Checked: {report['checked']}"],
                 footer="Written by 'stroke-lesion accept' (StrokeLesionLib.acceptance); every number is in "
                        "acceptance_report.json beside this page.")
    rep.section("summary", "Summary").table(
        ["sessions", "passed", "consensus masks", "lesions (26-connected)", "total lesion volume (mL)",
         "mean Dice A vs B", "consensus decided by"],
        [[s["sessions"], s["sessions_passed"], s["consensus_masks"], s["total_lesions"],
          Cell(s["total_consensus_volume_ml"], digits=3), Cell(s["mean_reader_dice"], digits=3),
          ", ".join(f"{k}: {v}" for k, v in s["decided_by"].items()) or "-"]], num_cols=range(6))

    # 1. failures first, each with its fix (errors, then warnings)
    fails = [("dataset", c) for c in report["dataset_checks"] if not c["ok"]]
    fails += [(_case_label(x), c) for x in report["sessions"] for c in x["checks"] if not c["ok"]]
    fails.sort(key=lambda t: 0 if t[1]["severity"] == "error" else 1)
    n_err = sum(1 for _, c in fails if c["severity"] == "error")
    f = rep.section("fails", f"What fails ({n_err} error(s), {len(fails) - n_err} warning(s))")
    if fails:
        f.table(["where", "result", "problem", "fix"],
                [[where] + row[1:] for (where, _), row in zip(fails, _check_rows([c for _, c in fails]))])
    else:
        f.text("Nothing: every check passed.")
    if "validator" in report:
        v = report["validator"]
        f.text(f"bids-validator-deno: {v['n_errors']} error(s); warnings: {', '.join(v['warnings'])}")

    # 2. the dataset at a glance
    sessions = report["sessions"]
    vols = {_case_label(x): x["info"].get("consensus_volume_ml") for x in sessions if x["info"].get("consensus")}
    counts = {_case_label(x): x["info"].get("consensus_lesions") for x in sessions if x["info"].get("consensus")}
    dices = {_case_label(x): x["info"].get("reader_dice") for x in sessions if x["info"].get("reader_dice") is not None}
    d = rep.section("distributions", "Distributions across the dataset")
    if no_pictures:
        d.text(no_pictures, muted=True)
    if pictures:
        from .report_figures import LOW_DICE, TUKEY_K, distributions_png
        png, marks = distributions_png(vols, counts, dices)
        look = sorted({k for v in marks.values() for k in v})
        d.figure(png, alt="lesion volume, lesion count and Dice A vs B per case",
                 caption=f"One dot per case. Red and named: outside Tukey's fences (quartiles -/+ {TUKEY_K:g} IQR; "
                         f"Dice also below {LOW_DICE:g}). Cases to look at again: {', '.join(look) or 'none'}.")
    # 3. where the quality numbers come from
    tally: dict[str, int] = {}
    for x in sessions:
        for nums in (x["info"].get("quality_numbers") or {}).values():
            for k, src in nums.items():
                tally[f"{k.upper()} {src}"] = tally.get(f"{k.upper()} {src}", 0) + 1
    if tally:
        rep.section("quality", "Quality numbers").text(
            ", ".join(f"{k}: {v}" for k, v in sorted(tally.items()))
            + " (per series; measured from ROIs, entered by a reader, or not measurable with a reason).")

    # 4. per case: thumbnail, then the row-by-row checks folded
    cases = rep.section("cases", "Cases")
    for sess, col in zip(sessions, cases.columns(len(sessions)) if sessions else []):
        label = _case_label(sess)
        info = sess["info"]
        col.heading(f"{label}: {'passed' if sess['passed'] else 'FAILED'}")
        files = info.get("files") or {}
        if pictures and files.get("dwi"):
            from .report_figures import case_thumbnail_png
            try:
                png = case_thumbnail_png(files["dwi"], files.get("consensus"), files.get("annotatorA"),
                                         files.get("annotatorB"), title=label)
                col.figure(png, alt=f"{label}: consensus and A/B outlines on the DWI")
            except Exception as exc:  # noqa: BLE001 - an unreadable image is already a failed check
                col.text(f"(no picture: {str(exc)[:100]})", muted=True)
        if info.get("consensus"):
            dice = "" if info.get("reader_dice") is None else f"; Dice A vs B {info['reader_dice']:.3f}"
            col.text(f"consensus: {info['consensus_volume_ml']:.3f} mL, {info['consensus_lesions']} "
                     f"lesion(s){dice}; decided by {info.get('decided_by') or '-'}")
        nbad = sum(1 for c in sess["checks"] if not c["ok"])
        col.details(f"{len(sess['checks'])} checks ({nbad} not ok)").table(CHECK_HEADERS, _check_rows(sess["checks"]))
    rep.section("dataset-checks", "Dataset checks").details(f"{len(report['dataset_checks'])} checks").table(
        CHECK_HEADERS, _check_rows(report["dataset_checks"]))
    return rep.render()
