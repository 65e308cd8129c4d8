"""Datasets: every loader returns a :class:`Scene` normalised to the unit sphere."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recon.datasets.colmap import load_colmap
from recon.datasets.detect import FORMATS, detect_format
from recon.datasets.files import image_shape
from recon.datasets.dtu import load_dtu
from recon.datasets.monosdf import load_monosdf
from recon.datasets.nerf_synthetic import load_nerf_synthetic
from recon.datasets.ngp import load_ngp
from recon.datasets.resample import crop_warning
from recon.datasets.scene import Scene
from recon.datasets.synthetic import SynthReport, synthesize
from recon.errors import InputError

if TYPE_CHECKING:
    from recon.config import DataConfig

__all__ = ["FORMATS", "Scene", "SynthReport", "detect_format", "load_colmap", "load_data", "load_dtu", "load_scene", "synthesize"]

log = logging.getLogger(__name__)


def load_data(data_dir: str | Path, data: DataConfig) -> Scene:
    """``load_scene`` with a config's ``data`` section."""
    return load_scene(data_dir, data.format, data.downscale, data.rgba_background, data.colmap_sphere,
                      data.colmap_sphere_rule)


def load_scene(
    data_dir: str | Path, fmt: str = "auto", downscale: int = 1, rgba_background: str = "white",
    colmap_sphere: Sequence[float] = (), colmap_sphere_rule: str = "points",
) -> Scene:
    """Load the capture at ``data_dir`` normalised to the unit sphere.

    Args:
        fmt: auto (detected), dtu, monosdf, nerf-synthetic, ngp or colmap.
        downscale: integer factor; images, masks and cues are area-averaged, intrinsics follow.
        rgba_background: white or black, what RGBA images are composited on.
        colmap_sphere, colmap_sphere_rule: a COLMAP capture's scene sphere, [cx, cy, cz, r] in
            world units, else by the rule (points or cameras; ``recon.datasets.colmap``).
    """
    root = Path(data_dir)
    if fmt not in ("auto", *FORMATS):
        raise InputError(f"--format {fmt}", f"unknown format (choose auto, {', '.join(FORMATS)})")
    if not isinstance(downscale, int) or downscale < 1:
        raise InputError("data.downscale (--downscale)", f"must be a positive integer, got {downscale!r}")
    if rgba_background not in ("white", "black"):
        raise InputError(f"data.rgba_background={rgba_background}", "must be white or black")
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "dtu":
        scene = load_dtu(root, downscale)
    elif fmt == "monosdf":
        scene = load_monosdf(root, downscale)
    elif fmt == "nerf-synthetic":
        scene = load_nerf_synthetic(root, downscale, rgba_background)
    elif fmt == "ngp":
        scene = load_ngp(root, downscale, rgba_background)
    else:
        scene = load_colmap(root, downscale, colmap_sphere, colmap_sphere_rule)
    scene = _with_crop_warning(scene, downscale)
    log.info("%s: %s scene, %d views of %dx%d; unit sphere: %s", root, scene.format, scene.n_images,
             scene.width, scene.height, scene.normalization.describe())
    for warning in scene.warnings:  # once each, however many frames they count
        log.warning("%s: %s", root, warning)
    return scene


def _with_crop_warning(scene: Scene, downscale: int) -> Scene:
    """The scene, with a warning when ``downscale`` cropped its images (read from the first file's header)."""
    if downscale == 1 or not scene.image_paths:
        return scene
    height, width = image_shape(scene.image_paths[0])[:2]
    warning = crop_warning(height, width, downscale)
    return dataclasses.replace(scene, warnings=(*scene.warnings, warning)) if warning else scene
