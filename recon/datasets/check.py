"""``recon check``: load a capture and describe what was found, without training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.datasets.scene import Scene


def scene_warnings(scene: Scene) -> list[str]:
    """The loader's warnings and geometric doubts (cameras inside the unit sphere, centre unseen)."""
    warnings = list(scene.warnings)
    distance = np.linalg.norm(scene.cam_to_world[:, :3, 3], axis=1)
    inside = int((distance <= 1.0).sum())
    if inside:
        warnings.append(
            f"{inside} of {scene.n_images} cameras lie inside the unit sphere (a room or an unbounded scene?)"
        )
    behind = int((np.einsum("ni,ni->n", scene.cam_to_world[:, :3, 2], -scene.cam_to_world[:, :3, 3]) <= 0).sum())
    if behind:
        warnings.append(f"{behind} of {scene.n_images} cameras look away from the centre of the unit sphere")
    return warnings


def _cues(scene: Scene) -> str:
    found = [name for name, cue in (("depth", scene.depths), ("normal", scene.normals)) if cue is not None]
    return ", ".join(found) if found else "none"


def describe(scene: Scene, data_dir: Path) -> list[str]:
    """Lines for ``recon check``: format, views, resolution, masks, cues, the format's details, splits,
    normalisation, warnings."""
    norm = scene.normalization
    fx, fy = scene.intrinsics[0, 0, 0], scene.intrinsics[0, 1, 1]
    splits = ", ".join(f"{name} {len(views)}" for name, views in scene.splits.items()) or "none (all views train)"
    masks = "none" if scene.masks is None else f"yes ({100 * float(scene.masks.mean()):.1f}% foreground)"
    lines = [
        f"data:          {data_dir}",
        f"format:        {scene.format}",
        f"views:         {scene.n_images}",
        f"resolution:    {scene.width}x{scene.height} (WxH), focal {fx:.1f}/{fy:.1f} px (view 0)",
        f"masks:         {masks}",
        f"cues:          {_cues(scene)}",
        *(f"{name + ':':<15}{value}" for name, value in scene.details.items()),
        f"splits:        {splits}",
        f"normalisation: {norm.describe()}",
        f"pixels:        {scene.images.nbytes / 2**20:.1f} MiB (uint8, one copy)",
    ]
    warnings = scene_warnings(scene)
    lines += [f"warning:       {w}" for w in warnings] or ["warnings:      none"]
    return lines
