"""Volume rendering of a ``NeuralSDF`` along rays: samples -> density -> rgb, depth, normal, opacity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.config import RenderConfig
from recon.fields import NeuralSDF
from recon.render.background import Background
from recon.render.compositing import centred_deltas_from_t, composite, weights_from_alpha
from recon.render.density import Density
from recon.render.occupancy import OccupancyGrid
from recon.render.samplers import (
    RaySegments,
    compact_rows,
    error_bounded_sample,
    ray_sphere_near_far,
    surface_guided_sample,
)

SAMPLERS = {"error_bounded": error_bounded_sample, "surface_guided": surface_guided_sample}


@dataclass
class RenderOutput:
    """Per-ray results (R rays, S samples per ray).

    rgb (R, 3) composited over the background; depth (R,) sum of weight x distance along
    the unit ray direction (divide by opacity for the expected hit distance); normal (R, 3)
    world-space, weighted by the sample weights; opacity (R,); weights (R, S); hit (R,) the rays
    that were rendered: they meet the scene sphere (and, with an occupancy grid, an occupied cell);
    sample_gradients (H S, 3) the SDF's gradients at the samples of the H rendered rays only
    (differentiable when training, for the eikonal loss); without compaction H = R, and
    sample_mask (R S,) bool marks the samples of rendered rays (None: all are).
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    opacity: torch.Tensor
    weights: torch.Tensor
    hit: torch.Tensor
    sample_gradients: torch.Tensor
    sample_mask: torch.Tensor | None = None


def render_rays(
    field: NeuralSDF,
    density: Density,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    cfg: RenderConfig,
    background: Background,
    training: bool,
    image_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    occupancy: OccupancyGrid | None = None,
    compact: bool | None = None,
) -> RenderOutput:
    """Render rays (R, 3) origins and unit directions; ``background`` fills what is not opaque.

    ``training`` jitters the samples and keeps the SDF gradients differentiable (for the eikonal
    loss); ``image_index`` (R,) selects per-image appearance codes. With an ``occupancy`` grid,
    samples go only to occupied cells, and rays that cross none are not rendered (zero opacity).
    ``compact`` (default: ``compact_rows`` of the rays' device): render only the rays that meet
    the sphere (and an occupied cell), found by boolean indexing, a host sync; else render every
    ray at fixed shapes (a ray that meets nothing has zero-length intervals: zero opacity) and
    mark the rendered rays' samples in ``sample_mask``.
    """
    n_rays = origins.shape[0]
    compact = compact_rows(origins.device) if compact is None else compact
    near, far, hit = ray_sphere_near_far(origins, dirs, cfg.scene_radius)
    segments = occupancy.segments(origins, dirs, near, far, compact) if occupancy is not None else None
    rendered = hit if segments is None else hit & (segments.length > 0)
    if not compact:
        out = _render_hits(
            field, density, origins, dirs, near, far, cfg, training, image_index, generator, segments, compact
        )
        out = _keep_rendered(out, rendered)
    else:
        out = _empty_output(n_rays, origins, rendered)
    if compact and rendered.any():
        index = rendered.nonzero(as_tuple=True)[0]
        rays_index = image_index[index] if image_index is not None else None
        inner = _render_hits(
            field, density, origins[index], dirs[index], near[index], far[index], cfg, training, rays_index, generator,
            None if segments is None else segments.select(index), compact,
        )
        out = _scatter(out, inner, index)
    behind = background.render(origins, dirs, far, hit, training, generator)
    out.rgb = out.rgb + (1.0 - out.opacity[:, None]) * behind
    return out


def _render_hits(
    field: NeuralSDF,
    density: Density,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    cfg: RenderConfig,
    training: bool,
    image_index: torch.Tensor | None,
    generator: torch.Generator | None,
    segments: RaySegments | None,
    compact: bool,
) -> RenderOutput:
    with torch.no_grad():
        beta = density.current_beta().detach()
        sampler = SAMPLERS[cfg.sampler]
        t = sampler(
            field.sdf, origins, dirs, near, far, beta, cfg, perturb=training, generator=generator, segments=segments,
            compact=compact,
        )
    # quadrature cells on the occupied length: the empty space between segments holds no density
    tau, lo, hi = (t, near, far) if segments is None else (segments.to_tau(t), torch.zeros_like(near), segments.length)
    n_rays, n_samples = t.shape
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    sdf, feature, gradient = field.sdf_feature_gradient(points.reshape(-1, 3), create_graph=training)
    normals = F.normalize(gradient, dim=-1)
    view = dirs[:, None, :].expand(n_rays, n_samples, 3).reshape(-1, 3)
    sample_index = None if image_index is None else image_index[:, None].expand(n_rays, n_samples).reshape(-1)
    rgb = field.color_net(points.reshape(-1, 3), view, normals, feature, sample_index).view(n_rays, n_samples, 3)
    cos = (gradient * view).sum(-1).view(n_rays, n_samples)
    alpha = density.alpha(sdf.view(n_rays, n_samples), cos, centred_deltas_from_t(tau, lo, hi))
    weights = weights_from_alpha(alpha)
    return RenderOutput(
        rgb=composite(weights, rgb),
        depth=composite(weights, t[..., None])[:, 0],
        normal=composite(weights, normals.view(n_rays, n_samples, 3)),
        opacity=weights.sum(-1),
        weights=weights,
        hit=torch.ones(n_rays, dtype=torch.bool, device=origins.device),
        sample_gradients=gradient,
    )


def _keep_rendered(out: RenderOutput, rendered: torch.Tensor) -> RenderOutput:
    """Every ray's results, zero where the ray was not to be rendered (``rendered`` (R,) false)."""
    def keep(value: torch.Tensor) -> torch.Tensor:
        mask = rendered.view(-1, *([1] * (value.dim() - 1)))
        return torch.where(mask, value, torch.zeros((), dtype=value.dtype, device=value.device))

    n_samples = out.weights.shape[1]
    return RenderOutput(
        rgb=keep(out.rgb), depth=keep(out.depth), normal=keep(out.normal), opacity=keep(out.opacity),
        weights=keep(out.weights), hit=rendered, sample_gradients=out.sample_gradients,
        sample_mask=rendered[:, None].expand(-1, n_samples).reshape(-1),
    )


def _empty_output(n_rays: int, like: torch.Tensor, hit: torch.Tensor) -> RenderOutput:
    zeros = like.new_zeros
    return RenderOutput(
        rgb=zeros(n_rays, 3),
        depth=zeros(n_rays),
        normal=zeros(n_rays, 3),
        opacity=zeros(n_rays),
        weights=zeros(n_rays, 0),
        hit=hit,
        sample_gradients=zeros(0, 3),
    )


def _scatter(out: RenderOutput, inner: RenderOutput, index: torch.Tensor) -> RenderOutput:
    """Place the results of the rays that hit back among all rays."""
    n_rays = out.rgb.shape[0]
    weights = inner.weights.new_zeros(n_rays, inner.weights.shape[1]).index_copy(0, index, inner.weights)
    return RenderOutput(
        rgb=out.rgb.index_copy(0, index, inner.rgb),
        depth=out.depth.index_copy(0, index, inner.depth),
        normal=out.normal.index_copy(0, index, inner.normal),
        opacity=out.opacity.index_copy(0, index, inner.opacity),
        weights=weights,
        hit=out.hit,
        sample_gradients=inner.sample_gradients,
    )
