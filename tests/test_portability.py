"""Runs move between machines: a checkpoint written with one encoding backend (or on one device) loads,
extracts and resumes with another. Tested on the CPU by saving from one backend and loading into the
others (the Triton kernels under the interpreter, tiny-cuda-nn as a stand-in); ``tests/test_cuda.py``
adds the real CPU <-> CUDA moves on a GPU machine."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST_FIT
from recon.config import load_config
from recon.encodings import FusedGridEncoding, TorchGridEncoding, TritonGridEncoding, cpp_build
from recon.encodings.tcnn_backend import TcnnGridEncoding
from recon.extract import run_mesh
from recon.run import RunDir, load_model
from recon.train import fit, reseed
from test_encodings import fake_tinycudann

SMALL_GRID = ["encoding.n_levels=3", "encoding.log2_hashmap_size=10", "encoding.finest_resolution=32",
              "encoding.dense_resolution=12", "encoding.dense_features=2"]


@pytest.fixture(scope="module")
def fused_run(tiny_scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short hash-grid fit whose checkpoint the fused CPU kernel wrote (pure PyTorch without a compiler)."""
    backend = "fused" if cpp_build.load_extension() is not None else "torch"
    run = tmp_path_factory.mktemp("fused") / "run"
    cfg = load_config(None, FAST_FIT + SMALL_GRID + ["train.iters=6", f"encoding.backend={backend}"])
    fit(tiny_scene_dir, run, cfg, progress=False)
    return run


def sdf_at(model, points: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.field.sdf(points)


def rewrite_checkpoint(run: Path, out: Path, **changes: str) -> Path:
    """A copy of ``run`` whose checkpoint says it was fitted with other ``train``/``encoding`` settings
    (``device``, ``backend``) and, for ``generator_device``, that its generator lived there."""
    out.mkdir(parents=True)
    for item in run.iterdir():
        if item.is_file():
            (out / item.name).write_bytes(item.read_bytes())
    state = RunDir(out).read_checkpoint()
    if "device" in changes:
        state["config"]["train"]["device"] = changes["device"]
    if "backend" in changes:
        state["config"]["encoding"]["backend"] = changes["backend"]
    if "generator_device" in changes:
        state["generator_device"] = changes["generator_device"]
        state["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: no CPU one
    RunDir(out).save_checkpoint(state)
    return out


@pytest.mark.parametrize("backend", ["torch", "triton", "tcnn"])
def test_a_checkpoint_loads_into_every_backend(
    fused_run: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused backend's table, read by the pure-PyTorch grid, the Triton kernels and tiny-cuda-nn's
    Encoding: the same SDF everywhere."""
    reference = load_model(fused_run, torch.device("cpu"))
    assert type(reference.field.sdf_net.encoding) in (FusedGridEncoding, TorchGridEncoding)
    if backend == "tcnn":  # its stand-in interpolates like the reference grid, with its own table
        stand_in = TorchGridEncoding(reference.cfg.encoding, "hashgrid")
        monkeypatch.setitem(sys.modules, "tinycudann", fake_tinycudann(stand_in))
        monkeypatch.setattr(TcnnGridEncoding, "unavailable", classmethod(lambda cls, device: None))
        monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    moved = rewrite_checkpoint(fused_run, fused_run.parent / f"as_{backend}", backend=backend)
    model = load_model(moved, torch.device("cpu"))
    expected = {"torch": TorchGridEncoding, "triton": TritonGridEncoding, "tcnn": TcnnGridEncoding}[backend]
    assert type(model.field.sdf_net.encoding) is expected
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    torch.testing.assert_close(sdf_at(model, points), sdf_at(reference, points), rtol=1e-5, atol=1e-6)


def test_a_gpu_run_extracts_on_the_cpu(fused_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint that says CUDA and tiny-cuda-nn (as one written on a GPU machine) extracts here:
    the device and the backend fall back to what this machine has, with a warning, and the mesh is
    the original run's."""
    moved = rewrite_checkpoint(fused_run, tmp_path / "gpu_run", device="cuda", backend="tcnn")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tests/test_cuda.py moves runs to it for real")
    with caplog.at_level(logging.WARNING, logger="recon.run"):
        mesh = run_mesh(moved, 32, progress=False)
    assert any("tcnn" in r.getMessage() for r in caplog.records)
    assert any("train.device=cuda" in r.getMessage() for r in caplog.records)
    original = run_mesh(fused_run, 32, progress=False)
    torch.testing.assert_close(torch.as_tensor(mesh.vertices), torch.as_tensor(original.vertices))


def test_a_run_resumes_across_devices_from_a_derived_seed(
    fused_run: Path, tiny_scene_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint whose generator state belongs to another device (CUDA) resumes here: its tables,
    optimiser and step carry on, the random draws from the seed ``reseed(seed, step)``."""
    moved = rewrite_checkpoint(fused_run, tmp_path / "moved", generator_device="cuda", backend="triton")
    cfg = load_config(None, FAST_FIT + SMALL_GRID + ["train.iters=8"])
    with caplog.at_level(logging.WARNING):
        fit(tiny_scene_dir, moved, cfg, progress=False, asked=["train.iters"])
    assert any("not bit-identical" in r.getMessage() for r in caplog.records)
    state = RunDir(moved).read_checkpoint()
    assert state["step"] == 8 and state["generator_device"] == "cpu"
    steps = [record["step"] for record in RunDir(moved).training_log()]
    assert steps[-1] == 8 and steps == sorted(steps)
    generator = torch.Generator().manual_seed(reseed(0, 6))
    assert reseed(0, 6) != reseed(0, 7) != reseed(1, 6)
    assert generator.initial_seed() == reseed(0, 6)
