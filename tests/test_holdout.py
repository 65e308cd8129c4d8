"""Held-out views: the split, the scores (hand-computed) and a fit that reports them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST_FIT
from recon.cli import main
from recon.config import Config, RenderConfig
from recon.datasets import load_scene
from recon.errors import InputError
from recon.holdout import holdout_scores, scoring_render_config, split_holdout
from recon.rays import RaySource, pixel_rays_unit_length
from recon.render.background import ConstantBackground
from recon.render.image import RenderedImage, render_image
from recon.render.occupancy import OccupancyGrid
from recon.render.renderer import render_rays
from recon.run import build_model


def test_split_keeps_every_kth_view_out(tiny_scene_dir: Path):
    scene = load_scene(tiny_scene_dir)
    train, held, indices = split_holdout(scene, 3)
    assert indices == [0, 3, 6]
    assert train.n_images == 5 and held is not None and held.n_images == 3
    np.testing.assert_array_equal(held.images, scene.images[[0, 3, 6]])
    np.testing.assert_array_equal(train.cam_to_world, scene.cam_to_world[[1, 2, 4, 5, 7]])
    assert split_holdout(scene, 0)[1] is None and split_holdout(scene, 0)[0] is scene
    for bad in (1, -2):
        with pytest.raises(InputError, match="train.holdout"):
            split_holdout(scene, bad)


def test_holdout_scores_hand_computed():
    target = np.zeros((2, 2, 3), dtype=np.float32)
    rgb = np.zeros((2, 2, 3), dtype=np.float32)
    rgb[0, 0] = 0.1  # inside the mask: error 0.1 on one of two mask pixels -> mse 0.005
    rgb[1, 1] = 0.5  # outside the mask
    mask = np.array([[1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    opacity = np.array([[0.9, 0.2], [0.7, 0.1]], dtype=np.float32)  # opaque: (0,0), (1,0)
    def image(mask: np.ndarray | None) -> RenderedImage:
        return RenderedImage(rgb, target, np.zeros_like(rgb), np.zeros_like(opacity), opacity, mask, 0.0)

    scores = holdout_scores(image(mask))
    assert scores.psnr == pytest.approx(-10 * math.log10(0.005), rel=1e-5)
    assert scores.psnr_full == pytest.approx(-10 * math.log10((0.01 * 3 + 0.25 * 3) / 12), rel=1e-5)
    assert scores.mask_iou == pytest.approx(1 / 3)  # intersection {(0,0)}, union {(0,0), (0,1), (1,0)}
    assert holdout_scores(image(None)).as_dict().keys() == {"psnr"}


def test_fit_with_holdout_reports_psnr_and_mask_iou(tiny_scene_dir: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    overrides = FAST_FIT + ["train.val_every=2", "train.batch_rays=64", "train.val_max_side=16"]
    overrides.append("color.appearance_dim=4")  # held-out views render without an appearance code
    args = ["fit", str(tiny_scene_dir), "--out", str(run), "--iters", "4", "--holdout", "4", "--quiet"]
    assert main(args + overrides) == 0
    printed = capsys.readouterr().out
    assert "held-out views [0, 4]: psnr" in printed and "mask_iou" in printed
    summary = json.loads((run / "holdout.json").read_text())
    assert summary["step"] == 4 and summary["every"] == 4 and [v["view"] for v in summary["views"]] == [0, 4]
    assert 0.0 <= summary["mask_iou"] <= 1.0 and math.isfinite(summary["psnr"]) and math.isfinite(summary["psnr_full"])
    assert summary["psnr"] == pytest.approx(np.mean([v["psnr"] for v in summary["views"]]))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "holdout_psnr" in r] == [4]  # scored once, at the end
    assert {"view_000.png", "view_004.png"} <= {p.name for p in (run / "holdout").iterdir()}
    meta = json.loads((run / "meta.json").read_text())
    assert meta["n_images"] == 6 and meta["holdout_views"] == [0, 4]
    assert main(["fit", str(tiny_scene_dir), "--out", str(tmp_path / "bad"), "--holdout", "1", *overrides]) == 2
    bad = ["fit", str(tiny_scene_dir), "--out", str(tmp_path / "bad2"), "train.holdout_supersample=0", *overrides]
    assert main(bad) == 2 and "holdout_supersample" in capsys.readouterr().err


def test_supersampled_pixel_is_the_mean_of_rays_spread_over_its_block(tiny_scene_dir: Path):
    """With 2 x 2 rays per pixel, a pixel of a 32 -> 8 render (blocks of 4) is the mean of the rays
    through its block's points at 1/4 and 3/4 (pixel offsets 0.5 and 2.5 from the block's first
    pixel); its depth is their mean weighted depth over their mean opacity."""
    cfg = Config()
    cfg.train.val_max_side = 8
    torch.manual_seed(0)
    field, density = build_model(cfg, 8, torch.device("cpu"))
    rays = RaySource(load_scene(tiny_scene_dir), torch.device("cpu"))
    background = ConstantBackground([1.0, 1.0, 1.0])
    rendered = render_image(field, density, background, rays, 3, cfg.render, cfg.train.val_max_side, supersample=2)
    assert rendered.rgb.shape == (8, 8, 3)
    row, col = 4, 3
    v, u = (torch.tensor([4 * row + a for a in (0.5, 0.5, 2.5, 2.5)]), torch.tensor([4 * col + a for a in (0.5, 2.5)] * 2))
    index = torch.full((4,), 3)
    origins, dirs, z_scale = pixel_rays_unit_length(rays.intrinsics_inv[index], rays.cam_to_world[index], u, v)
    with torch.no_grad():
        out = render_rays(field, density, origins, dirs, cfg.render, background, False, index)
    np.testing.assert_allclose(rendered.rgb[row, col], out.rgb.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(rendered.opacity[row, col], out.opacity.mean().item(), atol=1e-5)
    depth = (out.depth * z_scale).mean() / out.opacity.mean().clamp_min(1e-6)
    assert rendered.depth[row, col] == pytest.approx(depth.item(), rel=1e-4)
    colour = background.matte()
    composited = torch.where(rays.masks[3, 16:20, 12:16, None], rays.images[3, 16:20, 12:16].float() / 255.0, colour)
    np.testing.assert_allclose(rendered.target[row, col], composited.mean((0, 1)).numpy(), atol=1e-6)


def test_whole_views_skip_what_the_occupancy_grid_marks_empty(tiny_scene_dir: Path):
    """A grid with every cell occupied renders what no grid renders; cells marked empty hold no
    density (a view through an empty grid is the background); ``Model.occupancy_grid`` marks its
    cells from the model's SDF (the initial SDF is a sphere: with a small beta only a shell around it
    is occupied, its centre is empty)."""
    cfg = Config()
    cfg.train.val_max_side = 8
    cfg.render.beta_init = 0.01
    torch.manual_seed(0)
    field, density = build_model(cfg, 8, torch.device("cpu"))
    rays = RaySource(load_scene(tiny_scene_dir), torch.device("cpu"))
    background = ConstantBackground([1.0, 1.0, 1.0])

    def render(grid: OccupancyGrid | None) -> RenderedImage:
        return render_image(field, density, background, rays, 3, cfg.render, 8, occupancy=grid)

    plain = render(None)
    grid = OccupancyGrid(16, cfg.render.scene_radius)
    everywhere = render(grid)
    assert everywhere.opacity.max() > 0.5
    np.testing.assert_allclose(everywhere.opacity, plain.opacity, atol=0.02)
    np.testing.assert_allclose(everywhere.rgb, plain.rgb, atol=0.02)
    grid.occupied[:] = False
    nothing = render(grid)
    assert nothing.opacity.max() == 0.0 and np.allclose(nothing.rgb, 1.0)
    from recon.run import Model

    marked = Model(field, density, background, cfg, np.eye(4), {}).occupancy_grid()
    assert marked is not None and 0.0 < marked.occupied_fraction() < 0.5
    assert not marked.occupied[marked.resolution // 2, marked.resolution // 2, marked.resolution // 2]


def test_a_format_split_trains_on_train_and_holds_out_val(tiny_scene_dir: Path):
    scene = load_scene(tiny_scene_dir)
    scene.splits = {"train": np.arange(0, 6), "val": np.array([6, 7])}
    train, held, indices = split_holdout(scene, every=4)
    assert train.n_images == 6 and held is not None and held.n_images == 2 and indices == [6, 7]
    np.testing.assert_array_equal(held.images, scene.images[6:])
    train_only, none, empty = split_holdout(scene, every=0)
    assert train_only.n_images == 6 and none is None and empty == []


def test_scoring_renders_half_the_samples_and_never_fewer_than_the_samplers_need():
    quick = scoring_render_config(RenderConfig(n_eval=48, n_importance=24, n_extra=12))
    assert (quick.n_eval, quick.n_importance, quick.n_extra) == (24, 12, 6)
    tiny = scoring_render_config(RenderConfig(n_eval=3, n_importance=1, n_extra=0))
    assert (tiny.n_eval, tiny.n_importance, tiny.n_extra) == (3, 1, 0)
    assert scoring_render_config(RenderConfig(n_importance=0, n_extra=5)).n_importance == 0
