"""From a fitted run to a mesh file in world units (normals, optional colours or texture), scored against
ground truth when there is one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import trimesh

from recon.config import DEFAULT_TEXTURE_SIZE
from recon.errors import InputError
from recon.holdout import mean_scores, split_holdout
from recon.io import check_output_file, write_json_atomic
from recon.mesh import check_mesh_path, extract_mesh, load_mesh, save_mesh
from recon.mesh_color import ColorMode, SurfaceShader, color_mesh
from recon.mesh_views import mesh_color_scores
from recon.metrics import DETAIL_RADIUS_REL, Views, format_metrics, mesh_metrics
from recon.rays import RaySource
from recon.run import Model, RunDir, load_model
from recon.texture import require_xatlas


def run_mesh(run_dir: str | Path, resolution: int | None, largest_component: bool = False,
             progress: bool = True) -> trimesh.Trimesh:
    """Marching cubes on a fitted run's SDF -> mesh in world units (never empty)."""
    return model_mesh(load_model(run_dir), run_dir, resolution, largest_component, progress)


def model_mesh(model: Model, run_dir: str | Path, resolution: int | None, largest_component: bool = False,
               progress: bool = True) -> trimesh.Trimesh:
    """Marching cubes on a loaded run's SDF -> mesh in world units (never empty)."""
    cfg = model.cfg.mesh
    resolution = cfg.resolution if resolution is None else resolution
    r = model.cfg.render.scene_radius
    device = next(model.field.parameters()).device

    def sdf_fn(points):
        return model.field.sdf(points.to(device)).cpu()

    mesh = extract_mesh(
        sdf_fn,
        resolution,
        bbox_min=(-r, -r, -r),
        bbox_max=(r, r, r),
        scale_mat=model.scale_mat,
        block_size=cfg.block_size,
        level=cfg.level,
        largest_component=largest_component or cfg.largest_component,
        progress=progress,
    )
    if len(mesh.faces) == 0:
        raise InputError(run_dir, "the fitted SDF has no zero crossing in the scene sphere: no surface to extract")
    return mesh


def extract_run(
    run_dir: str | Path,
    output: str | Path,
    resolution: int | None,
    largest_component: bool,
    gt_path: str | Path | None,
    color: ColorMode = "none",
    texture_size: int = DEFAULT_TEXTURE_SIZE,
    score_views: bool = False,
    progress: bool = True,
) -> str:
    """Extract the run's surface to ``output`` with vertex normals and the colours of
    ``color`` (``recon.mesh_color.color_mesh``); return a one-paragraph summary (with metrics against
    ``gt_path``, or the scene's ground truth named in ``meta.json`` when it is found; with
    ``score_views``, the coloured mesh's scores on the training views)."""
    check_mesh_path(output, textured=color == "texture")
    if color == "texture":
        require_xatlas(texture_size)
    if score_views and color == "none":
        raise InputError("--psnr", "scores the mesh's colours: give --color vertex or --color texture")
    gt_path, note = _ground_truth(RunDir(Path(run_dir)), gt_path)
    gt = load_mesh(gt_path) if gt_path is not None else None  # a bad --gt stops here, before the work
    model = load_model(run_dir)
    mesh = model_mesh(model, run_dir, resolution, largest_component, progress)
    mesh = color_mesh(mesh, SurfaceShader(model, progress=progress), color, texture_size)
    save_mesh(mesh, output)
    lines = [f"mesh: {output} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces, normals"
             + {"none": "", "vertex": ", vertex colours", "texture": ", texture"}[color] + ")"]
    if gt is not None:
        metrics = mesh_metrics(mesh, gt)
        write_json_atomic(Path(output).with_suffix(".metrics.json"), metrics)
        lines.append(f"vs {gt_path}: {format_metrics(metrics)}")
    elif note:
        lines.append(note)
    if score_views:
        lines.append(_view_scores_line(mesh, model, progress))
    return "\n".join(lines)


def _ground_truth(run: RunDir, gt_path: str | Path | None) -> tuple[Path | None, str | None]:
    """The mesh to score against: ``gt_path`` (it must exist), else the scene's from ``meta.json``
    (absolute; a relative one of an earlier version is tried from here and from the run folder).
    Returns it, or None and a line saying why nothing is scored."""
    if gt_path is not None:
        if not Path(gt_path).is_file():
            raise InputError(gt_path, "ground-truth mesh file not found (--gt)")
        return Path(gt_path), None
    saved = run.read_meta().get("gt_mesh") if run.meta.is_file() else None
    if not saved:
        return None, None
    for candidate in (Path(saved), run.root / saved):
        if candidate.is_file():
            return candidate, None
    return None, f"not scored: the scene's ground truth {saved} (meta.json) is not found; give it with --gt"


def training_rays(model: Model, every: int = 1) -> RaySource:
    """The rays of the views a run was fitted on (its capture, less its held-out views; with ``every`` K,
    every K-th of them), on the CPU."""
    from recon.datasets import load_data

    data = model.cfg.data
    scene = load_data(model.meta["data_dir"], data)
    train, _, _ = split_holdout(scene, model.cfg.train.holdout)
    if every > 1:
        train = train.select(list(range(0, train.n_images, every)))
    return RaySource(train, torch.device("cpu"), data.max_rays)


def _view_scores_line(mesh: trimesh.Trimesh, model: Model, progress: bool) -> str:
    """The coloured mesh's mean scores on the training views, as one line."""
    rays = training_rays(model)
    t = model.cfg.train
    scores = mean_scores(mesh_color_scores(mesh, model.scale_mat, rays, t.val_max_side, model.background.matte(),
                                           t.holdout_supersample, progress))
    shown = ", ".join(f"{key} {value:.3f}" for key, value in scores.items())
    return (f"coloured mesh on the {rays.n_images} training views (ray cast, long side <= {t.val_max_side} px, "
            f"{t.holdout_supersample}x{t.holdout_supersample} rays per pixel): {shown}")


def evaluate_files(
    mesh_path: str | Path,
    gt_path: str | Path,
    json_path: str | Path | None,
    cull_to: str | Path | None = None,
    detail_radius_rel: float = DETAIL_RADIUS_REL,
    n_points: int = 200_000,
) -> dict[str, Any]:
    """Metrics of one mesh file against another; optionally written to ``json_path``.

    ``cull_to``: a scene folder whose cameras (and masks) decide which surface counts.
    """
    if json_path is not None:
        check_output_file(json_path)
    views = None
    if cull_to is not None:
        from recon.datasets import load_scene

        views = Views.from_scene(load_scene(cull_to))
    metrics = mesh_metrics(load_mesh(mesh_path), load_mesh(gt_path), n_points, views=views,
                           detail_radius_rel=detail_radius_rel)
    if json_path is not None:
        write_json_atomic(json_path, metrics)
    return metrics
