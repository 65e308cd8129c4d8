"""One scene's comparison of geometry arms (MonoSDF's four-arm ablation), and the task that fits one arm.

Layout of a comparison folder ``DIR`` (and of each scene's folder in a sweep, ``recon.sweep``)::

    DIR/compare.json                the settings (scene, arms, seeds, iterations, resolution, overrides)
    DIR/<arm>/seed<k>/              one fit (a recon run directory, ``recon.run``)
    DIR/<arm>/seed<k>/mesh.ply      its mesh, in world units
    DIR/<arm>/seed<k>/result.json   parameters, fit time, PSNR, mesh metrics: written last, atomically;
                                    or ``status: failed`` with the error (``error.txt``: the traceback)

An arm (one geometry arm and seed) is finished when its ``result.json`` says ``status: ok`` and
was made with the same settings; rerunning the same command redoes only the others, failed ones
included (and the fit itself resumes from its checkpoint, under ``recon.run``'s resume rule).
Every arm gets the same config apart from ``geometry.arm``, ``train.seed`` and ``train.threads``
(the executor's thread budget): the grid arms match the hash grid's parameter count
(``encoding.dense_resolution = 0`` and ``geometry.sdf_grid_resolution = 0``).

``run_arm`` is the one task of a comparison or a sweep: a plain picklable function of its
``ArmTask`` that fits, extracts, evaluates and writes its own ``result.json``, the executors
(``recon.executors``) run it in this process, in a process pool or on Ray.
"""

from __future__ import annotations

import json
import math
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon.config import ARMS, Config, config_to_dict, load_config
from recon.errors import InputError
from recon.io import write_json_atomic, write_text_atomic
from recon.run import RunDir, arm_run_dir

SETTINGS = "compare.json"
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"
FSCORE_THRESHOLDS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)
"""F-score thresholds (x GT diagonal) evaluated for every arm: the report plots F-score against them."""
SET_BY_EXECUTOR = ("train.threads",)
"""Config keys the executor sets per task (the thread budget): refused as overrides, not part of the settings."""


@dataclass
class CompareSpec:
    """What one comparison (one scene of a sweep) fits and measures."""

    data_dir: Path
    out_dir: Path
    arms: tuple[str, ...]
    seeds: int = 1
    resolution: int = 256
    cull: bool = True
    cfg_file: Path | None = None
    overrides: tuple[str, ...] = ()
    n_points: int = 200_000
    """Samples per mesh for the metrics."""
    name: str = ""
    """The scene's name in a sweep's tables and folders (default: the data folder's name)."""

    def __post_init__(self) -> None:
        self.data_dir, self.out_dir = Path(self.data_dir), Path(self.out_dir)
        self.name = self.name or self.data_dir.resolve().name

    def run_dir(self, arm: str, seed: int) -> RunDir:
        return RunDir(arm_run_dir(self.out_dir, arm, seed))

    def config_for(self, arm: str, seed: int) -> Config:
        """The arm's config: the shared one with its geometry arm and seed."""
        extra = [f"geometry.arm={arm}", f"train.seed={seed}"]
        return load_config(self.cfg_file, [*self.overrides, *extra])

    def settings(self) -> dict[str, Any]:
        """What a finished arm must have been made with (the resume key)."""
        cfg = config_to_dict(self.config_for(self.arms[0], 0))
        cfg["geometry"].pop("arm")
        cfg["train"].pop("seed")
        for key in SET_BY_EXECUTOR:
            section, name = key.split(".")
            cfg[section].pop(name)
        return {"data_dir": str(self.data_dir.resolve()), "resolution": self.resolution, "cull": self.cull,
                "n_points": self.n_points, "config": cfg}

    def task(self, arm: str, seed: int, threads: int, progress: bool = False) -> ArmTask:
        """The task that fits, extracts and evaluates one arm and seed with ``threads`` CPU threads."""
        return ArmTask(self.name, self.data_dir, self.run_dir(arm, seed).root, arm, seed, self.cfg_file,
                       self.overrides, self.resolution, self.cull, self.n_points, self.settings(), threads, progress)


