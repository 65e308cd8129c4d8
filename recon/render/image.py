"""Whole views at 1/k resolution beside their photographs: volume rendered (``render_image``), or made by
any per-ray renderer (``render_view``; the coloured mesh's ray caster, ``recon.mesh_views``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from recon.config import RenderConfig
from recon.fields import NeuralSDF
from recon.losses import psnr
from recon.rays import RayBatch, RaySource
from recon.render.background import Background
from recon.render.density import Density
from recon.render.occupancy import OccupancyGrid
from recon.render.renderer import render_rays

SCORING_CHUNK = 4096
"""Rays per ``render_rays`` call when rendering whole views (benchmarks/bench_scoring.py)."""


@dataclass
class RenderedImage:
    """A rendered view and its photograph, at the same (H, W).

    rgb, target (H, W, 3) in [0, 1]; normal (H, W, 3) in camera space; depth (H, W) z-depth;
    opacity (H, W); mask (H, W) 1.0 on the foreground, or None when the views have no masks;
    psnr of rgb against target over the whole image.
    """

    rgb: np.ndarray
    target: np.ndarray
    normal: np.ndarray
    depth: np.ndarray
    opacity: np.ndarray
    mask: np.ndarray | None
    psnr: float


def render_downscale(height: int, width: int, max_side: int) -> int:
    """The smallest integer k that brings the long side of an image to at most ``max_side``."""
    return max(1, math.ceil(max(height, width) / max_side))


BatchRenderer = Callable[[RayBatch, torch.Tensor], dict[str, torch.Tensor]]
"""(an image's rays, its world-to-camera rotation (3, 3)) -> per ray ``rgb`` (R, 3), ``normal`` (R, 3) in camera
space, ``opacity`` (R,) and ``weighted_depth`` (R,) (z-depth x opacity)."""


@torch.no_grad()
def render_image(
    field: NeuralSDF, density: Density, background: Background, rays: RaySource, index: int,
    cfg: RenderConfig, max_side: int, *, chunk: int = SCORING_CHUNK, appearance: bool = True, supersample: int = 1,
    occupancy: OccupancyGrid | None = None,
) -> RenderedImage:
    """Volume-render image ``index`` of ``rays`` as ``render_view`` lays it out (1/k resolution, long
    side <= ``max_side``, ``supersample``^2 rays per pixel). ``appearance=False`` renders without the
    view's appearance code (a view not trained on). With an ``occupancy`` grid the samples go only to
    its occupied cells, and rays that cross none show the background without evaluating the field."""

    def render_batch(image: RayBatch, world_to_cam: torch.Tensor) -> dict[str, torch.Tensor]:
        return _render_batch(field, density, background, image, world_to_cam, cfg, chunk, appearance, occupancy)

    return render_view(render_batch, rays, index, max_side, background.matte(), supersample)


def render_view(
    render_batch: BatchRenderer, rays: RaySource, index: int, max_side: int, matte: torch.Tensor | None,
    supersample: int = 1,
) -> RenderedImage:
    """Image ``index`` of ``rays`` at 1/k resolution (long side <= ``max_side``), each pixel against its
    k x k block's mean colour (outside the mask: ``matte``, the colour a render shows behind the scene).

    Each pixel is the mean of ``supersample`` x ``supersample`` rays spread evenly over its block (1:
    one ray through the centre), so a pixel integrates its footprint as the block mean does."""
    step = render_downscale(rays.height, rays.width, max_side)
    world_to_cam = rays.cam_to_world[index, :3, :3].T
    fractions = [(i + 0.5) / supersample for i in range(supersample)]
    sums: dict[str, torch.Tensor] = {}
    for at in ((col, row) for row in fractions for col in fractions):
        image, h, w = rays.image_batch(index, step, matte, at)
        rendered = render_batch(image, world_to_cam)
        for key, value in rendered.items():
            sums[key] = sums[key] + value if key in sums else value
    mean = {key: value / supersample**2 for key, value in sums.items()}
    depth = mean.pop("weighted_depth") / mean["opacity"].clamp_min(1e-6)

    def as_image(value: torch.Tensor) -> np.ndarray:
        return value.reshape(h, w, -1).squeeze(-1).cpu().numpy()

    rgb, target = as_image(mean["rgb"]), as_image(image.rgb)
    return RenderedImage(
        rgb=rgb, target=target, normal=as_image(mean["normal"]), depth=as_image(depth),
        opacity=as_image(mean["opacity"]), mask=None if image.mask is None else as_image(image.mask.float()),
        psnr=float(psnr(torch.from_numpy(rgb), torch.from_numpy(target))),
    )


def _render_batch(
    field: NeuralSDF, density: Density, background: Background, image: RayBatch, world_to_cam: torch.Tensor,
    cfg: RenderConfig, chunk: int, appearance: bool, occupancy: OccupancyGrid | None,
) -> dict[str, torch.Tensor]:
    """Render one image's rays in chunks: rgb, normal (camera space), opacity, and z-depth x opacity."""
    parts: dict[str, list[torch.Tensor]] = {"rgb": [], "normal": [], "weighted_depth": [], "opacity": []}
    for start in range(0, image.origins.shape[0], chunk):
        sl = slice(start, start + chunk)
        out = render_rays(
            field, density, image.origins[sl], image.dirs[sl], cfg, background, False,
            image.image_index[sl] if appearance else None, occupancy=occupancy,
        )
        parts["rgb"].append(out.rgb)
        parts["normal"].append(out.normal @ world_to_cam.T)
        parts["weighted_depth"].append(out.depth * image.z_scale[sl])
        parts["opacity"].append(out.opacity)
    return {key: torch.cat(values) for key, values in parts.items()}
