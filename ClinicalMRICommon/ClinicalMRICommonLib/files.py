"""Files: the one atomic, verified writer for every output, the one overwrite policy, file
checksums, strict JSON and append-only JSON-lines logs.

Every output goes through :func:`atomic_path` (directly, or through ``write_*_atomic``):

1. a temporary file is created in the target folder (hidden name ``.tmp-<pid>-<random>.<stem>``,
   recognised by :func:`is_temp_name`, cleaned up by :func:`clean_stale_temps`);
2. the caller's writer writes it; it is flushed and ``fsync``-ed;
3. what was written is verified: the byte count / read-back for bytes and text, a complete
   gzip stream plus a read-back of grid and voxels for images (SimpleITK's ``WriteImage``
   reports nothing when a ``.nii.gz`` is cut short by a full disk), or the caller's ``verify``;
4. it is renamed onto the final name (or, with ``exclusive``, linked there so an existing
   file is never replaced: exactly one of two concurrent writers wins) and the folder is
   ``fsync``-ed.

On any failure (no space left, read-only file system, permission denied, name too long, a
parent that is a file, a failed verification) the temporary file is removed, nothing is
published, an existing file under the final name is left as it was, and a
:class:`~ClinicalMRICommonLib.errors.UserError` names the *user's* path, never the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk

from .errors import InputWarning, UserError, os_error_message
from .locks import fsync_dir, pid_alive, pread, publish_exclusive, write_all

#: Hidden temporary files of the atomic writer start with this (see :func:`is_temp_name`).
TEMP_PREFIX = ".tmp-"
#: The longest file name (bytes) most file systems allow.
NAME_MAX = 255


# ---------------------------------------------------------------------------------------
# temporary names


def _temp_suffix(final: Path) -> str:
    """The final name's extension(s), so writers that look at it (SimpleITK, pandas) work:
    ``.nii.gz`` for compressed files, else the last suffix; at most 16 characters."""
    suffixes = final.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in (".gz", ".bz2", ".xz", ".zst"):
        suffix = "".join(suffixes[-2:])
    else:
        suffix = suffixes[-1] if suffixes else ".tmp"
    return suffix if len(suffix) <= 16 and " " not in suffix else ".tmp"


def _temp_path(final: Path) -> Path:
    stem = final.name[: len(final.name) - len(_temp_suffix(final))] if final.suffixes else final.name
    stem = "".join(c for c in stem[:24] if c.isalnum() or c in "-_") or "out"
    return final.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.{stem}{_temp_suffix(final)}"


def is_temp_name(name: str) -> bool:
    """True for the name of an atomic writer's temporary file (also the ``.tmp.`` names of
    older versions)."""
    return name.startswith((TEMP_PREFIX, ".tmp."))


def clean_stale_temps(folder: str | os.PathLike, max_age_s: float = 3600.0) -> list[Path]:
    """Remove temporary files of interrupted writes in ``folder`` (not recursive): those whose
    writing process is gone on this host, and any older than ``max_age_s``. Returns what was
    removed. Call it under the folder's lock."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        if not (p.is_file() and is_temp_name(p.name)):
            continue
        pid = None
        if p.name.startswith(TEMP_PREFIX):
            with contextlib.suppress(ValueError, IndexError):
                pid = int(p.name[len(TEMP_PREFIX):].split("-", 1)[0])
        try:
            old = now - p.stat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        if old or (pid is not None and pid != os.getpid() and not pid_alive(pid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------
# the atomic writer


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failed(exc: BaseException, final: Path, what: str) -> UserError:
    if isinstance(exc, OSError):
        return UserError(os_error_message(exc, final, f"could not write {what}"))
    return UserError(f"could not write {what} {final}: {_library_reason(str(exc), final.parent)}")


def _library_reason(text: str, folder: Path) -> str:
    """A library's (ITK's) multi-line error as a short reason; a full disk said as such."""
    if "No space left" in text or _free_bytes(folder) < 1 << 16:
        return "no space left on the device (the disk is full); free some space or choose another folder"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1].split("ITK ERROR:")[-1].strip() if lines else "failed")[:160]


def _check_name(final: Path, what: str) -> None:
    if str(final).strip() in ("", "."):
        raise UserError(f"{what} path is empty; give a file name")
    if len(os.fsencode(final.name)) > NAME_MAX:
        raise UserError(f"could not write {what} {final}: the file name is too long "
                        f"({len(os.fsencode(final.name))} bytes, at most {NAME_MAX}); choose a shorter name")