def preset_path(name: str) -> Path:
    """``configs/NAME.yaml``; an unknown name is an ``InputError`` listing the known ones."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise InputError("--preset", f"unknown preset {name!r} (known: {', '.join(known) or 'none'})")
    return path


def parse_arms(text: str) -> tuple[str, ...]:
    """``'hashgrid,densegrid'`` -> the arms, checked against the config schema's arms."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ARMS]
    if not names or bad:
        raise InputError("--arms", f"unknown arm(s) {', '.join(bad) or '(none given)'} (known: {', '.join(ARMS)})")
    if len(set(names)) != len(names):
        raise InputError("--arms", f"an arm is listed twice: {text}")
    return names


def read_result(run: RunDir) -> dict[str, Any] | None:
    """An arm's ``result.json`` (None when there is none or it is unreadable)."""
    if not run.result.is_file():
        return None
    try:
        return json.loads(run.result.read_text())
    except ValueError:
        return None


def is_ok(result: dict[str, Any]) -> bool:
    """Whether a result is a finished arm's measurements (results of earlier versions have no status)."""
    return result.get("status", "ok") == "ok"


def is_finished(run: RunDir, settings: dict[str, Any]) -> bool:
    """The arm in ``run`` finished (``status: ok``, its mesh on disk) with these settings."""
    result = read_result(run)
    return (result is not None and is_ok(result) and run.mesh.is_file()
            and result.get("settings") == json.loads(json.dumps(settings)))


def scene_up(scene) -> np.ndarray:
    """The world direction the scene's cameras hold upwards (the mean of their -y axes), for pictures."""
    up = -np.asarray(scene.cam_to_world)[:, :3, 1].mean(axis=0)
    norm = float(np.linalg.norm(up))
    return up / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])


# ----------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class ArmTask:
    """Everything one arm-fit needs, picklable: it runs wherever an executor sends it."""

    scene: str
    data_dir: Path
    run_dir: Path
    arm: str
    seed: int
    cfg_file: Path | None
    overrides: tuple[str, ...]
    resolution: int
    cull: bool
    n_points: int
    settings: dict[str, Any] = field(hash=False)
    threads: int
    """CPU threads of the fit (torch's intra-op threads); the same on every executor, so that
    multi-threaded float reductions, and so the results, do not depend on where it runs."""
    progress: bool = False

    @property
    def label(self) -> str:
        return f"{self.scene} / {self.arm} / seed {self.seed}"

    def config(self) -> Config:
        extra = [f"geometry.arm={self.arm}", f"train.seed={self.seed}", f"train.threads={self.threads}"]
        return load_config(self.cfg_file, [*self.overrides, *extra])


def run_arm(task: ArmTask) -> dict[str, Any]:
    """Fit, extract and evaluate one arm; write its ``result.json`` (last, atomically) and return it.

    Any error is recorded as the result (``status: failed``, the error's type and first line;
    ``error.txt``: the traceback), so the other arms go on.
    """
    run = RunDir(task.run_dir)
    start = time.perf_counter()
    with run.writing():  # the fit, its mesh and result.json: one writer
        try:
            result = {"status": "ok", **_fit_and_measure(task, run), "seconds": time.perf_counter() - start}
        except Exception as err:  # noqa: BLE001 - every failure of an arm is recorded, none stops the sweep
            write_text_atomic(run.error, traceback.format_exc())
            result = failed_result(task, type(err).__name__, one_line_error(err), time.perf_counter() - start)
        write_json_atomic(run.result, result)
    return result


def failed_result(task: ArmTask, error_type: str, error: str, seconds: float) -> dict[str, Any]:
    """The result of an arm that failed (also written by the driver for a worker that was lost)."""
    return {"status": "failed", "scene": task.scene, "arm": task.arm, "seed": task.seed, "settings": task.settings,
            "threads": task.threads, "host": socket.gethostname(), "error_type": error_type, "error": error,
            "seconds": seconds}


