"""The HRMMPredict panel's background process (ClinicalMRICommonLib.process_runner) and its
worker (HRMMPredictLib.slicer.predict_worker), with real subprocesses: what the panel's Qt
timer drains.

Each child script synchronises with the test through files or its own messages, so nothing
depends on timing except generous timeouts."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ClinicalMRICommonLib.process_runner import (
    MESSAGE_PREFIX,
    ProcessRunner,
    RunState,
    emit_message,
    parse_message,
    worker_python,
)
from HRMMPredictLib.slicer.predict_worker import REQUEST_NAME, read_request, worker_command

SRC = Path(__file__).resolve().parents[3]  # the project (Testing/hrmm/panel/this file)
LIB_PATHS = [str(SRC / "HRMMPredict"), str(SRC / "ClinicalMRICommon")]
TIMEOUT = 30.0


def python_script(tmp_path: Path, body: str) -> list[str]:
    """A child Python with the project's Lib folders importable, running ``body``."""
    script = tmp_path / "child.py"
    script.write_text("import sys\nsys.path[:0] = %r\n" % LIB_PATHS + textwrap.dedent(body))
    return [sys.executable, str(script)]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (Linux /proc; kill(0) elsewhere)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout=TIMEOUT, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_message_protocol_round_trip(capsys):
    emit_message("progress", message="extracting 3 feature(s) from T2WI", step=2)
    line = capsys.readouterr().out.rstrip("\n")
    assert line.startswith(MESSAGE_PREFIX)
    assert parse_message(line) == {"kind": "progress", "message": "extracting 3 feature(s) from T2WI", "step": 2}
    assert parse_message("pyradiomics: calculating features") is None
    assert parse_message(MESSAGE_PREFIX + "{damaged") is None
    assert parse_message(MESSAGE_PREFIX + '{"no": "kind"}') is None


def test_progress_lines_arrive_while_the_process_runs(tmp_path):
    go = tmp_path / "go"
    args = python_script(tmp_path, f"""
        import pathlib, time
        from ClinicalMRICommonLib.process_runner import emit_message
        emit_message("progress", message="reading the case")
        print("a plain log line", flush=True)
        while not pathlib.Path({str(go)!r}).exists():  # wait until the test has seen the first lines
            time.sleep(0.01)
        emit_message("progress", message="extracting features")
        emit_message("result", path="result.json")
    """)
    runner = ProcessRunner()
    assert runner.start(args) and runner.state is RunState.RUNNING and runner.state.busy
    seen = []
    assert wait_for(lambda: seen.extend(runner.poll()) or len(seen) >= 2)
    # the child is still running (it waits for us), yet its first lines are here
    assert runner.state is RunState.RUNNING
    assert seen[0].message == {"kind": "progress", "message": "reading the case"}
    assert seen[1].stream == "stdout" and seen[1].text == "a plain log line" and seen[1].message is None
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(args)
    go.touch()
    seen += runner.wait(TIMEOUT)
    assert [line.message["message"] for line in seen if line.message and line.message["kind"] == "progress"] == \
        ["reading the case", "extracting features"]
    assert runner.state is RunState.IMPORTING and runner.returncode == 0
    assert runner.result == {"kind": "result", "path": "result.json"}
    assert list(runner.log) == ["a plain log line"]
    runner.finish_import()
    assert runner.state is RunState.IDLE and not runner.state.busy


def test_cancel_kills_the_whole_process_tree(tmp_path):
    args = python_script(tmp_path, """
        import subprocess, sys, time
        from ClinicalMRICommonLib.process_runner import emit_message
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        emit_message("started", child=child.pid)
        time.sleep(120)
    """)
    runner = ProcessRunner()
    runner.start(args)
    pids = {}

    def grandchild_started():
        for line in runner.poll():
            if line.message and line.message["kind"] == "started":
                pids["grandchild"] = line.message["child"]
        return "grandchild" in pids

    assert wait_for(grandchild_started)
    worker_pid, grandchild_pid = runner.pid, pids["grandchild"]
    assert pid_alive(worker_pid) and pid_alive(grandchild_pid)
    started = time.monotonic()
    runner.cancel()
    assert runner.state is RunState.CANCELLING and runner.state.busy
    runner.wait(TIMEOUT)
    assert runner.state is RunState.IDLE and runner.cancelled
    assert time.monotonic() - started < 10  # not the 120 s the child meant to sleep
    assert runner.returncode is not None and runner.returncode < 0  # killed by a signal
    assert not pid_alive(worker_pid)
    assert wait_for(lambda: not pid_alive(grandchild_pid), timeout=10), "the worker's own child survived Cancel"
    assert runner.error == ""


def test_user_error_fails_with_its_one_line_message(tmp_path):
    args = python_script(tmp_path, """
        import sys
        print("Traceback-looking noise", file=sys.stderr)
        print("error: the ROI is empty on the T1WI grid; draw it on the largest involved vertebral body",
              file=sys.stderr)
        sys.exit(2)
    """)
    runner = ProcessRunner()
    runner.start(args)
    runner.wait(TIMEOUT)
    assert runner.state is RunState.FAILED and not runner.state.busy and runner.returncode == 2
    assert runner.error == "the ROI is empty on the T1WI grid; draw it on the largest involved vertebral body"
    # a failed run can be started again
    assert runner.start(python_script(tmp_path, "pass\n"))
    runner.wait(TIMEOUT)
    assert runner.state is RunState.IMPORTING and runner.error == ""


