"""Loader for COLMAP captures: ``images/`` and a sparse model (``sparse/0/``, or ``sparse/``).

Layout::

    images/<name>                 the photographs the model names (its image names may hold folders)
    sparse/0/cameras.bin|txt      intrinsics: PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV
    sparse/0/images.bin|txt       world-to-camera poses (qvec, tvec), OpenCV axes
    sparse/0/points3D.bin|txt     the sparse points and their tracks (they set the scene sphere)
    masks/<name>.png              optional foreground masks (> 127), COLMAP's naming; <stem>.png also works
    gt_mesh.ply                   optional ground truth in the model's world units

The model is read by :mod:`recon.datasets.colmap_model`. COLMAP puts the centre of the top-left
pixel at (0.5, 0.5), recon at (0, 0): ``cx, cy`` lose 0.5. Lens distortion (SIMPLE_RADIAL's
``k``, RADIAL's ``k1 k2``, OPENCV's ``k1 k2 p1 p2``: the same polynomial as the ngp format's)
is removed at load by the shared exact inverse map, images and masks alike. Views are ordered
by image name. Images the model lists but the folder lacks are skipped with one warning.
The scene sphere: see :func:`recon.datasets.normalize.from_points` (``data.colmap_sphere_rule``),
or given in world units (``data.colmap_sphere``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon.datasets import files
from recon.datasets.colmap_model import Camera, Image, Model, is_model_folder, model_files, qvec_to_rotation, read_model
from recon.datasets.ngp import read_rgba_views
from recon.datasets.normalize import Normalization, from_cameras, from_points, normalise_poses
from recon.datasets.resample import UndistortMap, downscale_uint8, downscaled_intrinsics, downscaled_size
from recon.datasets.resample import undistort_maps, undistort_uint8
from recon.datasets.scene import Scene
from recon.datasets.validate import check_cameras, check_pose
from recon.errors import InputError

IMAGE_DIR, MASK_DIR = "images", "masks"
GT_MESH_NAME = "gt_mesh.ply"
MODEL_DIRS = ("sparse/0", "sparse")
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
SPHERE_RULES = ("points", "cameras")


def model_dir(root: Path) -> Path | None:
    """``sparse/0`` or ``sparse`` when it holds a model, else None."""
    return next((root / d for d in MODEL_DIRS if is_model_folder(root / d)), None)


def is_colmap(root: Path) -> bool:
    return (root / IMAGE_DIR).is_dir() and model_dir(root) is not None


def camera_intrinsics(camera: Camera, where: Path) -> tuple[np.ndarray, dict[str, float]]:
    """(3, 3) K in recon's pixel convention and the nonzero distortion coefficients of a camera."""
    p = [float(v) for v in camera.params]
    if not np.all(np.isfinite(p)):
        raise InputError(where, f"camera {camera.id}: non-finite parameters {p}")
    if camera.model not in SUPPORTED_MODELS:
        raise InputError(where, f"camera {camera.id}: model {camera.model} is not supported "
                         f"({', '.join(SUPPORTED_MODELS)}; undistort fisheye captures with colmap image_undistorter)")
    if camera.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy, extra = p[1], p[2], p[3:]
        names = {"SIMPLE_PINHOLE": (), "SIMPLE_RADIAL": ("k1",), "RADIAL": ("k1", "k2")}[camera.model]
    else:
        fx, fy, cx, cy, extra = p[0], p[1], p[2], p[3], p[4:]
        names = ("k1", "k2", "p1", "p2") if camera.model == "OPENCV" else ()
    K = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
    return K, {name: value for name, value in zip(names, extra) if value != 0.0}


def image_pose(image: Image, where: Path) -> np.ndarray:
    """(4, 4) camera-to-world pose of a COLMAP image (world-to-camera qvec, tvec)."""
    view = f"image {image.id} ({image.name})"
    q, t = np.asarray(image.qvec, np.float64), np.asarray(image.tvec, np.float64)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
        raise InputError(where, f"{view}: pose has non-finite values (NaN or inf)")
    if np.linalg.norm(q) < 1e-12:
        raise InputError(where, f"{view}: quaternion is zero")
    R = qvec_to_rotation(q)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = R.T, -R.T @ t
    return check_pose(pose, where, view)


