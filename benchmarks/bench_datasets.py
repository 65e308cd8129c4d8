"""Loading real captures: time, memory, and the measurements behind docs/DECISIONS.md ("Capture formats").

1. load time and peak numpy memory (tracemalloc) of each staged capture;
2. MonoSDF's DTU crop: where a 384x384 pixel sits in the 1600x1200 original (MonoSDF's K
   against pixel-centre-aligned resizing), by fitting the offset that best predicts the crop
   from the box-filtered original;
3. normalisation from the cameras: per-camera radii (min, 10th percentile, median) and, where
   masks exist, how far the visual hull reaches in the normalised frame.

Run: .venv/bin/python benchmarks/bench_datasets.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy.ndimage import map_coordinates, uniform_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.datasets import load_scene  # noqa: E402
from recon.datasets.cameras import visual_hull  # noqa: E402
from recon.datasets.normalize import closest_point_to_axes, visible_radius  # noqa: E402
from recon.datasets.scene import Scene  # noqa: E402

CAPTURES = [("dtu_scan24_neus", 1), ("dtu_scan24_neus", 4), ("dtu_scan24_monosdf_priors8", 1),
            ("dtu_scan24_monosdf_rgb49", 1), ("nerf_synthetic_lego", 1), ("instant_ngp_fox", 1), ("instant_ngp_fox", 4)]


def load_costs(data: Path) -> None:
    print("| capture | downscale | views | WxH | load s | pixels MiB | numpy peak MiB |\n|---|---|---|---|---|---|---|")
    for name, downscale in CAPTURES:
        tracemalloc.start()
        start = time.perf_counter()
        scene = load_scene(data / name, downscale=downscale)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        pixels = scene.images.nbytes + (scene.masks.nbytes if scene.masks is not None else 0)
        print(f"| {name} | {downscale} | {scene.n_images} | {scene.width}x{scene.height} | {seconds:.1f} | "
              f"{pixels / 2**20:.1f} | {peak / 2**20:.1f} |")


def crop_offset(data: Path, views: tuple[int, ...] = (0, 5, 11)) -> None:
    """Best (dx, dy) full-resolution offset from MonoSDF's mapping u = 200 + u' / s (s = 384 / 1200)."""
    s = 384 / 1200
    offsets = np.arange(-1.0, 3.01, 0.125)
    for view in views:
        full = iio.imread(data / "dtu_scan24_neus" / "image" / f"{view:06d}.png")[..., :3].astype(np.float64).mean(-1)
        crop = iio.imread(data / "dtu_scan24_monosdf_rgb49" / f"{view:06d}_rgb.png")[..., :3].astype(np.float64).mean(-1)
        blurred = uniform_filter(full, size=3)
        v, u = np.mgrid[8:376, 8:376].astype(np.float64)
        err = np.array([[np.mean((map_coordinates(blurred, [v / s + dy, 200 + u / s + dx], order=1) - crop[8:376, 8:376]) ** 2)
                         for dx in offsets] for dy in offsets])
        i, j = np.unravel_index(err.argmin(), err.shape)
        at = lambda d: np.sqrt(err[np.searchsorted(offsets, d), np.searchsorted(offsets, d)])  # noqa: E731
        print(f"view {view}: best dx {offsets[j]:+.3f} dy {offsets[i]:+.3f} px, rmse {np.sqrt(err[i, j]):.2f}; "
              f"MonoSDF's (0, 0) {at(0.0):.2f}; centre-aligned (+1.0625) ~ (+1, +1) {at(1.0):.2f}")


def hull_radius(scene: Scene) -> float:
    points = visual_hull(scene.intrinsics, scene.cam_to_world, scene.masks, n=64, box=1.6)
    return float(np.linalg.norm(points, axis=1).max())


def normalisation(data: Path) -> None:
    for name, downscale in (("nerf_synthetic_lego", 4), ("instant_ngp_fox", 8), ("dtu_scan24_neus", 8)):
        scene = load_scene(data / name, downscale=downscale)
        world = scene.cam_to_world.copy()
        world[:, :3, 3] = world[:, :3, 3] @ scene.scale_mat[:3, :3].T + scene.scale_mat[:3, 3]
        centre = closest_point_to_axes(world[:, :3, 3], world[:, :3, 2], name)
        radii = visible_radius(scene.intrinsics, world, centre, (scene.height, scene.width))
        seen = radii[radii > 0]
        line = (f"{name}: per-camera radius min {seen.min():.4g} p10 {np.percentile(seen, 10):.4g} median "
                f"{np.median(seen):.4g} (world units); used: {scene.normalization.describe()}")
        if scene.masks is not None:
            line += f"; visual hull reaches {hull_radius(scene):.3f} of it"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    load_costs(args.data)
    crop_offset(args.data)
    normalisation(args.data)


if __name__ == "__main__":
    main()
