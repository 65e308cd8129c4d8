"""Loader for the DTU layout used by IDR and NeuS.

Layout::

    cameras_sphere.npz (or cameras.npz)   world_mat_i, scale_mat_i for image i
    image/*.png (or images/*.png)         image i is the i-th in sorted order
    mask/*.png                            optional, matched by sorted order
    depth/*.npy, normal/*.npy             optional cues: (H, W) z-depth in world
                                          units, (H, W, 3) world-space normals
    gt_mesh.ply                           optional ground truth in world units

``world_mat_i @ scale_mat_i`` projects the normalised unit sphere into image i;
``scale_mat_i`` maps normalised coordinates to world units.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from recon.datasets import files
from recon.datasets.cameras import decompose_projection
from recon.datasets.files import IMAGE_SUFFIXES
from recon.datasets.resample import downscale_float, downscale_uint8, downscaled_intrinsics, downscaled_size
from recon.datasets.scene import Scene
from recon.datasets.validate import as_4x4, check_cameras
from recon.errors import InputError

CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")
IMAGE_DIRS = ("image", "images")
GT_MESH_NAME = "gt_mesh.ply"


def load_dtu(data_dir: str | Path, downscale: int = 1) -> Scene:
    """Load a DTU/IDR/NeuS scene into a :class:`Scene` in normalised coordinates.

    ``downscale``: integer factor of area averaging (images, masks, cues; intrinsics to match).
    Every problem with the input raises :class:`InputError` naming the file;
    cameras, image sizes and cue shapes are checked before any image is decoded.
    """
    root = Path(data_dir)
    files.check_data_dir(root)
    camera_file = find_camera_file(root)
    image_paths = _find_images(root)
    cameras = read_npz(camera_file)
    intrinsics, poses, scale_mat = cameras_for(cameras, camera_file, image_paths)
    size = files.check_same_size(image_paths)
    mask_paths = _matched_files(root / "mask", IMAGE_SUFFIXES, image_paths)
    if mask_paths is not None:
        files.check_sizes(mask_paths, size, "mask")
    depth_paths = _matched_files(root / "depth", (".npy",), image_paths)
    normal_paths = _matched_files(root / "normal", (".npy",), image_paths)
    check_cue_shapes(depth_paths, size)
    check_cue_shapes(normal_paths, (*size, 3))
    world_per_unit = float(abs(np.linalg.det(scale_mat[:3, :3])) ** (1.0 / 3.0))
    depths = load_cues(depth_paths, size, downscale, lambda a: a / world_per_unit)
    gt_mesh = root / GT_MESH_NAME
    return Scene(
        images=read_images(image_paths, size, downscale, files.read_rgb),
        intrinsics=downscaled_intrinsics(intrinsics, downscale),
        cam_to_world=poses,
        scale_mat=scale_mat,
        masks=None if mask_paths is None else read_masks(mask_paths, size, downscale, files.read_mask_values),
        depths=depths,
        normals=load_cues(normal_paths, (*size, 3), downscale, None),
        image_paths=tuple(image_paths),
        gt_mesh_path=gt_mesh if gt_mesh.is_file() else None,
        format="dtu",
    )


def find_camera_file(root: Path) -> Path:
    """cameras_sphere.npz, else cameras.npz."""
    for name in CAMERA_FILES:
        if (root / name).is_file():
            return root / name
    raise InputError(root, f"no cameras file (expected {' or '.join(CAMERA_FILES)})")


def _find_images(root: Path) -> list[Path]:
    folder = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if folder is None:
        raise InputError(root, f"no image folder (expected {' or '.join(d + '/' for d in IMAGE_DIRS)})")
    paths = files.list_files(folder, IMAGE_SUFFIXES)
    if not paths:
        raise InputError(folder, "no images (.png/.jpg) in the image folder")
    files.check_numbering(paths, lambda p: p.stem, "world_mat_i")
    return paths


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles)."""
    files.check_not_empty(path)
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a valid .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except Exception as exc:  # zip, pickle and format errors all mean the same to the user
        raise InputError(path, f"cannot read cameras file ({files.reason(exc)})") from exc


