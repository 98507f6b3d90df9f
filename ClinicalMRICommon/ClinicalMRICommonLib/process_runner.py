"""Long work in a child process, watched from the GUI's main thread: progress, Cancel, result.

The panels must not freeze while long work runs (a BIDS export with the official validator,
an acceptance report, a prediction), and Cancel must stop the work for real. The work runs
in a child process (:mod:`ClinicalMRICommonLib.job_worker` runs any job function of the
project's libraries); this module is everything about that which needs no Qt, so it is
tested with real processes:

- :class:`ProcessRunner` starts the child in its own process group (POSIX: a new session;
  Windows: a new process group) and reads its stdout and stderr in two daemon threads into
  one queue. State changes only in :meth:`ProcessRunner.poll`, which the GUI calls from a
  timer on the main thread (``qt.QTimer``): nothing ever runs on a reader thread, so widgets
  and the MRML scene are touched from the main thread only.
- :meth:`ProcessRunner.cancel` kills the whole process tree (the group, and every descendant
  ``psutil`` can see when it is installed), not only the direct child.
- States (:class:`RunState`): ``idle -> running -> importing -> idle`` on success (the owner
  takes the result on the main thread, then calls :meth:`~ProcessRunner.finish_import`),
  ``running -> cancelling -> idle`` on Cancel, ``running -> failed`` with a one-line
  :attr:`~ProcessRunner.error` on a non-zero exit status.
- Messages: the child prints ``@@job {json}`` lines (:func:`emit_message`), parsed back by
  :func:`parse_message`: ``progress`` (``message``, optional ``fraction`` 0..1, kept in
  :attr:`ProcessRunner.progress`), ``result`` (kept in :attr:`ProcessRunner.result`),
  ``error`` (the one-line error). Any other line is a log line (:attr:`ProcessRunner.log`).

The owner's contract while :attr:`RunState.busy`: the buttons that start work are disabled
(no re-entrant clicks) and one Cancel button is enabled.

The design is that of HRMMPredict's first runner (itself after SlicerMONAIAuto3DSeg's
reader thread + timer-drained queue + tree kill), generalised for every panel; only the
standard library is imported.
"""

from __future__ import annotations

import collections
import enum
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

MESSAGE_PREFIX = "@@job "

__all__ = [
    "MESSAGE_PREFIX",
    "OutputLine",
    "ProcessRunner",
    "RunState",
    "emit_message",
    "kill_process_tree",
    "parse_message",
    "worker_python",
]


class RunState(enum.Enum):
    """Where a :class:`ProcessRunner` is."""

    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    IMPORTING = "importing"
    FAILED = "failed"

    @property
    def busy(self) -> bool:
        return self in (RunState.RUNNING, RunState.CANCELLING, RunState.IMPORTING)


@dataclass(frozen=True)
class OutputLine:
    """One line of the child: ``stream`` is "stdout" or "stderr"; ``message`` the decoded
    ``@@job`` message (a dict with at least "kind") or None for a log line."""

    stream: str
    text: str
    message: dict | None = None


# ---------------------------------------------------------------------------------------
# The line protocol


def emit_message(kind: str, stream=None, **fields) -> None:
    """Print one message for the parent (``@@job {"kind": ..., ...}``) and flush it.
    Values must be JSON-serialisable."""
    out = stream if stream is not None else sys.stdout
    out.write(MESSAGE_PREFIX + json.dumps({"kind": kind, **fields}, ensure_ascii=True, allow_nan=False) + "\n")
    out.flush()


def parse_message(line: str) -> dict | None:
    """The message of an ``@@job`` line; None for any other line (a damaged one too)."""
    if not line.startswith(MESSAGE_PREFIX):
        return None
    try:
        message = json.loads(line[len(MESSAGE_PREFIX):])
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) and isinstance(message.get("kind"), str) else None


# ---------------------------------------------------------------------------------------
# The process tree


def _descendants(pid: int) -> list:
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and everything it started: POSIX SIGKILL to its process group (the
    runner starts each child in a new session), then to descendants psutil finds outside
    the group; Windows ``taskkill /T /F``."""
    stragglers = _descendants(proc.pid)
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    else:  # pragma: no cover - Windows
        taskkill = shutil.which("taskkill")
        if taskkill and proc.poll() is None:
            subprocess.run([taskkill, "/F", "/T", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False, creationflags=subprocess.CREATE_NO_WINDOW)
    for child in stragglers:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    try:
        proc.kill()
    except OSError:
        pass


def worker_python() -> str:
    """The interpreter for workers: Slicer's ``PythonSlicer`` launcher where there is one (it
    sets up Slicer's libraries; ``sys.executable`` inside Slicer is not a usable interpreter on
    every platform), otherwise this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


# ---------------------------------------------------------------------------------------
# The runner


@dataclass
class _Run:
    proc: subprocess.Popen
    threads: list[threading.Thread] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


