"""Export a stroke study (workflow.Study) to a BIDS dataset with a lesion-mask derivative.

Layout (BIDS 1.11; checked with the official validator, ``bids-validator-deno``)::

    OUT/dataset_description.json  participants.tsv  participants.json  README  scans.json
    OUT/sub-<s>/ses-<t>/dwi/sub-<s>_ses-<t>_dwi.nii.gz (+ .json .bval .bvec)   DWI (b=1000 trace)
    OUT/sub-<s>/ses-<t>/dwi/sub-<s>_ses-<t>_ADC.nii.gz (+ .json)                 scanner ADC (BIDS 1.11
                                                                                  "scanner derivative" suffix)
    OUT/sub-<s>/ses-<t>/anat/sub-<s>_ses-<t>_FLAIR|T1w|T2w.nii.gz (+ .json)
    OUT/sub-<s>/ses-<t>/sub-<s>_ses-<t>_scans.tsv                                image quality per series
    OUT/derivatives/lesions/dataset_description.json (DatasetType derivative, GeneratedBy)  README
    OUT/derivatives/lesions/sub-<s>/ses-<t>/dwi/
        sub-<s>_ses-<t>_space-orig_label-lesion_desc-<annotatorA|annotatorB|consensus>_mask.nii.gz (+ .json)
        sub-<s>_ses-<t>_space-orig_expADC.nii.gz (+ .json)                       eADC = exp(-b ADC)
    OUT/derivatives/lesions/sourcedata/audit/sub-<s>_ses-<t>_audit.jsonl          the workflow's audit trail

Masks follow the BIDS derivatives "Masks" template: ``<source_entities>[_space-][_res-]
[_den-][_label-][_desc-]_mask.nii.gz`` in the datatype folder of the image they were drawn
on (dwi/), binary 1 inside; ``space-orig`` because no transformation took place (the spec:
"If no transformation has taken place, the value of space SHOULD be set to orig"), with
``SpatialReference`` and ``Sources`` pointing at the raw DWI (BIDS URIs) and ``Type`` =
Lesion. The consensus document's own name, ``derivatives/lesions/sub-X/ses-Y/
sub-X_ses-Y_dwi_lesionmask.nii.gz``, is NOT valid BIDS (no datatype folder, ``lesionmask``
is not a suffix, ``dwi`` is not an entity): ``mask_naming="consensus-document"`` writes the
consensus mask under that name instead, and the validator then reports it.

A single 3D DWI (the scanner's isotropic b=1000 image) is written as ``_dwi`` with a
one-volume .bval (the b-value) and a zero .bvec, the way dcm2niix writes isotropic
images; ``dwi_suffix="trace"`` writes it with BIDS 1.11's ``_trace`` suffix instead.

Privacy: sidecars pass through deid.clean_sidecar (Basic Profile table) and then keep only
the keys the BIDS schema defines (bidsschematools' list, shipped in bids_schema_keys with its
version) plus :data:`SIDECAR_ALLOW_LIST`; NIfTI header extensions are removed and the
headers' free-text fields (descrip, aux_file, intent_name; dcm2niix writes acquisition times
there) are blanked; gzip streams carry no file name and no time stamp; the export report
lists everything removed. Age and sex appear in participants.tsv only with
``keep_patient_characteristics`` (the profile's Retain Patient Characteristics Option). The
exported audit trail and reader list are redacted copies (file names instead of paths, reader
ids, no readers' names, operating-system accounts or hosts); they keep the readers' free-text
notes and reasons: review them before sharing, or export with ``include_audit=False``.
Before a case is exported it is verified (Study.verify_case: audit trail, case.json, every
image's and mask's SHA-256); a case that does not verify stops the export.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import write_bytes_atomic

from .deid import PATIENT_CHARACTERISTICS, clean_sidecar, method_text
from ClinicalMRICommonLib.staging import staged_folder
from .workflow import Study

BIDS_VERSION = "1.11.0"
MASK_DESCS = ("annotatorA", "annotatorB", "consensus")
ANAT_SUFFIX = {"flair": "FLAIR", "t1w": "T1w", "t2w": "T2w"}
_ADC_UNITS_CMIXF = {"mm2/s": "mm^2/s", "1e-3mm2/s": "um^2/ms", "1e-6mm2/s": "um^2/s"}
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class ExportOptions:
    name: str
    authors: list[str]
    license: str | None = None
    mask_naming: str = "bids"                 # "bids" | "consensus-document" (not valid BIDS)
    dwi_suffix: str = "dwi"                   # "dwi" (+ .bval/.bvec) | "trace"
    keep_patient_characteristics: bool = False
    include_audit: bool = True
    include_eadc: bool = True
    masks: tuple[str, ...] = MASK_DESCS
    ethics_approvals: list[str] = field(default_factory=list)
    cases: tuple[str, ...] | None = None      # export only these case ids (default: all)
    series: tuple[str, ...] | None = None     # export only these series (default: all; dwi is always kept)

    def check(self) -> "ExportOptions":
        if not self.name.strip():
            raise UserError("the dataset needs a name")
        if not self.authors or not all(a.strip() for a in self.authors):
            raise UserError("give at least one author (BIDS dataset_description Authors)")
        if self.mask_naming not in ("bids", "consensus-document"):
            raise UserError("mask naming must be 'bids' or 'consensus-document'")
        if self.dwi_suffix not in ("dwi", "trace"):
            raise UserError("DWI suffix must be 'dwi' or 'trace'")
        bad = set(self.masks) - set(MASK_DESCS)
        if bad:
            raise UserError(f"unknown mask kind(s) {sorted(bad)}; use {', '.join(MASK_DESCS)}")
        return self


# ---------------------------------------------------------------------------------------
# Writing helpers


def _write_bytes_new(path: Path, data: bytes) -> None:
    """Through the one verified writer (read back before it is published; never over an
    existing file)."""
    write_bytes_atomic(path, data, what="BIDS file", exclusive=True)


def _write_json(path: Path, obj) -> None:
    _write_bytes_new(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_text(path: Path, text: str) -> None:
    _write_bytes_new(path, text.encode("utf-8"))


def _gzip_clean(raw: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def write_clean_nifti(src: str | os.PathLike, dst: Path, *, binary_mask: bool = False) -> dict:
    """Copy a NIfTI with its voxels and geometry unchanged, its free-text header fields
    blanked, its header extensions removed (they can hold anything: a DICOM header, a
    comment such as "PatientName=..."), and a gzip stream without file name or time stamp.
    With ``binary_mask`` the voxels become UInt8 0/1 (non-zero -> 1). Returns what was
    removed: ``{"extensions": [codes], "text_fields": [names]}``."""
    import nibabel as nib
    img = nib.load(str(src))
    hdr = img.header.copy()
    removed = {"extensions": [int(e.get_code()) for e in getattr(hdr, "extensions", [])], "text_fields": []}
    if hasattr(hdr, "extensions"):
        hdr.extensions.clear()
    for key in ("descrip", "aux_file", "intent_name", "db_name"):
        if key in hdr:
            if bytes(np.asarray(hdr[key]).tobytes()).strip(b"\0 "):
                removed["text_fields"].append(key)
            hdr[key] = b""
    if binary_mask:
        data = (np.asanyarray(img.dataobj) != 0).astype(np.uint8)
        hdr.set_data_dtype(np.uint8)
        hdr.set_slope_inter(1, 0)
        out = nib.Nifti1Image(data, img.affine, hdr)
    else:
        out = img.__class__(img.dataobj, img.affine, hdr)
    for form in ("qform", "sform"):
        aff, code = getattr(img, f"get_{form}")(coded=True)
        if aff is not None:
            getattr(out, f"set_{form}")(aff, int(code))
    if hasattr(out.header, "extensions"):
        out.header.extensions.clear()
    _write_bytes_new(dst, _gzip_clean(out.to_bytes()))
    return removed


def _bids_times(meta: dict) -> tuple[dict, list[str]]:
    """Sidecars copied from DICOM headers (e.g. the ISLES'22 ones) state TE/TR/TI in ms;
    BIDS wants seconds. Values that can only be ms are converted (TE > 1, TR > 100, TI > 10)."""
    out, notes = dict(meta), []
    for key, limit in (("EchoTime", 1.0), ("RepetitionTime", 100.0), ("InversionTime", 10.0)):
        v = out.get(key)
        if isinstance(v, (int, float)) and v > limit:
            out[key] = v / 1000.0
            notes.append(f"{key} {v} ms -> {out[key]} s")
    return out, notes


#: Keys kept in exported sidecars although the BIDS schema does not define them, and why (with
#: ``keep_patient_characteristics`` the profile's patient characteristics are kept too):
#: ``DiffusionBValue`` is a trace image's b-value when no .bval is written (the acceptance
#: check reads it); ``ImageType`` says what the image is (ORIGINAL/DERIVED, ADC), which the
#: ADC check of 'case import' reads. Neither describes the person.
SIDECAR_ALLOW_LIST = ("DiffusionBValue", "ImageType")


def bids_metadata_keys() -> tuple[frozenset, str]:
    """(the metadata keys the BIDS schema defines, where the list comes from): the list of
    ``bidsschematools`` (BIDS 1.11, the version the export declares) shipped in
    bids_schema_keys, so the export needs no schema package at run time (a stock Slicer) and a
    newer schema package cannot change it unnoticed; a test checks that the list equals the
    installed ``bidsschematools`` schema's."""
    from .bids_schema_keys import METADATA_KEYS, SOURCE
    return METADATA_KEYS, SOURCE


def bids_sidecar(meta: dict, keep_pc: bool) -> tuple[dict, dict]:
    """A source sidecar made fit for export: the de-identification profile first
    (deid.clean_sidecar: DICOM attributes the Basic Profile does not keep), then only keys the
    BIDS schema defines plus :data:`SIDECAR_ALLOW_LIST`. Returns (sidecar, report: "removed"
    by the profile, "not_in_bids_schema", "schema")."""
    clean, rep = clean_sidecar(meta, keep_patient_characteristics=keep_pc)
    keys, source = bids_metadata_keys()
    allowed = keys | set(SIDECAR_ALLOW_LIST) | (set(PATIENT_CHARACTERISTICS) if keep_pc else set())
    rep["not_in_bids_schema"] = sorted(k for k in clean if k not in allowed)
    rep["schema"] = source
    clean = {k: v for k, v in clean.items() if k in allowed}
    clean, notes = _bids_times(clean)
    rep["unit_conversions"] = notes
    return clean, rep


def _read_sidecar_file(p: Path | None) -> dict:
    if p is None:
        return {}
    try:
        meta = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"JSON sidecar {p} could not be read as JSON; restore it (stroke-lesion verify)") from None
    if not isinstance(meta, dict):
        raise UserError(f"JSON sidecar {p} is not a JSON object; restore it (stroke-lesion verify)")
    return meta


