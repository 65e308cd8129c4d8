"""Error-bounded (VolSDF) vs surface-guided sampling on analytic SDF scenes.

For each scene, beta and sampler, the Laplace density is composited at the
returned samples and compared with a dense reference (``--n-ref`` evenly
spaced samples per ray): opacity error on every ray, depth error on rays the
reference sees as opaque (opacity > 0.5), SDF evaluations per ray and time.
Two quadratures are scored on the same samples: ``left`` (``deltas_from_t``,
NeRF's convention) and ``centred`` (``centred_deltas_from_t``). Samplers named
``+grid`` run inside the occupied segments of a 64^3 occupancy grid updated from the
scene's SDF at that beta (their quadrature cells are measured on the occupied length;
rays that cross no occupied cell cost nothing and render nothing; their "left" columns
use the plain cells and are not meaningful). Their SDF evaluations per ray leave out the
grid update, which a fit amortises over many steps.

``--scene DIR`` adds a scene with ground truth (e.g. ``recon synth DIR``): its mesh's
signed distance (open3d) in the normalised frame, seen through rays of its own cameras
at random pixels, most of which miss the object (as in training).

Run: ``python benchmarks/bench_sampler.py [--rays 1024] [--threads 2] [--grid 64] [--scene DIR]
         [--scenes sphere,bumpy+thin,mesh] [--n-evals 32 64 128]``
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from recon.config import RenderConfig
from recon.render.occupancy import OccupancyGrid
from recon.render import (
    centred_deltas_from_t,
    deltas_from_t,
    depth_from_weights,
    error_bounded_sample,
    laplace_density,
    midpoints_from_t,
    opacity_from_weights,
    ray_sphere_near_far,
    surface_guided_sample,
    uniform_t,
    weights_from_density,
)
from recon.render.samplers import RaySegments

# ----------------------------------------------------------------------------- scenes


def sphere_sdf(p: Tensor) -> Tensor:
    """Sphere of radius 0.5 at the origin, ``(M, 3) -> (M,)``."""
    return p.norm(dim=-1) - 0.5


def bumpy_and_thin_sdf(p: Tensor) -> Tensor:
    """A bumpy sphere beside a thin plate (1 cm thick), ``(M, 3) -> (M,)``.

    The bumpy sphere's SDF is divided by ``1 + |grad bump|_max`` to stay a
    1-Lipschitz distance bound (like a learnt field: not an exact SDF). The
    plate is thinner than the coarse sample spacing (~3 cm).
    """
    amp, freq = 0.02, 20.0
    q = p - torch.tensor([-0.25, 0.0, 0.0], dtype=p.dtype)
    bump = amp * torch.sin(freq * q[:, 0]) * torch.sin(freq * q[:, 1]) * torch.sin(freq * q[:, 2])
    bumpy = (q.norm(dim=-1) - 0.4 - bump) / (1.0 + amp * freq * math.sqrt(3.0))
    half = torch.tensor([0.005, 0.35, 0.35], dtype=p.dtype)
    d = (p - torch.tensor([0.45, 0.0, 0.0], dtype=p.dtype)).abs() - half
    plate = d.clamp(min=0.0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0.0)
    return torch.minimum(bumpy, plate)


def make_rays(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Rays from cameras 2.5 from the centre towards random points near it."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=g)
    origins = 2.5 * origins / origins.norm(dim=-1, keepdim=True)
    targets = 0.45 * torch.randn(n, 3, generator=g)
    dirs = targets - origins
    return origins, dirs / dirs.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- scoring


def render(sdf: Callable[[Tensor], Tensor], o: Tensor, d: Tensor, t: Tensor, near: Tensor, far: Tensor,
           beta: float, quadrature: str, segments: RaySegments | None = None) -> tuple[Tensor, Tensor]:
    """Opacity ``(R,)`` and normalised expected distance ``(R,)`` of Laplace density at ``t``.

    With ``segments`` the cells are measured on the occupied length (as the renderer does) and
    rays without an occupied segment render nothing.
    """
    s = sdf((o[:, None] + t[..., None] * d[:, None]).reshape(-1, 3)).reshape(t.shape)
    if segments is not None:
        tau = segments.to_tau(t)
        w = weights_from_density(laplace_density(s, beta), centred_deltas_from_t(tau, 0.0, segments.length))
        w = torch.where(segments.length[:, None] > 0, w, torch.zeros_like(w))
        opacity = opacity_from_weights(w)
        return opacity, depth_from_weights(w, t) / opacity.clamp(min=1e-12)
    if quadrature == "left":
        deltas = deltas_from_t(t, far)
        where = midpoints_from_t(t, deltas)
    else:
        deltas = centred_deltas_from_t(t, near, far)
        where = t
    w = weights_from_density(laplace_density(s, beta), deltas)
    opacity = opacity_from_weights(w)
    return opacity, depth_from_weights(w, where) / opacity.clamp(min=1e-12)


def reference(sdf, o, d, near, far, beta, n_ref, chunk=64):
    """Dense reference (left Riemann sum with ``n_ref`` samples), chunked over rays."""
    ops, deps = [], []
    for i in range(0, o.shape[0], chunk):
        sl = slice(i, i + chunk)
        t = uniform_t(near[sl], far[sl], n_ref, False)
        op, dep = render(sdf, o[sl], d[sl], t, near[sl], far[sl], beta, "left")
        ops.append(op)
        deps.append(dep)
    return torch.cat(ops), torch.cat(deps)


def with_grid(sampler: Callable, grid: OccupancyGrid) -> Callable:
    """``sampler`` restricted to the occupied segments of ``grid``; returns ``(t, segments)``."""

    def sample(sdf, o, d, near, far, beta, cfg):
        segments = grid.segments(o, d, near, far)
        rows = segments.length > 0
        t = near[:, None].repeat(1, cfg.n_importance + cfg.n_extra)
        if bool(rows.any()):
            t[rows] = sampler(sdf, o[rows], d[rows], near[rows], far[rows], beta, cfg, segments=segments.select(rows))
        return t, segments

    return sample


def mesh_scene(scene_dir: Path, n_rays: int) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    """The ground-truth mesh's SDF (normalised frame) and rays through random pixels of the scene's views."""
    import numpy as np
    import open3d as o3d

    from recon.datasets import load_scene
    from recon.rays import RaySource

    scene = load_scene(scene_dir)
    mesh = o3d.io.read_triangle_mesh(str(scene.gt_mesh_path))
    caster = o3d.t.geometry.RaycastingScene()
    caster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    scale = float(np.cbrt(abs(np.linalg.det(scene.scale_mat[:3, :3]))))
    linear, offset = torch.from_numpy(scene.scale_mat[:3, :3]).float(), torch.from_numpy(scene.scale_mat[:3, 3]).float()

    def sdf(p: Tensor) -> Tensor:
        world = (p @ linear.T + offset).numpy().astype(np.float32)
        return torch.from_numpy(caster.compute_signed_distance(o3d.core.Tensor(world)).numpy()) / scale

    batch = RaySource(scene, torch.device("cpu")).random_batch(n_rays, torch.Generator().manual_seed(0))
    return sdf, batch.origins, batch.dirs


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    o, d = make_rays(args.rays)
    scenes = {"sphere": (sphere_sdf, o, d), "bumpy+thin": (bumpy_and_thin_sdf, o, d)}
    if args.scene is not None:
        scenes["mesh"] = mesh_scene(args.scene, args.rays)
    scenes = {name: value for name, value in scenes.items() if not args.scenes or name in args.scenes.split(",")}
    plain = {"error_bounded": error_bounded_sample, "surface_guided": surface_guided_sample}
    # (n_eval, n_importance, n_extra): 48 samples out with more and more evaluations, then the design's counts
    settings = [(32, 32, 16), (64, 32, 16), (128, 32, 16), (128, 64, 32)]
    settings = [s for s in settings if not args.n_evals or s[0] in args.n_evals]
    print(f"rays: {args.rays}, reference: {args.n_ref} samples/ray, threads: {torch.get_num_threads()}; "
          "errors: opacity on all rays, depth (distance) on rays with reference opacity > 0.5; p99 / max")
    header = (f"{'scene':<11}{'beta':>6} {'sampler':<20}{'n_eval':>6}{'out':>4}{'eval/ray':>9}{'ms':>7}"
              f" | {'left: op p99/max':>17}{'dep p99/max':>15} | {'centred: op p99/max':>20}{'dep p99/max':>15}")
    print(header)
    print("-" * len(header))
    for scene_name, (sdf, o, d) in scenes.items():
        near, far, _ = ray_sphere_near_far(o, d, 1.0)
        for beta in args.betas:
            op_ref, dep_ref = reference(sdf, o, d, near, far, beta, args.n_ref)
            solid = op_ref > 0.5
            samplers = {name: (lambda *a, f=f: (f(*a), None)) for name, f in plain.items()}
            if args.grid:
                grid = OccupancyGrid(args.grid)
                grid.update(sdf, beta)
                samplers.update({f"{name}+grid": with_grid(f, grid) for name, f in plain.items()})
            for name, sampler in samplers.items():
                for n_eval, n_imp, n_extra in settings:
                    cfg = RenderConfig(n_eval=n_eval, n_importance=n_imp, n_extra=n_extra)
                    count = [0]

                    def counted(p: Tensor) -> Tensor:
                        count[0] += p.shape[0]
                        return sdf(p)

                    sampler(sdf, o[:8], d[:8], near[:8], far[:8], beta, cfg)  # warm-up
                    times = []
                    for _ in range(args.repeats):
                        count[0] = 0
                        start = time.perf_counter()
                        t, segments = sampler(counted, o, d, near, far, beta, cfg)
                        times.append(time.perf_counter() - start)
                    cells = []
                    for quad in ("left", "centred"):
                        op, dep = render(sdf, o, d, t, near, far, beta, quad, segments if quad == "centred" else None)
                        e_op = (op - op_ref).abs()
                        e_dep = (dep - dep_ref).abs()[solid]
                        cells.append(f"{e_op.quantile(0.99):>9.4f}/{e_op.max():.4f}"
                                     f"{e_dep.quantile(0.99):>8.4f}/{e_dep.max():.4f}")
                    print(f"{scene_name:<11}{beta:>6g} {name:<20}{n_eval:>6}{t.shape[1]:>4}"
                          f"{count[0] / args.rays:>9.1f}{1e3 * min(times):>7.1f} | {cells[0]:>32} | {cells[1]:>35}")
            print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--n-ref", type=int, default=32768)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.02, 0.005])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--grid", type=int, default=64, help="occupancy grid resolution of the +grid rows (0: none)")
    parser.add_argument("--scene", type=Path, default=None, help="a scene with gt_mesh.ply: adds the 'mesh' scene")
    parser.add_argument("--scenes", default="", help="comma-separated scenes to run (default: all)")
    parser.add_argument("--n-evals", type=int, nargs="*", default=None, help="only the settings with these n_eval")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
