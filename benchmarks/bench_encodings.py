"""Time the grid encodings on this machine: forward, backward, eikonal, training step.

Usage: ``python benchmarks/bench_encodings.py [--points 65536] [--repeats 5] [--threads 0]``

* forward: ``enc(x)`` as in training (graph kept for the backward);
* forward+backward: then ``backward`` of a loss on the features, to the table and the points;
* eikonal: forward, ``g = d(features . v)/dx`` with ``create_graph=True``, then
  ``backward`` of ``mean((|g| - 1)^2)`` (the double backward, to the table, ``v`` and x);
* train step: the eikonal step plus a loss on the features and the SDF, as a training
  step has (its two table gradients are scattered in one pass).

Each cell is the best of ``--repeats`` runs (the machine may be shared), in milliseconds,
with millions of points per second beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from recon.config import EncodingConfig  # noqa: E402
from recon.encodings import GridEncoding, matched_dense_resolution  # noqa: E402


def best_ms(step: Callable[[], None], repeats: int) -> float:
    """Best wall time of ``step`` over ``repeats`` runs, after one warm-up run."""
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def workloads(enc: GridEncoding, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The three timed steps on points ``x`` (N, 3)."""
    probe = torch.randn(enc.out_dim, dtype=x.dtype)
    head = torch.randn(enc.out_dim, dtype=x.dtype, requires_grad=True)

    def forward() -> None:
        enc(x)

    def forward_backward() -> None:
        xg = x.detach().requires_grad_(True)
        (enc(xg) @ probe).sum().backward()

    def eikonal() -> None:
        xg = x.detach().requires_grad_(True)
        sdf = enc(xg) @ head
        (grad,) = torch.autograd.grad(sdf.sum(), xg, create_graph=True)
        ((grad.norm(dim=-1) - 1.0) ** 2).mean().backward()

    def train_step() -> None:
        xg = x.detach().requires_grad_(True)
        feats = enc(xg)
        sdf = feats @ head
        (grad,) = torch.autograd.grad(sdf.sum(), xg, create_graph=True)
        (((grad.norm(dim=-1) - 1.0) ** 2).mean() + sdf.abs().mean() + feats.square().mean()).backward()

    return {"forward": forward, "forward+backward": forward_backward, "eikonal": eikonal, "train step": train_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.points, 3)
    dense_cfg = EncodingConfig(type="densegrid")
    arms = {
        "hashgrid": GridEncoding(EncodingConfig(type="hashgrid")),
        f"densegrid R={matched_dense_resolution(dense_cfg)}": GridEncoding(dense_cfg),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.points:,} points, best of {args.repeats}")
    steps = list(workloads(arms["hashgrid"], x))
    print(f"{'encoding':<18} {'params':>12} {'out':>4} | " + " | ".join(f"{name:>17}" for name in steps))
    for name, enc in arms.items():
        cells = []
        for step in workloads(enc, x).values():
            ms = best_ms(step, args.repeats)
            cells.append(f"{ms:6.1f} ms {args.points / ms / 1e3:4.2f} M/s")
        print(f"{name:<18} {enc.n_params():>12,} {enc.out_dim:>4} | " + " | ".join(cells))

if __name__ == "__main__":
    main()