def one_line_error(err: BaseException) -> str:
    """An exception's message on one line (at most 300 characters)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _fit_and_measure(task: ArmTask, run: RunDir) -> dict[str, Any]:
    import torch

    from recon.datasets import load_data
    from recon.extract import run_mesh
    from recon.mesh import save_mesh
    from recon.train import fit

    torch.set_num_threads(task.threads)
    cfg = task.config()
    fit(task.data_dir, run.root, cfg, progress=task.progress)
    meta = run.read_meta()
    start = time.perf_counter()
    mesh = run_mesh(run.root, task.resolution, progress=task.progress)
    save_mesh(mesh, run.mesh)
    mesh_seconds = time.perf_counter() - start
    scene = load_data(task.data_dir, cfg.data)
    return {
        "scene": task.scene, "arm": task.arm, "seed": task.seed, "settings": task.settings,
        "threads": task.threads, "host": socket.gethostname(),
        "n_params_encoding": meta["n_params_encoding"], "n_params_total": meta["n_params_total"],
        "mesh": run.mesh.name, "mesh_seconds": mesh_seconds,
        **_training_summary(run),
        "metrics": _evaluate(task, scene, mesh),
    }


def _training_summary(run: RunDir) -> dict[str, Any]:
    """Fit time and final training PSNR from the metrics log; held-out PSNR / SSIM / mask IoU from holdout.json."""
    steps = run.training_log()
    out: dict[str, Any] = {"fit_seconds": steps[-1]["elapsed_s"] if steps else 0.0,
                           "train_psnr": steps[-1]["psnr"] if steps else None}
    holdout = run.holdout_summary()
    if holdout is not None:
        out["holdout_psnr"] = holdout.get("psnr")
        out["holdout_ssim"] = holdout.get("ssim")
        out["holdout_mask_iou"] = holdout.get("mask_iou")
        out["holdout_seconds"] = holdout.get("seconds")
    return out


def _evaluate(task: ArmTask, scene, mesh) -> dict[str, float] | None:
    from recon.mesh import load_mesh
    from recon.metrics import Views, mesh_metrics

    if scene.gt_mesh_path is None:
        return None
    views = Views.from_scene(scene) if task.cull else None
    return mesh_metrics(mesh, load_mesh(scene.gt_mesh_path), task.n_points, FSCORE_THRESHOLDS, views=views)


def one_line_result(result: dict[str, Any]) -> str:
    """A result in one line: ok with fit time, held-out PSNR and mesh metrics, or failed with its error."""
    from recon.metrics import format_metrics

    if not is_ok(result):
        return f"FAILED ({result['error_type']}: {result['error']})"
    parts = [f"ok in {result['seconds']:.0f} s (fit {result['fit_seconds']:.0f} s)" if "seconds" in result
             else f"ok, fit {result['fit_seconds']:.0f} s"]
    if result.get("holdout_psnr") is not None:
        parts.append(f"held-out PSNR {result['holdout_psnr']:.2f}")
    if result.get("holdout_ssim") is not None:
        parts.append(f"SSIM {result['holdout_ssim']:.3f}")
    if result["metrics"] is not None:
        parts.append(format_metrics(result["metrics"]))
    return ", ".join(parts)


# ----------------------------------------------------------------------------- summary over seeds


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value) of the finite values; None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def result_value(result: dict[str, Any], key: str) -> float | None:
    """A top-level value (``fit_seconds``) or a mesh metric (``chamfer_l1``) of one arm's result."""
    if key in result:
        return result[key]
    metrics = result.get("metrics") or {}
    return metrics.get(key)


def summarise(results: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, tuple[float, float] | None]]:
    """arm -> key -> (mean, std) over seeds, in the order the arms first appear."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    return {arm: {k: mean_std([result_value(r, k) for r in rs]) for k in keys} for arm, rs in by_arm.items()}


def read_settings(out_dir: str | Path) -> dict[str, Any]:
    """A comparison folder's ``compare.json``; an ``InputError`` when there is none."""
    path = Path(out_dir) / SETTINGS
    if not path.is_file():
        raise InputError(out_dir, f"no {SETTINGS}: not a recon comparison folder")
    return json.loads(path.read_text())


def load_results(out_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings and the recorded arms' results (finished and failed) of a comparison folder."""
    settings = read_settings(out_dir)
    results = []
    for seed in range(settings["seeds"]):
        for arm in settings["arms"]:
            result = read_result(RunDir(arm_run_dir(out_dir, arm, seed)))
            if result is not None:
                results.append(result)
    return settings, results
