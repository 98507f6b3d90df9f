"""The loop's audit trail: ``audit.jsonl``, AnnotationQC's hash-chained log
(:class:`AnnotationQCLib.audit.ChainedLog`), appended under the folder lock
(:func:`ClinicalMRICommonLib.locks.folder_lock`, re-exported here).

Every record holds ``seq``, ``time`` (UTC), ``os_user``, ``event``, ``by`` (the id the user
gave), ``data``, ``prev`` and ``hash``; an edited, removed or reordered record breaks the
chain and every command that opens the loop says where. The loop's state (which case is in
the standard set, which round is the latest, which proposal was reviewed how) is replayed
from this log and nowhere else. Events: ``init``, ``standard`` (init masks and imports),
``train``, ``prelabel``, ``accept``, ``reject``.

Commands hold the lock for their short critical section (check the state, write, append),
never for a whole training run.

Standard library only (the Slicer start-up rule).
"""

from __future__ import annotations

import os
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import json_safe
from ClinicalMRICommonLib.locks import folder_lock  # noqa: F401  (the loop's lock; re-exported)

from ..audit import ChainedLog, utc_now  # noqa: F401  (utc_now re-exported)


class AuditTrail:
    """``audit.jsonl`` of a loop folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._log = ChainedLog(self.path, "loop audit trail")

    def records(self) -> list[dict]:
        """All records, the chain verified (UserError naming the first bad record)."""
        if not self.path.exists():
            raise UserError(f"audit trail {self.path} is missing; the loop folder is incomplete - restore it")
        return self._log.records()

    def append(self, event: str, by: str, data: dict) -> dict:
        """Append one record (call under :func:`folder_lock`)."""
        return self._log.append({"event": str(event), "by": str(by), "data": json_safe(data)})
