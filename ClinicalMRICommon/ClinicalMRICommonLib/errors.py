"""User-facing errors and the one command-line runner of the extension's three tools.

A :class:`UserError` is a problem with the user's input or environment: it is reported as
one line ``error: ...`` naming the user's file and saying what to do, with exit status 2,
never as a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    The message names the file or value and says what to do.
    """


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command-line entry point; turn UserError (and a few common OS errors) into
    a one-line ``error: ...`` on stderr and exit status 2."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
