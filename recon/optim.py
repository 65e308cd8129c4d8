"""The optimiser and its learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from recon.config import TrainConfig
from recon.fields import NeuralSDF


def make_optimizer(field: NeuralSDF, cfg: TrainConfig, extra: list[nn.Parameter]) -> torch.optim.Adam:
    """Adam with the grid at ``grid_lr_factor`` times the base learning rate; the ``extra`` parameters
    (the density's, the background model's) learn at the base rate. Each group keeps its own base
    rate (``base_lr``), which ``set_learning_rates`` scales."""
    groups = [
        {"params": field.network_parameters() + list(extra), "base_lr": cfg.lr},
        {"params": field.grid_parameters(), "base_lr": cfg.lr * cfg.grid_lr_factor},
    ]
    for group in groups:
        group["lr"] = group["base_lr"]
    # fused: one kernel for all parameters, 8x faster than the default on a 12M-entry grid (CPU).
    return torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.99), eps=1e-15, fused=True)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then exponential decay to ``lr_final_factor`` at the last step."""
    warm = min(1.0, (step + 1) / cfg.warmup_iters) if cfg.warmup_iters > 0 else 1.0
    return warm * cfg.lr_final_factor ** (min(step, cfg.iters) / max(cfg.iters, 1))


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's learning rate to its base rate times ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
