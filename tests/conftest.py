"""Shared fixtures, the ``cuda`` marker, and Triton's interpreter on machines without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # Triton reads this when its kernels are decorated (at the import of
    # recon.encodings.triton_kernels, which nothing does before the tests run): without a GPU
    # the Triton backend then runs its kernels on CPU tensors, so every pass is tested here too.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` when torch sees no CUDA device."""
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic scene at 8 views of 32x32 (DTU layout). Treat as read-only.

    ``RECON_TINY_SCENE`` names one made beforehand (``make_tiny_scene``), for a machine without
    open3d (which the synthesis needs): ``benchmarks/gpu_check.sh``."""
    if os.environ.get("RECON_TINY_SCENE"):
        return Path(os.environ["RECON_TINY_SCENE"])
    return make_tiny_scene(tmp_path_factory.mktemp("tiny_scene") / "scene")


def make_tiny_scene(out: Path) -> Path:
    """Write the tiny scene of ``tiny_scene_dir`` to ``out``."""
    from recon.datasets import synthesize

    synthesize(out, n_views=8, size=32, seed=0, mesh_resolution=64)
    return out


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The staged public data (``../shared/data`` beside the repo); may not exist."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic scene at 16 views of 48x48, for short learning tests. Read-only."""
    from recon.datasets import synthesize

    out = tmp_path_factory.mktemp("small_scene") / "scene"
    synthesize(out, n_views=16, size=48, seed=1, mesh_resolution=96)
    return out


# Small, fast settings for fits inside tests (section.key=value overrides).
FAST_FIT = [
    "train.device=cpu",  # the CPU tests stay on the CPU on a GPU machine; tests/test_cuda.py covers CUDA
    "encoding.n_levels=6",
    "encoding.log2_hashmap_size=14",
    "encoding.finest_resolution=96",
    "encoding.dense_resolution=32",
    "encoding.dense_features=4",
    "geometry.hidden_dim=32",
    "geometry.feature_dim=16",
    "color.hidden_dim=32",
    "render.n_eval=32",
    "render.n_importance=16",
    "render.n_extra=8",
    "train.batch_rays=256",
    "train.val_every=0",
    "train.log_every=10",
    "mesh.resolution=48",
]


def sphere_rays(n: int, seed: int = 0, spread: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from 2.5 away towards points drawn with std ``spread`` around the centre: hits,
    grazes and misses of a sphere of radius 0.5. Returns origins, unit directions (n, 3)."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=g)
    origins = 2.5 * origins / origins.norm(dim=-1, keepdim=True)
    dirs = spread * torch.randn(n, 3, generator=g) - origins
    return origins, dirs / dirs.norm(dim=-1, keepdim=True)


def assert_refused(root: Path, expected: list[str], capsys: pytest.CaptureFixture) -> None:
    """Loading the capture at ``root`` fails with a one-line InputError holding every ``expected``
    text, and ``recon check`` prints that line and exits with code 2."""
    from recon.cli import main
    from recon.datasets import load_scene
    from recon.errors import InputError

    with pytest.raises(InputError) as err:
        load_scene(root)
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert main(["check", str(root)]) == 2
    assert capsys.readouterr().err.strip() == f"recon check: error: {message}"


# A sweep of two tiny scenes x two arms (tests/test_sweep.py, tests/test_sweep_ray.py).
SWEEP_ARMS = ("hashgrid", "densegrid")
SWEEP_OVERRIDES = tuple(FAST_FIT + ["train.iters=6", "train.ckpt_every=3"])


@pytest.fixture(scope="session")
def two_scenes(tiny_scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YAML file listing two tiny scenes, named a and b. Read-only."""
    from recon.datasets import synthesize

    root = tmp_path_factory.mktemp("two_scenes")
    synthesize(root / "other", n_views=8, size=32, seed=1, mesh_resolution=64)
    (root / "scenes.yaml").write_text(f"scenes:\n  - path: {tiny_scene_dir}\n    name: a\n  - path: other\n    name: b\n")
    return root / "scenes.yaml"


def sweep_of(scenes_file: Path, out: Path):
    """The sweep of ``scenes_file`` x ``SWEEP_ARMS`` x one seed, small meshes and metrics."""
    from recon.sweep import read_scenes, sweep_spec

    return sweep_spec(read_scenes([scenes_file]), out, SWEEP_ARMS, 1, 24, True, None, SWEEP_OVERRIDES, 5_000)


@pytest.fixture(scope="session")
def serial_sweep(two_scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-scene sweep run serially with one thread per fit: the reference results."""
    from recon.executors import SerialExecutor
    from recon.sweep import run_sweep

    out = tmp_path_factory.mktemp("serial_sweep") / "sweep"
    run_sweep(sweep_of(two_scenes, out), SerialExecutor(threads=1), progress=False)
    return out


def sweep_values(out: Path) -> dict:
    """(scene, arm, seed) -> (status, Chamfer, F@1%, detail NC, train PSNR, threads) of a sweep folder."""
    from recon.sweep import load_sweep

    values = {}
    for r in load_sweep(out).results:
        m = r.get("metrics") or {}
        values[(r["scene"], r["arm"], r["seed"])] = (
            r["status"], m.get("chamfer_l1"), m.get("fscore@0.01"), m.get("detail_normal_consistency"),
            r.get("train_psnr"), r["threads"])
    return values


def assert_same_results(got: dict, want: dict) -> None:
    """``sweep_values`` of two sweeps: the same arms, all finished, the same threads, metrics within 1e-6."""
    assert got.keys() == want.keys()
    for key in want:
        assert got[key][0] == want[key][0] == "ok" and got[key][5] == want[key][5]
        assert got[key][1:5] == pytest.approx(want[key][1:5], rel=1e-6), key