def load_colmap(
    data_dir: str | Path, downscale: int = 1, sphere: Sequence[float] = (), sphere_rule: str = "points"
) -> Scene:
    """Load a COLMAP capture (see the module docstring).

    ``sphere``: (cx, cy, cz, r) in the model's world units, the scene sphere given; else
    ``sphere_rule`` "points" (around the sparse points most cameras see) or "cameras".
    """
    root = Path(data_dir)
    files.check_data_dir(root)
    folder = model_dir(root)
    if folder is None:
        raise InputError(root, "no COLMAP model (expected sparse/0/ or sparse/ with cameras, images and points3D "
                         ".bin or .txt)")
    where = model_files(folder)
    model = read_model(folder)
    images, paths, warnings = existing_images(root, model, where["images"])
    poses = np.stack([image_pose(im, where["images"]) for im in images])
    size = files.check_same_size(paths)
    cams = [view_camera(model, im, size, where, path) for im, path in zip(images, paths)]
    K = np.stack([k for k, _ in cams])
    check_cameras(K, poses, where["cameras"], [f"image {im.id} ({im.name})" for im in images])
    norm, norm_warnings = colmap_normalization(model, K, poses, size, sphere, sphere_rule, str(where["points3D"]))
    mask_paths = find_masks(root, images, size)
    small_K = downscaled_intrinsics(K, downscale)
    maps = undistort_maps(small_K, [c for _, c in cams], downscaled_size(*size, downscale))
    pixels, alpha = read_rgba_views(paths, size, downscale, "white", maps)
    masks = alpha if mask_paths is None else read_masks(mask_paths, size, downscale, maps)
    gt_mesh = root / GT_MESH_NAME
    return Scene(
        images=pixels, intrinsics=small_K, cam_to_world=normalise_poses(poses, norm), scale_mat=norm.scale_mat,
        masks=masks, image_paths=tuple(paths), gt_mesh_path=gt_mesh if gt_mesh.is_file() else None,
        format="colmap", normalization_source=norm.source,
        warnings=tuple(warnings + norm_warnings), details=describe_model(model, images, cams),
    )


def existing_images(root: Path, model: Model, where: Path) -> tuple[list[Image], list[Path], list[str]]:
    """The model's images whose file exists, in natural name order, and a warning counting the rest."""
    if not model.images:
        raise InputError(where, "the model has no registered images")
    ordered = sorted(model.images.values(), key=lambda im: files.natural_key(Path(im.name)))
    kept = [(im, root / IMAGE_DIR / im.name) for im in ordered]
    missing = [path for _, path in kept if not path.is_file()]
    kept = [(im, path) for im, path in kept if path.is_file()]
    if not kept:
        raise InputError(root / IMAGE_DIR, f"none of the {len(ordered)} images of {where.name} exist "
                         f"(first: {missing[0].name})")
    warnings = [f"{len(missing)} of {len(ordered)} images skipped: their files do not exist "
                f"(first: {missing[0].name})"] if missing else []
    named = {im.name for im in ordered}
    folder = root / IMAGE_DIR
    unposed = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.suffix.lower() in files.IMAGE_SUFFIXES and p.relative_to(folder).as_posix() not in named)
    if unposed:
        warnings.append(f"{len(unposed)} of the {len(unposed) + len(kept)} images in {IMAGE_DIR}/ not in the model "
                        f"(not registered by COLMAP), not used (first: {unposed[0]})")
    return [im for im, _ in kept], [path for _, path in kept], warnings


