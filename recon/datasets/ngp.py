"""Loader for instant-ngp / nerfstudio ``transforms.json`` captures, and what NeRF-synthetic shares.

``transforms.json``: intrinsics at the top level and/or per frame (``fl_x fl_y cx cy w h``,
or ``camera_angle_x``/``camera_angle_y``), lens distortion ``k1 k2 k3 p1 p2`` (OpenCV's
model; removed at load by an exact inverse map), ``aabb_scale`` and optional ``scale``/
``offset`` (instant-ngp), and ``frames`` of ``file_path`` + ``transform_matrix``.
Poses are camera-to-world in the OpenGL convention (x right, y up, z backwards) and are
converted to the Scene's OpenCV one (``c2w @ diag(1, -1, -1, 1)``). In these formats the
centre of the top-left pixel is (0.5, 0.5), so ``cx, cy`` lose 0.5 here. Frames whose
image file is missing are skipped (as instant-ngp does) with one warning that counts them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from recon.datasets import files
from recon.datasets.normalize import Normalization, from_aabb, from_cameras, normalise_poses
from recon.datasets.resample import (
    UndistortMap,
    downscale_uint8,
    downscaled_intrinsics,
    downscaled_size,
    undistort_maps,
    undistort_uint8,
)
from recon.datasets.scene import Scene
from recon.datasets.validate import check_cameras, check_pose, orthonormalize
from recon.errors import InputError

TRANSFORMS = "transforms.json"
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
DISTORTION_KEYS = ("k1", "k2", "k3", "p1", "p2")
UNSUPPORTED_KEYS = ("k4", "is_fisheye")
NOT_READ = ("mask_path", "depth_file_path")
"""nerfstudio per-frame files recon does not use (its masks mark pixels to ignore, not the object)."""
CAMERA_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
"""Pinhole models whose distortion is k1 k2 (k3) p1 p2 or less; fisheye models are refused."""
BACKGROUNDS = {"white": 255.0, "black": 0.0}
NGP_SCALE, NGP_OFFSET = 0.33, 0.5
"""instant-ngp's default mapping of transforms.json coordinates into its unit cube: p * scale + offset."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or an InputError naming the file."""
    if not path.is_file():
        raise InputError(path, "file does not exist")
    files.check_not_empty(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({files.reason(exc)})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise InputError(path, "expected a JSON object with a 'frames' list")
    return data


def frame_image(root: Path, frame: dict[str, Any], where: Path, index: int) -> Path:
    """The image file a frame names (relative to the JSON; an extensionless name gets .png/.jpg)."""
    name = frame.get("file_path")
    if not isinstance(name, str) or not name:
        raise InputError(where, f"frame {index} has no file_path")
    path = (root / name).resolve()
    if path.suffix.lower() not in files.IMAGE_SUFFIXES:
        for suffix in (".png", ".jpg", ".jpeg"):
            if path.with_name(path.name + suffix).is_file():
                return path.with_name(path.name + suffix)
        return path.with_name(path.name + ".png")
    return path


def frame_pose(frame: dict[str, Any], where: Path, index: int) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world pose of a frame (validated, rotation re-orthonormalised)."""
    view = f"frame {index} ({frame.get('file_path')})"
    try:
        matrix = np.array(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(where, f"{view}: no numeric transform_matrix ({files.reason(exc)})") from None
    pose = check_pose(matrix, where, view) @ OPENGL_TO_OPENCV
    pose[:3, :3] = orthonormalize(pose[:3, :3])
    return pose


def intrinsics_of(
    meta: dict[str, Any], size: tuple[int, int], where: Path, view: str
) -> tuple[np.ndarray, dict[str, float]]:
    """(3, 3) K (pixel centres at integers) and distortion coefficients from merged frame/global keys."""
    for key in UNSUPPORTED_KEYS:
        if meta.get(key):
            raise InputError(where, f"{view}: fisheye lenses ({key}) are not supported")
    if str(meta.get("camera_model", "OPENCV")).upper() not in CAMERA_MODELS:
        raise InputError(where, f"{view}: camera_model {meta['camera_model']!r} is not supported (OPENCV or PINHOLE)")
    h, w = size
    for key, value in (("w", w), ("h", h)):
        if key in meta and int(round(number(meta, key, where, view))) != value:
            raise InputError(where, f"{view}: {key}={meta[key]} but the image is {w}x{h} (WxH)")
    fx = _focal(meta, "fl_x", "camera_angle_x", w, where, view)
    fy = _focal(meta, "fl_y", "camera_angle_y", h, where, view, default=fx)
    cx = number(meta, "cx", where, view, default=w / 2) - 0.5
    cy = number(meta, "cy", where, view, default=h / 2) - 0.5
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    coeffs = {k: number(meta, k, where, view) for k in DISTORTION_KEYS if number(meta, k, where, view, 0.0) != 0.0}
    return K, coeffs


def number(meta: dict[str, Any], key: str, where: Path, view: str, default: float | None = None) -> float:
    """``meta[key]`` as a finite float (``default`` when absent); anything else is an ``InputError``
    naming the file, the view and the key."""
    if key not in meta and default is not None:
        return default
    value = meta.get(key)
    try:
        if isinstance(value, (bool, list, dict)) or value is None:
            raise TypeError
        result = float(value)
    except (TypeError, ValueError):
        raise InputError(where, f"{view}: {key} must be a number, got {value!r}") from None
    if not np.isfinite(result):
        raise InputError(where, f"{view}: {key} must be finite, got {value!r}")
    return result


def _focal(meta: dict[str, Any], key: str, angle_key: str, pixels: int, where: Path, view: str,
           default: float | None = None) -> float:
    if key in meta:
        return number(meta, key, where, view)
    if angle_key in meta:
        angle = number(meta, angle_key, where, view)
        if not 0.0 < angle < np.pi:
            raise InputError(where, f"{view}: {angle_key} must be an angle in (0, pi) radians, got {angle:g}")
        return 0.5 * pixels / np.tan(0.5 * angle)
    if default is not None:
        return default
    raise InputError(where, f"{view}: no focal length ({key} or {angle_key})")


def read_rgba_views(
    paths: list[Path], size: tuple[int, int], downscale: int, background: str, maps: list[UndistortMap | None]
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, H', W', 3) uint8 composited on ``background`` and (N, H', W') alpha masks (None when
    every pixel is opaque); each view area-downscaled, then undistorted by its map (built for
    the downscaled size and intrinsics: 1/D^2 of the work, as nerfstudio does)."""
    h, w = downscaled_size(*size, downscale)
    images = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    masks: list[np.ndarray | None] = [None] * len(paths)  # only views with transparency keep one
    bg = BACKGROUNDS[background]

    def read(i: int) -> np.ndarray:
        rgba = files.read_rgba(paths[i])
        if rgba.shape[:2] != size:
            expected = files.size_text(size)
            raise InputError(paths[i], f"image is {files.size_text(rgba.shape)} (WxH), expected {expected}")
        small = downscale_uint8(rgba, downscale)
        if maps[i] is not None:
            small = undistort_uint8(small, maps[i])
        if np.all(small[..., 3] == 255):
            return small[..., :3]
        masks[i] = small[..., 3] > 127
        alpha = small[..., 3:].astype(np.float32) / 255.0
        return np.clip(small[..., :3] * alpha + bg * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)

    files.fill_parallel(images, list(range(len(paths))), read)
    if all(m is None for m in masks):
        return images, None
    return images, np.stack([np.ones((h, w), bool) if m is None else m for m in masks])


def _offset(data: dict[str, Any], where: Path) -> np.ndarray:
    """instant-ngp's ``offset``: one number or three (the default when absent)."""
    value = data.get("offset", NGP_OFFSET)
    try:
        offset = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,))
    except (TypeError, ValueError):
        raise InputError(where, f"offset must be a number or three numbers, got {value!r}") from None
    if not np.all(np.isfinite(offset)):
        raise InputError(where, f"offset must be finite, got {value!r}")
    return offset


