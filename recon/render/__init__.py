"""Rendering: SDF -> density, samples along rays, compositing (pure functions).

The public API lives here; the submodules hold one job each:
``density`` (Laplace / NeuS), ``compositing`` (weights and accumulation),
``samplers`` (ray bounds, inverse CDF, the SDF samplers).
"""

from recon.render.compositing import (
    FAR_AWAY,
    alpha_from_density,
    centred_deltas_from_t,
    composite,
    composite_background,
    deltas_from_t,
    depth_from_weights,
    midpoints_from_t,
    opacity_from_weights,
    transmittance_from_alpha,
    weights_from_alpha,
    weights_from_density,
    z_depth_from_distance,
)
from recon.render.density import LearnableBeta, LearnableInvS, laplace_density, neus_alpha
from recon.render.samplers import (
    SdfFn,
    error_bounded_sample,
    interval_min_distance,
    opacity_error_bound,
    ray_sphere_near_far,
    sample_pdf,
    surface_guided_sample,
    uniform_t,
)

__all__ = [
    "FAR_AWAY",
    "LearnableBeta",
    "LearnableInvS",
    "SdfFn",
    "alpha_from_density",
    "centred_deltas_from_t",
    "composite",
    "composite_background",
    "deltas_from_t",
    "depth_from_weights",
    "error_bounded_sample",
    "interval_min_distance",
    "laplace_density",
    "midpoints_from_t",
    "neus_alpha",
    "opacity_error_bound",
    "opacity_from_weights",
    "ray_sphere_near_far",
    "sample_pdf",
    "surface_guided_sample",
    "transmittance_from_alpha",
    "uniform_t",
    "weights_from_alpha",
    "weights_from_density",
    "z_depth_from_distance",
]
