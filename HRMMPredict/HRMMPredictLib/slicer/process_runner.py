"""Long work in a separate process, watched from a GUI's main thread without blocking it.

The Slicer panel must not freeze while a case is predicted (pyradiomics and a DenseNet take
seconds to minutes), and Cancel must really stop the work. So the work runs in a child
process; this module holds everything about that which does not need Qt, so it is tested
with real subprocesses:

- :class:`ProcessRunner` starts the process in its own process group (POSIX: a new session;
  Windows: a new process group), reads its stdout and stderr in two daemon threads into one
  queue, and changes state only in :meth:`ProcessRunner.poll`, which the GUI calls from a
  timer on the main thread (in Slicer: a ``qt.QTimer``). No callback ever runs on a reader
  thread, so the GUI and the MRML scene are only touched from the main thread.
- :meth:`ProcessRunner.cancel` kills the whole process tree (the group, plus every
  descendant ``psutil`` can see when it is installed), not only the direct child.
- A small state machine (:class:`RunState`): ``idle -> running -> importing -> idle`` on
  success (the owner imports the results on the main thread between
  :meth:`~ProcessRunner.begin_import`, which :meth:`~ProcessRunner.poll` calls, and
  :meth:`~ProcessRunner.finish_import`), ``running -> cancelling -> idle`` on cancel, and
  ``running -> failed`` with a one-line :attr:`~ProcessRunner.error` on a non-zero exit.
- Structured messages: the child prints ``@@job {json}`` lines (:func:`emit_message`);
  :func:`parse_message` turns them back into dicts. Any other line is a log line.

The design follows the one of SlicerMONAIAuto3DSeg's ``MONAIAuto3DSegLib/process.py``
(reader thread + timer-drained queue + tree kill); the code here is written independently.
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
    """Where a :class:`ProcessRunner` is. The GUI turns Apply into Cancel while ``busy``."""

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
    """One line the child wrote: ``stream`` is "stdout" or "stderr"; ``message`` is the
    decoded ``@@job`` message (a dict with at least "kind") or None for a plain log line."""

    stream: str
    text: str
    message: dict | None = None


# ---------------------------------------------------------------------------------------
# The line protocol (child side and parent side)


def emit_message(kind: str, stream=None, **fields) -> None:
    """Print one structured message for the parent (``@@job {"kind": ..., ...}``) and flush.

    Values must be JSON-serialisable. Used by worker processes (e.g.
    ``HRMMPredictLib.slicer.predict_worker``) for progress, results and errors.
    """
    out = stream if stream is not None else sys.stdout
    out.write(MESSAGE_PREFIX + json.dumps({"kind": kind, **fields}, ensure_ascii=True) + "\n")
    out.flush()


def parse_message(line: str) -> dict | None:
    """The message of an ``@@job`` line, or None for any other line (also a damaged one)."""
    if not line.startswith(MESSAGE_PREFIX):
        return None
    try:
        message = json.loads(line[len(MESSAGE_PREFIX):])
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) and isinstance(message.get("kind"), str) else None


# ---------------------------------------------------------------------------------------
# Process tree


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
    """Kill ``proc`` and everything it started.

    POSIX: SIGKILL to the process group (the runner starts every child in a new session, so
    the group is the child and its descendants), then to any descendant psutil finds that
    left the group. Windows: ``taskkill /T /F`` (the tree), then ``proc.kill()``.
    """
    if proc.poll() is not None and os.name != "posix":
        return
    stragglers = _descendants(proc.pid)
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    else:  # pragma: no cover - Windows
        taskkill = shutil.which("taskkill")
        if taskkill:
            subprocess.run([taskkill, "/F", "/T", "/PID", str(proc.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False, creationflags=subprocess.CREATE_NO_WINDOW)
    for child in stragglers:
        try:
            child.kill()
        except Exception:  # already gone
            pass
    try:
        proc.kill()
    except OSError:
        pass


def worker_python() -> str:
    """The Python to run workers with: Slicer's ``PythonSlicer`` launcher when there is one
    (it sets up Slicer's libraries and paths; ``sys.executable`` inside Slicer is not a
    usable interpreter on every platform), otherwise this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


# ---------------------------------------------------------------------------------------
# The runner


@dataclass
class _Run:
    proc: subprocess.Popen
    threads: list[threading.Thread] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when the process was first seen to have exited


