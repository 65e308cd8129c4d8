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
    """Binary cross-entropy between rendered opacity (R,) and the mask (R,). Written out rather than
    ``F.binary_cross_entropy``, which raises (a device assert on CUDA) on a NaN opacity: here a NaN
    reaches the loss, where the trainer notices it."""
    p = opacity.clamp(eps, 1.0 - eps)
    target = mask.to(opacity.dtype)
    return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p)).mean()


def normal_smoothness(normals: torch.Tensor, normals_nearby: torch.Tensor) -> torch.Tensor:
    """MonoSDF's smoothness: mean |n(x) - n(x + noise)|, both (M, 3) unit normals."""
    return (normals - normals_nearby).norm(dim=-1).mean()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for colours in [0, 1]."""
    mse = ((pred - target) ** 2).mean().clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


def depth_scale_shift(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form least squares ``argmin_{s, b} sum (s pred + b - target)^2`` over (M,) values.

    Solves the 2x2 normal equations ``[[sum p^2, sum p], [sum p, M]] [s, b] = [sum p t, sum t]``
    (MonoSDF's ``compute_scale_and_shift``); a singular system (fewer than two distinct
    predictions) gives s = b = 0. Differentiable in ``pred``.
    """
    a00, a01, a11 = (pred * pred).sum(), pred.sum(), pred.new_tensor(float(pred.numel()))
    b0, b1 = (pred * target).sum(), target.sum()
    det = a00 * a11 - a01 * a01
    if float(det.detach()) <= 1e-12 * max(float((a00 * a11).detach()), 1e-30):
        return pred.new_zeros(()), pred.new_zeros(())
    return (a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det


def ssi_depth(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
    """Scale-and-shift-invariant depth loss (MonoSDF): ``sum (s pred + b - target)^2 / (2 M)``
    over the M ``valid`` rays, with (s, b) the batch's least-squares fit of the rendered depth
    ``pred`` (R,) to the cue ``target`` (R,); None when fewer than two rays are valid."""
    if int(valid.sum()) < 2:
        return None
    p, t = pred[valid], target[valid]
    scale, shift = depth_scale_shift(p, t)
    return ((scale * p + shift - t) ** 2).sum() / (2.0 * p.numel())


def normal_cue(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """MonoSDF's normal losses over the ``valid`` rays, both (R, 3) in camera space and normalised
    here: L1 ``mean sum |n - n_cue|`` and angular ``mean (1 - n . n_cue)``; None when none is valid."""
    if not bool(valid.any()):
        return None
    n = F.normalize(pred[valid], dim=-1)
    cue = F.normalize(target[valid], dim=-1)
    return (n - cue).abs().sum(-1).mean(), (1.0 - (n * cue).sum(-1)).mean()
