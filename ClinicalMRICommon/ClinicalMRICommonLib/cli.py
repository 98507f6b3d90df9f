"""The one command-line convention of ``hrmm``, ``annotation-qc`` and ``stroke-lesion``.

Every tool builds its parser with :func:`tool_parser` and its subcommands with
:func:`add_command`, so all three have:

- ``--version`` (the extension's version);
- usage mistakes reported as one line ``error: ...`` with exit status 2 (no usage dump);
- the same exit codes (:data:`EXIT_CODES`): 0 done, 1 done with a negative verdict (NOT
  PASSED, NOT ACCEPTED), 2 bad input or a fault (one ``error:`` line, never a traceback);
- ``--json`` wherever a command prints data (:func:`add_json`, :func:`emit`);
- ``--overwrite`` wherever a command writes a file (:func:`add_overwrite`), with the one
  overwrite policy of :func:`ClinicalMRICommonLib.files.check_output_path`;
- help text on every option (``Testing/common/test_cli_conventions.py`` walks the parsers);
- a worked workflow example at the end of the tool's ``--help``.

Only the standard library is imported here (the module files' start-up rule).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import UserError

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_BAD_INPUT = 2

EXIT_CODES = {EXIT_OK: "done", EXIT_NEGATIVE: "done, with a negative verdict (NOT PASSED, NOT ACCEPTED)",
              EXIT_BAD_INPUT: "bad input or a fault: one 'error: ...' line on stderr, nothing half-written"}

EXIT_CODES_HELP = "exit status: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + "."


class Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as one-line UserErrors (exit 2 through run_cli)."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-made line breaks of descriptions and workflow examples."""


def tool_parser(prog: str, description: str, epilog: str = "") -> tuple[Parser, argparse._SubParsersAction]:
    """The top-level parser of a tool (with ``--version``) and its subcommand collection.

    ``epilog`` is the tool's worked workflow example; the exit codes are appended to it."""
    epilog = (epilog.rstrip() + "\n\n" if epilog.strip() else "") + EXIT_CODES_HELP
    p = Parser(prog=prog, description=description, epilog=epilog, formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"{prog} {__version__}",
                   help="print the version of the ClinicalMRI extension and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    return p, sub


def add_command(sub: argparse._SubParsersAction, name: str, help: str, *, description: str | None = None,
                epilog: str = "", aliases: tuple[str, ...] = ()) -> Parser:
    """A subcommand with its one-line ``help`` (listed by the tool's ``--help``) and an
    optional longer ``description`` and example ``epilog``."""
    return sub.add_parser(name, help=help, description=description or help, epilog=epilog or None,
                          formatter_class=_Formatter, aliases=list(aliases))


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: print ``what`` as one JSON document (strict JSON: NaN/inf become null)."""
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON (machine-readable) instead of text")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: allow replacing existing output files (refused by default)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (by default an existing output is refused); "
                        "an input is never overwritten")


def emit(obj, as_json: bool, text: str | None = None, stream=None) -> None:
    """Print a command's result: strict JSON with ``as_json``, else ``text``."""
    from .files import json_safe

    stream = stream or sys.stdout
    if as_json:
        print(json.dumps(json_safe(obj), indent=2, allow_nan=False), file=stream)
    elif text is not None:
        print(text, file=stream)


def iter_options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, action) for every option and positional of a parser and its
    subcommands (what the convention tests walk)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, child in action.choices.items():
                if id(child) in seen:
                    continue  # an alias of a command already walked
                seen.add(id(child))
                yield from iter_options(child, path + (name,))
        else:
            yield path, action
