"""Triton kernels of the grid encoding: the fused CPU kernel's four passes, for CUDA GPUs.

Imported only when the Triton backend is built (``triton_backend.py``), never by ``import
recon``. ``TRITON_INTERPRET=1`` must be set before this module is imported for its kernels
to run on CPU tensors through Triton's interpreter (the tests do that).

The same quantities as ``csrc/fused_grid.cpp`` and ``torch_backend.py`` (tiny-cuda-nn's layout
and hash, float32):

* ``forward_kernel``: features (N, L F); with ``DERIVATIVES`` also d out / ds and the mixed
  d2 out / ds_a ds_b, each (N, L, F, 3) (point-major, unlike the fused kernel's (L, N, F, 3):
  the passes that read them loop over the levels of a block of points);
* ``grad_x_kernel``: d loss / dx (N, 3) = sum_l,f go * d out / ds * ds / dx;
* ``grad_x_back_kernel``: the eikonal's double backward, to the output gradient and the points;
* ``scatter_kernel``: the table gradient, ``go_w * w_c`` plus ``go_dir * (dw_c / ds . ggx ds)``
  (the eikonal term's part), added with atomics.

A program handles ``BLOCK`` points of one level (forward, scatter) or of every level in turn
(grad_x, grad_x_back, whose outputs sum over levels). Feature rows are ``F_PAD`` wide (the
next power of two), masked to ``F``. Per-level constants come from two small tables:
``levels_f`` (L, 3) float32 (scale, 6 scale, scale^2) and ``levels_i`` (L, 4) int64
(resolution, size, offset, hashed).
"""

from __future__ import annotations

import triton
import triton.language as tl

PRIME_Y: tl.constexpr = tl.constexpr(2654435761)
PRIME_Z: tl.constexpr = tl.constexpr(805459861)


@triton.jit
def _axis(x, scale, ds_smooth, d2s_smooth, SMOOTH: tl.constexpr):
    """One coordinate of BLOCK points in a level: (cell, s, ds/dx, d2s/dx2)."""
    x = tl.where(x > 0.0, tl.where(x < 1.0, x, 1.0), 0.0)  # clamp; NaN -> 0, as the fused kernel
    pos = x * scale + 0.5
    cell = pos.to(tl.int32)  # pos >= 0.5: truncation is floor
    frac = pos - cell.to(tl.float32)
    if SMOOTH:
        s = frac * frac * (3.0 - 2.0 * frac)
        ds = frac * (1.0 - frac) * ds_smooth
        d2s = (6.0 - 12.0 * frac) * d2s_smooth
    else:
        s = frac
        ds = tl.zeros_like(frac) + scale
        d2s = tl.zeros_like(frac)
    return cell, s, ds, d2s


@triton.jit
def _level_f(levels_f, level):
    """(scale, 6 scale, scale^2) of a level."""
    return tl.load(levels_f + 3 * level), tl.load(levels_f + 3 * level + 1), tl.load(levels_f + 3 * level + 2)


@triton.jit
def _level_i(levels_i, level):
    """(resolution, size, offset, hashed) of a level."""
    res = tl.load(levels_i + 4 * level)
    size = tl.load(levels_i + 4 * level + 1)
    offset = tl.load(levels_i + 4 * level + 2)
    hashed = tl.load(levels_i + 4 * level + 3)
    return res, size, offset, hashed


@triton.jit
def _vertex(cx, cy, cz, DX: tl.constexpr, DY: tl.constexpr, DZ: tl.constexpr, res, size, offset, hashed):
    """Absolute vertex index (int64) of corner (DX, DY, DZ) of the cells (cx, cy, cz).

    Hashed: ``x ^ y * 2654435761 ^ z * 805459861``; its low bits are those of the uint32 hash,
    and sizes of hashed levels are powers of two, so the int64 products need no wrapping.
    Dense: ``x + y res + z res^2``, taken modulo the size past the far face.
    """
    ix = (cx + DX).to(tl.int64)
    iy = (cy + DY).to(tl.int64)
    iz = (cz + DZ).to(tl.int64)
    h = (ix ^ (iy * PRIME_Y) ^ (iz * PRIME_Z)) & (size - 1)
    dense = ix + iy * res + iz * (res * res)
    dense = tl.where(dense >= size, dense % size, dense)
    return offset + tl.where(hashed != 0, h, dense)


@triton.jit
def _gather(table, vertex, rows_ok, feats, F: tl.constexpr):
    """Rows (BLOCK, F_PAD) of the table at (BLOCK,) vertices."""
    mask = rows_ok[:, None] & (feats[None, :] < F)
    return tl.load(table + vertex[:, None] * F + feats[None, :], mask=mask, other=0.0)


