"""Image resampling at load time: area downscaling and lens undistortion.

Pixel convention (as :class:`~recon.datasets.scene.Scene`): integer coordinates are
pixel centres. Downscaling by an integer factor ``d`` averages ``d x d`` blocks, so
the new pixel ``u'`` is centred on old ``d u' + (d - 1) / 2``: ``fx' = fx / d`` and
``cx' = (cx + 0.5) / d - 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.errors import InputError


def downscaled_intrinsics(K: np.ndarray, factor: float) -> np.ndarray:
    """(..., 3, 3) intrinsics of images resized by 1 / ``factor`` with pixel centres aligned."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., :2, :] /= factor
    K[..., :2, 2] += 0.5 / factor - 0.5
    return K


def downscaled_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(H', W'): the whole blocks of ``factor x factor`` pixels (a remainder is cropped, see
    ``crop_warning``). A factor larger than the image is an ``InputError``: every loader calls this
    before it decodes a pixel."""
    if not 1 <= factor <= min(height, width):
        raise InputError("data.downscale (--downscale)", f"must be in [1, {min(height, width)}] for these "
                         f"{width}x{height} (WxH) images, got {factor}")
    return height // factor, width // factor


def crop_warning(height: int, width: int, factor: int) -> str | None:
    """What downscaling (H, W) images by ``factor`` crops, when it does not divide the size."""
    rows, cols = height % factor, width % factor
    if not rows and not cols:
        return None
    return (f"--downscale {factor} does not divide the {width}x{height} (WxH) images: the last {cols} columns and "
            f"{rows} rows of pixels are cropped (intrinsics unchanged)")


def downscale_uint8(image: np.ndarray, factor: int) -> np.ndarray:
    """(H', W'[, C]) block mean of a uint8 image, rounded, computed in integers."""
    if factor == 1:
        return image
    h, w = downscaled_size(image.shape[0], image.shape[1], factor)
    rows = image[: h * factor, : w * factor].reshape(h, factor, -1).sum(axis=1, dtype=np.uint32)  # 4x faster
    total = rows.reshape(h, w, factor, *image.shape[2:]).sum(axis=2, dtype=np.uint32)  # than one 2-axis sum
    return ((total + factor * factor // 2) // (factor * factor)).astype(np.uint8)


def downscale_float(array: np.ndarray, factor: int) -> np.ndarray:
    """(H', W', ...) float32 block mean."""
    if factor == 1:
        return array.astype(np.float32, copy=False)
    h, w = downscaled_size(array.shape[0], array.shape[1], factor)
    blocks = array[: h * factor, : w * factor].reshape(h, factor, w, factor, *array.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def distort(xy: np.ndarray, coeffs: dict[str, float]) -> np.ndarray:
    """OpenCV / COLMAP ``OPENCV`` lens model on (..., 2) normalised camera coordinates.

    ``x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6) + 2 p1 x y + p2 (r^2 + 2 x^2)`` and
    ``y_d = y (...) + p1 (r^2 + 2 y^2) + 2 p2 x y``.
    """
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (coeffs.get("k1", 0.0) + r2 * (coeffs.get("k2", 0.0) + r2 * coeffs.get("k3", 0.0)))
    p1, p2 = coeffs.get("p1", 0.0), coeffs.get("p2", 0.0)
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


@dataclass(frozen=True)
class UndistortMap:
    """Bilinear lookup from each undistorted pixel into the distorted image.

    index: (H W,) int64 flat index of the top-left source neighbour; wx, wy: (H W, 1)
    float32 weights of the right and lower neighbours; width: the source row length.
    """

    index: np.ndarray
    wx: np.ndarray
    wy: np.ndarray
    width: int
    shape: tuple[int, int]


def undistort_map(K: np.ndarray, coeffs: dict[str, float], height: int, width: int) -> UndistortMap:
    """The exact inverse map: every output pixel (same ``K``, no distortion) is pushed through
    the forward lens model to where the distorted image saw it (clamped to the border)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    d = distort(np.stack([x, y], axis=-1), coeffs)
    src_u = np.clip(fx * d[..., 0] + skew * d[..., 1] + cx, 0.0, width - 1.0)
    src_v = np.clip(fy * d[..., 1] + cy, 0.0, height - 1.0)
    u0 = np.minimum(np.floor(src_u), width - 2).astype(np.int64)
    v0 = np.minimum(np.floor(src_v), height - 2).astype(np.int64)
    wx = (src_u - u0).astype(np.float32).reshape(-1, 1)
    wy = (src_v - v0).astype(np.float32).reshape(-1, 1)
    return UndistortMap((v0 * width + u0).reshape(-1), wx, wy, width, (height, width))


def undistort_maps(K: np.ndarray, coeffs: list[dict[str, float]], size: tuple[int, int]) -> list[UndistortMap | None]:
    """One map per view (shared between views with the same camera), None without distortion."""
    cache: dict[tuple, UndistortMap] = {}
    maps: list[UndistortMap | None] = []
    for k, c in zip(K, coeffs):
        if not c:
            maps.append(None)
            continue
        key = (tuple(np.round(k.ravel(), 9)), tuple(sorted(c.items())))
        if key not in cache:
            cache[key] = undistort_map(k, c, *size)
        maps.append(cache[key])
    return maps


UNDISTORT_CHUNK = 1 << 18
"""Output pixels resampled at once: bounds the float temporaries to a few MB per thread."""


def undistort_uint8(image: np.ndarray, mapping: UndistortMap) -> np.ndarray:
    """(H, W, C) uint8 image resampled through ``mapping`` (bilinear), chunk by chunk.

    Pixels are padded to four channels and gathered as one uint32 each (about 3x faster than
    byte rows); an (H, W) image comes back (H, W).
    """
    if image.ndim == 2:
        return undistort_uint8(image[..., None], mapping)[..., 0]
    channels = image.shape[-1]
    pad = np.zeros((*image.shape[:2], 4 - channels), np.uint8)
    rgba = image if channels == 4 else np.concatenate([image, pad], axis=-1)
    flat = np.ascontiguousarray(rgba).reshape(-1).view(np.uint32)
    out = np.empty((mapping.index.shape[0], 4), dtype=np.uint8)
    w = mapping.width

    def gather(index: np.ndarray) -> np.ndarray:
        return flat[index].view(np.uint8).reshape(-1, 4).astype(np.float32)

    for start in range(0, out.shape[0], UNDISTORT_CHUNK):
        sl = slice(start, start + UNDISTORT_CHUNK)
        i, wx, wy = mapping.index[sl], mapping.wx[sl], mapping.wy[sl]
        top = gather(i)
        top += (gather(i + 1) - top) * wx
        bottom = gather(i + w)
        bottom += (gather(i + w + 1) - bottom) * wx
        top += (bottom - top) * wy
        top += 0.5
        out[sl] = top
    return out[:, :channels].reshape(*mapping.shape, channels)
