"""The pure-PyTorch grid encoding backend: every pass written out with torch ops.

It computes tiny-cuda-nn's lookup (see ``layout.py``) value for value, on any device and in
any float dtype; it is also the reference the other backends are tested against.

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
  scatter (see ``autograd.py``), so the table is scattered once, not twice;
* levels run on a small pool of worker threads, one intra-op thread each (``workers.py``:
  ``index_add_`` uses one core, and per-op threading stalls on a shared machine).

The tests check every pass against ``gradcheck``/``gradgradcheck``, a slow per-point
reference and a plain-autograd twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from recon.encodings.autograd import Needs, grad_x_backward, interp_backward, save_grad_x, save_interp, will_run
from recon.encodings.base import GridEncoding
from recon.encodings.layout import HASH_PRIMES, GridLayout, GridLevel
from recon.encodings.workers import Workers, calling_thread_serial, for_each_level, level_workers, run_jobs

_UINT32 = 0xFFFFFFFF


def _as_int32(value: int) -> int:
    """The int32 with the same low 32 bits as ``value`` (two's complement)."""
    value &= _UINT32
    return value - (1 << 32) if value >= 1 << 31 else value


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
    corner = torch.arange(8, dtype=base.dtype, device=base.device).view(8, 1)  # made on the device: no copy
    idx = base + ((corner & 1) + (corner >> 1 & 1) * res + (corner >> 2 & 1) * (res * res))
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
    workers: Workers | None = None,
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
    run_jobs(workers, [chunk.zero_ for chunk in grad.chunk(workers.size)])
    run_jobs(workers, [lambda k=k: add_features(range(k, n_features, n_jobs)) for k in range(n_jobs)])


def _rows(features: torch.Tensor, grid: GridLayout, index: int) -> torch.Tensor:
    """(F, N) rows of level ``index`` in a (L F, N) feature tensor (a view)."""
    f = grid.n_features
    return features[index * f : (index + 1) * f]


def _contiguous_rows(features: torch.Tensor, grid: GridLayout, index: int) -> torch.Tensor:
    """``_rows`` as a contiguous copy (one strided read instead of one per corner)."""
    return _rows(features, grid, index).contiguous()


# ----------------------------------------------------------------------------------------
# Autograd functions. Tensors are (3, N) points, a flat (P,) table, (L F, N) features; the
# nodes' ``backend`` is the grid's layout (see ``autograd.py`` for the shared plumbing).


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
    lookups are otherwise recomputed, which on a CPU costs less than keeping them. The
    table gradient also scatters the eikonal term's part when ``_GradX.backward`` deferred
    it here (``autograd.py``).
    """

    @staticmethod
    def forward(ctx, xt: torch.Tensor, table: torch.Tensor, grid: GridLayout, want_derivatives: bool) -> torch.Tensor:
        n, f = xt.shape[1], grid.n_features
        workers = level_workers(n, xt.device)
        out = torch.empty(len(grid.levels) * f, n, dtype=table.dtype, device=table.device)
        derivatives: list[_Derivatives | None] = [None] * len(grid.levels) if want_derivatives else []

        def level_pass(index: int, _: Workers | None) -> None:
            level = grid.levels[index]
            lookup = _lookup(xt, level, grid.smooth, weights=False)
            values = _gather(grid.level_table(table, level), lookup.idx)
            rows = _rows(out, grid, index)
            if not want_derivatives:
                for k in range(f):
                    _trilinear(values[:, :, k], lookup.s, value=rows[k])
                return
            grad = torch.empty(f, 3, n, dtype=table.dtype, device=table.device)
            mixed = torch.empty_like(grad)
            for k in range(f):
                _trilinear(values[:, :, k], lookup.s, value=rows[k], grad=grad[k], mixed=mixed[k])
            derivatives[index] = _Derivatives(grad, mixed, lookup.ds, lookup.d2s)

        with calling_thread_serial(workers, len(grid.levels)):
            for_each_level(level_pass, len(grid.levels), workers)
        save_interp(ctx, xt, table, grid, derivatives)
        return out

    @staticmethod
    def backward(ctx, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return interp_backward(ctx, go, _GradX, _GradTable, "TorchGridEncoding")


def _grad_x_back(ctx, ggx: torch.Tensor, go: torch.Tensor, xt: torch.Tensor, needs: Needs) -> tuple:
    """Gradients of ``_GradX`` w.r.t. (go, xt, table) given ``ggx`` (3, N)."""
    grid, derivatives = ctx.backend, ctx.derivatives
    workers = level_workers(xt.shape[1], xt.device)
    g_go = torch.empty(go.shape, dtype=go.dtype, device=go.device) if needs.go else None
    g_table = xt.new_empty(grid.n_params) if needs.table else None
    hessian_parts: list[torch.Tensor | None] = [None] * len(derivatives)

    def level_pass(index: int, feature_workers: Workers | None) -> None:
        level, deriv = grid.levels[index], derivatives[index]
        v = ggx * deriv.ds  # (3, N): ggx as a direction in s
        go_rows = _contiguous_rows(go, grid, index)
        if needs.go:
            rows = _rows(g_go, grid, index)
            for k in range(grid.n_features):
                torch.sum(deriv.grad[k] * v, 0, out=rows[k])
        if needs.x:
            hessian_parts[index] = _hessian_term(deriv, go_rows, v, ggx)
        if needs.table:
            lookup = _lookup(xt, level, grid.smooth, weights=False)
            u = _directional_weights(lookup.s, v)
            _scatter_add(grid.level_table(g_table, level), lookup.idx, [(u, go_rows)], feature_workers)

    with calling_thread_serial(workers, len(grid.levels)):
        if any(needs):
            for_each_level(level_pass, len(grid.levels), workers)
        g_x = _sum(hessian_parts, xt) if needs.x else None
    return g_go, g_x, g_table


class _GradX(torch.autograd.Function):
    """(L F, N) output gradient -> (3, N) gradient w.r.t. the points; twice differentiable."""

    @staticmethod
    def forward(ctx, go: torch.Tensor, xt: torch.Tensor, table: torch.Tensor, interp) -> torch.Tensor:
        grid, derivatives = interp.backend, interp.derivatives
        workers = level_workers(xt.shape[1], xt.device)
        parts: list[torch.Tensor | None] = [None] * len(derivatives)

        def level_pass(index: int, _: Workers | None) -> None:
            deriv = derivatives[index]
            parts[index] = _scaled(_contract_levels(deriv.grad, _contiguous_rows(go, grid, index)), deriv.ds)

        with calling_thread_serial(workers, len(derivatives)):
            for_each_level(level_pass, len(derivatives), workers)
            gx = _sum(parts, xt)
        save_grad_x(ctx, go, xt, table, interp)
        return gx

    backward = staticmethod(grad_x_backward(_grad_x_back))


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
        ctx, go: torch.Tensor, xt: torch.Tensor, table: torch.Tensor, grid: GridLayout, deferred: list[tuple]
    ) -> torch.Tensor:
        workers = level_workers(xt.shape[1], xt.device)
        g_table = torch.empty_like(table)

        def level_pass(index: int, feature_workers: Workers | None) -> None:
            level = grid.levels[index]
            lookup = _lookup(xt, level, grid.smooth, weights=True)
            terms = [(lookup.w, _contiguous_rows(go, grid, index))]
            for ggx, go2 in deferred:
                u = _directional_weights(lookup.s, ggx * lookup.ds)
                terms.append((u, _contiguous_rows(go2, grid, index)))
            _scatter_add(grid.level_table(g_table, level), lookup.idx, terms, feature_workers)

        with calling_thread_serial(workers, len(grid.levels)):
            for_each_level(level_pass, len(grid.levels), workers)
        ctx.save_for_backward(go, xt)
        ctx.grid = grid
        return g_table

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_table: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        go, xt = ctx.saved_tensors
        grid = ctx.grid
        gg_table = gg_table.contiguous()
        need_go, need_x = will_run(ctx, 0), will_run(ctx, 1)
        g_go = torch.empty(go.shape, dtype=go.dtype, device=go.device) if need_go else None
        g_x = torch.zeros_like(xt) if need_x else None
        for index, level in enumerate(grid.levels):
            lookup = _lookup(xt, level, grid.smooth, weights=False)
            values = _gather(grid.level_table(gg_table, level), lookup.idx)
            if need_go:
                rows = _rows(g_go, grid, index)
                for k in range(grid.n_features):
                    _trilinear(values[:, :, k], lookup.s, value=rows[k])
            if need_x:
                gs = torch.empty_like(xt)
                _trilinear(_contract_features(values, _contiguous_rows(go, grid, index)), lookup.s, grad=gs)
                _add_scaled(g_x, gs, lookup.ds)
        return g_go, g_x, None, None, None


# ----------------------------------------------------------------------------------------


class TorchGridEncoding(GridEncoding):
    """The grid encoding in pure PyTorch: any device, any float dtype.

    Differentiable twice w.r.t. the points and the table (``gradcheck`` in float64).
    """

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """Never: plain torch ops run wherever torch does."""
        return None

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) points -> (N, out_dim) features, through the (3, N) / (L F, N) passes."""
        xt = points.t().contiguous()
        table = self.params.view(-1)  # a non-leaf view, so backward can tell which grads are wanted
        want_derivatives = torch.is_grad_enabled() and xt.requires_grad
        return _GridInterp.apply(xt, table, self.grid, want_derivatives).t().contiguous()
