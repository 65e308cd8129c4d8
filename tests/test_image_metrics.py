"""SSIM against a hand-written reference of the NeRF papers' formula, and LPIPS's plumbing (the real network
only where the package and its weights are installed)."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from recon.holdout import HoldoutScores, holdout_scores, mean_scores
from recon.image_metrics import ALEXNET_WEIGHTS, lpips_distance, lpips_model, ssim
from recon.render.image import RenderedImage


def reference_ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mip-NeRF's compute_ssim: separable 11-tap Gaussian (sigma 1.5), 'valid' filtering, K1 0.01, K2 0.03,
    per channel; returned as the map averaged over channels."""
    x = np.arange(11) - 5
    w = np.exp(-0.5 * (x / 1.5) ** 2)
    w /= w.sum()

    def blur(z: np.ndarray) -> np.ndarray:
        z = correlate1d(correlate1d(z, w, axis=0, mode="constant"), w, axis=1, mode="constant")
        return z[5:-5, 5:-5]

    c1, c2 = 0.01**2, 0.03**2
    out = []
    for ch in range(3):
        p, q = a[..., ch], b[..., ch]
        mu_p, mu_q = blur(p), blur(q)
        var_p, var_q, cov = blur(p * p) - mu_p**2, blur(q * q) - mu_q**2, blur(p * q) - mu_p * mu_q
        out.append((2 * mu_p * mu_q + c1) * (2 * cov + c2) / ((mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2)))
    return np.mean(out, axis=0)


def images(seed: int = 0, size: tuple[int, int] = (40, 48)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = np.clip(rng.random(size + (3,)) * 0.5 + np.linspace(0, 0.5, size[1])[None, :, None], 0, 1)
    return np.clip(target + 0.1 * rng.standard_normal(target.shape), 0, 1), target


def test_ssim_equals_the_nerf_papers_formula():
    rgb, target = images()
    ref = reference_ssim_map(rgb, target)
    assert ssim(rgb, target) == pytest.approx(ref.mean(), abs=1e-9)
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    mask[10:30, 5:25] = True
    assert ssim(rgb, target, mask) == pytest.approx(ref[mask[5:-5, 5:-5]].mean(), abs=1e-9)
    assert ssim(target, target) == pytest.approx(1.0)
    assert ssim(rgb[:10], target[:10]) is None  # smaller than the window


def test_holdout_scores_carry_ssim_inside_the_mask_and_whole():
    rgb, target = images(1)
    mask = np.zeros(rgb.shape[:2], dtype=np.float32)
    mask[8:32, 8:40] = 1.0
    rendered = RenderedImage(rgb, target, np.zeros_like(rgb), np.zeros(rgb.shape[:2]), mask.copy(), mask, 0.0)
    scores = holdout_scores(rendered)
    assert scores.ssim == pytest.approx(ssim(rgb, target, mask > 0.5))
    assert scores.ssim_full == pytest.approx(ssim(rgb, target)) and scores.ssim != scores.ssim_full
    unmasked = holdout_scores(RenderedImage(rgb, target, rgb, rgb[..., 0], rgb[..., 0], None, 0.0))
    assert unmasked.as_dict().keys() >= {"psnr", "ssim"} and unmasked.ssim_full is None
    means = mean_scores([HoldoutScores(20.0, 0.5, mask_iou=0.9), HoldoutScores(30.0, 0.7)])
    assert means == {"psnr": 25.0, "ssim": pytest.approx(0.6)}  # a score one view lacks is left out


class FakeLpips(torch.nn.Module):
    """Stands in for lpips.LPIPS: the mean absolute difference of its inputs."""

    def __init__(self, net: str, verbose: bool) -> None:
        super().__init__()
        assert net == "alex"

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.shape[:2] == (1, 3) and a.min() >= -1 and a.max() <= 1
        return (a - b).abs().mean().reshape(1, 1, 1, 1)


@pytest.fixture
def fake_lpips(monkeypatch, tmp_path: Path):
    """An ``lpips`` package whose weights are present (linear layers in the package, AlexNet in the hub cache)."""
    package = tmp_path / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "weights" / "v0.1" / "alex.pth").write_bytes(b"x")
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / ALEXNET_WEIGHTS).write_bytes(b"x")
    module = types.ModuleType("lpips")
    module.__file__ = str(package / "__init__.py")
    module.LPIPS = FakeLpips
    monkeypatch.setitem(sys.modules, "lpips", module)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    lpips_model.cache_clear()
    yield hub
    lpips_model.cache_clear()


def test_lpips_scores_when_the_weights_are_present(fake_lpips):
    rgb, target = images(2)
    expected = 2 * np.abs(rgb.astype(np.float32) - target.astype(np.float32)).mean()  # inputs scaled to [-1, 1]
    assert lpips_distance(rgb, target) == pytest.approx(expected, rel=1e-5)
    assert holdout_scores(RenderedImage(rgb, target, rgb, rgb[..., 0], rgb[..., 0], None, 0.0)).lpips \
        == pytest.approx(expected, rel=1e-5)
    assert lpips_distance(rgb[:20], target[:20]) is None  # too small for AlexNet


def test_lpips_left_out_with_one_info_line_without_weights(fake_lpips, caplog):
    (fake_lpips / "checkpoints" / ALEXNET_WEIGHTS).unlink()
    rgb, target = images(3)
    with caplog.at_level(logging.INFO, logger="recon.image_metrics"):
        assert lpips_distance(rgb, target) is None and lpips_distance(rgb, target) is None
    assert len(caplog.records) == 1 and "never downloads" in caplog.records[0].getMessage()


def test_lpips_left_out_without_the_package(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "lpips", None)
    lpips_model.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="recon.image_metrics"):
            assert lpips_distance(*images(4)) is None
        assert "recon[lpips]" in caplog.records[0].getMessage()
    finally:
        lpips_model.cache_clear()


def test_real_lpips_when_installed():
    lpips_model.cache_clear()
    if lpips_model() is None:
        pytest.skip("the lpips package or its weights are not installed here")
    rgb, target = images(5, (64, 64))
    assert lpips_distance(target, target) == pytest.approx(0.0, abs=1e-6)
    assert lpips_distance(rgb, target) > lpips_distance(0.5 * rgb + 0.5 * target, target) > 0
