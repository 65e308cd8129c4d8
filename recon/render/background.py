"""What lies behind the scene sphere: one interface, ``Background``, and its two kinds.

``ConstantBackground``: one colour (white or black renders, masked captures).
``NerfPlusPlusBackground``: NeRF++'s background, a small radiance field on the inverted sphere.
``make_background`` picks one from ``render.background`` (``auto``: the nerf++ model for a scene
without masks whose image border is not uniform, an unmasked real capture; else a colour).

NeRF++'s model:

A point ``x`` outside the scene sphere of radius ``R`` is written as ``(x / r, R / r)`` with
``r = |x|``: a direction on the unit sphere and an inverse distance in (0, 1], so all of
space beyond the sphere, out to infinity, fits in a bounded 4-D domain. Samples along a ray
start at the sphere's far bound (or, for a ray that misses it, at its closest approach to
the centre) and are spaced uniformly in inverse distance out to ``~1000 x`` that distance;
the last sample's interval is infinite, so every background ray ends opaque. The result is
composited behind the foreground with the foreground's remaining transmittance.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.errors import InputError
from recon.render.compositing import alpha_from_density, composite, deltas_from_t, weights_from_alpha

if TYPE_CHECKING:
    from recon.config import RenderConfig
    from recon.datasets.scene import Scene

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
        u = torch.rand(start.shape[0], n_samples, generator=generator, dtype=start.dtype, device=start.device)
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


BORDER_UNIFORMITY = 0.05
"""Largest spread (95th - 5th percentile, colours in [0, 1]) of a border taken as a uniform background."""


class Background(nn.Module, abc.ABC):
    """What is composited behind the scene: a colour per ray."""

    @abc.abstractmethod
    def render(
        self, origins: Tensor, dirs: Tensor, far: Tensor, hit: Tensor, training: bool,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Colour (R, 3) seen beyond the scene sphere along rays (R, 3); ``far`` (R,) is where a ray
        leaves the sphere and ``hit`` (R,) whether it meets it (``ray_sphere_near_far``)."""

    def matte(self) -> Tensor | None:
        """The constant colour (3,) that stands in for a masked photograph's backdrop when a render is
        scored against it; None for a background model (the photograph is kept)."""
        return None

    @abc.abstractmethod
    def describe(self) -> str | list[float]:
        """What ``meta.json`` records: the colour, or the model's name."""


class ConstantBackground(Background):
    """One colour behind every ray."""

    def __init__(self, rgb: list[float] | tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("rgb", torch.tensor([float(c) for c in rgb]))

    def render(self, origins, dirs, far, hit, training, generator=None) -> Tensor:
        return self.rgb.expand(origins.shape[0], 3)

    def matte(self) -> Tensor:
        return self.rgb

    def describe(self) -> list[float]:
        return self.rgb.tolist()


class NerfPlusPlusBackground(Background):
    """A small view-dependent radiance field on the inverted sphere (NeRF++'s outer model).

    ``cat(PE(x/r, R/r))`` -> 2 ReLU layers -> density (softplus) and a feature; ``cat(feature,
    PE(dir))`` -> one ReLU layer -> sigmoid RGB. ``n_samples`` samples per ray.
    """

    NAME = "nerf++"

    def __init__(self, hidden_dim: int, radius: float, n_samples: int = 32) -> None:
        super().__init__()
        self.radius, self.n_samples = radius, n_samples
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

    def render(self, origins, dirs, far, hit, training, generator=None) -> Tensor:
        return self.render_beyond(origins, dirs, background_start(origins, dirs, far, hit), training, generator)

    def render_beyond(
        self, origins: Tensor, dirs: Tensor, start: Tensor, training: bool, generator: torch.Generator | None = None
    ) -> Tensor:
        """Colour (R, 3) of rays (R, 3) beyond ``start`` (R,); every ray ends fully opaque."""
        t = background_t(start, self.n_samples, training, generator)
        n_rays, n_samples = t.shape
        points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
        view = dirs[:, None, :].expand(n_rays, n_samples, 3)
        sigma, rgb = self(points.reshape(-1, 3), view.reshape(-1, 3))
        weights = weights_from_alpha(alpha_from_density(sigma.view(n_rays, n_samples), deltas_from_t(t)))
        return composite(weights, rgb.view(n_rays, n_samples, 3))

    def describe(self) -> str:
        return self.NAME


def uniform_border_colour(scene: Scene) -> list[float] | None:
    """The median colour of the images' one-pixel border, or None when that border is not uniform."""
    images = scene.images
    border = np.concatenate(
        [images[:, 0].reshape(-1, 3), images[:, -1].reshape(-1, 3), images[:, :, 0].reshape(-1, 3),
         images[:, :, -1].reshape(-1, 3)]
    ).astype(np.float32) / 255.0
    low, high = np.percentile(border, [5, 95], axis=0)
    if float((high - low).max()) > BORDER_UNIFORMITY:
        return None
    return np.median(border, axis=0).tolist()


def background_colour(scene: Scene, mode: str) -> list[float]:
    """RGB in [0, 1] composited behind the surface.

    ``auto``: the median colour of the images' one-pixel border when that border is
    uniform (a rendered or masked-out background), else black.
    """
    if mode == "white":
        return [1.0, 1.0, 1.0]
    if mode == "black":
        return [0.0, 0.0, 0.0]
    colour = uniform_border_colour(scene)
    return [0.0, 0.0, 0.0] if colour is None else colour


def make_background(scene: Scene, cfg: RenderConfig, device: torch.device | str = "cpu") -> Background:
    """The background ``render.background`` asks for.

    ``auto`` picks the nerf++ model for a scene without masks whose border is not uniform (an
    unmasked real capture), else a constant colour (``background_colour``).
    """
    mode = cfg.background
    if mode == "auto" and scene.masks is None and uniform_border_colour(scene) is None:
        mode = NerfPlusPlusBackground.NAME
    if mode == NerfPlusPlusBackground.NAME:
        return NerfPlusPlusBackground(cfg.background_hidden_dim, cfg.scene_radius, cfg.n_background).to(device)
    return ConstantBackground(background_colour(scene, mode)).to(device)


def background_from_description(described: str | list[float], cfg: RenderConfig) -> Background:
    """The background a run's ``meta.json`` describes (``Background.describe``), freshly initialised."""
    if described == NerfPlusPlusBackground.NAME:
        return NerfPlusPlusBackground(cfg.background_hidden_dim, cfg.scene_radius, cfg.n_background)
    if isinstance(described, (list, tuple)) and len(described) == 3:
        return ConstantBackground(described)
    raise InputError("meta.json", f"unknown background {described!r}")