def view_camera(model: Model, image: Image, size: tuple[int, int], where: dict[str, Path],
                path: Path) -> tuple[np.ndarray, dict[str, float]]:
    """K and distortion of an image's camera, which must exist and match the image's size."""
    camera = model.cameras.get(image.camera_id)
    if camera is None:
        raise InputError(where["images"], f"image {image.id} ({image.name}) refers to camera {image.camera_id}, "
                         f"which {where['cameras'].name} does not hold")
    if (camera.height, camera.width) != size:
        raise InputError(path, f"image is {files.size_text(size)} (WxH) but its camera {camera.id} in "
                         f"{where['cameras'].name} is {camera.width}x{camera.height}")
    return camera_intrinsics(camera, where["cameras"])


def colmap_normalization(model: Model, K: np.ndarray, poses: np.ndarray, size: tuple[int, int],
                         sphere: Sequence[float], rule: str, where: str) -> tuple[Normalization, list[str]]:
    """The scene sphere: given (cx, cy, cz, r), or by ``rule`` (points or cameras)."""
    if len(sphere):
        values = np.asarray(sphere, dtype=np.float64)
        if values.shape != (4,) or not np.all(np.isfinite(values)) or values[3] <= 0:
            raise InputError("data.colmap_sphere", f"expects [cx, cy, cz, r] with r > 0, got {list(sphere)}")
        return Normalization(values[:3], float(values[3]), "data.colmap_sphere"), []
    if rule not in SPHERE_RULES:
        raise InputError("data.colmap_sphere_rule", f"must be one of {', '.join(SPHERE_RULES)}, got {rule!r}")
    if rule == "cameras":
        return from_cameras(K, poses, size, where), []
    bad = ~np.all(np.isfinite(model.points.xyz), axis=1)
    if bad.any():
        raise InputError(where, f"point {int(model.points.ids[bad][0])} has non-finite coordinates (NaN or inf)")
    return from_points(model.points.xyz, model.points.track_lengths, K, poses, size, where)


def find_masks(root: Path, images: list[Image], size: tuple[int, int]) -> list[Path] | None:
    """``masks/<name>.png`` (COLMAP's naming) or ``masks/<stem>.png`` per image; None without ``masks/``."""
    folder = root / MASK_DIR
    if not folder.is_dir():
        return None
    paths = []
    for im in images:
        colmap_name, stem_name = folder / f"{im.name}.png", (folder / im.name).with_suffix(".png")
        path = colmap_name if colmap_name.is_file() else stem_name
        if not path.is_file():
            raise InputError(colmap_name, f"mask file does not exist (masks/ holds one per image: <name>.png "
                             f"or {stem_name.name})")
        paths.append(path)
    files.check_sizes(paths, size, "mask")
    return paths


def read_masks(paths: list[Path], size: tuple[int, int], downscale: int, maps: list[UndistortMap | None]) -> np.ndarray:
    """(N, H', W') bool: foreground > 127 after area-downscaling and undistortion (as the images)."""
    def read(i: int) -> np.ndarray:
        small = downscale_uint8(files.read_mask_values(paths[i]), downscale)
        return (small if maps[i] is None else undistort_uint8(small, maps[i])) > 127

    out = np.empty((len(paths), *downscaled_size(*size, downscale)), dtype=bool)
    return files.fill_parallel(out, list(range(len(paths))), read)


def describe_model(model: Model, images: list[Image], cams: list[tuple[np.ndarray, dict[str, float]]]) -> dict[str, str]:
    """What ``recon check`` reports of a COLMAP model: camera models, distortion, sparse points."""
    used = sorted({im.camera_id for im in images})
    kinds = sorted({model.cameras[c].model for c in used})
    distortion = next((c for _, c in cams if c), None)
    tracks = model.points.track_lengths
    points = f"{len(model.points)}" + (f" (mean track {tracks.mean():.1f} images, {int((tracks >= 3).sum())} seen "
                                       "in >= 3)" if len(tracks) else "")
    return {
        "cameras": f"{len(used)} ({', '.join(kinds)})",
        "distortion": ("removed: " + ", ".join(f"{k}={v:.4g}" for k, v in distortion.items())) if distortion else "none",
        "sparse points": points,
    }
