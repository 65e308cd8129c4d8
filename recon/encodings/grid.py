"""Multi-resolution grid encoding in pure PyTorch, value for value like tiny-cuda-nn.

Layout and lookup follow tiny-cuda-nn's ``GridEncoding`` (``encodings/grid.h``):

* level ``l`` has ``scale_l = 2^(l log2 b) * base_resolution - 1`` (computed in float32,
  as the CUDA kernel does) and ``resolution_l = ceil(scale_l) + 1``;
* it stores ``min(next_multiple(resolution_l^3, 8), 2^log2_hashmap_size)`` vertices of
  ``F`` features (``F`` contiguous per vertex), levels one after the other in one flat
  array;
* a point ``x`` in [0, 1]^3 sits at ``pos = x scale_l + 0.5``; its cell corner is
  ``floor(pos)`` and its weights come from ``frac = pos - floor(pos)``;
* a corner ``(i, j, k)`` has index ``i + j res + k res^2`` when ``res^3`` fits in the level
  (dense), else the hash ``i * 1 ^ j * 2654435761 ^ k * 805459861`` in uint32 arithmetic;
  either is taken modulo the level size.

Inputs outside [0, 1] are clamped to it (tiny-cuda-nn leaves them undefined), so their
gradient with respect to ``x`` is zero.

Speed on a CPU (see ``benchmarks/bench_encodings.py``):

* per-level work runs on ``(8, N)`` tensors (corner-major, points contiguous), so every
  elementwise op vectorises; a vertex's ``F`` features are gathered as one 64-bit word
  when they fit in one; the table gradient is scattered with one 1-D ``index_add_`` per
  feature;
* the derivatives are written out by hand: ``_GridInterp`` (features) keeps, when the
  points need a gradient, each level's first and mixed second derivatives, from which
  ``_GradX`` (d features / dx, for normals and the eikonal term) and its backward follow
  without reading the table again; ``_GradTable`` scatters the table gradient;
* in a training step the eikonal term's table gradient is merged into the features' own
  scatter (see ``_GridInterp``), so the table is scattered once, not twice;
* levels run on a small pool of worker threads, one intra-op thread each (``index_add_``
  uses one core, and per-op threading stalls on a shared machine).

The tests check every pass against ``gradcheck``/``gradgradcheck``, a slow per-point
reference and a plain-autograd twin.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from recon.config import EncodingConfig

HASH_PRIMES = (1, 2654435761, 805459861)
"""tiny-cuda-nn's coherent primes for the spatial hash, one per axis."""

_UINT32 = 0xFFFFFFFF


def _as_int32(value: int) -> int:
    """The int32 with the same low 32 bits as ``value`` (two's complement)."""
    value &= _UINT32
    return value - (1 << 32) if value >= 1 << 31 else value


