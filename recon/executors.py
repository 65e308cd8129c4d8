"""Executors: where a sweep's tasks run. In this process, in a local pool of worker processes, or on Ray.

Each runs ``fn(task)`` for every task (``fn`` and the tasks picklable; the task writes its own
result) and reports each outcome to the driver as it comes, through ``on_done(index, value)``:
``fn``'s return value, or ``Lost`` when the task's worker process died (killed, out of memory)
more times than ``retries`` allows. The driver never shares mutable state with the tasks.

Every task gets the same thread budget (``threads``: torch's intra-op threads, and
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in a worker started for it), so that a task's results
do not depend on the executor: multi-threaded float reductions differ with the thread count.

- ``serial``: one task after another in this process.
- ``local`` (the default): ``workers`` worker processes (spawned, so that each one's environment
  is set before torch is imported), one task at a time each; workers x threads = cores, and one
  GPU (or a ``gpus_per_task`` share of one) per worker when there are GPUs. When a worker process
  dies, a new one takes its place and the task it ran is started again, up to ``retries``
  times; only that task is charged. A worker whose driver dies stops within a second, so a
  rerun never races a leftover fit.
- ``ray``: Ray core; one task per arm with ``num_cpus`` = threads and ``num_gpus`` = the GPU
  share (fractional GPUs pack small fits on one card), ``max_retries`` for lost workers
  (ordinary failures are recorded by the task itself, never retried by Ray). It connects to
  ``address`` (``--ray-address``, else ``RAY_ADDRESS``), else starts a local Ray.

This module imports neither torch nor ray at import time.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from recon.errors import InputError

EXECUTORS = ("local", "ray", "serial")
RAY_INSTALL = "pip install 'recon[ray]'"
DEFAULT_RETRIES = 2
_WATCH_PARENT_S = 0.5


@dataclass(frozen=True)
class Lost:
    """A task whose worker process died every time it ran (``retries`` + 1 times)."""

    error_type: str
    error: str


OnDone = Callable[[int, Any], None]
"""Called in the driver as each task ends: (the task's index, ``fn``'s return value or ``Lost``)."""


class Executor(Protocol):
    """Runs picklable tasks; see the module docstring."""

    name: str
    threads: int

    def prepare(self, build_kernel: bool) -> None:
        """Before the tasks: build the fused CPU kernel once per machine when ``build_kernel``."""

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], on_done: OnDone) -> None:
        """Run ``fn(task)`` for every task; ``on_done`` gets each outcome."""


def build_cpu_kernel() -> bool:
    """Build (or load from its cache) the fused CPU grid kernel; whether it is usable.

    Run once per machine before tasks start, so that tasks never build it side by side
    (concurrent first builds wait on one lock, each for the whole build)."""
    from recon.encodings.cpp_build import load_extension

    return load_extension() is not None


# ----------------------------------------------------------------------------- the thread budget


@dataclass(frozen=True)
class Budget:
    """How many tasks run at once, and each one's CPU threads and GPU share (0: no GPU)."""

    workers: int
    threads: int
    gpus: float


def plan_budget(n_tasks: int, cores: int, n_gpus: int, workers: int | None = None, threads: int | None = None,
                gpus_per_task: float | None = None) -> Budget:
    """Size the workers to the machine: workers x threads = cores.

    Without GPUs, one worker per core up to the number of tasks, the cores shared out among them;
    with GPUs, ``n_gpus / gpus_per_task`` workers (one GPU each by default), the cores shared out.
    An option given by the user stands (``--workers``, ``--threads-per-worker``, ``--gpus-per-task``).
    """
    if workers is not None and workers < 1:
        raise InputError("--workers", f"must be at least 1, got {workers}")
    if threads is not None and threads < 1:
        raise InputError("--threads-per-worker", f"must be at least 1, got {threads}")
    gpus = (1.0 if n_gpus else 0.0) if gpus_per_task is None else float(gpus_per_task)
    if not 0.0 <= gpus <= 1.0:
        raise InputError("--gpus-per-task", f"must lie in [0, 1] (a fit uses one device), got {gpus}")
    if gpus > 0 and n_gpus == 0:
        raise InputError("--gpus-per-task", "no GPU is visible (CUDA_VISIBLE_DEVICES, drivers?)")
    n_tasks, cores = max(1, n_tasks), max(1, cores)
    if workers is None:
        slots = math.floor(n_gpus / gpus + 1e-9) if gpus > 0 else cores // (threads or 1)
        workers = max(1, min(n_tasks, slots))
    if threads is None:
        threads = max(1, cores // workers)
    return Budget(workers, threads, gpus)


def cpu_count() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """CUDA devices torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_env(threads: int, gpu: str | None) -> dict[str, str]:
    """The environment a worker is started with: its thread budget and its GPU ("" hides every GPU)."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


# ----------------------------------------------------------------------------- serial


@dataclass
class SerialExecutor:
    """One task after another, in this process."""

    threads: int
    name: str = "serial"

    def prepare(self, build_kernel: bool) -> None:
        """Nothing to do: the kernel is built on first use, by the one task running."""

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], on_done: OnDone) -> None:
        import torch

        before = torch.get_num_threads()  # the tasks set their budget; this process gets its own back
        try:
            for index, task in enumerate(tasks):
                on_done(index, fn(task))
        finally:
            torch.set_num_threads(before)


