"""Held-out views: which views a fit leaves out, and how a fitted model scores on them."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from recon.config import RenderConfig
from recon.datasets.scene import Scene
from recon.errors import InputError
from recon.image_metrics import lpips_distance, ssim
from recon.io import write_json_atomic
from recon.losses import psnr
from recon.monitor import NO_MONITOR, Monitor
from recon.rays import RaySource
from recon.render.image import RenderedImage, render_image
from recon.run import Model, RunDir
from recon.visualize import save_validation_image


SCORING_SAMPLES = 0.5
"""Held-out views are rendered with this fraction of the fit's samples per ray (``render.n_eval``,
``n_importance``, ``n_extra``): on a converged SDF the occupancy grid and the surface window
place them well enough (benchmarks/bench_scoring.py; docs/DECISIONS.md, "Held-out scoring")."""


def scoring_render_config(render: RenderConfig) -> RenderConfig:
    """``render`` with ``SCORING_SAMPLES`` of its sample counts (at least what the samplers need)."""
    def part(count: int, least: int) -> int:
        return max(least, math.ceil(count * SCORING_SAMPLES)) if count else 0

    return replace(render, n_eval=part(render.n_eval, 3), n_importance=part(render.n_importance, 1),
                   n_extra=part(render.n_extra, 0))


def split_holdout(scene: Scene, every: int) -> tuple[Scene, Scene | None, list[int]]:
    """Training views, held-out views (0, K, 2K, ...; None when ``every`` is 0) and their indices.

    A scene whose format names a train split and an evaluation split (NeRF-synthetic's
    ``transforms_{train,val,test}.json``) trains on its train split only, and, when ``every``
    is not 0, holds out its ``val`` split (else ``test``) instead of every K-th view.
    """
    evaluation = next((name for name in ("val", "test") if name in scene.splits), None)
    if "train" in scene.splits and evaluation is not None:
        held = [int(i) for i in scene.splits[evaluation]] if every else []
        return scene.split("train"), (scene.split(evaluation) if every else None), held
    if every == 0:
        return scene, None, []
    held = list(range(0, scene.n_images, every))
    if every < 0 or len(held) == scene.n_images:
        raise InputError("train.holdout", f"must be 0 (off) or at least 2 (keep every K-th view out), got {every}")
    kept = [i for i in range(scene.n_images) if i % every != 0]
    return scene.select(kept), scene.select(held), held


@dataclass
class HoldoutScores:
    """A view's scores against its photograph.

    ``psnr`` and ``ssim``: inside the mask when there is one (SSIM: the mask's pixels of the SSIM
    map, ``recon.image_metrics.ssim``), else over the whole image; with masks also ``psnr_full`` and
    ``ssim_full`` over the whole image (outside the mask the photograph is the fit's background colour)
    and the IoU of rendered opacity > 0.5 with the mask; ``lpips`` over the whole image, when LPIPS
    and its weights are installed."""

    psnr: float
    ssim: float | None = None
    psnr_full: float | None = None
    ssim_full: float | None = None
    mask_iou: float | None = None
    lpips: float | None = None

    def as_dict(self) -> dict[str, float]:
        """The scores that apply (no None values)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def holdout_scores(rendered: RenderedImage) -> HoldoutScores:
    """The scores of one rendered view against its photograph."""
    rgb, target = torch.from_numpy(rendered.rgb), torch.from_numpy(rendered.target)
    whole = float(psnr(rgb, target))
    whole_ssim = ssim(rendered.rgb, rendered.target)
    perceptual = lpips_distance(rendered.rgb, rendered.target)
    if rendered.mask is None:
        return HoldoutScores(whole, whole_ssim, lpips=perceptual)
    mask = torch.from_numpy(rendered.mask) > 0.5
    opaque = torch.from_numpy(rendered.opacity) > 0.5
    union = int((mask | opaque).sum())
    return HoldoutScores(
        psnr=float(psnr(rgb[mask], target[mask])) if bool(mask.any()) else whole,
        ssim=ssim(rendered.rgb, rendered.target, mask.numpy()) if bool(mask.any()) else whole_ssim,
        psnr_full=whole,
        ssim_full=whole_ssim,
        mask_iou=int((mask & opaque).sum()) / union if union > 0 else 1.0,
        lpips=perceptual,
    )


def mean_scores(scores: list[HoldoutScores]) -> dict[str, float]:
    """The mean of each score over views (a score some view lacks is left out)."""
    rows = [s.as_dict() for s in scores]
    keys = [key for key in (rows[0] if rows else {}) if all(key in row for row in rows)]
    return {key: float(np.mean([row[key] for row in rows])) for key in keys}


def score_holdout(
    model: Model, rays: RaySource, views: list[int], run: RunDir, step: int, progress: bool = False,
    monitor: Monitor = NO_MONITOR,
) -> dict[str, Any]:
    """Render the held-out views (long side <= ``train.val_max_side``, ``train.holdout_supersample``^2
    rays per pixel, without appearance codes) to ``holdout/view_NNN.png``; write their scores and
    means to ``holdout.json`` and the means to the metrics log (and to ``monitor``, with the
    renders); return the summary. The empty space is skipped with the model's occupancy grid
    (``Model.occupancy_grid``), with ``SCORING_SAMPLES`` of the fit's samples per ray
    (benchmarks/bench_scoring.py measures what both change)."""
    cfg = model.cfg
    render_cfg = scoring_render_config(cfg.render)
    start = time.perf_counter()
    occupancy = model.occupancy_grid()
    scores = []
    for i, view in enumerate(tqdm(views, desc="held-out views", disable=not progress, unit="view")):
        rendered = render_image(
            model.field, model.density, model.background, rays, i, render_cfg, cfg.train.val_max_side,
            appearance=False, supersample=cfg.train.holdout_supersample, occupancy=occupancy,
        )
        strip = save_validation_image(run.holdout_dir / f"view_{view:03d}.png", rendered)
        monitor.image(f"holdout/view_{view:03d}", strip, step)
        scores.append(holdout_scores(rendered))
    means = mean_scores(scores)
    scored = [{"view": view, **s.as_dict()} for view, s in zip(views, scores)]
    summary: dict[str, Any] = {"step": step, "every": cfg.train.holdout, **means,
                               "seconds": round(time.perf_counter() - start, 3), "views": scored}
    write_json_atomic(run.holdout, summary)
    record = {"step": step, **{f"holdout_{key}": value for key, value in means.items()}}
    run.append_metrics(record)
    monitor.scalars(record)
    return summary
