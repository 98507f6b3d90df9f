"""The loop's audit trail: an append-only JSON-lines log whose records are chained by
SHA-256, written under an exclusive lock on the loop folder.

Every record holds ``seq`` (1, 2, ...), ``time`` (UTC), ``event``, ``by`` (who), ``data`` and
``prev`` (the previous record's ``hash``); ``hash`` is the SHA-256 of the record's canonical
JSON without ``hash``. Editing, removing or reordering a line breaks the chain at that line;
:meth:`AuditTrail.records` finds it and names the line. The loop's state (which case is in
the standard set, which round is the latest) is replayed from this log and nowhere else.

Concurrency: appends happen under :func:`folder_lock` (the extension's one lock,
:mod:`ClinicalMRICommonLib.locks`, on ``<folder>/.lock``: stale locks of dead processes are
taken over). Commands take it for their short critical section (check the state, write,
append the record), never for a whole training run.

Standard library only (the Slicer start-up rule).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe
from ClinicalMRICommonLib.locks import folder_lock  # noqa: F401  (the loop's lock; re-exported)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _canonical(record: dict) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != "hash"}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode("utf-8")


def record_hash(record: dict) -> str:
    return hashlib.sha256(_canonical(record)).hexdigest()


class AuditTrail:
    """``audit.jsonl`` of a loop folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def records(self) -> list[dict]:
        """All records, after checking the chain (UserError naming the first bad line)."""
        if not self.path.exists():
            raise UserError(f"audit trail {self.path} is missing; the loop folder is incomplete - restore it")
        out: list[dict] = []
        prev = ""
        text = self.path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"audit trail {self.path} line {number} is not valid JSON; the trail was edited "
                                "or cut short - restore the loop folder from a backup") from None
            if not isinstance(rec, dict) or rec.get("prev") != prev or rec.get("hash") != record_hash(rec) \
                    or rec.get("seq") != len(out) + 1:
                raise UserError(f"audit trail {self.path} line {number} fails its hash-chain check; the loop's "
                                "history was altered - restore the loop folder from a backup")
            prev = rec["hash"]
            out.append(rec)
        if text and not text.endswith("\n"):
            raise UserError(f"audit trail {self.path} ends in a partial line; restore the loop folder from a backup")
        return out

    def append(self, event: str, by: str, data: dict, records: list[dict] | None = None) -> dict:
        """Append one record (call under :func:`folder_lock`); ``records`` are the verified
        records when the caller has just read them."""
        recs = self.records() if records is None else records
        rec = {"seq": len(recs) + 1, "time": utc_now(), "event": str(event), "by": str(by),
               "data": json_safe(data), "prev": recs[-1]["hash"] if recs else ""}
        rec["hash"] = record_hash(rec)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True, allow_nan=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return rec
