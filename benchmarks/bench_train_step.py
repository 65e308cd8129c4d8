"""A training step split by stage (sampler, encoding, MLPs, backward, optimiser), both encodings.

Run: .venv/bin/python benchmarks/bench_train_step.py [--scene DIR] [--steps 10] [section.key=value ...]
Prints a table of milliseconds per stage and iterations per second on this machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.config import load_config  # noqa: E402
from recon.datasets import load_scene, synthesize  # noqa: E402
from recon.render.renderer import SAMPLERS  # noqa: E402
from recon.render.samplers import ray_sphere_near_far  # noqa: E402
from recon.train import Fitter  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Milliseconds per call (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def stage_times(fitter: Fitter, repeats: int) -> dict[str, float]:
    cfg = fitter.cfg
    batch = fitter.rays.random_batch(cfg.train.batch_rays, fitter.generator)
    near, far, _ = ray_sphere_near_far(batch.origins, batch.dirs, cfg.render.scene_radius)
    sampler = SAMPLERS[cfg.render.sampler]
    n_points = cfg.train.batch_rays * (cfg.render.n_importance + cfg.render.n_extra)
    x = (torch.rand(n_points, 3) - 0.5) * 1.2
    unit = (x + 1) * 0.5
    field = fitter.field
    encoding = field.sdf_net.encoding

    def encoding_fwd_bwd() -> None:
        xi = unit.detach().requires_grad_(True)
        feats = encoding(xi)
        (g,) = torch.autograd.grad(feats.sum(), xi, create_graph=True)
        (feats.sum() + g.square().sum()).backward()

    def field_fwd_bwd() -> None:
        sdf, feat, grad = field.sdf_feature_gradient(x, create_graph=True)
        rgb = field.color_net(x, x, grad, feat)
        (sdf.sum() + grad.norm(dim=-1).sum() + rgb.sum()).backward()

    with torch.no_grad():
        sample_ms = timed(lambda: sampler(field.sdf, batch.origins, batch.dirs, near, far, 0.05, cfg.render), repeats)
    times = {
        "sampler (no grad)": sample_ms,
        "encoding fwd+eikonal bwd": timed(encoding_fwd_bwd, repeats),
        "field fwd+eikonal bwd (all)": timed(field_fwd_bwd, repeats),
        "optimiser step": timed(fitter.optimizer.step, repeats),
        "whole training step": timed(fitter.train_step, repeats),
    }
    times["MLPs (field - encoding)"] = times["field fwd+eikonal bwd (all)"] - times["encoding fwd+eikonal bwd"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=None, help="scene folder (default: synthesise the default scene)")
    parser.add_argument("--steps", type=int, default=5, help="repeats per measurement")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = args.scene or Path(tmp) / "scene"
        if args.scene is None:
            synthesize(scene_dir)
        scene = load_scene(scene_dir)
        columns = {}
        for encoding in ("hashgrid", "densegrid"):
            cfg = load_config(None, [f"encoding.type={encoding}", *args.overrides])
            fitter = Fitter(scene, Path(tmp) / encoding, cfg, scene_dir)
            for _ in range(3):
                fitter.train_step()
            columns[encoding] = stage_times(fitter, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ms per call")
    print(f"{'stage':32s}" + "".join(f"{name:>12s}" for name in columns))
    for stage in next(iter(columns.values())):
        print(f"{stage:32s}" + "".join(f"{col[stage]:12.1f}" for col in columns.values()))
    print(f"{'iterations / s':32s}" + "".join(f"{1000 / col['whole training step']:12.2f}" for col in columns.values()))


if __name__ == "__main__":
    main()
