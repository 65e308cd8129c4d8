"""Time the grid encodings on this machine: fused kernel vs pure-PyTorch reference vs the floor (CPU);
Triton kernels vs pure PyTorch vs tiny-cuda-nn (CUDA).

Usage: ``python benchmarks/bench_encodings.py [--device cpu|cuda] [--points 65536 ...] [--repeats 5]
[--threads 0] [--clock wall|cpu]`` (``--device cuda``: 2^18 and 2^20 points by default)

Passes (the hash grid and the parameter-matched dense grid, MonoSDF's defaults):

* forward: ``enc(x)`` as in training (graph kept for the backward);
* forward+backward: then ``backward`` of a loss on the features, to the table and the points;
* eikonal: forward, ``g = d(features . v)/dx`` with ``create_graph=True``, then
  ``backward`` of ``mean((|g| - 1)^2)`` (the double backward, to the table, ``v`` and x);
* train step: the eikonal pass plus a loss on the features and the SDF, as a training step
  has (its two table gradients are scattered in one pass).

Rows: ``fused`` (the compiled CPU kernel), ``torch`` (the pure-PyTorch reference), and
``floor``: the memory traffic each pass cannot avoid, timed with torch's own primitives
on the same corner indices in the same run: the forward gathers every corner row of every
level (``index_select``, one 4- or 8-byte word per row when it fits, as the reference
reads), and each backward scatters once into the table (``index_add_``, levels spread
over the threads); forward+backward, eikonal and the train step each cost one gather and
one scatter. A second table compares the fused kernel's two scatter strategies.

On CUDA the rows are ``triton`` (the Triton kernels), ``torch`` and ``tcnn`` (tiny-cuda-nn's
grid, when it imports), each pass timed between ``torch.cuda.synchronize()`` calls, and the
ratios triton / tcnn are printed (the targets: forward+backward within 1.5x, eikonal within 2x).

Each cell is the best of ``--repeats`` runs (the machine may be shared), in milliseconds,
with millions of points per second beside it. ``--clock cpu`` times process CPU time
instead of wall time: steadier on a busy machine, and comparable across rows only at
``--threads 1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from recon.config import EncodingConfig  # noqa: E402
from recon.encodings import (  # noqa: E402
    FusedGridEncoding,
    GridEncoding,
    TcnnGridEncoding,
    TorchGridEncoding,
    TritonGridEncoding,
    matched_dense_resolution,
)
from recon.encodings import cpp_build, fused  # noqa: E402
from recon.encodings.torch_backend import _corner_indices, _index_dtype  # noqa: E402

PASSES = ("forward", "forward+backward", "eikonal", "train step")


def best_ms(
    step: Callable[[], None], repeats: int, clock: Callable[[], float], sync: Callable[[], None] = lambda: None
) -> float:
    """Best time of ``step`` over ``repeats`` runs, after one warm-up run, in ms (``sync`` waits for the
    device before each clock reading)."""
    step()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = clock()
        step()
        sync()
        best = min(best, clock() - start)
    return best * 1e3


def workloads(enc: GridEncoding, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The timed passes on points ``x`` (N, 3)."""
    probe = torch.randn(enc.out_dim, dtype=x.dtype, device=x.device)
    head = torch.randn(enc.out_dim, dtype=x.dtype, device=x.device, requires_grad=True)

    def forward() -> None:
        enc(x.detach().requires_grad_(True))

    def forward_backward() -> None:
        xg = x.detach().requires_grad_(True)
        (enc(xg) @ probe).sum().backward()

    def eikonal() -> None:
        xg = x.detach().requires_grad_(True)
        sdf = enc(xg) @ head
        (grad,) = torch.autograd.grad(sdf.sum(), xg, create_graph=True)
        ((grad.norm(dim=-1) - 1.0) ** 2).mean().backward()

    def train_step() -> None:
        xg = x.detach().requires_grad_(True)
        feats = enc(xg)
        sdf = feats @ head
        (grad,) = torch.autograd.grad(sdf.sum(), xg, create_graph=True)
        (((grad.norm(dim=-1) - 1.0) ** 2).mean() + sdf.abs().mean() + feats.square().mean()).backward()

    return dict(zip(PASSES, (forward, forward_backward, eikonal, train_step)))