def test_crash_reports_the_last_line_of_the_traceback(tmp_path):
    runner = ProcessRunner()
    runner.start(python_script(tmp_path, "1 / 0\n"))
    runner.wait(TIMEOUT)
    assert runner.state is RunState.FAILED and runner.returncode == 1
    assert runner.error == "ZeroDivisionError: division by zero"
    assert any("Traceback" in line for line in runner.log)


def test_child_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HRMM_FROM_PARENT", "inherited")
    args = python_script(tmp_path, """
        import os
        from ClinicalMRICommonLib.process_runner import emit_message
        emit_message("env", parent=os.environ.get("HRMM_FROM_PARENT"), extra=os.environ.get("HRMM_EXTRA"),
                     unbuffered=os.environ.get("PYTHONUNBUFFERED"))
    """)
    runner = ProcessRunner()
    for kwargs, expected in (({"env": {"HRMM_EXTRA": "1"}}, {"parent": "inherited", "extra": "1"}),
                             # a base environment replaces this process's (Slicer: its startup environment)
                             ({"base_env": {k: v for k, v in os.environ.items() if k != "HRMM_FROM_PARENT"}},
                              {"parent": None, "extra": None})):
        runner.start(args, **kwargs)
        (message,) = [line.message for line in runner.wait(TIMEOUT) if line.message]
        assert runner.state is RunState.IMPORTING, runner.error
        runner.finish_import()
        assert message == {"kind": "env", "unbuffered": "1", **expected}


def test_program_that_cannot_start_fails_without_raising(tmp_path):
    runner = ProcessRunner()
    assert runner.start([str(tmp_path / "no-such-python")]) is False
    assert runner.state is RunState.FAILED
    assert runner.error.startswith(f"could not start {tmp_path / 'no-such-python'}: ")


def test_import_failure_is_a_failed_state(tmp_path):
    runner = ProcessRunner()
    runner.start(python_script(tmp_path, "pass\n"))
    runner.wait(TIMEOUT)
    runner.finish_import("result.json could not be read\nsecond line")
    assert runner.state is RunState.FAILED and runner.error == "result.json could not be read"
    with pytest.raises(RuntimeError, match="no result is being imported"):
        runner.finish_import()


# ---------------------------------------------------------------------------------------
# The worker


def test_worker_command_runs_the_file_by_path():
    args = worker_command("/tmp/job/request.json", python="/opt/Slicer/bin/PythonSlicer")
    assert args[0] == "/opt/Slicer/bin/PythonSlicer"
    assert Path(args[1]) == SRC / "HRMMPredict" / "HRMMPredictLib" / "slicer" / "predict_worker.py"
    assert args[2:4] == ["--module-path", str(SRC / "ClinicalMRICommon")]
    assert args[4:] == ["--request", "/tmp/job/request.json"]
    assert worker_python()  # PythonSlicer in Slicer, this interpreter here


def test_worker_bad_request_is_a_one_line_error(tmp_path):
    (tmp_path / REQUEST_NAME).write_text(json.dumps({"format": "something else"}))
    runner = ProcessRunner()
    runner.start(worker_command(tmp_path / REQUEST_NAME, python=sys.executable))
    lines = runner.wait(TIMEOUT)
    assert runner.state is RunState.FAILED and runner.returncode == 2
    assert runner.error == f"{tmp_path / REQUEST_NAME} is not an HRMMPredict prediction request"
    assert [line.message["kind"] for line in lines if line.message] == ["error"]


def test_worker_probe_device_reports_what_torch_finds():
    runner = ProcessRunner()
    runner.start(worker_command(probe=True, python=sys.executable))
    lines = runner.wait(120)
    assert runner.state is RunState.IMPORTING, runner.error
    (device,) = [line.message for line in lines if line.message and line.message["kind"] == "device"]
    import torch

    assert device["torch"] == torch.__version__
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in device["gpu"] and device["gpu_unavailable"] is None
    else:
        assert device["gpu"] is None and device["auto"].startswith("cpu")
        assert device["gpu_unavailable"].startswith("device 'cuda' requested, but")


def test_read_request_makes_paths_absolute(tmp_path):
    (tmp_path / REQUEST_NAME).write_text(json.dumps({
        "format": "hrmm-predict-request", "version": 1, "images": {"t1": "t1.mha"}, "roi": {"t1": "roi_t1.mha"},
        "model_dir": "/models/b", "device": "cpu"}))
    request = read_request(tmp_path / REQUEST_NAME)
    assert request["images"] == {"t1": str(tmp_path / "t1.mha")}
    assert request["roi"] == {"t1": str(tmp_path / "roi_t1.mha")}
    assert request["result"] == str(tmp_path / "result.json")
