"""Files: the one atomic writer for every output, file checksums, strict JSON and
append-only JSON-lines logs."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    A crash or error leaves the original file untouched and removes the temporary one.
    The temporary name keeps the final suffix(es) so writers that look at the extension
    (SimpleITK, pandas) still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the mode a normal open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def write_image_atomic(img: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)


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


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record to a JSON-lines log (created when missing; never rewritten), synced
    to disk before returning."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, what: str) -> list[dict]:
    """The records of a JSON-lines log (none when the file is missing); a damaged line is a
    UserError naming the file, the line and ``what`` (e.g. "reading log")."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{p} line {i} is not valid JSON; the {what} is damaged") from None
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
    where a file is expected and a file where a folder is expected (``folder``)."""
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
    if folder:
        if p.exists() and not p.is_dir():
            raise UserError(f"{what} {p} is a file; give a folder")
    elif p.is_dir():
        raise UserError(f"{what} path {p} is a folder; give a file name")
    if p.exists() and not overwrite and (not folder or any(p.iterdir())):
        raise UserError(f"{what} {p} already exists; choose another name or pass --overwrite to replace it")
    return p
