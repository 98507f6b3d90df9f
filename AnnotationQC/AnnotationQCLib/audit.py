"""Hash-chained logs for AnnotationQC's folders (reader studies, training sessions), with the
stroke workflow's rules: one writer at a time per folder, certified files never replaced,
and every event appended to a log whose records are chained by SHA-256 so that an edited,
removed or reordered record is noticed.

The lock and the no-clobber publication are the shared library's
(:func:`ClinicalMRICommonLib.locks.folder_lock`, which the callers hold around every append, and
``ClinicalMRICommonLib.files.atomic_path(..., exclusive=True)``); the JSON-lines reading and
appending, with its handling of a torn last line, is
:func:`ClinicalMRICommonLib.files.read_jsonl` / :func:`~ClinicalMRICommonLib.files.append_jsonl`.
This module adds the chain:

:class:`ChainedLog` records carry ``seq``, ``time`` (UTC), ``os_user`` (the operating-system
account, beside the id the user typed), ``prev`` (the previous record's hash) and ``hash``
(SHA-256 of the record's canonical JSON without ``hash``).

What this can prove: that the log was not edited after the fact without recomputing the
chain. It cannot prove who sat at the keyboard (ids are typed; the OS account is recorded to
make impersonation visible), and a log rewritten whole with new hashes, or cut after its last
good record, is not detected here (a keyed signature and a head record kept outside the
folder are the shared library's job).

Standard library only (the Slicer start-up rule).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import append_jsonl, read_jsonl

__all__ = ["ChainedLog", "os_user", "record_hash", "utc_now"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - containers without a passwd entry
        return "unknown"


def record_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


class ChainedLog:
    """An append-only JSON-lines log with a SHA-256 chain.

    ``required``: every record must be chained (folders made with this version). Without it
    (folders made before the chain existed) unchained records are accepted as they are, and
    the chained records that follow must still chain among themselves."""

    def __init__(self, path: str | os.PathLike, what: str, required: bool = True):
        self.path = Path(path)
        self.what = what
        self.required = required
        self.torn_tail = False

    def records(self) -> list[dict]:
        """The records, the chain verified (UserError naming the first broken line). A torn
        last line (an interrupted write, never a complete record) is ignored (``torn_tail``)."""
        recs, torn = read_jsonl(self.path, self.what, return_torn=True)
        self.torn_tail = torn is not None
        prev, chained = "", False
        for i, rec in enumerate(recs, start=1):
            if "hash" in rec or self.required or chained:
                if rec.get("prev") != prev or rec.get("hash") != record_hash(rec):
                    raise UserError(f"{self.path} record {i} fails its SHA-256 chain check; the {self.what} was "
                                    "altered after it was written (restore it from a backup)")
                prev, chained = rec["hash"], True
        return recs

    def append(self, record: dict) -> dict:
        """Append one record (call under ``ClinicalMRICommonLib.locks.folder_lock``); returns it
        with its chain fields."""
        import warnings

        from ClinicalMRICommonLib.errors import InputWarning

        recs = self.records()
        last = next((r["hash"] for r in reversed(recs) if "hash" in r), "")
        rec = json.loads(json.dumps(record))  # plain JSON values, so the hash is reproducible
        rec.update(seq=len(recs) + 1, time=rec.get("time") or utc_now(), os_user=os_user(), prev=last)
        rec["hash"] = record_hash(rec)
        with warnings.catch_warnings():
            if self.torn_tail:  # already known from records(): cutting it off is expected
                warnings.simplefilter("ignore", InputWarning)
            append_jsonl(self.path, rec, self.what)
        self.torn_tail = False
        return rec
