"""A fitted run's exported mesh against its volume renderer: colours seen from the training cameras, and
which vertex normals to keep.

Run: ``python benchmarks/bench_mesh_color.py RUN [--resolution R] [--every K] [--texture-size N] [--no-texture]``.

Prints three tables:
1. **Colour**: PSNR inside the masks, PSNR of the whole image, SSIM (inside the masks) and mask IoU on
   every K-th training view, for the volume renderer (``render_image``) and for the mesh with vertex
   colours and with a baked texture, each ray cast through the same pixels (``recon.mesh_views``:
   the same 1/k resolution, ``train.holdout_supersample``^2 rays per pixel, block-mean targets).
2. **Normals**: the angle between a vertex normal and the ground truth's normal at the nearest
   point of ``gt_mesh`` (when the scene has one), for the SDF's gradient and for the mesh's own
   area-weighted normals; and the same on an analytic sphere at 64^3, where the truth is exact.
3. **Time** of each step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from recon.extract import model_mesh, training_rays  # noqa: E402
from recon.holdout import holdout_scores, mean_scores  # noqa: E402
from recon.mesh import extract_mesh, load_mesh  # noqa: E402
from recon.mesh_color import SurfaceShader, area_weighted_normals, color_mesh  # noqa: E402
from recon.mesh_views import render_mesh_views  # noqa: E402
from recon.render.image import render_image  # noqa: E402
from recon.run import load_model  # noqa: E402


def angles_to(normals: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Degrees between unit vectors, row by row."""
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", normals, truth), -1.0, 1.0)))


def gt_normals_at(points: np.ndarray, gt) -> np.ndarray:
    """The GT's face normal at the point of its surface nearest to each of ``points`` (world units)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(gt.vertices, np.float32)), o3d.core.Tensor(np.asarray(gt.faces, np.uint32)))
    closest = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    return np.asarray(gt.face_normals)[closest["primitive_ids"].numpy()]


def normal_rows(label: str, gradient: np.ndarray, area: np.ndarray, truth: np.ndarray) -> list[str]:
    rows = []
    for name, normals in (("SDF gradient", gradient), ("area-weighted", area)):
        a = angles_to(normals, truth)
        rows.append(f"| {label} | {name} | {a.mean():.2f} | {np.median(a):.2f} | {np.percentile(a, 95):.2f} |")
    return rows


def sphere_normals() -> list[str]:
    """Both normals on a sphere of radius 0.5 meshed at 64^3 from its exact SDF: the truth is radial."""
    mesh = extract_mesh(lambda p: p.norm(dim=-1) - 0.5, 64)
    v = np.asarray(mesh.vertices)
    radial = v / np.linalg.norm(v, axis=1, keepdims=True)
    return normal_rows("analytic sphere, 64^3", radial, area_weighted_normals(mesh), radial)


def score(views) -> dict[str, float]:
    return mean_scores([holdout_scores(v) for v in views])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--resolution", type=int, default=None, help="marching cubes (default: the run's mesh.resolution)")
    parser.add_argument("--every", type=int, default=1, help="score every K-th training view (default all)")
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--no-texture", action="store_true")
    args = parser.parse_args()

    times: dict[str, float] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        return out

    model = load_model(args.run, torch.device("cpu"))
    t = model.cfg.train
    subset = training_rays(model, args.every)
    mesh = timed("marching cubes", lambda: model_mesh(model, args.run, args.resolution, progress=False))
    shader = SurfaceShader(model)
    vertex = timed("vertex normals + colours", lambda: color_mesh(mesh, shader, "vertex"))
    meshes = {"mesh, vertex colours": vertex}
    if not args.no_texture:
        meshes["mesh, texture"] = timed(f"texture ({args.texture_size}: xatlas + bake)",
                                        lambda: color_mesh(mesh, shader, "texture", args.texture_size))
    matte = model.background.matte()
    results = {"volume renderer": score(timed("volume rendering", lambda: [
        render_image(model.field, model.density, model.background, subset, i, model.cfg.render, t.val_max_side,
                     supersample=t.holdout_supersample) for i in range(subset.n_images)]))}
    for name, coloured in meshes.items():
        results[name] = score(timed(f"ray casting ({name})", lambda: render_mesh_views(
            coloured, model.scale_mat, subset, t.val_max_side, matte, t.holdout_supersample)))

    print(f"run {args.run}: {len(mesh.faces)} faces; {subset.n_images} training views, long side <= {t.val_max_side} px, "
          f"{t.holdout_supersample}x{t.holdout_supersample} rays per pixel\n")
    keys = list(results["volume renderer"])
    print("| renderer | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, values in results.items():
        print(f"| {name} | " + " | ".join(f"{values.get(k, float('nan')):.3f}" for k in keys) + " |")

    print("\n| surface | normals | mean angle to GT (deg) | median | 95th pct |\n|---|---|---|---|---|")
    gt_path = model.meta.get("gt_mesh")
    if gt_path and Path(gt_path).is_file():
        truth = gt_normals_at(np.asarray(vertex.vertices), load_mesh(gt_path))
        print("\n".join(normal_rows("fitted run vs gt_mesh", shader(np.asarray(vertex.vertices))[0],
                                    area_weighted_normals(vertex), truth)))
    print("\n".join(sphere_normals()))

    print("\n| step | seconds |\n|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
