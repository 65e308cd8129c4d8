"""Rays from posed images, made per batch so no image's rays are ever all materialised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon.datasets.scene import Scene
from recon.errors import InputError

DEFAULT_MAX_RAYS = 1 << 20
"""Default of data.max_rays: about 60 MB of rays and targets at once."""


def pixel_rays_unit_length(
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
        """Rays through ``n_rays`` uniformly random pixels of random images (``generator`` on this device)."""
        index = torch.randint(0, self.n_images, (n_rays,), generator=generator, device=self.device)
        u = torch.randint(0, self.width, (n_rays,), generator=generator, device=self.device)
        v = torch.randint(0, self.height, (n_rays,), generator=generator, device=self.device)
        return self.batch(index, u, v)

    def batch(self, image_index: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> RayBatch:
        """Rays and targets for the given (R,) image indices and pixel coordinates (R <= max_rays)."""
        self._check_budget(image_index.shape[0])
        origins, dirs, z_scale = pixel_rays_unit_length(
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

    def image_batch(
        self, image_index: int, downscale: int, background: torch.Tensor | None = None,
        at: tuple[float, float] = (0.5, 0.5),
    ) -> tuple[RayBatch, int, int]:
        """One image at 1/``downscale`` as it would be photographed at that resolution: a ray through
        each ``downscale`` x ``downscale`` block of pixels, whose target is the block's mean colour
        (mask: more than half the block is foreground); and the size H', W'. The ray goes through the
        point ``at`` (column, row fractions of the block; the centre by default). With masks and a
        constant ``background`` (3,), the pixels outside the mask are that colour before the blocks
        are averaged, so a block on the silhouette mixes the object with what a render shows behind
        it, not with the photographed backdrop."""
        h, w = -(-self.height // downscale), -(-self.width // downscale)
        self._check_budget(h * w)
        rows = _block_points(self.height, downscale, at[1])
        cols = _block_points(self.width, downscale, at[0])
        v, u = (c.reshape(-1) for c in torch.meshgrid(rows, cols, indexing="ij"))
        index = torch.full((h * w,), image_index, dtype=torch.long, device=self.device)
        origins, dirs, z_scale = pixel_rays_unit_length(
            self.intrinsics_inv[index], self.cam_to_world[index], u.to(self.device), v.to(self.device)
        )
        pixels = self.images[image_index].float() / 255.0
        mask = None
        if self.masks is not None:
            foreground = self.masks[image_index, :, :, None]
            if background is not None:
                pixels = torch.where(foreground, pixels, background.to(pixels))
            mask = _block_mean(foreground.float(), downscale).reshape(-1) > 0.5
        rgb = _block_mean(pixels, downscale).reshape(-1, 3)
        return RayBatch(origins, dirs, rgb, mask, index, z_scale), h, w

    def _check_budget(self, n_rays: int) -> None:
        if n_rays > self.max_rays:
            raise InputError(
                "data.max_rays", f"{n_rays} rays requested at once, more than the budget of {self.max_rays}; "
                "raise data.max_rays, or lower train.batch_rays (training) or train.val_max_side (renders)"
            )


def _block_points(size: int, block: int, fraction: float) -> torch.Tensor:
    """The point ``fraction`` of the way across each block of ``block`` pixels that tile ``size``
    pixels (pixel units, pixel centres at integers; 0.5: the block's centre); the last block may be
    shorter."""
    starts = torch.arange(0, size, block, dtype=torch.float32)
    ends = torch.clamp(starts + block, max=size)
    return starts + fraction * (ends - starts) - 0.5


def _block_mean(image: torch.Tensor, block: int) -> torch.Tensor:
    """(H, W, C) -> (ceil(H / block), ceil(W / block), C): the mean of each block (short blocks at the
    far edges averaged over the pixels they hold)."""
    pooled = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], block, ceil_mode=True)
    return pooled[0].permute(1, 2, 0)
