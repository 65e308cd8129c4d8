"""Layout of a grid's flat parameter table, value for value like tiny-cuda-nn.

Layout follows tiny-cuda-nn's ``GridEncoding`` (``encodings/grid.h``):

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

Two grid kinds: ``hashgrid`` (the multi-resolution hash grid) and ``densegrid`` (one dense
level). The kind is always passed in explicitly, never read from the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from recon.config import EncodingConfig

GridKind = Literal["hashgrid", "densegrid"]
"""The grids an encoding backend serves."""

GRID_KINDS: tuple[str, ...] = get_args(GridKind)

HASH_PRIMES = (1, 2654435761, 805459861)
"""tiny-cuda-nn's coherent primes for the spatial hash, one per axis."""


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


@dataclass(frozen=True)
class GridLayout:
    """A grid's whole layout: its levels, ``n_features`` (F) per vertex, smoothstep or linear.

    Frozen and hashable, so that a backend can cache per-layout state on it.
    """

    levels: tuple[GridLevel, ...]
    n_features: int
    smooth: bool

    @property
    def n_params(self) -> int:
        """Scalars in the flat table."""
        return grid_n_params(list(self.levels), self.n_features)

    @property
    def out_dim(self) -> int:
        """Features per point: levels x features per level."""
        return len(self.levels) * self.n_features

    def level_table(self, table: torch.Tensor, level: GridLevel) -> torch.Tensor:
        """(S, F) view of one level inside the flat (P,) table."""
        f = self.n_features
        return table[level.offset * f : (level.offset + level.size) * f].view(level.size, f)


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


def dense_grid_resolution(cfg: EncodingConfig) -> int:
    """Vertices per axis of the dense grid: ``cfg.dense_resolution``, or parameter-matched (0)."""
    return cfg.dense_resolution or matched_dense_resolution(cfg)


def grid_layout(cfg: EncodingConfig, kind: GridKind) -> GridLayout:
    """Layout of the ``kind`` grid (``hashgrid`` or ``densegrid``) that ``cfg`` describes."""
    if cfg.interpolation not in ("linear", "smoothstep"):
        raise ValueError(f"interpolation must be linear or smoothstep, got {cfg.interpolation!r}")
    smooth = cfg.interpolation == "smoothstep"
    if kind == "hashgrid":
        return GridLayout(tuple(hash_grid_levels(cfg)), cfg.n_features_per_level, smooth)
    if kind == "densegrid":
        return GridLayout(tuple(dense_grid_levels(dense_grid_resolution(cfg))), cfg.dense_features, smooth)
    raise ValueError(f"grid encodings serve {' and '.join(GRID_KINDS)}, not {kind!r}")