def next_multiple(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    return (value + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class GridLevel:
    """One level of the flat parameter table.

    ``size`` and ``offset`` count vertices (each holds ``F`` features); ``hashed`` is
    False when the level is stored densely (``resolution^3 <= size``).
    """

    scale: float
    resolution: int
    size: int
    offset: int
    hashed: bool


def level_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """``2^(level log2 b) * base_resolution - 1``, in float32 as tiny-cuda-nn computes it."""
    f32 = np.float32
    log2_b = f32(np.log2(f32(per_level_scale)))
    growth = f32(np.exp2(f32(level) * log2_b))
    return float(growth * f32(base_resolution) - f32(1.0))


def _make_level(scale: float, resolution: int, max_size: int | None, offset: int) -> GridLevel:
    """Level holding ``min(next_multiple(res^3, 8), max_size)`` vertices."""
    dense_size = next_multiple(resolution**3, 8)
    size = dense_size if max_size is None else min(dense_size, max_size)
    return GridLevel(scale, resolution, size, offset, hashed=resolution**3 > size)


def hash_grid_levels(cfg: EncodingConfig) -> list[GridLevel]:
    """Per-level layout of the multi-resolution hash grid described by ``cfg``."""
    if cfg.n_levels < 1 or cfg.base_resolution < 2:
        raise ValueError(f"need n_levels >= 1 and base_resolution >= 2, got {cfg.n_levels}, {cfg.base_resolution}")
    if not 1 <= cfg.log2_hashmap_size <= 30:
        raise ValueError(f"log2_hashmap_size must be in [1, 30], got {cfg.log2_hashmap_size}")
    levels, offset = [], 0
    for index in range(cfg.n_levels):
        scale = level_scale(index, cfg.per_level_scale, cfg.base_resolution)
        level = _make_level(scale, math.ceil(scale) + 1, 1 << cfg.log2_hashmap_size, offset)
        levels.append(level)
        offset += level.size
    return levels


def dense_grid_levels(resolution: int) -> list[GridLevel]:
    """One dense level with ``resolution`` vertices per axis (scale ``resolution - 1``)."""
    if resolution < 2:
        raise ValueError(f"dense grid resolution must be >= 2, got {resolution}")
    return [_make_level(float(resolution - 1), resolution, None, 0)]


def grid_n_params(levels: list[GridLevel], n_features: int) -> int:
    """Number of scalars in the flat table."""
    return sum(level.size for level in levels) * n_features


def matched_dense_resolution(cfg: EncodingConfig) -> int:
    """Resolution ``R`` whose dense grid (``R^3 F_dense`` scalars) best matches the hash grid.

    The hash grid is the one ``cfg`` describes (its ``n_levels``, ``log2_hashmap_size`` ...);
    ``F_dense`` is ``cfg.dense_features``. Ties go to the smaller grid.
    """
    target = grid_n_params(hash_grid_levels(cfg), cfg.n_features_per_level)
    guess = max(2, round((target / cfg.dense_features) ** (1.0 / 3.0)))
    candidates = [r for r in (guess - 1, guess, guess + 1) if r >= 2]
    return min(candidates, key=lambda r: (abs(r**3 * cfg.dense_features - target), r))


def encoding_levels(cfg: EncodingConfig, kind: str) -> tuple[list[GridLevel], int]:
    """Layout and features per vertex for the grid ``kind`` (hashgrid or densegrid)."""
    if kind == "hashgrid":
        return hash_grid_levels(cfg), cfg.n_features_per_level
    if kind == "densegrid":
        resolution = cfg.dense_resolution or matched_dense_resolution(cfg)
        return dense_grid_levels(resolution), cfg.dense_features
    raise ValueError(f"GridEncoding serves hashgrid and densegrid, not {kind!r}")


# ----------------------------------------------------------------------------------------
# Level-parallel execution. The per-level work is a chain of small ops around one gather
# or one scatter (``index_add_``, which runs on one core). Running whole levels on worker
# threads that each use one intra-op thread keeps every core busy; splitting each op
# across cores (torch's default) does not, and stalls when the machine is shared.

_MIN_POINTS_FOR_WORKERS = 4096


@dataclass(frozen=True)
class _Workers:
    """A thread pool, its size, and the process that started it."""

    pool: ThreadPoolExecutor
    size: int
    pid: int


_workers_lock = threading.Lock()
_workers: _Workers | None = None


def _worker_init() -> None:
    torch.set_num_threads(1)  # OpenMP's thread count is per calling thread


def _level_workers(n_points: int, device: torch.device) -> _Workers | None:
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
            _workers = _Workers(pool, size, os.getpid())
        return _workers


@contextlib.contextmanager
def _calling_thread_serial(workers: _Workers | None, n_levels: int) -> Iterator[None]:
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


LevelFn = Callable[[int, "_Workers | None"], None]
"""Work on one level: (level index, workers to share a single level's work, or None)."""


def _run_level(fn: LevelFn, index: int) -> None:
    with torch.no_grad():  # grad mode is per thread; these kernels never record a graph
        fn(index, None)


def _for_each_level(fn: LevelFn, n_levels: int, workers: _Workers | None) -> None:
    """Call ``fn(level_index, workers)`` for every level; levels must write disjoint outputs.

    Several levels run on the workers (``workers`` is None inside); a single level runs on
    the calling thread and gets the workers, for ``_scatter_add`` to share out features.
    """
    if workers is None or n_levels == 1:
        for index in range(n_levels):
            fn(index, workers)
        return
    _wait_all([workers.pool.submit(_run_level, fn, index) for index in range(n_levels)])


def _run_jobs(workers: _Workers, jobs: list[Callable[[], None]]) -> None:
    """Run argument-less jobs on the workers and wait for all of them."""
    _wait_all([workers.pool.submit(_run_level, lambda _index, _workers, job=job: job(), 0) for job in jobs])


def _wait_all(futures: list[Future]) -> None:
    """Wait for every job, then raise the first error (no job is left writing)."""
    wait(futures)
    for future in futures:
        future.result()


# ----------------------------------------------------------------------------------------
# Per-level kernels. Points are the last (contiguous) axis; corner c = cx + 2 cy + 4 cz,
# stored as (2, 2, 2, N) = (cz, cy, cx, N) or flattened (8, N).


@dataclass
class _Lookup:
    """Where N points fall in one level.

    idx: (8, N) vertex indices within the level; s: (3, N) interpolation coordinates
    (frac, or smoothstep(frac)); ds: d s / d x, (3, N) or the scalar scale; d2s:
    d^2 s / d x^2, (3, N), or None when linear; w: (8, N) corner weights, when asked for.
    """

    idx: torch.Tensor
    s: torch.Tensor
    ds: torch.Tensor | float
    d2s: torch.Tensor | None
    w: torch.Tensor | None


def _corner_indices(cell: torch.Tensor, level: GridLevel) -> torch.Tensor:
    """(3, N) integer cell corners -> (8, N) vertex indices (int32 or int64)."""
    res, size = level.resolution, level.size
    if level.hashed:
        hx = torch.stack((cell[0], cell[0] + 1))
        hy = cell[1] * _as_int32(HASH_PRIMES[1])
        hy = torch.stack((hy, hy + _as_int32(HASH_PRIMES[1])))
        hz = cell[2] * _as_int32(HASH_PRIMES[2])
        hz = torch.stack((hz, hz + _as_int32(HASH_PRIMES[2])))
        idx = (hz.view(2, 1, 1, -1) ^ hy.view(1, 2, 1, -1)) ^ hx.view(1, 1, 2, -1)
        return (idx & (size - 1)).view(8, -1)  # hashed sizes are powers of two
    base = cell[0] + cell[1] * res + cell[2] * (res * res)
    steps = [cx + cy * res + cz * res * res for cz in (0, 1) for cy in (0, 1) for cx in (0, 1)]
    idx = base + torch.tensor(steps, dtype=base.dtype, device=base.device).view(8, 1)
    if _max_cell(level) * (1 + res + res * res) + steps[-1] >= size:  # corners past the far face
        # idx mod size for idx < 2 size, branch-free: subtract size where size - 1 - idx < 0
        sign_bit = 8 * idx.element_size() - 1
        idx = idx - (((size - 1) - idx) >> sign_bit & size)
    return idx


def _max_cell(level: GridLevel) -> int:
    """Largest cell coordinate a point in [0, 1] reaches: floor(scale + 0.5)."""
    return math.floor(level.scale + 0.5)


def _index_dtype(level: GridLevel) -> torch.dtype:
    """int32 when every dense index fits (hashes wrap like uint32 in either)."""
    if level.hashed:
        return torch.int32
    res = level.resolution
    return torch.int32 if (_max_cell(level) + 1) * (1 + res + res * res) < 2**31 else torch.int64


def _corner_weights(s: torch.Tensor) -> torch.Tensor:
    """(3, N) coordinates in the cell -> (8, N) trilinear weights."""
    a = torch.stack((1 - s, s), 1)  # (3, 2, N)
    n = s.shape[1]
    return (a[2].view(2, 1, 1, n) * a[1].view(1, 2, 1, n) * a[0].view(1, 1, 2, n)).view(8, n)


def _gather(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of a (S, F) table at (8, N) indices -> (8, N, F).

    When a row is 4 or 8 bytes it is read as one integer word (one gather, not F).
    """
    n_features = table.shape[1]
    word = {4: torch.int32, 8: torch.int64}.get(n_features * table.element_size())
    if word is not None and table.is_contiguous():
        rows = table.view(word).view(-1).index_select(0, idx.view(-1))
        return rows.view(table.dtype).view(*idx.shape, n_features)
    return table.index_select(0, idx.view(-1)).view(*idx.shape, n_features)


def _lookup(xt: torch.Tensor, level: GridLevel, smooth: bool, weights: bool) -> _Lookup:
    """Locate (3, N) points in one level: corner indices, coordinates in the cell, weights."""
    pos = xt * level.scale + 0.5
    cell = pos.floor()
    frac = pos.sub_(cell)
    idx = _corner_indices(cell.to(_index_dtype(level)), level)
    if smooth:
        s = frac * frac * (3 - 2 * frac)
        ds: torch.Tensor | float = frac * (1 - frac) * (6 * level.scale)
        d2s: torch.Tensor | None = (6 - 12 * frac) * level.scale**2
    else:
        s, ds, d2s = frac, level.scale, None
    return _Lookup(idx, s, ds, d2s, _corner_weights(s) if weights else None)


def _trilinear(
    g: torch.Tensor,
    s: torch.Tensor,
    value: torch.Tensor | None = None,
    grad: torch.Tensor | None = None,
    mixed: torch.Tensor | None = None,
) -> None:
    """Trilinear interpolation of (8, N) corner values g at (3, N) s, and its s-derivatives.

    Writes those asked for: ``value`` (N,); ``grad`` (3, N) = d/ds_x, d/ds_y, d/ds_z;
    ``mixed`` (3, N) = d2/ds_x ds_y, d2/ds_x ds_z, d2/ds_y ds_z (the pure second
    derivatives of a trilinear function are zero). Interpolates along x, then y, then z.
    """
    g = g.view(2, 2, 2, -1)  # (z, y, x, N)
    dx = g[:, :, 1] - g[:, :, 0]  # (z, y, N)
    ax = torch.addcmul(g[:, :, 0], s[0], dx)  # the same ops whatever is asked: same values
    dy = ax[:, 1] - ax[:, 0]  # (z, N)
    ay = torch.addcmul(ax[:, 0], s[1], dy)
    if value is not None:
        torch.lerp(ay[0], ay[1], s[2], out=value)
    if grad is None and mixed is None:
        return
    dxy = dx[:, 1] - dx[:, 0]  # (z, N)
    dx_y = torch.addcmul(dx[:, 0], s[1], dxy)  # d/ds_x, interpolated along y: (z, N)
    if grad is not None:
        torch.lerp(dx_y[0], dx_y[1], s[2], out=grad[0])
        torch.lerp(dy[0], dy[1], s[2], out=grad[1])
        torch.sub(ay[1], ay[0], out=grad[2])
    if mixed is not None:
        torch.lerp(dxy[0], dxy[1], s[2], out=mixed[0])
        torch.sub(dx_y[1], dx_y[0], out=mixed[1])
        torch.sub(dy[1], dy[0], out=mixed[2])


def _contract_features(values: torch.Tensor, go: torch.Tensor) -> torch.Tensor:
    """G[c] = sum_f values[c, :, f] go[f]; values (8, N, F), go (F, N) contiguous -> (8, N)."""
    g = values[:, :, 0] * go[0]
    for f in range(1, values.shape[2]):
        g.addcmul_(values[:, :, f], go[f])
    return g


def _directional_weights(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_d v[d] dw/ds_d for the trilinear weights at (3, N) s -> (8, N)."""
    n = s.shape[1]
    a = torch.stack((1 - s, s), 1)  # (3, 2, N)
    b = torch.stack((-v, v), 1)
    yx_a = a[1].view(2, 1, n) * a[0].view(1, 2, n)
    yx_b = b[1].view(2, 1, n) * a[0].view(1, 2, n) + a[1].view(2, 1, n) * b[0].view(1, 2, n)
    u = b[2].view(2, 1, 1, n) * yx_a.view(1, 2, 2, n) + a[2].view(2, 1, 1, n) * yx_b.view(1, 2, 2, n)
    return u.view(8, n)


def _add_scaled(acc: torch.Tensor, value: torch.Tensor, scale: torch.Tensor | float) -> None:
    """acc += value * scale, for a (3, N) or scalar scale."""
    if isinstance(scale, torch.Tensor):
        acc.addcmul_(value, scale)
    else:
        acc.add_(value, alpha=scale)


def _scatter_add(
    grad: torch.Tensor,
    idx: torch.Tensor,
    terms: list[tuple[torch.Tensor, torch.Tensor]],
    workers: _Workers | None = None,
) -> None:
    """Zero grad, then grad[idx[c, n], f] += sum over terms of w[c, n] go[f, n].

    grad (S, F), uninitialised; idx (8, N); terms: (w (8, N), go (F, N) contiguous) pairs.
    One 1-D ``index_add_`` per feature (on a CPU several times faster than a row-wise one);
    zeroing here, just before, finds the memory in cache. Given ``workers``, rows are
    zeroed and then features scattered in parallel.
    """
    flat_idx = idx.view(-1).long()

    def add_features(features: range) -> None:
        for f in features:
            w, go = terms[0]
            src = w * go[f]
            for w, go in terms[1:]:
                src.addcmul_(w, go[f])
            grad[:, f].index_add_(0, flat_idx, src.view(-1))

    n_features = grad.shape[1]
    n_jobs = min(n_features, workers.size) if workers is not None else 1
    if workers is None or n_jobs < 2:
        grad.zero_()
        add_features(range(n_features))
        return
    _run_jobs(workers, [chunk.zero_ for chunk in grad.chunk(workers.size)])
    _run_jobs(workers, [lambda k=k: add_features(range(k, n_features, n_jobs)) for k in range(n_jobs)])


# ----------------------------------------------------------------------------------------
# Autograd functions. Tensors are (3, N) points, a flat (P,) table, (L F, N) features.


@dataclass
class _Plan:
    """Static description of the grid: levels, features per vertex, interpolation."""

    levels: list[GridLevel]
    n_features: int
    smooth: bool

    @property
    def n_params(self) -> int:
        """Scalars in the flat table."""
        return grid_n_params(self.levels, self.n_features)

    def level_table(self, table: torch.Tensor, level: GridLevel) -> torch.Tensor:
        """(S, F) view of one level inside the flat (P,) table."""
        f = self.n_features
        return table[level.offset * f : (level.offset + level.size) * f].view(level.size, f)

    def rows(self, features: torch.Tensor, index: int) -> torch.Tensor:
        """(F, N) rows of level ``index`` in a (L F, N) feature tensor (a view)."""
        f = self.n_features
        return features[index * f : (index + 1) * f]

    def contiguous_rows(self, features: torch.Tensor, index: int) -> torch.Tensor:
        """``rows`` as a contiguous copy (one strided read instead of one per corner)."""
        return self.rows(features, index).contiguous()


def _will_run(ctx: torch.autograd.function.FunctionCtx, index: int) -> bool:
    """Whether the current backward pass needs the gradient of input ``index``."""
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]  # type: ignore[attr-defined]
    return node is not None and _will_execute(node)


def _will_execute(node: object, unknown: bool = True) -> bool:
    """Whether autograd's current pass runs ``node`` (``unknown`` when that cannot be told)."""
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError, TypeError):  # private API absent, or a leaf under autograd.grad
        return unknown


def _current_task() -> int:
    """Id of the backward pass running now (-1 outside one, or when unknown)."""
    try:
        return int(torch._C._current_graph_task_id())
    except AttributeError:
        return -1


@dataclass
class _Derivatives:
    """Per-level derivatives of the features w.r.t. the interpolation coordinates s.

    grad: (F, 3, N) d out_f / d s_d; mixed: (F, 3, N) d2 out_f / d s_a d s_b for
    (a, b) = (x, y), (x, z), (y, z); ds: d s / d x, (3, N) or the scalar scale; d2s:
    d2 s / d x2, (3, N), or None when linear.
    """

    grad: torch.Tensor
    mixed: torch.Tensor
    ds: torch.Tensor | float
    d2s: torch.Tensor | None


class _GridInterp(torch.autograd.Function):
    """(3, N) points, (P,) table -> (L F, N) interpolated features.

    When the points need a gradient, the forward also keeps each level's first and mixed
    second derivatives (they come almost free from the interpolation), so the gradient
    w.r.t. the points and its own backward need no further table reads. The per-level
    lookups are otherwise recomputed, which on a CPU costs less than keeping them.

    Deferred table gradient: in a training step the table gets two scatters, one from the
    features' own gradient (here) and one from the eikonal term (``_GradX.backward``).
    When ``_GradX.backward`` can tell that this node runs later in the same backward pass
    and needs the table gradient too, it leaves its part in ``ctx.deferred`` and both are
    scattered in one pass, which halves the dominant cost of the step.
    """

    @staticmethod
    def forward(ctx, xt: torch.Tensor, table: torch.Tensor, plan: _Plan, want_derivatives: bool) -> torch.Tensor:
        n, f = xt.shape[1], plan.n_features
        workers = _level_workers(n, xt.device)
        out = torch.empty(len(plan.levels) * f, n, dtype=table.dtype, device=table.device)
        derivatives: list[_Derivatives | None] = [None] * len(plan.levels) if want_derivatives else []

        def level_pass(index: int, _: _Workers | None) -> None:
            level = plan.levels[index]
            lookup = _lookup(xt, level, plan.smooth, weights=False)
            values = _gather(plan.level_table(table, level), lookup.idx)
            rows = plan.rows(out, index)
            if not want_derivatives:
                for k in range(f):
                    _trilinear(values[:, :, k], lookup.s, value=rows[k])
                return
            grad = torch.empty(f, 3, n, dtype=table.dtype, device=table.device)
            mixed = torch.empty_like(grad)
            for k in range(f):
                _trilinear(values[:, :, k], lookup.s, value=rows[k], grad=grad[k], mixed=mixed[k])
            derivatives[index] = _Derivatives(grad, mixed, lookup.ds, lookup.d2s)

        with _calling_thread_serial(workers, len(plan.levels)):
            _for_each_level(level_pass, len(plan.levels), workers)
        ctx.save_for_backward(xt, table)
        ctx.plan, ctx.derivatives = plan, derivatives
        ctx.deferred, ctx.ran_in_task = [], None
        return out

    @staticmethod
    def backward(ctx, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return interp_backward(ctx, go, ctx.plan, _GradX, _GradTable, "GridEncoding")


def interp_backward(
    ctx, go: torch.Tensor, backend: Any, grad_x: type, grad_table: type, owner: str
) -> tuple[torch.Tensor | None, ...]:
    """Backward of an interpolation node (saved tensors: points, table): the points' gradient
    through ``grad_x`` and the table's through ``grad_table``, which also scatters the table
    gradients that this pass's ``grad_x`` backward deferred to it. Shared by every CPU backend."""
    x, table = ctx.saved_tensors
    task = _current_task()
    ctx.ran_in_task = task
    deferred = [(ggx, go2) for t, ggx, go2 in ctx.deferred if t == task]
    ctx.deferred.clear()
    gx = grad_x.apply(go, x, table, backend, ctx.derivatives, ctx) if _will_run(ctx, 0) else None
    gt = None
    if _will_run(ctx, 1):
        gt = grad_table.apply(go, x, table, backend, deferred)
    elif deferred:
        raise RuntimeError(f"{owner}: a deferred table gradient found no table to go to")
    return gx, gt, None, None


def _can_defer(interp: torch.autograd.function.FunctionCtx) -> bool:
    """Whether ``_GridInterp.backward`` (node ``interp``) runs later in this pass and scatters."""
    task = _current_task()
    return task != -1 and interp.ran_in_task != task and _will_execute(interp, unknown=False) and _will_run(interp, 1)


def _defer_table_part(ctx, ggx: torch.Tensor, go: torch.Tensor, need_table: bool, may_defer: bool) -> bool:
    """Hand the table part of a grad-x backward to the interpolation node's own backward when it
    runs later in this pass (one scatter for both); return whether the table part must still run here."""
    if need_table and may_defer and _can_defer(ctx.interp):
        ctx.interp.deferred.append((_current_task(), ggx, go))
        return False
    return need_table


class _GradX(torch.autograd.Function):
    """(L F, N) output gradient -> (3, N) gradient w.r.t. the points; twice differentiable."""

    @staticmethod
    def forward(
        ctx,
        go: torch.Tensor,
        xt: torch.Tensor,
        table: torch.Tensor,
        plan: _Plan,
        derivatives: list[_Derivatives],
        interp: torch.autograd.function.FunctionCtx,
    ) -> torch.Tensor:
        workers = _level_workers(xt.shape[1], xt.device)
        parts: list[torch.Tensor | None] = [None] * len(derivatives)

        def level_pass(index: int, _: _Workers | None) -> None:
            deriv = derivatives[index]
            parts[index] = _scaled(_contract_levels(deriv.grad, plan.contiguous_rows(go, index)), deriv.ds)

        with _calling_thread_serial(workers, len(derivatives)):
            _for_each_level(level_pass, len(derivatives), workers)
            gx = _sum(parts, xt)
        ctx.save_for_backward(go, xt, table)
        ctx.plan, ctx.derivatives, ctx.interp = plan, derivatives, interp
        return gx

    @staticmethod
    def backward(ctx, ggx: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        may_defer = not torch.is_grad_enabled()  # a deferred part would have no graph
        return _grad_x_backward(ctx, ggx, may_defer)


@once_differentiable
def _grad_x_backward(ctx, ggx: torch.Tensor, may_defer: bool) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``_GradX`` w.r.t. (go, xt, table) given ``ggx`` (3, N)."""
    go, xt, _ = ctx.saved_tensors
    plan, derivatives = ctx.plan, ctx.derivatives
    need_go, need_x, need_table = (_will_run(ctx, i) for i in range(3))
    need_table = _defer_table_part(ctx, ggx, go, need_table, may_defer)
    workers = _level_workers(xt.shape[1], xt.device)
    g_go = torch.empty(go.shape, dtype=go.dtype, device=go.device) if need_go else None
    g_table = xt.new_empty(plan.n_params) if need_table else None
    hessian_parts: list[torch.Tensor | None] = [None] * len(derivatives)

    def level_pass(index: int, feature_workers: _Workers | None) -> None:
        level, deriv = plan.levels[index], derivatives[index]
        v = ggx * deriv.ds  # (3, N): ggx as a direction in s
        go_rows = plan.contiguous_rows(go, index)
        if need_go:
            rows = plan.rows(g_go, index)
            for k in range(plan.n_features):
                torch.sum(deriv.grad[k] * v, 0, out=rows[k])
        if need_x:
            hessian_parts[index] = _hessian_term(deriv, go_rows, v, ggx)
        if need_table:
            lookup = _lookup(xt, level, plan.smooth, weights=False)
            u = _directional_weights(lookup.s, v)
            _scatter_add(plan.level_table(g_table, level), lookup.idx, [(u, go_rows)], feature_workers)

    with _calling_thread_serial(workers, len(plan.levels)):
        if need_go or need_x or need_table:
            _for_each_level(level_pass, len(plan.levels), workers)
        g_x = _sum(hessian_parts, xt) if need_x else None
    return g_go, g_x, g_table, None, None, None


def _scaled(value: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """value * scale, in place, for a (3, N) or scalar scale."""
    return value.mul_(scale)


def _sum(parts: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """Sum of per-level (3, N) parts (zeros when there are none)."""
    total = torch.zeros_like(like)
    for part in parts:
        total.add_(part)
    return total


def _contract_levels(per_feature: torch.Tensor, go: torch.Tensor) -> torch.Tensor:
    """sum_f per_feature[f] go[f]; per_feature (F, 3, N), go (F, N) -> (3, N)."""
    acc = per_feature[0] * go[0]
    for k in range(1, per_feature.shape[0]):
        acc.addcmul_(per_feature[k], go[k])
    return acc


def _hessian_term(deriv: _Derivatives, go: torch.Tensor, v: torch.Tensor, ggx: torch.Tensor) -> torch.Tensor:
    """sum_f go[f] sum_d ggx[d] d2 out_f / dx_d dx_e for one level -> (3, N); v = ggx ds."""
    h = _contract_levels(deriv.mixed, go)  # (xy, xz, yz)
    hv = torch.stack((h[0] * v[1] + h[1] * v[2], h[0] * v[0] + h[2] * v[2], h[1] * v[0] + h[2] * v[1]))
    hv.mul_(deriv.ds)
    if deriv.d2s is not None:  # smoothstep: d2 out / dx_d2 = d out / ds_d * d2s_d
        hv.addcmul_(_contract_levels(deriv.grad, go) * ggx, deriv.d2s)
    return hv


class _GradTable(torch.autograd.Function):
    """(L F, N) output gradient -> (P,) gradient w.r.t. the table; twice differentiable.

    ``deferred`` holds (ggx (3, N), go (L F, N)) pairs left by ``_GradX.backward``: their
    table gradient is scattered in the same pass (only ever without create_graph).
    """

    @staticmethod
    def forward(
        ctx,
        go: torch.Tensor,
        xt: torch.Tensor,
        table: torch.Tensor,
        plan: _Plan,
        deferred: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        workers = _level_workers(xt.shape[1], xt.device)
        g_table = torch.empty_like(table)

        def level_pass(index: int, feature_workers: _Workers | None) -> None:
            level = plan.levels[index]
            lookup = _lookup(xt, level, plan.smooth, weights=True)
            terms = [(lookup.w, plan.contiguous_rows(go, index))]
            for ggx, go2 in deferred:
                u = _directional_weights(lookup.s, ggx * lookup.ds)
                terms.append((u, plan.contiguous_rows(go2, index)))
            _scatter_add(plan.level_table(g_table, level), lookup.idx, terms, feature_workers)

        with _calling_thread_serial(workers, len(plan.levels)):
            _for_each_level(level_pass, len(plan.levels), workers)
        ctx.save_for_backward(go, xt)
        ctx.plan = plan
        return g_table

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_table: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        go, xt = ctx.saved_tensors
        plan = ctx.plan
        gg_table = gg_table.contiguous()
        need_go, need_x = _will_run(ctx, 0), _will_run(ctx, 1)
        g_go = torch.empty(go.shape, dtype=go.dtype, device=go.device) if need_go else None
        g_x = torch.zeros_like(xt) if need_x else None
        for index, level in enumerate(plan.levels):
            lookup = _lookup(xt, level, plan.smooth, weights=False)
            values = _gather(plan.level_table(gg_table, level), lookup.idx)
            if need_go:
                rows = plan.rows(g_go, index)
                for k in range(plan.n_features):
                    _trilinear(values[:, :, k], lookup.s, value=rows[k])
            if need_x:
                gs = torch.empty_like(xt)
                _trilinear(_contract_features(values, plan.contiguous_rows(go, index)), lookup.s, grad=gs)
                _add_scaled(g_x, gs, lookup.ds)
        return g_go, g_x, None, None, None


# ----------------------------------------------------------------------------------------


class GridEncoding(nn.Module):
    """Multi-resolution hash grid (``hashgrid``) or single dense grid (``densegrid``).

    ``forward``: points (..., 3) in [0, 1]^3 -> features (..., out_dim), level-major
    (level 0's F features first). Differentiable twice w.r.t. the points and the table.
    The table is the one parameter ``params`` (P,), laid out as tiny-cuda-nn lays it out.
    """

    def __init__(self, cfg: EncodingConfig, kind: str = "hashgrid") -> None:
        super().__init__()
        if cfg.interpolation not in ("linear", "smoothstep"):
            raise ValueError(f"interpolation must be linear or smoothstep, got {cfg.interpolation!r}")
        levels, n_features = encoding_levels(cfg, kind)
        self.kind = kind
        self.plan = _Plan(levels, n_features, cfg.interpolation == "smoothstep")
        self.params = nn.Parameter(torch.empty(grid_n_params(levels, n_features)))
        nn.init.uniform_(self.params, -cfg.init_scale, cfg.init_scale)

    @property
    def out_dim(self) -> int:
        """Features per point: levels x features per level."""
        return len(self.plan.levels) * self.plan.n_features

    @property
    def n_features(self) -> int:
        """Features per vertex and level (F)."""
        return self.plan.n_features

    def n_params(self) -> int:
        """Number of scalars in the table."""
        return self.params.numel()

    @property
    def levels(self) -> list[GridLevel]:
        """The levels of the table, coarse to fine."""
        return list(self.plan.levels)

    def layout(self) -> list[GridLevel]:
        """Per-level scale, resolution, size, offset (in vertices) and whether it is hashed."""
        return list(self.plan.levels)

    def describe(self) -> str:
        """The layout as a small text table, one line per level."""
        lines = [f"{'level':>5} {'res':>5} {'scale':>9} {'vertices':>9} {'offset':>9}  storage"]
        for index, lv in enumerate(self.plan.levels):
            storage = "hashed" if lv.hashed else "dense"
            lines.append(f"{index:>5} {lv.resolution:>5} {lv.scale:>9.3f} {lv.size:>9} {lv.offset:>9}  {storage}")
        lines.append(f"{self.n_features} features per vertex, {self.n_params():,} parameters")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        res = [level.resolution for level in self.plan.levels]
        hashed = sum(level.hashed for level in self.plan.levels)
        return (
            f"{self.kind}, levels={len(res)}, F={self.n_features}, resolutions={res[0]}..{res[-1]}, "
            f"hashed_levels={hashed}, params={self.n_params():,}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) points in [0, 1]^3 (clamped to it) -> (..., out_dim) features."""
        if x.shape[-1] != 3:
            raise ValueError(f"GridEncoding expects points of shape (..., 3), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        xt = x.reshape(-1, 3).to(self.params.dtype).clamp(0.0, 1.0).t().contiguous()
        table = self.params.view(-1)  # a non-leaf view, so backward can tell which grads are wanted
        want_derivatives = torch.is_grad_enabled() and xt.requires_grad
        out = _GridInterp.apply(xt, table, self.plan, want_derivatives)
        return out.t().contiguous().view(*lead, self.out_dim)
