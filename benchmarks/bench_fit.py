"""Time to quality: Chamfer-L1 (relative to the GT bounding-box diagonal) against fitting time.

Fits a scene with ground truth (default: the embedded default scene, 40 views of 96x96)
for each encoding, extracting a mesh every --every steps, and prints one table per
configuration; --csv writes every row, --plot draws Chamfer against fitting time (PNG).
The fitting clock excludes the extractions. Each row also counts the field evaluations
per training ray so far: ``sampler_evals`` (SDF only, no gradient: sampler and occupancy
grid updates) and ``render_evals`` (SDF, feature and gradient with its double backward:
the rendered samples), which do not depend on how busy the machine is.

A scene without ``gt_mesh.ply`` (a real capture such as ``../shared/data/dtu_scan24_neus``) is
scored on held-out views instead (``--holdout K``: every K-th view; PSNR and mask IoU), and with
ground truth too when ``--holdout`` is given. ``--device cuda`` fits on the GPU (each timed step
ends with ``torch.cuda.synchronize()``; the training step itself never waits for the GPU).

Run: .venv/bin/python benchmarks/bench_fit.py [--scene DIR] [--iters 2000] [--every 250] [--device cuda]
         [--holdout K] [--encodings hashgrid,densegrid] [--csv out.csv] [--plot out.png] [--stop N]
         [--config FILE] [section.key=value ...]
     .venv/bin/python benchmarks/bench_fit.py --replot a.csv b.csv --plot out.png   # only the plot
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
from recon.holdout import score_holdout, split_holdout  # noqa: E402
from recon.io import atomic_path  # noqa: E402
from recon.mesh import extract_mesh  # noqa: E402
from recon.metrics import mesh_metrics  # noqa: E402
from recon.train import Fitter  # noqa: E402


def evaluate(fitter: Fitter, gt, resolution: int) -> dict[str, float]:
    fitter.field.eval()
    mesh = extract_mesh(fitter.field.sdf, resolution, scale_mat=fitter.scene.scale_mat)
    fitter.field.train()
    if len(mesh.faces) == 0:
        return {"chamfer_l1_rel": float("inf"), "fscore@0.01": 0.0, "normal_consistency": 0.0}
    return mesh_metrics(mesh, gt, n_points=100_000, detail=False)


def quality(fitter: Fitter, gt, resolution: int) -> dict[str, float]:
    """The row's scores: Chamfer, F-score and normal consistency against ``gt`` (when there is one), and
    the held-out views' PSNR and mask IoU (when the fit holds views out)."""
    row: dict[str, float] = {}
    if gt is not None:
        m = evaluate(fitter, gt, resolution)
        row.update({"chamfer_rel_%": round(100 * m["chamfer_l1_rel"], 3), "fscore@1%": round(100 * m["fscore@0.01"], 1),
                    "normal_consistency": round(m["normal_consistency"], 3)})
    if fitter.held_out is not None:
        fitter.field.eval()
        summary = score_holdout(fitter.model, fitter.held_out, fitter.held_out_indices, fitter.run, fitter.step)
        fitter.field.train()
        row.update({f"holdout_{key}": round(summary[key], 4) for key in ("psnr", "mask_iou") if key in summary})
    return row


class EvalCounter:
    """Counts the points a field's ``sdf`` and ``sdf_feature_gradient`` see (wraps them on the instance)."""

    def __init__(self, field) -> None:
        self.sdf = self.gradient = 0
        sdf, grad = field.sdf, field.sdf_feature_gradient

        def counted_sdf(x):
            self.sdf += x.shape[0]
            return sdf(x)

        def counted_grad(x, create_graph):
            self.gradient += x.shape[0]
            return grad(x, create_graph)

        field.sdf, field.sdf_feature_gradient = counted_sdf, counted_grad