@triton.jit
def _locate(x_ptr, rows, rows_ok, levels_f, levels_i, level, SMOOTH: tl.constexpr):
    """Cells, s, ds, d2s of BLOCK points in a level, and the level's integer constants."""
    scale, ds_smooth, d2s_smooth = _level_f(levels_f, level)
    x = tl.load(x_ptr + 3 * rows, mask=rows_ok, other=0.0)
    y = tl.load(x_ptr + 3 * rows + 1, mask=rows_ok, other=0.0)
    z = tl.load(x_ptr + 3 * rows + 2, mask=rows_ok, other=0.0)
    cx, sx, dsx, d2sx = _axis(x, scale, ds_smooth, d2s_smooth, SMOOTH)
    cy, sy, dsy, d2sy = _axis(y, scale, ds_smooth, d2s_smooth, SMOOTH)
    cz, sz, dsz, d2sz = _axis(z, scale, ds_smooth, d2s_smooth, SMOOTH)
    return cx, cy, cz, sx, sy, sz, dsx, dsy, dsz, d2sx, d2sy, d2sz


@triton.jit
def forward_kernel(
    x_ptr, table, out, dgrad, dmixed, levels_f, levels_i, n, N_LEVELS: tl.constexpr,
    F: tl.constexpr, F_PAD: tl.constexpr, SMOOTH: tl.constexpr, DERIVATIVES: tl.constexpr, BLOCK: tl.constexpr,
):
    """Features of BLOCK points at one level (program (block, level)); derivatives when asked."""
    level = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows_ok = rows < n
    feats = tl.arange(0, F_PAD)
    cx, cy, cz, sx, sy, sz, _, _, _, _, _, _ = _locate(x_ptr, rows, rows_ok, levels_f, levels_i, level, SMOOTH)
    res, size, offset, hashed = _level_i(levels_i, level)
    g0 = _gather(table, _vertex(cx, cy, cz, 0, 0, 0, res, size, offset, hashed), rows_ok, feats, F)
    g1 = _gather(table, _vertex(cx, cy, cz, 1, 0, 0, res, size, offset, hashed), rows_ok, feats, F)
    g2 = _gather(table, _vertex(cx, cy, cz, 0, 1, 0, res, size, offset, hashed), rows_ok, feats, F)
    g3 = _gather(table, _vertex(cx, cy, cz, 1, 1, 0, res, size, offset, hashed), rows_ok, feats, F)
    g4 = _gather(table, _vertex(cx, cy, cz, 0, 0, 1, res, size, offset, hashed), rows_ok, feats, F)
    g5 = _gather(table, _vertex(cx, cy, cz, 1, 0, 1, res, size, offset, hashed), rows_ok, feats, F)
    g6 = _gather(table, _vertex(cx, cy, cz, 0, 1, 1, res, size, offset, hashed), rows_ok, feats, F)
    g7 = _gather(table, _vertex(cx, cy, cz, 1, 1, 1, res, size, offset, hashed), rows_ok, feats, F)
    sx, sy, sz = sx[:, None], sy[:, None], sz[:, None]
    # along x, then y, then z (as the other backends)
    dx0, dx1, dx2, dx3 = g1 - g0, g3 - g2, g5 - g4, g7 - g6
    ax0, ax1, ax2, ax3 = g0 + sx * dx0, g2 + sx * dx1, g4 + sx * dx2, g6 + sx * dx3
    dy0, dy1 = ax1 - ax0, ax3 - ax2
    ay0, ay1 = ax0 + sy * dy0, ax2 + sy * dy1
    mask = rows_ok[:, None] & (feats[None, :] < F)
    tl.store(out + rows[:, None] * (N_LEVELS * F) + level * F + feats[None, :], ay0 + sz * (ay1 - ay0), mask=mask)
    if DERIVATIVES:
        dxy0, dxy1 = dx1 - dx0, dx3 - dx2
        dx_y0, dx_y1 = dx0 + sy * dxy0, dx2 + sy * dxy1
        at = ((rows[:, None] * N_LEVELS + level) * F + feats[None, :]) * 3
        tl.store(dgrad + at, dx_y0 + sz * (dx_y1 - dx_y0), mask=mask)
        tl.store(dgrad + at + 1, dy0 + sz * (dy1 - dy0), mask=mask)
        tl.store(dgrad + at + 2, ay1 - ay0, mask=mask)
        tl.store(dmixed + at, dxy0 + sz * (dxy1 - dxy0), mask=mask)
        tl.store(dmixed + at + 1, dx_y1 - dx_y0, mask=mask)
        tl.store(dmixed + at + 2, dy1 - dy0, mask=mask)


