"""NeRF++'s background: a small radiance field on the inverted sphere, behind the scene sphere.

A point ``x`` outside the scene sphere of radius ``R`` is written as ``(x / r, R / r)`` with
``r = |x|``: a direction on the unit sphere and an inverse distance in (0, 1], so all of
space beyond the sphere, out to infinity, fits in a bounded 4-D domain. Samples along a ray
start at the sphere's far bound (or, for a ray that misses it, at its closest approach to
the centre) and are spaced uniformly in inverse distance out to ``~1000 x`` that distance;
the last sample's interval is infinite, so every background ray ends opaque. The result is
composited behind the foreground with the foreground's remaining transmittance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.config import RenderConfig
from recon.render.compositing import alpha_from_density, composite, deltas_from_t, weights_from_alpha

POSITION_FREQUENCIES = 6
"""Positional-encoding frequencies of the 4-D inverted-sphere coordinates."""
VIEW_FREQUENCIES = 4
"""Positional-encoding frequencies of the view direction."""
FAR_RATIO = 1e3
"""The last background sample lies this many times farther than the first."""


def _encode(x: Tensor, n_frequencies: int) -> Tensor:
    """``cat(x, sin(2^k x), cos(2^k x))`` for k < n_frequencies: (N, D) -> (N, D (1 + 2 n))."""
    scales = 2.0 ** torch.arange(n_frequencies, dtype=x.dtype, device=x.device)
    angles = (x[..., None] * scales).flatten(-2)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


def inverted_sphere(points: Tensor, radius: float) -> Tensor:
    """Points (N, 3) -> ``(x / r, radius / r)`` (N, 4), with r = |x| clamped to at least ``radius``."""
    r = points.norm(dim=-1, keepdim=True).clamp_min(radius)
    return torch.cat([points / r, radius / r], dim=-1)


def background_t(start: Tensor, n_samples: int, perturb: bool, generator: torch.Generator | None = None) -> Tensor:
    """Distances (R, S) from ``start`` (R,) outwards, uniform in inverse distance down to start / FAR_RATIO.

    With ``perturb`` each sample is jittered within its stratum (in inverse distance).
    """
    steps = torch.linspace(0.0, 1.0, n_samples + 1, dtype=start.dtype, device=start.device)
    lower, upper = steps[:-1], steps[1:]
    if perturb:
        u = torch.rand(start.shape[0], n_samples, generator=generator, dtype=start.dtype).to(start.device)
    else:
        u = torch.full((start.shape[0], n_samples), 0.5, dtype=start.dtype, device=start.device)
    fraction = lower + (upper - lower) * u
    inverse = 1.0 - fraction * (1.0 - 1.0 / FAR_RATIO)
    return start[:, None] / inverse


def background_start(origins: Tensor, dirs: Tensor, far: Tensor, hit: Tensor) -> Tensor:
    """Where the background begins along each ray (R,): the sphere's far bound for rays that meet
    it, else the closest approach to the centre (never behind the camera)."""
    closest = (-(origins * dirs).sum(-1)).clamp_min(0.0)
    return torch.where(hit, far, closest).clamp_min(1e-3)


class BackgroundField(nn.Module):
    """A small view-dependent radiance field on the inverted sphere (NeRF++'s outer model).

    ``cat(PE(x/r, R/r))`` -> 2 ReLU layers -> density (softplus) and a feature; ``cat(feature,
    PE(dir))`` -> one ReLU layer -> sigmoid RGB.
    """

    def __init__(self, hidden_dim: int, radius: float) -> None:
        super().__init__()
        self.radius = radius
        in_dim = 4 * (1 + 2 * POSITION_FREQUENCIES)
        view_dim = 3 * (1 + 2 * VIEW_FREQUENCIES)
        self.trunk = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()
        )
        self.density_head = nn.Linear(hidden_dim, 1)
        self.color_head = nn.Sequential(
            nn.Linear(hidden_dim + view_dim, hidden_dim // 2), nn.ReLU(), nn.Linear(hidden_dim // 2, 3)
        )

    def forward(self, points: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """Points and unit view directions (N, 3) -> density (N,) and rgb (N, 3) in (0, 1)."""
        h = self.trunk(_encode(inverted_sphere(points, self.radius), POSITION_FREQUENCIES))
        sigma = F.softplus(self.density_head(h)[:, 0] - 1.0)
        rgb = torch.sigmoid(self.color_head(torch.cat([h, _encode(dirs, VIEW_FREQUENCIES)], dim=-1)))
        return sigma, rgb

    def render(
        self,
        origins: Tensor,
        dirs: Tensor,
        start: Tensor,
        cfg: RenderConfig,
        training: bool,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Colour (R, 3) of rays (R, 3) beyond ``start`` (R,); every ray ends fully opaque."""
        t = background_t(start, cfg.n_background, training, generator)
        n_rays, n_samples = t.shape
        points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
        view = dirs[:, None, :].expand(n_rays, n_samples, 3)
        sigma, rgb = self(points.reshape(-1, 3), view.reshape(-1, 3))
        weights = weights_from_alpha(alpha_from_density(sigma.view(n_rays, n_samples), deltas_from_t(t)))
        return composite(weights, rgb.view(n_rays, n_samples, 3))