def outside_warnings(root: Path, paths: list[Path]) -> list[str]:
    """One warning naming the image files that lie outside the capture folder (a ``file_path`` with
    ``..`` or an absolute path: read, but likely a mistake or a file of another capture)."""
    inside = root.resolve()
    outside = [p for p in paths if not p.is_relative_to(inside)]
    if not outside:
        return []
    return [f"{len(outside)} of {len(paths)} frames' file_path lead outside the capture folder {inside} "
            f"(first: {outside[0]})"]


def is_ngp(root: Path) -> bool:
    return (root / TRANSFORMS).is_file()


def load_ngp(data_dir: str | Path, downscale: int = 1, background: str = "white") -> Scene:
    """Load an instant-ngp / nerfstudio capture (see the module docstring)."""
    root = Path(data_dir)
    files.check_data_dir(root)
    where = root / TRANSFORMS
    data = read_json(where)
    frames, paths, warnings = existing_frames(root, data, where)
    size = files.check_same_size(paths)
    global_meta = {k: v for k, v in data.items() if k != "frames"}
    poses = np.stack([frame_pose(f, where, i) for i, f in frames])
    cams = [intrinsics_of({**global_meta, **f}, size, where, f"frame {i} ({f.get('file_path')})") for i, f in frames]
    K = np.stack([k for k, _ in cams])
    check_cameras(K, poses, where, [f"frame {i}" for i, _ in frames])
    norm = ngp_normalization(data, K, poses, size, where, warnings)
    small_K = downscaled_intrinsics(K, downscale)
    maps = undistort_maps(small_K, [c for _, c in cams], downscaled_size(*size, downscale))
    images, masks = read_rgba_views(paths, size, downscale, background, maps)
    distortion = next((c for _, c in cams if c), None)
    if distortion:
        warnings.append("lens distortion (" + ", ".join(f"{k}={v:.4g}" for k, v in distortion.items()) + ") removed")
    return Scene(
        images=images, intrinsics=small_K, cam_to_world=normalise_poses(poses, norm),
        scale_mat=norm.scale_mat, masks=masks, image_paths=tuple(paths), format="ngp",
        normalization_source=norm.source, warnings=tuple(warnings),
    )


