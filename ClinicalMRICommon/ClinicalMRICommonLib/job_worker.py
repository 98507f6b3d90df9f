"""The child process a panel runs long work in: one job function of the extension's libraries.

The panel (main thread) writes what to do into a job folder with :func:`write_request` and
starts :func:`job_command` with :class:`~ClinicalMRICommonLib.process_runner.ProcessRunner`::

    PythonSlicer .../ClinicalMRICommonLib/job_worker.py --module-path <folder> ... --request <job>/request.json

The worker imports the job's module, calls the function with the request's keyword arguments
and a ``progress(message, fraction=None)`` callback, writes the returned dict to
``result.json`` (atomically, strict JSON) and reports through ``@@job`` lines
(:mod:`~ClinicalMRICommonLib.process_runner`): ``progress`` while it works, then one ``result``
message; or one ``error`` message (a user error: exit status 2, ``error: ...`` on stderr; an
unexpected failure: exit status 1, traceback on stderr).

Only functions a library lists in its module-level ``JOBS`` tuple can be run, and only from
the extension's own packages (:data:`PACKAGES`): a request file cannot run arbitrary code.
Run as a script by path, the file puts its package's folder and each ``--module-path`` on
``sys.path`` itself (Slicer adds the module folders to ``sys.path`` at run time, so a
``PythonSlicer`` child started with Slicer's start-up environment does not have them).
Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

if __name__ == "__main__":  # run by path: import the package, not sibling files
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))
    for _i, _arg in enumerate(sys.argv[:-1]):
        if _arg == "--module-path":
            sys.path.insert(0, sys.argv[_i + 1])

REQUEST_FORMAT = "clinicalmri-job"
REQUEST_VERSION = 1
REQUEST_NAME = "request.json"
RESULT_NAME = "result.json"
#: The packages whose listed JOBS a request may name.
PACKAGES = ("ClinicalMRICommonLib", "AnnotationQCLib", "StrokeLesionLib", "HRMMPredictLib")

__all__ = ["PACKAGES", "REQUEST_NAME", "RESULT_NAME", "job_command", "main", "package_folders", "read_result",
           "resolve_job", "run_job", "run_request", "write_request"]


def _split(function: str) -> tuple[str, str]:
    module, sep, name = function.partition(":")
    if not sep or not module or not name.isidentifier():
        raise ValueError(f"job function {function!r} must be 'package.module:function'")
    if module.split(".")[0] not in PACKAGES:
        raise ValueError(f"job function {function!r} is not in the extension's packages ({', '.join(PACKAGES)})")
    return module, name


def resolve_job(function: str):
    """The callable of ``"package.module:function"``; it must be listed in the module's
    ``JOBS``."""
    module_name, name = _split(function)
    module = importlib.import_module(module_name)
    if name not in getattr(module, "JOBS", ()):
        raise ValueError(f"{module_name}.{name} is not one of the jobs {module_name} lists in JOBS")
    return getattr(module, name)


def write_request(folder: str | os.PathLike, function: str, kwargs: dict) -> Path:
    """Write a job request into the (panel's temporary) job folder; returns the file."""
    from ClinicalMRICommonLib.files import write_json_atomic

    _split(function)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    request = {"format": REQUEST_FORMAT, "version": REQUEST_VERSION, "function": function,
               "kwargs": json.loads(json.dumps(kwargs, allow_nan=False)),  # refuse what JSON cannot carry
               "result": str((folder / RESULT_NAME).resolve())}
    path = folder / REQUEST_NAME
    write_json_atomic(path, request)
    return path


def job_command(request_path: str | os.PathLike, module_paths=(), *, python: str | None = None) -> list[str]:
    """The command line that runs this worker by path on ``request_path`` (what the panel
    starts); ``module_paths`` are the folders holding the job's library packages."""
    from ClinicalMRICommonLib.process_runner import worker_python

    args = [python or worker_python(), str(Path(__file__).resolve())]
    for folder in module_paths:
        args += ["--module-path", str(folder)]
    return args + ["--request", str(request_path)]


def package_folders(*packages: str) -> list[str]:
    """The folders holding these packages (what the worker needs on ``sys.path``), found
    without importing them."""
    import importlib.util

    folders = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"package {name} is not importable here")
        folder = str(Path(list(spec.submodule_search_locations)[0]).resolve().parent)
        if folder not in folders:
            folders.append(folder)
    return folders