def run(
    scene_dir: Path, gt, encoding: str, overrides: list[str], every: int, resolution: int, stop: int | None = None,
    config: Path | None = None,
) -> list[dict]:
    cfg = load_config(config, [f"geometry.arm={encoding}", "train.val_every=0", *overrides])
    scene, held_out, held_out_indices = split_holdout(load_scene(scene_dir), cfg.train.holdout)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(cfg.train.seed)
        fitter = Fitter(scene, Path(tmp), cfg, scene_dir, held_out, held_out_indices)
        sync = torch.cuda.synchronize if fitter.device.type == "cuda" else (lambda: None)
        counter = EvalCounter(fitter.field)
        fit_seconds = 0.0
        last = cfg.train.iters if stop is None else min(stop, cfg.train.iters)
        while fitter.step < last:
            sync()
            start = time.perf_counter()
            fitter.train_step()
            sync()
            fit_seconds += time.perf_counter() - start
            if fitter.step % every == 0 or fitter.step == last:
                n_rays = fitter.step * cfg.train.batch_rays
                evals = {"sampler_evals": round(counter.sdf / n_rays, 1), "render_evals": round(counter.gradient / n_rays, 1)}
                counted = counter.sdf, counter.gradient
                scores = quality(fitter, gt, resolution)
                counter.sdf, counter.gradient = counted  # the checks are not part of the fit
                row = {
                    "encoding": encoding,
                    "overrides": " ".join(overrides),
                    "step": fitter.step,
                    "fit_s": round(fit_seconds, 1),
                    **scores,
                    "beta": round(float(fitter.density.current_beta().detach()), 5),
                    **evals,
                }
                rows.append(row)
                print("  ".join(f"{k}={v}" for k, v in row.items() if k != "overrides"), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=None, help="scene with gt_mesh.ply (default: synthesise)")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--stop", type=int, default=None, help="stop after this many steps (the schedule still spans --iters)")
    parser.add_argument("--resolution", type=int, default=192, help="marching-cubes resolution of the checks")
    parser.add_argument("--encodings", default="hashgrid,densegrid")
    parser.add_argument("--device", default=None, help="train.device (cpu, cuda; default: the config's, auto)")
    parser.add_argument("--holdout", type=int, default=None, help="score every K-th view held out (train.holdout)")
    parser.add_argument("--config", type=Path, default=None, help="a config file (e.g. configs/gpu.yaml)")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of Chamfer against fitting time")
    parser.add_argument("--replot", type=Path, nargs="+", default=None, help="only draw --plot from these CSVs")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.replot:
        rows = [row for path in args.replot for row in csv.DictReader(path.open())]
        for row in rows:
            row["fit_s"], row["chamfer_rel_%"] = float(row["fit_s"]), float(row["chamfer_rel_%"])
        plot(rows, args.plot or Path("fit.png"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = args.scene or Path(tmp) / "scene"
        if args.scene is None:
            synthesize(scene_dir)
        gt = load_mesh(scene_dir / "gt_mesh.ply") if (scene_dir / "gt_mesh.ply").is_file() else None
        extra = [f"train.iters={args.iters}"]
        extra += [f"train.device={args.device}"] if args.device else []
        holdout = args.holdout if args.holdout is not None else (0 if gt is not None else 8)
        extra += [f"train.holdout={holdout}"] if holdout else []
        rows = []
        for encoding in args.encodings.split(","):
            print(f"== {encoding} {' '.join(args.overrides)}", flush=True)
            overrides = [*extra, *args.overrides]
            rows += run(scene_dir, gt, encoding, overrides, args.every, args.resolution, args.stop, args.config)
    if args.csv:
        with atomic_path(args.csv) as tmp_csv, tmp_csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], path: Path) -> None:
    """Chamfer (% of the diagonal, log scale) against fitting time, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    rows = [r for r in rows if "chamfer_rel_%" in r]
    if not rows:
        return
    for key in dict.fromkeys((r["encoding"], r["overrides"]) for r in rows):
        mine = [r for r in rows if (r["encoding"], r["overrides"]) == key]
        label = " ".join(part for part in (key[0], key[1]) if part)
        ax.plot([r["fit_s"] for r in mine], [r["chamfer_rel_%"] for r in mine], marker="o", label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="target 0.5 %")
    ax.set_xlabel("fitting time (s)")
    ax.set_ylabel("Chamfer-L1 (% of diagonal)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