def existing_frames(
    root: Path, data: dict[str, Any], where: Path
) -> tuple[list[tuple[int, dict[str, Any]]], list[Path], list[str]]:
    """(index, frame) and image path of every frame whose image exists, and the warnings: one
    that counts the skipped frames, one for nerfstudio entries that are not read."""
    frames, paths, skipped = [], [], []
    for i, frame in enumerate(data["frames"]):
        if not isinstance(frame, dict):
            raise InputError(where, f"frame {i} is not an object")
        path = frame_image(root, frame, where, i)
        if path.is_file():
            paths.append(path)
            frames.append((i, frame))
        else:
            skipped.append(path)
    total = len(data["frames"])
    if not paths:
        first = skipped[0] if skipped else "-"
        raise InputError(where, f"none of the {total} frames' image files exist (first: {first})")
    warnings = []
    if skipped:
        warnings.append(f"{len(skipped)} of {total} frames skipped: their image files do not exist "
                        f"(first: {skipped[0].name})")
    warnings += outside_warnings(root, paths)
    unread = sorted({key for _, f in frames for key in NOT_READ if key in f})
    if unread:
        warnings.append(f"frame entries not read: {', '.join(unread)}")
    return frames, paths, warnings


def ngp_normalization(data: dict[str, Any], K: np.ndarray, poses: np.ndarray, size: tuple[int, int],
                      where: Path, warnings: list[str]) -> Normalization:
    """instant-ngp's unit cube (``(p * scale + offset)`` in [0, 1]^3) when the file has
    ``aabb_scale``/``scale``/``offset`` and every camera lies outside its sphere; else from the cameras."""
    if not any(k in data for k in ("aabb_scale", "scale", "offset")):
        return from_cameras(K, poses, size, str(where))
    scale = number(data, "scale", where, "top level", default=NGP_SCALE)
    if scale <= 0:
        raise InputError(where, f"scale must be positive, got {scale:g}")
    offset = _offset(data, where)
    norm = from_aabb(-offset / scale, (1.0 - offset) / scale, f"aabb (instant-ngp unit cube, scale {scale:g})")
    inside = int((np.linalg.norm(poses[:, :3, 3] - norm.centre, axis=1) <= norm.radius).sum())
    if inside:
        warnings.append(f"{inside} cameras lie inside instant-ngp's unit cube's sphere; normalised from the cameras")
        return from_cameras(K, poses, size, str(where))
    return norm
