"""Where cohort extraction runs: in this process, in a local process pool, or on a Dask
cluster. One owner of the choice, so ``hrmm extract-cohort`` and ``hrmm train`` give the
same results, cache and progress whichever runs the work.

:func:`iter_map` yields ``fn(item)`` for every item **in input order** (the caller counts
progress as results arrive; order keeps the output identical to a serial run).

A Dask cluster (``scheduler``): ``"local"`` starts a ``dask.distributed.LocalCluster`` on this
machine (``n_jobs`` worker processes, default 2, one thread each) for this call and closes it
afterwards; ``tcp://HOST:PORT`` (or ``tls://``; a bare ``HOST:PORT`` means ``tcp://``) uses a
running scheduler and its workers (how a site starts them: docs/hrmm_method.md, "Running
extraction on a Dask cluster"). ``fn`` and the items travel to the workers by pickle, so
``fn`` must be a module-level function of a package installed on every worker; what ``fn``
returns (extraction errors included, as the task's own result) comes back unchanged, so
the cache and the error report are those of a local run. dask is imported only here, when a
scheduler is asked for (optional extra ``cluster``: ``pip install "dask[distributed]"``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: seconds to reach a scheduler (TCP connect, then the Dask handshake)
CONNECT_TIMEOUT_S = 10.0
#: seconds a reachable scheduler may go without any worker once work is submitted
#: (an adaptive cluster starts its workers when work arrives)
NO_WORKER_TIMEOUT_S = 120.0
#: worker processes of ``scheduler="local"`` when ``n_jobs`` is not given
LOCAL_WORKERS = 2

_ADDRESS = re.compile(r"^(?:(?P<scheme>tcp|tls)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]\s]+):(?P<port>\d{1,5})$")
_INSTALL = 'pip install "dask[distributed]" (or the extension\'s extra: pip install "slicer-clinical-mri[cluster]")'


def _user_error(msg: str):
    from ClinicalMRICommonLib.errors import UserError

    return UserError(msg)


def check_scheduler(scheduler: str | None) -> str | None:
    """The scheduler address ``iter_map`` will use (``None``, ``"local"`` or
    ``scheme://host:port``), or UserError for a malformed address or a missing dask. Cheap:
    nothing is imported or contacted, so commands can refuse a bad ``--scheduler`` before
    any work."""
    if scheduler is None:
        return None
    s = str(scheduler).strip()
    if not s:
        return None
    if s.lower() == "local":
        address = "local"
    else:
        m = _ADDRESS.match(s)
        if not m or not 1 <= int(m["port"]) <= 65535:
            raise _user_error(f"--scheduler {scheduler!r} is not a Dask scheduler address: give tcp://HOST:PORT "
                              "(e.g. tcp://10.0.0.5:8786, what 'dask scheduler' prints), tls://HOST:PORT, or "
                              "'local' for a cluster on this machine")
        address = f"{m['scheme'] or 'tcp'}://{m['host']}:{int(m['port'])}"
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise _user_error(f"--scheduler {scheduler}: Dask is not installed in this Python environment; {_INSTALL}, "
                          "or leave out --scheduler")
    return address


def iter_map(fn: Callable[[Any], Any], items: Iterable[Any], *, n_jobs: int | None = None,
             scheduler: str | None = None) -> Iterator[Any]:
    """``fn`` over ``items`` in input order. ``scheduler``: None (local: ``n_jobs`` processes,
    1 = in this process), ``"local"`` (a LocalCluster of ``n_jobs`` workers, default 2) or a
    Dask scheduler address ``tcp://HOST:PORT``. Nothing to do: no cluster is started or
    contacted."""
    items = list(items)
    address = check_scheduler(scheduler)
    if not items:
        return iter(())
    if address is not None:
        return _dask_map(fn, items, address, n_jobs)
    n_jobs = n_jobs or max(1, min(len(items), os.cpu_count() or 1))
    if n_jobs == 1:
        return map(fn, items)
    return _pool_map(fn, items, n_jobs)


def _pool_map(fn, items, n_jobs) -> Iterator[Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("spawn"))
    try:
        yield from pool.map(fn, items, chunksize=1)
    finally:
        pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------------------------------
# Dask


def _probe(address: str) -> None:
    """A plain TCP connect first: a refused port, an unknown host or no answer is told in one
    line at once (the Dask client would retry until its timeout and then say only 'timed out')."""
    import socket

    host, port = address.split("://", 1)[1].rsplit(":", 1)
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except socket.gaierror:
        raise _user_error(f"Dask scheduler {address}: host {host!r} is not known here; check the address given to "
                          "--scheduler") from None
    except ConnectionRefusedError:
        raise _user_error(f"no Dask scheduler at {address}: nothing listens on port {port} of {host}; start one "
                          f"there ('dask scheduler --port {port}') and its workers, or check --scheduler") from None
    except TimeoutError:
        raise _user_error(f"Dask scheduler {address} did not answer within {CONNECT_TIMEOUT_S:g} s; check the "
                          "address, that the scheduler runs and that no firewall blocks the port") from None
    except OSError as exc:
        raise _user_error(f"cannot reach the Dask scheduler {address}: {exc.strerror or exc}; check --scheduler") \
            from None


def _local_cluster(distributed, n_workers: int):
    import logging

    try:
        return distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            # no dashboard; the scheduler's HTTP server (health, metrics) on a free local port, not :8787
            dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
            env={"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"})  # like the pool's workers: one ITK thread each
    except Exception as exc:  # noqa: BLE001 - whatever stops the cluster from starting, in one line
        raise _user_error(f"--scheduler local: the Dask LocalCluster of {n_workers} worker(s) did not start "
                          f"({type(exc).__name__}: {exc}); use --jobs N without --scheduler") from None


def _connect(distributed, address: str):
    _probe(address)
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise _user_error(f"{address} accepts connections but no Dask scheduler answered within "
                          f"{CONNECT_TIMEOUT_S:g} s ({exc}); is it the port 'dask scheduler' printed? (tls:// "
                          "needs the site's certificates in the Dask configuration)") from None


def _dask_map(fn, items, address: str, n_jobs: int | None) -> Iterator[Any]:
    try:
        import distributed
    except ImportError:
        raise _user_error(f"--scheduler {address}: Dask is not installed; {_INSTALL}") from None
    from concurrent.futures import CancelledError

    cluster = client = None
    futures: list = []
    try:
        if address == "local":
            cluster = _local_cluster(distributed, n_jobs or LOCAL_WORKERS)
            client = distributed.Client(cluster, set_as_default=False)
        else:
            client = _connect(distributed, address)
        futures = client.map(fn, items, pure=False)
        try:
            client.wait_for_workers(1, timeout=NO_WORKER_TIMEOUT_S)
        except TimeoutError:
            raise _user_error(f"the Dask scheduler {address} has no workers (none joined within "
                              f"{NO_WORKER_TIMEOUT_S:g} s); start them with 'dask worker {address} --nthreads 1'") \
                from None
        for i, fut in enumerate(futures):
            try:
                result = fut.result()
            except distributed.KilledWorker as exc:
                raise _user_error(f"Dask workers of {address} died running task {i + 1} of {len(items)} ({exc}); "
                                  "out of memory? see the workers' logs; rerun: finished work is cached") from None
            except CancelledError:
                raise _user_error(f"the Dask scheduler {address} went away during the extraction (task {i + 1} of "
                                  f"{len(items)}); rerun when it is back: finished work is cached") from None
            except ImportError as exc:
                raise _user_error(f"the Dask workers of {address} cannot run the extraction ({exc}); every worker "
                                  "needs the same Python environment with this extension installed") from None
            futures[i] = None  # its result is on its way to the caller: free it on the cluster
            fut.release()
            yield result
    finally:
        if client is not None:
            left = [f for f in futures if f is not None]
            try:
                if left:  # the consumer stopped early or something failed: no orphaned work on the cluster
                    client.cancel(left)
                client.close()
            except Exception:  # noqa: BLE001,S110 - closing after a lost scheduler must not hide the real error
                pass
        if cluster is not None:
            try:
                cluster.close()
            except Exception:  # noqa: BLE001,S110 - as above
                pass
