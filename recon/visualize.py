"""Pictures of renders: validation strips of rgb, normals and depth."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from recon.io import atomic_path
from recon.render.image import RenderedImage


def normals_to_rgb(normals: np.ndarray) -> np.ndarray:
    """Camera-space normals (H, W, 3) -> uint8 colours, the usual ``(n * [1, -1, -1] + 1) / 2`` mapping."""
    flipped = normals * np.array([1.0, -1.0, -1.0])
    return (np.clip((flipped + 1.0) * 0.5, 0.0, 1.0) * 255).astype(np.uint8)


def depth_to_rgb(depth: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """Depth (H, W) -> uint8 colours (near bright, far dark), background black where opacity < 0.5."""
    fg = opacity > 0.5
    out = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if fg.any():
        lo, hi = np.percentile(depth[fg], [1, 99])
        scaled = 1.0 - np.clip((depth - lo) / max(hi - lo, 1e-8), 0.0, 1.0)
        gray = (0.15 + 0.85 * scaled) * 255
        out[fg] = gray[fg, None].astype(np.uint8)
    return out


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Colours in [0, 1] -> uint8."""
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def save_validation_image(path: Path, rendered: RenderedImage) -> np.ndarray:
    """Write ``target | rgb | normal | depth`` side by side as one PNG, atomically; return the strip
    (H, 4 W, 3) uint8."""
    strip = np.concatenate(
        [
            to_uint8(rendered.target),
            to_uint8(rendered.rgb),
            normals_to_rgb(rendered.normal),
            depth_to_rgb(rendered.depth, rendered.opacity),
        ],
        axis=1,
    )
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, strip)
    return strip
