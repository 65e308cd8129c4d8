"""Fit several geometry arms on one scene and measure each: MonoSDF's four-arm ablation in one call.

Layout of a comparison folder ``DIR``::

    DIR/compare.json                the settings (scene, arms, seeds, iterations, resolution, overrides)
    DIR/<arm>/seed<k>/              one fit (a recon run directory, ``recon.run``)
    DIR/<arm>/seed<k>/mesh.ply      its mesh, in world units
    DIR/<arm>/seed<k>/result.json   parameters, fit time, PSNR, mesh metrics: written last, atomically

An arm (one geometry arm and seed) is finished when its ``result.json`` exists and
was made with the same settings; rerunning the same command redoes only the
others (and the fit itself resumes from its checkpoint, under ``recon.run``'s resume rule).
Every arm gets the same config apart from ``geometry.arm`` and ``train.seed``:
the grid arms match the hash grid's parameter count
(``encoding.dense_resolution = 0`` and ``geometry.sdf_grid_resolution = 0``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.config import ARMS, Config, config_to_dict, load_config
from recon.errors import InputError
from recon.io import write_json_atomic
from recon.run import RunDir, arm_run_dir, check_resumable

SETTINGS = "compare.json"
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"
FSCORE_THRESHOLDS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)
"""F-score thresholds (x GT diagonal) evaluated for every arm: the report plots F-score against them."""


@dataclass
class CompareSpec:
    """What one comparison fits and measures."""

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
        return {"data_dir": str(self.data_dir.resolve()), "resolution": self.resolution, "cull": self.cull,
                "n_points": self.n_points, "config": cfg}


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


def _is_finished(run: RunDir, settings: dict[str, Any]) -> bool:
    if not run.result.is_file() or not run.mesh.is_file():
        return False
    try:
        return json.loads(run.result.read_text()).get("settings") == json.loads(json.dumps(settings))
    except ValueError:
        return False


def run_compare(spec: CompareSpec, progress: bool = True) -> list[dict[str, Any]]:
    """Fit, extract and evaluate every arm not finished yet; return all arms' results."""
    from recon.datasets import load_scene

    if spec.seeds < 1:
        raise InputError("--seeds", f"must be at least 1, got {spec.seeds}")
    if spec.resolution < 8:
        raise InputError("--resolution", f"must be at least 8, got {spec.resolution}")
    data = spec.config_for(spec.arms[0], 0).data
    scene = load_scene(spec.data_dir, data.format, data.downscale, data.rgba_background)  # bad input stops here
    settings = spec.settings()
    arms = [(arm, seed) for seed in range(spec.seeds) for arm in spec.arms]
    for arm, seed in arms:  # before anything is written
        if not _is_finished(spec.run_dir(arm, seed), settings):
            check_resumable(spec.run_dir(arm, seed).root, spec.config_for(arm, seed))
    gt = str(scene.gt_mesh_path.resolve()) if scene.gt_mesh_path else None
    write_json_atomic(spec.out_dir / SETTINGS, {**settings, "arms": list(spec.arms), "seeds": spec.seeds,
                                                 "overrides": list(spec.overrides), "gt_mesh": gt,
                                                 "up": scene_up(scene).tolist()})
    results = []
    for number, (arm, seed) in enumerate(arms, start=1):
        run = spec.run_dir(arm, seed)
        label = f"[arm {number}/{len(arms)}] {arm} seed {seed}"
        if _is_finished(run, settings):
            print(f"{label}: finished earlier, kept")
        else:
            _run_arm(spec, scene, arm, seed, settings, label, progress)
        results.append(json.loads(run.result.read_text()))
    return results


def scene_up(scene) -> np.ndarray:
    """The world direction the scene's cameras hold upwards (the mean of their -y axes), for pictures."""
    up = -np.asarray(scene.cam_to_world)[:, :3, 1].mean(axis=0)
    norm = float(np.linalg.norm(up))
    return up / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])


def _run_arm(spec: CompareSpec, scene, arm: str, seed: int, settings: dict[str, Any], label: str,
             progress: bool) -> None:
    from recon.extract import run_mesh
    from recon.mesh import save_mesh
    from recon.train import fit

    run = spec.run_dir(arm, seed)
    cfg = spec.config_for(arm, seed)
    print(f"{label}: fitting {cfg.train.iters} steps")
    fit(spec.data_dir, run.root, cfg, progress=progress)
    meta = run.read_meta()
    print(f"{label}: {meta['n_params_encoding']:,} encoding parameters, {meta['n_params_total']:,} in all; "
          f"extracting the mesh at {spec.resolution}^3")
    start = time.perf_counter()
    mesh = run_mesh(run.root, spec.resolution, progress=progress)
    save_mesh(mesh, run.mesh)
    result = {
        "arm": arm, "seed": seed, "settings": settings,
        "n_params_encoding": meta["n_params_encoding"], "n_params_total": meta["n_params_total"],
        "mesh": run.mesh.name, "mesh_seconds": time.perf_counter() - start,
        **_training_summary(run),
        "metrics": _evaluate(spec, scene, mesh),
    }
    write_json_atomic(run.result, result)
    print(f"{label}: {_one_line(result)}")


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
    return out


def _evaluate(spec: CompareSpec, scene, mesh) -> dict[str, float] | None:
    from recon.mesh import load_mesh
    from recon.metrics import Views, mesh_metrics

    if scene.gt_mesh_path is None:
        return None
    views = Views.from_scene(scene) if spec.cull else None
    return mesh_metrics(mesh, load_mesh(scene.gt_mesh_path), spec.n_points, FSCORE_THRESHOLDS, views=views)


def _one_line(result: dict[str, Any]) -> str:
    from recon.metrics import format_metrics

    parts = [f"fit {result['fit_seconds']:.0f} s"]
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


def load_results(out_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings and the finished arms' results of a comparison folder."""
    out_dir = Path(out_dir)
    settings_path = out_dir / SETTINGS
    if not settings_path.is_file():
        raise InputError(out_dir, f"no {SETTINGS}: not a recon comparison folder")
    settings = json.loads(settings_path.read_text())
    results = []
    for seed in range(settings["seeds"]):
        for arm in settings["arms"]:
            path = RunDir(arm_run_dir(out_dir, arm, seed)).result
            if path.is_file():
                results.append(json.loads(path.read_text()))
    return settings, results