# ----------------------------------------------------------------------------- local processes


@dataclass
class LocalExecutor:
    """``workers`` worker processes on this machine, each with its budget, one task at a time each."""

    workers: int
    threads: int
    gpus_per_task: float = 0.0
    n_gpus: int = 0
    retries: int = DEFAULT_RETRIES
    name: str = "local"

    def prepare(self, build_kernel: bool) -> None:
        if build_kernel:
            build_cpu_kernel()

    def slot_gpu(self, slot: int) -> str | None:
        """The GPU a worker slot uses: slot i gets GPU floor(i x share); "" (none) without a share."""
        if self.gpus_per_task <= 0:
            return "" if self.n_gpus else None
        return str(math.floor(slot * self.gpus_per_task + 1e-9) % self.n_gpus)

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], on_done: OnDone) -> None:
        pending = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        slots: list[_Worker | None] = [None] * self.workers
        try:
            while pending or any(w is not None and w.busy for w in slots):
                for slot, worker in enumerate(slots):
                    if pending and (worker is None or not worker.busy):
                        if worker is None:
                            worker = slots[slot] = _Worker.start(worker_env(self.threads, self.slot_gpu(slot)), slot)
                        index = pending.popleft()
                        worker.submit(fn, tasks[index], index)
                busy = [w for w in slots if w is not None and w.busy]
                ready = set(multiprocessing.connection.wait([h for w in busy for h in w.handles]))
                for worker in busy:
                    if ready.isdisjoint(worker.handles):
                        continue
                    index, outcome = worker.outcome()
                    if not worker.alive:
                        slots[worker.slot] = None  # a new process takes the slot
                    if isinstance(outcome, Lost) and outcome.error_type == "WorkerLost":
                        attempts[index] += 1
                        if attempts[index] <= self.retries:
                            pending.appendleft(index)
                            continue
                        outcome = Lost("WorkerLost", f"{outcome.error} ({attempts[index]} attempts)")
                    on_done(index, outcome)
        finally:
            for worker in slots:
                if worker is not None:
                    worker.stop()


@dataclass
class _Worker:
    """A worker process of one slot and the pipe tasks and their outcomes go through."""

    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    slot: int
    index: int | None = None
    """The task it runs (None: idle)."""

    @property
    def busy(self) -> bool:
        return self.index is not None

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None

    @property
    def handles(self) -> tuple[Any, Any]:
        """What becomes ready when its task ends: its pipe (an outcome came back) or its process (it died)."""
        return self.conn, self.process.sentinel

    @classmethod
    def start(cls, env: dict[str, str], slot: int) -> _Worker:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(theirs, env, os.getpid()), daemon=True,
                              name=f"recon-worker-{slot}")
        process.start()
        theirs.close()
        return cls(process, ours, slot)

    def submit(self, fn: Callable[[Any], Any], task: Any, index: int) -> None:
        self.conn.send_bytes(pickle.dumps((fn, task)))  # unpickled in the worker, whose budget is set
        self.index = index

    def outcome(self) -> tuple[int, Any]:
        """The task's index and its return value, the error that escaped it, or ``Lost("WorkerLost")``."""
        index, self.index = self.index, None
        try:
            kind, value = self.conn.recv() if self.conn.poll() else (None, None)
        except (EOFError, OSError):
            kind, value = None, None
        if kind == "value":
            return index, value
        if kind == "error":
            return index, Lost(*value)
        self.process.join()
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return index, Lost("WorkerLost", f"the worker process died ({how}; out of memory?)")

    def stop(self) -> None:
        if self.alive and not self.busy:
            try:
                self.conn.send_bytes(b"")  # the worker's end of work
                self.process.join(timeout=5)
            except OSError:
                pass
        if self.alive:
            self.process.kill()
        self.process.join()
        self.conn.close()


def _worker_main(conn: multiprocessing.connection.Connection, env: dict[str, str], parent: int) -> None:
    """A worker process: set the budget before torch is imported, watch the driver, run tasks until told to end."""
    os.environ.update(env)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return
        if not payload:
            return
        try:
            fn, task = pickle.loads(payload)
            message: tuple[str, Any] = ("value", fn(task))
        except Exception as err:  # noqa: BLE001 - an error that escaped the task is reported, not raised here
            message = ("error", (type(err).__name__, " ".join(str(err).split())[:300]))
        conn.send(message)


def _exit_when_orphaned(parent: int) -> None:
    """Stop this worker soon after its driver died (a rerun must never race a leftover worker)."""
    while True:
        time.sleep(_WATCH_PARENT_S)
        if os.getppid() != parent:
            os._exit(3)


# ----------------------------------------------------------------------------- Ray


def import_ray():
    """The ``ray`` module; an ``InputError`` with the install command when it is not installed."""
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray", f"Ray is not installed; install it with: {RAY_INSTALL}") from None
    return ray


