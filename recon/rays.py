"""Rays from posed images, made per batch so no image's rays are ever all materialised."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from recon.datasets.scene import Scene
from recon.errors import InputError

DEFAULT_MAX_RAYS = 1 << 20
"""Default of data.max_rays: about 60 MB of rays and targets at once."""


def pixel_rays(
    intrinsics_inv: torch.Tensor, cam_to_world: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through pixel centres (integer u, v; OpenCV convention).

    Args:
        intrinsics_inv: (R, 3, 3) inverse intrinsics per ray.
        cam_to_world: (R, 4, 4) camera-to-world per ray.
        u, v: (R,) pixel column and row.

    Returns:
        origins (R, 3) and unit directions (R, 3) in world (normalised) coordinates, and
        z_scale (R,): the camera-space z of the unit direction (distance x z_scale = z-depth).
    """
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).to(intrinsics_inv.dtype)
    cam_dirs = torch.einsum("rij,rj->ri", intrinsics_inv, pixels)
    cam_dirs = cam_dirs / cam_dirs.norm(dim=-1, keepdim=True)
    dirs = torch.einsum("rij,rj->ri", cam_to_world[:, :3, :3], cam_dirs)
    return cam_to_world[:, :3, 3].expand_as(dirs).contiguous(), dirs, cam_dirs[:, 2]


@dataclass
class RayBatch:
    """A batch of rays with their targets: origins, dirs (R, 3); rgb (R, 3) in [0, 1];
    mask (R,) bool or None; image_index (R,) long; z_scale (R,) the z-component of
    the camera-space unit direction (depth along the ray times z_scale is z-depth);
    depth (R,) the z-depth cue and normal (R, 3) the normal cue in camera space, or None
    when the scene has no such cues (invalid cue pixels: depth <= 0, normal not unit)."""

    origins: torch.Tensor
    dirs: torch.Tensor
    rgb: torch.Tensor
    mask: torch.Tensor | None
    image_index: torch.Tensor
    z_scale: torch.Tensor
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None


class RaySource:
    """Holds a scene's pixels and cameras on a device; makes ray batches.

    On the CPU the pixels are the Scene's own uint8 array (``torch.from_numpy`` shares it);
    rays exist only per batch, and never more than ``max_rays`` at once: every ray of every
    image (49 DTU views at 1600x1200 are 94 M rays, 2.1 GiB as float32 origins + directions)
    is never built.
    """

    def __init__(self, scene: Scene, device: torch.device, max_rays: int = DEFAULT_MAX_RAYS) -> None:
        if max_rays < 1:
            raise InputError("data.max_rays", f"must be positive, got {max_rays}")
        self.device, self.max_rays = device, max_rays
        self.images = torch.from_numpy(scene.images).to(device)
        self.masks = torch.from_numpy(scene.masks).to(device) if scene.masks is not None else None
        self.depths = torch.from_numpy(scene.depths).to(device) if scene.depths is not None else None
        self.normals = torch.from_numpy(scene.normals).to(device) if scene.normals is not None else None
        self.intrinsics_inv = torch.from_numpy(np.linalg.inv(scene.intrinsics)).float().to(device)
        self.cam_to_world = torch.from_numpy(scene.cam_to_world).float().to(device)
        self.n_images, self.height, self.width = scene.n_images, scene.height, scene.width

    def random_batch(self, n_rays: int, generator: torch.Generator) -> RayBatch:
        """Rays through ``n_rays`` uniformly random pixels of random images."""
        index = torch.randint(0, self.n_images, (n_rays,), generator=generator).to(self.device)
        u = torch.randint(0, self.width, (n_rays,), generator=generator).to(self.device)
        v = torch.randint(0, self.height, (n_rays,), generator=generator).to(self.device)
        return self.batch(index, u, v)

    def batch(self, image_index: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> RayBatch:
        """Rays and targets for the given (R,) image indices and pixel coordinates (R <= max_rays)."""
        self._check_budget(image_index.shape[0])
        origins, dirs, z_scale = pixel_rays(
            self.intrinsics_inv[image_index], self.cam_to_world[image_index], u.float(), v.float()
        )
        rgb = self.images[image_index, v, u].float() / 255.0
        mask = self.masks[image_index, v, u] if self.masks is not None else None
        depth = self.depths[image_index, v, u].float() if self.depths is not None else None
        normal = None
        if self.normals is not None:  # world -> camera: R^T n
            rotation = self.cam_to_world[image_index, :3, :3]
            normal = torch.einsum("rji,rj->ri", rotation, self.normals[image_index, v, u].float())
        return RayBatch(origins, dirs, rgb, mask, image_index, z_scale, depth, normal)

    def image_pixels(self, image_index: int, downscale: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Pixel coordinates (u, v), each (H' W',), of one image at 1/downscale; and H', W'.
        An image with more than ``max_rays`` such pixels must go through ``image_chunks``."""
        h, w = self.subsampled_size(downscale)
        self._check_budget(h * w)
        (u, v), = self.image_chunks(image_index, downscale, h * w)
        return u, v, h, w

    def subsampled_size(self, downscale: int) -> tuple[int, int]:
        """(H', W') of every ``downscale``-th pixel along both axes."""
        return -(-self.height // downscale), -(-self.width // downscale)

    def image_chunks(
        self, image_index: int, downscale: int, chunk: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(u, v) of every ``downscale``-th pixel of one image in row-major order, in chunks of at
        most ``chunk`` (default and cap: ``max_rays``) pixels; the full grid is never built."""
        chunk = min(chunk or self.max_rays, self.max_rays)
        h, w = self.subsampled_size(downscale)
        for start in range(0, h * w, chunk):
            flat = torch.arange(start, min(start + chunk, h * w), device=self.device)
            yield (flat % w) * downscale, torch.div(flat, w, rounding_mode="floor") * downscale

    def _check_budget(self, n_rays: int) -> None:
        if n_rays > self.max_rays:
            raise InputError(
                "data.max_rays", f"{n_rays} rays requested at once, more than the budget of {self.max_rays}; "
                "raise data.max_rays or use smaller batches / image chunks"
            )
