"""Per-image work over a source in parallel: a fork pool inherits the source, nothing is pickled
but the chunk of keys going in and the results coming out."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from typing import Any

from camscope.data.sources import Source
from camscope.progress import track_weighted

_SOURCE: Source | None = None


def worker_source() -> Source:
    if _SOURCE is None:
        raise RuntimeError("worker_source() called outside parallel_map")
    return _SOURCE


def parallel_map(
    source: Source,
    fn: Callable[[list], Any],
    jobs: list,
    workers: int,
    chunk: int,
    description: str,
) -> Iterator[Any]:
    """Yield ``fn(chunk_of_jobs)`` for each chunk, in order, with a progress bar.

    In-memory sources, single-core machines and platforms without fork run in this process.
    """
    global _SOURCE
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    workers = workers or os.cpu_count() or 1
    _SOURCE = source
    try:
        serial = workers <= 1 or source.in_memory or len(chunks) <= 1
        if serial or "fork" not in mp.get_all_start_methods():
            yield from track_weighted(((len(c), fn(c)) for c in chunks), len(jobs), description)
            return
        with mp.get_context("fork").Pool(workers) as pool:
            results = ((len(c), r) for c, r in zip(chunks, pool.imap(fn, chunks), strict=True))
            yield from track_weighted(results, len(jobs), description)
    finally:
        _SOURCE = None
