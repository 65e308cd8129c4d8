"""A run directory, in one place: its files, config and meta, checkpoints, the metrics log, the
model it holds, and the rule for resuming it.

Layout of a run ``RUN``::

    RUN/config.yaml       the resolved configuration
    RUN/meta.json         data folder, image size, scale matrix, background, parameter counts
    RUN/metrics.jsonl     one JSON line per logged step (and the held-out scores at the end)
    RUN/checkpoint.pt     everything a resume needs (tensors and plain containers), written atomically
    RUN/.recon.lock       while a process writes the run: its lock (``RunDir.writing``)
    RUN/val/              validation renders, step_XXXXXX.png
    RUN/holdout.json      held-out scores; RUN/holdout/view_NNN.png their renders
    RUN/tensorboard/      TensorBoard event files (train.tensorboard; recon.monitor)
    RUN/mesh.ply          (comparison arms) the extracted mesh, in world units
    RUN/result.json       (comparison arms) the arm's measurements, written last
    RUN/error.txt         (comparison arms) the traceback of a failed arm

A comparison keeps one run per arm and seed in ``arm_run_dir(out, arm, seed)``; a sweep one per
scene, arm and seed in ``sweep_run_dir(out, scene, arm, seed)``. A failed arm's ``result.json``
says so (``status: failed``) and ``RUN/error.txt`` holds the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from recon.config import Config, config_from_dict, config_to_dict
from recon.encodings import backend_class
from recon.errors import InputError
from recon.fields import NeuralSDF
from recon.io import atomic_path, folder_lock, json_text, remove_temp_files, write_json_atomic, write_text_atomic
from recon.render.background import Background, background_from_description
from recon.render.density import Density, make_density
from recon.render.occupancy import OccupancyGrid, make_occupancy_grid

logger = logging.getLogger(__name__)

RESUMABLE_CHANGES = (
    "train.iters", "train.device", "train.threads", "train.log_every", "train.val_every", "train.ckpt_every",
    "train.matmul_precision", "train.tensorboard", "encoding.backend", "data.max_rays",
)
"""Settings a resumed run may take from the new command: they change neither what is fitted nor how
(the step count, where and how fast it runs, how often it reports). Any other change is refused."""


def arm_run_dir(out_dir: str | Path, arm: str, seed: int) -> Path:
    """The run directory of one arm and seed of a comparison: ``OUT/<arm>/seed<k>``."""
    return Path(out_dir) / arm / f"seed{seed}"


def sweep_run_dir(out_dir: str | Path, scene: str, arm: str, seed: int) -> Path:
    """The run directory of one scene, arm and seed of a sweep: ``OUT/<scene>/<arm>/seed<k>``
    (each scene's folder is laid out as a comparison)."""
    return arm_run_dir(Path(out_dir) / scene, arm, seed)


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
    error = _Entry("error.txt")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the run's lock (``recon.io.folder_lock``: another process writing it is an
        ``InputError``) and remove the temporary files that interrupted writes left behind."""
        with folder_lock(self.root):
            remove_temp_files([self.root, self.val_dir, self.holdout_dir])
            yield

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
        """``meta.json``; an ``InputError`` when the run has none, or a broken one."""
        if not self.meta.is_file():
            raise InputError(self.root, "no meta.json: not a recon run directory")
        try:
            meta = json.loads(self.meta.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(self.meta, f"not valid JSON ({type(err).__name__}: {' '.join(str(err).split())})") from None
        if not isinstance(meta, dict):
            raise InputError(self.meta, "not a recon meta.json (not a JSON object)")
        return meta

    def holdout_summary(self) -> dict[str, Any] | None:
        """``holdout.json``, or None when the run held no views out."""
        return json.loads(self.holdout.read_text()) if self.holdout.is_file() else None

    # ------------------------------------------------------------------ the metrics log

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one line to ``metrics.jsonl``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a") as handle:
            handle.write(json_text(record) + "\n")

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

    def checkpoint_stamp(self) -> tuple[int, int, int] | None:
        """Identity of the checkpoint file on disk (inode, mtime, size), None when there is none:
        a writer checks under the lock that no other process replaced it since it was read."""
        try:
            stat = self.checkpoint.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` atomically."""
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint's state on the CPU (None when there is none). It is read as tensors and
        plain containers only (``weights_only``: no code a file pickles is ever run); a file that
        is not a recon checkpoint is an ``InputError``."""
        if not self.checkpoint.is_file():
            return None
        if self.checkpoint.stat().st_size == 0:
            raise InputError(self.checkpoint, "file is empty (0 bytes): not a recon checkpoint")
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not for the user
                warnings.simplefilter("ignore")
                state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise InputError(self.checkpoint, "not a recon checkpoint: it holds objects other than tensors and "
                             "plain containers (refused unloaded; nothing in it was run)") from None
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is one user-facing error
            raise InputError(self.checkpoint, f"not a readable checkpoint, truncated or corrupt ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:120]})") from None
        if not isinstance(state, dict):
            raise InputError(self.checkpoint, f"not a recon checkpoint (holds a {type(state).__name__}, not a mapping)")
        missing = [key for key in CHECKPOINT_KEYS if key not in state]
        if missing:
            raise InputError(self.checkpoint, f"not a recon checkpoint (no {', '.join(missing)})")
        wrong = [key for key, kind in CHECKPOINT_KEYS.items() if not isinstance(state[key], kind)]
        if wrong:
            raise InputError(self.checkpoint, f"not a recon checkpoint ({', '.join(wrong)} of the wrong type)")
        return state

    def checkpoint_config(self, state: dict[str, Any]) -> Config:
        """The config a checkpoint was saved with."""
        return config_from_dict(state["config"], str(self.checkpoint), migrate=True)


CHECKPOINT_KEYS = {"field": dict, "density": dict, "optimizer": dict, "step": int, "config": dict, "meta": dict}
"""What every recon checkpoint holds (``RunDir.read_checkpoint`` refuses a file without them)."""


def non_finite_tensors(named: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors in ``named`` that hold NaN or inf (one host sync for all of them)."""
    floats = {name: t for name, t in named.items() if torch.is_tensor(t) and t.is_floating_point() and t.numel()}
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(t).all() for t in floats.values()]).cpu()
    return [name for name, ok in zip(floats, finite.tolist()) if not ok]


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


