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
