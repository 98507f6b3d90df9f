"""The one lock mechanism of the three tools, and "exactly one wins" publication.

A lock is a file (``.lock`` in a folder for :func:`folder_lock`) that exists while one
process works on what it guards. It records who holds it -- pid, host, user, start time and
command -- as one JSON object, so a waiting user is told "<what> is being written by pid N on
host H since T; try again".

How it works:

- **Exclusive create, never empty.** The record is written and ``fsync``-ed to a private
  file first, which is then hard-linked to the lock name (``link`` fails when the name
  exists, atomically). A full disk therefore fails *before* a lock exists: a UserError, and
  no empty stale lock. (File systems without hard links fall back to ``O_CREAT|O_EXCL``.)
- **Stale locks are taken over.** On POSIX the holder keeps an ``flock`` on the lock file for
  as long as it holds it; the kernel drops it when the process dies (also by SIGKILL). A lock
  recorded on this host whose pid is gone, or whose ``flock`` is free (the pid was reused), is
  stale: it is removed under its own ``flock`` after checking that the file is still the same
  one (so two waiters cannot both take over, or remove a fresh lock), and the takeover is
  reported to the caller (``on_takeover(owner)`` and :attr:`Lock.took_over`) so it can be
  logged. A lock from another host is never taken over (its pid cannot be checked); the
  timeout message names the lock file to remove by hand.
- **Timeout.** After ``timeout_s`` a UserError says who holds it and since when.
- **Re-entrant** within one thread of one process (a function holding the lock may call
  another that takes it again).

:func:`publish_exclusive` puts a finished temporary file under its final name only if that
name does not exist yet (``os.link``), so of two concurrent submissions exactly one wins and
the other gets a UserError ("already submitted"); nothing is ever replaced.

Only the standard library is imported here (the module files' start-up rule).
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError, os_error_message

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: The lock file of a folder (the name stroke-lesion's case folders have always used).
LOCK_NAME = ".lock"
#: A lock file that cannot be parsed (a crash between create and write in the fallback path)
#: is stale after this many seconds.
_UNREADABLE_GRACE_S = 5.0
_LINK_UNSUPPORTED = {errno.EPERM, errno.EMLINK, errno.EXDEV, getattr(errno, "ENOTSUP", -1),
                     getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOSYS", -1)}


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or held) a lock, as its file records it."""

    pid: int | None
    host: str
    time: str
    command: str = ""
    user: str = ""
    token: str = ""
    flock: bool = False
    raw: bytes = b""

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        user = f" (user {self.user})" if self.user else ""
        since = f" since {self.time}" if self.time else ""
        cmd = f" [{self.command[:80]}]" if self.command else ""
        return f"{who}{user} on host {self.host or 'unknown'}{since}{cmd}"


@dataclass
class Lock:
    """A held lock. ``took_over`` is the owner of a stale lock this one replaced (or None)."""

    path: Path
    owner: LockOwner
    took_over: LockOwner | None = None
    _fd: int | None = field(default=None, repr=False)
    _count: int = field(default=1, repr=False)

    def release(self) -> None:
        """Release the lock (the outermost release of a re-entrant lock removes the file)."""
        key = _key(self.path)
        with _held_guard:
            self._count -= 1
            if self._count > 0:
                return
            _held.pop(key, None)
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            mine = os.fstat(fd)
            with contextlib.suppress(FileNotFoundError):
                now = os.stat(self.path)
                if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                    os.unlink(self.path)
        finally:
            os.close(fd)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_held: dict = {}
_held_guard = threading.Lock()


def _key(path: Path):
    return (os.path.abspath(path), os.getpid(), threading.get_ident())


def _hostname() -> str:
    return socket.gethostname() or "localhost"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    if pid is None or pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, int(pid))  # QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.windll.kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _parse_owner(raw: bytes) -> LockOwner | None:
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        parts = text.split()  # an older lock: "<pid> <iso time>"
        if parts and parts[0].isdigit():
            return LockOwner(pid=int(parts[0]), host=_hostname(), time=parts[1] if len(parts) > 1 else "", raw=raw)
        return None
    if not isinstance(rec, dict):
        return None
    pid = rec.get("pid")
    return LockOwner(pid=int(pid) if isinstance(pid, int) else None, host=str(rec.get("host", "")),
                     time=str(rec.get("time", "")), command=str(rec.get("command", "")),
                     user=str(rec.get("user", "")), token=str(rec.get("token", "")),
                     flock=bool(rec.get("flock", False)), raw=raw)


def read_lock(path: str | os.PathLike) -> LockOwner | None:
    """The owner recorded in a lock file (None when absent or unreadable)."""
    try:
        return _parse_owner(Path(path).read_bytes())
    except OSError:
        return None


def _flock_free(path: Path) -> bool | None:
    """True when nobody holds an flock on the file (None: cannot tell)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def _is_stale(path: Path, owner: LockOwner | None) -> bool:
    if owner is None:  # empty or garbage: stale once it is older than a create-then-write takes
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > _UNREADABLE_GRACE_S and _flock_free(path) is not False
    if owner.host and owner.host != _hostname():
        return False
    if not pid_alive(owner.pid):
        return True
    return bool(owner.flock and _flock_free(path))


def _take_over(path: Path, owner: LockOwner | None) -> str:
    """Remove a stale lock if it is still the same file: "removed"; "retry" when it is gone or
    was replaced meanwhile (someone else took it over); "held" when it is in use after all."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "retry"
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "held"  # a live holder, or another waiter taking it over right now
        mine = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return "retry"
        if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            return "retry"
        raw = pread(fd, 1 << 16, 0)
        if owner is not None and raw != owner.raw:
            return "retry"  # a new holder's record: look again
        os.unlink(path)
        return "removed"
    finally:
        os.close(fd)


