"""Which capture format a folder holds."""

from __future__ import annotations

import typing
from pathlib import Path

from recon.config import DataConfig
from recon.datasets import files
from recon.datasets.colmap import is_colmap
from recon.datasets.dtu import CAMERA_FILES, IMAGE_DIRS
from recon.datasets.monosdf import is_monosdf
from recon.datasets.nerf_synthetic import is_nerf_synthetic
from recon.datasets.ngp import is_ngp
from recon.errors import InputError

FORMATS: tuple[str, ...] = tuple(f for f in typing.get_args(typing.get_type_hints(DataConfig)["format"]) if f != "auto")
"""The formats recon reads (data.format, without auto)."""


def detect_format(root: Path) -> str:
    """The format of the capture in ``root`` (first match: monosdf, dtu, nerf-synthetic, ngp, colmap)."""
    files.check_data_dir(root)
    if is_monosdf(root):
        return "monosdf"
    if any((root / c).is_file() for c in CAMERA_FILES) and any((root / d).is_dir() for d in IMAGE_DIRS):
        return "dtu"
    if is_nerf_synthetic(root):
        return "nerf-synthetic"
    if is_ngp(root):
        return "ngp"
    if is_colmap(root):
        return "colmap"
    raise InputError(
        root,
        "unknown capture format: expected cameras_sphere.npz/cameras.npz + image/ (dtu), cameras.npz + *_rgb.png "
        "(monosdf), transforms_train.json (nerf-synthetic), transforms.json (ngp) or images/ + sparse/0/ (colmap)",
    )
