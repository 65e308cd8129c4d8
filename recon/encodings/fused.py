"""Fused CPU grid encoding: ``GridEncoding`` with each pass in one compiled C++/OpenMP kernel.

The kernel (``csrc/fused_grid.cpp``) computes the same quantities as the pure-PyTorch
reference in ``grid.py`` (same layout, same hash, same derivatives), so checkpoints and
the ``params`` Parameter are interchangeable. It is built with
``torch.utils.cpp_extension.load`` the first time it is needed (never at import), with
``-O3`` and OpenMP, and cached under ``$XDG_CACHE_HOME/recon/torch_extensions`` (default
``~/.cache``; ``RECON_EXTENSIONS_DIR`` overrides it). When it cannot be built (no compiler,
no ninja, a failed build) ``load_extension`` logs one warning and returns None, and
``make_encoding`` falls back to the pure-PyTorch encoding.

Passes, as in ``grid.py``: ``_FusedInterp`` (features; keeps d/ds and the mixed second
derivatives when the points need a gradient), ``_FusedGradX`` (d features / dx, twice
differentiable: the eikonal term) and ``_FusedGradTable`` (the table gradient). In a
training step the eikonal term's table gradient is merged into the features' own scatter,
so the table is scattered once.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch
from torch.autograd.function import once_differentiable

from recon.config import EncodingConfig
from recon.encodings.grid import GridEncoding, _defer_table_part, _will_run, interp_backward

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_grid.cpp"
EXTENSION_NAME = "recon_fused_grid"
BUILD_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
"""-ffp-contract=off: no fused multiply-adds, so positions round as in the PyTorch reference."""

_build_lock = threading.Lock()
_extension: ModuleType | None = None
_failure: str | None = None


def extensions_dir() -> Path:
    """Where the compiled kernel is cached: one folder per Python and torch version."""
    root = os.environ.get("RECON_EXTENSIONS_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recon" / "torch_extensions"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
    return base / tag


def _build() -> ModuleType:
    """Compile (or reuse the cached build of) the kernel and import it."""
    from torch.utils import cpp_extension  # imports setuptools machinery: only when building

    build_dir = extensions_dir() / EXTENSION_NAME
    build_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(build_dir / "lock")
    _put_ninja_on_path()
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(SOURCE)],
        extra_cflags=BUILD_FLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=False,
    )


STALE_LOCK_S = 600.0
"""A build lock older than this was left by a killed build (torch would wait on it forever)."""


def _remove_stale_lock(lock: Path) -> None:
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
            log.warning("recon: removed a stale build lock %s", lock)
    except FileNotFoundError:
        pass


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH: add the pip package's binary when a venv is not activated."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return  # the build then fails with torch's own message, and we fall back
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def load_extension() -> ModuleType | None:
    """The compiled kernel, built on first use; None (after one warning) when it cannot be built."""
    global _extension, _failure
    with _build_lock:
        if _extension is None and _failure is None:
            log.info("building the fused CPU grid kernel (once; cached in %s)", extensions_dir())
            try:
                _extension = _build()
            except Exception as err:  # no compiler or ninja, a failed build or import: fall back
                lines = str(err).strip().splitlines()
                _failure = f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
                log.debug("fused CPU grid kernel build failed", exc_info=True)
                log.warning(
                    "recon: the fused CPU grid kernel could not be built (%s); using the pure-PyTorch encoding",
                    _failure,
                )
        return _extension


def extension_failure() -> str | None:
    """Why the kernel could not be built (None when it was, or has not been tried)."""
    return _failure


# ----------------------------------------------------------------------------------------


LayoutKey = tuple[tuple[tuple[float, int, int, int, bool], ...], int, bool]
"""Per-level (scale, resolution, size, offset, hashed), features per vertex, smoothstep."""


@functools.lru_cache(maxsize=32)
def _compiled_grid(key: LayoutKey) -> object:
    """The kernel's ``Grid`` for a layout (kept out of the module, so that it pickles)."""
    levels, n_features, smooth = key
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"the fused CPU grid kernel is unavailable ({_failure})")
    scales, res, sizes, offsets, hashed = (list(column) for column in zip(*levels))
    return ext.Grid(scales, res, sizes, offsets, hashed, n_features, smooth)


class _Kernel:
    """The compiled extension, a layout in it, and the scatter strategy (owned rows, or atomic adds)."""

    def __init__(self, key: LayoutKey, scatter_mode: str = "owned") -> None:
        self.ext = load_extension()
        self.grid = _compiled_grid(key)
        self.scatter_mode = scatter_mode

    def forward(self, x: torch.Tensor, table: torch.Tensor, want_derivatives: bool) -> list[torch.Tensor]:
        return self.ext.forward(self.grid, x, table, want_derivatives)

    def grad_x(self, go: torch.Tensor, x: torch.Tensor, dgrad: torch.Tensor) -> torch.Tensor:
        return self.ext.grad_x(self.grid, go, x, dgrad)

    def grad_x_back(self, ggx, go, x, derivatives, need_go: bool, need_x: bool) -> list[torch.Tensor | None]:
        g_go, g_x = self.ext.grad_x_back(self.grid, ggx, go, x, derivatives[0], derivatives[1], need_go, need_x)
        return [g_go if need_go else None, g_x if need_x else None]

    def scatter(self, x: torch.Tensor, go: torch.Tensor | None, directional: list[tuple[torch.Tensor, torch.Tensor]]):
        """Table gradient of ``go`` (trilinear weights) plus each (ggx, go2) eikonal term."""
        ggx = [pair[0].contiguous() for pair in directional]
        go2 = [pair[1].contiguous() for pair in directional]
        return self.ext.scatter(self.grid, x, go, ggx, go2, self.scatter_mode)


