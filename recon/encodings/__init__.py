"""Grid encodings of points in [0, 1]^3, behind one factory that picks the backend."""

from __future__ import annotations

import torch
from torch import nn

from recon.config import EncodingConfig
from recon.errors import InputError
from recon.encodings import fused
from recon.encodings.fused import FusedGridEncoding
from recon.encodings.grid import GridEncoding, GridLevel, matched_dense_resolution
from recon.encodings.tcnn_backend import TcnnGridEncoding, tcnn_available

__all__ = [
    "FusedGridEncoding",
    "GridEncoding",
    "GridLevel",
    "TcnnGridEncoding",
    "make_encoding",
    "matched_dense_resolution",
]

BACKENDS = ("auto", "torch", "tcnn", "fused")


def make_encoding(cfg: EncodingConfig, kind: str, device: torch.device | str) -> nn.Module:
    """Build the encoding ``cfg`` describes on ``device``.

    backend ``torch``: the pure-PyTorch ``GridEncoding``; ``tcnn``: tiny-cuda-nn; ``fused``:
    the compiled CPU kernel (``FusedGridEncoding``, built on first use); either raises
    ``InputError`` when it cannot be used. ``auto``: tiny-cuda-nn on a CUDA device when it
    imports, the fused kernel on the CPU when it builds (else one warning), else ``GridEncoding``.
    """
    device = torch.device(device)
    if cfg.backend not in BACKENDS:
        raise ValueError(f"encoding backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    use_tcnn = cfg.backend == "tcnn" or (cfg.backend == "auto" and device.type == "cuda" and tcnn_available())
    if use_tcnn:
        return TcnnGridEncoding(cfg, device, kind)
    if cfg.backend == "fused" or (cfg.backend == "auto" and device.type == "cpu"):
        if cfg.backend == "fused" and device.type != "cpu":
            raise InputError("encoding.backend", f"'fused' runs on the CPU only, not on {device}")
        if fused.load_extension() is not None:
            return FusedGridEncoding(cfg, kind)
        if cfg.backend == "fused":
            raise InputError("encoding.backend", f"the fused CPU kernel could not be built ({fused.extension_failure()})")
    return GridEncoding(cfg, kind).to(device)
