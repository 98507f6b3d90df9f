"""Where cohort extraction runs: in this process, in a local process pool, or (to come) on a
Dask cluster. One owner of the choice, so ``hrmm extract-cohort`` and ``hrmm train`` give the
same results, cache and progress whichever runs the work.

:func:`iter_map` yields ``fn(item)`` for every item **in input order** (the caller counts
progress as results arrive; order keeps the output identical to a serial run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def iter_map(fn: Callable[[Any], Any], items: Iterable[Any], *, n_jobs: int | None = None,
             scheduler: str | None = None) -> Iterator[Any]:
    """``fn`` over ``items`` in input order. ``scheduler``: None (local: ``n_jobs`` processes,
    1 = in this process)."""
    items = list(items)
    if not items:
        return iter(())
    if scheduler:
        from ClinicalMRICommonLib.errors import UserError

        raise UserError(f"scheduler {scheduler!r}: a Dask cluster is not supported yet; leave out --scheduler")
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
