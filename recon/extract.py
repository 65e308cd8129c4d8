"""From a fitted run to a mesh file in world units, scored against ground truth when there is one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trimesh

from recon.errors import InputError
from recon.io import check_output_file, write_json_atomic
from recon.mesh import check_mesh_path, extract_mesh, load_mesh, save_mesh
from recon.metrics import DETAIL_RADIUS_REL, Views, format_metrics, mesh_metrics
from recon.run import RunDir, load_model


def run_mesh(run_dir: str | Path, resolution: int | None, largest_component: bool = False,
             progress: bool = True) -> trimesh.Trimesh:
    """Marching cubes on a fitted run's SDF -> mesh in world units (never empty)."""
    model = load_model(run_dir)
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
) -> str:
    """Extract the run's surface to ``output``; return a one-paragraph summary (with metrics against
    ``gt_path``, or the scene's ground truth named in ``meta.json`` when it is found)."""
    check_mesh_path(output)
    metrics_path = Path(output).with_suffix(".metrics.json")
    gt_path, note = _ground_truth(RunDir(Path(run_dir)), gt_path)
    gt = load_mesh(gt_path) if gt_path is not None else None  # a bad --gt stops here, before the work
    mesh = run_mesh(run_dir, resolution, largest_component)
    save_mesh(mesh, output)
    lines = [f"mesh: {output} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces)"]
    if gt is not None:
        metrics = mesh_metrics(mesh, gt)
        write_json_atomic(metrics_path, metrics)
        lines.append(f"vs {gt_path}: {format_metrics(metrics)}")
    elif note:
        lines.append(note)
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