class ProcessRunner:
    """Run one child process at a time; see the module docstring for the states.

    Call :meth:`poll` regularly from the thread that owns the GUI; it returns the lines
    written since the previous call and makes every state change.
    """

    PIPE_GRACE_S = 5.0

    def __init__(self, max_log_lines: int = 400) -> None:
        self.state = RunState.IDLE
        self.returncode: int | None = None
        self.error = ""
        self.cancelled = False
        self.result: dict | None = None  # the last "result" message of the last run
        self.log: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self._queue: queue.Queue = queue.Queue()
        self._run: _Run | None = None
        self._last_error_line = ""
        self._last_stderr_line = ""
        self._error_message = ""

    # -- starting ----------------------------------------------------------------------

    def start(self, args: Sequence[str], *, env: Mapping[str, str] | None = None,
              base_env: Mapping[str, str] | None = None, cwd: str | None = None) -> bool:
        """Start ``args``; returns False (state FAILED, :attr:`error` says why) when the
        program cannot be started. Refuses (RuntimeError) while a run is in progress.

        The child's environment is ``base_env`` (default: this process's) updated with
        ``env``; in Slicer pass ``slicer.util.startupEnvironment()`` as ``base_env``, as
        ``launchConsoleProcess`` does, so the child does not inherit the application's
        library paths."""
        if self.state.busy:
            raise RuntimeError(f"a process is already {self.state.value}")
        self.returncode = None
        self.error = ""
        self.cancelled = False
        self.result = None
        self.log.clear()
        self._last_error_line = self._last_stderr_line = self._error_message = ""
        self._queue = queue.Queue()
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        full_env = dict(base_env) if base_env is not None else dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")  # progress lines arrive when written
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
        for stream_name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            thread = threading.Thread(target=self._read, args=(stream_name, stream, self._queue),
                                      name=f"ProcessRunner-{stream_name}", daemon=True)
            thread.start()
            run.threads.append(thread)
        self._run = run
        self.state = RunState.RUNNING
        return True

    @staticmethod
    def _read(stream_name: str, stream, out: queue.Queue) -> None:
        """Reader thread: only puts lines into the queue (never touches the runner's state)."""
        try:
            for line in iter(stream.readline, ""):
                out.put((stream_name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # pipe closed under us by a kill
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    # -- the main-thread side ----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._run.proc.pid if self._run else None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._run.started if self._run else 0.0

    def _drain(self) -> list[OutputLine]:
        """The lines the reader threads have queued so far."""
        lines: list[OutputLine] = []
        while True:
            try:
                stream_name, text = self._queue.get_nowait()
            except queue.Empty:
                return lines
            lines.append(self._line(stream_name, text))

    def poll(self) -> list[OutputLine]:
        """Drain the lines written since the last call and advance the state when the
        process has ended. Call from the GUI thread (a timer)."""
        lines = self._drain()
        run = self._run
        if run is None or self.state not in (RunState.RUNNING, RunState.CANCELLING):
            return lines
        if run.proc.poll() is None:
            return lines
        if run.ended is None:
            run.ended = time.monotonic()
        # A grandchild that outlives the child may hold the pipes open: wait a little for
        # the last lines, not for ever.
        if any(t.is_alive() for t in run.threads) and time.monotonic() - run.ended < self.PIPE_GRACE_S:
            return lines
        # ended, and both pipes are drained: take the last lines, then decide
        lines += self._drain()
        self.returncode = run.proc.returncode
        self._run = None
        if self.state == RunState.CANCELLING:
            self.state = RunState.IDLE
        elif self.returncode == 0:
            self.begin_import()
        else:
            self.state = RunState.FAILED
            self.error = self._one_line_error(self.returncode)
        return lines

    def _line(self, stream_name: str, text: str) -> OutputLine:
        message = parse_message(text)
        if message is None:
            self.log.append(text if stream_name == "stdout" else f"[stderr] {text}")
            stripped = text.strip()
            if stream_name == "stderr" and stripped:
                self._last_stderr_line = stripped
                if stripped.startswith("error: "):
                    self._last_error_line = stripped[len("error: "):]
        elif message["kind"] == "error":
            self._error_message = str(message.get("message", "")).strip()
        elif message["kind"] == "result":
            self.result = message
        return OutputLine(stream_name, text, message)

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

    # -- cancel and import -------------------------------------------------------------

    def cancel(self) -> None:
        """Kill the process tree; :meth:`poll` then goes to IDLE once it has ended."""
        if self.state != RunState.RUNNING or self._run is None:
            return
        self.cancelled = True
        self.state = RunState.CANCELLING
        kill_process_tree(self._run.proc)

    def begin_import(self) -> None:
        self.state = RunState.IMPORTING

    def finish_import(self, error: str | None = None) -> None:
        """The owner has imported the results (``error``: why that failed, one line)."""
        if self.state != RunState.IMPORTING:
            raise RuntimeError(f"no results are being imported (state {self.state.value})")
        if error:
            self.state = RunState.FAILED
            self.error = error.splitlines()[0] if error.strip() else "importing the results failed"
        else:
            self.state = RunState.IDLE

    def wait(self, timeout: float, interval: float = 0.02) -> list[OutputLine]:
        """Poll until the run has left RUNNING/CANCELLING or ``timeout`` seconds passed
        (for scripts and tests; a GUI polls from a timer instead)."""
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
