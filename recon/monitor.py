"""Monitoring beside ``metrics.jsonl``: TensorBoard scalars and images, when tensorboard is installed.

``train.tensorboard``: ``auto`` writes event files when the ``tensorboard`` package imports (the
``recon[tensorboard]`` extra), ``on`` requires it (a one-line error naming the extra otherwise, exit code 4),
``off`` writes none. Event files go to ``RUN/tensorboard/``; ``tensorboard --logdir RUN`` shows them.

Every record of the metrics log becomes scalars at its step: ``train/<key>`` for the training
lines (``train/loss``, ``train/psnr``, ``train/beta``, ...), ``holdout/<score>`` for the held-out
means (``holdout/psnr``, ``holdout/ssim``, ...). Validation strips (``target | rgb | normal |
depth``) go in as the image ``val``, held-out renders as ``holdout/view_NNN``.

A resumed fit continues the same folder: the writer is opened at the first step it writes, with
TensorBoard's ``purge_step`` set to it, so the events a crashed run wrote after its last
checkpoint are dropped as ``RunDir.truncate_metrics`` drops its log lines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recon.optional import require

TensorBoardMode = Literal["auto", "on", "off"]


class Monitor:
    """Where the trainer's records and pictures go besides the run directory's own files; this base
    class keeps nothing (tensorboard off or not installed)."""

    def scalars(self, record: dict[str, Any]) -> None:
        """One metrics-log record (with its ``step``)."""

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A picture (H, W, 3) uint8 at ``step``."""

    def close(self) -> None:
        """Write out everything kept so far."""


NO_MONITOR = Monitor()


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics-log key: ``holdout_psnr`` -> ``holdout/psnr``, ``loss`` -> ``train/loss``."""
    return f"holdout/{key[len('holdout_'):]}" if key.startswith("holdout_") else f"train/{key}"


class TensorBoardMonitor(Monitor):
    """Writes event files to ``log_dir`` (created at the first write)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer = None

    def _writer_at(self, step: int):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=step)
        return self._writer

    def scalars(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        writer = self._writer_at(step)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(scalar_tag(key), value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._writer_at(step).add_image(tag, np.asarray(image, dtype=np.uint8), step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tensorboard_installed() -> bool:
    """Whether torch's TensorBoard writer imports (it needs the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def open_monitor(log_dir: Path, mode: TensorBoardMode) -> Monitor:
    """The monitor that ``train.tensorboard = mode`` asks for; ``on`` without tensorboard is a
    ``MissingDependencyError`` naming the extra."""
    if mode == "off":
        return NO_MONITOR
    if tensorboard_installed():
        return TensorBoardMonitor(log_dir)
    if mode == "on":
        require("torch.utils.tensorboard")  # raises, naming the extra
    return NO_MONITOR
