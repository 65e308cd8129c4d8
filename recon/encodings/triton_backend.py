"""The Triton grid encoding backend: the fused kernel's passes as Triton kernels, for CUDA GPUs.

No build step: Triton compiles the kernels (``triton_kernels.py``) for the GPU at their first
launch. ``triton`` is imported lazily, when the backend is asked about or built, never by
``import recon``; a machine without it simply has no ``triton`` backend.

The passes and their autograd nodes are those of the fused CPU backend (``autograd.py``'s
kernel nodes: features with the derivatives kept when the points need a gradient, grad_x,
grad_x's backward, the table scatter with the deferred eikonal terms), so a training step
scatters the table once. Float32 only.

On the CPU the backend runs only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
the kernels are first imported), which is how the test suite checks every pass without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from types import ModuleType

import torch

from recon.config import EncodingConfig
from recon.encodings.autograd import kernel_encode
from recon.encodings.base import GridEncoding
from recon.encodings.layout import GridKind, GridLayout

BLOCK = 128
"""Points per Triton program on a GPU."""
INTERPRETER_BLOCK = 4096
"""Most points per program in the interpreter, whose cost is per operation and program, not per point."""


@functools.lru_cache(maxsize=1)
def _import_kernels() -> tuple[ModuleType | None, str]:
    """(the kernels module, "") when triton imports, else (None, the reason)."""
    try:
        from recon.encodings import triton_kernels
    except Exception as err:  # ImportError, or a broken install failing in its own way
        return None, f"{type(err).__name__}: {err}"
    return triton_kernels, ""


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (on CPU tensors), not compiled for a GPU."""
    kernels, _ = _import_kernels()
    if kernels is None:
        return os.environ.get("TRITON_INTERPRET") == "1"
    return kernels.interpreted


