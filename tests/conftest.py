"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic scene at 8 views of 32x32 (DTU layout). Treat as read-only."""
    from recon.datasets import synthesize

    out = tmp_path_factory.mktemp("tiny_scene") / "scene"
    synthesize(out, n_views=8, size=32, seed=0, mesh_resolution=64)
    return out


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The staged public data (``../shared/data`` beside the repo); may not exist."""
    return SHARED_DATA
