"""Fit several encodings on one scene and measure each: MonoSDF's four-arm ablation in one call.

Layout of a comparison folder ``DIR``::

    DIR/compare.json                     the settings (scene, arms, seeds, iterations, resolution, overrides)
    DIR/<encoding>/seed<k>/              one fit (a recon run directory: checkpoint, metrics.jsonl, ...)
    DIR/<encoding>/seed<k>/mesh.ply      its mesh, in world units
    DIR/<encoding>/seed<k>/result.json   parameters, fit time, PSNR, mesh metrics: written last, atomically

An arm (one encoding and seed) is finished when its ``result.json`` exists and
was made with the same settings; rerunning the same command redoes only the
others (and ``recon fit`` itself resumes an interrupted fit from its checkpoint).
Every arm gets the same config apart from ``encoding.type`` and ``train.seed``:
the arms whose encoding has a size match the hash grid's parameter count
(``encoding.dense_resolution = 0`` and ``encoding.sdf_resolution = 0``).
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

from recon.config import Config, config_to_dict, load_config
from recon.errors import InputError
from recon.io import write_json_atomic

RESULT = "result.json"
MESH = "mesh.ply"
SETTINGS = "compare.json"
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"
FSCORE_THRESHOLDS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05)
"""F-score thresholds (x GT diagonal) evaluated for every arm: the report plots F-score against them."""


@dataclass
class CompareSpec:
    """What one comparison fits and measures."""

    data_dir: Path
    out_dir: Path
    encodings: tuple[str, ...]
    seeds: int = 1
    resolution: int = 256
    cull: bool = True
    cfg_file: Path | None = None
    overrides: tuple[str, ...] = ()
    n_points: int = 200_000
    """Samples per mesh for the metrics."""

    def arm_dir(self, encoding: str, seed: int) -> Path:
        return self.out_dir / encoding / f"seed{seed}"

    def config_for(self, encoding: str, seed: int) -> Config:
        """The arm's config: the shared one with its encoding and seed."""
        extra = [f"encoding.type={encoding}", f"train.seed={seed}"]
        return load_config(self.cfg_file, [*self.overrides, *extra])

    def settings(self) -> dict[str, Any]:
        """What a finished arm must have been made with (the resume key)."""
        cfg = config_to_dict(self.config_for(self.encodings[0], 0))
        cfg["encoding"].pop("type")
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


def parse_encodings(text: str) -> tuple[str, ...]:
    """``'hashgrid,densegrid'`` -> the arms, checked against the config schema's encodings."""
    from typing import get_args, get_type_hints

    from recon.config import EncodingConfig

    known = get_args(get_type_hints(EncodingConfig)["type"])
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise InputError("--encodings", f"unknown encoding(s) {', '.join(bad) or '(none given)'} (known: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise InputError("--encodings", f"an encoding is listed twice: {text}")
    return names


def _is_finished(arm_dir: Path, settings: dict[str, Any]) -> bool:
    path = arm_dir / RESULT
    if not path.is_file() or not (arm_dir / MESH).is_file():
        return False
    try:
        return json.loads(path.read_text()).get("settings") == json.loads(json.dumps(settings))
    except ValueError:
        return False


def run_compare(spec: CompareSpec, progress: bool = True) -> list[dict[str, Any]]:
    """Fit, extract and evaluate every arm not finished yet; return all arms' results."""
    from recon.datasets import load_scene

    if spec.seeds < 1:
        raise InputError("--seeds", f"must be at least 1, got {spec.seeds}")
    if spec.resolution < 8:
        raise InputError("--resolution", f"must be at least 8, got {spec.resolution}")
    data = spec.config_for(spec.encodings[0], 0).data
    scene = load_scene(spec.data_dir, data.format, data.downscale, data.background)  # bad input stops here
    settings = spec.settings()
    arms = [(enc, seed) for seed in range(spec.seeds) for enc in spec.encodings]
    for enc, seed in arms:  # before anything is written
        if not _is_finished(spec.arm_dir(enc, seed), settings):
            _check_same_fit(spec.arm_dir(enc, seed), spec.config_for(enc, seed))
    gt = str(scene.gt_mesh_path.resolve()) if scene.gt_mesh_path else None
    write_json_atomic(spec.out_dir / SETTINGS, {**settings, "encodings": list(spec.encodings), "seeds": spec.seeds,
                                                 "overrides": list(spec.overrides), "gt_mesh": gt,
                                                 "up": scene_up(scene).tolist()})
    results = []
    for number, (encoding, seed) in enumerate(arms, start=1):
        arm_dir = spec.arm_dir(encoding, seed)
        label = f"[arm {number}/{len(arms)}] {encoding} seed {seed}"
        if _is_finished(arm_dir, settings):
            print(f"{label}: finished earlier, kept")
        else:
            _run_arm(spec, scene, encoding, seed, settings, label, progress)
        results.append(json.loads((arm_dir / RESULT).read_text()))
    return results


def scene_up(scene) -> np.ndarray:
    """The world direction the scene's cameras hold upwards (the mean of their -y axes), for pictures."""
    up = -np.asarray(scene.cam_to_world)[:, :3, 1].mean(axis=0)
    norm = float(np.linalg.norm(up))
    return up / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])


