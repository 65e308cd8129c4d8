"""Fair sharing: training steps per second of a default fit, alone and beside competing processes.

Each scenario runs real fits (``recon fit``, default settings, the embedded default scene) in
subprocesses and reads their speed from the step timings in ``metrics.jsonl`` (``elapsed_s``
counts training steps only, not validation or checkpoints), over steps ``--window`` (default
100-250). Scenarios: alone; beside 1 and beside 3 busy processes (a Python loop each); beside 2
PyTorch processes of 2 threads each running small ops (other people's jobs on a shared machine,
with torch's default OpenMP wait policy); two fits side by side (their rates added). Each rate is also given as a ratio of the alone rate: a fair
share of a 2-core machine is 0.5x beside one busy process (or more: the busy loop is one thread),
and two fits together should do at least the work of one.

Two variants run one after the other in every scenario, so that load drifts on a shared machine
touch both alike: ``recon`` (the command as shipped: recon sets ``OMP_WAIT_POLICY=PASSIVE``
before torch loads, ``recon/__init__.py``, so threads sleep at once at every barrier) and
``torch-first`` (torch imported before recon, so libgomp keeps its default policy: spin, then
sleep). Two more can be asked for: ``spin10k``, ``torch-first`` with ``GOMP_SPINCOUNT=10000`` (a
short spin, then sleep), and ``active``, the shipped command with ``OMP_WAIT_POLICY=ACTIVE``.
Each variant's ratios are to its own alone rate. The scene is made in a subprocess, so that this
process never imports recon and its fits inherit no policy from it.

Run on a quiet machine (the alone rate must be alone):
    .venv/bin/python benchmarks/bench_contention.py [--scene DIR] [--window 100 250] [--repeats 1]
        [--variants recon,torch-first,spin10k,active] [--env NAME=VALUE ...]
        [--scenarios alone,busy1,busy3,torch2,pair] [section.key=value ...]
``--env`` sets variables for the fits of every variant (e.g. GOMP_SPINCOUNT=10000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY_LOOP = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
TORCH_LOOP = ("import time, torch\ntorch.set_num_threads(2)\na = torch.randn(192, 192)\n"
              "end = time.time() + {seconds}\nwhile time.time() < end:\n    a = torch.tanh(a @ a * 0.01)\n")
"""A competitor as other people's PyTorch jobs are: small multi-threaded ops, torch's default OpenMP policy."""
SCENARIOS = ("alone", "busy1", "busy3", "torch2", "pair")
TORCH_FIRST = ["-c", "import sys, torch; from recon.cli import main; sys.exit(main(sys.argv[1:]))"]
VARIANTS = {
    "recon": (["-m", "recon.cli"], {}),
    "torch-first": (TORCH_FIRST, {}),
    "spin10k": (TORCH_FIRST, {"GOMP_SPINCOUNT": "10000"}),
    "active": (["-m", "recon.cli"], {"OMP_WAIT_POLICY": "ACTIVE"}),
}
"""How each variant starts ``recon fit``, and what it adds to the environment: as shipped (recon sets
``OMP_WAIT_POLICY=PASSIVE`` before torch loads); torch imported first, so that libgomp keeps its
default policy (spin 300000 rounds, then sleep); the default policy with a short spin (10000 rounds);
threads that never sleep (a user's choice for one fit on a machine of its own)."""


@dataclass
class Fit:
    process: subprocess.Popen
    run: Path


def start_fit(variant: str, scene: Path, run: Path, iters: int, overrides: list[str], env: dict[str, str]) -> Fit:
    """A ``recon fit`` of ``iters`` steps in a subprocess, logging every 10 steps."""
    prefix, variant_env = VARIANTS[variant]
    command = [sys.executable, *prefix, "fit", str(scene), "--out", str(run), "--iters", str(iters),
               "--quiet", "train.log_every=10", "train.val_every=0", f"train.ckpt_every={iters}", *overrides]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **variant_env, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return Fit(process, run)


def steps_per_second(run: Path, window: tuple[int, int]) -> float:
    """Training steps per second between the log lines of steps ``window[0]`` and ``window[1]``."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    first, last = window
    return (last - first) / (elapsed[last] - elapsed[first])


def busy_processes(count: int, seconds: float, loop: str = BUSY_LOOP) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # competitors keep torch's default
    return [subprocess.Popen([sys.executable, "-c", loop.format(seconds=seconds)], env=env) for _ in range(count)]


def run_scenario(name: str, variant: str, scene: Path, work: Path, args: argparse.Namespace,
                 env: dict[str, str]) -> list[float]:
    """The rates (steps per second) of the fits of one scenario."""
    iters = args.window[1]
    n_fits = 2 if name == "pair" else 1
    n_busy = {"alone": 0, "busy1": 1, "busy3": 3, "torch2": 2, "pair": 0}[name]
    busy = busy_processes(n_busy, seconds=3600.0, loop=TORCH_LOOP if name == "torch2" else BUSY_LOOP)
    try:
        time.sleep(3.0 if n_busy else 0.0)  # let the competitors take their cores
        fits = [start_fit(variant, scene, work / f"{variant}_{name}_{i}", iters, args.overrides, env)
                for i in range(n_fits)]
        for fit in fits:
            _, err = fit.process.communicate()
            if fit.process.returncode != 0:
                raise SystemExit(f"fit failed ({name}): {err.strip().splitlines()[-1] if err.strip() else ''}")
    finally:
        for process in busy:
            process.kill()
    return [steps_per_second(fit.run, tuple(args.window)) for fit in fits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=None, help="scene folder (default: synthesise the default scene)")
    parser.add_argument("--window", type=int, nargs=2, default=(100, 250), help="steps to time (multiples of 10)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat every scenario, report the median")
    parser.add_argument("--variants", default="recon,torch-first", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment of the fits")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("overrides", nargs="*", help="config overrides for every fit (section.key=value)")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="recon_contention_") as tmp:
        work = Path(tmp)
        scene = args.scene or synthesise_default(work / "scene")
        rows: dict[tuple[str, str], list[float]] = {}
        for name in args.scenarios.split(","):
            runs: dict[str, list[list[float]]] = {v: [] for v in variants}
            for repeat in range(args.repeats):
                for variant in variants:  # alternated, so that load drifts touch both
                    runs[variant].append(run_scenario(name, variant, scene, work / f"r{repeat}", args, env))
                    print(f"{name} / {variant}: {' + '.join(f'{r:.2f}' for r in runs[variant][-1])} it/s", flush=True)
            for variant in variants:
                rows[(name, variant)] = sorted(runs[variant], key=sum)[len(runs[variant]) // 2]  # median by total
    print(f"\nenv: {env or '(default)'}; steps {args.window[0]}-{args.window[1]} of a default fit; "
          f"{os.cpu_count()} cores; {args.repeats} repeat(s), the median")
    print(f"{'scenario':<10} {'variant':<12} {'rates (it/s)':<16} {'total':>7} {'x alone':>8}")
    for (name, variant), rates in rows.items():
        alone = rows.get(("alone", variant))
        ratio = f"{sum(rates) / sum(alone):.2f}" if alone else "-"
        print(f"{name:<10} {variant:<12} {' + '.join(f'{r:.2f}' for r in rates):<16} {sum(rates):>7.2f} {ratio:>8}")


def synthesise_default(out: Path) -> Path:
    """The default scene, made in a subprocess: importing recon here would hand the fits this
    process's environment as recon leaves it, not the variant's."""
    subprocess.run([sys.executable, "-m", "recon.cli", "synth", str(out)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return out


if __name__ == "__main__":
    main()
