"""Training losses (MonoSDF's terms) as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute colour error, (R, 3) vs (R, 3); only where ``mask`` (R,) is true when given."""
    error = (pred - target).abs().sum(-1)
    if mask is None:
        return error.mean() / 3.0
    weight = mask.to(error.dtype)
    return (error * weight).sum() / (3.0 * weight.sum().clamp_min(1.0))


def eikonal(gradients: torch.Tensor) -> torch.Tensor:
    """``mean((|grad sdf| - 1)^2)`` over gradients (M, 3)."""
    return ((gradients.norm(dim=-1) - 1.0) ** 2).mean()


def mask_bce(opacity: torch.Tensor, mask: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Binary cross-entropy between rendered opacity (R,) and the mask (R,)."""
    return F.binary_cross_entropy(opacity.clamp(eps, 1.0 - eps), mask.to(opacity.dtype))


def normal_smoothness(normals: torch.Tensor, normals_nearby: torch.Tensor) -> torch.Tensor:
    """MonoSDF's smoothness: mean |n(x) - n(x + noise)|, both (M, 3) unit normals."""
    return (normals - normals_nearby).norm(dim=-1).mean()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for colours in [0, 1]."""
    mse = ((pred - target) ** 2).mean().clamp_min(1e-10)
    return -10.0 * torch.log10(mse)
