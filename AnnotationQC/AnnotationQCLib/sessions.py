"""Reader studies: who drew what, when, in which session, with blinding and without ever
overwriting another reader's or an earlier session's work.

Folder layout (everything a study needs lives in one folder)::

    <study>/
      study.json          name, readers (id, role), cases (patient id, source image per sequence)
      labels.json         case labels (e.g. HRMM / SRMM): never shown in a reader's view
      reads.jsonl         append-only log: one JSON object per event (start, save)
      readers/<reader id>/<session>/<patient id>_<sequence>_<content>.nii.gz

Masks are binary NIfTI on the grid of the source image they were drawn on (one-to-one: the
grid is checked when saving), named ``<patient id>_<sequence>_<content>`` as in the
annotation consensus (e.g. ``P001_T2_ROI.nii.gz``); ids, sequences and contents therefore may
not contain ``_``. Sessions are free names (``first`` and ``repeat`` by default).

Never overwriting:
* each reader writes only below ``readers/<own id>/<session>/``, so another reader's work
  and an earlier session's work are different files by construction;
* a mask saved as final (``final=True``, "submitted") is locked: saving it again is refused,
  start a new session instead;
* a draft (not final) of the same reader and session may be replaced; every save is
  logged with its SHA-256 and a file that exists without a record of this study is never
  touched.

Blinding: :meth:`ReaderStudy.case_list` and :meth:`ReaderStudy.visible_masks` give a reader
only the case ids, patient ids, sequences and their own masks and status. Annotators never see
another reader's masks; reviewers and arbitrators see the annotators' submitted masks of a
case (their task is to compare them). Labels are only returned by :meth:`ReaderStudy.labels`,
which is for the analysis after reading, not for a reader's view.

Assignments and repeat reads: :meth:`ReaderStudy.assign` gives a reader a work list for one
session in an order of its own (shuffled per reader and session unless the coordinator gives
the order), so a repeat read does not follow the order of the first read. A reader with an
assignment sees and may read only the assigned cases of that session. A study created with a
``washout_days`` interval (the HRMM method: the senior reader redraws "after one month")
refuses a repeat read (any session other than ``first``) of a case until that many days after
the reader submitted the first read, and a repeat-session view (``visible_masks(...,
session="repeat")``) never shows the reader's first read.

Locking and audit (:mod:`AnnotationQCLib.audit`, i.e. the extension's one tamper-evident log
:mod:`ClinicalMRICommonLib.audit`): every change happens under an exclusive lock of the study
folder (check, write, log), so two final saves of the same mask cannot both succeed.
``reads.jsonl`` (every registration, assignment, start and save) and ``quality.jsonl`` are
hash-chained logs signed with the site key kept outside the folder, each with a signed head
file (``<log>.head``) so that removed records show; every record carries the operating-system
user and host next to the reader id. ``study.json`` (readers, cases, image SHA-256) and
``labels.json`` are signed documents, and their readers and cases are cross-checked against
their registrations in the log (a reader edited from annotator to arbitrator is noticed).
Opening a study checks all of this and refuses, in one line, when anything was altered;
:meth:`ReaderStudy.verify` (``annotation-qc study verify``) lists everything, including every
saved mask's and source image's SHA-256, which are also checked before a file is used.
Studies made before signing (``"audit": "sha256-chain"`` or none) are read, reported as
unsigned, and signed from their next change on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, clean_stale_temps, sha256_file, verify_image_file
from ClinicalMRICommonLib.grids import grid_difference, same_grid
from ClinicalMRICommonLib.images import read_grid, read_image
from ClinicalMRICommonLib.locks import folder_lock
from ClinicalMRICommonLib.masks import binary_mask

from .audit import AUDIT_SIGNED, AuditLog, FolderReport, check_document, inside, write_signed_json

if TYPE_CHECKING:  # pandas only inside functions (the Slicer start-up rule)
    import pandas as pd

FORMAT = "annotationqc-study/1"
LABELS_FORMAT = "annotationqc-labels/1"
AUDIT_CHAIN = "sha256-chain"  # studies made before signing (hash chain only)
ROLES = ("annotator", "reviewer", "arbitrator")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
MASK_SUFFIX = ".nii.gz"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")


def _parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s)


MAX_NAME = 64


def check_name(value: str, what: str, becomes: str | None = None) -> str:
    """The one id rule of AnnotationQC: reader, trainee, case, patient ids, sequences,
    contents and sessions are letters, digits and '-' (no '_', the separator of mask names;
    no '/', '.' or spaces), at most 64 characters. The error says what the value becomes
    (``becomes``; by default part of the mask file name) and a valid spelling."""
    v = str(value)
    if not NAME_RE.match(v) or len(v) > MAX_NAME:
        fixed = (re.sub(r"[^A-Za-z0-9-]+", "-", v).strip("-") or "X")[:MAX_NAME]
        role = becomes or "part of the file name <patient id>_<sequence>_<content>.nii.gz"
        shown = repr(v) if len(v) <= 80 else f"{v[:40]!r}... ({len(v)} characters)"
        raise UserError(f"{what} {shown} may only contain letters, digits and '-' (at most {MAX_NAME} characters): "
                        f"it becomes {role}; rename it, e.g. {fixed!r}")
    return v


def image_digest(path: Path) -> str:
    """SHA-256 of an image file, or of a DICOM series folder (each file's name and SHA-256,
    in name order)."""
    import hashlib

    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
        return h.hexdigest()
    return sha256_file(path)


def mask_name(patient_id: str, sequence: str, content: str) -> str:
    """``<patient id>_<sequence>_<content>.nii.gz`` (validated)."""
    return (f"{check_name(patient_id, 'patient id')}_{check_name(sequence, 'sequence')}_"
            f"{check_name(content, 'content')}{MASK_SUFFIX}")


def parse_mask_name(name: str) -> tuple[str, str, str]:
    """Inverse of :func:`mask_name`: (patient id, sequence, content)."""
    base = Path(name).name
    if not base.endswith(MASK_SUFFIX):
        raise UserError(f"mask file {name} is not named <patient id>_<sequence>_<content>{MASK_SUFFIX}")
    parts = base[: -len(MASK_SUFFIX)].split("_")
    if len(parts) != 3 or not all(NAME_RE.match(p) for p in parts):
        raise UserError(f"mask file {name} is not named <patient id>_<sequence>_<content>{MASK_SUFFIX}")
    return parts[0], parts[1], parts[2]


# ---------------------------------------------------------------------------------------
# Files of a study or training session (also used by training.py and quality.py)


def read_json_document(path: Path, fmt: str | tuple[str, ...], missing: str) -> dict:
    """A folder's JSON description (study.json, session.json) of format ``fmt`` (or one of
    several); UserError ``missing`` when the file is absent, and one naming the file when it is
    not valid JSON or has another format."""
    if not path.exists():
        raise UserError(missing)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    formats = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if not isinstance(doc, dict) or doc.get("format") not in formats:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise UserError(f"{path} has format {got!r}; expected {' or '.join(repr(f) for f in formats)}")
    return doc


class ReaderStudy:
    """A reader-study folder. Create with :meth:`create`, open with :meth:`open` (which checks
    the folder first: see the module docstring; ``verify=False`` skips that, for
    :meth:`verify` itself). ``key_path``: the site key (default: ``$CLINICALMRI_SITE_KEY_FILE``
    or ``~/.config/clinicalmri/site.key``)."""

    def __init__(self, folder: str | os.PathLike, clock: Callable[[], datetime] = _now, *, verify: bool = True,
                 key_path: str | os.PathLike | None = None):
        self.folder = Path(folder)
        self.clock = clock
        self.key_path = key_path
        self.meta = self._read_meta()
        signed = self.meta.get("audit") == AUDIT_SIGNED
        self._log = AuditLog(self.folder / "reads.jsonl", "reading log", key_path=key_path, required=signed)
        self._quality = AuditLog(self.folder / "quality.jsonl", "quality log", key_path=key_path, required=signed)
        if verify:
            report = self.verify(files=False)
            report.raise_if_altered()
            report.warn_notices()

    def _read_meta(self) -> dict:
        return read_json_document(self.folder / "study.json", FORMAT,
                                  f"{self.folder} is not a reader study (no study.json); create one first")

    def _locked_meta(self) -> dict:
        """study.json read again under the lock, its signature checked (another process may
        have changed it since this object was opened)."""
        meta = self._read_meta()
        problems, _ = check_document(meta, "study.json", required=self._signed(), key_path=self.key_path)
        if problems:
            raise UserError(f"reader study {self.folder} was altered: {problems[0]}; nothing was done")
        self.meta = meta
        return meta

    def _signed(self) -> bool:
        return self.meta.get("audit") == AUDIT_SIGNED or self._log.is_signed() or self._quality.is_signed()

    # ---- creation and set-up ---------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, name: str, clock: Callable[[], datetime] = _now,
               washout_days: float = 0, *, key_path: str | os.PathLike | None = None) -> ReaderStudy:
        """A new study folder. ``washout_days`` > 0: a repeat read of a case may start only
        that many days after the reader submitted the first read. The logs start empty and
        signed; study.json is written last (a folder without it is not a study)."""
        folder = Path(folder)
        if (folder / "study.json").exists():
            raise UserError(f"{folder} already holds a reader study; open it instead of creating it again")
        if not (isinstance(washout_days, (int, float)) and 0 <= washout_days <= 3650):
            raise UserError(f"washout must be 0-3650 days, got {washout_days!r}")
        left = [n for n in ("reads.jsonl", "reads.jsonl.head", "quality.jsonl", "quality.jsonl.head", "labels.json")
                if (folder / n).exists()]
        if left:
            raise UserError(f"{folder} holds parts of a reader study ({', '.join(left)}) but no study.json (an "
                            "interrupted creation?); choose an empty folder or remove them")
        folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder):
            write_signed_json(folder / "labels.json", {"format": LABELS_FORMAT, "labels": {}},
                              what="study labels", key_path=key_path)
            AuditLog(folder / "reads.jsonl", "reading log", key_path=key_path).create()
            AuditLog(folder / "quality.jsonl", "quality log", key_path=key_path).create()
            write_signed_json(folder / "study.json", {"format": FORMAT, "name": str(name), "created": _iso(clock()),
                                                      "audit": AUDIT_SIGNED, "washout_days": washout_days,
                                                      "readers": {}, "cases": {}},
                              what="study description", key_path=key_path)
        return cls(folder, clock, key_path=key_path)

    @classmethod
    def open(cls, folder: str | os.PathLike, clock: Callable[[], datetime] = _now, *, verify: bool = True,
             key_path: str | os.PathLike | None = None) -> ReaderStudy:
        return cls(folder, clock, verify=verify, key_path=key_path)

    def _save_meta(self) -> None:
        """Write study.json signed (call under the lock)."""
        self.meta = write_signed_json(self.folder / "study.json", self.meta, what="study description",
                                      key_path=self.key_path)

    def _upgrade_documents(self) -> None:
        """A study made before signing: sign study.json and labels.json as found, before its
        first signed record (call under the lock)."""
        if "signature" not in self.meta:
            self._save_meta()
        raw = self._labels_document()
        if raw is not None and "signature" not in raw:
            write_signed_json(self.folder / "labels.json", {"format": LABELS_FORMAT, "labels": self._labels()},
                              what="study labels", key_path=self.key_path)

    def add_reader(self, reader_id: str, role: str = "annotator", *, by: str | None = None) -> None:
        check_name(reader_id, "reader id", becomes="the folder readers/<id>/ of the study")
        if by is not None:
            check_name(by, "--by id", becomes="the name of who registered the reader in the reading log")
        if role not in ROLES:
            raise UserError(f"role {role!r} unknown; use one of {', '.join(ROLES)}")
        with folder_lock(self.folder):
            readers = self._locked_meta()["readers"]
            if reader_id in readers and readers[reader_id]["role"] != role:
                raise UserError(f"reader {reader_id!r} is already registered as {readers[reader_id]['role']}")
            if reader_id in readers:
                return
            # the log first (the registration), then study.json: an interrupted command leaves a
            # registration study.json lacks (reported, repaired by registering again), never a reader
            # in study.json the log does not know
            self._append({"event": "reader", "reader_id": reader_id, "role": role, "by": by or reader_id,
                          "time": _iso(self.clock())})
            self.meta["readers"][reader_id] = {"role": role, "added": _iso(self.clock())}  # (re-read by _append)
            self._save_meta()

    def add_case(self, case_id: str, patient_id: str, images: dict[str, str | os.PathLike],
                 label=None) -> None:
        """Register a case: its patient id, the source image per sequence (paths relative to
        the study folder or absolute; their SHA-256 is recorded and checked before every use)
        and optionally its label (kept in labels.json)."""
        check_name(case_id, "case id")
        check_name(patient_id, "patient id")
        if not images:
            raise UserError(f"case {case_id!r} needs at least one source image")
        stored, digests = {}, {}
        for seq, p in images.items():
            check_name(seq, "sequence")
            path = Path(p)
            full = path if path.is_absolute() else self.folder / path
            if not full.exists():
                raise UserError(f"source image of case {case_id!r}, sequence {seq!r} not found: {full}")
            try:
                stored[seq] = full.resolve().relative_to(self.folder.resolve()).as_posix()
            except ValueError:
                stored[seq] = str(full.resolve())
            digests[seq] = image_digest(full)
        with folder_lock(self.folder):
            meta = self._locked_meta()
            if case_id in meta["cases"]:
                raise UserError(f"case {case_id!r} is already in the study")
            entry = {"patient_id": patient_id, "images": stored, "image_sha256": digests}
            self._append({"event": "case", "case_id": case_id, **entry, "time": _iso(self.clock())})
            self.meta["cases"][case_id] = entry  # self.meta, not meta: _append may have re-signed it
            self._save_meta()
            if label is not None:
                labels = self._labels()
                labels[case_id] = label
                write_signed_json(self.folder / "labels.json", {"format": LABELS_FORMAT, "labels": labels},
                                  what="study labels", key_path=self.key_path)

    # ---- look-ups ----------------------------------------------------------------------

    def _labels_document(self) -> dict | None:
        p = self.folder / "labels.json"
        if not p.exists():
            return None
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{p} is not valid JSON; the study's labels are damaged") from None
        if not isinstance(doc, dict):
            raise UserError(f"{p} is not a JSON object; the study's labels are damaged")
        return doc

    def _labels(self) -> dict:
        doc = self._labels_document() or {}
        if doc.get("format") == LABELS_FORMAT:
            return dict(doc.get("labels") or {})
        return {k: v for k, v in doc.items() if k != "signature"}  # a study made before signing

    def labels(self) -> dict:
        """Case labels, for the analysis after reading (never part of a reader's view)."""
        return dict(self._labels())

    def role(self, reader_id: str) -> str:
        try:
            return self.meta["readers"][reader_id]["role"]
        except KeyError:
            known = ", ".join(sorted(self.meta["readers"])) or "none yet"
            raise UserError(f"reader {str(reader_id)[:80]!r} is not registered in study {self.meta['name']!r} "
                            f"(readers: {known}); ask the study owner to add you") from None

    def _case(self, case_id: str) -> dict:
        try:
            return self.meta["cases"][case_id]
        except KeyError:
            raise UserError(f"case {str(case_id)[:80]!r} is not in study {self.meta['name']!r}") from None

    def source_image(self, case_id: str, sequence: str, *, check: bool = False) -> Path:
        """The case's source image of ``sequence``; ``check``: its SHA-256 recorded when the
        case was registered is verified first (UserError when the image was replaced)."""
        case = self._case(case_id)
        if sequence not in case["images"]:
            raise UserError(f"case {case_id!r} has no {str(sequence)[:80]!r} image (has: {', '.join(case['images'])})")
        p = Path(case["images"][sequence])
        full = p if p.is_absolute() else inside(self.folder, case["images"][sequence],
                                                f"source image of case {case_id!r} {sequence}")
        want = (case.get("image_sha256") or {}).get(sequence)
        if check and want:
            if not full.exists():
                raise UserError(f"source image of case {case_id!r} {sequence} is missing: {full}; restore it")
            if image_digest(full) != want:
                raise UserError(f"source image of case {case_id!r} {sequence} ({full}) was replaced or changed after "
                                "the case was registered (its SHA-256 differs); restore the original image")
        return full

    def mask_path(self, reader_id: str, case_id: str, sequence: str, content: str,
                  session: str = "first") -> Path:
        check_name(session, "session")
        case = self._case(case_id)
        return self.folder / "readers" / check_name(reader_id, "reader id") / session / \
            mask_name(case["patient_id"], sequence, content)

    def events(self) -> list[dict]:
        """The reading log's records (verified: UserError when it was altered)."""
        return self._log.records()

    def _append(self, event: dict) -> dict:
        """Append to the reading log (the caller holds the folder lock)."""
        self._upgrade_documents()
        return self._log.append(event)

    def append_quality(self, record: dict) -> dict:
        """Append an image-quality record to ``quality.jsonl`` (under the study's lock)."""
        with folder_lock(self.folder):
            self._locked_meta()
            self._upgrade_documents()
            return self._quality.append(record)

    def _checked_mask(self, rel: str, sha: str | None, what: str) -> Path:
        """A saved mask (relative path of a save record) inside readers/, its SHA-256 checked."""
        if not str(rel).startswith("readers/"):
            raise UserError(f"{what} {rel!r} is not inside the study's readers/ folder: the record was edited")
        p = inside(self.folder, rel, what)
        if not p.exists():
            raise UserError(f"{what} {p} is missing; restore it from a backup")
        if sha and sha256_file(p) != sha:
            raise UserError(f"{what} {p} was changed after it was saved (its SHA-256 differs from the reading log); "
                            "restore it from a backup")
        return p

    # ---- integrity --------------------------------------------------------------------------

    def verify(self, files: bool = True) -> FolderReport:
        """Everything wrong with the study, in one report: the reading and quality logs
        (edited, removed, reordered, unsigned records; the head), study.json and labels.json
        (signatures), study.json's readers and cases against their registrations in the log,
        mask paths outside the reader's folder, and with ``files`` every saved mask's and
        source image's SHA-256."""
        rep = FolderReport(self.folder, "reader study", f"annotation-qc study verify --study {self.folder}")
        vr, vq = self._log.verify(), self._quality.verify()
        rep.add_log(vr)
        rep.add_log(vq)
        signed = self.meta.get("audit") == AUDIT_SIGNED or vr.signed or vq.signed
        strict = self.meta.get("audit") == AUDIT_SIGNED
        rep.add_document(check_document(self.meta, "study.json", required=signed, key_path=self.key_path))
        try:
            labels = self._labels_document()
        except UserError as exc:
            rep.problems.append(str(exc))
            labels = {"signature": None}
        if labels is None:
            if strict:
                rep.problems.append("labels.json is missing (it was deleted); restore it")
        else:
            rep.add_document(check_document(labels, "labels.json", required=signed, key_path=self.key_path))
        shaped = self._cross_check(rep, vr.records, strict)
        if files and shaped:
            self._check_files(rep, vr.records)
        return rep

    def _cross_check(self, rep: FolderReport, events: list[dict], strict: bool) -> bool:
        """Adds the cross-check problems; False when study.json is not even shaped like a study."""
        meta_readers = self.meta.get("readers") or {}
        meta_cases = self.meta.get("cases") or {}
        if not isinstance(meta_readers, dict) or not isinstance(meta_cases, dict) or \
                not all(isinstance(c, dict) and isinstance(c.get("images"), dict) for c in meta_cases.values()):
            rep.problems.append("study.json's readers or cases are not shaped as this version writes them: it was "
                                "edited")
            return False
        logged_readers, logged_cases = {}, {}
        for i, e in enumerate(events, start=1):
            kind = e.get("event")
            if kind == "reader":
                logged_readers[e.get("reader_id")] = e.get("role")
            elif kind == "case":
                logged_cases[e.get("case_id")] = {k: e.get(k) for k in ("patient_id", "images", "image_sha256")}
            elif kind == "save":
                try:
                    want = (Path("readers") / check_name(e["reader_id"], "reader id") / check_name(e["session"], "session")
                            / mask_name(e["patient_id"], e["sequence"], e["content"])).as_posix()
                except (KeyError, UserError):
                    rep.problems.append(f"reads.jsonl record {i} is a save without a valid reader, session, patient, "
                                        "sequence or content: it was edited")
                    continue
                if e.get("mask") != want:
                    rep.problems.append(f"reads.jsonl record {i} points at {e.get('mask')!r}, not at the reader's own "
                                        f"file {want}: it was edited")
        for rid, info in meta_readers.items():
            role = info.get("role") if isinstance(info, dict) else None
            if rid in logged_readers:
                if logged_readers[rid] != role:
                    rep.problems.append(f"reader {rid!r} is {role!r} in study.json but was registered as "
                                        f"{logged_readers[rid]!r} (reads.jsonl): study.json was edited")
            elif strict:
                rep.problems.append(f"reader {rid!r} ({role}) in study.json was never registered in reads.jsonl: "
                                    "study.json was edited")
        for rid, role in logged_readers.items():
            if rid not in meta_readers:
                rep.notices.append(f"reader {rid!r} ({role}) is registered in reads.jsonl but missing from study.json "
                                   "(an interrupted command); register the reader again")
        for cid, case in meta_cases.items():
            if not isinstance(case, dict):
                rep.problems.append(f"case {cid!r} in study.json is not a JSON object: it was edited")
                continue
            mine = {k: case.get(k) for k in ("patient_id", "images", "image_sha256")}
            if cid in logged_cases:
                if logged_cases[cid] != mine:
                    diff = [k for k in mine if mine[k] != logged_cases[cid].get(k)]
                    rep.problems.append(f"case {cid!r} in study.json differs from its registration in reads.jsonl "
                                        f"({', '.join(diff)}): study.json was edited")
            elif strict:
                rep.problems.append(f"case {cid!r} in study.json was never registered in reads.jsonl: study.json "
                                    "was edited")
            for seq, rel in (case.get("images") or {}).items():
                if not Path(str(rel)).is_absolute():
                    try:
                        inside(self.folder, rel, f"source image of case {cid!r} {seq}")
                    except UserError as exc:
                        rep.problems.append(str(exc))
        for cid in logged_cases:
            if cid not in meta_cases:
                rep.notices.append(f"case {cid!r} is registered in reads.jsonl but missing from study.json (an "
                                   "interrupted command); add it again")
        return True

    def _check_files(self, rep: FolderReport, events: list[dict]) -> None:
        latest: dict[str, dict] = {}
        for e in events:
            if e.get("event") == "save" and isinstance(e.get("mask"), str):
                latest[e["mask"]] = e
        for rel, e in sorted(latest.items()):
            try:
                self._checked_mask(rel, e.get("sha256"), f"{'submitted' if e.get('final') else 'draft'} mask of "
                                   f"{e.get('reader_id')!r}")
            except UserError as exc:
                rep.problems.append(str(exc))
        for cid, case in (self.meta.get("cases") or {}).items():
            for seq in (case.get("images") or {}):
                try:
                    self.source_image(cid, seq, check=True)
                except UserError as exc:
                    rep.problems.append(str(exc))

    # ---- assignments, washout ----------------------------------------------------------

    def assign(self, reader_id: str, case_ids: list[str], session: str = "first", *, by: str = "",
               order: str = "shuffled", seed: int | None = None) -> list[str]:
        """Give a reader a work list for a session. ``order``: "shuffled" (default; a random
        order of its own per reader and session, from ``seed`` or one derived from the study,
        reader and session names) or "given". Cases already assigned stay (and keep their
        place). Returns the reader's whole work list for the session."""
        import hashlib
        import random

        self.role(reader_id)
        check_name(session, "session")
        if by:
            check_name(by, "--by id", becomes="the name of who assigned the cases in the reading log")
        if not case_ids:
            raise UserError("give at least one case to assign")
        for c in case_ids:
            self._case(c)
        if len(set(case_ids)) != len(case_ids):
            raise UserError("a case is given twice in the assignment")
        if order not in ("shuffled", "given"):
            raise UserError(f"order must be 'shuffled' or 'given', got {order!r}")
        with folder_lock(self.folder):
            current = self.assigned_cases(reader_id, session) or []
            new = [c for c in case_ids if c not in current]
            if order == "shuffled":
                if seed is None:
                    key = f"{self.meta['name']}|{reader_id}|{session}|{len(current)}".encode()
                    seed = int(hashlib.sha256(key).hexdigest()[:8], 16)
                random.Random(seed).shuffle(new)
            self._append({"event": "assign", "reader_id": reader_id, "session": session, "cases": new,
                          "order": order, "by": by or "coordinator", "time": _iso(self.clock())})
        return current + new

    def assigned_cases(self, reader_id: str, session: str = "first") -> list[str] | None:
        """The reader's work list for a session in its order, or None when the reader has no
        assignment for it (then every case is offered, as in studies without assignments)."""
        out: list[str] | None = None
        for e in self.events():
            if e.get("event") == "assign" and e["reader_id"] == reader_id and e["session"] == session:
                out = (out or []) + [c for c in e["cases"] if c not in (out or [])]
        return out

    def _check_may_read(self, reader_id: str, case_id: str, sequence: str, session: str) -> None:
        assigned = self.assigned_cases(reader_id, session)
        if assigned is not None and case_id not in assigned:
            raise UserError(f"case {case_id!r} is not on {reader_id!r}'s work list for session {session!r}; "
                            "ask the study coordinator to assign it")
        washout = float(self.meta.get("washout_days") or 0)
        if session == "first" or washout <= 0:
            return
        firsts = [e for e in self.events() if e.get("event") == "save" and e["reader_id"] == reader_id
                  and e["session"] == "first" and e["case_id"] == case_id and e["sequence"] == sequence
                  and e.get("final")]
        if not firsts:
            raise UserError(f"repeat read of case {case_id!r} {sequence} by {reader_id!r}: the first read is not "
                            "submitted yet; submit it first (the repeat read is compared with it)")
        first = _parse_time(firsts[0]["time"])
        ready = first + timedelta(days=washout)
        if self.clock() < ready:
            raise UserError(f"repeat read of case {case_id!r} {sequence} by {reader_id!r} is blinded by a washout of "
                            f"{washout:g} days: the first read was submitted on {_iso(first)}; the repeat read can "
                            f"start on {_iso(ready)}")

    # ---- reading -------------------------------------------------------------------------

    def start_reading(self, reader_id: str, case_id: str, sequence: str, session: str = "first") -> dict:
        """Record that a reader opened a case (the start of the time spent)."""
        role = self.role(reader_id)
        self.source_image(case_id, sequence)
        check_name(session, "session")
        if case_id in self.excluded_cases(sequence):
            raise UserError(f"case {case_id!r} {sequence} is flagged for insufficient image quality and is not "
                            "offered for annotation")
        self._check_may_read(reader_id, case_id, sequence, session)
        ev = {"event": "start", "reader_id": reader_id, "role": role, "session": session, "case_id": case_id,
              "sequence": sequence, "time": _iso(self.clock())}
        with folder_lock(self.folder):
            return self._append(ev)

    def save_mask(self, reader_id: str, case_id: str, sequence: str, content: str, mask: sitk.Image,
                  session: str = "first", final: bool = False, notes: str = "",
                  seconds_spent: float | None = None, mask_name: str = "mask") -> Path:
        """Save a reader's mask for one case/sequence/content in a session (``mask_name`` names
        it in messages).

        The mask must be on the grid of the case's source image for ``sequence`` (whose
        SHA-256 is checked first). Refused: unregistered readers, cases not on the reader's
        work list (when assigned), repeat reads inside the washout, a submitted (final) mask of
        the same reader/session ("already submitted"), a file that exists without a record.
        The check, the write and the log record happen under the study's lock, so of two
        concurrent final saves exactly one succeeds. The record is appended after the file was
        written and read back, before it is published: a failed append (a full disk) publishes
        nothing and leaves an earlier draft as it was. Returns the path.
        """
        role = self.role(reader_id)
        check_name(content, "content")
        src = self.source_image(case_id, sequence, check=True)
        path = self.mask_path(reader_id, case_id, sequence, content, session)
        grid = read_grid(src, "source image")
        if not isinstance(mask, sitk.Image):
            raise UserError("mask must be a SimpleITK image")
        if not same_grid(mask, grid):
            raise UserError(f"{mask_name} for case {case_id!r} {sequence} is not on the grid of its source image {src} "
                            f"({grid_difference(mask, grid)}); masks are saved one-to-one with the source image")
        binary = binary_mask(mask)
        with folder_lock(self.folder):
            self._locked_meta()
            self._check_may_read(reader_id, case_id, sequence, session)
            events = self.events()
            saves = [e for e in events if e["event"] == "save" and e["mask"] == self._rel(path)]
            if any(e.get("final") for e in saves):
                raise UserError(f"{self._rel(path)} was already submitted as final on {saves[-1]['time']}; it is "
                                "never overwritten - start a new session (e.g. 'repeat') to read the case again")
            if path.exists() and not saves:
                raise UserError(f"{path} exists but is not recorded in this study; it is left untouched - move it "
                                "away first")
            if path.exists() and saves and sha256_file(path) != saves[-1]["sha256"]:
                raise UserError(f"{path} was changed outside the study since it was saved; it is left untouched")
            now = self.clock()
            if seconds_spent is None:
                key = (reader_id, session, case_id, sequence)
                starts = [e for e in events if e["event"] == "start"
                          and (e["reader_id"], e["session"], e["case_id"], e["sequence"]) == key]
                seconds_spent = (now - _parse_time(starts[-1]["time"])).total_seconds() if starts else None
            voxels = int(sitk.GetArrayViewFromImage(binary).sum())
            record = {"event": "save", "reader_id": reader_id, "role": role, "session": session,
                      "case_id": case_id, "patient_id": self._case(case_id)["patient_id"], "sequence": sequence,
                      "content": content, "mask": self._rel(path), "voxels": voxels, "final": bool(final),
                      "notes": str(notes), "time": _iso(now),
                      "seconds_spent": None if seconds_spent is None else float(seconds_spent)}

            def verify_and_log(tmp: Path) -> None:
                verify_image_file(tmp, binary, final=path, what="mask")
                self._append({**record, "sha256": sha256_file(tmp)})

            clean_stale_temps(path.parent)  # leftovers of a killed save (their writer is gone)
            replacing = path.exists()  # an own draft (checked above)
            with atomic_path(path, what="mask", verify=verify_and_log, exclusive=not replacing,
                             exists_message=f"{self._rel(path)} was already submitted; nothing was replaced") as tmp:
                sitk.WriteImage(binary, str(tmp), True)
            if final:
                with contextlib.suppress(OSError):
                    path.chmod(0o444)  # a submitted read is a certified record: read-only
        return path

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def reads(self) -> pd.DataFrame:
        """The latest save per reader/session/case/sequence/content, with first start time,
        last save time, total time spent and whether it was submitted."""
        import pandas as pd

        rows: dict[tuple, dict] = {}
        first_start: dict[tuple, str] = {}
        for e in self.events():
            if e["event"] not in ("start", "save"):
                continue
            key4 = (e["reader_id"], e["session"], e["case_id"], e["sequence"])
            if e["event"] == "start":
                first_start.setdefault(key4, e["time"])
            else:
                key = key4 + (e["content"],)
                prev = rows.get(key)
                spent = (prev["seconds_spent"] if prev and prev["seconds_spent"] is not None else 0.0)
                if e.get("seconds_spent") is not None:
                    spent += e["seconds_spent"]
                rows[key] = {"reader_id": e["reader_id"], "role": e["role"], "session": e["session"],
                             "case_id": e["case_id"], "patient_id": e["patient_id"], "sequence": e["sequence"],
                             "content": e["content"], "mask": e["mask"], "sha256": e.get("sha256"),
                             "voxels": e["voxels"],
                             "final": e["final"], "started": first_start.get(key4), "saved": e["time"],
                             "seconds_spent": spent if (prev or e.get("seconds_spent") is not None) else None,
                             "saves": (prev["saves"] + 1) if prev else 1, "notes": e["notes"]}
        cols = ["reader_id", "role", "session", "case_id", "patient_id", "sequence", "content", "mask", "sha256",
                "voxels", "final", "started", "saved", "seconds_spent", "saves", "notes"]
        return pd.DataFrame(list(rows.values()), columns=cols)

    # ---- blinded views ------------------------------------------------------------------

    def _flagged_pairs(self) -> set[tuple[str, str]]:
        qpath = self.folder / "quality.jsonl"
        if not qpath.exists():
            return set()
        from ClinicalMRICommonLib.quality import flagged_series

        return set(flagged_series(quality_log(self).records()))

    def excluded_cases(self, sequence: str | None = None) -> set[str]:
        """Cases whose series (``sequence``, or any when None) is flagged by an image-quality
        record (grade < 2 or Likert < 3, see quality.py); they are not offered for annotation."""
        return {c for (c, s) in self._flagged_pairs() if sequence is None or s == sequence}

    def case_list(self, reader_id: str, session: str = "first") -> list[dict]:
        """A reader's blinded work list: case id, patient id, sequences with the reader's own
        status per sequence ("not started", "in progress", "submitted"), never labels or
        other readers' work. With an assignment only the assigned cases, in the assigned
        order; cases flagged for image quality are left out."""
        self.role(reader_id)
        own = self.reads()
        own = own[(own["reader_id"] == reader_id) & (own["session"] == session)]
        started = {(e["case_id"], e["sequence"]) for e in self.events()
                   if e["event"] == "start" and e["reader_id"] == reader_id and e["session"] == session}
        flagged = self._flagged_pairs()
        assigned = self.assigned_cases(reader_id, session)
        order = assigned if assigned is not None else sorted(self.meta["cases"])
        out = []
        for case_id in order:
            case = self.meta["cases"][case_id]
            status = {}
            for seq in case["images"]:
                if (case_id, seq) in flagged:
                    continue
                mine = own[(own["case_id"] == case_id) & (own["sequence"] == seq)]
                if len(mine) and mine["final"].all():
                    status[seq] = "submitted"
                elif len(mine) or (case_id, seq) in started:
                    status[seq] = "in progress"
                else:
                    status[seq] = "not started"
            if status:
                out.append({"case_id": case_id, "patient_id": case["patient_id"], "status": status})
        return out

    def visible_masks(self, reader_id: str, case_id: str, session: str | None = None) -> list[dict]:
        """Masks of a case this reader may see: their own (of ``session`` only when given, so
        a repeat read never shows the first read); for reviewers and arbitrators also the
        annotators' submitted masks."""
        role = self.role(reader_id)
        self._case(case_id)
        reads = self.reads()
        reads = reads[reads["case_id"] == case_id]
        own = reads["reader_id"] == reader_id
        if session is not None:
            own = own & (reads["session"] == session)
        if role in ("reviewer", "arbitrator"):
            others = (reads["role"] == "annotator") & reads["final"]
            reads = reads[own | others]
        else:
            reads = reads[own]
        return [{"reader_id": r.reader_id, "session": r.session, "sequence": r.sequence, "content": r.content,
                 "path": str(self.folder / r.mask), "final": bool(r.final)} for r in reads.itertuples()]

    def progress(self) -> list[dict]:
        """The coordinator's (unblinded) view: per reader and session, the cases assigned,
        submitted and in progress and the time spent (no labels, no mask contents)."""
        reads = self.reads()
        sessions = {(e["reader_id"], e["session"]) for e in self.events() if e["event"] in ("assign", "start", "save")}
        out = []
        for reader_id, session in sorted(sessions):
            mine = reads[(reads["reader_id"] == reader_id) & (reads["session"] == session)]
            assigned = self.assigned_cases(reader_id, session)
            submitted = sorted({c for c, f in zip(mine["case_id"], mine["final"]) if f})
            progress = sorted(set(mine["case_id"]) - set(submitted))
            spent = mine["seconds_spent"].dropna()
            out.append({"reader_id": reader_id, "role": self.meta["readers"].get(reader_id, {}).get("role"),
                        "session": session, "assigned": len(assigned) if assigned is not None else None,
                        "submitted": len(submitted), "in_progress": len(progress),
                        "not_started": (len([c for c in assigned if c not in submitted and c not in progress])
                                        if assigned is not None else None),
                        "minutes_spent": float(spent.sum()) / 60.0 if len(spent) else None})
        return out

    # ---- agreement ------------------------------------------------------------------------

    def mask_pairs(self, reader_a: str, reader_b: str, session_a: str = "first", session_b: str = "first",
                   final_only: bool = True) -> pd.DataFrame:
        """Cases where both reads exist: inter-reader (two readers, same session) or
        intra-reader (one reader, sessions first/repeat). Columns: case_id, patient_id,
        sequence, content, mask_a, mask_b. Every mask's SHA-256 is checked against the reading
        log (UserError naming a missing or changed mask), so scores are never computed on an
        altered file."""
        reads = self.reads()
        if final_only:
            reads = reads[reads["final"]]
        a = reads[(reads["reader_id"] == reader_a) & (reads["session"] == session_a)]
        b = reads[(reads["reader_id"] == reader_b) & (reads["session"] == session_b)]
        keys = ["case_id", "patient_id", "sequence", "content"]
        m = a[keys + ["mask", "sha256"]].merge(b[keys + ["mask", "sha256"]], on=keys, suffixes=("_a", "_b"))
        m["mask_a"] = [str(self._checked_mask(p, h, f"mask of {reader_a!r}")) for p, h in zip(m["mask_a"], m["sha256_a"])]
        m["mask_b"] = [str(self._checked_mask(p, h, f"mask of {reader_b!r}")) for p, h in zip(m["mask_b"], m["sha256_b"])]
        return m.drop(columns=["sha256_a", "sha256_b"]).sort_values(keys).reset_index(drop=True)

    def agreement(self, reader_a: str, reader_b: str, session_a: str = "first", session_b: str = "first",
                  tolerance_mm: float = 1.0) -> pd.DataFrame:
        """compare_masks for every pair of :meth:`mask_pairs` (reader_a is the reference)."""
        import pandas as pd
        from ClinicalMRICommonLib.agreement.segmentation_metrics import METRIC_KEYS, compare_masks

        pairs = self.mask_pairs(reader_a, reader_b, session_a, session_b)
        rows = []
        for r in pairs.itertuples():
            res = compare_masks(sitk.ReadImage(r.mask_a), sitk.ReadImage(r.mask_b), tolerance_mm=tolerance_mm)
            rows.append({"case_id": r.case_id, "patient_id": r.patient_id, "sequence": r.sequence,
                         "content": r.content, **res})
        return pd.DataFrame(rows, columns=["case_id", "patient_id", "sequence", "content", *METRIC_KEYS])

    def feature_icc(self, reader_a: str, reader_b: str, session_a: str = "first", session_b: str = "first",
                    **kwargs) -> dict:
        """Per-feature ICC of the radiomics features of two reads; see :func:`study_feature_icc`."""
        return study_feature_icc(self, reader_a, reader_b, session_a, session_b, **kwargs)


def quality_log(study: ReaderStudy) -> AuditLog:
    """The study's image-quality log (``quality.jsonl``): signed and hash-chained (records of
    studies made before signing are read as they are); append with
    :meth:`ReaderStudy.append_quality`."""
    return study._quality


def study_from_csv(folder: str | os.PathLike, name: str, cases_csv: str | os.PathLike, *,
                   washout_days: float = 0, clock: Callable[[], datetime] = _now) -> ReaderStudy:
    """Create a study from a case table: one row per case and sequence, columns ``case_id``,
    ``patient_id``, ``sequence``, ``image`` (relative to the CSV's folder or absolute) and an
    optional ``label`` (kept in labels.json, never shown to readers). Every problem of the
    table is reported at once and no study is created."""
    import math

    from ClinicalMRICommonLib.tables import read_csv_table

    table = read_csv_table(cases_csv, "study cases")
    need = ("case_id", "patient_id", "sequence", "image")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise UserError(f"study cases file {cases_csv} lacks column(s) {', '.join(missing)}; needed: "
                        f"{', '.join(need)} (optional: label)")
    base = Path(cases_csv).resolve().parent
    cases: dict[str, dict] = {}
    problems = []
    for i, row in enumerate(table.to_dict("records"), start=2):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        try:
            empty = [c for c in need if row.get(c) is None or not str(row[c]).strip()]
            if empty:
                raise UserError(f"empty {', '.join(empty)}")
            cid, pid, seq = (check_name(str(row[k]), k.replace("_", " ")) for k in ("case_id", "patient_id", "sequence"))
            img = Path(str(row["image"]))
            img = img if img.is_absolute() else base / img
            read_image(img, f"image of case {cid!r} {seq}")  # every voxel read once: truncated / NaN refused now
            c = cases.setdefault(cid, {"patient_id": pid, "images": {}, "label": None})
            if c["patient_id"] != pid:
                raise UserError(f"case {cid!r} has two patient ids ({c['patient_id']!r}, {pid!r})")
            if seq in c["images"]:
                raise UserError(f"case {cid!r} lists sequence {seq!r} twice")
            c["images"][seq] = img
            if row.get("label") is not None:
                c["label"] = row["label"]
        except UserError as exc:
            problems.append(f"line {i}: {exc}")
    if problems:
        raise UserError(f"study not created from {cases_csv}: " + "; ".join(problems))
    if not cases:
        raise UserError(f"study cases file {cases_csv} has no rows")
    study = ReaderStudy.create(folder, name, clock=clock, washout_days=washout_days)
    for cid, c in cases.items():
        study.add_case(cid, c["patient_id"], c["images"], label=c["label"])
    return study


def blank_mask_like(source: str | os.PathLike) -> sitk.Image:
    """An empty UInt8 mask on the grid of a source image (for a reader's new segmentation)."""
    img = sitk.ReadImage(str(source))
    out = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(img)
    return out



def _study_feature_tables(study: ReaderStudy, reader_a: str, reader_b: str, session_a: str, session_b: str,
                          sequence: str | None, content: str | None, feature_extractor) -> dict:
    study.role(reader_a)
    study.role(reader_b)
    pairs = study.mask_pairs(reader_a, reader_b, session_a, session_b)
    if sequence:
        pairs = pairs[pairs["sequence"] == sequence]
    if content:
        pairs = pairs[pairs["content"] == content]
    what = f"{reader_a} ({session_a}) and {reader_b} ({session_b})"
    kinds = sorted(set(zip(pairs["sequence"], pairs["content"])))
    if not kinds:
        raise UserError(f"no case has submitted masks of both {what}"
                        + (f" for {sequence or 'any sequence'} / {content or 'any content'}" if sequence or content
                           else "") + "; submit the reads first")
    if len(kinds) > 1:
        raise UserError(f"the reads of {what} cover several sequence/content pairs "
                        f"({', '.join(f'{s}/{c}' for s, c in kinds)}); choose one sequence and content "
                        "(a per-feature ICC compares one structure across cases)")
    seq, cont = kinds[0]
    if feature_extractor is None:
        from .training import pyradiomics_shape_firstorder as feature_extractor
    import pandas as pd

    rows_a, rows_b, skipped = {}, {}, []
    for r in pairs.itertuples():
        empty = [p for p in (r.mask_a, r.mask_b) if not sitk.GetArrayFromImage(sitk.ReadImage(p)).any()]
        if empty:
            skipped.append(r.case_id)
            continue
        image = read_image(study.source_image(r.case_id, seq, check=True), "source image")
        rows_a[r.case_id] = feature_extractor(image, sitk.ReadImage(r.mask_a))
        rows_b[r.case_id] = feature_extractor(image, sitk.ReadImage(r.mask_b))
    table_a = pd.DataFrame.from_dict(rows_a, orient="index")
    table_b = pd.DataFrame.from_dict(rows_b, orient="index")
    table_a.index.name = table_b.index.name = "case_id"
    return {"features_a": table_a, "features_b": table_b, "sequence": seq, "content": cont,
            "skipped_empty": skipped}


def study_feature_icc(study: ReaderStudy, reader_a: str, reader_b: str, session_a: str = "first",
                      session_b: str = "first", *, sequence: str | None = None, content: str | None = None,
                      form: str = "ICC(A,1)", feature_extractor: Callable | None = None) -> dict:
    """Per-feature ICC between two reads of a study: inter-reader (two readers, one session)
    or intra-reader (one reader, sessions ``first`` and ``repeat``).

    For every case where both reads are submitted, features are extracted from the case's
    source image inside each mask (default: pyradiomics shape + first-order features,
    :func:`AnnotationQCLib.training.pyradiomics_shape_firstorder`; any
    ``feature_extractor(image, mask) -> dict`` may be given, e.g. HRMMPredict's extraction),
    then :func:`AnnotationQCLib.icc.feature_icc` is computed over the cases. The reads must
    cover one sequence/content (or ``sequence``/``content`` select one). Cases where either
    mask is empty have no features and are left out (listed in ``skipped_empty``).

    Returns ``{"table", "features_a", "features_b", "sequence", "content", "n_cases",
    "skipped_empty", "form"}``.
    """
    from ClinicalMRICommonLib.agreement.icc import feature_icc

    tables = _study_feature_tables(study, reader_a, reader_b, session_a, session_b, sequence, content,
                                   feature_extractor)
    n = len(tables["features_a"])
    if n < 2:
        raise UserError(f"per-feature ICC needs at least 2 cases with non-empty masks from both reads; "
                        f"found {n} (left out for an empty mask: {', '.join(tables['skipped_empty']) or 'none'})")
    table = feature_icc(tables["features_a"], tables["features_b"], form=form)
    return {"table": table, **tables, "n_cases": n, "form": form}
