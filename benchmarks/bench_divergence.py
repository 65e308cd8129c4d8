"""How far the training loss climbs above the first step's, by learning rate: the figures behind
``recon.train.DIVERGENCE_FACTOR`` (the divergence warning).

Fits the test-sized scene (8 views of 32x32, made here, or ``--scene DIR``) with the test
networks for ``--steps`` steps at each learning rate and prints, per rate, the first loss, the
largest loss over the first, the last loss and the step where the loss first went non-finite.

Run: ``python benchmarks/bench_divergence.py [--steps 100] [--lrs 2e-3 2e-2 0.1 1 1e3] [--scene DIR]``
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FAST_FIT  # noqa: E402 - the test networks, one definition

from recon.config import load_config  # noqa: E402
from recon.datasets import load_scene, synthesize  # noqa: E402
from recon.train import DIVERGENCE_FACTOR, Fitter  # noqa: E402


def loss_curve(scene_dir: Path, lr: float, steps: int, run_dir: Path) -> list[float]:
    """The total loss of each step (stops at the first non-finite one)."""
    cfg = load_config(None, [*FAST_FIT, f"train.lr={lr}", f"train.iters={steps}"])
    torch.manual_seed(0)
    fitter = Fitter(load_scene(scene_dir), run_dir, cfg, scene_dir)
    fitter.field.train()
    losses: list[float] = []
    while len(losses) < steps and (not losses or math.isfinite(losses[-1])):
        losses.append(fitter.train_step()["total"])
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 2e-2, 0.1, 1.0, 1e3])
    parser.add_argument("--scene", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene = args.scene or synthesize(Path(tmp) / "scene", n_views=8, size=32, seed=0, mesh_resolution=64).out_dir
        print(f"warning threshold: {DIVERGENCE_FACTOR:g} x the first loss")
        print("| lr | first loss | max / first | last loss | first non-finite step |\n|---|---|---|---|---|")
        for lr in args.lrs:
            losses = loss_curve(scene, lr, args.steps, Path(tmp) / "run")
            finite = [x for x in losses if math.isfinite(x)]
            bad = next((i + 1 for i, x in enumerate(losses) if not math.isfinite(x)), None)
            print(f"| {lr:g} | {losses[0]:.3g} | {max(finite) / losses[0]:.3g} | {finite[-1]:.3g} | {bad or '-'} |",
                  flush=True)


if __name__ == "__main__":
    main()
