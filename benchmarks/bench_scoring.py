"""Held-out scoring: its time beside the fit's, and its accuracy against the renders it replaced.

Run on fitted runs that held views out (``--holdout K``, or any ``recon compare --preset quick``
arm folder)::

    python benchmarks/bench_scoring.py RUN [RUN ...] [--views N] [--variants V1,V2,...]

Each run's held-out views are rendered as ``recon.holdout.score_holdout`` renders them (long side
<= ``train.val_max_side``, ``train.holdout_supersample``^2 rays per pixel, no appearance codes), by
each variant, one after another in this process:

- ``full``: every ray that meets the scene sphere, samples spread over its whole length (recon's
  scoring before the occupancy grid was used there);
- ``occupancy``: the model's occupancy grid (``Model.occupancy_grid``): rays that cross no occupied
  cell are not rendered, samples go only to occupied cells;
- ``occupancy+chunkN``: the same with N rays per render call instead of ``SCORING_CHUNK``;
- ``occupancy+ssS``: the same with S x S rays per pixel;
- ``...+evalN``, ``...+impN``, ``...+extraN``: the same with ``render.n_eval``, ``n_importance`` or
  ``n_extra`` set to N (the samples per ray; the run's values otherwise);
- ``occupancy+scoring``: the sample counts ``recon.holdout.score_holdout`` uses
  (``SCORING_SAMPLES`` of the run's): recon's scoring now.

The table gives each variant's seconds for the views, seconds over the run's fit time
(``elapsed_s`` of its last log line; the quick preset's target is <= 0.25 for all held-out views),
the mean PSNR (inside the masks, as ``holdout.json``), mask IoU, and the largest per-view PSNR
difference from the first variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from recon.config import RenderConfig  # noqa: E402
from recon.datasets import load_data  # noqa: E402
from recon.holdout import HoldoutScores, holdout_scores, scoring_render_config, split_holdout  # noqa: E402
from recon.rays import RaySource  # noqa: E402
from recon.render.image import SCORING_CHUNK, render_image  # noqa: E402
from recon.run import Model, RunDir, load_model  # noqa: E402


def held_out_rays(model: Model) -> RaySource:
    """The rays of the run's held-out views (on the model's device)."""
    data = model.cfg.data
    scene = load_data(model.meta["data_dir"], data)
    _, held_out, _ = split_holdout(scene, model.cfg.train.holdout)
    if held_out is None:
        raise SystemExit(f"{model.meta['data_dir']}: the run held no views out (fit with --holdout K)")
    device = next(model.field.parameters()).device
    return RaySource(held_out, device, data.max_rays)


SAMPLE_COUNTS = {"eval": "n_eval", "imp": "n_importance", "extra": "n_extra"}


def parse_variant(name: str, default_supersample: int, render: RenderConfig) -> tuple[bool, int, int, RenderConfig]:
    """``full`` / ``occupancy[+chunkN][+ssS][+scoring][+evalN][+impN][+extraN]`` -> (use the grid,
    chunk, supersample, render settings: the run's, with recon's scoring counts under ``scoring``,
    then any count the name sets)."""
    parts = name.split("+")
    if parts[0] not in ("full", "occupancy"):
        raise SystemExit(f"unknown variant {name!r}")
    chunk, supersample, scoring, counts = SCORING_CHUNK, default_supersample, False, {}
    for part in parts[1:]:
        prefix = part.rstrip("0123456789")
        if prefix == "chunk":
            chunk = int(part[len(prefix):])
        elif prefix == "ss":
            supersample = int(part[len(prefix):])
        elif part == "scoring":
            scoring = True
        elif prefix in SAMPLE_COUNTS:
            counts[SAMPLE_COUNTS[prefix]] = int(part[len(prefix):])
        else:
            raise SystemExit(f"unknown variant part {part!r} in {name!r}")
    base = scoring_render_config(render) if scoring else render
    return parts[0] == "occupancy", chunk, supersample, dataclasses.replace(base, **counts)


def score_variant(model: Model, rays: RaySource, views: int, variant: str) -> tuple[float, list[HoldoutScores]]:
    """Seconds to render (and mark the grid, when used) the first ``views`` held-out views; their scores."""
    cfg = model.cfg
    use_grid, chunk, supersample, render_cfg = parse_variant(variant, cfg.train.holdout_supersample, cfg.render)
    start = time.perf_counter()
    occupancy = model.occupancy_grid() if use_grid else None
    scores = []
    for index in range(views):
        rendered = render_image(model.field, model.density, model.background, rays, index, render_cfg,
                                cfg.train.val_max_side, chunk=chunk, appearance=False, supersample=supersample,
                                occupancy=occupancy)
        scores.append(holdout_scores(rendered))
    return time.perf_counter() - start, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="fitted run folders with held-out views")
    parser.add_argument("--views", type=int, default=0, help="score only the first N held-out views (0: all)")
    parser.add_argument("--variants", default="full,occupancy", help="comma-separated; each full or occupancy, then any of +chunkN, +ssS, +evalN, +impN, +extraN, +scoring (e.g. occupancy+scoring; the script's docstring says what each changes)")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    header = (f"{'run':<28} {'variant':<24} {'views':>5} {'seconds':>8} {'x fit':>6} {'PSNR':>7} {'IoU':>6} "
              f"{'max |dPSNR|':>11}")
    rows = []
    for run_dir in args.runs:
        model = load_model(run_dir, torch.device("cpu"))
        rays = held_out_rays(model)
        views = args.views or rays.n_images
        log = RunDir(run_dir).training_log()
        fit_seconds = log[-1]["elapsed_s"] if log else float("nan")
        reference = None
        for variant in args.variants.split(","):
            seconds, scores = score_variant(model, rays, views, variant)
            psnrs = np.array([s.psnr for s in scores])
            reference = psnrs if reference is None else reference
            ious = [s.mask_iou for s in scores if s.mask_iou is not None]
            iou = f"{np.mean(ious):.4f}" if ious else "-"
            row = (f"{str(run_dir)[-28:]:<28} {variant:<24} {views:>5} {seconds:>8.1f} {seconds / fit_seconds:>6.2f} "
                   f"{psnrs.mean():>7.3f} {iou:>6} {np.abs(psnrs - reference).max():>11.3f}")
            rows.append(row)
            print(row, flush=True)
    print("\n" + header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
