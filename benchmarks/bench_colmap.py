"""COLMAP model reading: recon's reader (recon.datasets.colmap_model) against pycolmap, same files.

Writes a synthetic model of the size of a real capture (default: 300 images of 4,000 observations,
200,000 points, tracks of 2-10 images) in COLMAP's binary and text formats, then times reading it
both ways (best of --repeat) and checks that both read the same values. Prints a table.

    python benchmarks/bench_colmap.py [--images 300] [--observations 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recon.datasets.colmap_model import Camera, Image, Model, Points3D, read_model, write_model


def synthetic_model(n_images: int, per_image: int, seed: int = 0) -> Model:
    """Consistent tracks: every observation is one 2D point of one image, every image full."""
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < n_images * per_image:
        length = int(rng.integers(2, 11))
        lengths.append(min(length, n_images * per_image - total))
        total += lengths[-1]
    lengths = np.array([max(length, 1) for length in lengths])
    n_points = len(lengths)
    slots = rng.permutation(np.repeat(np.arange(n_images), per_image))  # one image per observation
    owner = np.repeat(np.arange(n_points), lengths)
    idx = np.zeros(len(slots), np.int64)
    counts = np.zeros(n_images, np.int64)
    point3d_ids = np.full((n_images, per_image), -1, np.int64)
    for k, (image, point) in enumerate(zip(slots, owner)):
        idx[k] = counts[image]
        point3d_ids[image, counts[image]] = point + 1
        counts[image] += 1
    cameras = {1: Camera(1, "OPENCV", 1600, 1200, np.array([1500.0, 1510.0, 800.5, 600.5, -0.1, 0.02, 1e-3, -1e-3]))}
    images = {}
    for i in range(n_images):
        q = rng.normal(size=4)
        images[i + 1] = Image(i + 1, q / np.linalg.norm(q) * np.sign(q[0]), rng.normal(size=3), 1, f"img_{i:05d}.jpg",
                              rng.uniform(0, 1600, (per_image, 2)), point3d_ids[i])
    points = Points3D(np.arange(1, n_points + 1), rng.normal(size=(n_points, 3)),
                      rng.integers(0, 256, (n_points, 3)).astype(np.uint8), rng.uniform(0, 2, n_points), lengths,
                      np.stack([slots + 1, idx], axis=1).astype(np.int32))
    return Model(cameras, images, points)


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--observations", type=int, default=4000, help="2D points per image, all observed")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import pycolmap

    model = synthetic_model(args.images, args.observations)
    print(f"model: {len(model.images)} images, {len(model.points)} points, "
          f"{int(model.points.track_lengths.sum())} observations; pycolmap {pycolmap.__version__}")
    print(f"import: recon.datasets (the whole package the reader is in) {import_seconds('recon.datasets'):.2f} s, "
          f"pycolmap {import_seconds('pycolmap'):.2f} s")
    print("| format | size | recon read (s) | pycolmap read (s) | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for binary in (True, False):
            folder = Path(tmp) / ("bin" if binary else "txt")
            write_model(model, folder, binary)
            size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
            ours, read = best_of(lambda: read_model(folder), args.repeat)
            theirs, rec = best_of(lambda: pycolmap.Reconstruction(str(folder)), args.repeat)
            assert len(rec.points3D) == len(read.points) and rec.num_reg_images() == len(read.images)
            first = int(read.points.ids[0])
            np.testing.assert_array_equal(rec.points3D[first].xyz, read.points.xyz[0])
            print(f"| {'binary' if binary else 'text'} | {size:.0f} MiB | {ours:.2f} | {theirs:.2f} | "
                  f"{ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
