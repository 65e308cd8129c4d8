"""Loader for MonoSDF's preprocessed scenes (its ``SceneDatasetDN`` layout).

Layout::

    cameras.npz          world_mat_i (projection of the ORIGINAL images), scale_mat_i
    XXXXXX_rgb.png       the 384x384 centre crops, sorted
    XXXXXX_depth.npy     optional (H, W) Omnidata depth: relative, scale and shift unknown
    XXXXXX_normal.npy    optional (3, H, W) Omnidata normals in [0, 1], camera space
    XXXXXX_mask.npy      optional (H, W) where the cues are valid (MonoSDF uses it on
                         Replica to drop bad predictions; it is NOT a foreground mask)

MonoSDF's loader (``code/datasets/scene_dataset.py``) decomposes ``world_mat @ scale_mat``
and then, for ``center_crop_for_dtu``, shifts ``cx -= (1600 - 1200) / 2`` and scales
``K[:2] *= 384 / 1200``; replica and tnt crops are the same with their sizes. The crop is
recognised here from where the principal point falls (near the centre of the original
image). The same crop is applied, but the resize keeps pixel centres aligned
(``cx' = (cx + 0.5) s - 0.5``): the images match the originals 3-4x better so
(docs/DECISIONS.md); MonoSDF's ``cx' = cx s`` is 0.34 px off at 384. Normals decode as
``n = 2 x - 1`` (then unit length) and are in the OpenCV camera
frame of the pose (x right, y down, z forward: MonoSDF compares them with ``R^T n_world``);
they are stored rotated to world space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.datasets import files
from recon.datasets.dtu import cameras_for, check_cue_shapes, downscale_cue, read_images, read_npz
from recon.datasets.resample import downscaled_intrinsics, downscaled_size
from recon.datasets.scene import Scene
from recon.errors import InputError

CAMERA_FILE = "cameras.npz"
RGB_SUFFIX = "_rgb.png"

CROPS: dict[str, tuple[int, int, int]] = {
    "center_crop_for_dtu": (1600, 1200, 1200),
    "center_crop_for_replica": (1200, 680, 680),
    "center_crop_for_tnt": (960, 540, 540),
}
"""MonoSDF's crops: original width, height, and the side of the centred square resized to the image."""


def is_monosdf(root: Path) -> bool:
    """A folder with ``cameras.npz`` and ``*_rgb.png`` files."""
    return (root / CAMERA_FILE).is_file() and any(root.glob("*" + RGB_SUFFIX))


def load_monosdf(data_dir: str | Path, downscale: int = 1) -> Scene:
    """Load a MonoSDF scene (see the module docstring); cues are optional but all-or-none."""
    root = Path(data_dir)
    files.check_data_dir(root)
    camera_file = root / CAMERA_FILE
    if not camera_file.is_file():
        raise InputError(root, f"no {CAMERA_FILE}")
    rgb_paths = sorted(root.glob("*" + RGB_SUFFIX), key=files.natural_key)
    if not rgb_paths:
        raise InputError(root, f"no *{RGB_SUFFIX} images")
    files.check_numbering(rgb_paths, lambda p: p.name[: -len(RGB_SUFFIX)], "world_mat_i")
    _check_orphans(root, rgb_paths)
    size = files.check_same_size(rgb_paths)
    K, poses, scale_mat = cameras_for(read_npz(camera_file), camera_file, rgb_paths)
    K = np.stack([crop_intrinsics(k, size, camera_file) for k in K])
    depth_paths, normal_paths, valid_paths = (
        _companions(rgb_paths, suffix) for suffix in ("_depth.npy", "_normal.npy", "_mask.npy")
    )
    check_cue_shapes(depth_paths, size)
    check_cue_shapes(normal_paths, (3, *size))
    check_cue_shapes(valid_paths, size)
    valid = None if valid_paths is None else [files.read_array(p) > 0 for p in valid_paths]
    return Scene(
        images=read_images(rgb_paths, size, downscale, files.read_rgb),
        intrinsics=downscaled_intrinsics(K, downscale),
        cam_to_world=poses,
        scale_mat=scale_mat,
        depths=_depths(depth_paths, valid, downscale),
        normals=_normals(normal_paths, valid, poses, downscale),
        image_paths=tuple(rgb_paths),
        format="monosdf",
    )