def _check_parents(final: Path, what: str, action: str) -> None:
    """UserError when the nearest existing folder above ``final`` is a file."""
    for parent in final.parents:
        try:
            if not (parent.exists() or parent.is_symlink()):
                continue
            is_dir = parent.is_dir()
        except OSError:  # e.g. a folder on the way that may not be entered: the write reports it
            return
        if not is_dir:
            raise UserError(f"{action}{what} {final}: {parent} is a file, not a folder; choose another path")
        return


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, what: str = "output", verify: Callable[[Path], None] | None = None,
                exclusive: bool = False, exists_message: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, sync and
    verify it and publish it under ``path`` (see the module docstring).

    ``verify(tmp)`` may raise UserError (or return False) to refuse what was written.
    ``exclusive``: never replace an existing file: if ``path`` exists (also when another
    process published it first), nothing is published and a UserError ``exists_message``
    (default: "<what> <path> already exists") is raised. An OSError inside the block is
    reported as a UserError naming ``path``. The temporary name keeps the final suffix(es)."""
    final = Path(path)
    _check_name(final, what)
    _check_parents(final, what, "could not write ")
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(final.parent))
        tmp = _temp_path(final)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.close(fd)
        yield tmp
        if not tmp.is_file():
            raise UserError(f"could not write {what} {final}: the writer produced no file")
        _fsync_path(tmp)
        if verify is not None and verify(tmp) is False:
            raise UserError(f"could not write {what} {final}: what was written does not read back the same "
                            "(disk full or failing?); nothing was saved")
        if exclusive:
            publish_exclusive(tmp, final, what=what, exists_message=exists_message)
        else:
            os.replace(tmp, final)
        tmp = None
        fsync_dir(final.parent)
    except UserError:
        raise
    except (OSError, RuntimeError) as exc:
        raise _write_failed(exc, final, what) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str = "output", *,
                       exclusive: bool = False) -> None:
    """Write bytes atomically; the written file is read back and compared."""
    def verify(tmp: Path):
        if tmp.stat().st_size != len(data) or tmp.read_bytes() != data:
            raise UserError(f"could not write {what} {path}: only {tmp.stat().st_size} of {len(data)} bytes were "
                            "written (disk full?); nothing was saved")

    with atomic_path(path, what=what, verify=verify, exclusive=exclusive) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "output", *, exclusive: bool = False) -> None:
    """Write UTF-8 text atomically (verified read-back)."""
    write_bytes_atomic(path, text.encode("utf-8"), what, exclusive=exclusive)


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2, what: str = "output", *,
                      exclusive: bool = False) -> None:
    """Write JSON atomically (numpy values and paths converted; verified read-back)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n", what,
                      exclusive=exclusive)


def verify_image_file(path: str | os.PathLike, img: sitk.Image, final=None, what: str = "image") -> None:
    """UserError unless ``path`` reads back as ``img`` (complete gzip stream, same grid, same
    voxels; NaN/inf compare as 0 in NIfTI, whose reader zeroes them). ``final`` names the
    file in the message."""
    from .grids import same_grid
    from .images import gzip_complete

    p = Path(path)
    shown = final if final is not None else p
    name = str(shown).lower()
    bad = f"could not write {what} {shown}: the file written does not read back complete (disk full?); nothing was saved"
    if name.endswith(".gz") and not gzip_complete(p):
        raise UserError(bad)
    try:
        back = sitk.ReadImage(str(p))
    except RuntimeError:
        raise UserError(bad) from None
    if back.GetNumberOfComponentsPerPixel() != img.GetNumberOfComponentsPerPixel() or not same_grid(back, img):
        raise UserError(bad)
    a, b = sitk.GetArrayViewFromImage(img), sitk.GetArrayViewFromImage(back)
    if a.shape != b.shape:
        raise UserError(bad)
    if np.issubdtype(a.dtype, np.floating):
        if not np.array_equal(np.where(np.isfinite(a), a, 0), np.where(np.isfinite(b), b, 0)):
            raise UserError(bad)
    elif not np.array_equal(a, b):
        raise UserError(bad)


