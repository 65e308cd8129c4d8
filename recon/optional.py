"""Optional dependencies: imported where a command needs them, with a one-line error naming the extra.

``require("open3d")`` returns the module, or raises :class:`MissingDependencyError` saying what
needs it and what to install (the CLI prints that line and exits with code 4). Every optional
module recon imports is listed in ``OPTIONAL``, beside the ``pyproject.toml`` extra that brings it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from recon.errors import MissingDependencyError


@dataclass(frozen=True)
class Optional:
    """An optional module: the pip extra that installs it, the pip package, what recon uses it for."""

    extra: str
    package: str
    purpose: str


OPTIONAL: dict[str, Optional] = {
    "open3d": Optional("metrics", "open3d", "ray casting and nearest neighbours (synth, eval, compare, scoring a fit)"),
    "pycolmap": Optional("test", "pycolmap", "cross-checking recon's COLMAP reader in the tests"),
    "xatlas": Optional("texture", "xatlas", "the UV atlas of a textured mesh (extract --color texture)"),
    "torch.utils.tensorboard": Optional("tensorboard", "tensorboard", "writing TensorBoard event files (train.tensorboard=on)"),
    "lpips": Optional("lpips", "lpips", "LPIPS of held-out views"),
}


def require(module: str) -> ModuleType:
    """The optional ``module`` (a key of ``OPTIONAL``), or a one-line :class:`MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need = OPTIONAL[module]
        raise MissingDependencyError(
            f"{module} is not installed, and {need.purpose} needs it: install recon's '{need.extra}' extra "
            f"(pip install '.[{need.extra}]' in recon's folder) or pip install {need.package} "
            f"[{type(exc).__name__}: {exc}]"
        ) from exc
