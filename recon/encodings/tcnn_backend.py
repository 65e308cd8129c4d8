"""Optional tiny-cuda-nn backend for the grid encodings (CUDA only).

``tinycudann`` is imported lazily, inside functions, and only when asked for: importing
``recon.encodings`` never touches it. Without CUDA its import raises ``OSError`` (or
``ImportError`` when it is not installed); both count as "unavailable".

The table is the base class's ``params``, handed to the ``tinycudann.Encoding`` in place of
its own; that module is kept out of the module tree, so ``state_dict()`` holds ``params``
alone, as with every other backend.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import nn

from recon.config import EncodingConfig
from recon.encodings.base import GridEncoding
from recon.encodings.layout import GridKind, dense_grid_resolution


def _import_tcnn() -> tuple[ModuleType | None, str]:
    """(tinycudann, "") when it imports, else (None, the reason)."""
    try:
        import tinycudann
    except (ImportError, OSError) as err:
        return None, f"{type(err).__name__}: {err}"
    return tinycudann, ""


def tcnn_available() -> bool:
    """Whether ``tinycudann`` imports (CUDA and the extension both present)."""
    return _import_tcnn()[0] is not None


def tcnn_encoding_config(cfg: EncodingConfig, kind: GridKind) -> dict[str, Any]:
    """tiny-cuda-nn's encoding dict for the ``kind`` grid of ``cfg`` (HashGrid or a one-level DenseGrid)."""
    interpolation = {"linear": "Linear", "smoothstep": "Smoothstep"}[cfg.interpolation]
    if kind == "hashgrid":
        return {
            "otype": "HashGrid",
            "n_levels": cfg.n_levels,
            "n_features_per_level": cfg.n_features_per_level,
            "log2_hashmap_size": cfg.log2_hashmap_size,
            "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale,
            "interpolation": interpolation,
        }
    if kind == "densegrid":
        return {
            "otype": "DenseGrid",
            "n_levels": 1,
            "n_features_per_level": cfg.dense_features,
            "base_resolution": dense_grid_resolution(cfg),
            "per_level_scale": 1.0,
            "interpolation": interpolation,
        }
    raise ValueError(f"tiny-cuda-nn backend serves hashgrid and densegrid, not {kind!r}")


class TcnnGridEncoding(GridEncoding):
    """The grid encoding computed by ``tinycudann.Encoding`` (CUDA, float32 in and out)."""

    def __init__(self, cfg: EncodingConfig, kind: GridKind, device: torch.device | str = "cuda") -> None:
        super().__init__(cfg, kind, device)
        tcnn, _ = _import_tcnn()
        self.config = tcnn_encoding_config(cfg, kind)
        with torch.cuda.device(torch.device(device)):
            native = tcnn.Encoding(3, self.config, dtype=torch.float32)
        if native.params.numel() != self.n_params() or int(native.n_output_dims) != self.out_dim:
            raise RuntimeError(
                f"tiny-cuda-nn lays out {native.params.numel()} parameters and {native.n_output_dims} outputs, "
                f"recon {self.n_params()} and {self.out_dim}"
            )
        native.params = self.params  # its forward reads the shared table
        self._native: tuple[nn.Module] = (native,)  # a tuple: not a submodule, so no second state_dict key

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """When ``tinycudann`` does not import, or off CUDA."""
        tcnn, reason = _import_tcnn()
        if tcnn is None:
            return f"'tcnn' needs tinycudann, which does not import ({reason})"
        if device.type != "cuda":
            return f"'tcnn' runs on CUDA only, not on {device}"
        return None

    def extra_repr(self) -> str:
        return "tiny-cuda-nn, " + super().extra_repr()

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) float32 points -> (N, out_dim) float32 features."""
        native = self._native[0]
        if native.params is not self.params:  # replaced since (load_state_dict(assign=True), ...)
            native.params = self.params
        return native(points).float()
