"""AnnotationQC's records of work: what its folders (reader studies, training sessions) use
from the extension's one tamper-evident log, :mod:`ClinicalMRICommonLib.audit`.

- The logs (``reads.jsonl`` and ``quality.jsonl`` of a study, ``submissions.jsonl`` of a
  training session) are :class:`ClinicalMRICommonLib.audit.AuditLog`: SHA-256 chain, HMAC
  signature with the site key kept outside the folder, a signed head file beside each log
  (``<log>.head``), appends under the folder's lock, torn tails survived, older unsigned logs
  read and signed from their next record on.
- The folder's description (``study.json``, ``labels.json``, ``session.json``) is a signed
  JSON document, written whole and atomically.
- :class:`FolderReport` gathers what a folder's check found (every log, every document,
  the cross-checks between them, recorded files' SHA-256, paths outside the folder); every
  command that opens a folder refuses with its first problem in one line, and ``annotation-qc
  study verify`` / ``training-verify`` print all of it.

What this can and cannot prove: see :mod:`ClinicalMRICommonLib.audit` and
docs/annotation_qc.md ("Tamper evidence").

The former SHA-256-only ``ChainedLog`` is gone: the active-learning loop
(``AnnotationQCLib/loop/audit.py``) uses ``AuditLog`` too, and folders it wrote are read as
old unsigned logs.

Standard library only (the Slicer start-up rule).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ClinicalMRICommonLib.audit import (  # noqa: F401  (re-exported for AnnotationQC's modules)
    AuditLog,
    Verification,
    check_document,
    inside_folder,
    os_user,
    record_hash,
    utc_now,
    write_signed_json,
)
from ClinicalMRICommonLib.errors import InputWarning, UserError

__all__ = ["AUDIT_SIGNED", "AuditLog", "FolderReport", "inside", "os_user", "record_hash", "utc_now"]

#: ``"audit"`` of a folder made by a version that signs (every log and document signed).
AUDIT_SIGNED = "hmac-sha256"


#: Paths named by records and documents stay inside the folder (the extension's one rule).
inside = inside_folder


@dataclass
class FolderReport:
    """What checking a folder found: ``problems`` (altered, missing, outside the folder) and
    ``notices`` (old unsigned parts, a torn last line, a head behind after an interrupted
    write: printed as warnings by every command) and ``info`` (an old unsigned part frozen when
    signing began: printed by the verify commands only)."""

    folder: Path
    kind: str
    command: str
    problems: list = field(default_factory=list)
    notices: list = field(default_factory=list)
    info: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_log(self, v: Verification) -> None:
        self.problems += [f"{v.path.name}: {p}" for p in v.problems]
        self.notices += v.notices
        self.info += v.info

    def add_document(self, found: tuple[list[str], list[str]]) -> None:
        self.problems += found[0]
        self.notices += found[1]

    def message(self) -> str:
        more = len(self.problems) - 1
        return (f"{self.kind} {self.folder} was altered: {self.problems[0]}"
                + (f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else "")
                + f"; nothing was done - run '{self.command}' for the full list and restore the folder from a backup")

    def raise_if_altered(self) -> None:
        if self.problems:
            raise UserError(self.message())

    def warn_notices(self) -> None:
        for n in self.notices:
            warnings.warn(f"{self.kind} {self.folder}: {n}", InputWarning, stacklevel=3)

    def as_dict(self) -> dict:
        return {"folder": str(self.folder), "kind": self.kind, "ok": self.ok, "problems": list(self.problems),
                "notices": list(self.notices), "info": list(self.info)}