def floor_steps(enc: GridEncoding, x: torch.Tensor, threads: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(gather, scatter): every corner row of every level read once, and added to once."""
    grid, n_features = enc.grid, enc.n_features
    table = enc.params.detach()
    word = {4: torch.int32, 8: torch.int64}.get(n_features * 4)
    jobs = []
    for level in grid.levels:
        cell = (x.t() * level.scale + 0.5).floor().to(_index_dtype(level))
        idx = _corner_indices(cell, level).reshape(-1).long()
        rows = grid.level_table(table, level)
        jobs.append((rows.view(word).view(-1) if word else rows, idx, torch.zeros_like(rows)))
    src = torch.randn(len(jobs[0][1]), n_features)
    pool = ThreadPoolExecutor(threads)

    def gather() -> None:
        for rows, idx, _ in jobs:
            rows.index_select(0, idx)

    def scatter_level(job: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        _, idx, grad = job
        grad.zero_()
        grad.index_add_(0, idx, src)

    def scatter() -> None:
        list(pool.map(scatter_level, sorted(jobs, key=lambda job: -job[2].numel())))

    return gather, scatter


def scatter_strategies(enc: FusedGridEncoding, x: torch.Tensor, repeats: int, clock) -> dict[str, float]:
    """ms of the fused table-gradient scatter (features + eikonal term) per strategy."""
    go = torch.randn(len(x), enc.out_dim)
    ggx = torch.randn(len(x), 3)
    times = {}
    for mode in ("owned", "atomic"):
        kernel = fused._Kernel(enc.grid, mode)
        times[mode] = best_ms(lambda k=kernel: k.scatter(x, go, [(ggx, go)]), repeats, clock)
    return times


def cell(ms: float, n_points: int) -> str:
    return f"{ms:7.1f} ms {n_points / ms / 1e3:5.2f} M/s"


def cuda_rows(cfg: EncodingConfig, kind: str, x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """ms per pass of each CUDA implementation (triton, torch, tcnn when it imports) on one table."""
    device = x.device
    reference = TorchGridEncoding(cfg, kind).to(device)
    impls: dict[str, GridEncoding] = {"triton": TritonGridEncoding(cfg, kind, device), "torch": reference}
    if TcnnGridEncoding.unavailable(device) is None:
        impls["tcnn"] = TcnnGridEncoding(cfg, kind, device)
    sync = torch.cuda.synchronize
    rows = {}
    for impl, enc in impls.items():
        enc.load_state_dict(reference.state_dict())
        rows[impl] = [best_ms(step, repeats, time.perf_counter, sync) for step in workloads(enc, x).values()]
    return rows


def main_cuda(args: argparse.Namespace) -> None:
    """The CUDA table: per grid and point count, triton / torch / tcnn, and triton over tcnn."""
    device = torch.device("cuda")
    cfg = EncodingConfig()
    grids = {"hashgrid": "hashgrid", f"densegrid R={matched_dense_resolution(cfg)}": "densegrid"}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, best of {args.repeats}, "
          f"synchronized wall clock; tcnn {'present' if TcnnGridEncoding.unavailable(device) is None else 'absent'}")
    print(f"{'encoding':<16} {'points':>8} {'impl':<6} | " + " | ".join(f"{name:>21}" for name in PASSES))
    for n_points in args.points or [1 << 18, 1 << 20]:
        x = torch.rand(n_points, 3, generator=torch.Generator().manual_seed(0)).to(device)
        for name, kind in grids.items():
            rows = cuda_rows(cfg, kind, x, args.repeats)
            for impl, times in rows.items():
                print(f"{name:<16} {n_points:>8} {impl:<6} | " + " | ".join(cell(ms, n_points) for ms in times))
            if "tcnn" in rows:
                ratios = [t / c for t, c in zip(rows["triton"], rows["tcnn"])]
                print(f"{name:<16} {n_points:>8} {'t/tcnn':<6} | " + " | ".join(f"{r:>20.2f}x" for r in ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--points", type=int, nargs="+", default=None, help="point counts (CPU: the first only, default 65536)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device")
        main_cuda(args)
        return
    args.points = (args.points or [65536])[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    x = torch.rand(args.points, 3)
    cfg = EncodingConfig()
    grids = {"hashgrid": "hashgrid", f"densegrid R={matched_dense_resolution(cfg)}": "densegrid"}
    if cpp_build.load_extension() is None:
        sys.exit(f"the fused kernel could not be built: {cpp_build.extension_failure()}")
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} threads, {args.points:,} points, best of {args.repeats}, "
        f"{args.clock} clock"
    )
    print(f"{'encoding':<16} {'impl':<6} | " + " | ".join(f"{name:>21}" for name in PASSES))
    strategies = {}
    for name, kind in grids.items():
        reference = TorchGridEncoding(cfg, kind)
        fast = FusedGridEncoding(cfg, kind)
        fast.load_state_dict(reference.state_dict())
        for impl, enc in (("fused", fast), ("torch", reference)):
            cells = [cell(best_ms(step, args.repeats, clock), args.points) for step in workloads(enc, x).values()]
            print(f"{name:<16} {impl:<6} | " + " | ".join(cells))
        gather, scatter = floor_steps(reference, x, threads)
        gather_ms, scatter_ms = best_ms(gather, args.repeats, clock), best_ms(scatter, args.repeats, clock)
        floors = [gather_ms] + [gather_ms + scatter_ms] * 3
        print(f"{name:<16} {'floor':<6} | " + " | ".join(cell(ms, args.points) for ms in floors))
        strategies[name] = scatter_strategies(fast, x, args.repeats, clock)
    print("\nfused table-gradient scatter (features + eikonal term), ms:")
    for name, times in strategies.items():
        print(f"  {name:<16} " + "  ".join(f"{mode}: {ms:.1f}" for mode, ms in times.items()))


if __name__ == "__main__":
    main()
