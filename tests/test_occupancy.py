"""Occupancy grid: cells of an analytic SDF, exact ray traversal, samplers and renders restricted to it, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import FAST_FIT, sphere_rays
from recon.config import RenderConfig, load_config
from recon.datasets import load_scene
from recon.encodings.layout import hash_grid_levels
from recon.errors import InputError
from recon.render.occupancy import LIPSCHITZ, OccupancyGrid, density_margin, make_occupancy_grid
from recon.fields import CoarseToFine
from recon.objective import BEHIND_SAMPLES, behind_surface
from recon.render.background import ConstantBackground
from recon.render.density import make_density
from recon.render.renderer import render_rays
from recon.render.samplers import (
    RaySegments,
    _coarse_count,
    error_bounded_sample,
    ray_sphere_near_far,
    surface_guided_sample,
)
from recon.train import Fitter

RADIUS = 0.5


def sphere(p: torch.Tensor) -> torch.Tensor:
    return p.norm(dim=-1) - RADIUS


def rays(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from 2.5 away towards random points near the centre (about half miss the sphere of 0.5)."""
    return sphere_rays(n, seed, spread=0.6)


def cell_of(grid: OccupancyGrid, p: torch.Tensor) -> torch.Tensor:
    return ((p + grid.radius) / grid.cell).floor().long().clamp(0, grid.resolution - 1)


def occupied_at(grid: OccupancyGrid, p: torch.Tensor) -> torch.Tensor:
    i = cell_of(grid, p)
    return grid.occupied[i[..., 0], i[..., 1], i[..., 2]]


def test_density_margin_by_hand():
    # beta ln(L / (beta tol)) = 0.01 ln(2 / 1e-5)
    assert density_margin(0.01, 2.0, 1e-3) == pytest.approx(0.01 * math.log(2e5))
    assert density_margin(1.0, 2.0, 0.9) == pytest.approx(math.log(2.0 / 0.9))


def test_segments_from_bins_by_hand():
    edges = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    occupied = torch.tensor([[True, True, False, True, False], [False, False, False, False, True]])
    seg = RaySegments.from_bins(edges, occupied)
    torch.testing.assert_close(seg.start, torch.tensor([[0.0, 3.0], [4.0, 5.0]]))
    torch.testing.assert_close(seg.end, torch.tensor([[2.0, 4.0], [5.0, 5.0]]))
    torch.testing.assert_close(seg.length, torch.tensor([3.0, 1.0]))
    tau = torch.tensor([[0.0, 1.0, 2.0, 2.5, 3.0], [0.0, 0.25, 0.5, 0.75, 1.0]])
    t = seg.to_t(tau)
    torch.testing.assert_close(t, torch.tensor([[0.0, 1.0, 2.0, 3.5, 4.0], [4.0, 4.25, 4.5, 4.75, 5.0]]))
    torch.testing.assert_close(seg.to_tau(t[:, 1:]), tau[:, 1:])


def test_sphere_cells_inside_and_far_outside_empty_shell_occupied():
    grid = OccupancyGrid(32)
    beta = 0.005
    grid.update(sphere, beta)
    assert not occupied_at(grid, torch.zeros(1, 3)).any()  # the inside
    assert not occupied_at(grid, torch.tensor([[0.95, 0.95, 0.95], [0.0, 0.0, 0.9]])).any()  # far outside
    on_surface = F.normalize(torch.randn(2000, 3), dim=-1) * RADIUS
    assert occupied_at(grid, on_surface).all()
    # exactly the cells whose centre passes the test (the coarse-to-fine pass drops none)
    axis = -1.0 + (torch.arange(32) + 0.5) * grid.cell
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    expected = sphere(centres).abs() <= grid.threshold(beta)
    assert torch.equal(grid.occupied, expected)
    assert 0.01 < grid.occupied_fraction() < 0.2