def run_job(function: str, kwargs: dict, folder: str | os.PathLike, *, packages=(), timeout: float = 3600.0,
            progress=None, base_env=None, runner=None) -> dict:
    """Run a job in a worker process and wait for it (scripts, module tests; a panel polls
    :class:`~ClinicalMRICommonLib.process_runner.ProcessRunner` from a timer instead).
    ``packages``: the library packages the job needs (their folders go on the worker's
    ``sys.path``). Returns the job's result; UserError with the worker's one-line error."""
    from ClinicalMRICommonLib.errors import UserError
    from ClinicalMRICommonLib.process_runner import ProcessRunner, RunState

    runner = runner or ProcessRunner()
    request = write_request(folder, function, kwargs)
    module_paths = package_folders("ClinicalMRICommonLib", *packages)
    if not runner.start(job_command(request, module_paths), base_env=base_env):
        raise UserError(runner.error)
    for line in runner.wait(timeout):
        if progress is not None and line.message and line.message["kind"] == "progress":
            progress(line.message.get("message", ""))
    if runner.state == RunState.RUNNING:
        runner.cancel()
        runner.wait(30)
        raise UserError(f"the job took more than {timeout:.0f} s and was stopped")
    if runner.state != RunState.IMPORTING:
        raise UserError(runner.error or "the job failed")
    try:
        result = read_result(runner.result["path"] if runner.result else Path(folder) / RESULT_NAME)
    except UserError as exc:
        runner.finish_import(str(exc))
        raise
    runner.finish_import()
    return result


def _read_json_object(path: str | os.PathLike, what: str) -> dict:
    from ClinicalMRICommonLib.errors import UserError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a JSON object")
    return data


def _read_request(path: str | os.PathLike) -> dict:
    from ClinicalMRICommonLib.errors import UserError

    request = _read_json_object(path, "job request")
    if request.get("format") != REQUEST_FORMAT or request.get("version") != REQUEST_VERSION:
        raise UserError(f"{path} is not a version-{REQUEST_VERSION} {REQUEST_FORMAT} request")
    return request


def run_request(path: str | os.PathLike, progress=None) -> dict:
    """Run the job of a request file and write its result; returns the result."""
    from ClinicalMRICommonLib.files import json_safe, write_json_atomic

    request = _read_request(path)
    function = resolve_job(request["function"])
    result = function(**request.get("kwargs", {}), progress=progress or (lambda message, fraction=None: None))
    result = json_safe(result if isinstance(result, dict) else {"value": result})
    write_json_atomic(request["result"], result)
    return result


def read_result(path: str | os.PathLike) -> dict:
    """The result a job wrote (the panel reads it on the main thread)."""
    return _read_json_object(path, "the job's result")


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring for the exit statuses)."""
    from ClinicalMRICommonLib.errors import UserError, os_error_message
    from ClinicalMRICommonLib.process_runner import emit_message

    parser = argparse.ArgumentParser(prog="job_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--module-path", action="append", default=[],
                        help="folder to put on sys.path (a folder holding a library package)")
    parser.add_argument("--request", required=True, help="request.json written by write_request")
    args = parser.parse_args(argv)

    def progress(message, fraction=None):
        emit_message("progress", message=str(message), fraction=fraction)

    try:
        run_request(args.request, progress=progress)
        emit_message("result", path=_read_request(args.request)["result"])
        return 0
    except (UserError, OSError) as exc:
        text = os_error_message(exc, exc.filename) if isinstance(exc, OSError) else str(exc)
        message = text.splitlines()[0] if text.strip() else "the job failed"
        emit_message("error", message=message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - report anything else with its traceback
        traceback.print_exc()
        emit_message("error", message=f"{type(exc).__name__}: {exc}".splitlines()[0])
        return 1


if __name__ == "__main__":
    sys.exit(main())