def pread(fd: int, n: int, offset: int) -> bytes:
    """``os.pread`` where it exists (POSIX), else seek and read (Windows)."""
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is retried; an error raises)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def _try_create(path: Path, owner_bytes: bytes) -> int | None:
    """Create the lock with its record (fd with an flock on it), or None when it exists."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.new"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        write_all(fd, owner_bytes)
        os.fsync(fd)
        try:
            os.link(tmp, path)
            return fd
        except FileExistsError:
            os.close(fd)
            return None
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise
        # no hard links here: exclusive create, flock, then write (the record is briefly empty)
        os.close(fd)
        fd = -1
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write_all(fd, owner_bytes)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            fd = -1
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return fd
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def acquire(path: str | os.PathLike, *, what: str | None = None, timeout_s: float = 15.0,
            command: str | None = None, on_takeover: Callable[[LockOwner], None] | None = None,
            poll_s: float = 0.05) -> Lock:
    """Take the lock file ``path`` (see the module docstring); release it with
    :meth:`Lock.release` or use :func:`lock`. ``what`` names what it guards in messages
    (default: the lock's folder)."""
    p = Path(path)
    what = what or str(p.parent)
    key = _key(p)
    with _held_guard:
        held = _held.get(key)
        if held is not None:
            held._count += 1
            return held
    user = ""
    with contextlib.suppress(Exception):
        user = getpass.getuser()
    owner = LockOwner(pid=os.getpid(), host=_hostname(),
                      time=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                      command=(command if command is not None else " ".join(os.path.basename(a) if i == 0 else a
                                                                            for i, a in enumerate(sys.argv)))[:300],
                      user=user, token=secrets.token_hex(8), flock=fcntl is not None)
    body = {"pid": owner.pid, "host": owner.host, "user": owner.user, "time": owner.time,
            "command": owner.command, "token": owner.token, "flock": owner.flock}
    data = (json.dumps(body, sort_keys=True) + "\n").encode("utf-8")
    owner = LockOwner(**{**owner.__dict__, "raw": data})
    deadline = time.monotonic() + timeout_s
    took_over = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(os_error_message(exc, p.parent, f"could not lock {what}:")) from None
    while True:
        try:
            fd = _try_create(p, data)
        except OSError as exc:
            raise UserError(os_error_message(exc, p, f"could not lock {what}: cannot create the lock file")) from None
        if fd is not None:
            lk = Lock(path=p, owner=owner, took_over=took_over, _fd=fd)
            with _held_guard:
                _held[key] = lk
            return lk
        current = read_lock(p)
        if _is_stale(p, current):
            outcome = _take_over(p, current)
            if outcome == "removed":
                took_over = current or LockOwner(pid=None, host="", time="")
                if on_takeover is not None:
                    on_takeover(took_over)
            if outcome != "held" and time.monotonic() <= deadline:
                continue
        if time.monotonic() > deadline:
            if current is None:
                raise UserError(f"{what} is locked ({p}) by a process that did not say who it is; try again, or "
                                f"remove {p} if no one is working on it")
            hint = "" if current.host == _hostname() else f"; if no one is working on it, remove {p}"
            raise UserError(f"{what} is being written by {current.describe()}; try again when it has finished{hint}")
        time.sleep(poll_s * (0.5 + secrets.randbelow(1000) / 1000))


@contextlib.contextmanager
def lock(path: str | os.PathLike, **kwargs) -> Iterator[Lock]:
    """``with lock(path) as lk: ...`` -- :func:`acquire` and release (keywords as there)."""
    lk = acquire(path, **kwargs)
    try:
        yield lk
    finally:
        lk.release()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, **kwargs) -> Iterator[Lock]:
    """The lock of a folder (``<folder>/.lock``; the folder is created if missing)."""
    folder = Path(folder)
    kwargs.setdefault("what", str(folder))
    with lock(folder / LOCK_NAME, **kwargs) as lk:
        yield lk


def publish_exclusive(tmp: str | os.PathLike, final: str | os.PathLike, *, what: str = "output",
                      exists_message: str | None = None) -> Path:
    """Put the finished file ``tmp`` under ``final`` only if ``final`` does not exist: of two
    concurrent publications exactly one wins; the other gets a UserError (``exists_message``,
    default "<what> <final> already exists (already submitted?)") and its ``tmp`` is removed.
    Nothing is ever replaced. Both paths must be in the same folder."""
    tmp, final = Path(tmp), Path(final)
    message = exists_message or f"{what} {final} already exists (already submitted?); nothing was replaced"
    try:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise UserError(message) from None
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise
            try:  # no hard links: claim the name exclusively, then move the content onto it
                os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                raise UserError(message) from None
            os.replace(tmp, final)
    except OSError as exc:
        raise UserError(os_error_message(exc, final, f"could not write {what}")) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(final.parent)
    return final


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or link in ``folder`` durable (no-op where folders cannot be synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