def cameras_for(
    cameras: dict[str, np.ndarray], camera_file: Path, image_paths: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3, 3) K, (N, 4, 4) normalised poses and the (4, 4) scale_mat of image 0."""
    intrinsics, poses, scale_mats = [], [], []
    for i, image in enumerate(image_paths):
        world_key, scale_key = f"world_mat_{i}", f"scale_mat_{i}"
        for key in (world_key, scale_key):
            if key not in cameras:
                raise InputError(camera_file, f"no {key} for image {image.parent.name}/{image.name}")
        world_mat = as_4x4(cameras[world_key], camera_file, world_key)
        scale_mat = as_4x4(cameras[scale_key], camera_file, scale_key)
        if np.linalg.matrix_rank(scale_mat[:3, :3]) < 3:
            raise InputError(camera_file, f"{scale_key} is degenerate (rank < 3)")
        P = (world_mat @ scale_mat)[:3, :4]
        if np.linalg.matrix_rank(P[:, :3]) < 3 or np.linalg.matrix_rank(world_mat[:3, :3]) < 3:
            raise InputError(camera_file, f"{world_key} is degenerate (its 3x3 block has rank < 3)")
        K, pose = decompose_projection(P)
        intrinsics.append(K)
        poses.append(pose)
        scale_mats.append(scale_mat)
    intrinsics, poses = np.stack(intrinsics), np.stack(poses)
    check_cameras(intrinsics, poses, camera_file, [f"world_mat_{i}" for i in range(len(poses))])
    return intrinsics, poses, scale_mats[0]


def _matched_files(folder: Path, suffixes: tuple[str, ...], image_paths: list[Path]) -> list[Path] | None:
    """Files of an optional per-image folder, or None when the folder is absent."""
    if not folder.is_dir():
        return None
    paths = files.list_files(folder, suffixes)
    if len(paths) != len(image_paths):
        raise InputError(folder, f"{len(paths)} files for {len(image_paths)} images; counts must match")
    return paths


def read_images(
    paths: Sequence[Path], size: tuple[int, int], downscale: int, read: Callable[[Path], np.ndarray]
) -> np.ndarray:
    """(N, H', W', 3) uint8, filled in place: the only full copy of the pixels."""
    h, w = downscaled_size(*size, downscale)
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    return files.fill_parallel(out, paths, lambda p: downscale_uint8(read(p), downscale))


def read_masks(
    paths: Sequence[Path], size: tuple[int, int], downscale: int, read: Callable[[Path], np.ndarray]
) -> np.ndarray:
    """(N, H', W') bool: ``read(path)`` gives (H, W) uint8 values, area-averaged, foreground > 127."""
    h, w = downscaled_size(*size, downscale)
    out = np.empty((len(paths), h, w), dtype=bool)
    return files.fill_parallel(out, paths, lambda p: downscale_uint8(read(p), downscale) > 127)


def check_cue_shapes(paths: list[Path] | None, shape: tuple[int, ...]) -> None:
    """Raise unless every ``.npy`` in ``paths`` has ``shape`` (read from the headers)."""
    for path in paths or []:
        found = files.array_shape(path)
        if found != shape:
            raise InputError(path, f"shape {found} does not match the images, expected {shape}")


def load_cues(
    paths: list[Path] | None, shape: tuple[int, ...], downscale: int,
    convert: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray | None:
    """(N, H', W'[, 3]) float32 cues from ``.npy`` files of ``shape`` (checked), or None."""
    if paths is None:
        return None
    h, w = downscaled_size(shape[0], shape[1], downscale)
    out = np.empty((len(paths), h, w, *shape[2:]), dtype=np.float32)
    for i, path in enumerate(paths):
        array = files.read_array(path)
        if array.shape != shape:
            raise InputError(path, f"shape {array.shape} does not match the images, expected {shape}")
        if not np.all(np.isfinite(array)):
            raise InputError(path, "has non-finite values (NaN or inf)")
        array = array if convert is None else convert(array)
        out[i] = downscale_cue(array.astype(np.float32), downscale)
    return out


def downscale_cue(cue: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of a depth (H, W) cue over its valid (> 0) pixels, or of a normal (H, W, 3) cue
    made unit length; a block without any valid pixel stays 0 (no cue)."""
    if cue.ndim == 2:
        if factor == 1:
            return cue.astype(np.float32, copy=False)
        count = downscale_float((cue > 0).astype(np.float32), factor)
        total = downscale_float(np.maximum(cue, 0.0), factor)
        return np.where(count > 0, total / np.maximum(count, 1e-12), 0.0).astype(np.float32)
    total = downscale_float(cue, factor)
    norm = np.linalg.norm(total, axis=-1, keepdims=True)
    return np.where(norm > 1e-6, total / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