# ---------------------------------------------------------------------------------------
# Reading a session folder

#: Image kind -> BIDS suffixes that name it (matched case-insensitively: ISLES'22 writes
#: ``_adc``/``_flair``, BIDS 1.11 ``_ADC``/``_FLAIR``).
SESSION_SUFFIXES = {"dwi": ("dwi", "trace"), "adc": ("adc",), "flair": ("flair",), "t1w": ("t1w",),
                    "t2w": ("t2w",)}
_NIFTI_RE = re.compile(r"^(?P<stem>.+)_(?P<suffix>[A-Za-z0-9]+)\.nii(\.gz)?$")


def find_session_images(folder: str | os.PathLike) -> dict[str, Path]:
    """The DWI, ADC and (when present) FLAIR/T1w/T2w NIfTI files of one session folder.

    Looks in ``folder`` itself (flat layouts such as ISLES'22 ``rawdata/sub-X/ses-Y/``) and
    in its ``dwi/`` and ``anat/`` subfolders (BIDS). Returns ``{kind: path}``; DWI and ADC
    are required. Raises UserError naming the folder when one is missing or when a kind
    matches several files (the message lists them, so the user can pick the files by hand).
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"session folder {root} does not exist or is not a folder")
    found: dict[str, list[Path]] = {k: [] for k in SESSION_SUFFIXES}
    for sub in (root, root / "dwi", root / "anat"):
        if not sub.is_dir():
            continue
        for p in sorted(sub.iterdir()):
            m = _NIFTI_RE.match(p.name)
            if not m or not p.is_file() or p.name.startswith("."):
                continue
            suffix = m.group("suffix").lower()
            for kind, suffixes in SESSION_SUFFIXES.items():
                if suffix in suffixes:
                    found[kind].append(p)
    several = {k: v for k, v in found.items() if len(v) > 1}
    if several:
        k, v = next(iter(several.items()))
        raise UserError(f"session folder {root} has {len(v)} {k.upper()} files ({', '.join(p.name for p in v)}); "
                        "choose the files one by one instead")
    missing = [k.upper() for k in ("dwi", "adc") if not found[k]]
    if missing:
        have = ", ".join(p.name for v in found.values() for p in v) or "no NIfTI files named *_<suffix>.nii[.gz]"
        raise UserError(f"session folder {root} has no {' and no '.join(missing)} image (found: {have}); "
                        "expected BIDS names such as sub-X_ses-Y_dwi.nii.gz and sub-X_ses-Y_ADC.nii.gz")
    return {k: v[0] for k, v in found.items() if v}


# ---------------------------------------------------------------------------------------
# Export


def _label(value: str, what: str) -> str:
    if not _LABEL_RE.match(value):
        raise UserError(f"{what} label {value!r} is not a valid BIDS label (letters and digits only)")
    return value


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("slicer-clinical-mri")
    except Exception:  # noqa: BLE001
        return "unknown"


def export_study(study: Study, out: str | os.PathLike, options: ExportOptions, *, overwrite: bool = False) -> dict:
    """Write the BIDS dataset. ``out`` must be new or empty; with ``overwrite`` an earlier
    export there (a folder with a dataset_description.json) is replaced.

    The dataset is written into a temporary folder beside ``out`` and renamed onto it only
    when complete: a failure leaves no half-written dataset (and an earlier export intact).
    Returns a report (files written, cases without a consensus, warnings)."""
    options.check()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} is a file; give a new folder for the dataset")
    replacing = out.exists() and any(out.iterdir())
    if replacing and not overwrite:
        raise UserError(f"output folder {out} is not empty; export into a new folder, or pass --overwrite to "
                        "replace an earlier export")
    if replacing and not (out / "dataset_description.json").exists():
        raise UserError(f"output folder {out} is not empty and holds no BIDS dataset; --overwrite replaces only "
                        "an earlier export: choose a new folder")
    sr, orr = study.root.resolve(), out.resolve()
    if sr == orr or sr.is_relative_to(orr) or orr.is_relative_to(sr):
        raise UserError(f"output folder {out} and the study folder {study.root} overlap; export outside the study")
    with staged_folder(out, "BIDS dataset") as stage:
        report = _export_into(study, stage, options)
        report["output"] = str(out)
    return report


def _export_into(study: Study, out: Path, options: ExportOptions) -> dict:
    from .diffusion import read_b_value
    case_ids = study.case_ids()
    if options.cases is not None:
        unknown = sorted(set(options.cases) - set(case_ids))
        if unknown:
            raise UserError(f"unknown case(s) {unknown}; the study has {', '.join(case_ids) or 'no cases'}")
        case_ids = [c for c in case_ids if c in options.cases]
    if not case_ids:
        raise UserError(f"study {study.root} has no cases to export")
    report: dict = {"output": str(out), "cases": [], "warnings": [], "files": 0}
    if options.mask_naming == "consensus-document":
        report["warnings"].append("consensus masks use the consensus document's name "
                                  "(sub-X_ses-Y_dwi_lesionmask.nii.gz), which is NOT valid BIDS")
    participants: dict[str, dict] = {}
    reader_ids = set(study.readers())
    removed: dict = {"sidecar_keys_deidentification": set(), "sidecar_keys_not_in_bids_schema": set(),
                     "nifti_extensions": 0, "nifti_text_fields": 0}
    deriv = out / "derivatives" / "lesions"
    seen: set[tuple[str, str]] = set()
    written: list[Path] = []

    for cid in case_ids:
        st = study.state(cid)
        problems = study.verify_case(cid)["problems"]
        if problems:
            raise UserError(f"case {cid} does not verify, nothing was exported: {problems[0]}"
                            + (f" (and {len(problems) - 1} more: stroke-lesion verify {study.root})"
                               if len(problems) > 1 else ""))
        info = st.info
        sub, ses = _label(info["subject"], "subject"), _label(info["session"], "session")
        if (sub, ses) in seen:
            raise UserError(f"two cases map to sub-{sub} ses-{ses}; give each case its own subject/session")
        seen.add((sub, ses))
        stem = f"sub-{sub}_ses-{ses}"
        rawdir = out / f"sub-{sub}" / f"ses-{ses}"
        crep: dict = {"case": cid, "subject": sub, "session": ses, "status": st.status, "masks": []}
        scans = []
        sidecar_reports = {}
        diffusion = _diffusion_of(study, cid) if "adc" in info["images"] and (
            options.series is None or "adc" in options.series) else None
        for kind, entry in info["images"].items():
            if options.series is not None and kind not in options.series and kind != "dwi":
                continue
            src = study.case_file(cid, kind)                    # confined, SHA-256 checked
            meta, srep = bids_sidecar(_read_sidecar_file(study.case_file(cid, kind, "sidecar")),
                                      options.keep_patient_characteristics)
            sidecar_reports[kind] = srep
            if kind == "dwi":
                suffix = options.dwi_suffix
                rel = f"dwi/{stem}_{suffix}.nii.gz"
                import nibabel as nib
                nvol = 1 if len(nib.load(str(src)).shape) == 3 else nib.load(str(src)).shape[3]
                if suffix == "dwi":
                    bval_src = study.case_file(cid, "dwi", "bval")   # as recorded at 'case init' (any image suffix)
                    if bval_src is not None:
                        bvals = _read_gradient_text(bval_src, "b-value").split()
                        bvec_src = study.case_file(cid, "dwi", "bvec")
                        bvecs = _read_gradient_text(bvec_src, "b-vector") if bvec_src is not None else None
                    else:
                        if nvol != 1:
                            raise UserError(f"case {cid}: the 4D DWI has no .bval/.bvec beside it; BIDS needs them")
                        b, _ = read_b_value(src)
                        bvals, bvecs = [f"{b:g}"], "0\n0\n0\n"
                    if len(bvals) != nvol:
                        raise UserError(f"case {cid}: {len(bvals)} b-values for {nvol} DWI volume(s)")
                    _write_text(rawdir / f"dwi/{stem}_dwi.bval", " ".join(bvals) + "\n")
                    _write_text(rawdir / f"dwi/{stem}_dwi.bvec", bvecs or "\n".join(
                        " ".join("0" for _ in bvals) for _ in range(3)) + "\n")
                    written += [rawdir / f"dwi/{stem}_dwi.bval", rawdir / f"dwi/{stem}_dwi.bvec"]
            elif kind == "adc":
                rel = f"dwi/{stem}_ADC.nii.gz"
                if diffusion is not None:
                    meta["Units"] = _ADC_UNITS_CMIXF[diffusion.units.units]
                else:
                    report["warnings"].append(f"case {cid}: ADC units could not be detected; 'Units' not written")
            elif kind == "b0":
                rel = f"dwi/{stem}_acq-b0_dwi.nii.gz"
                _write_text(rawdir / f"dwi/{stem}_acq-b0_dwi.bval", "0\n")
                _write_text(rawdir / f"dwi/{stem}_acq-b0_dwi.bvec", "0\n0\n0\n")
                written += [rawdir / f"dwi/{stem}_acq-b0_dwi.bval", rawdir / f"dwi/{stem}_acq-b0_dwi.bvec"]
            else:
                rel = f"anat/{stem}_{ANAT_SUFFIX[kind]}.nii.gz"
            srep["nifti_removed"] = write_clean_nifti(src, rawdir / rel)
            _write_json(rawdir / rel.replace(".nii.gz", ".json"), meta)
            written += [rawdir / rel, rawdir / rel.replace(".nii.gz", ".json")]
            q = [x for x in st.quality if x["series"] == kind]
            if q:
                last = q[-1]
                nm = last.get("not_measurable") or {}
                scans.append({"filename": rel, "quality_likert": last["likert"], "snr": last["snr"],
                              "cnr": last["cnr"], "snr_source": _number_source(last, "snr"),
                              "cnr_source": _number_source(last, "cnr"),
                              "quality_note": "; ".join(f"{k.upper()} not measurable: {nm[k]}" for k in ("snr", "cnr")
                                                        if nm.get(k)) or None, "quality_reader": last["who"]})
            else:
                scans.append({"filename": rel, "quality_likert": None, "snr": None, "cnr": None,
                              "quality_reader": None})
        crep["sidecars"] = sidecar_reports
        for srep in sidecar_reports.values():
            removed["sidecar_keys_deidentification"].update(srep["removed"])
            removed["sidecar_keys_not_in_bids_schema"].update(srep["not_in_bids_schema"])
            removed["nifti_extensions"] += len(srep.get("nifti_removed", {}).get("extensions", []))
            removed["nifti_text_fields"] += len(srep.get("nifti_removed", {}).get("text_fields", []))
        if scans:
            p = rawdir / f"{stem}_scans.tsv"
            _write_text(p, _tsv(scans, list(SCANS_COLUMNS)))
            written.append(p)

        # participants (age/sex only with the retain option; read from the original sidecars)
        prow = participants.setdefault(f"sub-{sub}", {"participant_id": f"sub-{sub}"})
        if options.keep_patient_characteristics:
            raw_meta = _read_sidecar_file(study.case_file(cid, "dwi", "sidecar"))
            prow["age"] = _age_years(raw_meta.get("PatientAge"))
            prow["sex"] = raw_meta.get("PatientSex") or None

        # derivative: masks
        ddir = deriv / f"sub-{sub}" / f"ses-{ses}" / "dwi"
        dwi_rel = f"sub-{sub}/ses-{ses}/dwi/{stem}_{options.dwi_suffix}.nii.gz"
        masks = {}
        if st.compare is not None:
            masks["annotatorA"] = study.compared_version(st, "annotatorA")
            masks["annotatorB"] = study.compared_version(st, "annotatorB")
        else:
            for slot in ("annotatorA", "annotatorB"):
                if st.annotations.get(slot):
                    masks[slot] = st.annotations[slot][-1]
        if st.consensus is not None and st.status == "final":
            masks["consensus"] = st.consensus
        for desc, rec in masks.items():
            if desc not in options.masks:
                continue
            src = study.mask_path(cid, rec["file"])
            if desc == "consensus" and options.mask_naming == "consensus-document":
                dst = deriv / f"sub-{sub}" / f"ses-{ses}" / f"{stem}_dwi_lesionmask.nii.gz"
            else:
                dst = ddir / f"{stem}_space-orig_label-lesion_desc-{desc}_mask.nii.gz"
            study.read_mask_version(cid, rec)          # checks the SHA-256 against the audit trail
            write_clean_nifti(src, dst, binary_mask=True)
            side = {
                "Type": "Lesion",
                "Description": {"annotatorA": "Acute ischaemic lesion drawn by annotator A (independent read)",
                                "annotatorB": "Acute ischaemic lesion drawn by annotator B (independent read)",
                                "consensus": "Accepted consensus lesion mask (two-reader workflow: "
                                             f"{rec.get('decided_by', '')})"}[desc],
                "Sources": [f"bids:raw:{dwi_rel}"],
                "SpatialReference": f"bids:raw:{dwi_rel}",
                "Reader": _reader_record(study, st, desc, rec),
                "MaskVersion": rec.get("version"),
                "SHA256OfStudyFile": rec.get("sha256"),
                "VolumeML": rec.get("volume_ml"),
                "AnnotationTime": rec.get("ts"),
            }
            if desc == "consensus":
                side["ConsensusDecision"] = {"decided_by": rec.get("decided_by"),
                                             "review": [{k: r.get(k) for k in ("outcome", "decisions", "who", "why")}
                                                        for r in st.reviews],
                                             "arbitration": ({k: st.arbitration.get(k) for k in
                                                              ("decisions", "who", "why")} if st.arbitration else None)}
                if st.compare:
                    side["ReaderAgreement"] = {"dice": st.compare["agreement"]["dice"],
                                               "volume_diff_ml": st.compare["agreement"]["volume_diff_ml"],
                                               "lesions": st.compare["detection_B_vs_A"]}
            _write_json(dst.with_name(dst.name.replace(".nii.gz", ".json")), side)
            written += [dst, dst.with_name(dst.name.replace(".nii.gz", ".json"))]
            crep["masks"].append(desc)

        # derivative: eADC
        if options.include_eadc and diffusion is not None:
            try:
                b, bsrc = read_b_value(study.case_file(cid, "dwi"))
            except UserError:
                b = None
                report["warnings"].append(f"case {cid}: no b-value, eADC not written")
            if b is not None:
                _write_eadc(diffusion, b, ddir / f"{stem}_space-orig_expADC.nii.gz",
                            f"sub-{sub}/ses-{ses}/dwi/{stem}_ADC.nii.gz", dwi_rel, bsrc)
                written += [ddir / f"{stem}_space-orig_expADC.nii.gz", ddir / f"{stem}_space-orig_expADC.json"]

        if options.include_audit:
            p = deriv / "sourcedata" / "audit" / f"{stem}_audit.jsonl"
            _write_bytes_new(p, _jsonl(redacted_audit(st.records, reader_ids)))
            written.append(p)
        if "consensus" not in crep["masks"]:
            report["warnings"].append(f"case {cid} ({stem}) has no accepted consensus mask (state {st.status})")
        report["cases"].append(crep)

    # top-level files
    _write_json(out / "dataset_description.json", _raw_description(options))
    cols = ["participant_id"] + (["age", "sex"] if options.keep_patient_characteristics else [])
    _write_text(out / "participants.tsv", _tsv(list(participants.values()), cols))
    pj = {"participant_id": {"Description": "Pseudonymous subject label (no link to hospital identifiers)"}}
    if options.keep_patient_characteristics:
        pj["age"] = {"Description": "Age at the scan", "Units": "year"}
        pj["sex"] = {"Description": "Sex as recorded in the DICOM header",
                     "Levels": {"F": "female", "M": "male", "O": "other"}}
    _write_json(out / "participants.json", pj)
    _write_json(out / "scans.json", {
        "quality_likert": {"Description": "Image quality, Likert 1 (non-diagnostic) to 5 (excellent), by an "
                                          "experienced reader (stroke annotation consensus: exclude < 3)",
                           "Levels": {str(i): s for i, s in enumerate(
                               ["non-diagnostic", "poor", "acceptable", "good", "excellent"], start=1)}},
        "snr": {"Description": "Signal-to-noise ratio from signal and background ROIs"},
        "cnr": {"Description": "Contrast-to-noise ratio of lesion versus normal tissue"},
        "snr_source": {"Description": "Where the SNR comes from",
                       "Levels": {"measured": "measured from signal and background ROIs",
                                  "entered": "entered by the reader", "not measurable": "cannot be measured on this "
                                  "series (reason in quality_note)"}},
        "cnr_source": {"Description": "Where the CNR comes from (levels as snr_source)",
                       "Levels": {"measured": "measured from ROIs", "entered": "entered by the reader",
                                  "not measurable": "cannot be measured (reason in quality_note)"}},
        "quality_note": {"Description": "Why SNR or CNR cannot be measured (e.g. a computed map such as the ADC, or "
                                        "a skull-stripped image without background noise)"},
        "quality_reader": {"Description": "Pseudonymous id of the reader who graded the series"}})
    _write_text(out / "README", _readme(options, study))
    _write_json(deriv / "dataset_description.json", _derivative_description(options))
    _write_text(deriv / "README", _derivative_readme(options))
    if options.include_audit:
        _write_bytes_new(deriv / "sourcedata" / "readers.jsonl", _jsonl(redacted_readers(study)))
    written += [out / f for f in ("dataset_description.json", "participants.tsv", "participants.json", "scans.json",
                                  "README")] + [deriv / "dataset_description.json", deriv / "README"]
    report["files"] = len(written)
    report["removed"] = {k: sorted(v) if isinstance(v, set) else v for k, v in removed.items()}
    report["removed"]["schema"] = bids_metadata_keys()[1]
    problems = check_derivative_description(deriv / "dataset_description.json")
    if problems:                                  # our own writer must pass our own check
        raise UserError("derivative dataset_description.json is incomplete: " + "; ".join(problems))
    return report


def _read_gradient_text(p: Path, what: str) -> str:
    """A .bval/.bvec file as text (UserError for anything that is not a text table)."""
    try:
        text = p.read_bytes().decode("ascii")
    except (OSError, UnicodeDecodeError):
        raise UserError(f"{what} file {p} is not a text table of numbers; restore it (stroke-lesion verify)") from None
    try:
        [float(x) for x in text.split()]
    except ValueError:
        raise UserError(f"{what} file {p} is not a table of numbers; restore it (stroke-lesion verify)") from None
    return text


#: Audit-record fields that hold paths: exported as file names only.
_PATH_KEYS = ("input", "source", "edited_input", "file", "lesion_map")
#: Record fields not exported: the operating-system account and host, the chain and signature
#: (they cannot be checked without the study and the site key) and lock recovery details.
_DROPPED_FIELDS = ("os_user", "host", "prev", "hash", "sig", "key_id", "legacy", "recovered")


def _redact(obj):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("name", "recovered"):          # a reader's name; lock-recovery details (user, host, command)
                continue
            if k in _PATH_KEYS and isinstance(v, str):
                out[k] = Path(v.replace("\\", "/")).name
            else:
                out[k] = _redact(v)
        return out
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


def redacted_audit(records: list[dict], reader_ids: set[str]) -> list[dict]:
    """A case's audit trail for the export: file names instead of paths, reader ids (a
    coordinator's login name becomes "coordinator"), no readers' names, no operating-system
    accounts or hosts, no chain fields. A redacted copy: the study keeps the signed original."""
    out = []
    for r in records:
        rec = {k: v for k, v in r.items() if k not in _DROPPED_FIELDS}
        who = r.get("who")
        if who not in reader_ids:
            rec["who"] = "system" if r.get("role") == "system" else "coordinator"
        rec["what"] = _redact(r.get("what"))
        out.append(rec)
    return out


def redacted_readers(study: Study) -> list[dict]:
    """The reader list for the export: ids, titles, years and training, without names."""
    ids = set(study.readers())
    return [{**rec, "who": "coordinator"} if rec.get("who") not in ids else rec
            for rec in redacted_audit(study._readers_log.records(), ids)]


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")


def _diffusion_of(study: Study, cid: str):
    """The case's DWI/ADC with the ADC units detected as the candidate does (brain median);
    None when the units fit none (the export then says so)."""
    from .diffusion import load_diffusion
    rec = study.case_info(cid)["images"].get("adc", {}).get("units") or {}
    units = rec["units"] if rec and not rec.get("detected", True) else "auto"   # units stated at 'case init'
    try:
        return load_diffusion(study.image_path(cid, "dwi"), study.image_path(cid, "adc"), adc_units=units)
    except UserError:
        return None


def _write_eadc(case, b: float, dst: Path, adc_rel: str, dwi_rel: str, bsrc: str) -> None:
    import SimpleITK as sitk

    from .diffusion import eadc
    img = eadc(case.adc_mm2s, b)
    tmp = dst.with_name(".tmp_" + dst.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(tmp), True)
    try:
        write_clean_nifti(tmp, dst)
    finally:
        tmp.unlink()
    _write_json(dst.with_name(dst.name.replace(".nii.gz", ".json")), {
        "Description": f"Exponential ADC, exp(-b * ADC), b = {b:g} s/mm^2 ({bsrc}); ADC converted to mm^2/s "
                       f"from {case.units.units} (detected from the brain median {case.units.brain_median_raw:.4g})",
        "Sources": [f"bids:raw:{adc_rel}"],
        "SpatialReference": f"bids:raw:{dwi_rel}",
        "SkullStripped": False,
        "Units": "arbitrary"})


SCANS_COLUMNS = ("filename", "quality_likert", "snr", "cnr", "snr_source", "cnr_source", "quality_note",
                 "quality_reader")


def _number_source(q: dict, k: str) -> str | None:
    """measured | entered | not measurable (older records: from the value and the ROI record)."""
    if q.get(f"{k}_source"):
        return q[f"{k}_source"]
    if q.get(k) is None:
        return None
    return "measured" if q.get("measured") else "entered"


def _tsv(rows: list[dict], cols: list[str]) -> str:
    def cell(v):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else str(v)
    return "\t".join(cols) + "\n" + "".join("\t".join(cell(r.get(c)) for c in cols) + "\n" for r in rows)


def _age_years(age) -> str | None:
    """DICOM age string (060Y, 018M) -> years; > 89 written as 89+ (BIDS recommendation)."""
    if age is None:
        return None
    m = re.match(r"^(\d{1,3})([DWMY])$", str(age).strip())
    if not m:
        return None
    n = int(m.group(1))
    years = {"Y": n, "M": n / 12, "W": n / 52.18, "D": n / 365.25}[m.group(2)]
    return "89+" if years > 89 else (f"{years:.0f}" if m.group(2) == "Y" else f"{years:.2f}")


def _reader_record(study: Study, st, desc: str, rec: dict) -> dict:
    if desc in ("annotatorA", "annotatorB"):
        rid = st.assignments.get(desc)
        r = study.readers().get(rid)
        return {"id": rid, "role": "annotator", "title": r.title if r else None,
                "years": r.years if r else None, "neuro_years": r.neuro_years if r else None}
    return {"id": rec.get("who"), "role": rec.get("decided_by")}


def _raw_description(o: ExportOptions) -> dict:
    d = {"Name": o.name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "Authors": list(o.authors),
         "GeneratedBy": [{"Name": "StrokeLesion BIDS export", "Version": _package_version(),
                          "Description": "Export of a two-reader acute-stroke annotation study"}]}
    if o.license:
        d["License"] = o.license
    if o.ethics_approvals:
        d["EthicsApprovals"] = list(o.ethics_approvals)
    return d


def _derivative_description(o: ExportOptions) -> dict:
    return {
        "Name": f"{o.name} - acute ischaemic lesion masks",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "Authors": list(o.authors),
        "GeneratedBy": [{
            "Name": "StrokeLesion",
            "Version": _package_version(),
            "Description": "Two independent blinded annotators per case, comparison (Dice, lesion-wise matching, "
                           "volume difference), lesion-by-lesion review and arbitration, following the Chinese "
                           "expert consensus on MRI annotation of acute ischaemic stroke (2025)."}],
        "SourceDatasets": [{"URL": "bids:raw"}],
        "DatasetLinks": {"raw": "../../"},
        **({"License": o.license} if o.license else {}),
    }


def check_derivative_description(path: str | os.PathLike) -> list[str]:
    """Checks the BIDS validator does not make on a derivative's dataset_description.json:
    DatasetType 'derivative', a non-empty GeneratedBy list whose entries have a Name, and a
    BIDSVersion. Returns the problems (empty: fine)."""
    p = Path(path)
    if not p.exists():
        return [f"{p} is missing"]
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return [f"{p} is not valid JSON"]
    out = []
    if d.get("DatasetType") != "derivative":
        out.append("DatasetType must be 'derivative'")
    gb = d.get("GeneratedBy")
    if not isinstance(gb, list) or not gb:
        out.append("GeneratedBy must be a non-empty list")
    else:
        for i, g in enumerate(gb):
            if not isinstance(g, dict) or not str(g.get("Name", "")).strip():
                out.append(f"GeneratedBy[{i}] needs a Name")
    if not d.get("BIDSVersion"):
        out.append("BIDSVersion is missing")
    if not d.get("Name"):
        out.append("Name is missing")
    return out


def _readme(o: ExportOptions, study: Study) -> str:
    return (f"# {o.name}\n\n"
            "Acute ischaemic stroke MRI (DWI, ADC and, where acquired, FLAIR/T1w/T2w) with lesion masks drawn "
            "by two independent annotators and an accepted consensus mask (derivatives/lesions).\n\n"
            "## De-identification\n\n"
            f"JSON sidecars were cleaned with the {method_text(o.keep_patient_characteristics)} table (keys that "
            "are DICOM attributes with any action other than 'keep' removed); NIfTI header text fields were "
            "blanked. Subject labels are pseudonyms.\n\n"
            "## Image quality\n\n"
            "Per-series Likert grades (1-5), SNR and CNR are in each session's scans.tsv (see scans.json). "
            "Series graded below 3 were not to be annotated.\n\n"
            "## Units\n\n"
            "The ADC maps are stored as exported by the scanner; their unit is stated in the ADC sidecar's "
            "'Units' field (um^2/ms = 10^-3 mm^2/s).\n\n"
            f"Exported from the stroke-lesion study '{study.meta.get('name', '')}'.\n")


def _derivative_readme(o: ExportOptions) -> str:
    naming = ("BIDS derivative masks: sub-X_ses-Y_space-orig_label-lesion_desc-<annotatorA|annotatorB|consensus>"
              "_mask.nii.gz in dwi/ (binary, on the raw DWI grid).")
    if o.mask_naming == "consensus-document":
        naming += (" The consensus masks are instead named as in the consensus document "
                   "(sub-X_ses-Y_dwi_lesionmask.nii.gz); that name is not valid BIDS.")
    return (f"# {o.name} - lesion masks\n\n{naming}\n\n"
            "Workflow: two independent blinded annotators; automatic comparison (Dice, lesion-wise matching at "
            "26-connectivity, volume difference); cases above the study's disagreement thresholds reviewed lesion "
            "by lesion; disputed cases decided by an arbitrator. Each mask's JSON sidecar records the reader and "
            "the decision; sourcedata/audit holds a redacted copy of each case's audit trail (who, when, what, why; "
            "file names instead of paths, pseudonymous reader ids) and sourcedata/readers.jsonl the readers' "
            "qualifications without their names. The signed originals stay in the study.\n")


# ---------------------------------------------------------------------------------------
# Validator


def require_bids_dataset(dataset: str | os.PathLike) -> Path:
    """The dataset folder, or a UserError: missing, a stroke-lesion study folder (say so and
    how to export it) or any other folder without dataset_description.json."""
    root = Path(dataset)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    if not (root / "dataset_description.json").exists():
        if (root / "study.json").exists():
            raise UserError(f"{root} is a stroke-lesion study folder, not a BIDS dataset; export it first "
                            f"(stroke-lesion export-bids {root} DATASET --name NAME --author NAME --validate)")
        raise UserError(f"{root} is not a BIDS dataset (no dataset_description.json); give the exported folder")
    return root


def validator_executable() -> str | None:
    """Path of ``bids-validator-deno`` (beside the running Python, or on PATH)."""
    cand = Path(sys.executable).with_name("bids-validator-deno")
    if cand.exists():
        return str(cand)
    return shutil.which("bids-validator-deno")


def run_validator(dataset: str | os.PathLike, *, recursive: bool = True, timeout_s: int = 300) -> dict:
    """Run the official BIDS validator; returns {"errors": [...], "warnings": [...], per
    derivative too} or raises UserError when it is not installed or fails to run."""
    require_bids_dataset(dataset)
    exe = validator_executable()
    if exe is None:
        raise UserError("bids-validator-deno is not installed (pip install bids-validator-deno)")
    cmd = [exe, str(dataset), "--format", "json"] + (["--recursive"] if recursive else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                           env={**os.environ, "NO_COLOR": "1"})
    except subprocess.TimeoutExpired:
        raise UserError(f"the BIDS validator did not finish within {timeout_s} s") from None
    try:
        data = json.loads(p.stdout)
    except json.JSONDecodeError:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"the BIDS validator failed (exit {p.returncode}): {tail[0][:200]}") from None

    def split(issues):
        errs = [i for i in issues if i.get("severity") == "error"]
        warns = [i for i in issues if i.get("severity") == "warning"]
        return errs, warns

    errors, warnings = split(data.get("issues", {}).get("issues", []))
    out = {"returncode": p.returncode, "errors": errors, "warnings": warnings, "derivatives": {}}
    for name, d in (data.get("derivativesSummary") or {}).items():
        e, w = split(d.get("issues", {}).get("issues", []))
        out["derivatives"][name] = {"errors": e, "warnings": w}
    out["n_errors"] = len(errors) + sum(len(d["errors"]) for d in out["derivatives"].values())
    out["n_warnings"] = len(warnings) + sum(len(d["warnings"]) for d in out["derivatives"].values())
    return out