@dataclass
class RayExecutor:
    """One Ray task per arm (``num_cpus`` = threads, ``num_gpus`` = the GPU share), retried when its worker is lost."""

    threads: int
    gpus_per_task: float = 0.0
    retries: int = DEFAULT_RETRIES
    address: str | None = None
    name: str = "ray"
    _started: bool = field(default=False, repr=False)

    def connect(self):
        """Connect to ``address`` (else ``RAY_ADDRESS``), else start a local Ray; the ``ray`` module.

        An existing connection of this process (``ray.init`` called before) is used as it is."""
        ray = import_ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                ray.init(runtime_env=local_runtime_env(), include_dashboard=False)
                self._started = True
        return ray

    def prepare(self, build_kernel: bool) -> None:
        """Build the fused CPU kernel with one task on every node, before the arms start."""
        ray = self.connect()
        if not build_kernel:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        build = ray.remote(build_cpu_kernel)
        nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        ray.get([build.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                 for node in nodes])

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], on_done: OnDone) -> None:
        ray = self.connect()
        remote = ray.remote(fn).options(num_cpus=self.threads, num_gpus=self.gpus_per_task,
                                        max_retries=self.retries, retry_exceptions=False)
        refs = {remote.remote(task): index for index, task in enumerate(tasks)}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    index = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:  # an error that escaped the task
                        outcome = Lost(type(err.cause).__name__ if err.cause else "RayTaskError",
                                       " ".join(str(err.cause or err).split())[:300])
                    except ray.exceptions.RayError as err:  # worker or node lost, out of memory, after the retries
                        outcome = Lost("WorkerLost" if "Worker" in type(err).__name__ or "Node" in type(err).__name__
                                       else type(err).__name__, " ".join(str(err).split())[:300])
                    on_done(index, outcome)
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
            if self._started:
                ray.shutdown()
                self._started = False

    def cluster_size(self) -> tuple[int, int, int]:
        """The cluster's CPUs, GPUs, and the most CPUs on one node."""
        ray = self.connect()
        total = ray.cluster_resources()
        per_node = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
        return int(total.get("CPU", 1)), int(total.get("GPU", 0)), max(per_node or [1])


def local_runtime_env() -> dict[str, Any]:
    """A local Ray's workers import the same recon as this driver (a checkout run in place, too)."""
    root = str(Path(__file__).resolve().parents[1])
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


# ----------------------------------------------------------------------------- choosing one


@dataclass(frozen=True)
class ExecutorOptions:
    """The command line's executor options (None: sized to the machine or cluster)."""

    name: str = "local"
    workers: int | None = None
    threads: int | None = None
    gpus_per_task: float | None = None
    retries: int = DEFAULT_RETRIES
    ray_address: str | None = None


def make_executor(options: ExecutorOptions, n_tasks: int) -> Executor:
    """The executor ``options`` ask for, its budget sized to the machine (or the Ray cluster)."""
    if options.name not in EXECUTORS:
        raise InputError("--executor", f"unknown executor {options.name!r} (known: {', '.join(EXECUTORS)})")
    if options.retries < 0:
        raise InputError("--retries", f"must be at least 0, got {options.retries}")
    if options.name == "ray":
        return _make_ray(options, n_tasks)
    if options.name == "serial":
        if options.workers not in (None, 1):
            raise InputError("--workers", "the serial executor runs one task at a time")
        budget = plan_budget(1, cpu_count(), 0, 1, options.threads, 0.0)
        return SerialExecutor(budget.threads)
    n_gpus = visible_gpus()
    budget = plan_budget(n_tasks, cpu_count(), n_gpus, options.workers, options.threads, options.gpus_per_task)
    return LocalExecutor(budget.workers, budget.threads, budget.gpus, n_gpus, options.retries)


def _make_ray(options: ExecutorOptions, n_tasks: int) -> RayExecutor:
    import_ray()
    if options.workers is not None:
        raise InputError("--workers", "the local executor's option: Ray places tasks by --threads-per-worker "
                                      "and --gpus-per-task")
    executor = RayExecutor(1, 0.0, options.retries, options.ray_address)
    cpus, gpus, node_cpus = executor.cluster_size()
    budget = plan_budget(n_tasks, cpus, gpus, None, options.threads, options.gpus_per_task)
    executor.threads, executor.gpus_per_task = min(budget.threads, node_cpus), budget.gpus
    return executor


def describe(executor: Executor) -> str:
    """One line: the executor and its budget."""
    if isinstance(executor, LocalExecutor):
        gpu = f", {executor.gpus_per_task:g} GPU each" if executor.gpus_per_task else ""
        return f"local pool: {executor.workers} worker(s) x {executor.threads} thread(s){gpu}"
    if isinstance(executor, RayExecutor):
        gpu = f", {executor.gpus_per_task:g} GPU" if executor.gpus_per_task else ""
        return f"Ray: tasks of {executor.threads} CPU(s){gpu}"
    return f"serial, in this process ({executor.threads} thread(s))"

