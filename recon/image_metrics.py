"""Image similarity of a render against its photograph: SSIM as NeRF papers compute it, and LPIPS when
its weights are on this machine. (PSNR is ``recon.losses.psnr``.)

SSIM: scikit-image's ``structural_similarity`` with the settings of Wang et al. 2004 that NeRF,
mip-NeRF and their successors use: an 11 x 11 Gaussian window of sigma 1.5 (``gaussian_weights``;
skimage's default 7 x 7 uniform window gives other numbers), population covariances
(``use_sample_covariance=False``), K1 = 0.01, K2 = 0.03, ``data_range=1`` for colours in [0, 1],
the SSIM map averaged over the three channels and over the pixels whose whole window lies in the
image (mip-NeRF's ``valid`` convolution; skimage crops the same 5-pixel border).

LPIPS (``recon[lpips]``, the ``lpips`` package, AlexNet features as the package's default and
nerfstudio use) is used only when the package imports and its weights are already on disk: the
package's own linear layers and torchvision's AlexNet in the torch hub cache. Nothing is downloaded
while scoring; without them the score is left out, with one info line.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

log = logging.getLogger(__name__)

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
"""Side of the Gaussian window skimage uses for sigma 1.5 (``2 * int(3.5 sigma + 0.5) + 1``)."""
LPIPS_NET = "alex"
LPIPS_MIN_SIDE = 32
"""Smaller images leave AlexNet's deepest layers with no pixels: LPIPS is left out for them."""
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
"""torchvision's ImageNet AlexNet, as the torch hub cache names it (``TORCH_HOME/hub/checkpoints``)."""


def ssim_map(rgb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(H, W, 3) images in [0, 1] -> (H - 10, W - 10) SSIM per pixel (mean over channels), the pixels
    whose whole window lies inside the image."""
    _, full = structural_similarity(
        np.asarray(rgb, dtype=np.float64), np.asarray(target, dtype=np.float64), channel_axis=-1, data_range=1.0,
        gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False, full=True,
    )
    pad = (SSIM_WINDOW - 1) // 2
    return full[pad:-pad, pad:-pad].mean(axis=-1)


def ssim(rgb: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Mean SSIM of ``rgb`` against ``target`` (H, W, 3): over the whole image, or over the pixels of
    ``mask`` (H, W) (each pixel's window still reads its neighbours, inside the mask or not). None
    when the image is smaller than the window or the mask holds no pixel whose window fits."""
    if min(rgb.shape[:2]) < SSIM_WINDOW:
        return None
    values = ssim_map(rgb, target)
    if mask is None:
        return float(values.mean())
    pad = (SSIM_WINDOW - 1) // 2
    inside = np.asarray(mask, dtype=bool)[pad:-pad, pad:-pad]
    return float(values[inside].mean()) if inside.any() else None


def lpips_weights_present(package_dir: Path, hub_dir: Path) -> bool:
    """Whether the LPIPS linear layers (``package_dir/weights/v0.1/alex.pth``) and torchvision's AlexNet
    (``hub_dir/checkpoints``) are on disk."""
    return ((package_dir / "weights" / "v0.1" / f"{LPIPS_NET}.pth").is_file()
            and (hub_dir / "checkpoints" / ALEXNET_WEIGHTS).is_file())


@functools.lru_cache(maxsize=1)
def lpips_model() -> torch.nn.Module | None:
    """The LPIPS network (eval mode, CPU), built once; None, with one info line, when the package or its
    weights are missing."""
    try:
        import lpips
    except Exception as err:  # noqa: BLE001 - ImportError, or torchvision failing to load its extension
        log.info("LPIPS left out: the lpips package does not import (%s: %s); pip install 'recon[lpips]'",
                 type(err).__name__, err)
        return None
    if not lpips_weights_present(Path(lpips.__file__).parent, Path(torch.hub.get_dir())):
        log.info("LPIPS left out: its weights are not on this machine (torchvision's %s in %s/checkpoints); "
                 "recon never downloads them while scoring", ALEXNET_WEIGHTS, torch.hub.get_dir())
        return None
    return lpips.LPIPS(net=LPIPS_NET, verbose=False).eval()


def lpips_distance(rgb: np.ndarray, target: np.ndarray,
                   model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float | None:
    """LPIPS between two (H, W, 3) images in [0, 1] (lower is closer); None when LPIPS is unavailable or the
    images are smaller than ``LPIPS_MIN_SIDE``."""
    if min(rgb.shape[:2]) < LPIPS_MIN_SIDE:
        return None
    model = model if model is not None else lpips_model()
    if model is None:
        return None

    def as_input(image: np.ndarray) -> torch.Tensor:  # (1, 3, H, W) in [-1, 1], as LPIPS expects
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] * 2.0 - 1.0

    with torch.no_grad():
        return float(model(as_input(rgb), as_input(target)).reshape(-1)[0])
