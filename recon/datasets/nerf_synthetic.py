"""Loader for NeRF-synthetic (Blender) scenes: ``transforms_{train,val,test}.json``.

Each file holds ``camera_angle_x`` (horizontal field of view; square pixels, principal
point at the image centre) and ``frames`` whose ``file_path`` omits the ``.png``. Images
are RGBA: composited on the chosen background (white, as NeRF does), their alpha > 127
gives the masks. Poses are OpenGL camera-to-world (converted to OpenCV). The scene has no
scale matrix: it is normalised from the cameras (:mod:`recon.datasets.normalize`). Every
split present is loaded; ``Scene.splits`` says which views belong to which; a missing
split is reported as a warning (hold out training views instead).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.datasets import files
from recon.datasets.ngp import frame_image, frame_pose, intrinsics_of, outside_warnings, read_json, read_rgba_views
from recon.datasets.normalize import from_cameras, normalise_poses
from recon.datasets.resample import downscaled_intrinsics
from recon.datasets.scene import Scene
from recon.datasets.validate import check_cameras
from recon.errors import InputError

SPLITS = ("train", "val", "test")


def split_file(root: Path, split: str) -> Path:
    return root / f"transforms_{split}.json"


def is_nerf_synthetic(root: Path) -> bool:
    return any(split_file(root, s).is_file() for s in SPLITS)


def load_nerf_synthetic(data_dir: str | Path, downscale: int = 1, background: str = "white") -> Scene:
    """Load every split of a Blender scene (see the module docstring)."""
    root = Path(data_dir)
    files.check_data_dir(root)
    present = [s for s in SPLITS if split_file(root, s).is_file()]
    if not present:
        raise InputError(root, "no transforms_train.json, transforms_val.json or transforms_test.json")
    paths, poses, metas, splits, views = [], [], [], {}, []
    for split in present:
        where = split_file(root, split)
        data = read_json(where)
        start = len(paths)
        for i, frame in enumerate(data["frames"]):
            path = frame_image(root, frame, where, i)
            if not path.is_file():
                raise InputError(where, f"frame {i} names {frame.get('file_path')!r}, but {path} does not exist")
            paths.append(path)
            poses.append(frame_pose(frame, where, i))
            metas.append((where, {"camera_angle_x": data.get("camera_angle_x"), **frame}))
            views.append(f"{split} frame {i}")
        if len(paths) == start:
            raise InputError(where, "has no frames")
        splits[split] = np.arange(start, len(paths))
    size = files.check_same_size(paths)
    K = np.stack([_intrinsics(meta, size, where, view) for (where, meta), view in zip(metas, views)])
    poses = np.stack(poses)
    check_cameras(K, poses, root, views)
    norm = from_cameras(K, poses, size, str(root))
    images, masks = read_rgba_views(paths, size, downscale, background, [None] * len(paths))
    missing = [s for s in SPLITS if s not in present]
    warnings = [f"no {', '.join(f'transforms_{s}.json' for s in missing)}: only {', '.join(present)} views "
                "(hold out training views to evaluate)"] if missing else []
    warnings += outside_warnings(root, paths)
    return Scene(
        images=images, intrinsics=downscaled_intrinsics(K, downscale), cam_to_world=normalise_poses(poses, norm),
        scale_mat=norm.scale_mat, masks=masks, image_paths=tuple(paths), format="nerf-synthetic",
        normalization_source=norm.source, splits=splits, warnings=tuple(warnings),
    )


def _intrinsics(meta: dict, size: tuple[int, int], where: Path, view: str) -> np.ndarray:
    if meta.get("camera_angle_x") is None:
        raise InputError(where, "no camera_angle_x")
    angle = meta["camera_angle_x"]
    if not isinstance(angle, (int, float)) or not 0 < angle < np.pi:
        raise InputError(where, f"camera_angle_x must be an angle in (0, pi) radians, got {angle!r}")
    meta = {k: v for k, v in meta.items() if k in ("camera_angle_x", "fl_x", "fl_y", "cx", "cy", "w", "h")}
    return intrinsics_of(meta, size, where, view)[0]
