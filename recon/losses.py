"""Training losses (MonoSDF's terms) as pure functions.

Which rows count is given by masks and weights, never by selecting rows, so that no loss reads a
value back to the host: a CUDA training step stays one stream of kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(weight values) / sum(weight)`` over (M,) values (0 when the weights sum to 0); the plain mean
    when ``weight`` is None (0 for no values)."""
    if weight is None:
        return values.sum() / max(values.numel(), 1)
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).tiny)


def rgb_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute colour error, (R, 3) vs (R, 3); only where ``mask`` (R,) is true when given."""
    error = (pred - target).abs().sum(-1)
    if mask is None:
        return error.mean() / 3.0
    weight = mask.to(error.dtype)
    return (error * weight).sum() / (3.0 * weight.sum().clamp_min(1.0))


def eikonal(gradients: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``mean((|grad sdf| - 1)^2)`` over gradients (M, 3), weighted by ``weight`` (M,) when given."""
    return weighted_mean((gradients.norm(dim=-1) - 1.0) ** 2, weight)


def mask_bce(opacity: torch.Tensor, mask: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Binary cross-entropy between rendered opacity (R,) and the mask (R,). Written out rather than
    ``F.binary_cross_entropy``, which raises (a device assert on CUDA) on a NaN opacity: here a NaN
    reaches the loss, where the trainer notices it."""
    p = opacity.clamp(eps, 1.0 - eps)
    target = mask.to(opacity.dtype)
    return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p)).mean()


def normal_smoothness(
    normals: torch.Tensor, normals_nearby: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """MonoSDF's smoothness: mean |n(x) - n(x + noise)|, both (M, 3) unit normals (weighted by (M,))."""
    return weighted_mean((normals - normals_nearby).norm(dim=-1), weight)


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for colours in [0, 1], (R, C) each; over the rows of ``mask`` (R,)
    when it holds any, else over all."""
    error = ((pred - target) ** 2).mean(-1)
    mse = error.mean()
    if mask is not None:
        inside = mask.to(error.dtype)
        mse = torch.where(inside.sum() > 0, weighted_mean(error, inside), mse)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def depth_scale_shift(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form least squares ``argmin_{s, b} sum w (s pred + b - target)^2`` over (M,) values.

    Solves the 2x2 normal equations ``[[sum w p^2, sum w p], [sum w p, sum w]] [s, b] = [sum w p t,
    sum w t]`` (MonoSDF's ``compute_scale_and_shift``; ``w`` = 1 without ``weight``); a singular
    system (fewer than two distinct predictions) gives s = b = 0. Differentiable in ``pred``.
    """
    w = torch.ones_like(pred) if weight is None else weight.to(pred.dtype)
    a00, a01, a11 = (w * pred * pred).sum(), (w * pred).sum(), w.sum()
    b0, b1 = (w * pred * target).sum(), (w * target).sum()
    det = a00 * a11 - a01 * a01
    regular = det > 1e-12 * (a00 * a11).clamp_min(1e-30)
    det = torch.where(regular, det, torch.ones_like(det))  # no 0/0 in either branch's gradient
    zero = torch.zeros_like(det)
    scale = torch.where(regular, (a11 * b0 - a01 * b1) / det, zero)
    return scale, torch.where(regular, (-a01 * b0 + a00 * b1) / det, zero)


def ssi_depth(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant depth loss (MonoSDF): ``sum (s pred + b - target)^2 / (2 M)``
    over the M ``valid`` rays, with (s, b) the batch's least-squares fit of the rendered depth
    ``pred`` (R,) to the cue ``target`` (R,); 0 when fewer than two rays are valid."""
    weight = valid.to(pred.dtype)
    p = torch.where(valid, pred, torch.zeros_like(pred))
    t = torch.where(valid, target, torch.zeros_like(target))
    scale, shift = depth_scale_shift(p, t, weight)
    count = weight.sum()
    loss = (weight * (scale * p + shift - t) ** 2).sum() / (2.0 * count.clamp_min(1.0))
    return torch.where(count >= 2, loss, torch.zeros_like(loss))


def normal_cue(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MonoSDF's normal losses over the ``valid`` rays, both (R, 3) in camera space and normalised
    here: L1 ``mean sum |n - n_cue|`` and angular ``mean (1 - n . n_cue)``; 0 when none is valid."""
    n = F.normalize(pred, dim=-1)
    cue = F.normalize(torch.where(valid[:, None], target, torch.ones_like(target)), dim=-1)
    return weighted_mean((n - cue).abs().sum(-1), valid), weighted_mean(1.0 - (n * cue).sum(-1), valid)
