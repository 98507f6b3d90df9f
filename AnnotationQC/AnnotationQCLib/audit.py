"""Locking, no-clobber publication and hash-chained logs for AnnotationQC's folders (reader
studies, training sessions), following the rules of the stroke workflow
(StrokeLesionLib.workflow): one writer at a time per folder, a certified file is never
replaced, and every event is appended to a log whose records are chained by SHA-256 so an
edited, removed or reordered record is noticed.

* :func:`folder_lock` - an exclusive lock on a folder: ``<folder>/.lock`` created with
  ``O_CREAT | O_EXCL`` (portable; works on network shares without ``flock``) holding pid,
  host and time. A lock whose process no longer runs on this host is taken over. If
  ``ClinicalMRICommonLib.locks`` (the extension's shared lock, being written) provides
  ``folder_lock``, that one is used instead.
* :func:`publish_new` - write a file beside its final name, fsync, check it is not empty,
  then hard-link it to the final name: the link fails when the name exists, so of two
  concurrent submissions exactly one wins. The published file is made read-only.
* :class:`ChainedLog` - append-only JSON lines; each record carries ``seq``, ``time`` (UTC),
  ``os_user`` (the operating-system account, beside the id the user typed), ``prev`` (the
  previous record's hash) and ``hash`` (SHA-256 of the record's canonical JSON without
  ``hash``). A torn last line (a write interrupted by a crash, never a complete record) is
  ignored (``torn_tail``) and cut off by the next append, not fatal.

What this can prove: that the log and the files it names were not changed after the fact
without recomputing the chain. It cannot prove who sat at the keyboard (ids are typed; the
OS account is recorded to make impersonation visible), and someone who rewrites the whole
log with new hashes is not detected here (a keyed signature kept outside the folder is the
shared library's job).

Standard library only (the Slicer start-up rule).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError

LOCK_NAME = ".lock"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - containers without a passwd entry
        return "unknown"


# ---------------------------------------------------------------------------------------
# Lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _stale(lock: Path) -> bool:
    """A lock left by a process that no longer runs on this host."""
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        return info.get("host") == socket.gethostname() and not _pid_alive(int(info["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, timeout_s: float = 15.0) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for a short critical section (check, write, log)."""
    try:
        from ClinicalMRICommonLib import locks as _shared  # the extension's one lock, when present
    except ImportError:
        _shared = None
    if _shared is not None and hasattr(_shared, "folder_lock"):
        with _shared.folder_lock(folder, timeout_s=timeout_s):
            yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": utc_now()}).encode()
    t0 = time.monotonic()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _stale(lock):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            if time.monotonic() - t0 > timeout_s:
                raise UserError(f"{folder} is in use by another command (lock {lock}); wait and retry, or remove "
                                "the lock file if no one is working on it") from None
            time.sleep(0.05)
            continue
        try:
            os.write(fd, body)
        except OSError:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            raise
        os.close(fd)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


# ---------------------------------------------------------------------------------------
# No-clobber publication


def publish_new(write: Callable[[Path], None], final: str | os.PathLike, what: str = "file") -> Path:
    """Write through ``write(tmp_path)`` and publish under ``final`` only if that name is
    free (``FileExistsError`` otherwise, with nothing left behind). The published file is
    read-only."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if tmp.stat().st_size == 0:
            raise UserError(f"writing {what} {final} produced an empty file (disk full?); nothing was saved")
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise
        except OSError:  # file systems without hard links: exclusive create, then replace the placeholder
            os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.replace(tmp, final)
        with contextlib.suppress(OSError):
            os.chmod(final, 0o444)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


# ---------------------------------------------------------------------------------------
# Hash-chained log


def record_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


class ChainedLog:
    """An append-only JSON-lines log with a SHA-256 chain.

    ``required``: every record must be chained (new folders). Without it (folders made before
    the chain existed) unchained records are accepted as they are, and the chained records
    that follow must still chain among themselves."""

    def __init__(self, path: str | os.PathLike, what: str, required: bool = True):
        self.path = Path(path)
        self.what = what
        self.required = required
        self.torn_tail = False
        self._good_bytes = 0

    def records(self) -> list[dict]:
        self.torn_tail = False
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        out, prev, chained = [], "", False
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) and not text.endswith("\n"):
                    # an interrupted last write: it was never a complete record; ignored here and
                    # cut off by the next append
                    self.torn_tail = True
                    self._good_bytes = len(text[: text.rfind("\n") + 1].encode("utf-8"))
                    break
                raise UserError(f"{self.path} line {i} is not valid JSON; the {self.what} is damaged (restore it "
                                "from a backup)") from None
            if "hash" in rec or self.required or chained:
                if rec.get("prev") != prev or rec.get("hash") != record_hash(rec):
                    raise UserError(f"{self.path} line {i} fails its SHA-256 chain check; the {self.what} was "
                                    "altered after it was written (restore it from a backup)")
                prev, chained = rec["hash"], True
            out.append(rec)
        return out

    def append(self, record: dict) -> dict:
        """Append one record (call under :func:`folder_lock`); returns it with its chain fields."""
        recs = self.records()
        last = next((r["hash"] for r in reversed(recs) if "hash" in r), "")
        rec = json.loads(json.dumps(record))  # plain JSON values, so the hash is reproducible
        rec.update(seq=len(recs) + 1, time=rec.get("time") or utc_now(), os_user=os_user(), prev=last)
        rec["hash"] = record_hash(rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(rec, sort_keys=True) + "\n"
        with open(self.path, "a+b") as f:
            if self.torn_tail:
                f.truncate(self._good_bytes)
            f.write(data.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self.torn_tail = False
        return rec