def runnable_here(saved: Config, device: torch.device | None = None) -> Config:
    """A saved run's config, made to run on this machine (on ``device`` when given): ``train.device``
    auto when it names CUDA and there is none, ``encoding.backend`` auto when the saved backend
    cannot run on the device (tcnn or triton off CUDA, fused off the CPU). Checkpoints are
    backend-neutral, so a run moves between CPU and GPU machines; nothing else changes."""
    train, encoding = saved.train, saved.encoding
    if device is None and train.device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("the run was fitted with train.device=%s; there is no CUDA here: device auto", train.device)
        train = replace(train, device="auto")
    device = device or choose_device(train.device)
    if encoding.backend != "auto" and backend_class(encoding.backend, device).unavailable(device) is not None:
        logger.warning("the run was fitted with encoding.backend=%s, which cannot run on %s: backend auto",
                       encoding.backend, device)
        encoding = replace(encoding, backend="auto")
    return replace(saved, train=train, encoding=encoding)


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
        raise InputError("train.device", f"{name} was asked for but CUDA is not available (use auto or cpu)")
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

    def occupancy_grid(self) -> OccupancyGrid | None:
        """The config's occupancy grid (``render.occupancy_resolution``; None when 0), marked from this
        model's SDF and density as they are now: whole views skip the empty space with it."""
        device = next(self.field.parameters()).device
        grid = make_occupancy_grid(self.cfg.render, device)
        if grid is not None:
            grid.update(self.field.sdf, float(self.density.current_beta().detach()))
        return grid


def load_model(run_dir: str | Path, device: torch.device | None = None) -> Model:
    """Restore a run's networks from its checkpoint, in eval mode."""
    run = RunDir(Path(run_dir))
    state = run.read_checkpoint()
    if state is None:
        raise InputError(run.root, "no checkpoint.pt: not a recon run directory, or its fit has not saved yet")
    cfg = runnable_here(run.checkpoint_config(state), device)
    bad = non_finite_tensors({f"field.{k}": v for k, v in state["field"].items()})
    if bad:
        raise InputError(run.checkpoint, f"the checkpoint holds non-finite parameters (NaN or inf) in {len(bad)} "
                         f"tensors ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): its fit diverged; "
                         "fit again with a lower train.lr")
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
