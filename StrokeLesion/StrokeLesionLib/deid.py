"""De-identification of DICOM files and JSON sidecars (DICOM PS3.15 Annex E).

DICOM: the Basic Application Level Confidentiality Profile is applied with
``dicom-anonymizer`` (KitwareMedical, BSD licence), whose action tables (D, Z, X, U and
the combined X/Z, X/D, X/Z/D, X/Z/U* actions of PS3.15 Table E.1-1) are generated from the
standard itself; this module uses the newest table it ships (``dicomfields_2026c``).
Why this library: of the maintained Python options, ``dicognito`` applies its own curated
set of anonymisers (plausible fake names, shifted dates) rather than the standard's table,
and ``deid`` (pydicom/deid) is recipe driven, with the profile left to the user's recipe;
``dicom-anonymizer`` is the one that implements Table E.1-1 as published, per standard
release. Private tags are removed (the profile's default; "Retain Safe Private" is not
offered). Acquisition parameters (TE, TR, b-value, field strength, geometry) have action K
in the table and are kept, as the stroke consensus requires.

After the library ran, the attributes the profile asks to add are set: Patient Identity
Removed (0012,0062) = YES, De-identification Method (0012,0063) and the De-identification
Method Code Sequence (0012,0064) with DCM 113100 "Basic Application Confidentiality
Profile" (and 113108 "Retain Patient Characteristics Option" when asked to keep age, sex,
size and weight). Beyond the table: every element of the overlay (60xx) and curve (50xx)
groups is removed (Overlay Description (6000,0022) and the labels are free text; overlay
planes can hold burned-in text), and the file-meta group is rebuilt from the SOP class and
instance and the transfer syntax only (Source/Sending/Receiving Application Entity Title
name the sending station). Pixels are not cleaned here, so images whose pixels may identify
the patient are refused: Burned In Annotation = YES, and secondary captures (screenshots,
scanned pages) with Recognizable Visual Features = YES or without Burned In Annotation = NO.
A folder is de-identified all or nothing (a hidden staging folder renamed at the end).

JSON sidecars: a key that is a DICOM keyword (pydicom's data dictionary) whose tag has any
action other than K in the same table is removed; keys that are not DICOM keywords (BIDS
fields such as PhaseEncodingDirection, converter fields) are kept and listed in the report
so that a person can review them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, write_json_atomic

from ClinicalMRICommonLib.staging import staged_folder

DEID_TABLE = "dicomfields_2026c"
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_PATIENT_CHARACTERISTICS_CODE = ("113108", "DCM", "Retain Patient Characteristics Option")
#: Patient characteristics of the "Retain Patient Characteristics Option" (PS3.15 Table E.1-1 column).
PATIENT_CHARACTERISTICS = ("PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup",
                           "SmokingStatus", "PregnancyStatus", "PatientSexNeutered")


def _libs():
    try:
        import pydicom
        from dicomanonymizer import simpledicomanonymizer as sda
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    except ImportError:
        raise UserError("DICOM de-identification needs the packages pydicom and dicom-anonymizer "
                        "(pip install dicom-anonymizer)") from None
    return pydicom, sda, dicom_anonymization_database_selector


def profile_actions(table: str = DEID_TABLE) -> dict[int, str]:
    """{tag (int): action group} of the Basic Profile table (single tags only; the few
    repeating-group patterns, e.g. overlays and curves, are handled by the library)."""
    _, _, selector = _libs()
    db = selector(table)
    out: dict[int, str] = {}
    for group, tags in db.items():
        if group == "ALL_TAGS":
            continue
        for t in tags:
            if len(t) == 2:
                out[(t[0] << 16) | t[1]] = group
    return out


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("dicom-anonymizer")
    except Exception:  # noqa: BLE001
        return "unknown"


def method_text(keep_patient_characteristics: bool = False) -> str:
    text = (f"DICOM PS3.15 Basic Application Level Confidentiality Profile (dicom-anonymizer {_version()}, "
            f"table {DEID_TABLE.split('_')[-1]})")
    if keep_patient_characteristics:
        text += " with Retain Patient Characteristics Option"
    return text


#: SOP classes of secondary captures (screenshots, scanned documents, burned-in reports).
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
#: File-meta elements kept (every other one, e.g. Source/Sending/Receiving Application Entity
#: Title (0002,0016/0017/0018) naming the sending station, and private information, is removed).
FILE_META_KEPT = ("MediaStorageSOPClassUID", "TransferSyntaxUID")


def _flag(ds, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def check_pixels_clean(ds, source: str) -> None:
    """Refuse images whose pixels may show who the patient is (this tool does not clean
    pixels): Burned In Annotation = YES; and a secondary capture (a screenshot or scanned
    page) unless it states Burned In Annotation = NO, or with Recognizable Visual Features =
    YES."""
    burned, rvf = _flag(ds, "BurnedInAnnotation"), _flag(ds, "RecognizableVisualFeatures")
    if burned == "YES":
        raise UserError(f"{source} is flagged Burned In Annotation = YES: identifying text may be in the pixels, "
                        "which this tool does not clean; remove the series or clean its pixels first")
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
        if rvf == "YES":
            raise UserError(f"{source} is a secondary capture flagged Recognizable Visual Features = YES: the pixels "
                            "may show the patient (a photograph or screenshot), which this tool does not clean; "
                            "remove it or clean its pixels first")
        if burned != "NO":
            raise UserError(f"{source} is a secondary capture (a screenshot or scanned page) without Burned In "
                            "Annotation = NO: identifying text may be in the pixels, which this tool does not clean; "
                            "remove it, or check its pixels and set the flag")


def _remove_overlays_and_curves(ds) -> list[str]:
    """Delete every element of the repeating overlay (60xx) and curve (50xx) groups: their
    descriptions, labels and comments are free text (Overlay Description (6000,0022)) and
    overlay planes can hold burned-in text. Returns the groups removed."""
    groups = sorted({el.tag.group for el in ds if 0x5000 <= el.tag.group <= 0x501E or
                     0x6000 <= el.tag.group <= 0x601E})
    for tag in [el.tag for el in ds if el.tag.group in groups]:
        del ds[tag]
    return [f"{g:04X}" for g in groups]


def _clean_file_meta(ds) -> list[str]:
    """Rebuild the file-meta group from what identifies the object's type and encoding only."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    for kw in FILE_META_KEPT:
        if kw in old:
            setattr(meta, kw, getattr(old, kw))
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    removed = [el.keyword or str(el.tag) for el in old if el.keyword not in FILE_META_KEPT + (
        "MediaStorageSOPInstanceUID", "ImplementationClassUID", "ImplementationVersionName",
        "FileMetaInformationGroupLength", "FileMetaInformationVersion")]
    ds.file_meta = meta
    return removed


