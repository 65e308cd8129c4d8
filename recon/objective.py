"""The training objective: which loss terms (``recon.losses``) apply to which rays and points of a batch.

With ``compact`` (see ``render.samplers.compact_rows``) the eikonal and smoothness points of the opaque
rays are selected by boolean indexing (a host sync, free on the CPU); without it every ray gets them
and a mask weights them out, at fixed shapes. The random draws are the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recon.config import TrainConfig
from recon.fields import NeuralSDF
from recon.losses import eikonal, mask_bce, normal_cue, normal_smoothness, psnr, rgb_l1, ssi_depth
from recon.rays import RayBatch
from recon.render.renderer import RenderOutput
from recon.render.samplers import compact_rows, ray_sphere_near_far

BEHIND_SAMPLES = 4
"""Eikonal points per opaque ray behind its surface, when the occupancy grid is on."""


@dataclass
class StepLosses:
    """The terms of one step's loss, 0-d tensors (the cue terms None when the scene has no such cue or
    their weights are 0; 0 when the batch has no valid cue)."""

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
                 points_behind_surface: bool, compact: bool | None = None) -> None:
        self.cfg, self.scene_radius = cfg, scene_radius
        self.rotations = cam_to_world[:, :3, :3]
        self.points_behind_surface = points_behind_surface
        self.compact = compact_rows(cam_to_world.device) if compact is None else compact

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
            quality = psnr(out.rgb, batch.rgb, batch.mask)
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
        return (depth, *normal_cue(normal_cam, batch.normal, inside & cue_ok))

    def _regularisers(
        self, field: NeuralSDF, batch: RayBatch, out: RenderOutput, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eikonal on the ray samples, uniform box points, surface points and (with the occupancy grid)
        points behind the surface; smoothness on the surface points. The surface, nearby and behind
        points belong to the opaque rays (opacity > 0.5)."""
        n = batch.origins.shape[0]
        device = batch.origins.device
        uniform = (torch.rand(n, 3, generator=generator, device=device) * 2.0 - 1.0) * self.scene_radius
        jitter = (torch.rand(n, 3, generator=generator, device=device) - 0.5) * 0.02
        n_behind = BEHIND_SAMPLES if self.points_behind_surface else 0
        behind_u = torch.rand(n, n_behind, generator=generator, device=device)
        opacity = out.opacity.detach()
        opaque = opacity > 0.5
        distance = out.depth.detach() / opacity.clamp_min(1e-6)
        rows = opaque.nonzero()[:, 0] if self.compact else slice(None)  # compact: a host sync
        weight = None if self.compact else opaque
        origins, dirs = batch.origins[rows], batch.dirs[rows]
        surface = origins + distance[rows, None] * dirs
        behind = behind_surface(origins, dirs, distance[rows], behind_u[rows], self.scene_radius)
        points = torch.cat([uniform, surface, surface + jitter[rows], behind])
        _, _, grad = field.sdf_feature_gradient(points, create_graph=True)
        m = surface.shape[0]
        weights = None
        if out.sample_mask is not None or weight is not None:
            per_ray = torch.ones(n, dtype=torch.bool, device=device) if weight is None else weight
            samples = torch.ones(out.sample_gradients.shape[0], dtype=torch.bool, device=device)
            own = [per_ray, per_ray, per_ray[:, None].expand(-1, behind_u.shape[1]).reshape(-1)]
            rendered = samples if out.sample_mask is None else out.sample_mask
            weights = torch.cat([rendered, torch.ones_like(opaque), *own])
        eik = eikonal(torch.cat([out.sample_gradients, grad]), weights)
        if self.cfg.smooth_weight == 0:
            return eik, grad.new_zeros(())
        normals = torch.nn.functional.normalize(grad[n : n + 2 * m], dim=-1)
        return eik, normal_smoothness(normals[:m], normals[m:], weight)


def behind_surface(
    origins: torch.Tensor, dirs: torch.Tensor, hit_distance: torch.Tensor, u: torch.Tensor, scene_radius: float
) -> torch.Tensor:
    """Eikonal points behind the surface: for rays (M, 3) that become opaque at ``hit_distance`` (M,), the
    points at fractions ``u`` (M, B) of the way from there to where the ray leaves the scene sphere ->
    (M B, 3). With the occupancy grid the objective adds ``BEHIND_SAMPLES`` per opaque ray: the grid
    keeps rendered samples out of a solid's inside, and without them the SDF there is free to grow
    closed bubbles the mesh would show."""
    _, far, _ = ray_sphere_near_far(origins, dirs, scene_radius)
    t = hit_distance[:, None] + u * (far[:, None] - hit_distance[:, None]).clamp(min=0.0)
    return (origins[:, None, :] + t[..., None] * dirs[:, None, :]).reshape(-1, 3)
