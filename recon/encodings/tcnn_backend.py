"""Optional tiny-cuda-nn backend for the grid encodings (CUDA only).

``tinycudann`` is imported lazily, inside functions, and only when asked for: importing
``recon.encodings`` never touches it. Without CUDA its import raises ``OSError`` (or
``ImportError`` when it is not installed); both count as "unavailable".
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import nn

from recon.config import EncodingConfig
from recon.errors import InputError
from recon.encodings.grid import matched_dense_resolution


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


def tcnn_encoding_config(cfg: EncodingConfig, kind: str = "hashgrid") -> dict[str, Any]:
    """tiny-cuda-nn's encoding dict for ``cfg`` (HashGrid or a one-level DenseGrid)."""
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
            "base_resolution": cfg.dense_resolution or matched_dense_resolution(cfg),
            "per_level_scale": 1.0,
            "interpolation": interpolation,
        }
    raise ValueError(f"tiny-cuda-nn backend serves hashgrid and densegrid, not {kind!r}")


class TcnnGridEncoding(nn.Module):
    """``tinycudann.Encoding`` with ``GridEncoding``'s interface (float32 in and out).

    ``forward``: (..., 3) points in [0, 1]^3 (clamped) -> (..., out_dim). The table is the
    parameter ``params``, laid out as ``GridEncoding`` lays it out.
    """

    def __init__(self, cfg: EncodingConfig, device: torch.device | str, kind: str = "hashgrid") -> None:
        super().__init__()
        tcnn, reason = _import_tcnn()
        device = torch.device(device)
        if tcnn is None:
            raise InputError("encoding.backend", f"'tcnn' needs tinycudann, which does not import ({reason})")
        if device.type != "cuda":
            raise InputError("encoding.backend", f"'tcnn' runs on CUDA only, not on {device}")
        self.config = tcnn_encoding_config(cfg, kind)
        with torch.cuda.device(device):
            encoding = tcnn.Encoding(3, self.config, dtype=torch.float32)
        self.params = encoding.params  # registered first, so named_parameters() calls it "params"
        self.encoding = encoding
        with torch.no_grad():
            self.params.uniform_(-cfg.init_scale, cfg.init_scale)
        self._out_dim = int(encoding.n_output_dims)

    @property
    def out_dim(self) -> int:
        """Features per point: levels x features per level."""
        return self._out_dim

    def n_params(self) -> int:
        """Number of scalars in the table."""
        return self.params.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) points in [0, 1]^3 -> (..., out_dim) float32 features."""
        if x.shape[-1] != 3:
            raise ValueError(f"TcnnGridEncoding expects points of shape (..., 3), got {tuple(x.shape)}")
        flat = x.reshape(-1, 3).float().clamp(0.0, 1.0).contiguous()
        return self.encoding(flat).float().reshape(*x.shape[:-1], self._out_dim)
