"""Training: the learning-rate schedule, and a real learning test for both encodings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAST_FIT
from recon.config import load_config
from recon.datasets import load_scene
from recon.errors import InputError
from recon.mesh import extract_mesh, load_mesh
from recon.metrics import mesh_metrics
from recon.optim import lr_factor
from recon.run import build_model, load_model
from recon.train import Fitter, fit

import numpy as np


def test_lr_schedule_decays_exponentially_to_the_final_factor():
    cfg = load_config(None, ["train.iters=100", "train.lr_final_factor=0.1"])
    assert lr_factor(0, cfg.train) == pytest.approx(1.0)
    assert lr_factor(50, cfg.train) == pytest.approx(0.1**0.5)
    assert lr_factor(100, cfg.train) == pytest.approx(0.1)
    warm = load_config(None, ["train.iters=100", "train.warmup_iters=10"])
    assert lr_factor(0, warm.train) == pytest.approx(0.1)


def _chamfer(sdf_fn, scale_mat: np.ndarray, gt) -> float:
    mesh = extract_mesh(sdf_fn, 48, scale_mat=scale_mat)
    return mesh_metrics(mesh, gt, n_points=20_000)["chamfer_l1_rel"]


@pytest.mark.parametrize("encoding", ["hashgrid", "densegrid"])
def test_a_short_fit_moves_the_surface_towards_the_ground_truth(encoding: str, small_scene_dir: Path, tmp_path: Path):
    cfg = load_config(None, FAST_FIT + [f"geometry.arm={encoding}", "train.iters=300"])
    gt = load_mesh(small_scene_dir / "gt_mesh.ply")
    torch.manual_seed(cfg.train.seed)
    initial_field, _ = build_model(cfg, 16, torch.device("cpu"))
    fit(small_scene_dir, tmp_path / "run", cfg, progress=False)
    model = load_model(tmp_path / "run")
    before = _chamfer(initial_field.sdf, model.scale_mat, gt)
    after = _chamfer(model.field.sdf, model.scale_mat, gt)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize(
    "modes",
    [
        ["render.density=laplace", "render.sampler=error_bounded"],
        ["render.density=neus", "render.sampler=surface_guided"],
        ["render.density=neus", "render.sampler=error_bounded", "render.background=white"],
        ["render.background=black", "train.mask_weight=0"],
        ["encoding.interpolation=smoothstep", "color.appearance_dim=4", "train.warmup_iters=2"],
    ],
    ids=["laplace-error_bounded", "neus-surface_guided", "neus-error_bounded-white", "black-no-mask-loss", "smoothstep-appearance"],
)
def test_every_render_mode_trains(modes: list[str], tiny_scene_dir: Path, tmp_path: Path):
    cfg = load_config(None, FAST_FIT + modes + ["train.iters=8", "train.log_every=4"])
    fit(tiny_scene_dir, tmp_path / "run", cfg, progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    model = load_model(tmp_path / "run")
    assert model.cfg.render.density == cfg.render.density and model.cfg.render.sampler == cfg.render.sampler


def _scene_with(images: np.ndarray):
    from recon.datasets.scene import Scene

    n = images.shape[0]
    return Scene(images=images, intrinsics=np.tile(np.eye(3), (n, 1, 1)), cam_to_world=np.tile(np.eye(4), (n, 1, 1)),
                 scale_mat=np.eye(4))


def test_background_colour_auto_reads_a_uniform_border():
    from recon.render.background import background_colour

    images = np.full((2, 8, 8, 3), 255, dtype=np.uint8)
    images[:, 2:6, 2:6] = 30
    assert background_colour(_scene_with(images), "auto") == [1.0, 1.0, 1.0]
    images[:, :, 0] = np.random.default_rng(0).integers(0, 255, (2, 8, 3))
    assert background_colour(_scene_with(images), "auto") == [0.0, 0.0, 0.0]
    assert background_colour(_scene_with(images), "white") == [1.0, 1.0, 1.0]


def test_matmul_precision_is_the_fits(tiny_scene_dir: Path, tmp_path: Path):
    """train.matmul_precision sets torch's float32 matrix-product precision (the MLPs) for the fit."""
    before = torch.get_float32_matmul_precision()
    try:
        for precision in ("high", "medium", "highest"):
            cfg = load_config(None, FAST_FIT + [f"train.matmul_precision={precision}"])
            Fitter(load_scene(tiny_scene_dir), tmp_path / precision, cfg, tiny_scene_dir)
            assert torch.get_float32_matmul_precision() == precision
        with pytest.raises(InputError, match="matmul_precision"):
            load_config(None, ["train.matmul_precision=tf32"])
    finally:
        torch.set_float32_matmul_precision(before)
