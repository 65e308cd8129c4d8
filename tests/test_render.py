"""Rendering maths: density, compositing, ray bounds, inverse CDF and the SDF samplers."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import sphere_rays
from recon.config import RenderConfig
from recon.render import (
    LearnableBeta,
    LearnableInvS,
    alpha_from_density,
    centred_deltas_from_t,
    composite,
    composite_background,
    deltas_from_t,
    depth_from_weights,
    error_bounded_sample,
    interval_min_distance,
    laplace_density,
    midpoints_from_t,
    neus_alpha,
    opacity_error_bound,
    opacity_from_weights,
    ray_sphere_near_far,
    sample_pdf,
    surface_guided_sample,
    transmittance_from_alpha,
    uniform_t,
    weights_from_alpha,
    weights_from_density,
    z_depth_from_distance,
)

SAMPLERS = [error_bounded_sample, surface_guided_sample]


# ----------------------------------------------------------------------------- compositing


def test_compositing_hand_values() -> None:
    alpha = torch.tensor([[0.0, 0.3, 0.8, 0.5, 1.0]])
    # transmittance: [1, 1, 1 * 0.7, 0.7 * 0.2, 0.14 * 0.5]
    torch.testing.assert_close(transmittance_from_alpha(alpha), torch.tensor([[1.0, 1.0, 0.7, 0.14, 0.07]]))
    # weights = alpha * T: [0, 0.3, 0.56, 0.07, 0.07]
    weights = weights_from_alpha(alpha)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 0.3, 0.56, 0.07, 0.07]]))
    torch.testing.assert_close(opacity_from_weights(weights), torch.tensor([1.0]))
    values = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [4.0, 1.0], [5.0, 0.0]]])
    # 0.3 * 2 + 0.56 * 3 + 0.07 * 4 + 0.07 * 5 = 2.91; 0.3 + 0.07 = 0.37
    torch.testing.assert_close(composite(weights, values), torch.tensor([[2.91, 0.37]]))
    t_mid = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    torch.testing.assert_close(depth_from_weights(weights, t_mid), torch.tensor([2.91]))


def test_deltas_and_alpha_hand_values() -> None:
    t = torch.tensor([[1.0, 1.5, 2.5, 4.0]])
    torch.testing.assert_close(deltas_from_t(t, torch.tensor([5.0])), torch.tensor([[0.5, 1.0, 1.5, 1.0]]))
    torch.testing.assert_close(deltas_from_t(t, 4.0), torch.tensor([[0.5, 1.0, 1.5, 0.0]]))
    assert deltas_from_t(t)[0, -1] == 1e10
    # centred cells: edges [0.5, 1.25, 2.0, 3.25, 5.0]
    centred = centred_deltas_from_t(t, torch.tensor([0.5]), torch.tensor([5.0]))
    torch.testing.assert_close(centred, torch.tensor([[0.75, 0.75, 1.25, 1.75]]))
    torch.testing.assert_close(midpoints_from_t(t, deltas_from_t(t, 5.0)), torch.tensor([[1.25, 2.0, 3.25, 4.5]]))
    # 1 - exp(-ln 2 * 1) = 0.5; 1 - exp(-ln 2 * 2) = 0.75; no density, no opacity
    sigma = torch.tensor([[math.log(2.0), math.log(2.0), 0.0]])
    alpha = alpha_from_density(sigma, torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(alpha, torch.tensor([[0.5, 0.75, 0.0]]))


def test_background_and_z_depth() -> None:
    rgb = torch.tensor([[0.2, 0.4, 0.0], [0.0, 0.0, 0.0]])
    opacity = torch.tensor([0.75, 0.0])
    out = composite_background(rgb, opacity, 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.45, 0.65, 0.25], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(composite_background(rgb, opacity[:, None], torch.zeros(3)), rgb)
    # a unit ray 60 degrees off the optical axis: z = dist * cos(60) = dist / 2
    torch.testing.assert_close(z_depth_from_distance(torch.tensor([2.0]), torch.tensor([0.5])), torch.tensor([1.0]))


def test_compositing_chain_gradcheck() -> None:
    torch.manual_seed(0)
    t = torch.sort(torch.rand(2, 6, dtype=torch.float64) * 3.0, dim=-1).values.requires_grad_()
    sigma = (torch.rand(2, 6, dtype=torch.float64) * 2.0).requires_grad_()
    values = torch.rand(2, 6, 3, dtype=torch.float64, requires_grad=True)
    far = torch.full((2,), 3.5, dtype=torch.float64)

    def chain(t: torch.Tensor, sigma: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        deltas = deltas_from_t(t, far)
        w = weights_from_density(sigma, deltas)
        rgb = composite_background(composite(w, values), opacity_from_weights(w), 1.0)
        cells = centred_deltas_from_t(t, 0.0, far)
        w_c = weights_from_alpha(alpha_from_density(sigma, cells))
        return rgb, depth_from_weights(w, midpoints_from_t(t, deltas)), depth_from_weights(w_c, t)

    assert torch.autograd.gradcheck(chain, (t, sigma, values))


# ----------------------------------------------------------------------------- density


def test_laplace_density_limits_and_symmetry() -> None:
    beta = 0.05
    assert laplace_density(torch.tensor(0.0), beta).item() == pytest.approx(0.5 / beta)
    assert laplace_density(torch.tensor(10.0), beta).item() == pytest.approx(0.0, abs=1e-20)
    assert laplace_density(torch.tensor(-10.0), beta).item() == pytest.approx(1.0 / beta)
    s = torch.linspace(-0.5, 0.5, 101, dtype=torch.float64)
    # Psi(-s) + Psi(s) = 1
    torch.testing.assert_close(laplace_density(s, beta) + laplace_density(-s, beta), torch.full_like(s, 1.0 / beta))
    # the sign / expm1 form of the formula
    expected = (0.5 + 0.5 * torch.sign(s) * torch.expm1(-s.abs() / beta)) / beta
    torch.testing.assert_close(laplace_density(s, beta), expected)
    # non-increasing in s
    assert (laplace_density(s, beta).diff() <= 0).all()


def test_laplace_density_gradients() -> None:
    sdf = torch.tensor([-0.3, -0.01, 0.0, 0.02, 0.4], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(laplace_density, (sdf, beta))
    # d sigma / d s at 0 is -(1 / beta) * Laplace pdf(0) = -1 / (2 beta^2), not 0
    s0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    laplace_density(s0, 0.1).backward()
    assert s0.grad.item() == pytest.approx(-1.0 / (2 * 0.1**2))


def test_learnable_beta_and_inv_s() -> None:
    beta = LearnableBeta(beta_init=0.1, beta_min=1e-4)
    assert beta().item() == pytest.approx(0.1)
    beta().backward()
    assert beta.param.grad is not None
    with torch.no_grad():
        beta.param.fill_(-0.5)
    assert beta().item() == pytest.approx(0.5 + 1e-4)
    with pytest.raises(ValueError):
        LearnableBeta(beta_init=1e-5, beta_min=1e-4)
    inv_s = LearnableInvS(beta_init=0.1)
    assert inv_s().item() == pytest.approx(10.0, rel=1e-5)
    inv_s().backward()
    assert inv_s.variance.grad is not None
    capped = LearnableInvS(beta_init=0.1, beta_min=0.005)
    with torch.no_grad():
        capped.variance.fill_(10.0)
    assert capped().item() == pytest.approx(200.0)  # at most 1 / beta_min


def test_neus_alpha_hand_values() -> None:
    sigmoid = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    sdf, deltas, inv_s = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.1, 0.1, 0.1]]), 10.0
    cos = torch.tensor([[-1.0, 0.0, 1.0]])
    # head-on: ends at +-0.05 -> (Phi(0.5) - Phi(-0.5)) / Phi(0.5); grazing or leaving: 0
    head_on = (sigmoid(0.5) - sigmoid(-0.5)) / sigmoid(0.5)
    torch.testing.assert_close(neus_alpha(sdf, cos, deltas, inv_s), torch.tensor([[head_on, 0.0, 0.0]]))
    # fully relaxed (anneal ratio 0): cos' = -(0.5 - 0.5 cos): -1 -> -1, 0 -> -0.5, 1 -> 0
    half = (sigmoid(0.25) - sigmoid(-0.25)) / sigmoid(0.25)
    relaxed = neus_alpha(sdf, cos, deltas, inv_s, cos_anneal_ratio=0.0)
    torch.testing.assert_close(relaxed, torch.tensor([[head_on, half, 0.0]]))
    s64 = torch.rand(2, 4, dtype=torch.float64, requires_grad=True)
    c64 = -torch.rand(2, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: neus_alpha(s, c64, torch.full_like(s, 0.1), 5.0), (s64,))


# ----------------------------------------------------------------------------- ray bounds, inverse CDF


def test_ray_sphere_near_far_hand_values() -> None:
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.0], [0.0, 2.0, -3.0], [0.0, 0.0, 3.0], [0.0, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])
    near, far, hit = ray_sphere_near_far(origins, dirs, radius=1.0, min_near=1e-3)
    # through the centre; from the centre (near clamped); missing at distance 2 (closest
    # point at t = 3); sphere behind the camera; non-unit direction (t in units of |d|)
    torch.testing.assert_close(near, torch.tensor([2.0, 1e-3, 3.0, 1e-3, 1.0]))
    torch.testing.assert_close(far, torch.tensor([4.0, 1.0, 3.0, 1e-3, 2.0]))
    assert hit.tolist() == [True, True, False, False, True]


def test_uniform_t() -> None:
    near, far = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 4.0])
    torch.testing.assert_close(uniform_t(near, far, 5, perturb=False)[1], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    g = torch.Generator().manual_seed(0)
    t = uniform_t(near, far, 5, perturb=True, generator=g)
    assert (t.diff(dim=-1) >= 0).all() and (t >= near[:, None]).all() and (t <= far[:, None]).all()
    # each sample stays in its stratum: within half a spacing of its even position
    assert ((t[1] - torch.arange(5.0)).abs() <= 0.5).all()


def test_sample_pdf_places_samples_where_weights_are() -> None:
    bins = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    t = sample_pdf(bins, torch.tensor([[0.0, 0.0, 5.0, 0.0]]), 64, det=True)
    assert t.shape == (1, 64) and (t >= 2.0).all() and (t <= 3.0).all() and (t.diff() >= 0).all()
    # uniform weights, deterministic quantiles (k + 0.5) / n spread over [0, 4]
    t = sample_pdf(bins, torch.ones(1, 4), 8, det=True, uniform_mix=0.0)
    torch.testing.assert_close(t[0], (torch.arange(8.0) + 0.5) / 2.0)
    # random draws follow the weights (1:3 between the two halves)
    g = torch.Generator().manual_seed(0)
    t = sample_pdf(bins, torch.tensor([[1.0, 0.0, 0.0, 3.0]]), 20000, det=False, generator=g)
    assert (t < 1.0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    assert ((t > 1.0) & (t < 3.0)).float().mean().item() < 0.01
    # all-zero weights: uniform
    t = sample_pdf(bins, torch.zeros(1, 4), 4, det=True)
    torch.testing.assert_close(t[0], torch.tensor([0.5, 1.5, 2.5, 3.5]))


# ----------------------------------------------------------------------------- error bound


def test_interval_min_distance_hand_values() -> None:
    a = torch.tensor([1.0, 3.0, 1.0, 0.5])
    b = torch.tensor([1.0, -4.0, 3.0, 0.2])
    c = torch.tensor([2.5, 5.0, 2.5, 1.0])
    # balls cover no part / 3-4-5 triangle: height 2 * 6 / 5 / obtuse at the first end: min(a, b) / a + b <= c
    torch.testing.assert_close(interval_min_distance(a, b, c), torch.tensor([0.0, 2.4, 1.0, 0.0]))


def test_interval_min_distance_is_a_lower_bound() -> None:
    torch.manual_seed(0)
    n = 2000
    centre = torch.randn(n, 3)
    radius = torch.rand(n) * 0.5 + 0.1
    x0, x1 = torch.randn(n, 3), torch.randn(n, 3)

    def sdf(p: torch.Tensor) -> torch.Tensor:
        return (p - centre).norm(dim=-1) - radius

    d_star = interval_min_distance(sdf(x0), sdf(x1), (x1 - x0).norm(dim=-1))
    u = torch.linspace(0, 1, 2001)[:, None, None]
    true_min = sdf(x0 + u * (x1 - x0)).abs().amin(dim=0)
    assert (d_star <= true_min + 1e-5).all()


def _sphere_sdf(p: torch.Tensor) -> torch.Tensor:
    return p.norm(dim=-1) - 0.5


def _sdf_at(origins: torch.Tensor, dirs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _sphere_sdf(origins[:, None] + t[..., None] * dirs[:, None])


def test_opacity_error_bound_holds() -> None:
    origins, dirs = sphere_rays(128)
    origins, dirs = origins.double(), dirs.double()
    near, far, _ = ray_sphere_near_far(origins, dirs, 1.0)
    g = torch.Generator().manual_seed(1)
    t = uniform_t(near, far, 48, perturb=True, generator=g)
    s = _sdf_at(origins, dirs, t)
    deltas = t.diff(dim=-1)
    # each interval integrated finely (trapezoids on 401 sub-samples)
    sub = t[:, :-1, None] + deltas[..., None] * torch.linspace(0, 1, 401, dtype=t.dtype)
    sub_s = _sdf_at(origins, dirs, sub.flatten(1)).view(sub.shape)
    for beta in (0.2, 0.05, 0.02):
        bound = opacity_error_bound(s[:, :-1], interval_min_distance(s[:, :-1], s[:, 1:], deltas), deltas, beta)
        sig = laplace_density(sub_s, beta)
        exact = torch.cumsum(torch.trapezoid(sig, sub, dim=-1), dim=-1)
        riemann = torch.cumsum(laplace_density(s[:, :-1], beta) * deltas, dim=-1)
        err = (torch.exp(-riemann) - torch.exp(-exact)).abs().amax(dim=-1)  # opacity error at the samples
        assert (err <= bound + 1e-6).all()
        if beta == 0.2:  # with 48 samples the bound is informative here (and >= 1 at small beta)
            assert (err > 0.1 * bound).any()


# ----------------------------------------------------------------------------- samplers


def _render(origins, dirs, t, near, far, beta, quadrature):
    """Opacity and expected distance (given a hit) of Laplace density composited at t."""
    s = _sdf_at(origins, dirs, t)
    if quadrature == "left":
        deltas = deltas_from_t(t, far)
        where = midpoints_from_t(t, deltas)
    else:
        deltas, where = centred_deltas_from_t(t, near, far), t
    w = weights_from_density(laplace_density(s, beta), deltas)
    opacity = opacity_from_weights(w)
    return opacity, depth_from_weights(w, where) / opacity.clamp(min=1e-12)


@pytest.fixture(scope="module")
def sphere_reference():
    origins, dirs = sphere_rays(192)
    near, far, hit = ray_sphere_near_far(origins, dirs, 1.0)
    beta = 0.01
    t_ref = uniform_t(near, far, 8192, perturb=False)
    op_ref, depth_ref = _render(origins, dirs, t_ref, near, far, beta, "left")
    return origins, dirs, near, far, beta, op_ref, depth_ref


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    ("quadrature", "counts"),
    [("centred", (64, 32, 16)), ("left", (128, 64, 32))],  # RenderConfig's defaults; the design's counts
)
def test_sampler_accuracy_on_sphere(sampler, quadrature, counts, sphere_reference) -> None:
    origins, dirs, near, far, beta, op_ref, depth_ref = sphere_reference
    solid, empty = op_ref > 0.5, op_ref < 0.01
    assert solid.sum() > 20 and empty.sum() > 20 and (~solid & ~empty).sum() > 5  # hits, misses, grazes
    n_eval, n_importance, n_extra = counts
    cfg = RenderConfig(n_eval=n_eval, n_importance=n_importance, n_extra=n_extra)
    t = sampler(_sphere_sdf, origins, dirs, near, far, beta, cfg)
    opacity, depth = _render(origins, dirs, t, near, far, beta, quadrature)
    assert (opacity - op_ref).abs().max() < 0.02
    assert (depth - depth_ref)[solid].abs().max() < 0.01


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("perturb", [False, True])
def test_sampler_contract(sampler, perturb) -> None:
    origins, dirs = sphere_rays(64, seed=3)
    origins[:4] = torch.tensor([0.0, 3.0, -3.0])  # these miss the unit sphere: near == far
    dirs[:4] = torch.tensor([0.0, 0.0, 1.0])
    near, far, hit = ray_sphere_near_far(origins, dirs, 1.0)
    assert not hit[:4].any()
    cfg = RenderConfig(n_eval=32, n_importance=24, n_extra=8)
    grad_modes, points = [], [0]

    def sdf_fn(p: torch.Tensor) -> torch.Tensor:
        grad_modes.append(torch.is_grad_enabled())
        points[0] += p.shape[0]
        return _sphere_sdf(p)

    g = torch.Generator().manual_seed(0)
    t = sampler(sdf_fn, origins, dirs, near, far, 0.01, cfg, perturb=perturb, generator=g)
    assert t.shape == (64, 32) and torch.isfinite(t).all()
    assert (t.diff(dim=-1) >= 0).all()
    assert (t >= near[:, None]).all() and (t <= far[:, None]).all()
    assert not any(grad_modes)
    if sampler is error_bounded_sample:
        assert points[0] <= 64 * cfg.n_eval * (1 + cfg.max_rounds)
    else:
        assert points[0] <= 64 * (cfg.n_eval + 3)
    g = torch.Generator().manual_seed(0)
    again = sampler(sdf_fn, origins, dirs, near, far, 0.01, cfg, perturb=perturb, generator=g)
    torch.testing.assert_close(t, again)


def test_error_bounded_stops_when_the_bound_holds() -> None:
    origins, dirs = sphere_rays(32)
    near, far, _ = ray_sphere_near_far(origins, dirs, 1.0)
    count = [0]

    def sdf_fn(p: torch.Tensor) -> torch.Tensor:
        count[0] += p.shape[0]
        return _sphere_sdf(p)

    cfg = RenderConfig(n_eval=64)
    error_bounded_sample(sdf_fn, origins, dirs, near, far, 0.5, cfg)  # a blurry density: no upsampling
    assert count[0] == 32 * 64
    count[0] = 0
    error_bounded_sample(sdf_fn, origins, dirs, near, far, 0.005, cfg)  # a sharp one: rounds of upsampling
    assert count[0] > 32 * 64 * 2


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_find_a_plate_thinner_than_the_coarse_spacing(sampler) -> None:
    """A 1 cm plate between coarse samples 2/31 apart still gets rendered as opaque."""
    origins = torch.tensor([[0.013, 0.0, -1.0], [0.0, 0.2, -1.0]]).repeat(4, 1)
    dirs = torch.tensor([[0.0, 0.0, 1.0]]).expand(8, 3)
    near, far = torch.zeros(8), torch.full((8,), 2.0)

    def plate(p: torch.Tensor) -> torch.Tensor:
        return (p[:, 2] - 0.011).abs() - 0.005

    cfg = RenderConfig(n_eval=32, n_importance=32, n_extra=16)
    t = sampler(plate, origins, dirs, near, far, 0.001, cfg)
    s = plate((origins[:, None] + t[..., None] * dirs[:, None]).reshape(-1, 3)).reshape(t.shape)
    opacity = opacity_from_weights(weights_from_density(laplace_density(s, 0.001), centred_deltas_from_t(t, near, far)))
    assert (opacity > 0.95).all()


def test_samplers_reject_bad_shapes_and_counts() -> None:
    origins, dirs = sphere_rays(4)
    near, far, _ = ray_sphere_near_far(origins, dirs, 1.0)
    with pytest.raises(ValueError, match="origins"):
        ray_sphere_near_far(origins[:, :2], dirs, 1.0)
    with pytest.raises(ValueError, match="near"):
        error_bounded_sample(_sphere_sdf, origins, dirs, near[:2], far, 0.1, RenderConfig())
    with pytest.raises(ValueError, match="n_eval"):
        surface_guided_sample(_sphere_sdf, origins, dirs, near, far, 0.1, RenderConfig(n_eval=2))
