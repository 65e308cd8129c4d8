"""Time mesh extraction of an analytic SDF (sphere + torus), dense vs coarse-to-fine.

Run: ``python benchmarks/bench_mesh.py [--resolutions 128 256 512] [--block-size 64] [--mlp] [--repeat 2] [--threads 1]``.
Prints, per resolution and mode: SDF points evaluated, seconds (best of
``--repeat``), and the mesh size. Both modes must give the same mesh: the
coarse test skips only vertices the surface cannot reach. ``--mlp`` adds the
cost of a small SDF MLP (2 x 64 hidden, its output multiplied by 0, so the
shape is unchanged) to each evaluation, closer to a learned field's cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from recon.mesh import extract_mesh  # noqa: E402


def sphere_torus_sdf(p: torch.Tensor) -> torch.Tensor:
    """Union of a sphere (r 0.5 at the origin) and a torus (R 0.6, r 0.15, axis y, at y=0.3): ``(M, 3) -> (M,)``."""
    sphere = p.norm(dim=1) - 0.5
    ring = torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 0.6
    torus = torch.sqrt(ring**2 + (p[:, 1] - 0.3) ** 2) - 0.15
    return torch.minimum(sphere, torus)


def with_mlp_cost(fn):
    """``fn`` plus 0 x a random 2 x 64 Softplus MLP: same values, a learned field's cost."""
    mlp = torch.nn.Sequential(
        torch.nn.Linear(3, 64), torch.nn.Softplus(beta=100), torch.nn.Linear(64, 64),
        torch.nn.Softplus(beta=100), torch.nn.Linear(64, 1),
    )

    def sdf(p: torch.Tensor) -> torch.Tensor:
        return fn(p) + 0.0 * mlp(p)[:, 0]

    return sdf


class CountingSdf:
    """Wraps an SDF and counts the points it is asked for."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.points = 0

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        self.points += len(p)
        return self.fn(p)


def run(fn, resolution: int, block_size: int, coarse_to_fine: bool) -> tuple[int, float, int, int]:
    """(points evaluated, seconds, vertices, faces) for one extraction."""
    sdf = CountingSdf(fn)
    start = time.perf_counter()
    mesh = extract_mesh(sdf, resolution, block_size=block_size, coarse_to_fine=coarse_to_fine)
    return sdf.points, time.perf_counter() - start, len(mesh.vertices), len(mesh.faces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--mlp", action="store_true", help="add a small MLP's cost to every evaluation")
    parser.add_argument("--repeat", type=int, default=1, help="report the best of this many runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    fn = with_mlp_cost(sphere_torus_sdf) if args.mlp else sphere_torus_sdf
    field = "sphere+torus + 2x64 MLP cost" if args.mlp else "sphere+torus"
    print(f"{field}, torch threads {torch.get_num_threads()}, block size {args.block_size}, best of {args.repeat}")
    print(f"{'res':>5} {'mode':>15} {'sdf points':>13} {'seconds':>8} {'vertices':>9} {'faces':>9}")
    for res in args.resolutions:
        for c2f in (False, True):
            runs = [run(fn, res, args.block_size, c2f) for _ in range(args.repeat)]
            points, _, nv, nf = runs[0]
            seconds = min(r[1] for r in runs)
            mode = "coarse-to-fine" if c2f else "dense"
            print(f"{res:>5} {mode:>15} {points:>13,} {seconds:>8.2f} {nv:>9,} {nf:>9,}")


if __name__ == "__main__":
    main()
