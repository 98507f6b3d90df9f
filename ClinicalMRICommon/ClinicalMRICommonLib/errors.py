"""User-facing errors and the one command-line runner of the extension's three tools.

A :class:`UserError` is a problem with the user's input or environment: it is reported as
one line ``error: ...`` naming the user's file and saying what to do, with exit status 2,
never as a traceback. An :class:`InputWarning` is something the user should know about but
that does not stop the command (for example a label mask with several labels read as one
binary mask); :func:`run_cli` prints it as one line ``warning: ...``.

Every ``OSError`` (no space left, read-only file system, permission denied, name too long, a
parent that is a file, ...) is an expected failure too: :func:`os_error_message` says it in
words, naming the user's path, and :func:`run_cli` reports it as one ``error:`` line. The
atomic writer of :mod:`ClinicalMRICommonLib.files` raises UserErrors that name the final
path, never its hidden temporary file.

Only the standard library is imported here (the module files' start-up rule).
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from typing import Callable


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    The message names the file or value and says what to do.
    """


class InputWarning(UserWarning):
    """Something about the user's input worth a line on stderr (``warning: ...``), not an
    error: the command goes on. Raised with :func:`warnings.warn`, so tests can use
    ``pytest.warns(InputWarning)`` and library callers can filter or record it."""


#: What to say (and what to do) for the OS errors a command meets while reading or writing.
_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on the device (the disk is full); free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder you can write to",
    errno.EACCES: "permission denied; choose a path you may read or write, or ask for access",
    errno.EPERM: "operation not permitted; choose a path you may write to, or ask for access",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter name",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder, not a file; give a file name",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EEXIST: "it already exists",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another folder",
    errno.EIO: "input/output error (a failing disk or a lost network share); check the device",
    errno.ELOOP: "too many symbolic links in the path; check the path",
    errno.EMFILE: "too many open files; close other programs and try again",
    errno.ENODEV: "no such device; check the path",
    errno.ETXTBSY: "the file is in use; try again later",
}
for _name in ("ESTALE", "ENOTEMPTY", "EXDEV"):
    if hasattr(errno, _name):
        _ERRNO_TEXT[getattr(errno, _name)] = {
            "ESTALE": "stale network file handle; mount the share again",
            "ENOTEMPTY": "the folder is not empty",
            "EXDEV": "cannot move a file across devices; choose an output on the same disk",
        }[_name]


def os_error_reason(exc: BaseException) -> str:
    """The reason of an OSError in words (what happened and what to do)."""
    code = getattr(exc, "errno", None)
    if code in _ERRNO_TEXT:
        return _ERRNO_TEXT[code]
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0][:200]


def os_error_message(exc: OSError, path: str | os.PathLike | None = None, action: str = "") -> str:
    """One line for an OSError: ``[action ]PATH: reason``.

    ``path`` (the user's path) replaces the file name the OS reported, so a failure on a
    hidden temporary file is reported under the name the user gave."""
    name = os.fspath(path) if path is not None else (exc.filename if exc.filename is not None else "")
    name = os.fsdecode(name) if isinstance(name, bytes) else str(name)
    head = f"{action} {name}".strip() if action else name
    return f"{head}: {os_error_reason(exc)}" if head else os_error_reason(exc)


def _show_warning(message, category, filename, lineno, file=None, line=None):  # warnings API
    print(f"warning: {message}", file=file or sys.stderr)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command-line entry point and return its exit status.

    - :class:`UserError` -> one line ``error: <message>`` on stderr, status 2;
    - any ``OSError`` (no space left, read-only file system, permission denied, name too
      long, parent is a file, not a folder, ...) -> one line ``error: <path>: <reason>``,
      status 2 (a broken pipe on stdout, e.g. ``| head``, ends quietly with 0);
    - ``KeyboardInterrupt`` -> ``error: interrupted``, status 130;
    - :class:`InputWarning` -> one line ``warning: <message>`` each; the command goes on.
    """
    with warnings.catch_warnings():
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, InputWarning):
                _show_warning(message, category, filename, lineno, file, line)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", InputWarning)
        try:
            return int(main(argv) or 0)
        except UserError as exc:
            print(f"error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # output piped into e.g. `head`, which closed early
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            return 0
        except OSError as exc:
            print(f"error: {_one_line(os_error_message(exc))}", file=sys.stderr)
            return 2


def _one_line(text: str) -> str:
    """Messages are one line: later lines (e.g. from a library's error text) are joined."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip()) or "failed"
