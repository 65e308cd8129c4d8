"""recon: multi-resolution neural surface reconstruction from posed images."""

import os

# OpenMP threads (torch's intra-op pool and the fused CPU kernel share torch's libgomp) wait at
# every barrier. By default libgomp spins there first, which on a shared machine burns the cores
# other processes need and stalls every parallel region whose threads were descheduled: measured
# in benchmarks/bench_contention.py and docs/DECISIONS.md. Sleeping threads share fairly. libgomp
# reads this once, when torch loads: it takes effect when recon is imported before torch (the CLI,
# the executors' workers), and an explicit OMP_WAIT_POLICY always wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
