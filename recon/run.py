"""A run directory, in one place: its files, config and meta, checkpoints, the metrics log, the
model it holds, and the rule for resuming it.

Layout of a run ``RUN``::

    RUN/config.yaml       the resolved configuration
    RUN/meta.json         data folder, image size, scale matrix, background, parameter counts
    RUN/metrics.jsonl     one JSON line per logged step (and the held-out scores at the end)
    RUN/checkpoint.pt     everything a resume needs, written atomically
    RUN/val/              validation renders, step_XXXXXX.png
    RUN/holdout.json      held-out scores; RUN/holdout/view_NNN.png their renders
    RUN/tensorboard/      TensorBoard event files (train.tensorboard; recon.monitor)
    RUN/mesh.ply          (comparison arms) the extracted mesh, in world units
    RUN/result.json       (comparison arms) the arm's measurements, written last

A comparison keeps one run per arm and seed in ``arm_run_dir(out, arm, seed)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from recon.config import Config, config_from_dict, config_to_dict
from recon.errors import InputError
from recon.fields import NeuralSDF
from recon.io import atomic_path, write_json_atomic, write_text_atomic
from recon.render.background import Background, background_from_description
from recon.render.density import Density, make_density

RESUMABLE_CHANGES = (
    "train.iters", "train.device", "train.threads", "train.log_every", "train.val_every", "train.ckpt_every",
    "encoding.backend", "data.max_rays", "train.tensorboard",
)
"""Settings a resumed run may take from the new command: they change neither what is fitted nor how
(the step count, where and how fast it runs, how often it reports). Any other change is refused."""


def arm_run_dir(out_dir: str | Path, arm: str, seed: int) -> Path:
    """The run directory of one arm and seed of a comparison: ``OUT/<arm>/seed<k>``."""
    return Path(out_dir) / arm / f"seed{seed}"


class _Entry:
    """A file or folder of a run directory: ``RunDir.<entry>`` is its path."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: RunDir | None, owner: type) -> Path:
        return run.root / self.name  # type: ignore[union-attr]


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory."""

    root: Path
    config = _Entry("config.yaml")
    meta = _Entry("meta.json")
    metrics = _Entry("metrics.jsonl")
    checkpoint = _Entry("checkpoint.pt")
    val_dir = _Entry("val")
    holdout = _Entry("holdout.json")
    holdout_dir = _Entry("holdout")
    tensorboard = _Entry("tensorboard")
    mesh = _Entry("mesh.ply")
    result = _Entry("result.json")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------ config and meta

    def write_config(self, cfg: Config) -> None:
        write_text_atomic(self.config, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def read_config(self) -> Config | None:
        """The saved ``config.yaml`` (None when there is none yet)."""
        if not self.config.is_file():
            return None
        return config_from_dict(yaml.safe_load(self.config.read_text()) or {}, str(self.config), migrate=True)

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json_atomic(self.meta, meta)

    def read_meta(self) -> dict[str, Any]:
        """``meta.json``; an ``InputError`` when the run has none."""
        if not self.meta.is_file():
            raise InputError(self.root, "no meta.json: not a recon run directory")
        return json.loads(self.meta.read_text())

    def holdout_summary(self) -> dict[str, Any] | None:
        """``holdout.json``, or None when the run held no views out."""
        return json.loads(self.holdout.read_text()) if self.holdout.is_file() else None

    # ------------------------------------------------------------------ the metrics log

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one line to ``metrics.jsonl``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete line of ``metrics.jsonl`` (a line cut short by a crash is skipped)."""
        if not self.metrics.is_file():
            return []
        records = []
        for line in self.metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def training_log(self) -> list[dict[str, Any]]:
        """The training steps' lines of the log (those with a loss and a time)."""
        return [r for r in self.read_metrics() if "loss" in r and "elapsed_s" in r]

    def truncate_metrics(self, step: int) -> None:
        """Drop the log lines written after ``step`` (the checkpoint a resume continues from)."""
        if not self.metrics.is_file():
            return
        kept = [line for line in self.metrics.read_text().splitlines() if _logged_step(line) <= step]
        write_text_atomic(self.metrics, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` atomically."""
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint's state on the CPU (None when there is none); unreadable: ``InputError``."""
        if not self.checkpoint.is_file():
            return None
        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is one user-facing error
            raise InputError(self.checkpoint, f"unreadable checkpoint ({type(err).__name__})") from None

    def checkpoint_config(self, state: dict[str, Any]) -> Config:
        """The config a checkpoint was saved with."""
        return config_from_dict(state["config"], str(self.checkpoint), migrate=True)


def _logged_step(line: str) -> float:
    """The step of a log line; a line cut short by a crash counts as never written."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


# ---------------------------------------------------------------------- resuming


def resume_config(saved: Config, requested: Config, where: str | Path, asked: Collection[str] | None = None) -> Config:
    """The config a run resumes with: the saved one, with the ``RESUMABLE_CHANGES`` the new command
    asks for. A command that asks for any other setting than the saved one is refused with an
    ``InputError`` naming the keys. ``asked``: the keys the command sets itself (a config file,
    overrides; the others are defaults and the saved values stand); None: every key counts."""
    old, new = config_to_dict(saved), config_to_dict(requested)
    changed = [f"{section}.{key} {old[section][key]!r}, not {value!r}" for section, values in new.items()
               for key, value in values.items()
               if old[section][key] != value and f"{section}.{key}" not in RESUMABLE_CHANGES
               and (asked is None or f"{section}.{key}" in asked)]
    if changed:
        shown = "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else "")
        raise InputError(where, f"was fitted with other settings ({shown}); use another output folder for these")
    for name in RESUMABLE_CHANGES:
        section, key = name.split(".")
        if asked is None or name in asked or name == "train.iters":
            setattr(getattr(saved, section), key, getattr(getattr(requested, section), key))
    return saved


def check_resumable(run_dir: str | Path, requested: Config, asked: Collection[str] | None = None) -> None:
    """Raise the ``resume_config`` error now when ``run_dir`` holds a run that ``requested`` may not
    resume (nothing is read but its ``config.yaml``)."""
    run = RunDir(Path(run_dir))
    saved = run.read_config()
    if saved is not None:
        resume_config(saved, requested, run.root, asked)


# ---------------------------------------------------------------------- the model


def choose_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("train.device", "CUDA was asked for but is not available")
    return torch.device(name)


def build_model(cfg: Config, n_images: int, device: torch.device) -> tuple[NeuralSDF, Density]:
    """Fresh field and density for a config."""
    field = NeuralSDF(cfg.geometry, cfg.encoding, cfg.color, n_images, cfg.render.scene_radius, device).to(device)
    return field, make_density(cfg.render).to(device)


@dataclass
class Model:
    """A fitted run: its networks, config and the scene's normalisation (normalised -> world)."""

    field: NeuralSDF
    density: Density
    background: Background
    cfg: Config
    scale_mat: np.ndarray
    meta: dict[str, Any]


def load_model(run_dir: str | Path, device: torch.device | None = None) -> Model:
    """Restore a run's networks from its checkpoint, in eval mode."""
    run = RunDir(Path(run_dir))
    state = run.read_checkpoint()
    if state is None:
        raise InputError(run.root, "no checkpoint.pt: not a recon run directory, or its fit has not saved yet")
    cfg = run.checkpoint_config(state)
    device = device or choose_device(cfg.train.device)
    meta = state["meta"]
    field, density = build_model(cfg, meta["n_images"], device)
    field.load_state_dict(state["field"])
    density.load_state_dict(state["density"])
    background = background_from_description(meta["background"], cfg.render).to(device)
    if state.get("background") is not None:
        background.load_state_dict(state["background"])
    for module in (field, density, background):
        module.eval()
    return Model(field, density, background, cfg, np.asarray(meta["scale_mat"]), meta)