def _run_arm(spec: CompareSpec, scene, encoding: str, seed: int, settings: dict[str, Any], label: str,
             progress: bool) -> None:
    from recon.extract import run_mesh
    from recon.mesh import save_mesh
    from recon.train import fit

    arm_dir = spec.arm_dir(encoding, seed)
    cfg = spec.config_for(encoding, seed)
    print(f"{label}: fitting {cfg.train.iters} steps")
    fit(spec.data_dir, arm_dir, cfg, progress=progress)
    meta = json.loads((arm_dir / "meta.json").read_text())
    print(f"{label}: {meta['n_params_encoding']:,} encoding parameters, {meta['n_params_total']:,} in all; "
          f"extracting the mesh at {spec.resolution}^3")
    start = time.perf_counter()
    mesh = run_mesh(arm_dir, spec.resolution, progress=progress)
    save_mesh(mesh, arm_dir / MESH)
    result = {
        "encoding": encoding, "seed": seed, "settings": settings,
        "n_params_encoding": meta["n_params_encoding"], "n_params_total": meta["n_params_total"],
        "mesh": MESH, "mesh_seconds": time.perf_counter() - start,
        **_training_summary(arm_dir),
        "metrics": _evaluate(spec, scene, mesh),
    }
    write_json_atomic(arm_dir / RESULT, result)
    print(f"{label}: {_one_line(result)}")


def _check_same_fit(arm_dir: Path, cfg: Config) -> None:
    """A fit resumes with its saved config (only the step count may change): refuse other settings."""
    import yaml

    saved_path = arm_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, wanted = yaml.safe_load(saved_path.read_text()) or {}, config_to_dict(cfg)
    for section in (saved, wanted):
        section.get("train", {}).pop("iters", None)
    changed = [f"{sec}.{key}" for sec, values in wanted.items() for key, value in values.items()
               if saved.get(sec, {}).get(key, value) != value]
    if changed:
        raise InputError(arm_dir, f"was fitted with other settings ({', '.join(changed[:5])}); "
                         "use another --out for a comparison with these")


def _training_summary(arm_dir: Path) -> dict[str, Any]:
    """Fit time and final training PSNR from metrics.jsonl; held-out PSNR / mask IoU from holdout.json."""
    lines = [json.loads(x) for x in (arm_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in lines if "loss" in x]
    out: dict[str, Any] = {"fit_seconds": steps[-1]["elapsed_s"] if steps else 0.0,
                           "train_psnr": steps[-1]["psnr"] if steps else None}
    holdout = arm_dir / "holdout.json"
    if holdout.is_file():
        data = json.loads(holdout.read_text())
        out["holdout_psnr"] = data.get("psnr")
        out["holdout_mask_iou"] = data.get("mask_iou")
    return out


def _evaluate(spec: CompareSpec, scene, mesh) -> dict[str, float] | None:
    from recon.extract import load_mesh
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
    """encoding -> key -> (mean, std) over seeds, in the order the encodings first appear."""
    by_encoding: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_encoding.setdefault(r["encoding"], []).append(r)
    return {enc: {k: mean_std([result_value(r, k) for r in rs]) for k in keys} for enc, rs in by_encoding.items()}


def load_results(out_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings and the finished arms' results of a comparison folder."""
    out_dir = Path(out_dir)
    settings_path = out_dir / SETTINGS
    if not settings_path.is_file():
        raise InputError(out_dir, f"no {SETTINGS}: not a recon comparison folder")
    settings = json.loads(settings_path.read_text())
    results = []
    for seed in range(settings["seeds"]):
        for enc in settings["encodings"]:
            path = out_dir / enc / f"seed{seed}" / RESULT
            if path.is_file():
                results.append(json.loads(path.read_text()))
    return settings, results
