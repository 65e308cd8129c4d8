"""Rays from posed images, made per batch so no image's rays are ever all materialised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon.datasets.scene import Scene


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
    the camera-space unit direction (depth along the ray times z_scale is z-depth)."""

    origins: torch.Tensor
    dirs: torch.Tensor
    rgb: torch.Tensor
    mask: torch.Tensor | None
    image_index: torch.Tensor
    z_scale: torch.Tensor


class RaySource:
    """Holds a scene's pixels (one uint8 copy) and cameras on a device; makes ray batches."""

    def __init__(self, scene: Scene, device: torch.device) -> None:
        self.device = device
        self.images = torch.from_numpy(scene.images).to(device)
        self.masks = torch.from_numpy(scene.masks).to(device) if scene.masks is not None else None
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
        """Rays and targets for the given (R,) image indices and pixel coordinates."""
        origins, dirs, z_scale = pixel_rays(
            self.intrinsics_inv[image_index], self.cam_to_world[image_index], u.float(), v.float()
        )
        rgb = self.images[image_index, v, u].float() / 255.0
        mask = self.masks[image_index, v, u] if self.masks is not None else None
        return RayBatch(origins, dirs, rgb, mask, image_index, z_scale)

    def image_pixels(self, image_index: int, downscale: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Pixel coordinates (u, v), each (H' W',), of one image at 1/downscale; and H', W'."""
        vs = torch.arange(0, self.height, downscale, device=self.device)
        us = torch.arange(0, self.width, downscale, device=self.device)
        grid_v, grid_u = torch.meshgrid(vs, us, indexing="ij")
        return grid_u.reshape(-1), grid_v.reshape(-1), len(vs), len(us)
