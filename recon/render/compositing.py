"""Volume-rendering quadrature as small pure functions on ``(R, S)`` tensors.

``R`` rays, ``S`` samples per ray, sorted by ``t`` (distance along unit-length
ray directions). Sample ``i`` stands for the interval ``[t_i, t_i + delta_i)``
over which its density is taken as constant (left Riemann sum).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FAR_AWAY",
    "deltas_from_t",
    "centred_deltas_from_t",
    "midpoints_from_t",
    "alpha_from_density",
    "transmittance_from_alpha",
    "weights_from_alpha",
    "weights_from_density",
    "composite",
    "opacity_from_weights",
    "depth_from_weights",
    "z_depth_from_distance",
    "composite_background",
]

FAR_AWAY = 1e10
"""Length of the last interval when no far bound is given."""


def deltas_from_t(t: Tensor, far: Tensor | float | None = None) -> Tensor:
    """Interval lengths from sorted sample distances.

        delta_i = t_{i+1} - t_i              for i < S - 1
        delta_{S-1} = max(far - t_{S-1}, 0)  (or FAR_AWAY when far is None)

    The last sample's interval runs to ``far``: the ray is cut to the scene's
    bounding sphere, and what lies beyond it is the background's job. Pass
    ``far=None`` for NeRF's convention (the last interval is "infinite", so a
    ray with density at its last sample becomes opaque there).

    Args:
        t: sorted sample distances, ``(R, S)``.
        far: end of each ray, ``(R,)`` / ``(R, 1)`` tensor or a float, or None.

    Returns:
        ``delta``, ``(R, S)``, non-negative.
    """
    inner = t[..., 1:] - t[..., :-1]
    if far is None:
        last = torch.full_like(t[..., -1:], FAR_AWAY)
    else:
        far_t = torch.as_tensor(far, dtype=t.dtype, device=t.device)
        if far_t.dim() == t.dim() - 1:
            far_t = far_t.unsqueeze(-1)
        last = (far_t - t[..., -1:]).clamp(min=0.0).expand_as(t[..., -1:])
    return torch.cat([inner, last], dim=-1)


def centred_deltas_from_t(t: Tensor, near: Tensor | float, far: Tensor | float) -> Tensor:
    """Lengths of the cells centred on the samples (a midpoint-rule quadrature).

    Sample ``i`` owns ``[m_{i-1}, m_i]`` with ``m_i = (t_i + t_{i+1}) / 2`` between
    neighbours, ``m_{-1} = near`` and ``m_{S-1} = far``:

        delta_i = m_i - m_{i-1}

    The density evaluated at ``t_i`` then stands for a cell around it rather
    than for the interval after it (``deltas_from_t``, NeRF's left Riemann
    sum), and the weight sits at ``t_i`` itself (pass ``t`` as ``t_mid`` to
    ``depth_from_weights``). On the same samples this is second-order accurate
    instead of first-order: on the scenes of ``benchmarks/bench_sampler.py`` it
    cut the 99th-percentile opacity and depth errors by 1.3x to 30x (most for
    smooth densities, i.e. large beta), at no extra cost.

    Args:
        t: sorted sample distances within ``[near, far]``, ``(R, S)``.
        near: ray starts, ``(R,)`` / ``(R, 1)`` tensor or a float.
        far: ray ends, ``(R,)`` / ``(R, 1)`` tensor or a float.

    Returns:
        ``delta``, ``(R, S)``, non-negative, summing to ``far - near``.
    """
    def column(x: Tensor | float) -> Tensor:
        x = torch.as_tensor(x, dtype=t.dtype, device=t.device)
        x = x.unsqueeze(-1) if x.dim() == t.dim() - 1 else x
        return x.expand_as(t[..., :1])

    edges = torch.cat([column(near), 0.5 * (t[..., 1:] + t[..., :-1]), column(far)], dim=-1)
    return (edges[..., 1:] - edges[..., :-1]).clamp(min=0.0)


def midpoints_from_t(t: Tensor, deltas: Tensor) -> Tensor:
    """Middle of each sample's interval: ``t_mid = t + delta / 2``, ``(R, S)``."""
    return t + 0.5 * deltas


