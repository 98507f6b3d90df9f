"""Many cases at once: ``stroke-lesion case import STUDY --from FOLDER_OR_CSV``.

Sources:

* a folder in the ISLES'22 layout (``FOLDER/rawdata/sub-X/ses-Y/``, flat files) or a BIDS
  dataset (``FOLDER/sub-X/ses-Y/{dwi,anat}/``; sessionless ``FOLDER/sub-X/{dwi,anat}/`` too):
  every session folder is one case, its images found by bids.find_session_images; case id
  ``sub-X_ses-Y`` (``sub-X`` without sessions), subject ``X``, session ``Y`` (``01``);
* a CSV with one row per case: ``case_id``, ``dwi``, ``adc`` (required), ``flair``, ``t1w``,
  ``t2w``, ``b0``, ``subject``, ``session``, ``annotator_a``, ``annotator_b``, ``reviewer``,
  ``arbitrator``, ``adc_units`` (optional; empty cells are absent). Relative image paths are
  relative to the CSV's folder.

Each case goes through workflow.Study.init_case, which is atomic: a case is imported whole or
refused whole (with the reason); cases already in the study are skipped, so an import can be
run again after fixing the refused ones. Readers given for every case are checked once,
before any case is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ClinicalMRICommonLib.errors import UserError

IMAGE_COLUMNS = ("dwi", "adc", "flair", "t1w", "t2w", "b0")
SLOT_COLUMNS = {"annotator_a": "annotatorA", "annotatora": "annotatorA", "annotator-a": "annotatorA",
                "annotator_b": "annotatorB", "annotatorb": "annotatorB", "annotator-b": "annotatorB",
                "reviewer": "reviewer", "arbitrator": "arbitrator"}


def session_folders(folder: str | os.PathLike) -> list[dict]:
    """The session folders of an ISLES'22 or BIDS folder: ``[{"case_id", "subject", "session",
    "folder"}]`` (no session level: session "01")."""
    root = Path(folder)
    base = root / "rawdata" if (root / "rawdata").is_dir() else root
    out = []
    for sub in sorted(p for p in base.glob("sub-*") if p.is_dir()):
        sessions = sorted(p for p in sub.glob("ses-*") if p.is_dir())
        label = sub.name[4:]
        if sessions:
            out += [{"case_id": f"{sub.name}_{s.name}", "subject": label, "session": s.name[4:], "folder": s}
                    for s in sessions]
        else:
            out.append({"case_id": sub.name, "subject": label, "session": "01", "folder": sub})
    if not out:
        raise UserError(f"{root} holds no sub-* folder: give an ISLES'22 folder (rawdata/sub-X/ses-Y), a BIDS "
                        "dataset (sub-X/ses-Y/dwi) or a CSV of cases")
    return out


def _cell(row, col) -> str | None:
    if col not in row:
        return None
    v = row[col]
    if v is None:
        return None
    text = str(v).strip()
    return None if text in ("", "nan", "NaN", "None") else text


def csv_cases(path: str | os.PathLike) -> list[dict]:
    """The rows of a case CSV as case specifications (see the module docstring)."""
    from ClinicalMRICommonLib.tables import read_csv_table
    p = Path(path)
    df = read_csv_table(p, "case list")
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("case_id", "dwi", "adc") if c not in df.columns]
    if missing:
        raise UserError(f"case list {p} lacks the column(s) {', '.join(missing)}; columns: case_id, dwi, adc "
                        "(required), flair, t1w, t2w, b0, subject, session, annotator_a, annotator_b, reviewer, "
                        "arbitrator, adc_units")
    out = []
    for i, (_, row) in enumerate(df.iterrows(), start=2):
        spec = {"case_id": _cell(row, "case_id"), "line": i, "images": {}, "assignments": {}}
        for col in IMAGE_COLUMNS:
            v = _cell(row, col)
            if v:
                spec["images"][col] = str((p.parent / v) if not os.path.isabs(v) else Path(v))
        for col, slot in SLOT_COLUMNS.items():
            v = _cell(row, col)
            if v:
                spec["assignments"][slot] = v
        for col in ("subject", "session", "adc_units"):
            v = _cell(row, col)
            if v:
                spec[col] = v
        out.append(spec)
    return out


def import_cases(study, source: str | os.PathLike, *, by: str, why: str = "",
                 assignments: dict[str, str] | None = None, adc_units: str = "auto",
                 progress: Callable[[str], None] | None = None) -> dict:
    """Import every case of ``source`` (folder or CSV) into ``study``; returns
    ``{"imported": [...], "skipped": [...], "refused": [...]}``, each entry ``{"case", "source"}``
    (refused: with ``"reason"``). ``assignments`` ({slot: reader}) apply to every case; a CSV's
    reader columns override them per case."""
    from .bids import find_session_images
    from .diffusion import parse_adc_units

    src = Path(source)
    if not src.exists():
        raise UserError(f"import source not found: {src}")
    parse_adc_units(adc_units)
    common = {k: v for k, v in (assignments or {}).items() if v}
    planned: dict[str, str] = {}
    for slot, rid in common.items():             # the same readers for every case: check them once
        study._qualified_for(slot, rid, planned, "every imported case")
        planned[slot] = rid
    if src.is_dir():
        specs = []
        for s in session_folders(src):
            spec = {"case_id": s["case_id"], "subject": s["subject"], "session": s["session"],
                    "source": str(s["folder"]), "assignments": {}}
            try:
                spec["images"] = {k: str(v) for k, v in find_session_images(s["folder"]).items()}
            except UserError as exc:
                spec["error"] = str(exc)
            specs.append(spec)
    else:
        specs = csv_cases(src)
        for spec in specs:
            spec["source"] = f"{src} line {spec['line']}"
    report = {"source": str(src), "imported": [], "skipped": [], "refused": []}
    known = set(study.case_ids())
    for n, spec in enumerate(specs, start=1):
        cid = spec.get("case_id") or ""
        entry = {"case": cid, "source": spec["source"]}
        try:
            if "error" in spec:
                raise UserError(spec["error"])
            if not cid:
                raise UserError("no case_id")
            if cid in known:
                report["skipped"].append({**entry, "reason": "already in the study"})
                status = "skipped (already in the study)"
            else:
                images = dict(spec["images"])
                if "dwi" not in images or "adc" not in images:
                    raise UserError("DWI and ADC are both required")
                dwi, adc = images.pop("dwi"), images.pop("adc")
                study.init_case(cid, dwi=dwi, adc=adc, others=images, subject=spec.get("subject"),
                                session=spec.get("session") or "01", by=by, why=why,
                                assignments={**common, **spec["assignments"]},
                                adc_units=spec.get("adc_units") or adc_units)
                known.add(cid)
                report["imported"].append(entry)
                status = "imported"
        except UserError as exc:
            report["refused"].append({**entry, "reason": str(exc)})
            status = f"refused: {exc}"
        if progress is not None:
            progress(f"[{n}/{len(specs)}] {cid or spec['source']}: {status}")
    return report
