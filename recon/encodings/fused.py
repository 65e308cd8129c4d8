"""The fused CPU grid encoding backend: each pass in one compiled C++/OpenMP kernel.

The kernel (``csrc/fused_grid.cpp``, built by ``cpp_build.py``) computes the same quantities
as the pure-PyTorch backend (same layout, same hash, same derivatives), so checkpoints and
the ``params`` Parameter are interchangeable. It runs on the CPU in float32 only.

Passes, as in ``torch_backend.py``: the features (keeping d/ds and the mixed second
derivatives when the points need a gradient), d features / dx (twice differentiable: the
eikonal term) and the table gradient; ``autograd.py``'s kernel nodes call them. In a training
step the eikonal term's table gradient is merged into the features' own scatter (see
``autograd.py``), so the table is scattered once.
"""

from __future__ import annotations

import functools

import torch

from recon.config import EncodingConfig
from recon.encodings.autograd import kernel_encode
from recon.encodings.base import GridEncoding
from recon.encodings.cpp_build import extension_failure, load_extension
from recon.encodings.layout import GridKind, GridLayout


@functools.lru_cache(maxsize=32)
def _compiled_grid(grid: GridLayout) -> object:
    """The kernel's ``Grid`` for a layout (kept out of the module, so that it pickles)."""
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"the fused CPU grid kernel is unavailable ({extension_failure()})")
    columns = zip(*((lv.scale, lv.resolution, lv.size, lv.offset, lv.hashed) for lv in grid.levels))
    scales, res, sizes, offsets, hashed = (list(column) for column in columns)
    return ext.Grid(scales, res, sizes, offsets, hashed, grid.n_features, grid.smooth)


class _Kernel:
    """The compiled extension, a layout in it, and the scatter strategy (owned rows, or atomic adds):
    an ``autograd.GridKernel``."""

    owner = "FusedGridEncoding"

    def __init__(self, grid: GridLayout, scatter_mode: str = "owned") -> None:
        self.ext = load_extension()
        self.grid = _compiled_grid(grid)
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


# ----------------------------------------------------------------------------------------


class FusedGridEncoding(GridEncoding):
    """The grid encoding computed by the fused CPU kernel (CPU, float32 only).

    Same parameter, layout, interface and results as ``TorchGridEncoding``. Building it
    builds the kernel (once per process; ``InputError`` when that fails). ``forward`` raises
    ``RuntimeError`` when the table or the points are moved off the CPU or to another dtype:
    choose the backend for the device (``make_encoding``) instead.
    """

    def __init__(
        self, cfg: EncodingConfig, kind: GridKind, device: torch.device | str = "cpu", scatter_mode: str = "owned"
    ) -> None:
        super().__init__(cfg, kind, device)
        self.scatter_mode = scatter_mode
        _compiled_grid(self.grid)  # build now, not inside the first training step

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """Off the CPU, or when the kernel cannot be built (building it on first use)."""
        if device.type != "cpu":
            return f"'fused' runs on the CPU only, not on {device}"
        if load_extension() is None:
            return f"the fused CPU kernel could not be built ({extension_failure()})"
        return None

    def extra_repr(self) -> str:
        return "fused CPU kernel, " + super().extra_repr()

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) float32 CPU points -> (N, out_dim) features."""
        if self.params.device.type != "cpu" or self.params.dtype != torch.float32 or points.device.type != "cpu":
            raise RuntimeError(
                f"FusedGridEncoding runs on the CPU in float32 only, not with a {self.params.dtype} table on "
                f"{self.params.device} and points on {points.device}; make_encoding picks the backend for a device"
            )
        table = self.params.view(-1)  # a non-leaf view, so backward can tell which grads are wanted
        return kernel_encode(points, table, _Kernel(self.grid, self.scatter_mode))