def alpha_from_density(sigma: Tensor, deltas: Tensor) -> Tensor:
    """Opacity of each interval: ``alpha_i = 1 - exp(-sigma_i * delta_i)``.

    Args:
        sigma: densities, ``(R, S)``, non-negative.
        deltas: interval lengths, ``(R, S)``.

    Returns:
        ``alpha``, ``(R, S)``, in [0, 1].
    """
    return -torch.expm1(-sigma * deltas)


def transmittance_from_alpha(alpha: Tensor) -> Tensor:
    """Light reaching each sample: ``T_i = prod_{j < i} (1 - alpha_j)``.

    An exclusive cumulative product (``T_0 = 1``), so hand-computed values are
    reproduced exactly, e.g. alpha ``[0, 0.3, 0.8, 0.5, 1]`` gives
    ``T = [1, 1, 0.7, 0.14, 0.07]``.

    Args:
        alpha: interval opacities, ``(R, S)``.

    Returns:
        ``T``, ``(R, S)``.
    """
    ones = torch.ones_like(alpha[..., :1])
    return torch.cumprod(torch.cat([ones, 1.0 - alpha[..., :-1]], dim=-1), dim=-1)


def weights_from_alpha(alpha: Tensor) -> Tensor:
    """Compositing weights: ``w_i = T_i * alpha_i``, ``(R, S)`` from ``(R, S)``."""
    return transmittance_from_alpha(alpha) * alpha


def weights_from_density(sigma: Tensor, deltas: Tensor) -> Tensor:
    """``w_i = T_i * (1 - exp(-sigma_i delta_i))``, ``(R, S)`` from ``(R, S)`` twice."""
    return weights_from_alpha(alpha_from_density(sigma, deltas))


def composite(weights: Tensor, values: Tensor) -> Tensor:
    """Weighted sum along each ray: ``out = sum_i w_i * v_i``.

    Args:
        weights: ``(R, S)``.
        values: ``(R, S, C)`` (colours, normals, ...).

    Returns:
        ``(R, C)``.
    """
    return torch.einsum("rs,rsc->rc", weights, values)


def opacity_from_weights(weights: Tensor) -> Tensor:
    """Accumulated opacity ``O = sum_i w_i = 1 - T_S``, ``(R,)`` from ``(R, S)``."""
    return weights.sum(dim=-1)


def depth_from_weights(weights: Tensor, t_mid: Tensor) -> Tensor:
    """Accumulated distance ``D = sum_i w_i * t_mid_i``, ``(R,)``.

    This is the distance expected with a background at distance 0 (MonoSDF's
    rendered depth). Divide by ``opacity_from_weights`` for the expected
    distance given that the ray stops. ``t`` is a distance along the ray: use
    ``z_depth_from_distance`` for the camera's z-depth.

    Args:
        weights: ``(R, S)``.
        t_mid: where each interval's weight sits, ``(R, S)`` (``midpoints_from_t``).

    Returns:
        ``(R,)``.
    """
    return (weights * t_mid).sum(dim=-1)


def z_depth_from_distance(dist: Tensor, dirs_cam_z: Tensor) -> Tensor:
    """Camera z-depth of points at distance ``dist`` along unit rays.

        z = dist * d_z

    with ``d_z`` the z component of the unit ray direction in the camera frame
    (OpenCV convention, camera looking along +z; pass ``-d_z`` for OpenGL).

    Args:
        dist: distances along the rays, ``(R,)``.
        dirs_cam_z: z components of the unit directions in camera space, ``(R,)``.

    Returns:
        ``(R,)``.
    """
    return dist * dirs_cam_z


def composite_background(rgb: Tensor, opacity: Tensor, bg_color: Tensor | float) -> Tensor:
    """Fill what the ray leaves transparent with a background colour.

        out = rgb + (1 - O) * bg

    Args:
        rgb: composited colour, ``(R, 3)`` (already weighted by opacity).
        opacity: ``(R,)`` or ``(R, 1)``.
        bg_color: a float, ``(3,)`` or ``(R, 3)``.

    Returns:
        ``(R, 3)``.
    """
    if opacity.dim() == rgb.dim() - 1:
        opacity = opacity.unsqueeze(-1)
    bg = torch.as_tensor(bg_color, dtype=rgb.dtype, device=rgb.device)
    return rgb + (1.0 - opacity) * bg