@triton.jit
def _dot_features(d, at, k: tl.constexpr, g, mask):
    """sum_f d[at + k] g over a (BLOCK, F_PAD) block of (.., F, 3) derivatives -> (BLOCK,)."""
    return tl.sum(tl.load(d + at + k, mask=mask, other=0.0) * g, axis=1)


@triton.jit
def grad_x_kernel(
    go, x_ptr, dgrad, gx, levels_f, levels_i, n, N_LEVELS: tl.constexpr,
    F: tl.constexpr, F_PAD: tl.constexpr, SMOOTH: tl.constexpr, BLOCK: tl.constexpr,
):
    """d loss / dx of BLOCK points, summed over the levels, from the kept d out / ds."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows_ok = rows < n
    feats = tl.arange(0, F_PAD)
    mask = rows_ok[:, None] & (feats[None, :] < F)
    acc_x = tl.zeros([BLOCK], dtype=tl.float32)
    acc_y = tl.zeros([BLOCK], dtype=tl.float32)
    acc_z = tl.zeros([BLOCK], dtype=tl.float32)
    for level in range(N_LEVELS):
        _, _, _, _, _, _, dsx, dsy, dsz, _, _, _ = _locate(x_ptr, rows, rows_ok, levels_f, levels_i, level, SMOOTH)
        g = tl.load(go + rows[:, None] * (N_LEVELS * F) + level * F + feats[None, :], mask=mask, other=0.0)
        at = ((rows[:, None] * N_LEVELS + level) * F + feats[None, :]) * 3
        acc_x += _dot_features(dgrad, at, 0, g, mask) * dsx
        acc_y += _dot_features(dgrad, at, 1, g, mask) * dsy
        acc_z += _dot_features(dgrad, at, 2, g, mask) * dsz
    tl.store(gx + 3 * rows, acc_x, mask=rows_ok)
    tl.store(gx + 3 * rows + 1, acc_y, mask=rows_ok)
    tl.store(gx + 3 * rows + 2, acc_z, mask=rows_ok)


@triton.jit
def grad_x_back_kernel(
    ggx, go, x_ptr, dgrad, dmixed, g_go, g_x, levels_f, levels_i, n, N_LEVELS: tl.constexpr,
    F: tl.constexpr, F_PAD: tl.constexpr, SMOOTH: tl.constexpr, NEED_GO: tl.constexpr, NEED_X: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Given ggx = d loss / d grad_x (N, 3), the gradients w.r.t. go and x (the fused kernel's formulas):

    g_go[l f] = sum_d ggx_d ds_d d out_lf / ds_d;
    g_x[e] = ds_e sum_{d != e} H_de v_d + ggx_e d2s_e sum_f go_f d out_f / ds_e, with v = ggx ds and
    H = sum_f go_f d2 out_f / ds ds (mixed terms only).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows_ok = rows < n
    feats = tl.arange(0, F_PAD)
    mask = rows_ok[:, None] & (feats[None, :] < F)
    ggx_x = tl.load(ggx + 3 * rows, mask=rows_ok, other=0.0)
    ggx_y = tl.load(ggx + 3 * rows + 1, mask=rows_ok, other=0.0)
    ggx_z = tl.load(ggx + 3 * rows + 2, mask=rows_ok, other=0.0)
    acc_x = tl.zeros([BLOCK], dtype=tl.float32)
    acc_y = tl.zeros([BLOCK], dtype=tl.float32)
    acc_z = tl.zeros([BLOCK], dtype=tl.float32)
    for level in range(N_LEVELS):
        _, _, _, _, _, _, dsx, dsy, dsz, d2sx, d2sy, d2sz = _locate(
            x_ptr, rows, rows_ok, levels_f, levels_i, level, SMOOTH
        )
        vx, vy, vz = ggx_x * dsx, ggx_y * dsy, ggx_z * dsz
        at = ((rows[:, None] * N_LEVELS + level) * F + feats[None, :]) * 3
        d0 = tl.load(dgrad + at, mask=mask, other=0.0)
        d1 = tl.load(dgrad + at + 1, mask=mask, other=0.0)
        d2 = tl.load(dgrad + at + 2, mask=mask, other=0.0)
        where = rows[:, None] * (N_LEVELS * F) + level * F + feats[None, :]
        if NEED_GO:
            tl.store(g_go + where, d0 * vx[:, None] + d1 * vy[:, None] + d2 * vz[:, None], mask=mask)
        if NEED_X:
            g = tl.load(go + where, mask=mask, other=0.0)
            h_xy = _dot_features(dmixed, at, 0, g, mask)
            h_xz = _dot_features(dmixed, at, 1, g, mask)
            h_yz = _dot_features(dmixed, at, 2, g, mask)
            acc_x += (h_xy * vy + h_xz * vz) * dsx + tl.sum(d0 * g, axis=1) * ggx_x * d2sx
            acc_y += (h_xy * vx + h_yz * vz) * dsy + tl.sum(d1 * g, axis=1) * ggx_y * d2sy
            acc_z += (h_xz * vx + h_yz * vy) * dsz + tl.sum(d2 * g, axis=1) * ggx_z * d2sz
    if NEED_X:
        tl.store(g_x + 3 * rows, acc_x, mask=rows_ok)
        tl.store(g_x + 3 * rows + 1, acc_y, mask=rows_ok)
        tl.store(g_x + 3 * rows + 2, acc_z, mask=rows_ok)


@triton.jit
def _scatter_corner(
    out, cx, cy, cz, FX: tl.constexpr, FY: tl.constexpr, FZ: tl.constexpr, res, size, offset, hashed,
    sx, sy, sz, vx, vy, vz, go_w, go_dir, mask, feats,
    F: tl.constexpr, WEIGHTED: tl.constexpr, DIRECTIONAL: tl.constexpr,
):
    """out[vertex] += w go_w + u go_dir for corner (FX, FY, FZ): w = ax ay az and u = d w / ds . v,
    with a = s or 1 - s and b = v or -v per axis, as the corner lies on the far or near side."""
    if FX:
        ax, bx = sx, vx
    else:
        ax, bx = 1.0 - sx, -vx
    if FY:
        ay, by = sy, vy
    else:
        ay, by = 1.0 - sy, -vy
    if FZ:
        az, bz = sz, vz
    else:
        az, bz = 1.0 - sz, -vz
    src = tl.zeros_like(go_w)
    if WEIGHTED:
        src += (az * (ay * ax))[:, None] * go_w
    if DIRECTIONAL:
        src += (bz * (ay * ax) + az * (by * ax + ay * bx))[:, None] * go_dir
    vertex = _vertex(cx, cy, cz, FX, FY, FZ, res, size, offset, hashed)
    tl.atomic_add(out + vertex[:, None] * F + feats[None, :], src, mask=mask)


@triton.jit
def scatter_kernel(
    x_ptr, go_w_ptr, ggx, go_dir_ptr, out, levels_f, levels_i, n, N_LEVELS: tl.constexpr,
    F: tl.constexpr, F_PAD: tl.constexpr, SMOOTH: tl.constexpr, WEIGHTED: tl.constexpr,
    DIRECTIONAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """Table gradient of BLOCK points at one level: the features' own (``WEIGHTED``: go_w times the
    trilinear weights) and one eikonal term (``DIRECTIONAL``: go_dir times the weights' derivative
    along ggx ds), added into ``out`` with atomics."""
    level = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows_ok = rows < n
    feats = tl.arange(0, F_PAD)
    mask = rows_ok[:, None] & (feats[None, :] < F)
    cx, cy, cz, sx, sy, sz, dsx, dsy, dsz, _, _, _ = _locate(x_ptr, rows, rows_ok, levels_f, levels_i, level, SMOOTH)
    res, size, offset, hashed = _level_i(levels_i, level)
    where = rows[:, None] * (N_LEVELS * F) + level * F + feats[None, :]
    go_w = tl.zeros([BLOCK, F_PAD], dtype=tl.float32)
    go_dir = tl.zeros([BLOCK, F_PAD], dtype=tl.float32)
    vx = tl.zeros_like(sx)
    vy = tl.zeros_like(sx)
    vz = tl.zeros_like(sx)
    if WEIGHTED:
        go_w = tl.load(go_w_ptr + where, mask=mask, other=0.0)
    if DIRECTIONAL:
        go_dir = tl.load(go_dir_ptr + where, mask=mask, other=0.0)
        vx = tl.load(ggx + 3 * rows, mask=rows_ok, other=0.0) * dsx
        vy = tl.load(ggx + 3 * rows + 1, mask=rows_ok, other=0.0) * dsy
        vz = tl.load(ggx + 3 * rows + 2, mask=rows_ok, other=0.0) * dsz
    for corner in tl.static_range(8):  # unrolled: the corner's side per axis is a constant
        _scatter_corner(
            out, cx, cy, cz, corner & 1, corner >> 1 & 1, corner >> 2 & 1, res, size, offset, hashed,
            sx, sy, sz, vx, vy, vz, go_w, go_dir, mask, feats, F, WEIGHTED, DIRECTIONAL,
        )


def _interpreted() -> bool:
    """Whether ``triton.jit`` made interpreter functions here (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(forward_kernel, InterpretedFunction)


interpreted = _interpreted()
"""The kernels run in Triton's interpreter, on CPU tensors."""