def crop_intrinsics(K: np.ndarray, size: tuple[int, int], where: Path) -> np.ndarray:
    """K of the original image mapped into the (H, W) crop MonoSDF made of it (unchanged when
    the principal point already lies near the image's centre: no crop)."""
    h, w = size
    candidates = {"no_crop": (w, h, None), **{k: v for k, v in CROPS.items()}}
    name = min(candidates, key=lambda c: abs(K[0, 2] - candidates[c][0] / 2) + abs(K[1, 2] - candidates[c][1] / 2))
    width, height, side = candidates[name]
    if side is None:
        return K
    if h != w:
        raise InputError(
            where, f"the cameras are for {width}x{height} images ({name}) but the images are {w}x{h}, not square"
        )
    K = K.copy()
    K[0, 2] -= (width - side) / 2
    return downscaled_intrinsics(K, side / h)


def _check_orphans(root: Path, rgb_paths: list[Path]) -> None:
    """Every cue file needs its image (a deleted image would shift the views)."""
    prefixes = {p.name[: -len(RGB_SUFFIX)] for p in rgb_paths}
    for suffix in ("_depth.npy", "_normal.npy", "_mask.npy"):
        for path in sorted(root.glob("*" + suffix)):
            if path.name[: -len(suffix)] not in prefixes:
                raise InputError(path, f"has no image {path.name[: -len(suffix)]}{RGB_SUFFIX} (deleted?)")


def _companions(rgb_paths: list[Path], suffix: str) -> list[Path] | None:
    """The ``XXXXXX{suffix}`` file of every image, None when no image has one; all or none."""
    paths = [p.with_name(p.name[: -len(RGB_SUFFIX)] + suffix) for p in rgb_paths]
    present = [p.is_file() for p in paths]
    if not any(present):
        return None
    if not all(present):
        missing = paths[present.index(False)]
        raise InputError(missing, f"file does not exist ({sum(present)} of {len(paths)} views have a *{suffix})")
    return paths


def _depths(paths: list[Path] | None, valid: list[np.ndarray] | None, downscale: int) -> np.ndarray | None:
    if paths is None:
        return None
    out = []
    for i, path in enumerate(paths):
        depth = files.read_array(path).astype(np.float32)
        if not np.all(np.isfinite(depth)):
            raise InputError(path, "has non-finite values (NaN or inf)")
        if valid is not None:
            depth = np.where(valid[i], depth, 0.0)
        out.append(downscale_cue(depth, downscale))
    return np.stack(out)


def _normals(
    paths: list[Path] | None, valid: list[np.ndarray] | None, poses: np.ndarray, downscale: int
) -> np.ndarray | None:
    """(N, H', W', 3) unit world-space normals from MonoSDF's (3, H, W) camera-space [0, 1] files."""
    if paths is None:
        return None
    first = files.array_shape(paths[0])
    h, w = downscaled_size(first[1], first[2], downscale)
    out = np.empty((len(paths), h, w, 3), dtype=np.float32)
    for i, path in enumerate(paths):
        encoded = files.read_array(path).astype(np.float32)
        if not np.all(np.isfinite(encoded)):
            raise InputError(path, "has non-finite values (NaN or inf)")
        normal = np.moveaxis(encoded, 0, -1) * 2.0 - 1.0
        if valid is not None:
            normal = np.where(valid[i][..., None], normal, 0.0)
        out[i] = downscale_cue(normal, downscale) @ poses[i, :3, :3].T.astype(np.float32)
    return out
