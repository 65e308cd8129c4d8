"""What every grid-encoding backend is: one small protocol and the base class that serves it.

A backend owns only the interpolation (``_encode``) and says whether it can run on a device
(``unavailable``). The base class owns the rest: the layout of the grid kind, the one
parameter ``params`` (the flat table, laid out as tiny-cuda-nn lays it out, so checkpoints
load into any backend), its initialisation, and the input check, reshape and clamp.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from recon.config import EncodingConfig
from recon.encodings.layout import GridKind, GridLayout, GridLevel, grid_layout
from recon.errors import InputError


@runtime_checkable
class Encoding(Protocol):
    """A grid encoding, whatever computes it: (..., 3) points in [0, 1]^3 -> (..., out_dim)."""

    @property
    def out_dim(self) -> int: ...

    @property
    def levels(self) -> list[GridLevel]: ...

    @property
    def n_features(self) -> int: ...

    params: nn.Parameter

    def n_params(self) -> int: ...

    def describe(self) -> str: ...

    def extra_repr(self) -> str: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class GridEncoding(nn.Module, ABC):
    """Multi-resolution hash grid (``hashgrid``) or single dense grid (``densegrid``).

    ``forward``: points (..., 3) in [0, 1]^3 (clamped to it) -> features (..., out_dim),
    level-major (level 0's F features first). The table is the one parameter ``params``
    (P,), uniform in [-init_scale, init_scale] at first (drawn on the CPU, then moved to
    ``device``). Raises ``InputError`` (``encoding.backend``) when the backend cannot run
    on ``device``.
    """

    def __init__(self, cfg: EncodingConfig, kind: GridKind, device: torch.device | str = "cpu") -> None:
        super().__init__()
        reason = self.unavailable(torch.device(device))
        if reason is not None:
            raise InputError("encoding.backend", reason)
        self.kind = kind
        self.grid: GridLayout = grid_layout(cfg, kind)
        table = torch.empty(self.grid.n_params)
        nn.init.uniform_(table, -cfg.init_scale, cfg.init_scale)
        self.params = nn.Parameter(table.to(device))

    @classmethod
    @abstractmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` (None when it can)."""

    @abstractmethod
    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) contiguous points in [0, 1]^3, in the table's dtype -> (N, out_dim) features."""

    @property
    def out_dim(self) -> int:
        """Features per point: levels x features per level."""
        return self.grid.out_dim

    @property
    def levels(self) -> list[GridLevel]:
        """Per-level scale, resolution, size, offset (in vertices) and whether it is hashed."""
        return list(self.grid.levels)

    @property
    def n_features(self) -> int:
        """Features per vertex and level (F)."""
        return self.grid.n_features

    def n_params(self) -> int:
        """Number of scalars in the table."""
        return self.params.numel()

    def layout(self) -> list[GridLevel]:
        """The levels (as ``levels``)."""
        return self.levels

    def describe(self) -> str:
        """The layout as a small text table, one line per level."""
        lines = [f"{'level':>5} {'res':>5} {'scale':>9} {'vertices':>9} {'offset':>9}  storage"]
        for index, lv in enumerate(self.grid.levels):
            storage = "hashed" if lv.hashed else "dense"
            lines.append(f"{index:>5} {lv.resolution:>5} {lv.scale:>9.3f} {lv.size:>9} {lv.offset:>9}  {storage}")
        lines.append(f"{self.n_features} features per vertex, {self.n_params():,} parameters")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        res = [level.resolution for level in self.grid.levels]
        hashed = sum(level.hashed for level in self.grid.levels)
        return (
            f"{self.kind}, levels={len(res)}, F={self.n_features}, resolutions={res[0]}..{res[-1]}, "
            f"hashed_levels={hashed}, params={self.n_params():,}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) points in [0, 1]^3 (clamped to it) -> (..., out_dim) features."""
        if x.shape[-1] != 3:
            raise ValueError(f"{type(self).__name__} expects points of shape (..., 3), got {tuple(x.shape)}")
        points = x.reshape(-1, 3).to(self.params.dtype).clamp(0.0, 1.0).contiguous()
        return self._encode(points).reshape(*x.shape[:-1], self.out_dim)