def write_image_atomic(img: sitk.Image, path: str | os.PathLike, compress: bool = True, what: str = "image", *,
                       exclusive: bool = False, verify: bool = True) -> None:
    """Write an image atomically; it is read back and compared (grid and voxels) before it is
    published (``verify=False`` skips the read-back, for large intermediate files only)."""
    def check(tmp: Path):
        if verify:
            verify_image_file(tmp, img, final=path, what=what)

    with atomic_path(path, what=what, verify=check, exclusive=exclusive) as tmp:
        sitk.WriteImage(img, str(tmp), compress)


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        return 1 << 62


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def json_safe(obj):
    """Plain JSON values from numpy scalars/arrays, with NaN and +/-inf as None (strict JSON:
    ``json.dumps(..., allow_nan=False)`` accepts the result), tuples as lists, paths as strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


# ---------------------------------------------------------------------------------------
# JSON-lines logs


def append_jsonl(path: str | os.PathLike, record: dict, what: str = "log") -> int:
    """Append one record to a JSON-lines log (created when missing; never rewritten), synced
    to disk before returning. Call it under the log's lock (:mod:`ClinicalMRICommonLib.locks`).

    A failed append (no space left, ...) leaves the log exactly as it was (the partial line is
    cut off again) and raises a UserError naming the log. A torn last line left by an earlier
    interrupted append (no newline at the end, not valid JSON) is cut off first, with an
    :class:`InputWarning`; a complete last record without its newline gets one. Returns the
    number of torn bytes removed (usually 0)."""
    p = Path(path)
    line = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode("utf-8")
    torn = 0
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as exc:
        raise UserError(os_error_message(exc, p, f"could not write {what}")) from None
    try:
        size = os.fstat(fd).st_size
        if size and pread(fd, 1, size - 1) != b"\n":
            keep, tail = _complete_prefix(fd, size)
            if _parses(tail):
                write_all(fd, b"\n")
            else:
                os.ftruncate(fd, keep)
                torn = size - keep
                warnings.warn(f"{what} {p}: its last line was incomplete (an interrupted write, {torn} bytes); "
                              "it was removed", InputWarning, stacklevel=2)
            size = os.fstat(fd).st_size
        try:
            write_all(fd, line)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise
    except OSError as exc:
        raise UserError(os_error_message(exc, p, f"could not write {what}")) from None
    finally:
        os.close(fd)
    return torn


def _complete_prefix(fd: int, size: int) -> tuple[int, bytes]:
    """(length up to and including the last newline, the bytes after it)."""
    pos, block = size, 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        chunk = pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            keep = start + i + 1
            return keep, pread(fd, size - keep, keep)
        pos = start
    return 0, pread(fd, size, 0)


def _parses(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def read_jsonl(path: str | os.PathLike, what: str, *, return_torn: bool = False):
    """The records of a JSON-lines log (none when the file is missing).

    A torn last line (no newline at the end and not valid JSON: an interrupted append) is not
    an error: it is ignored and reported -- returned as ``(records, torn_text)`` with
    ``return_torn=True``, else as an :class:`InputWarning`. A damaged line elsewhere, or a
    line that is not a JSON object, is a UserError naming the file, the line and ``what``
    (e.g. "reading log")."""
    p = Path(path)
    if not p.exists():
        return ([], None) if return_torn else []
    if p.is_dir():
        raise UserError(f"{p} is a folder, expected the {what} file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(os_error_message(exc, p, f"could not read {what}")) from None
    lines = data.split(b"\n")
    out, torn = [], None
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i == len(lines):  # the last piece, with no newline after it: an interrupted append
                torn = raw.decode("utf-8", "replace")
                break
            raise UserError(f"{p} line {i} is not valid JSON; the {what} is damaged") from None
        if not isinstance(rec, dict):
            raise UserError(f"{p} line {i} is not a JSON object; the {what} is damaged")
        out.append(rec)
    if return_torn:
        return out, torn
    if torn is not None:
        warnings.warn(f"{what} {p}: its last line is incomplete (an interrupted write, {len(torn)} characters); "
                      "it was ignored", InputWarning, stacklevel=2)
    return out


# ---------------------------------------------------------------------------------------
# Output paths: the one overwrite policy


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False, what: str = "output",
                      inputs: "list | tuple" = (), others: "list | tuple" = (), folder: bool = False) -> Path:
    """The one overwrite policy of the extension, for every file (or folder) a command writes.

    Refuses, with a UserError naming the path: an existing output unless ``overwrite``; an
    output that is one of the command's ``inputs`` (even with ``overwrite``: that would destroy
    the input); an output equal to another output of the same command (``others``); a folder
    where a file is expected and a file where a folder is expected (``folder``); a name longer
    than the file system allows; a path below a file."""
    p = Path(path)
    if str(path).strip() in ("", "."):
        raise UserError(f"{what} path is empty; give a file name")
    for i in inputs:
        if i is not None and str(i) and _same_file(p, Path(i)):
            raise UserError(f"{what} {p} is also an input of this command; writing it would destroy the input: "
                            "choose another output name")
    for o in others:
        if o is not None and str(o) and _same_file(p, Path(o)):
            raise UserError(f"{what} {p} is given for two outputs of this command; give each output its own name")
    if any(len(os.fsencode(part)) > NAME_MAX for part in p.parts):
        raise UserError(f"{what} {p}: the file name is too long (at most {NAME_MAX} bytes); choose a shorter name")
    _check_parents(p, what, "")
    if folder:
        if p.exists() and not p.is_dir():
            raise UserError(f"{what} {p} is a file; give a folder")
    elif p.is_dir():
        raise UserError(f"{what} path {p} is a folder; give a file name")
    if p.exists() and not overwrite and (not folder or any(p.iterdir())):
        raise UserError(f"{what} {p} already exists; choose another name or pass --overwrite to replace it")
    return p
