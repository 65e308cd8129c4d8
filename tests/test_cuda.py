"""On a CUDA GPU: the Triton kernels (and tiny-cuda-nn, when it imports) at realistic sizes against the
pure-PyTorch grid, a training step that never waits for the GPU, a short fit, and runs moved between
the CPU and the GPU. Every test here is marked ``cuda`` and skipped without a GPU; none needs open3d
(``RECON_TINY_SCENE`` names a scene made beforehand where open3d is missing: benchmarks/gpu_check.sh)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import FAST_FIT
from recon.config import EncodingConfig, load_config
from recon.datasets import load_scene
from recon.encodings import TcnnGridEncoding, TorchGridEncoding, TritonGridEncoding, make_encoding
from recon.run import RunDir, load_model
from recon.train import Fitter, fit

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
ON_CUDA = [item.replace("train.device=cpu", "train.device=cuda") for item in FAST_FIT]


def passes(enc, x: torch.Tensor, head: torch.Tensor) -> list[torch.Tensor]:
    """Features; the eikonal pass's d(features . head)/dx; a training loss's grads to table and points."""
    xg = x.clone().requires_grad_(True)
    feats = enc(xg)
    (gx,) = torch.autograd.grad(feats @ head, xg, torch.ones(len(x), device=x.device), create_graph=True)
    loss = ((gx.norm(dim=-1) - 1.0) ** 2).mean() + feats.square().mean()
    return [feats.detach(), gx.detach(), *torch.autograd.grad(loss, [enc.params, xg])]


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Equal within ``rel`` of the largest magnitude (float32 atomics add in any order)."""
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(expected.abs().max().item(), 1e-6))


@pytest.mark.parametrize("kind", ["hashgrid", "densegrid"])
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_triton_kernels_match_reference_at_full_size(kind: str, interpolation: str) -> None:
    """MonoSDF's hash grid (12.2 M parameters, 16 levels) and its parameter-matched dense grid, 2^16 points."""
    cfg = EncodingConfig(interpolation=interpolation, init_scale=1e-2)
    torch.manual_seed(0)
    ref = TorchGridEncoding(cfg, kind).to(CUDA)
    fast = TritonGridEncoding(cfg, kind, CUDA)
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(1 << 16, 3, device=CUDA)
    head = torch.randn(ref.out_dim, device=CUDA)
    for got, want in zip(passes(fast, x, head), passes(ref, x, head)):
        assert_close_to_scale(got, want, 1e-4)


def test_tinycudann_matches_reference_when_it_imports() -> None:
    if TcnnGridEncoding.unavailable(CUDA) is not None:
        pytest.skip(f"tinycudann: {TcnnGridEncoding.unavailable(CUDA)}")
    cfg = EncodingConfig(init_scale=1e-2)
    ref = TorchGridEncoding(cfg, "hashgrid").to(CUDA)
    tcnn = TcnnGridEncoding(cfg, "hashgrid", CUDA)
    tcnn.load_state_dict(ref.state_dict())
    x = torch.rand(1 << 16, 3, device=CUDA)
    with torch.no_grad():
        assert_close_to_scale(tcnn(x), ref(x), 1e-3)


def test_auto_picks_a_gpu_backend() -> None:
    enc = make_encoding(EncodingConfig(), "hashgrid", CUDA)
    assert type(enc) is (TcnnGridEncoding if TcnnGridEncoding.unavailable(CUDA) is None else TritonGridEncoding)
    assert enc.params.device.type == "cuda"


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_training_step_never_waits_for_the_gpu(tiny_scene_dir: Path, tmp_path: Path, backend: str) -> None:
    """torch's own sync detector, set to raise, around a whole step (the occupancy update excepted)."""
    cfg = load_config(None, ON_CUDA + ["train.batch_rays=256", f"encoding.backend={backend}"])
    fitter = Fitter(load_scene(tiny_scene_dir), tmp_path / "run", cfg, tiny_scene_dir)
    assert not fitter.compact and fitter.generator.device.type == "cuda"
    fitter.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        terms = fitter.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(t) for t in terms.values())


def test_the_same_seed_draws_the_same_batches_on_cuda(tiny_scene_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(None, ON_CUDA)
    scene = load_scene(tiny_scene_dir)
    a, b = (Fitter(scene, tmp_path / name, cfg, tiny_scene_dir) for name in "ab")
    batches = [f.rays.random_batch(64, f.generator) for f in (a, b)]
    assert torch.equal(batches[0].origins, batches[1].origins) and batches[0].origins.device.type == "cuda"


def test_a_cuda_fit_extracts_on_both_devices(tiny_scene_dir: Path, tmp_path: Path) -> None:
    fit(tiny_scene_dir, tmp_path / "run", load_config(None, ON_CUDA + ["train.iters=30"]), progress=False)
    log = RunDir(tmp_path / "run").training_log()
    assert log[-1]["step"] == 30 and log[-1]["psnr"] > log[0]["psnr"]
    on_gpu, on_cpu = (load_model(tmp_path / "run", torch.device(d)) for d in ("cuda", "cpu"))
    points = torch.rand(500, 3) * 1.6 - 0.8
    with torch.no_grad():
        gpu_sdf, cpu_sdf = on_gpu.field.sdf(points.to(CUDA)).cpu(), on_cpu.field.sdf(points)
    torch.testing.assert_close(gpu_sdf, cpu_sdf, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("first", "then"), [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_run_resumes_on_the_other_device(
    tiny_scene_dir: Path, tmp_path: Path, first: str, then: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    base = [item for item in FAST_FIT if not item.startswith("train.device")]
    fit(tiny_scene_dir, run, load_config(None, base + ["train.iters=10", f"train.device={first}"]), progress=False)
    with caplog.at_level(logging.WARNING):
        fit(tiny_scene_dir, run, load_config(None, base + ["train.iters=20", f"train.device={then}"]), progress=False,
            asked=["train.iters", "train.device"])
    assert any("not bit-identical" in r.getMessage() for r in caplog.records)
    state = RunDir(run).read_checkpoint()
    assert state["step"] == 20 and state["generator_device"] == then
