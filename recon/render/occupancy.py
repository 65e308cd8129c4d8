"""An occupancy grid from the SDF: which cells of the scene box can hold visible density.

A cell is occupied when the surface may pass through it or close enough to it to be
seen: ``|sdf(centre)| <= lipschitz * half_diagonal + margin(beta)``. The SDF is
(about) 1-Lipschitz, so a cell whose centre is farther from the surface than its
half-diagonal holds no surface; ``margin(beta)`` adds the distance beyond which the
density is too thin to matter. The test is on ``|sdf|``, so the inside of a solid is
empty too (a ray that reaches it is already opaque), unlike a density-threshold grid.

Samplers receive the occupied stretches of each ray (``RaySegments``), found by
walking the ray through every cell it crosses (exact: the crossings of the grid
planes), and place their samples only there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from recon.errors import InputError
from recon.render.samplers import RaySegments, SdfFn

if TYPE_CHECKING:  # only read attributes: no import-time dependency on the config module
    from recon.config import RenderConfig

__all__ = ["OccupancyGrid", "density_margin", "make_occupancy_grid"]

LIPSCHITZ = 1.5
"""Bound on |grad sdf| assumed by the update (the eikonal loss keeps a learnt SDF near 1)."""


def density_margin(beta: float, ray_length: float, tolerance: float) -> float:
    """Distance from the surface beyond which empty space may be skipped.

    Outside the surface both densities are at most ``exp(-s / beta) / beta`` (Laplace:
    half that; NeuS with ``s = 1 / beta``: the same), so a stretch of ray of length at
    most ``ray_length`` where ``sdf >= m`` gathers an optical depth of at most
    ``ray_length exp(-m / beta) / beta``. It stays below ``tolerance`` for

        m = beta * ln(ray_length / (beta * tolerance)).

    Inside, a ray that has crossed ``m`` past the surface has an optical depth of at
    least ``m / beta - 1 / 2`` behind it (Laplace, slope <= 1): it is opaque already.
    """
    return beta * math.log(max(ray_length / (beta * tolerance), 1.0))


class OccupancyGrid(nn.Module):
    """``resolution^3`` cells over the box ``[-radius, radius]^3``; all occupied until updated.

    The boolean buffer ``occupied`` (indexed ``[x, y, z]``) is part of the state dict, so a
    checkpoint restores it exactly.
    """

    def __init__(self, resolution: int, radius: float = 1.0, tolerance: float = 1e-3) -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"occupancy resolution must be >= 1, got {resolution}")
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"occupancy tolerance must be in (0, 1), got {tolerance}")
        self.resolution, self.radius, self.tolerance = resolution, radius, tolerance
        self.register_buffer("occupied", torch.ones(resolution, resolution, resolution, dtype=torch.bool))

    @property
    def cell(self) -> float:
        """Edge length of a cell."""
        return 2.0 * self.radius / self.resolution

    def threshold(self, beta: float, cells: int = 1) -> float:
        """Largest ``|sdf|`` at the centre of an occupied block of ``cells^3`` cells."""
        half_diagonal = 0.5 * math.sqrt(3.0) * self.cell * cells
        return LIPSCHITZ * half_diagonal + density_margin(beta, 2.0 * self.radius, self.tolerance)

    def centres(self, index: Tensor, cells: int = 1) -> Tensor:
        """Centres ``(N, 3)`` of the blocks of ``cells^3`` cells with integer block indices ``(N, 3)``."""
        return -self.radius + (index.to(torch.float32) + 0.5) * (self.cell * cells)

    @torch.no_grad()
    def update(self, sdf_fn: SdfFn, beta: float, chunk: int = 65536) -> None:
        """Re-mark every cell from the SDF, coarse to fine (an octree pass: most cells cost nothing).

        The SDF is evaluated at the centres of blocks of ``8^3`` cells first (the largest power of
        two up to 8 that divides the resolution). A block whose centre fails the block's own (wider)
        test holds no occupied cell; a block whose centre is so close to the surface that every
        cell centre in it passes the cell test (by the same Lipschitz bound) is occupied whole;
        only the blocks in between are split into their 8 halves, and so on down to single cells.
        """
        size = next(b for b in (8, 4, 2, 1) if self.resolution % b == 0)
        blocks = _all_indices(self.resolution // size, self.occupied.device)
        occupied = torch.zeros_like(self.occupied)
        while blocks.shape[0]:
            distance = _evaluate(sdf_fn, self.centres(blocks, size), chunk).abs()
            # a cell centre lies within (size - 1) / 2 cell diagonals of its block's centre
            spread = LIPSCHITZ * 0.5 * math.sqrt(3.0) * self.cell * (size - 1)
            whole = distance + spread <= self.threshold(beta)
            cells = (blocks[whole][:, None, :] * size + _all_indices(size, blocks.device)[None]).reshape(-1, 3)
            occupied[cells[:, 0], cells[:, 1], cells[:, 2]] = True
            if size == 1:
                break
            split = blocks[(distance <= self.threshold(beta, size)) & ~whole]
            blocks = (split[:, None, :] * 2 + _all_indices(2, blocks.device)[None]).reshape(-1, 3)
            size //= 2
        self.occupied.copy_(occupied)

    def update_every_n_steps(self, step: int, n: int, sdf_fn: SdfFn, beta: Callable[[], float]) -> None:
        """``update`` at every ``n``-th step (0, n, 2n, ...); ``beta`` gives the density's current scale."""
        if step % max(n, 1) == 0:
            self.update(sdf_fn, beta())

    def occupied_fraction(self) -> float:
        """Fraction of the cells marked occupied."""
        return float(self.occupied.float().mean())

    def segments(self, origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, compact: bool = True) -> RaySegments:
        """The occupied stretches of rays ``(R, 3)`` within ``[near, far]`` ``(R,)``.

        The ray's crossings with the ``3 (resolution + 1)`` grid planes split ``[near, far]``
        into pieces that each lie in one cell; the piece's midpoint names the cell. ``compact``:
        as many segments per ray as the most any ray has (a host sync), else as many as there
        can be (``RaySegments.from_bins``).
        """
        edges = self._crossings(origins, dirs, near, far)
        mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
        points = origins[:, None, :] + mids[..., None] * dirs[:, None, :]
        index = ((points + self.radius) / self.cell).floor().long().clamp(0, self.resolution - 1)
        occupied = self.occupied[index[..., 0], index[..., 1], index[..., 2]] & (edges[:, 1:] > edges[:, :-1])
        return RaySegments.from_bins(edges, occupied, compact)

    def _crossings(self, origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor) -> Tensor:
        """Sorted ``(R, 3 (resolution + 1) + 2)``: near, far and every plane crossing clamped into them."""
        planes = -self.radius + self.cell * torch.arange(self.resolution + 1, device=origins.device, dtype=origins.dtype)
        tiny = torch.finfo(dirs.dtype).tiny
        safe = torch.where(dirs.abs() > tiny, dirs, torch.full_like(dirs, tiny))
        t = (planes[None, None, :] - origins[:, :, None]) / safe[:, :, None]
        t = torch.minimum(torch.maximum(t.reshape(origins.shape[0], -1), near[:, None]), far[:, None])
        return torch.cat([near[:, None], t, far[:, None]], dim=-1).sort(dim=-1).values


