"""ClinicalMRICommonLib.process_runner and job_worker with real child processes (issue 11,
defect 13: long panel work in a separate process with progress and Cancel)."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from ClinicalMRICommonLib import job_worker
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.process_runner import MESSAGE_PREFIX, ProcessRunner, RunState, parse_message


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_progress_result_and_states():
    code = ("from ClinicalMRICommonLib.process_runner import emit_message as e; import time\n"
            "e('progress', message='reading', fraction=0.25); print('a log line', flush=True)\n"
            "e('progress', message='writing', fraction=0.75); e('result', path='/x/result.json')\n")
    runner = ProcessRunner()
    assert runner.start(_python(code)) and runner.state == RunState.RUNNING and runner.state.busy
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(_python("pass"))
    lines = runner.wait(60)
    assert runner.state == RunState.IMPORTING
    assert [l.message["message"] for l in lines if l.message and l.message["kind"] == "progress"] == \
        ["reading", "writing"]
    assert runner.progress == ("writing", 0.75)
    assert runner.result["path"] == "/x/result.json" and list(runner.log) == ["a log line"]
    runner.finish_import()
    assert runner.state == RunState.IDLE
    with pytest.raises(RuntimeError, match="no result is being imported"):
        runner.finish_import()


def test_failure_gives_one_line_error():
    code = ("import sys; from ClinicalMRICommonLib.process_runner import emit_message as e\n"
            "e('error', message='dataset folder /d is not empty\\nsecond line'); sys.exit(2)\n")
    runner = ProcessRunner()
    runner.start(_python(code))
    runner.wait(60)
    assert runner.state == RunState.FAILED and runner.returncode == 2
    assert runner.error == "dataset folder /d is not empty"
    runner.start(_python("import sys; print('error: no space left on device', file=sys.stderr); sys.exit(1)"))
    runner.wait(60)
    assert runner.error == "no space left on device"
    assert not ProcessRunner().start(["/nonexistent/python"]) or pytest.fail("started a missing program")


def test_cancel_kills_the_whole_process_tree():
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print('grandchild', child.pid, flush=True); time.sleep(120)\n")
    runner = ProcessRunner()
    runner.start(_python(code))
    grandchild = None
    deadline = time.monotonic() + 60
    while grandchild is None and time.monotonic() < deadline:
        for line in runner.poll():
            if line.text.startswith("grandchild"):
                grandchild = int(line.text.split()[1])
        time.sleep(0.02)
    assert grandchild is not None
    runner.cancel()
    assert runner.state == RunState.CANCELLING
    runner.wait(30)
    assert runner.state == RunState.IDLE and runner.cancelled
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        try:  # reap it if it became our zombie (it was re-parented to init otherwise)
            os.waitpid(grandchild, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {grandchild} still runs after Cancel")


def test_message_protocol():
    assert parse_message(MESSAGE_PREFIX + json.dumps({"kind": "progress", "message": "x"}))["message"] == "x"
    assert parse_message(MESSAGE_PREFIX + "{not json") is None
    assert parse_message(MESSAGE_PREFIX + json.dumps({"no": "kind"})) is None
    assert parse_message("plain line") is None


def test_job_requests_name_only_listed_jobs_of_the_extension(tmp_path):
    with pytest.raises(ValueError, match="not in the extension's packages"):
        job_worker.write_request(tmp_path, "os:system", {})
    with pytest.raises(ValueError, match="package.module:function"):
        job_worker.write_request(tmp_path, "StrokeLesionLib.panel_logic", {})
    with pytest.raises(ValueError, match="not one of the jobs"):
        job_worker.resolve_job("StrokeLesionLib.panel_logic:export_dataset")  # a function, but not a JOB
    with pytest.raises(ValueError):
        job_worker.write_request(tmp_path, "StrokeLesionLib.panel_logic:export_job", {"x": float("nan")})
    request = job_worker.write_request(tmp_path, "StrokeLesionLib.panel_logic:acceptance_job", {"dataset": "/d"})
    data = json.loads(request.read_text())
    assert data["function"] == "StrokeLesionLib.panel_logic:acceptance_job" and data["kwargs"] == {"dataset": "/d"}
    command = job_worker.job_command(request, job_worker.package_folders("ClinicalMRICommonLib", "StrokeLesionLib"))
    assert command[1].endswith("ClinicalMRICommonLib/job_worker.py") and command[-2:] == ["--request", str(request)]
    assert command.count("--module-path") == 2


def test_a_job_user_error_ends_as_one_line_in_the_panel(tmp_path):
    """The worker process (its own interpreter, started by path) runs a panel job; a user
    error there is exit status 2 and one line, no traceback."""
    with pytest.raises(UserError, match=r"^.*missing-dataset.*$") as info:
        job_worker.run_job("StrokeLesionLib.panel_logic:acceptance_job", {"dataset": str(tmp_path / "missing-dataset")},
                           tmp_path / "job", packages=("StrokeLesionLib",), timeout=300)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
