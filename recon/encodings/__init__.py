"""Grid encodings of points in [0, 1]^3, behind one factory that picks the backend once.

Modules: ``layout`` (levels, sizes, the flat table), ``base`` (the protocol and the base
class every backend shares), one module per backend (``torch_backend``, ``fused``,
``tcnn_backend``, ``triton_backend``), and their helpers (``workers``: the level-parallel
thread pool; ``autograd``: the backward plumbing and the nodes of the kernel backends;
``cpp_build``: the fused kernel's build; ``triton_kernels``: the Triton kernels, imported only
when that backend is used). A new backend is one module (a ``GridEncoding`` subclass with ``unavailable`` and
``_encode``) plus one line in ``BACKENDS`` (and its place in ``AUTO``).
"""

from __future__ import annotations

import torch

from recon.config import EncodingConfig
from recon.encodings.base import Encoding, GridEncoding
from recon.encodings.fused import FusedGridEncoding
from recon.encodings.layout import GridKind, GridLevel, hash_grid_levels, matched_dense_resolution
from recon.encodings.tcnn_backend import TcnnGridEncoding
from recon.encodings.torch_backend import TorchGridEncoding
from recon.encodings.triton_backend import TritonGridEncoding

__all__ = [
    "AUTO",
    "BACKENDS",
    "Encoding",
    "FusedGridEncoding",
    "GridEncoding",
    "GridKind",
    "GridLevel",
    "TcnnGridEncoding",
    "TorchGridEncoding",
    "TritonGridEncoding",
    "backend_class",
    "hash_grid_levels",
    "make_encoding",
    "matched_dense_resolution",
]

BACKENDS: dict[str, type[GridEncoding]] = {
    "torch": TorchGridEncoding,
    "tcnn": TcnnGridEncoding,
    "fused": FusedGridEncoding,
    "triton": TritonGridEncoding,
}
"""``encoding.backend`` -> the class that computes the encoding."""

AUTO: dict[str, tuple[str, ...]] = {"cuda": ("tcnn", "triton", "torch"), "cpu": ("fused", "torch")}
"""``encoding.backend: auto``: the backends to try, in order, per device type (any other: torch)."""


def backend_class(name: str, device: torch.device) -> type[GridEncoding]:
    """The class for backend ``name`` on ``device``; ``auto``: the first in ``AUTO`` that can run there.

    An explicit backend is returned as it is: its constructor raises ``InputError`` when it
    cannot run on ``device``.
    """
    if name == "auto":
        order = AUTO.get(device.type, ("torch",))
        usable = (BACKENDS[choice] for choice in order if BACKENDS[choice].unavailable(device) is None)
        return next(usable, TorchGridEncoding)
    if name not in BACKENDS:
        raise ValueError(f"encoding backend must be one of {', '.join(['auto', *BACKENDS])}, got {name!r}")
    return BACKENDS[name]


def make_encoding(cfg: EncodingConfig, kind: GridKind, device: torch.device | str) -> GridEncoding:
    """Build the ``kind`` grid (``hashgrid`` or ``densegrid``) that ``cfg`` describes, on ``device``.

    The backend is ``cfg.backend`` (see ``backend_class``): ``torch`` (pure PyTorch, any
    device), ``tcnn`` (tiny-cuda-nn, CUDA), ``triton`` (Triton kernels, CUDA), ``fused`` (the
    compiled CPU kernel, built on first use); ``auto``: on a CUDA device tiny-cuda-nn when it
    imports, else Triton when it imports; on the CPU the fused kernel when it builds (else one
    warning); else pure PyTorch. A backend that cannot be used raises
    ``InputError("encoding.backend", ...)``.
    """
    device = torch.device(device)
    return backend_class(cfg.backend, device)(cfg, kind, device)
