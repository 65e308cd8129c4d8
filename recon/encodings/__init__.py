"""Grid encodings of points in [0, 1]^3, behind one factory that picks the backend."""

from __future__ import annotations

import torch
from torch import nn

from recon.config import EncodingConfig
from recon.encodings.grid import GridEncoding, GridLevel, matched_dense_resolution
from recon.encodings.tcnn_backend import TcnnGridEncoding, tcnn_available

__all__ = ["GridEncoding", "GridLevel", "TcnnGridEncoding", "make_encoding", "matched_dense_resolution"]


def make_encoding(cfg: EncodingConfig, device: torch.device | str) -> nn.Module:
    """Build the encoding ``cfg`` describes on ``device``.

    backend ``torch``: the pure-PyTorch ``GridEncoding``; ``tcnn``: tiny-cuda-nn (raises
    ``InputError`` when it cannot be used); ``auto``: tiny-cuda-nn on a CUDA device when
    it imports, else ``GridEncoding``.
    """
    device = torch.device(device)
    if cfg.backend not in ("auto", "torch", "tcnn"):
        raise ValueError(f"encoding backend must be auto, torch or tcnn, got {cfg.backend!r}")
    use_tcnn = cfg.backend == "tcnn" or (cfg.backend == "auto" and device.type == "cuda" and tcnn_available())
    if use_tcnn:
        return TcnnGridEncoding(cfg, device)
    return GridEncoding(cfg).to(device)
