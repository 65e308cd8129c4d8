"""Tasks for the sweep tests that lose their worker: importable by spawned workers and Ray workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recon.compare import ArmTask, run_arm

MARKER = "died_once"


def die_once(task: ArmTask) -> dict[str, Any]:
    """The first time (no marker in the run folder yet) the worker dies abruptly; then the arm runs."""
    marker = Path(task.run_dir) / MARKER
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        os._exit(9)
    return run_arm(task)


def always_die(task: ArmTask) -> dict[str, Any]:
    """The worker dies every time, leaving a line per attempt in the run folder."""
    marker = Path(task.run_dir) / MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    with marker.open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    os._exit(9)
