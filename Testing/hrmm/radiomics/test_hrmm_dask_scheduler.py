"""Cohort extraction on a Dask cluster (issue 14 "Cohort scale"): ``--scheduler local`` (a
LocalCluster of 2 worker processes) or ``tcp://HOST:PORT`` gives exactly the DataFrames of
a serial run and of the local process pool, fills the same cache (a rerun reads it, nothing
recomputed), reports progress once per extraction, and refuses an unreachable or workerless
scheduler in one line. Real Dask clusters on this machine, no mocks (dask[distributed] is in
the ``test`` extra)."""

from __future__ import annotations

import re
import time

import pandas as pd
import pytest
from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.cli.main import main as hrmm_main
from HRMMPredictLib.cohort import load_cohort_manifest
from HRMMPredictLib.radiomics import executors
from HRMMPredictLib.radiomics.features import SMALL_PARAMS, extract_cohort, load_params
from HRMMPredictLib.sequences import SEQUENCES

KINDS = ("roi", "roi_reader2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One lesion, small images: 3 images x 2 reads = 6 extractions."""
    from HRMMPredictLib.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("dask_cohort")
    manifest = generate_cohort(root / "cohort", n_patients=1, seed=0, shape=(8, 56, 64), spacing=(1.0, 1.0, 4.8),
                               multi_lesion_fraction=0)
    return {"manifest": manifest, "cohort": load_cohort_manifest(manifest), "params": load_params(SMALL_PARAMS),
            "serial_cache": root / "serial_cache"}


@pytest.fixture(scope="module")
def serial(tiny):
    """The reference: every extraction in this process (its cache reused by the CLI test)."""
    return extract_cohort(tiny["cohort"], tiny["serial_cache"], tiny["params"], roi_kinds=KINDS, n_jobs=1)


def _same_tables(a: dict, b: dict) -> None:
    assert set(a) == set(b) == set(KINDS)
    for kind in KINDS:
        pd.testing.assert_frame_equal(a[kind], b[kind], check_exact=True)


def test_local_cluster_equals_serial_and_pool_with_the_same_cache_and_progress(tiny, serial, tmp_path):
    cohort, params = tiny["cohort"], tiny["params"]
    pool = extract_cohort(cohort, None, params, roi_kinds=KINDS, n_jobs=2)
    _same_tables(pool, serial)

    calls: list[tuple[int, int, str]] = []
    cache = tmp_path / "cache"
    on_cluster = extract_cohort(cohort, cache, params, roi_kinds=KINDS, n_jobs=2, scheduler="local",
                                progress=lambda i, n, msg: calls.append((i, n, msg)))
    _same_tables(on_cluster, serial)
    assert serial["roi"].shape[0] == 1 and serial["roi"].shape[1] > 0 and serial["roi"].notna().all().all()
    # progress: the cached count first, then once per extraction as results arrive
    n = len(SEQUENCES) * len(KINDS)
    assert [c[0] for c in calls] == list(range(n + 1)) and {c[1] for c in calls} == {n}
    assert calls[0][2] == "0 cached"
    lid = cohort["lesion_id"].iloc[0]
    assert sorted(c[2] for c in calls[1:]) == sorted(f"{lid} {s} {k}" for s in SEQUENCES for k in KINDS)
    # the workers filled the cache: a rerun reads it and computes nothing (no cluster is started)
    assert len(list(cache.glob("*.json"))) == n
    calls.clear()
    again = extract_cohort(cohort, cache, params, roi_kinds=KINDS, scheduler="local",
                           progress=lambda i, n_, msg: calls.append((i, n_, msg)))
    assert calls == [(n, n, f"{n} cached")]
    _same_tables(again, serial)


def test_an_unreachable_scheduler_is_one_user_error_naming_it(tiny, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=re.escape("tcp://127.0.0.1:1")) as exc:
        extract_cohort(tiny["cohort"], tmp_path / "cache", tiny["params"], roi_kinds=("roi",),
                       scheduler="tcp://127.0.0.1:1")
    assert time.perf_counter() - t0 < executors.CONNECT_TIMEOUT_S  # told at once, not after the connect timeout
    assert "dask scheduler" in str(exc.value) and "\n" not in str(exc.value)
    assert not list((tmp_path / "cache").glob("*.json"))


@pytest.mark.parametrize("address, expected", [("local", "local"), (" LOCAL ", "local"), (None, None), ("", None),
                                               ("10.0.0.5:8786", "tcp://10.0.0.5:8786"),
                                               ("tcp://head-node:8786", "tcp://head-node:8786"),
                                               ("tls://head.example.org:8786", "tls://head.example.org:8786"),
                                               ("tcp://[::1]:8786", "tcp://[::1]:8786")])
def test_scheduler_addresses_accepted(address, expected):
    assert executors.check_scheduler(address) == expected


@pytest.mark.parametrize("address", ["nonsense", "tcp://head-node", "http://head-node:8786", "tcp://head:0",
                                     "tcp://head:70000", "tcp://:8786", "tcp://a b:8786"])
def test_malformed_scheduler_addresses_refused(address):
    with pytest.raises(UserError, match="is not a Dask scheduler address"):
        executors.check_scheduler(address)


def test_tcp_scheduler_without_workers_then_early_stop_cancels_the_rest(monkeypatch):
    """A running scheduler reached by its tcp:// address: without workers, one line after the
    wait; with a worker, results in order, and a consumer that stops early leaves no task
    behind on the cluster."""
    import distributed

    monkeypatch.setattr(executors, "NO_WORKER_TIMEOUT_S", 2.0)
    with distributed.LocalCluster(n_workers=0, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                  silence_logs=50) as cluster:
        address = cluster.scheduler_address
        with pytest.raises(UserError, match=re.escape(address) + ".*no workers"):
            list(executors.iter_map(abs, [-1, 2], scheduler=address))
        cluster.scale(1)
        cluster.wait_for_workers(1, timeout=60)
        assert list(executors.iter_map(abs, [-3, 2, -1], scheduler=address)) == [3, 2, 1]
        gen = executors.iter_map(time.sleep, [0.0, 30.0, 30.0, 30.0], scheduler=address)
        assert next(gen) is None
        gen.close()
        deadline = time.monotonic() + 20
        while cluster.scheduler.tasks and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not cluster.scheduler.tasks, f"tasks left on the cluster: {list(cluster.scheduler.tasks)}"


def test_cli_scheduler_local_writes_the_same_csv(tiny, serial, tmp_path, capsys):
    manifest = tmp_path / "reader1_only.csv"  # reader 1's ROIs only: 3 extractions on the cluster
    tiny["cohort"][["patient_id", "lesion_id", "label", *SEQUENCES, "roi"]].to_csv(manifest, index=False)
    base = ["extract-cohort", "--manifest", str(manifest), "--params", str(SMALL_PARAMS)]
    # without --scheduler: the serial fixture's cache (its values were computed in this process)
    assert hrmm_main(base + ["--out", str(tmp_path / "plain"), "--cache", str(tiny["serial_cache"])]) == 0
    assert hrmm_main(base + ["--out", str(tmp_path / "dask"), "--cache", str(tmp_path / "cache"),
                             "--scheduler", "local", "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" not in err
    plain = (tmp_path / "plain" / "features_roi.csv").read_bytes()
    assert plain == (tmp_path / "dask" / "features_roi.csv").read_bytes()
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(SEQUENCES)
