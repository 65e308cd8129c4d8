"""Monocular cue losses (MonoSDF) and the NeRF++ background model, with hand-computed values."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST_FIT
from recon.config import load_config
from recon.datasets import load_scene
from recon.datasets.scene import Scene
from recon.fields import NeuralSDF
from recon.losses import depth_scale_shift, normal_cue, ssi_depth
from recon.rays import RaySource
from recon.render.background import (
    FAR_RATIO,
    ConstantBackground,
    NerfPlusPlusBackground,
    background_start,
    background_t,
    inverted_sphere,
    make_background,
)
from recon.render.density import Density, make_density
from recon.render.renderer import render_rays
from recon.train import Fitter, fit

# ---------------------------------------------------------------- depth


def test_scale_and_shift_recover_an_affine_depth_and_give_zero_loss():
    pred = torch.tensor([0.5, 1.0, 2.0, 3.5], dtype=torch.float64)
    target = 2.0 * pred + 3.0
    scale, shift = depth_scale_shift(pred, target)
    assert float(scale) == pytest.approx(2.0)
    assert float(shift) == pytest.approx(3.0)
    assert float(ssi_depth(pred, target, torch.ones(4, dtype=torch.bool))) == pytest.approx(0.0, abs=1e-20)


def test_ssi_depth_known_residual_ignores_invalid_rays():
    # fit of t = [0, 1, 3] on p = [0, 1, 2]: s = 1.5, b = -1/6, residuals [-1/6, 1/3, -1/6],
    # sum of squares 1/6, loss = (1/6) / (2 * 3) = 1/36. The fourth ray is invalid and ignored.
    pred = torch.tensor([0.0, 1.0, 2.0, 7.0], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 3.0, -40.0], dtype=torch.float64)
    valid = torch.tensor([True, True, True, False])
    scale, shift = depth_scale_shift(pred[:3], target[:3])
    assert (float(scale), float(shift)) == pytest.approx((1.5, -1.0 / 6.0))
    assert float(ssi_depth(pred, target, valid)) == pytest.approx(1.0 / 36.0)


def test_ssi_depth_needs_two_valid_rays_and_is_differentiable():
    pred = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    target = torch.tensor([1.0, 3.0, 3.0])
    assert float(ssi_depth(pred, target, torch.tensor([True, False, False])).detach()) == 0.0
    singular = ssi_depth(torch.ones(3), target, torch.ones(3, dtype=torch.bool))
    assert float(singular) == pytest.approx(float((target**2).sum() / 6.0))  # s = b = 0: nothing to fit
    loss = ssi_depth(pred, target, torch.ones(3, dtype=torch.bool))
    loss.backward()
    assert pred.grad is not None and bool(torch.isfinite(pred.grad).all()) and float(pred.grad.abs().sum()) > 0


# ---------------------------------------------------------------- normals


def test_normal_losses_hand_computed():
    pred = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])  # normalised inside
    cue = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    valid = torch.tensor([True, True, False])
    l1, angular = normal_cue(pred, cue, valid)
    # ray 0: identical -> 0, 0; ray 1: |(-1, 0, 1)|_1 = 2, 1 - cos 90 deg = 1; ray 2 ignored
    assert float(l1) == pytest.approx(1.0)
    assert float(angular) == pytest.approx(0.5)
    assert [float(term) for term in normal_cue(pred, cue, torch.zeros(3, dtype=torch.bool))] == [0.0, 0.0]
    cue[2] = float("nan")  # an invalid cue's value never reaches the loss or its gradient
    pred.requires_grad_(True)
    l1_nan, angular_nan = normal_cue(pred, cue, valid)
    assert float(l1_nan.detach()) == pytest.approx(1.0) and float(angular_nan.detach()) == pytest.approx(0.5)
    (l1_nan + angular_nan).backward()
    assert bool(torch.isfinite(pred.grad).all())


def test_ray_batches_carry_cues_with_normals_in_camera_space(tiny_scene_dir: Path):
    scene = load_scene(tiny_scene_dir)
    rays = RaySource(scene, torch.device("cpu"))
    index, v, u = np.nonzero(scene.masks)
    pick = slice(0, None, max(1, len(index) // 64))
    idx, uu, vv = (torch.from_numpy(a[pick]) for a in (index, u, v))
    batch = rays.batch(idx, uu, vv)
    assert torch.equal(batch.depth, torch.from_numpy(scene.depths[index[pick], v[pick], u[pick]]))
    rotation = torch.from_numpy(scene.cam_to_world[index[pick], :3, :3]).float()
    back_to_world = torch.einsum("rij,rj->ri", rotation, batch.normal)
    world = torch.from_numpy(scene.normals[index[pick], v[pick], u[pick]])
    torch.testing.assert_close(back_to_world, world, atol=1e-5, rtol=0)
    # a visible surface faces the camera: its camera-space normal points against the ray (z < 0)
    cam_dirs = torch.einsum("rji,rj->ri", rotation, batch.dirs)
    assert float(((batch.normal * cam_dirs).sum(-1) < 0).float().mean()) > 0.95


def _without_cues(scene_dir: Path, tmp_path: Path) -> Path:
    plain = tmp_path / "plain"
    shutil.copytree(scene_dir, plain)
    shutil.rmtree(plain / "depth")
    shutil.rmtree(plain / "normal")
    return plain


def _fitter(scene: Scene, tmp_path: Path, extra: list[str] = ()) -> Fitter:
    cfg = load_config(None, FAST_FIT + ["train.batch_rays=64", *extra])
    return Fitter(scene, tmp_path / "run", cfg, tmp_path)


def test_cue_terms_enter_the_loss_only_where_cues_exist(tiny_scene_dir: Path, tmp_path: Path):
    fitter = _fitter(load_scene(tiny_scene_dir), tmp_path)
    terms = fitter.train_step()
    assert {"depth", "normal_l1", "normal_angular"} <= terms.keys()
    assert all(math.isfinite(terms[k]) and terms[k] > 0 for k in ("depth", "normal_l1", "normal_angular"))
    plain = _fitter(load_scene(_without_cues(tiny_scene_dir, tmp_path)), tmp_path / "p").train_step()
    assert not {"depth", "normal_l1", "normal_angular"} & plain.keys()
    invalid = load_scene(tiny_scene_dir)
    invalid.depths[:] = 0.0  # invalid depth everywhere, normals not unit: the cue terms are 0
    invalid.normals[:] = np.nan
    terms = _fitter(invalid, tmp_path / "i").train_step()
    assert [float(terms[k]) for k in ("depth", "normal_l1", "normal_angular")] == [0.0, 0.0, 0.0]
    assert math.isfinite(float(terms["total"]))


def test_cue_losses_change_the_gradient(tiny_scene_dir: Path, tmp_path: Path):
    scene = load_scene(tiny_scene_dir)
    grads = []
    for extra in (["train.depth_weight=0", "train.normal_l1_weight=0", "train.normal_angular_weight=0"], []):
        fitter = _fitter(scene, tmp_path / str(len(extra)), extra)
        batch = fitter.rays.random_batch(64, torch.Generator().manual_seed(1))
        fitter.generator.manual_seed(2)
        out = render_rays(fitter.field, fitter.density, batch.origins, batch.dirs, fitter.cfg.render,
                          fitter.background, True, batch.image_index, torch.Generator().manual_seed(3))
        fitter.objective(fitter.field, batch, out, fitter.generator).total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in fitter.field.network_parameters() if p.grad is not None]))
    assert not torch.allclose(grads[0], grads[1])


def test_a_fit_with_cues_logs_their_terms_and_one_without_does_not(tiny_scene_dir: Path, tmp_path: Path):
    cfg = load_config(None, FAST_FIT + ["train.iters=4", "train.log_every=2", "train.batch_rays=64"])
    plain = _without_cues(tiny_scene_dir, tmp_path)
    for name, scene_dir, logged in (("cues", tiny_scene_dir, True), ("plain", plain, False)):
        fit(scene_dir, tmp_path / name, cfg, progress=False)
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [2, 4]
        for record in records:
            terms = {"depth", "normal_l1", "normal_angular"} & record.keys()
            assert terms == ({"depth", "normal_l1", "normal_angular"} if logged else set())
            assert all(math.isfinite(record[k]) for k in terms)


# ---------------------------------------------------------------- background


def test_inverted_sphere_coordinates():
    points = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, -4.0], [0.5, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 0.0, -1.0, 0.25], [0.5, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(inverted_sphere(points, 1.0), expected)


def test_background_samples_are_uniform_in_inverse_distance():
    t = background_t(torch.tensor([2.0]), 4, perturb=False)[0]
    fractions = torch.tensor([0.125, 0.375, 0.625, 0.875])
    torch.testing.assert_close(t, 2.0 / (1.0 - fractions * (1.0 - 1.0 / FAR_RATIO)))
    jittered = background_t(torch.full((64,), 2.0), 4, perturb=True, generator=torch.Generator().manual_seed(0))
    inverse = 2.0 / jittered
    assert bool((jittered[:, 1:] > jittered[:, :-1]).all()) and bool((jittered >= 2.0).all())
    edges = 1.0 - torch.linspace(0, 1, 5) * (1.0 - 1.0 / FAR_RATIO)
    assert bool(((inverse <= edges[:-1]) & (inverse >= edges[1:])).all())


def test_background_starts_at_the_far_bound_or_the_closest_approach():
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    start = background_start(origins, dirs, torch.tensor([4.0, 0.0]), torch.tensor([True, False]))
    torch.testing.assert_close(start, torch.tensor([4.0, 3.0]))


def test_background_render_is_hand_computable(monkeypatch: pytest.MonkeyPatch):
    model = NerfPlusPlusBackground(16, 1.0, n_samples=2)
    # two samples: density 0.5 then anything; the last interval is infinite (every ray ends opaque)
    monkeypatch.setattr(
        model, "forward",
        lambda p, d: (torch.tensor([0.5, 3.0]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])),
    )
    start = torch.tensor([2.0])
    t = background_t(start, 2, perturb=False)[0]
    alpha = 1.0 - math.exp(-0.5 * float(t[1] - t[0]))
    rgb = model.render_beyond(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]]), start, training=False)
    torch.testing.assert_close(rgb[0], torch.tensor([alpha, 0.0, 1.0 - alpha]))


def test_background_field_shapes_and_gradients():
    model = NerfPlusPlusBackground(32, 1.0, n_samples=8)
    origins = torch.randn(10, 3) * 3
    dirs = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    rgb = model.render_beyond(origins, dirs, torch.full((10,), 1.5), training=True, generator=torch.Generator())
    assert rgb.shape == (10, 3) and bool(((rgb > 0) & (rgb < 1)).all())
    rgb.sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


def _tiny_field() -> tuple[NeuralSDF, Density, object]:
    cfg = load_config(None, FAST_FIT + ["render.background=nerf++", "render.n_background=8"])
    torch.manual_seed(0)
    field = NeuralSDF(cfg.geometry, cfg.encoding, cfg.color, 1, cfg.render.scene_radius, torch.device("cpu"))
    return field, make_density(cfg.render), cfg


def test_the_background_model_fills_what_the_foreground_leaves():
    field, density, cfg = _tiny_field()
    model = NerfPlusPlusBackground(cfg.render.background_hidden_dim, cfg.render.scene_radius, cfg.render.n_background)
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0], [0.0, 0.2, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 3)  # ray 1 misses the unit sphere
    black = render_rays(field, density, origins, dirs, cfg.render, ConstantBackground([0.0, 0.0, 0.0]), training=False)
    modelled = render_rays(field, density, origins, dirs, cfg.render, model, training=False)
    far = torch.tensor([4.0, 0.0, 3.0 + math.sqrt(1 - 0.04)])
    start = background_start(origins, dirs, far, torch.tensor([True, False, True]))
    behind = model.render_beyond(origins, dirs, start, training=False)
    assert float(black.opacity[1].detach()) == 0.0
    torch.testing.assert_close(modelled.rgb[1], behind[1])  # a miss takes the background's colour
    torch.testing.assert_close(modelled.rgb, black.rgb + (1.0 - black.opacity[:, None]) * behind)
    assert float(black.opacity[0].detach()) > 0.5  # the initial sphere stops the central ray


def test_auto_background_chooses_the_model_for_unmasked_cluttered_scenes(tiny_scene_dir: Path):
    cfg = load_config(None, [])
    scene = load_scene(tiny_scene_dir)
    assert isinstance(make_background(scene, cfg.render), ConstantBackground)  # masks, uniform border
    cluttered = Scene(
        images=np.random.default_rng(0).integers(0, 256, scene.images.shape, dtype=np.uint8),
        intrinsics=scene.intrinsics, cam_to_world=scene.cam_to_world, scale_mat=scene.scale_mat,
    )
    assert isinstance(make_background(cluttered, cfg.render), NerfPlusPlusBackground)
    cluttered.masks = scene.masks
    colour = make_background(cluttered, cfg.render)
    assert isinstance(colour, ConstantBackground) and colour.describe() == [0.0, 0.0, 0.0]


def test_the_background_model_trains_and_resumes(tiny_scene_dir: Path, tmp_path: Path):
    scene = load_scene(tiny_scene_dir)
    fitter = _fitter(scene, tmp_path, ["render.background=nerf++", "render.n_background=8"])
    before = [p.detach().clone() for p in fitter.background.parameters()]
    fitter.train_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, fitter.background.parameters()))
    fitter.save_checkpoint()
    again = _fitter(scene, tmp_path, ["render.background=nerf++", "render.n_background=8"])
    again.restore(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False))
    for a, b in zip(fitter.background.parameters(), again.background.parameters()):
        assert torch.equal(a, b)
