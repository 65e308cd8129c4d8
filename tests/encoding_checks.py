"""Checks shared by the tests of the compiled grid backends (fused CPU, Triton) against the PyTorch grid."""

from __future__ import annotations

import torch


def assert_float32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 rounding: relative 1e-5, absolute 1e-5 of the largest magnitude."""
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def run_pass(enc, x: torch.Tensor, head: torch.Tensor, second_order: bool) -> list[torch.Tensor]:
    """Features, their grads to the table and the points; with ``second_order`` the eikonal
    pass instead: d(features . head)/dx with create_graph, a loss on it, its grads to both."""
    xg = x.clone().requires_grad_(True)
    out = enc(xg)
    if not second_order:
        loss = (out * torch.linspace(-1, 1, out.shape[1], device=x.device)).sum() + out.square().sum()
        return [out.detach(), *torch.autograd.grad(loss, [enc.params, xg])]
    (gx,) = torch.autograd.grad(out @ head, xg, torch.ones(len(x), device=x.device), create_graph=True)
    loss = ((gx.norm(dim=-1) - 1.0) ** 2).sum()
    return [out.detach(), gx.detach(), *torch.autograd.grad(loss, [enc.params, xg])]


def training_step_grads(enc, x: torch.Tensor, head: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Grads to the table and the points of a features loss plus an eikonal loss, in one backward
    (a training step's: the eikonal term's table gradient is deferred into the features' scatter)."""
    xg = x.clone().requires_grad_(True)
    feats = enc(xg)
    sdf = feats @ head
    (gx,) = torch.autograd.grad(sdf.sum(), xg, create_graph=True)
    loss = ((gx.norm(dim=-1) - 1.0) ** 2).mean() + sdf.abs().mean() + feats.square().mean()
    return torch.autograd.grad(loss, [enc.params, xg])