@pytest.mark.parametrize("resolution, beta, most_evaluated", [(32, 0.2, 4**3), (64, 0.002, 0.1 * 64**3)])
def test_octree_update_marks_exactly_the_passing_cells_and_evaluates_few(resolution, beta, most_evaluated):
    """Coarse to fine, blocks of 8, 4, 2, 1 cells. Early in a fit (wide margin) every first block
    passes for all its cells and is marked whole, so only its centre is evaluated; late (small beta)
    only the blocks that straddle the band are split (the one-level 4^3 blocks this replaced
    evaluated 43,520 points at 64^3, beta 0.002). Either way the marked cells are exactly those
    whose own centre passes the test."""
    grid, evaluated = OccupancyGrid(resolution), []

    def counted(p: torch.Tensor) -> torch.Tensor:
        evaluated.append(p.shape[0])
        return sphere(p)

    grid.update(counted, beta)
    axis = -1.0 + (torch.arange(resolution) + 0.5) * grid.cell
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    assert torch.equal(grid.occupied, sphere(centres).abs() <= grid.threshold(beta))
    assert evaluated[0] == (resolution // 8) ** 3 and sum(evaluated) <= most_evaluated


@pytest.mark.parametrize("slope", [0.7, 1.0, LIPSCHITZ])
def test_update_is_conservative(slope: float):
    """Every point where the density is not negligible lies in an occupied cell, for SDFs as steep as allowed."""
    grid = OccupancyGrid(24)
    beta = 0.01
    grid.update(lambda p: slope * sphere(p), beta)
    p = (torch.rand(200_000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    visible = (slope * sphere(p)).abs() <= density_margin(beta, 2.0, grid.tolerance)
    assert occupied_at(grid, p[visible]).all()


def test_segments_are_exactly_the_occupied_cells_along_each_ray():
    grid = OccupancyGrid(16)
    grid.update(sphere, 0.01)
    o, d = rays(64)
    near, far, hit = ray_sphere_near_far(o, d)
    seg = grid.segments(o, d, near, far)
    assert (seg.length[~hit] == 0).all()
    o, d, near, far, seg = o[hit], d[hit], near[hit], far[hit], seg.select(hit)
    t = near[:, None] + (far - near)[:, None] * torch.linspace(0, 1, 4001)[1:-1]
    inside = ((t[..., None] >= seg.start[:, None, :]) & (t[..., None] <= seg.end[:, None, :])).any(-1)
    points = o[:, None, :] + t[..., None] * d[:, None, :]
    # away from cell faces, a point is in a segment exactly when its cell is occupied
    frac = (points + 1.0) / grid.cell
    clear = ((frac - frac.round()).abs() > 1e-4).all(-1)
    assert torch.equal(inside[clear], occupied_at(grid, points)[clear])


@pytest.mark.parametrize("sampler", [surface_guided_sample, error_bounded_sample])
def test_samplers_keep_their_samples_inside_the_segments(sampler):
    grid = OccupancyGrid(32)
    grid.update(sphere, 0.01)
    o, d = rays(256)
    near, far, hit = ray_sphere_near_far(o, d)
    seg = grid.segments(o, d, near, far)
    rows = hit & (seg.length > 0)
    cfg = RenderConfig(n_eval=32, n_importance=16, n_extra=8)
    calls = []

    def counted(p: torch.Tensor) -> torch.Tensor:
        calls.append(p.shape[0])
        return sphere(p)

    sub = seg.select(rows)
    t = sampler(counted, o[rows], d[rows], near[rows], far[rows], 0.01, cfg, perturb=True,
                generator=torch.Generator().manual_seed(0), segments=sub)
    within = (t[..., None] >= sub.start[:, None, :] - 1e-6) & (t[..., None] <= sub.end[:, None, :] + 1e-6)
    assert within.any(-1).all()
    assert (t[:, 1:] >= t[:, :-1]).all()
    if sampler is surface_guided_sample:  # the kept coarse samples are cut with the coarse count
        n_coarse = _coarse_count(32, near[rows], far[rows], sub, minimum=3)
        assert n_coarse < 32 and t.shape[1] == 16 + math.ceil(8 * n_coarse / 32)


class SphereField(torch.nn.Module):
    """An analytic sphere with a colour that depends on the normal, in NeuralSDF's interface."""

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return sphere(x)

    def sdf_feature_gradient(self, x: torch.Tensor, create_graph: bool):
        return sphere(x), x.new_zeros(x.shape[0], 0), F.normalize(x, dim=-1)

    def color_net(self, x, view, normals, feature, index=None):
        return 0.5 + 0.5 * normals


@pytest.mark.parametrize("sampler", ["surface_guided", "error_bounded"])
def test_render_with_the_grid_matches_the_render_without(sampler: str):
    cfg = RenderConfig(sampler=sampler, beta_init=0.01)
    field, density = SphereField(), make_density(cfg)
    grid = OccupancyGrid(64)
    grid.update(field.sdf, 0.01)
    o, d = rays(512, seed=3)
    background = ConstantBackground([1.0, 1.0, 1.0])
    plain = render_rays(field, density, o, d, cfg, background, training=False)
    skipped = render_rays(field, density, o, d, cfg, background, training=False, occupancy=grid)
    assert skipped.hit.sum() < plain.hit.sum()  # rays that pass beside the sphere are not rendered
    for name in ("rgb", "opacity", "depth"):
        diff = (getattr(skipped, name) - getattr(plain, name)).detach().abs()
        scale = 1.0 if name != "depth" else 3.0
        assert float(diff.max()) < 0.02 * scale and float(diff.mean()) < 1e-3 * scale, (name, diff.max(), diff.mean())


def test_checkpoint_round_trip_and_exact_resume(tiny_scene_dir: Path, tmp_path: Path):
    cfg = load_config(None, FAST_FIT + ["train.iters=20", "train.batch_rays=64", "render.occupancy_resolution=16",
                                        "train.occupancy_every=2"])
    scene = load_scene(tiny_scene_dir)
    first = Fitter(scene, tmp_path / "a", cfg, tiny_scene_dir)
    for _ in range(3):
        first.train_step()
    assert first.occupancy is not None and first.occupancy.occupied_fraction() < 1.0
    first.save_checkpoint()
    state = torch.load(first.run.checkpoint, weights_only=False)
    second = Fitter(scene, tmp_path / "b", cfg, tiny_scene_dir)
    second.restore(state)
    assert torch.equal(second.occupancy.occupied, first.occupancy.occupied)
    for _ in range(2):
        a, b = first.train_step(), second.train_step()
        assert a == b
    assert torch.equal(second.occupancy.occupied, first.occupancy.occupied)


def test_bad_occupancy_settings_are_input_errors():
    with pytest.raises(InputError, match="occupancy_resolution"):
        make_occupancy_grid(RenderConfig(occupancy_resolution=-1))
    with pytest.raises(InputError, match="occupancy_tolerance"):
        make_occupancy_grid(RenderConfig(occupancy_tolerance=0.0))
    assert make_occupancy_grid(RenderConfig(occupancy_resolution=0)) is None


# ----------------------------------------------------------------------------- the options beside the grid


def test_finite_difference_gradient_matches_the_analytic_one():
    from recon.fields import NeuralSDF

    cfg = load_config(None, FAST_FIT)
    field = NeuralSDF(cfg.geometry, cfg.encoding, cfg.color, 1)
    with torch.no_grad():
        for p in field.sdf_net.encoding.parameters():
            p.uniform_(-0.05, 0.05)
    x = (torch.rand(256, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 1.2
    sdf, feature, analytic = field.sdf_feature_gradient(x, create_graph=True)
    field.fd_step = 1e-3
    sdf_fd, feature_fd, numerical = field.sdf_feature_gradient(x, create_graph=True)
    torch.testing.assert_close(sdf_fd, sdf)
    torch.testing.assert_close(feature_fd, feature)
    error = (numerical - analytic).detach().norm(dim=-1).mean()
    assert float(error) < 0.02 * float(analytic.detach().norm(dim=-1).mean())
    numerical.square().sum().backward()  # differentiable without a double backward
    assert field.sdf_net.encoding.params.grad is not None


def test_coarse_to_fine_masks_the_fine_levels_and_numerical_steps_shrink(tiny_scene_dir: Path, tmp_path: Path):
    overrides = FAST_FIT + ["train.iters=4", "encoding.c2f_start_levels=2", "encoding.c2f_every=2", "geometry.numerical_gradient=true",
                            "render.occupancy_resolution=8", "train.batch_rays=64"]
    cfg = load_config(None, overrides)
    schedule = CoarseToFine(cfg.encoding.c2f_start_levels, cfg.encoding.c2f_every)

    def active_levels(step: int, cfg) -> int:
        return schedule.active_levels(step, cfg.encoding.n_levels)

    assert [active_levels(step, cfg) for step in (0, 1, 2, 5, 100)] == [2, 2, 3, 4, 6]
    fitter = Fitter(load_scene(tiny_scene_dir), tmp_path / "run", cfg, tiny_scene_dir)
    steps = []
    for _ in range(4):
        fitter.train_step()
        steps.append(fitter.field.fd_step)
        mask = fitter.field.sdf_net.grid_mask
        assert mask is not None and int(mask.sum()) == active_levels(fitter.step - 1, cfg) * cfg.encoding.n_features_per_level
    assert steps[0] > steps[-1] > 0
    # the masked levels reach nothing: changing them leaves the SDF unchanged
    x = torch.rand(64, 3) - 0.5
    before = fitter.field.sdf(x)
    fine = hash_grid_levels(cfg.encoding)[4].offset * cfg.encoding.n_features_per_level
    with torch.no_grad():
        fitter.field.sdf_net.encoding.params[fine:] += 1.0
    torch.testing.assert_close(fitter.field.sdf(x), before)


def test_coarse_count_follows_most_rays_not_the_one_longest_stretch():
    """100 rays of [0, 2], 99 occupied over 0.2 and one over 1.6: the count keeps the spacing of the
    many (20 % of 64 samples), capped so the long one is at most 2x sparser (half of 1.6 / 2)."""
    edges = torch.tensor([0.0, 0.2, 1.6, 2.0]).repeat(100, 1)
    occupied = torch.tensor([True, False, False]).repeat(100, 1)
    occupied[0] = torch.tensor([True, True, False])
    segments = RaySegments.from_bins(edges, occupied)
    near, far = torch.zeros(100), torch.full((100,), 2.0)
    assert _coarse_count(64, near, far, segments, minimum=3) == 1 + math.ceil(63 * 0.4)
    occupied[0] = torch.tensor([True, False, False])
    assert _coarse_count(64, near, far, RaySegments.from_bins(edges, occupied), minimum=3) == 1 + math.ceil(63 * 0.1)
    assert _coarse_count(64, near, far, None, minimum=3) == 64


def test_eikonal_points_behind_the_surface_only_with_the_grid(tiny_scene_dir: Path, tmp_path: Path):
    """With the grid, each opaque ray adds points between its surface and the far side of the scene
    sphere (the inside the grid keeps rendered samples out of); without it, none."""
    scene = load_scene(tiny_scene_dir)
    cfg = load_config(None, FAST_FIT + ["render.occupancy_resolution=16"])
    fitter = Fitter(scene, tmp_path / "a", cfg, tiny_scene_dir)
    batch = fitter.rays.random_batch(64, torch.Generator().manual_seed(0))
    opaque = torch.zeros(64, dtype=torch.bool)
    opaque[::2] = True
    near, far, _ = ray_sphere_near_far(batch.origins[opaque], batch.dirs[opaque])
    hit = near + 0.3 * (far - near)  # a surface inside the sphere
    u = torch.rand(32, BEHIND_SAMPLES)
    points = behind_surface(batch.origins[opaque], batch.dirs[opaque], hit, u, 1.0).reshape(32, BEHIND_SAMPLES, 3)
    offsets = points - batch.origins[opaque][:, None, :]
    t = (offsets * batch.dirs[opaque][:, None, :]).sum(-1)
    torch.testing.assert_close(offsets, t[..., None] * batch.dirs[opaque][:, None, :], atol=1e-5, rtol=0)  # on the rays
    assert (t >= hit[:, None] - 1e-5).all() and (t <= far[:, None] + 1e-5).all()
    torch.testing.assert_close(t, hit[:, None] + u * (far - hit)[:, None], atol=1e-5, rtol=1e-5)
    for occupancy in (16, 0):  # the objective adds them only with the grid
        cfg = load_config(None, FAST_FIT + [f"render.occupancy_resolution={occupancy}"])
        fitter = Fitter(scene, tmp_path / f"o{occupancy}", cfg, tiny_scene_dir)
        assert fitter.objective.points_behind_surface == bool(occupancy)
