"""A training step split by stage (occupancy grid, sampler, encoding, MLPs, optimiser), side by side.

Run: .venv/bin/python benchmarks/bench_train_step.py [--scene DIR] [--steps 5] [--beta 0.01]
         [--columns hashgrid,densegrid,hashgrid:render.occupancy_resolution=0] [section.key=value ...]

Each column is an encoding, optionally followed by ``:``-separated overrides of its own. The
field is the fresh sphere of the geometric initialisation with the density's beta set to
``--beta`` (a fit reaches 0.01 within a few hundred steps), so the occupancy grid is carved as
it would be mid-fit. Prints milliseconds per stage, field evaluations per ray (sampler: SDF
only; render: with the gradient) and iterations per second on this machine.
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
    """Milliseconds per call (after one warm-up call; on a CUDA machine the queued kernels are waited for)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats * 1000


def set_beta(fitter: Fitter, beta: float) -> None:
    """Put the density at ``beta`` (Laplace beta, or NeuS 1 / s)."""
    with torch.no_grad():
        if fitter.density.beta is not None:
            fitter.density.beta.param.fill_(beta - fitter.density.beta.beta_min)
        else:
            fitter.density.inv_s.param.fill_(1.0 / beta)


def count_evaluations(fitter: Fitter, beta: float) -> tuple[float, float]:
    """SDF-only and with-gradient evaluations per ray of one training step (no grid update in it)."""
    field = fitter.field
    counts = [0, 0]
    sdf, grad = field.sdf, field.sdf_feature_gradient

    def counted_sdf(x):
        counts[0] += x.shape[0]
        return sdf(x)

    def counted_grad(x, create_graph):
        counts[1] += x.shape[0]
        return grad(x, create_graph)

    field.sdf, field.sdf_feature_gradient = counted_sdf, counted_grad
    every = fitter.cfg.train.occupancy_every
    fitter.step += 1 if fitter.step % max(every, 1) == 0 else 0
    set_beta(fitter, beta)
    fitter.train_step()
    del field.sdf, field.sdf_feature_gradient
    n = fitter.cfg.train.batch_rays
    return counts[0] / n, counts[1] / n


def stage_times(fitter: Fitter, repeats: int, beta: float) -> dict[str, float]:
    cfg = fitter.cfg
    batch = fitter.rays.random_batch(cfg.train.batch_rays, fitter.generator)
    near, far, hit = ray_sphere_near_far(batch.origins, batch.dirs, cfg.render.scene_radius)
    sampler = SAMPLERS[cfg.render.sampler]
    n_points = cfg.train.batch_rays * (cfg.render.n_importance + cfg.render.n_extra)
    x = ((torch.rand(n_points, 3) - 0.5) * 1.2).to(fitter.device)
    unit = (x + 1) * 0.5
    field, grid = fitter.field, fitter.occupancy
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

    def sample() -> None:
        segments = grid.segments(batch.origins, batch.dirs, near, far) if grid is not None else None
        rows = hit if segments is None else hit & (segments.length > 0)
        if bool(rows.any()):
            sub = None if segments is None else segments.select(rows)
            sampler(field.sdf, batch.origins[rows], batch.dirs[rows], near[rows], far[rows], beta, cfg.render,
                    segments=sub)

    times: dict[str, float] = {}
    if grid is not None:
        times["occupancy update"] = timed(lambda: grid.update(field.sdf, beta), 1)
        times["  per step (/ occupancy_every)"] = times["occupancy update"] / max(cfg.train.occupancy_every, 1)
        times["occupancy ray walk"] = timed(lambda: grid.segments(batch.origins, batch.dirs, near, far), repeats)
    with torch.no_grad():
        times["sampler (no grad, with walk)"] = timed(sample, repeats)
    if encoding is not None:
        times["encoding fwd+eikonal bwd"] = timed(encoding_fwd_bwd, repeats)
    times["field fwd+eikonal bwd (all)"] = timed(field_fwd_bwd, repeats)
    times["optimiser step"] = timed(fitter.optimizer.step, repeats)
    times["whole training step"] = timed(lambda: (set_beta(fitter, beta), fitter.train_step()), repeats)
    times["MLPs (field - encoding)"] = times["field fwd+eikonal bwd (all)"] - times.get("encoding fwd+eikonal bwd", 0.0)
    times["sampler evals / ray"], times["render evals / ray"] = count_evaluations(fitter, beta)
    if grid is not None:
        times["occupied cells %"] = 100 * grid.occupied_fraction()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=None, help="scene folder (default: synthesise the default scene)")
    parser.add_argument("--steps", type=int, default=5, help="repeats per measurement")
    parser.add_argument("--beta", type=float, default=0.01, help="density beta while timing")
    parser.add_argument("--columns", default="hashgrid,densegrid,hashgrid:render.occupancy_resolution=0")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = args.scene or Path(tmp) / "scene"
        if args.scene is None:
            synthesize(scene_dir)
        scene = load_scene(scene_dir)
        columns = {}
        for index, column in enumerate(args.columns.split(",")):
            encoding, *own = column.split(":")
            cfg = load_config(None, [f"geometry.arm={encoding}", "train.val_every=0", *args.overrides, *own])
            fitter = Fitter(scene, Path(tmp) / str(index), cfg, scene_dir)
            set_beta(fitter, args.beta)
            fitter.step = 1  # the first steps run without a grid update; stage_times updates it itself
            for _ in range(2):
                fitter.train_step()
            if fitter.occupancy is not None:
                fitter.occupancy.update(fitter.field.sdf, args.beta)
            columns[column] = stage_times(fitter, args.steps, args.beta)
    stages = list(dict.fromkeys(stage for col in columns.values() for stage in col))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, beta {args.beta}; ms per call unless named")
    labels = [chr(ord("A") + i) for i in range(len(columns))]
    for label, name in zip(labels, columns):
        print(f"  {label}: {name}")
    width = 12
    print(f"{'stage':32s}" + "".join(f"{label:>{width}s}" for label in labels))
    for stage in stages:
        cells = "".join(f"{col[stage]:{width}.1f}" if stage in col else f"{'-':>{width}s}" for col in columns.values())
        print(f"{stage:32s}" + cells)
    print(f"{'iterations / s':32s}" + "".join(f"{1000 / col['whole training step']:{width}.2f}" for col in columns.values()))


if __name__ == "__main__":
    main()
