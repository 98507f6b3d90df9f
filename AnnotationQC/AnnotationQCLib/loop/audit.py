"""The loop's audit trail: ``audit.jsonl`` (+ its signed head ``audit.jsonl.head``), the
extension's one tamper-evident log (:class:`ClinicalMRICommonLib.audit.AuditLog`: SHA-256
chain, HMAC signature with the site key kept outside the folder, a head that shows a removed
tail), appended under the folder lock (:func:`ClinicalMRICommonLib.locks.folder_lock`,
re-exported here).

Every record holds ``event``, ``by`` (the id the user gave) and ``data``, and the log's own
``seq``, ``time`` (UTC), ``os_user``, ``host``, ``prev``, ``hash`` and ``sig``; an edited,
removed, inserted or reordered record, or a cut tail, is found by every command that opens
the loop. The loop's state (which case is in the standard set, which round is the latest,
which proposal was reviewed how) is replayed from this log and nowhere else. Events:
``init``, ``standard`` (init masks and imports), ``train``, ``prelabel``, ``accept``,
``reject``.

Commands hold the lock for their short critical section (check the state, write, append),
never for a whole training run.

Standard library only at module level (the Slicer start-up rule).
"""

from __future__ import annotations

import os
from pathlib import Path

from ClinicalMRICommonLib.audit import AuditLog, utc_now  # noqa: F401  (utc_now re-exported)
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe
from ClinicalMRICommonLib.locks import folder_lock  # noqa: F401  (the loop's lock; re-exported)


class AuditTrail:
    """``audit.jsonl`` of a loop folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._log = AuditLog(self.path, "loop audit trail", required=True)

    def create(self) -> None:
        """Start the (empty, signed) trail of a new loop folder."""
        self._log.create()

    def records(self) -> list[dict]:
        """All records, verified (UserError naming the first problem)."""
        if not self.path.exists():
            raise UserError(f"audit trail {self.path} is missing; the loop folder is incomplete - restore it")
        return self._log.records()

    def append(self, event: str, by: str, data: dict) -> dict:
        """Append one record (callers hold :func:`folder_lock` for their check-write-log
        section; the log takes it again, re-entrantly)."""
        return self._log.append({"event": str(event), "by": str(by), "data": json_safe(data)})
