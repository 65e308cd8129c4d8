"""Sweep throughput: the same sweep serially, in the local process pool and on a local Ray.

Runs scenes x arms x seeds (default: 2 synthetic scenes x MonoSDF's four arms x 2 seeds at the
quick preset: 16 fits) once per executor, each in a fresh folder, and prints for each the wall
time, the throughput in fits per hour and its ratio to the serial run, the mean time of one fit
(its task: fit, mesh, metrics) and whether the results equal those of the other executors with
the same thread budget (Chamfer, F-score, PSNR within 1e-6). "serial" is recon compare as it was:
one fit after another with every core; "local" and "ray" use their defaults (sized to the
machine) unless --workers / --threads-per-worker say otherwise.

Run: .venv/bin/python benchmarks/bench_sweep.py [--out DIR] [--executors serial,local,ray]
         [--scenes DIR DIR] [--views 40] [--size 96] [--arms ...] [--seeds 2] [--preset quick]
         [--workers N] [--threads-per-worker T] [section.key=value ...]
A reduced run (say so when quoting it): --views 16 --size 48 --seeds 1 train.iters=200
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon.compare import is_ok, parse_arms, preset_path  # noqa: E402
from recon.executors import ExecutorOptions, cpu_count, describe, make_executor  # noqa: E402
from recon.sweep import SceneEntry, load_sweep, run_sweep, sweep_spec  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="keep the sweeps here (default: a temporary folder)")
    p.add_argument("--executors", default="serial,local,ray")
    p.add_argument("--scenes", type=Path, nargs="*", default=None, help="scene folders (default: 2 synthetic scenes)")
    p.add_argument("--views", type=int, default=40, help="views of each synthetic scene (default 40)")
    p.add_argument("--size", type=int, default=96, help="image size of each synthetic scene (default 96)")
    p.add_argument("--arms", default="hashgrid,densegrid,mlp,sdfgrid")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--preset", default="quick")
    p.add_argument("--resolution", type=int, default=None, help="marching-cubes resolution (default: the preset's)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return p.parse_args()


def scenes(args: argparse.Namespace, root: Path) -> list[SceneEntry]:
    if args.scenes:
        return [SceneEntry(path, path.resolve().name) for path in args.scenes]
    from recon.datasets import synthesize

    made = []
    for seed in (0, 1):
        path = root / "scenes" / f"synthetic{seed}"
        if not (path / "cameras_sphere.npz").is_file():
            synthesize(path, n_views=args.views, size=args.size, seed=seed)
        made.append(SceneEntry(path, path.name))
    return made


def values(out: Path) -> dict[tuple[str, str, int], tuple]:
    got = {}
    for r in load_sweep(out).results:
        m = r.get("metrics") or {}
        got[(r["scene"], r["arm"], r["seed"])] = (r["status"], m.get("chamfer_l1"), m.get("fscore@0.01"),
                                                  r.get("train_psnr"), r.get("holdout_psnr"))
    return got


def equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        for x, y in zip(a[key], b[key]):
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9):
                    return False
            elif x != y:
                return False
    return True


def main() -> None:
    args = parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    entries = scenes(args, root)
    arms = parse_arms(args.arms)
    n_fits = len(entries) * len(arms) * args.seeds
    print(f"{len(entries)} scene(s) x {len(arms)} arm(s) x {args.seeds} seed(s) = {n_fits} fits, preset {args.preset}, "
          f"overrides {args.overrides or 'none'}, {cpu_count()} cores; folders in {root}")
    rows = []
    for name in args.executors.split(","):
        threads = args.threads_per_worker if name != "serial" else (args.threads_per_worker or cpu_count())
        options = ExecutorOptions(name, args.workers if name == "local" else None, threads)
        executor = make_executor(options, n_fits)
        out = root / name
        spec = sweep_spec(entries, out, arms, args.seeds, args.resolution, True, preset_path(args.preset),
                          args.overrides)
        start = time.perf_counter()
        results = run_sweep(spec, executor, progress=False)
        wall = time.perf_counter() - start
        ok = [r for r in results if is_ok(r)]
        rows.append({"executor": name, "budget": describe(executor), "threads": executor.threads, "wall": wall,
                     "ok": len(ok), "failed": len(results) - len(ok),
                     "fit": sum(r.get("seconds", 0.0) for r in ok) / max(1, len(ok)), "values": values(out)})
    serial = next((r for r in rows if r["executor"] == "serial"), rows[0])
    print(f"\n{'executor':<8} {'budget':<44} {'fits ok':>7} {'failed':>6} {'wall s':>8} {'fits/hour':>9} "
          f"{'x ' + serial['executor']:>9} {'s/fit':>7}  same results as")
    for r in rows:
        same = [o["executor"] for o in rows if o is not r and o["threads"] == r["threads"]
                and equal(o["values"], r["values"])]
        per_hour = 3600 * r["ok"] / r["wall"]
        ratio = per_hour / (3600 * serial["ok"] / serial["wall"]) if serial["ok"] else float("nan")
        print(f"{r['executor']:<8} {r['budget']:<44} {r['ok']:>7} {r['failed']:>6} {r['wall']:>8.0f} {per_hour:>9.1f} "
              f"{ratio:>9.2f} {r['fit']:>7.0f}  {', '.join(same) or '-'}")
    print("\ns/fit: the mean wall time of one task (fit, mesh, metrics) where it ran; "
          "same results: executors with the same threads per fit whose metrics agree within 1e-6.")


if __name__ == "__main__":
    main()
