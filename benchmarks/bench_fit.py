"""Time to quality: Chamfer-L1 (relative to the GT bounding-box diagonal) against fitting time.

Fits a scene with ground truth (default: the embedded default scene, 40 views of 96x96)
for each encoding, extracting a mesh every --every steps, and prints one table per
configuration; --csv writes every row. The fitting clock excludes the extractions.

Run: .venv/bin/python benchmarks/bench_fit.py [--scene DIR] [--iters 2000] [--every 250]
         [--encodings hashgrid,densegrid] [--csv out.csv] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.config import load_config  # noqa: E402
from recon.datasets import load_scene, synthesize  # noqa: E402
from recon.extract import load_mesh  # noqa: E402
from recon.mesh import extract_mesh  # noqa: E402
from recon.metrics import mesh_metrics  # noqa: E402
from recon.train import Fitter  # noqa: E402


def evaluate(fitter: Fitter, gt, resolution: int) -> dict[str, float]:
    fitter.field.eval()
    mesh = extract_mesh(fitter.field.sdf, resolution, scale_mat=fitter.scene.scale_mat)
    fitter.field.train()
    if len(mesh.faces) == 0:
        return {"chamfer_l1_rel": float("inf"), "fscore@0.01": 0.0, "normal_consistency": 0.0}
    return mesh_metrics(mesh, gt, n_points=100_000)


def run(scene_dir: Path, gt, encoding: str, overrides: list[str], every: int, resolution: int) -> list[dict]:
    cfg = load_config(None, [f"encoding.type={encoding}", "train.val_every=0", *overrides])
    scene = load_scene(scene_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(cfg.train.seed)
        fitter = Fitter(scene, Path(tmp), cfg, scene_dir)
        fit_seconds = 0.0
        while fitter.step < cfg.train.iters:
            start = time.perf_counter()
            fitter.train_step()
            fit_seconds += time.perf_counter() - start
            if fitter.step % every == 0 or fitter.step == cfg.train.iters:
                m = evaluate(fitter, gt, resolution)
                row = {
                    "encoding": encoding,
                    "overrides": " ".join(overrides),
                    "step": fitter.step,
                    "fit_s": round(fit_seconds, 1),
                    "chamfer_rel_%": round(100 * m["chamfer_l1_rel"], 3),
                    "fscore@1%": round(100 * m["fscore@0.01"], 1),
                    "normal_consistency": round(m["normal_consistency"], 3),
                    "beta": round(float(fitter.density.current_beta().detach()), 5),
                }
                rows.append(row)
                print("  ".join(f"{k}={v}" for k, v in row.items() if k != "overrides"), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=None, help="scene with gt_mesh.ply (default: synthesise)")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--resolution", type=int, default=192, help="marching-cubes resolution of the checks")
    parser.add_argument("--encodings", default="hashgrid,densegrid")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = args.scene or Path(tmp) / "scene"
        if args.scene is None:
            synthesize(scene_dir)
        gt = load_mesh(scene_dir / "gt_mesh.ply")
        rows = []
        for encoding in args.encodings.split(","):
            print(f"== {encoding} {' '.join(args.overrides)}", flush=True)
            rows += run(scene_dir, gt, encoding, [f"train.iters={args.iters}", *args.overrides], args.every, args.resolution)
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