class ProcessRunner:
    """One child process at a time; see the module docstring. Call :meth:`poll` regularly
    from the GUI thread; it returns the lines written since the last call."""

    PIPE_GRACE_S = 5.0

    def __init__(self, max_log_lines: int = 400) -> None:
        self.state = RunState.IDLE
        self.returncode: int | None = None
        self.error = ""
        self.cancelled = False
        self.result: dict | None = None
        self.progress: tuple[str, float | None] = ("", None)
        self.log: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self._queue: queue.Queue = queue.Queue()
        self._run: _Run | None = None
        self._error_message = self._last_error_line = self._last_stderr_line = ""

    def start(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
              base_env: Mapping[str, str] | None = None, cwd: str | None = None) -> bool:
        """Start ``args``; False (state FAILED, :attr:`error` says why) when it cannot be
        started. RuntimeError while a run is in progress.

        The child's environment is ``base_env`` (default: this process's) updated with
        ``env``; in Slicer pass ``slicer.util.startupEnvironment()`` as ``base_env`` (what
        ``slicer.util.launchConsoleProcess`` does), so the child does not inherit the
        application's library paths."""
        if self.state.busy:
            raise RuntimeError(f"a process is already {self.state.value}")
        self.returncode, self.error, self.cancelled, self.result = None, "", False, None
        self.progress = ("", None)
        self.log.clear()
        self._error_message = self._last_error_line = self._last_stderr_line = ""
        self._queue = queue.Queue()
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        full_env = dict(base_env) if base_env is not None else dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env.setdefault("PYTHONIOENCODING", "utf-8")
        try:
            proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                    bufsize=1, env=full_env, cwd=cwd, **kwargs)
        except OSError as exc:
            self.state = RunState.FAILED
            self.error = f"could not start {args[0]}: {exc.strerror or exc}"
            return False
        run = _Run(proc)
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            thread = threading.Thread(target=self._read, args=(name, stream, self._queue),
                                      name=f"ProcessRunner-{name}", daemon=True)
            thread.start()
            run.threads.append(thread)
        self._run = run
        self.state = RunState.RUNNING
        return True

    @staticmethod
    def _read(name: str, stream, out: queue.Queue) -> None:
        """Reader thread: only puts lines into the queue."""
        try:
            for line in iter(stream.readline, ""):
                out.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # the pipe was closed under us by a kill
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    @property
    def pid(self) -> int | None:
        return self._run.proc.pid if self._run else None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._run.started if self._run else 0.0

    def _drain(self) -> list[OutputLine]:
        lines = []
        while True:
            try:
                name, text = self._queue.get_nowait()
            except queue.Empty:
                return lines
            lines.append(self._line(name, text))

    def poll(self) -> list[OutputLine]:
        """The lines written since the last call; advances the state once the process has
        ended and both pipes are drained."""
        lines = self._drain()
        run = self._run
        if run is None or self.state not in (RunState.RUNNING, RunState.CANCELLING) or run.proc.poll() is None:
            return lines
        if run.ended is None:
            run.ended = time.monotonic()
        # a grandchild that outlives the child may hold the pipes open: wait a little, not for ever
        if any(t.is_alive() for t in run.threads) and time.monotonic() - run.ended < self.PIPE_GRACE_S:
            return lines
        lines += self._drain()
        self.returncode = run.proc.returncode
        self._run = None
        if self.state == RunState.CANCELLING:
            self.state = RunState.IDLE
        elif self.returncode == 0:
            self.state = RunState.IMPORTING
        else:
            self.state = RunState.FAILED
            self.error = self._one_line_error(self.returncode)
        return lines

    def _line(self, name: str, text: str) -> OutputLine:
        message = parse_message(text)
        if message is None:
            self.log.append(text if name == "stdout" else f"[stderr] {text}")
            stripped = text.strip()
            if name == "stderr" and stripped:
                self._last_stderr_line = stripped
                if stripped.startswith("error: "):
                    self._last_error_line = stripped[len("error: "):]
        elif message["kind"] == "progress":
            fraction = message.get("fraction")
            self.progress = (str(message.get("message", "")),
                             float(fraction) if isinstance(fraction, (int, float)) else None)
        elif message["kind"] == "error":
            self._error_message = str(message.get("message", "")).strip()
        elif message["kind"] == "result":
            self.result = message
        return OutputLine(name, text, message)

    def _one_line_error(self, returncode: int) -> str:
        for candidate in (self._error_message, self._last_error_line, self._last_stderr_line):
            if candidate:
                return candidate.splitlines()[0]
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            return f"the process was killed by {name} (out of memory?)"
        return f"the process exited with status {returncode}"

    def cancel(self) -> None:
        """Kill the process tree; :meth:`poll` goes to IDLE once it has ended."""
        if self.state != RunState.RUNNING or self._run is None:
            return
        self.cancelled = True
        self.state = RunState.CANCELLING
        kill_process_tree(self._run.proc)

    def finish_import(self, error: str | None = None) -> None:
        """The owner has taken the result (``error``: why that failed, one line)."""
        if self.state != RunState.IMPORTING:
            raise RuntimeError(f"no result is being imported (state {self.state.value})")
        if error:
            self.state = RunState.FAILED
            self.error = error.splitlines()[0] if error.strip() else "importing the result failed"
        else:
            self.state = RunState.IDLE

    def wait(self, timeout: float, interval: float = 0.02) -> list[OutputLine]:
        """Poll until the run has left RUNNING/CANCELLING or ``timeout`` seconds passed (for
        scripts and tests; a GUI polls from a timer)."""
        lines: list[OutputLine] = []
        deadline = time.monotonic() + timeout
        while True:
            lines += self.poll()
            if self.state not in (RunState.RUNNING, RunState.CANCELLING) or time.monotonic() > deadline:
                return lines
            time.sleep(interval)

    def close(self) -> None:
        """Kill a run still in progress (the panel is being destroyed)."""
        if self._run is not None:
            kill_process_tree(self._run.proc)
            try:
                self._run.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._run = None
        self.state = RunState.IDLE