@functools.lru_cache(maxsize=64)
def _level_tables(grid: GridLayout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level constants on ``device``: (L, 3) float32 (scale, 6 scale, scale^2), rounded to float32
    from double as the fused kernel rounds them, and (L, 4) int64 (resolution, size, offset, hashed)."""
    floats = [(lv.scale, 6.0 * lv.scale, lv.scale * lv.scale) for lv in grid.levels]
    ints = [(lv.resolution, lv.size, lv.offset, int(lv.hashed)) for lv in grid.levels]
    as_f32 = torch.tensor(floats, dtype=torch.float64).float()
    return as_f32.to(device), torch.tensor(ints, dtype=torch.int64).to(device)


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@contextlib.contextmanager
def _on(device: torch.device) -> Iterator[None]:
    """Launch on ``device``'s GPU (Triton launches on the current one)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


class _TritonKernel:
    """A layout's kernels on one device: an ``autograd.GridKernel``."""

    owner = "TritonGridEncoding"

    def __init__(self, grid: GridLayout, device: torch.device) -> None:
        self.k, _ = _import_kernels()
        self.grid, self.device = grid, device
        self.levels_f, self.levels_i = _level_tables(grid, device)
        self.n_levels, self.n_features = len(grid.levels), grid.n_features
        self.f_pad = _next_power_of_two(self.n_features)
        self.block = BLOCK

    def _sized(self, n: int) -> int:
        """Programs for ``n`` points (setting the block size: in the interpreter, all points in one)."""
        if self.k.interpreted:
            self.block = min(_next_power_of_two(n), INTERPRETER_BLOCK)
        return (n + self.block - 1) // self.block

    def _constants(self) -> dict[str, object]:
        return {
            "N_LEVELS": self.n_levels, "F": self.n_features, "F_PAD": self.f_pad, "SMOOTH": self.grid.smooth,
            "BLOCK": self.block,
        }

    def forward(self, x: torch.Tensor, table: torch.Tensor, want_derivatives: bool) -> list[torch.Tensor]:
        n, width = x.shape[0], self.n_levels * self.n_features
        out = x.new_empty(n, width)
        dgrad = x.new_empty(n, self.n_levels, self.n_features, 3) if want_derivatives else out
        dmixed = torch.empty_like(dgrad) if want_derivatives else out
        if n:
            with _on(x.device):
                self.k.forward_kernel[(self._sized(n), self.n_levels)](
                    x, table, out, dgrad, dmixed, self.levels_f, self.levels_i, n,
                    DERIVATIVES=want_derivatives, **self._constants(),
                )
        return [out, dgrad, dmixed] if want_derivatives else [out]

    def grad_x(self, go: torch.Tensor, x: torch.Tensor, dgrad: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        gx = x.new_empty(n, 3)
        if n:
            with _on(x.device):
                self.k.grad_x_kernel[(self._sized(n),)](
                    go.contiguous(), x, dgrad, gx, self.levels_f, self.levels_i, n, **self._constants()
                )
        return gx

    def grad_x_back(
        self, ggx: torch.Tensor, go: torch.Tensor, x: torch.Tensor, derivatives: list[torch.Tensor],
        need_go: bool, need_x: bool,
    ) -> list[torch.Tensor | None]:
        n = x.shape[0]
        g_go = torch.empty_like(go) if need_go else None
        g_x = x.new_empty(n, 3) if need_x else None
        if n and (need_go or need_x):
            with _on(x.device):
                self.k.grad_x_back_kernel[(self._sized(n),)](
                    ggx.contiguous(), go.contiguous(), x, derivatives[0], derivatives[1],
                    g_go if need_go else x, g_x if need_x else x, self.levels_f, self.levels_i, n,
                    NEED_GO=need_go, NEED_X=need_x, **self._constants(),
                )
        return [g_go, g_x]

    def scatter(
        self, x: torch.Tensor, go: torch.Tensor | None, directional: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """Table gradient (P,): go times the weights plus each eikonal term; one launch per term
        after the first (the atomics add them up)."""
        out = torch.zeros(self.grid.n_params, dtype=x.dtype, device=x.device)
        n = x.shape[0]
        terms: list[tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]] = [(go, None)]
        if directional:
            terms = [(go, directional[0]), *((None, pair) for pair in directional[1:])]
        for go_w, pair in terms:
            if n == 0 or (go_w is None and pair is None):
                continue
            ggx, go_dir = pair if pair is not None else (x, x)
            with _on(x.device):
                self.k.scatter_kernel[(self._sized(n), self.n_levels)](
                    x, go_w.contiguous() if go_w is not None else x, ggx.contiguous(), go_dir.contiguous(), out,
                    self.levels_f, self.levels_i, n,
                    WEIGHTED=go_w is not None, DIRECTIONAL=pair is not None, **self._constants(),
                )
        return out


class TritonGridEncoding(GridEncoding):
    """The grid encoding computed by Triton kernels (CUDA, float32; the CPU under the interpreter).

    Same parameter, layout, interface and results as ``TorchGridEncoding``, so checkpoints move
    between it and every other backend. ``forward`` raises ``RuntimeError`` when the table or the
    points are moved to another device or dtype: choose the backend for the device
    (``make_encoding``) instead.
    """

    def __init__(self, cfg: EncodingConfig, kind: GridKind, device: torch.device | str = "cuda") -> None:
        super().__init__(cfg, kind, device)

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """When ``triton`` does not import; on the CPU, unless the interpreter is on; off CUDA and the CPU."""
        kernels, reason = _import_kernels()
        if kernels is None:
            return f"'triton' needs the triton package, which does not import ({reason})"
        if device.type == "cuda" and not interpreted():
            return None
        if device.type == "cpu" and interpreted():
            return None
        if device.type == "cuda":
            return "'triton' was imported under TRITON_INTERPRET=1, which runs kernels on the CPU only"
        return f"'triton' runs on CUDA (and on the CPU only under TRITON_INTERPRET=1), not on {device}"

    def extra_repr(self) -> str:
        return ("Triton interpreter, " if interpreted() else "Triton, ") + super().extra_repr()

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) float32 points on the table's device -> (N, out_dim) features."""
        table = self.params.view(-1)  # a non-leaf view, so backward can tell which grads are wanted
        if table.dtype != torch.float32 or points.device != table.device or self.unavailable(table.device):
            raise RuntimeError(
                f"TritonGridEncoding runs in float32 on CUDA (the CPU under TRITON_INTERPRET=1), not with a "
                f"{table.dtype} table on {table.device} and points on {points.device}; make_encoding picks the "
                "backend for a device"
            )
        return kernel_encode(points, table, _TritonKernel(self.grid, table.device))
