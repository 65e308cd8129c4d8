"""Datasets: every loader returns a :class:`Scene` normalised to the unit sphere."""

from __future__ import annotations

from pathlib import Path

from recon.datasets.dtu import load_dtu
from recon.datasets.scene import Scene
from recon.datasets.synthetic import SynthReport, synthesize

__all__ = ["Scene", "SynthReport", "load_dtu", "load_scene", "synthesize"]


def load_scene(data_dir: str | Path) -> Scene:
    """Load the scene at ``data_dir`` (for now: the DTU/IDR/NeuS layout)."""
    return load_dtu(data_dir)
