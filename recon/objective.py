"""The training objective: which loss terms (``recon.losses``) apply to which rays and points of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recon.config import TrainConfig
from recon.fields import NeuralSDF
from recon.losses import eikonal, mask_bce, normal_cue, normal_smoothness, psnr, rgb_l1, ssi_depth
from recon.rays import RayBatch
from recon.render.renderer import RenderOutput
from recon.render.samplers import ray_sphere_near_far

BEHIND_SAMPLES = 4
"""Eikonal points per opaque ray behind its surface, when the occupancy grid is on."""


@dataclass
class StepLosses:
    """The terms of one step's loss (the cue terms None when the batch has no valid cue)."""

    total: torch.Tensor
    rgb: torch.Tensor
    eikonal: torch.Tensor
    mask: torch.Tensor
    smooth: torch.Tensor
    psnr: torch.Tensor
    depth: torch.Tensor | None = None
    normal_l1: torch.Tensor | None = None
    normal_angular: torch.Tensor | None = None


class Objective:
    """MonoSDF's weighted loss of a rendered batch.

    Colour L1 (inside the masks when there are masks), mask BCE, the eikonal term on the rendered
    samples and on extra points (uniform in the scene box, on and near the surface, and, with the
    occupancy grid, behind it), normal smoothness on the surface points, and the depth and normal
    cue terms on the rays whose cues are valid.
    """

    def __init__(self, cfg: TrainConfig, scene_radius: float, cam_to_world: torch.Tensor,
                 points_behind_surface: bool) -> None:
        self.cfg, self.scene_radius = cfg, scene_radius
        self.rotations = cam_to_world[:, :3, :3]
        self.points_behind_surface = points_behind_surface

    def __call__(self, field: NeuralSDF, batch: RayBatch, out: RenderOutput, generator: torch.Generator) -> StepLosses:
        t = self.cfg
        use_mask = batch.mask is not None
        rgb = rgb_l1(out.rgb, batch.rgb, batch.mask if use_mask else None)
        mask = mask_bce(out.opacity, batch.mask) if use_mask else out.rgb.new_zeros(())
        eik, smooth = self._regularisers(field, batch, out, generator)
        total = rgb + t.eikonal_weight * eik + t.mask_weight * mask + t.smooth_weight * smooth
        depth, normal_l1, normal_angular = self._cue_losses(batch, out)
        if depth is not None:
            total = total + t.depth_weight * depth
        if normal_l1 is not None and normal_angular is not None:
            total = total + t.normal_l1_weight * normal_l1 + t.normal_angular_weight * normal_angular
        with torch.no_grad():
            scored = batch.mask if use_mask and bool(batch.mask.any()) else slice(None)
            quality = psnr(out.rgb[scored], batch.rgb[scored])
        return StepLosses(total, rgb, eik, mask, smooth, quality, depth, normal_l1, normal_angular)

    def _cue_losses(
        self, batch: RayBatch, out: RenderOutput
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """MonoSDF's depth and normal cue losses on the rays (inside the mask, when there is one) whose
        cues are valid; None for a term without cues or valid rays."""
        inside = out.hit if batch.mask is None else out.hit & batch.mask
        depth = None
        if batch.depth is not None and self.cfg.depth_weight > 0:
            z_depth = out.depth / out.opacity.clamp_min(1e-6) * batch.z_scale
            depth = ssi_depth(z_depth, batch.depth, inside & torch.isfinite(batch.depth) & (batch.depth > 0))
        if batch.normal is None or self.cfg.normal_l1_weight + self.cfg.normal_angular_weight == 0:
            return depth, None, None
        normal_cam = torch.einsum("rji,rj->ri", self.rotations[batch.image_index], out.normal)
        cue_ok = torch.isfinite(batch.normal).all(-1) & ((batch.normal.norm(dim=-1) - 1.0).abs() < 0.1)
        normal = normal_cue(normal_cam, batch.normal, inside & cue_ok)
        return (depth, None, None) if normal is None else (depth, *normal)

    def _regularisers(
        self, field: NeuralSDF, batch: RayBatch, out: RenderOutput, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eikonal on the ray samples, uniform box points, surface points and (with the occupancy grid)
        points behind the surface; smoothness on the surface points."""
        n = batch.origins.shape[0]
        device = batch.origins.device
        uniform = (torch.rand(n, 3, generator=generator).to(device) * 2.0 - 1.0) * self.scene_radius
        opaque = out.opacity.detach() > 0.5
        hit_distance = out.depth.detach()[opaque] / out.opacity.detach()[opaque]
        surface = batch.origins[opaque] + hit_distance[:, None] * batch.dirs[opaque]
        nearby = surface + (torch.rand(surface.shape, generator=generator).to(device) - 0.5) * 0.02
        behind = self.behind_surface(batch, opaque, hit_distance, generator)
        points = torch.cat([uniform, surface, nearby, behind])
        _, _, grad = field.sdf_feature_gradient(points, create_graph=True)
        gradients = torch.cat([out.sample_gradients, grad])
        m = surface.shape[0]
        if m == 0 or self.cfg.smooth_weight == 0:
            return eikonal(gradients), grad.new_zeros(())
        normals = torch.nn.functional.normalize(grad[n : n + 2 * m], dim=-1)
        return eikonal(gradients), normal_smoothness(normals[:m], normals[m:])

    def behind_surface(
        self, batch: RayBatch, opaque: torch.Tensor, hit_distance: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """With the occupancy grid, ``BEHIND_SAMPLES`` points per opaque ray, uniform between its surface
        and where it leaves the scene sphere: the grid keeps rendered samples out of a solid's inside,
        and without them the SDF there is free to grow closed bubbles the mesh would show."""
        if not self.points_behind_surface or hit_distance.shape[0] == 0:
            return batch.origins.new_zeros(0, 3)
        origins, dirs = batch.origins[opaque], batch.dirs[opaque]
        _, far, _ = ray_sphere_near_far(origins, dirs, self.scene_radius)
        u = torch.rand(origins.shape[0], BEHIND_SAMPLES, generator=generator).to(origins.device)
        t = hit_distance[:, None] + u * (far[:, None] - hit_distance[:, None]).clamp(min=0.0)
        return (origins[:, None, :] + t[..., None] * dirs[:, None, :]).reshape(-1, 3)
