"""Building, loading and caching the fused CPU kernel (``csrc/fused_grid.cpp``).

It is built with ``torch.utils.cpp_extension.load`` the first time it is needed (never at
import), with ``-O3`` and OpenMP, and cached under ``$XDG_CACHE_HOME/recon/torch_extensions``
(default ``~/.cache``; ``RECON_EXTENSIONS_DIR`` overrides it). When it cannot be built (no
compiler, no ninja, a failed build) ``load_extension`` logs one warning and returns None, and
``make_encoding`` falls back to the pure-PyTorch encoding.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_grid.cpp"
EXTENSION_NAME = "recon_fused_grid"
BUILD_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
"""-ffp-contract=off: no fused multiply-adds, so positions round as in the PyTorch reference."""

_build_lock = threading.Lock()
_extension: ModuleType | None = None
_failure: str | None = None


def extensions_dir() -> Path:
    """Where the compiled kernel is cached: one folder per Python and torch version."""
    root = os.environ.get("RECON_EXTENSIONS_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recon" / "torch_extensions"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
    return base / tag


def _build() -> ModuleType:
    """Compile (or reuse the cached build of) the kernel and import it."""
    from torch.utils import cpp_extension  # imports setuptools machinery: only when building

    build_dir = extensions_dir() / EXTENSION_NAME
    build_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(build_dir / "lock")
    _put_ninja_on_path()
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(SOURCE)],
        extra_cflags=BUILD_FLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=False,
    )


STALE_LOCK_S = 600.0
"""A build lock older than this was left by a killed build (torch would wait on it forever)."""


def _remove_stale_lock(lock: Path) -> None:
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
            log.warning("recon: removed a stale build lock %s", lock)
    except FileNotFoundError:
        pass


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH: add the pip package's binary when a venv is not activated."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return  # the build then fails with torch's own message, and we fall back
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def load_extension() -> ModuleType | None:
    """The compiled kernel, built on first use; None (after one warning) when it cannot be built."""
    global _extension, _failure
    with _build_lock:
        if _extension is None and _failure is None:
            log.info("building the fused CPU grid kernel (once; cached in %s)", extensions_dir())
            try:
                _extension = _build()
            except Exception as err:  # no compiler or ninja, a failed build or import: fall back
                lines = str(err).strip().splitlines()
                _failure = f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
                log.debug("fused CPU grid kernel build failed", exc_info=True)
                log.warning(
                    "recon: the fused CPU grid kernel could not be built (%s); using the pure-PyTorch encoding",
                    _failure,
                )
        return _extension


def extension_failure() -> str | None:
    """Why the kernel could not be built (None when it was, or has not been tried)."""
    return _failure
