"""ClinicalMRICommonLib.locks with real processes: no lost update between two racing
processes, a SIGKILLed holder's lock taken over (and reported), a live holder named in the
timeout message, no empty stale lock on a full disk, exactly one winner of two concurrent
exclusive publications."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from faultlib import full_disk  # noqa: E402,F401  (pytest fixture)

from ClinicalMRICommonLib.errors import UserError  # noqa: E402
from ClinicalMRICommonLib.files import write_bytes_atomic  # noqa: E402
from ClinicalMRICommonLib.locks import (LOCK_NAME, acquire, folder_lock, lock, publish_exclusive,  # noqa: E402
                                        read_lock)

CTX = mp.get_context("fork")


def test_lock_records_its_holder_and_is_removed(tmp_path):
    with folder_lock(tmp_path / "case", command="stroke-lesion annotate") as lk:
        rec = json.loads((tmp_path / "case" / LOCK_NAME).read_text())
        assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
        assert rec["command"] == "stroke-lesion annotate" and rec["time"].endswith("Z")
        assert lk.took_over is None
        with folder_lock(tmp_path / "case"):  # re-entrant in one thread
            pass
        assert (tmp_path / "case" / LOCK_NAME).exists()
    assert not (tmp_path / "case" / LOCK_NAME).exists()
    assert [p.name for p in (tmp_path / "case").iterdir()] == []


def _increment(folder, n, start):
    start.wait()
    counter = Path(folder) / "counter.txt"
    for _ in range(n):
        with folder_lock(folder, timeout_s=30, poll_s=0.002):
            value = int(counter.read_text())
            time.sleep(0.001)  # widen the read-modify-write window
            counter.write_text(str(value + 1))


def test_two_processes_lose_no_update(tmp_path):
    (tmp_path / "counter.txt").write_text("0")
    start = CTX.Event()
    procs = [CTX.Process(target=_increment, args=(tmp_path, 40, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert int((tmp_path / "counter.txt").read_text()) == 80


def _hold(folder, ready, seconds):
    with folder_lock(folder, command="annotation-qc training-submit"):
        ready.set()
        time.sleep(seconds)


def test_live_holder_named_after_the_timeout(tmp_path):
    ready = CTX.Event()
    holder = CTX.Process(target=_hold, args=(tmp_path, ready, 5))
    holder.start()
    try:
        assert ready.wait(20)
        t0 = time.monotonic()
        with pytest.raises(UserError) as err:
            acquire(tmp_path / LOCK_NAME, what=f"case {tmp_path.name}", timeout_s=0.3)
        assert time.monotonic() - t0 < 3
        msg = str(err.value)
        assert f"is being written by pid {holder.pid}" in msg and socket.gethostname() in msg
        assert "since 20" in msg and "training-submit" in msg and "try again" in msg
    finally:
        holder.kill()
        holder.join()


def test_sigkilled_holder_is_taken_over_and_reported(tmp_path):
    ready = CTX.Event()
    holder = CTX.Process(target=_hold, args=(tmp_path, ready, 60))
    holder.start()
    assert ready.wait(20)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert read_lock(tmp_path / LOCK_NAME).pid == holder.pid  # left behind
    seen = []
    t0 = time.monotonic()
    with folder_lock(tmp_path, timeout_s=5, on_takeover=seen.append) as lk:
        assert lk.took_over.pid == holder.pid and seen == [lk.took_over]
    assert time.monotonic() - t0 < 2


def test_reused_pid_is_seen_through_the_free_flock(tmp_path):
    # a lock recorded by "pid 1" (alive: init) with an flock nobody holds: its holder is gone
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "time": "2020-01-01",
                                                  "flock": True}))
    with folder_lock(tmp_path, timeout_s=2) as lk:
        assert lk.took_over.pid == 1


def test_old_style_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = CTX.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid} 2024-05-01T10:00:00+00:00\n")  # stroke-lesion's format
    with folder_lock(tmp_path, timeout_s=2) as lk:
        assert lk.took_over.pid == dead.pid


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "other-workstation",
                                                  "time": "2024-05-01T10:00:00Z", "flock": True}))
    with pytest.raises(UserError, match=r"pid 999999 on host other-workstation since 2024-05-01T10:00:00Z; "
                                        r"try again .*remove"):
        acquire(tmp_path / LOCK_NAME, timeout_s=0.2)
    assert (tmp_path / LOCK_NAME).exists()


def test_full_disk_gives_an_error_and_no_empty_lock(full_disk):
    case = full_disk.path / "case"
    case.mkdir()
    full_disk.fill(leave=0)
    with pytest.raises(UserError, match=r"could not lock .*no space left"):
        with lock(case / LOCK_NAME, timeout_s=1):
            pass
    assert list(case.iterdir()) == []
    full_disk.empty()
    with folder_lock(case, timeout_s=1):
        pass


def _submit(folder, start, queue, name):
    start.wait()
    try:
        write_bytes_atomic(Path(folder) / "trainee_case1.nii.gz", name.encode() * 1000, "submission",
                           exclusive=True)
        queue.put(("won", name))
    except UserError as exc:
        queue.put(("lost", str(exc)))


@pytest.mark.parametrize("round_", range(5))
def test_exactly_one_of_two_concurrent_submissions_wins(tmp_path, round_):
    start, q = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_submit, args=(tmp_path, start, q, n)) for n in ("A", "B")]
    for p in procs:
        p.start()
    start.set()
    results = sorted(q.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    assert [r[0] for r in results] == ["lost", "won"]
    assert "already exists (already submitted?)" in results[0][1]
    assert (tmp_path / "trainee_case1.nii.gz").read_bytes() == results[1][1].encode() * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["trainee_case1.nii.gz"]


def test_publish_exclusive_message(tmp_path):
    (tmp_path / "a.tmp").write_bytes(b"1")
    publish_exclusive(tmp_path / "a.tmp", tmp_path / "final.nii.gz")
    (tmp_path / "b.tmp").write_bytes(b"2")
    with pytest.raises(UserError, match="^trainee T1 already submitted case 3$"):
        publish_exclusive(tmp_path / "b.tmp", tmp_path / "final.nii.gz",
                          exists_message="trainee T1 already submitted case 3")
    assert (tmp_path / "final.nii.gz").read_bytes() == b"1" and not (tmp_path / "b.tmp").exists()


def _wait_then_hold(folder, start, queue):
    start.wait()
    with folder_lock(folder, timeout_s=20, poll_s=0.005) as lk:
        queue.put(("in", os.getpid(), time.monotonic(), lk.took_over is not None))
        time.sleep(0.2)
        queue.put(("out", os.getpid(), time.monotonic(), False))


def test_two_waiters_on_a_stale_lock_never_hold_it_together(tmp_path):
    dead = CTX.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": "t",
                                                  "flock": True}))
    start, q = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_wait_then_hold, args=(tmp_path, start, q)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    events = sorted((q.get(timeout=30) for _ in range(6)), key=lambda e: e[2])
    for p in procs:
        p.join(30)
    inside = 0
    for kind, _pid, _t, _ in events:
        inside += 1 if kind == "in" else -1
        assert inside <= 1, events
    assert sum(1 for e in events if e[0] == "in" and e[3]) == 1  # one takeover, then ordinary waiting