def make_occupancy_grid(cfg: RenderConfig, device: torch.device | str = "cpu") -> OccupancyGrid | None:
    """The grid ``render.occupancy_resolution`` asks for (None when 0)."""
    if cfg.occupancy_resolution < 0:
        raise InputError("render.occupancy_resolution", f"must be >= 0 (0: off), got {cfg.occupancy_resolution}")
    if not 0.0 < cfg.occupancy_tolerance < 1.0:
        raise InputError("render.occupancy_tolerance", f"must be in (0, 1), got {cfg.occupancy_tolerance}")
    if cfg.occupancy_resolution == 0:
        return None
    return OccupancyGrid(cfg.occupancy_resolution, cfg.scene_radius, cfg.occupancy_tolerance).to(device)


def _all_indices(n: int, device: torch.device) -> Tensor:
    """Every integer index of an ``n^3`` grid, ``(n^3, 3)``."""
    axis = torch.arange(n, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def _evaluate(sdf_fn: SdfFn, points: Tensor, chunk: int) -> Tensor:
    """SDF at ``points`` ``(N, 3)`` in chunks, ``(N,)``."""
    if points.shape[0] == 0:
        return points.new_zeros(0)
    return torch.cat([sdf_fn(points[i : i + chunk]).reshape(-1).float() for i in range(0, points.shape[0], chunk)])
