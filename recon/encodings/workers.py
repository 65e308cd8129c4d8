"""Level-parallel execution for the pure-PyTorch grid passes.

The per-level work is a chain of small ops around one gather or one scatter (``index_add_``,
which runs on one core). Running whole levels on worker threads that each use one intra-op
thread keeps every core busy; splitting each op across cores (torch's default) does not,
and stalls when the machine is shared. One pool serves the whole process.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch

_MIN_POINTS_FOR_WORKERS = 4096


@dataclass(frozen=True)
class Workers:
    """A thread pool, its size, and the process that started it."""

    pool: ThreadPoolExecutor
    size: int
    pid: int


_workers_lock = threading.Lock()
_workers: Workers | None = None


def _worker_init() -> None:
    torch.set_num_threads(1)  # OpenMP's thread count is per calling thread


def level_workers(n_points: int, device: torch.device) -> Workers | None:
    """Workers for level-parallel passes (one per torch thread), or None to run inline."""
    global _workers
    size = torch.get_num_threads()
    if device.type != "cpu" or size < 2 or n_points < _MIN_POINTS_FOR_WORKERS:
        return None
    with _workers_lock:
        if _workers is None or _workers.pid != os.getpid() or _workers.size != size:  # new, forked, resized
            if _workers is not None and _workers.pid == os.getpid():
                _workers.pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(size, "recon-grid", initializer=_worker_init)
            _workers = Workers(pool, size, os.getpid())
        return _workers


@contextlib.contextmanager
def calling_thread_serial(workers: Workers | None, n_levels: int) -> Iterator[None]:
    """While the workers carry a pass's levels, the calling thread's ops use one intra-op thread.

    torch's per-op threading waits for all its threads at every op, which stalls when
    another process holds a core. The count is per thread (OpenMP) and restored on exit;
    only a thread started meanwhile would inherit it. A single level (dense grid) runs on
    the calling thread, which then keeps its threads.
    """
    if workers is None or n_levels < 2:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


LevelFn = Callable[[int, "Workers | None"], None]
"""Work on one level: (level index, workers to share a single level's work, or None)."""


def _run_level(fn: LevelFn, index: int) -> None:
    with torch.no_grad():  # grad mode is per thread; these kernels never record a graph
        fn(index, None)


def for_each_level(fn: LevelFn, n_levels: int, workers: Workers | None) -> None:
    """Call ``fn(level_index, workers)`` for every level; levels must write disjoint outputs.

    Several levels run on the workers (``workers`` is None inside); a single level runs on
    the calling thread and gets the workers, to share out its own work (``run_jobs``).
    """
    if workers is None or n_levels == 1:
        for index in range(n_levels):
            fn(index, workers)
        return
    _wait_all([workers.pool.submit(_run_level, fn, index) for index in range(n_levels)])


def run_jobs(workers: Workers, jobs: list[Callable[[], None]]) -> None:
    """Run argument-less jobs on the workers and wait for all of them."""
    _wait_all([workers.pool.submit(_run_level, lambda _index, _workers, job=job: job(), 0) for job in jobs])


def _wait_all(futures: list[Future]) -> None:
    """Wait for every job, then raise the first error (no job is left writing)."""
    wait(futures)
    for future in futures:
        future.result()