def deidentify_dataset(ds, *, keep_patient_characteristics: bool = False, source: str = "dataset") -> dict:
    """De-identify a pydicom Dataset in place. Returns a small report."""
    pydicom, sda, _ = _libs()
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    check_pixels_clean(ds, source)
    before = {k: str(ds.get(k, "")) for k in ("PatientName", "PatientID", "StudyInstanceUID")}
    extra = {}
    if keep_patient_characteristics:
        for kw in PATIENT_CHARACTERISTICS:
            t = tag_for_keyword(kw)
            if t is not None:
                extra[((t >> 16) & 0xFFFF, t & 0xFFFF)] = sda.keep
    sda.anonymize_dataset(ds, extra_anonymization_rules=extra or None, delete_private_tags=True,
                          base_rules_gen=lambda: sda.initialize_actions(DEID_TABLE))
    overlays = _remove_overlays_and_curves(ds)
    meta_removed = _clean_file_meta(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = method_text(keep_patient_characteristics)[:64]
    codes = [BASIC_PROFILE_CODE] + ([RETAIN_PATIENT_CHARACTERISTICS_CODE] if keep_patient_characteristics else [])
    seq = []
    for value, scheme, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        seq.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(seq)
    return {"source": source, "patient_name_changed": before["PatientName"] != str(ds.get("PatientName", "")),
            "uids_replaced": before["StudyInstanceUID"] != str(ds.get("StudyInstanceUID", "")),
            "overlay_curve_groups_removed": overlays, "file_meta_removed": meta_removed,
            "recognizable_visual_features": _flag(ds, "RecognizableVisualFeatures") or None,
            "method": method_text(keep_patient_characteristics)}


def _read_dicom(src: Path):
    pydicom, _, _ = _libs()
    try:
        return pydicom.dcmread(str(src))
    except Exception as exc:  # noqa: BLE001 - pydicom raises several types for bad files
        raise UserError(f"{src} could not be read as DICOM ({exc.__class__.__name__}); is it a DICOM file?") from None


def _write_dicom(ds, dst: Path, *, exclusive: bool) -> None:
    """Save through the one verified atomic writer (read back as DICOM before publishing)."""
    pydicom, _, _ = _libs()

    def verify(tmp: Path):
        try:
            pydicom.dcmread(str(tmp), stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            raise UserError(f"could not write {dst}: what was written does not read back as DICOM (disk full?); "
                            "nothing was saved") from None

    with atomic_path(dst, what="de-identified DICOM", verify=verify, exclusive=exclusive) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)


def deidentify_file(src: str | os.PathLike, dst: str | os.PathLike, *, keep_patient_characteristics: bool = False,
                    overwrite: bool = False) -> dict:
    """De-identify one DICOM file into ``dst`` (never over an existing file unless ``overwrite``)."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"DICOM file not found: {src}")
    if dst.exists() and not overwrite:
        raise UserError(f"output {dst} already exists; choose another folder (inputs and earlier outputs are "
                        "never overwritten)")
    if dst.resolve() == src.resolve():
        raise UserError(f"output {dst} is the input file; write the de-identified copy elsewhere")
    ds = _read_dicom(src)
    rep = deidentify_dataset(ds, keep_patient_characteristics=keep_patient_characteristics, source=str(src))
    _write_dicom(ds, dst, exclusive=not overwrite)
    rep["output"] = str(dst)
    return rep


def deidentify_folder(src: str | os.PathLike, dst: str | os.PathLike, *,
                      keep_patient_characteristics: bool = False, overwrite: bool = False) -> dict:
    """De-identify every DICOM file under ``src`` into the new folder ``dst`` (same relative
    paths). Files that are not DICOM are skipped and listed. UIDs are replaced consistently
    across the whole run (same input UID -> same new UID).

    All or nothing: the files are written into a hidden folder beside ``dst`` that is renamed
    onto ``dst`` only when every file was de-identified; a refused file (burned-in text, a
    secondary capture, unreadable DICOM) or a full disk leaves no output folder (and an
    earlier output replaced with ``overwrite`` intact)."""
    pydicom, _, _ = _libs()
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"input folder not found: {src}")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"output {dst} is a file; give a new folder")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise UserError(f"output folder {dst} is not empty; choose a new folder or pass --overwrite to replace "
                        "the files in it")
    if dst.resolve().is_relative_to(src.resolve()):
        raise UserError("the output folder must not be inside the input folder")
    files = []
    skipped = []
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        try:
            pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            skipped.append(str(p.relative_to(src)))
            continue
        files.append(p)
    if not files:
        raise UserError(f"no DICOM file found under {src}")
    with staged_folder(dst, "output folder") as stage:
        done = [deidentify_file(p, stage / p.relative_to(src),
                                keep_patient_characteristics=keep_patient_characteristics) for p in files]
    return {"n_files": len(done), "skipped_not_dicom": skipped, "method": done[0]["method"], "output": str(dst),
            "overlay_curve_groups_removed": sorted({g for r in done for g in r["overlay_curve_groups_removed"]}),
            "file_meta_removed": sorted({k for r in done for k in r["file_meta_removed"]})}


# ---------------------------------------------------------------------------------------
# JSON sidecars


def clean_sidecar(meta: dict, *, keep_patient_characteristics: bool = False) -> tuple[dict, dict]:
    """Remove identifying fields from a JSON sidecar (a dict). Returns (clean copy, report):
    report["removed"] lists removed keys, report["kept_non_dicom"] keys that are not DICOM
    keywords (kept; review them)."""
    from pydicom.datadict import tag_for_keyword
    actions = profile_actions()
    keep = set(PATIENT_CHARACTERISTICS) if keep_patient_characteristics else set()
    out, removed, unknown = {}, [], []
    for k, v in meta.items():
        tag = tag_for_keyword(k)
        if tag is not None and tag in actions and k not in keep:
            removed.append(k)
            continue
        if tag is None:
            unknown.append(k)
        out[k] = v
    return out, {"removed": removed, "kept_non_dicom": unknown}


def clean_sidecar_file(src: str | os.PathLike, dst: str | os.PathLike, *, keep_patient_characteristics: bool = False,
                       overwrite: bool = False) -> dict:
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"JSON sidecar not found: {src}")
    if dst.exists() and not overwrite:
        raise UserError(f"output {dst} already exists; choose another name")
    try:
        meta = json.loads(src.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{src} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise UserError(f"{src} is not a JSON object")
    clean, rep = clean_sidecar(meta, keep_patient_characteristics=keep_patient_characteristics)
    write_json_atomic(dst, clean)
    rep["output"] = str(dst)
    return rep
