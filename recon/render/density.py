"""SDF -> density: VolSDF's Laplace density and NeuS's logistic alpha.

Sign convention: the SDF ``s`` is positive outside the surface and negative
inside, so the density is small outside and ``1 / beta`` deep inside.

The pure functions (``laplace_density``, ``neus_alpha``) are wrapped by two
learnable densities behind one interface, ``Density``: ``LaplaceDensity``
(VolSDF) and ``NeuSDensity``; ``make_density`` picks one from ``render.density``.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from recon.render.compositing import alpha_from_density

if TYPE_CHECKING:  # only read attributes: no import-time dependency on the config module
    from recon.config import RenderConfig

__all__ = [
    "Density",
    "LaplaceDensity",
    "LearnableBeta",
    "LearnableInvS",
    "NeuSDensity",
    "laplace_density",
    "make_density",
    "neus_alpha",
]

_EXP_CAP = 60.0


def laplace_density(sdf: Tensor, beta: Tensor | float) -> Tensor:
    """VolSDF density: a scaled Laplace CDF of the negated SDF.

    ``sigma(s) = alpha * Psi_beta(-s)`` with ``alpha = 1 / beta`` and ``Psi_beta``
    the CDF of a zero-mean Laplace distribution of scale ``beta``:

        sigma(s) = (1 / beta) * (0.5 + 0.5 * sign(s) * expm1(-|s| / beta))
                 = (1 / beta) * 0.5 * exp(-s / beta)          if s >= 0
                 = (1 / beta) * (1 - 0.5 * exp(s / beta))     if s <  0

    The two-branch form is the one evaluated: it equals the first line
    everywhere, but its autograd gradient is also right at ``s = 0`` (the
    ``sign`` form's gradient vanishes there) and neither branch overflows.
    ``|s| / beta`` is capped at 60 (``exp(-60) ~ 1e-26``): beyond it the density
    stays at ``0.5 exp(-60) / beta`` (or ``1 / beta``) with zero gradient, which
    keeps float32 denormals (very slow on CPUs) out of the products downstream.

    Args:
        sdf: signed distances, any shape ``(...)``.
        beta: Laplace scale, a float or a tensor broadcastable to ``sdf``
            (e.g. ``(R, 1)`` for a per-ray beta); must be positive.

    Returns:
        Density ``sigma`` with the broadcast shape of ``sdf`` and ``beta``.
    """
    u = sdf / beta
    outside = 0.5 * torch.exp(-u.clamp(0.0, _EXP_CAP))
    inside = 1.0 - 0.5 * torch.exp(u.clamp(-_EXP_CAP, 0.0))
    return torch.where(u >= 0, outside, inside) / beta


class LearnableBeta(nn.Module):
    """The learnable Laplace scale: ``beta = |param| + beta_min``.

    The parameter starts at ``beta_init - beta_min`` so that ``forward()``
    returns ``beta_init`` before any training.
    """

    def __init__(self, beta_init: float = 0.1, beta_min: float = 1e-4) -> None:
        super().__init__()
        if not beta_init > beta_min >= 0.0:
            raise ValueError(f"need beta_init > beta_min >= 0, got beta_init={beta_init}, beta_min={beta_min}")
        self.beta_min = float(beta_min)
        self.param = nn.Parameter(torch.tensor(float(beta_init - beta_min)))

    def forward(self) -> Tensor:
        """Returns the current beta, a 0-d tensor (differentiable)."""
        return self.param.abs() + self.beta_min


def neus_alpha(
    sdf: Tensor,
    cos_dir_grad: Tensor,
    deltas: Tensor,
    inv_s: Tensor | float,
    cos_anneal_ratio: float = 1.0,
) -> Tensor:
    """NeuS's discrete opacity of a ray section from logistic CDFs.

    The SDF at the two ends of a section of length ``delta`` is estimated from
    its value ``s`` at the section's midpoint and the directional derivative
    ``c`` (the "cos" between the ray direction and the SDF gradient):

        s_prev = s - c * delta / 2,   s_next = s + c * delta / 2
        Phi(x) = sigmoid(inv_s * x)
        alpha  = clamp((Phi(s_prev) - Phi(s_next)) / max(Phi(s_prev), 1e-6), 0, 1)

    ``c`` is NeuS's annealed cos: ``c = -(relu(0.5 - 0.5 cos) (1 - r) + relu(-cos) r)``
    with ``r = cos_anneal_ratio``. With ``r = 1`` (the default, the end of
    NeuS's annealing) this is the free form ``c = -relu(-cos)``: sections where
    the ray leaves the surface (cos > 0) get no opacity.

    Args:
        sdf: SDF at the section midpoints, ``(R, S)``.
        cos_dir_grad: ``dot(ray direction, grad sdf)`` at the midpoints, ``(R, S)``.
        deltas: section lengths, ``(R, S)``.
        inv_s: NeuS's sharpness ``s`` (a float or 0-d / broadcastable tensor).
        cos_anneal_ratio: ``r`` in [0, 1]; 1 gives the free form.

    Returns:
        Opacity ``alpha`` of each section, ``(R, S)``, in [0, 1].
    """
    r = cos_anneal_ratio
    relaxed = torch.relu(0.5 - 0.5 * cos_dir_grad)
    free = torch.relu(-cos_dir_grad)
    c = -(relaxed * (1.0 - r) + free * r)
    half_step = 0.5 * c * deltas
    prev_cdf = torch.sigmoid((sdf - half_step) * inv_s)
    next_cdf = torch.sigmoid((sdf + half_step) * inv_s)
    return ((prev_cdf - next_cdf) / prev_cdf.clamp(min=1e-6)).clamp(0.0, 1.0)


class LearnableInvS(nn.Module):
    """NeuS's learnable sharpness: ``inv_s = exp(10 * variance)``.

    ``variance`` starts at ``ln(1 / beta_init) / 10`` so that ``inv_s`` starts
    at ``1 / beta_init`` (the logistic scale ``1 / inv_s`` plays beta's role).
    The output is capped at ``1 / beta_min``.
    """

    def __init__(self, beta_init: float = 0.1, beta_min: float = 1e-4) -> None:
        super().__init__()
        if not beta_init > beta_min > 0.0:
            raise ValueError(f"need beta_init > beta_min > 0, got beta_init={beta_init}, beta_min={beta_min}")
        self.inv_s_max = 1.0 / float(beta_min)
        self.variance = nn.Parameter(torch.tensor(math.log(1.0 / beta_init) / 10.0))

    def forward(self) -> Tensor:
        """Returns the current ``inv_s``, a 0-d tensor (differentiable below the cap)."""
        return torch.exp(10.0 * self.variance).clamp(max=self.inv_s_max)


class Density(nn.Module, abc.ABC):
    """A learnable SDF -> opacity conversion."""

    @abc.abstractmethod
    def current_beta(self) -> Tensor:
        """The scale over which the density rises at the surface, a 0-d tensor: Laplace's beta, or
        NeuS's logistic scale ``1 / s`` (the samplers and the occupancy grid use it)."""

    @abc.abstractmethod
    def alpha(self, sdf: Tensor, cos: Tensor, deltas: Tensor) -> Tensor:
        """Per-sample opacity ``(R, S)`` from the SDF, ``cos(dir, grad sdf)`` and the samples'
        interval lengths, all ``(R, S)``."""


class LaplaceDensity(Density):
    """VolSDF: ``sigma = laplace_density(sdf, beta)``, alpha from sigma over each interval."""

    def __init__(self, beta_init: float, beta_min: float) -> None:
        super().__init__()
        self.beta = LearnableBeta(beta_init, beta_min)

    def current_beta(self) -> Tensor:
        return self.beta()

    def alpha(self, sdf: Tensor, cos: Tensor, deltas: Tensor) -> Tensor:
        return alpha_from_density(laplace_density(sdf, self.beta()), deltas)


class NeuSDensity(Density):
    """NeuS: alpha from logistic CDFs at the interval ends (``neus_alpha``); ``1 / s`` plays beta's role."""

    def __init__(self, beta_init: float, beta_min: float) -> None:
        super().__init__()
        self.inv_s = LearnableInvS(beta_init, beta_min)

    def current_beta(self) -> Tensor:
        return 1.0 / self.inv_s()

    def alpha(self, sdf: Tensor, cos: Tensor, deltas: Tensor) -> Tensor:
        return neus_alpha(sdf, cos, deltas, self.inv_s())


DENSITIES: dict[str, type[Density]] = {"laplace": LaplaceDensity, "neus": NeuSDensity}


def make_density(cfg: RenderConfig) -> Density:
    """The density ``render.density`` names, starting at ``render.beta_init``."""
    return DENSITIES[cfg.density](cfg.beta_init, cfg.beta_min)