class _FusedInterp(torch.autograd.Function):
    """(N, 3) points, (P,) table -> (N, L F) features (see ``grid._GridInterp``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, kernel: _Kernel, want_derivatives: bool) -> torch.Tensor:
        out, *derivatives = kernel.forward(x, table, want_derivatives)
        ctx.save_for_backward(x, table)
        ctx.kernel, ctx.derivatives = kernel, derivatives
        ctx.deferred, ctx.ran_in_task = [], None
        return out

    @staticmethod
    def backward(ctx, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return interp_backward(ctx, go.contiguous(), ctx.kernel, _FusedGradX, _FusedGradTable, "FusedGridEncoding")


class _FusedGradX(torch.autograd.Function):
    """(N, L F) output gradient -> (N, 3) gradient w.r.t. the points; twice differentiable."""

    @staticmethod
    def forward(ctx, go, x, table, kernel: _Kernel, derivatives: list[torch.Tensor], interp) -> torch.Tensor:
        ctx.save_for_backward(go, x, table)
        ctx.kernel, ctx.derivatives, ctx.interp = kernel, derivatives, interp
        return kernel.grad_x(go, x, derivatives[0])

    @staticmethod
    def backward(ctx, ggx: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        may_defer = not torch.is_grad_enabled()  # a deferred part would have no graph
        return _grad_x_backward(ctx, ggx, may_defer)


@once_differentiable
def _grad_x_backward(ctx, ggx: torch.Tensor, may_defer: bool) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``_FusedGradX`` w.r.t. (go, x, table) given ``ggx`` (N, 3)."""
    go, x, _ = ctx.saved_tensors
    ggx = ggx.contiguous()
    need_go, need_x, need_table = (_will_run(ctx, i) for i in range(3))
    need_table = _defer_table_part(ctx, ggx, go, need_table, may_defer)
    g_go = g_x = g_table = None
    if need_go or need_x:
        g_go, g_x = ctx.kernel.grad_x_back(ggx, go, x, ctx.derivatives, need_go, need_x)
    if need_table:
        g_table = ctx.kernel.scatter(x, None, [(ggx, go)])
    return g_go, g_x, g_table, None, None, None


class _FusedGradTable(torch.autograd.Function):
    """(N, L F) output gradient -> (P,) table gradient (plus deferred eikonal terms)."""

    @staticmethod
    def forward(ctx, go, x, table, kernel: _Kernel, deferred: list[tuple[torch.Tensor, torch.Tensor]]):
        ctx.save_for_backward(go, x)
        ctx.kernel = kernel
        return kernel.scatter(x, go, deferred)

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_table: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        go, x = ctx.saved_tensors
        need_go, need_x = _will_run(ctx, 0), _will_run(ctx, 1)
        if not (need_go or need_x):
            return None, None, None, None, None
        out, *derivatives = ctx.kernel.forward(x, gg_table.contiguous(), need_x)
        g_x = ctx.kernel.grad_x(go, x, derivatives[0]) if need_x else None
        return (out if need_go else None), g_x, None, None, None


# ----------------------------------------------------------------------------------------


class FusedGridEncoding(GridEncoding):
    """``GridEncoding`` computed by the fused CPU kernel (float32, CPU).

    Same parameter, layout, interface and results as ``GridEncoding``; raises
    ``RuntimeError`` when the kernel cannot be built (``make_encoding`` checks first). On
    another device or dtype it runs the pure-PyTorch passes it inherits.
    """

    def __init__(self, cfg: EncodingConfig, kind: str = "hashgrid", scatter_mode: str = "owned") -> None:
        super().__init__(cfg, kind)
        levels = tuple((lv.scale, lv.resolution, lv.size, lv.offset, lv.hashed) for lv in self.plan.levels)
        self._layout_key: LayoutKey = (levels, self.plan.n_features, self.plan.smooth)
        self.scatter_mode = scatter_mode
        _compiled_grid(self._layout_key)  # build now, not inside the first training step

    def extra_repr(self) -> str:
        return "fused CPU kernel, " + super().extra_repr()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) points in [0, 1]^3 (clamped to it) -> (..., out_dim) features."""
        if self.params.device.type != "cpu" or self.params.dtype != torch.float32 or x.device.type != "cpu":
            return super().forward(x)
        if x.shape[-1] != 3:
            raise ValueError(f"GridEncoding expects points of shape (..., 3), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        points = x.reshape(-1, 3).to(torch.float32).clamp(0.0, 1.0).contiguous()
        table = self.params.view(-1)  # a non-leaf view, so backward can tell which grads are wanted
        want_derivatives = torch.is_grad_enabled() and points.requires_grad
        out = _FusedInterp.apply(points, table, _Kernel(self._layout_key, self.scatter_mode), want_derivatives)
        return out.view(*lead, self.out_dim)
