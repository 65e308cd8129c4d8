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

import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from recon.datasets.cameras import decompose_projection
from recon.datasets.scene import Scene
from recon.errors import InputError

CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")
IMAGE_DIRS = ("image", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GT_MESH_NAME = "gt_mesh.ply"


def load_dtu(data_dir: str | Path) -> Scene:
    """Load a DTU/IDR/NeuS scene into a :class:`Scene` in normalised coordinates.

    Every problem with the input raises :class:`InputError` naming the file;
    cameras and image sizes are checked before any image is decoded.
    """
    root = Path(data_dir)
    if not root.exists():
        raise InputError(root, "data directory does not exist")
    if not root.is_dir():
        raise InputError(root, "data path is not a directory")
    camera_file = _find_camera_file(root)
    image_paths = _find_images(root)
    cameras = _read_npz(camera_file)
    intrinsics, poses, scale_mat = _cameras_for(cameras, camera_file, image_paths)
    height, width = _check_same_size(image_paths)
    mask_paths = _matched_files(root / "mask", IMAGE_SUFFIXES, image_paths)
    if mask_paths is not None:
        _check_sizes(mask_paths, (height, width), "mask")
    depth_paths = _matched_files(root / "depth", (".npy",), image_paths)
    normal_paths = _matched_files(root / "normal", (".npy",), image_paths)
    images = np.stack(_read_all(image_paths, _read_rgb))
    masks = None if mask_paths is None else np.stack(_read_all(mask_paths, _read_mask))
    world_per_unit = float(abs(np.linalg.det(scale_mat[:3, :3])) ** (1.0 / 3.0))
    depths = _load_cues(depth_paths, (height, width))
    normals = _load_cues(normal_paths, (height, width, 3))
    gt_mesh = root / GT_MESH_NAME
    return Scene(
        images=images,
        intrinsics=intrinsics,
        cam_to_world=poses,
        scale_mat=scale_mat,
        masks=masks,
        depths=None if depths is None else (depths / world_per_unit).astype(np.float32),
        normals=normals,
        image_paths=tuple(image_paths),
        gt_mesh_path=gt_mesh if gt_mesh.is_file() else None,
    )


def natural_key(path: Path) -> list[int | str]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    return sorted(files, key=natural_key)


def _find_camera_file(root: Path) -> Path:
    for name in CAMERA_FILES:
        if (root / name).is_file():
            return root / name
    raise InputError(root, f"no cameras file (expected {' or '.join(CAMERA_FILES)})")


def _find_images(root: Path) -> list[Path]:
    folder = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if folder is None:
        raise InputError(root, f"no image folder (expected {' or '.join(d + '/' for d in IMAGE_DIRS)})")
    paths = _list_files(folder, IMAGE_SUFFIXES)
    if not paths:
        raise InputError(folder, "no images (.png/.jpg) in the image folder")
    return paths


def _reason(exc: Exception) -> str:
    """One-line description of a library error."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a valid .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except Exception as exc:  # zip, pickle and format errors all mean the same to the user
        raise InputError(path, f"cannot read cameras file ({_reason(exc)})") from exc


def _as_4x4(matrix: np.ndarray, key: str, camera_file: Path) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise InputError(camera_file, f"{key} has shape {matrix.shape}, expected (4, 4) or (3, 4)")
    if not np.all(np.isfinite(matrix)):
        raise InputError(camera_file, f"{key} has non-finite values (NaN or inf)")
    return matrix


def _cameras_for(
    cameras: dict[str, np.ndarray], camera_file: Path, image_paths: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3, 3) K, (N, 4, 4) normalised poses and the (4, 4) scale_mat of image 0."""
    intrinsics, poses, scale_mats = [], [], []
    for i, image in enumerate(image_paths):
        world_key, scale_key = f"world_mat_{i}", f"scale_mat_{i}"
        for key in (world_key, scale_key):
            if key not in cameras:
                raise InputError(camera_file, f"no {key} for image {image.parent.name}/{image.name}")
        world_mat = _as_4x4(cameras[world_key], world_key, camera_file)
        scale_mat = _as_4x4(cameras[scale_key], scale_key, camera_file)
        if np.linalg.matrix_rank(scale_mat[:3, :3]) < 3:
            raise InputError(camera_file, f"{scale_key} is degenerate (rank < 3)")
        P = (world_mat @ scale_mat)[:3, :4]
        if np.linalg.matrix_rank(P[:, :3]) < 3 or np.linalg.matrix_rank(world_mat[:3, :3]) < 3:
            raise InputError(camera_file, f"{world_key} is degenerate (its 3x3 block has rank < 3)")
        K, pose = decompose_projection(P)
        intrinsics.append(K)
        poses.append(pose)
        scale_mats.append(scale_mat)
    return np.stack(intrinsics), np.stack(poses), scale_mats[0]


def _image_shape(path: Path) -> tuple[int, ...]:
    try:
        return tuple(iio.improps(path).shape)
    except Exception as exc:
        raise InputError(path, f"cannot read image ({_reason(exc)})") from exc


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _check_same_size(image_paths: list[Path]) -> tuple[int, int]:
    """(H, W) shared by all images, read from the file headers."""
    first = _image_shape(image_paths[0])[:2]
    for path in image_paths[1:]:
        shape = _image_shape(path)[:2]
        if shape != first:
            raise InputError(
                path,
                f"image is {_size_text(shape)} (WxH) but {image_paths[0].name} is {_size_text(first)}; "
                "all images must have the same size",
            )
    return first


def _check_sizes(paths: list[Path], size: tuple[int, int], what: str) -> None:
    for path in paths:
        shape = _image_shape(path)[:2]
        if shape != size:
            problem = f"{what} is {_size_text(shape)} (WxH) but the images are {_size_text(size)}"
            raise InputError(path, problem)


def _matched_files(folder: Path, suffixes: tuple[str, ...], image_paths: list[Path]) -> list[Path] | None:
    """Files of an optional per-image folder, or None when the folder is absent."""
    if not folder.is_dir():
        return None
    paths = _list_files(folder, suffixes)
    if len(paths) != len(image_paths):
        raise InputError(folder, f"{len(paths)} files for {len(image_paths)} images; counts must match")
    return paths


def _decode(path: Path) -> np.ndarray:
    try:
        return iio.imread(path)
    except Exception as exc:
        raise InputError(path, f"cannot decode image, corrupt or truncated ({_reason(exc)})") from exc


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    return np.clip(array.astype(np.float32), 0, 255).astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8: alpha dropped, grey replicated."""
    image = _to_uint8(_decode(path))
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise InputError(path, f"unexpected image array shape {image.shape}")
    if image.shape[2] in (1, 2):  # grey, or grey + alpha
        return np.repeat(image[..., :1], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _read_mask(path: Path) -> np.ndarray:
    """(H, W) bool: first channel > 127."""
    mask = _to_uint8(_decode(path))
    return (mask if mask.ndim == 2 else mask[..., 0]) > 127


def _read_all(paths: list[Path], reader) -> list[np.ndarray]:
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        return list(pool.map(reader, paths))


def _load_cues(paths: list[Path] | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """(N, *shape) float32 from .npy files, or None when there are none."""
    if paths is None:
        return None
    arrays = []
    for path in paths:
        try:
            array = np.load(path)
        except Exception as exc:
            raise InputError(path, f"cannot read array ({_reason(exc)})") from exc
        if array.shape != shape:
            raise InputError(path, f"shape {array.shape} does not match the images, expected {shape}")
        arrays.append(array.astype(np.float32))
    return np.stack(arrays)
