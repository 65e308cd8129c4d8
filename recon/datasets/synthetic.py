"""Synthetic scenes photographed by recon itself: ground truth without a download.

The default object is built from an analytic signed distance function (a
smooth body with grooves, bumps, a thin fin and a torus handle) and meshed
with marching cubes. Any mesh is photographed by ray casting (open3d) into the
DTU/IDR layout that :func:`recon.datasets.dtu.load_dtu` reads, together with
masks, z-depth, world normals and the mesh itself.

Coordinates: "normalised" is the unit-sphere frame the reconstruction works
in; "world" is ``scale_mat @ [x, 1]``. The default scene is deliberately placed
in a world frame that is not normalised, so that the scale matrix is exercised.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import imageio.v3 as iio
import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from recon.datasets.cameras import look_at, pixel_grid, pixel_rays_unit_z, project_points, projection_from
from recon.errors import InputError
from recon.io import check_output_dir
from recon.mesh import load_mesh
from recon.raycast import Raycaster, RayHits

if TYPE_CHECKING:
    from recon.datasets.colmap_model import Model

DEFAULT_WORLD_CENTRE = (0.3, -0.2, 2.0)
DEFAULT_WORLD_SCALE = 50.0
USER_MESH_RADIUS = 0.8  # a user's mesh is scaled so its bounding box fits this sphere
LIGHT_DIR = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])
AMBIENT = 0.35
INFO_NAME = "synthetic.json"
LAYOUTS = ("dtu", "colmap")
"""The capture layouts synthetic scenes are written in."""
GROOVE_DEPTH = 0.022


# ----------------------------------------------------------------------------- default object


def _ellipsoid(p: np.ndarray, centre: tuple, radii: tuple) -> np.ndarray:
    """Approximate ellipsoid SDF (exact on the surface, a bound elsewhere)."""
    r = np.asarray(radii, dtype=p.dtype)
    q = (p - np.asarray(centre, dtype=p.dtype)) / r
    return (np.linalg.norm(q, axis=-1) - 1.0) * r.min()


def _sphere(p: np.ndarray, centre: tuple | np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(centre, dtype=p.dtype), axis=-1) - radius


def _torus_y(p: np.ndarray, centre: tuple, major: float, minor: float) -> np.ndarray:
    """Torus whose axis is the y axis (a ring in the xz plane)."""
    q = p - np.asarray(centre, dtype=p.dtype)
    ring = np.hypot(q[..., 0], q[..., 2]) - major
    return np.hypot(ring, q[..., 1]) - minor


def _rounded_box(p: np.ndarray, centre: tuple, half: tuple, rounding: float) -> np.ndarray:
    q = np.abs(p - np.asarray(centre, dtype=p.dtype)) - (np.asarray(half, dtype=p.dtype) - rounding)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    return outside + np.minimum(q.max(axis=-1), 0.0) - rounding


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum with blend width ``k``."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _bump_centres() -> np.ndarray:
    """(8, 3) centres of the small spheres, on the head's surface."""
    head, radius = np.array([0.0, 0.0, 0.36]), 0.22
    angles = np.linspace(0.0, 2.0 * np.pi, 7, endpoint=False) + 0.3
    ring = np.stack([np.cos(angles) * 0.8, np.sin(angles) * 0.8, np.full_like(angles, 0.6)], axis=1)
    dirs = np.vstack([ring, [[0.0, 0.0, 1.0]]])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return head + radius * dirs


def default_object_sdf(p: np.ndarray) -> np.ndarray:
    """Approximate SDF of the default object at (..., 3) normalised points (negative inside)."""
    body = _smooth_min(
        _ellipsoid(p, (0.0, 0.0, -0.08), (0.42, 0.36, 0.40)),
        _sphere(p, (0.0, 0.0, 0.36), 0.22),
        0.12,
    )
    z = p[..., 2]
    band = np.clip((0.2 - np.abs(z + 0.1)) / 0.04, 0.0, 1.0)  # rings only for z in about [-0.3, 0.1]
    grooves = GROOVE_DEPTH * band * np.maximum(np.cos(2.0 * np.pi * z / 0.08), 0.0) ** 6
    shape = body + grooves
    for centre in _bump_centres():
        shape = _smooth_min(shape, _sphere(p, centre, 0.05), 0.015)
    handle = _torus_y(p, (0.47, 0.0, -0.08), 0.20, 0.045)
    fin = _rounded_box(p, (-0.50, 0.0, -0.06), (0.20, 0.025, 0.19), 0.02)
    return np.minimum(np.minimum(shape, handle), _smooth_min(shape, fin, 0.04))


def _sample_sdf(resolution: int, bound: float, block: int = 8) -> np.ndarray:
    """(R, R, R) float32 SDF on a grid spanning [-bound, bound]^3.

    Coarse to fine: the SDF is evaluated at each block's centre, and in full
    only in blocks that the surface may cross. The SDF is 1-Lipschitz up to
    the grooves (at most ``GROOVE_DEPTH`` deep), so a block whose centre value
    exceeds its half-diagonal (grown by one voxel) plus that depth holds no
    sign change, and no sign change occurs on an edge leaving it; it is filled
    with the centre value.
    """
    step = 2.0 * bound / (resolution - 1)
    n_blocks = -(-resolution // block)
    offsets = np.stack(np.meshgrid(*[np.arange(block)] * 3, indexing="ij"), axis=-1).reshape(-1, 3) * step
    corners = np.stack(np.meshgrid(*[np.arange(n_blocks)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    corners = corners * (block * step) - bound
    centre_sdf = default_object_sdf(corners + (block - 1) / 2.0 * step)
    reach = np.sqrt(3.0) * ((block - 1) / 2.0 + 1.0) * step + GROOVE_DEPTH + 1e-3
    near = np.abs(centre_sdf) <= reach
    values = np.repeat(centre_sdf[:, None], block**3, axis=1).astype(np.float32)
    near_ids = np.flatnonzero(near)
    for chunk in np.array_split(near_ids, max(1, len(near_ids) // 256)):
        pts = corners[chunk, None, :] + offsets[None]
        values[chunk] = default_object_sdf(pts)
    grid = values.reshape((n_blocks,) * 3 + (block,) * 3).transpose(0, 3, 1, 4, 2, 5)
    grid = grid.reshape((n_blocks * block,) * 3)
    return np.ascontiguousarray(grid[:resolution, :resolution, :resolution])


def make_default_object(resolution: int = 256) -> trimesh.Trimesh:
    """The default ground-truth object in normalised units (inside radius ~0.75).

    Marching cubes on a ``resolution``^3 grid; the result is watertight, its
    normals point outwards, and only the largest connected component is kept.
    """
    from skimage.measure import marching_cubes

    if resolution < 16:
        raise InputError("mesh_resolution", f"must be at least 16, got {resolution}")
    bound = 0.8
    volume = _sample_sdf(resolution, bound)
    step = 2.0 * bound / (resolution - 1)
    verts, faces, _, _ = marching_cubes(volume, level=0.0, spacing=(step,) * 3)
    mesh = trimesh.Trimesh(verts - bound, faces, process=True)
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        mesh = max(parts, key=lambda m: len(m.faces))
    if mesh.volume < 0:
        mesh.invert()
    return mesh


# ----------------------------------------------------------------------------- photographs (ray cast)


@dataclass
class Photographs:
    """Views of a mesh in normalised coordinates.

    Attributes:
        images: (N, H, W, 3) uint8.
        masks: (N, H, W) bool, from the ray through each pixel centre.
        depths: (N, H, W) float32 z-depth in normalised units, 0 on background.
        normals: (N, H, W, 3) float32 world normals, 0 on background.
        intrinsics: (N, 3, 3) float64.
        cam_to_world: (N, 4, 4) float64 normalised poses.
    """

    images: np.ndarray
    masks: np.ndarray
    depths: np.ndarray
    normals: np.ndarray
    intrinsics: np.ndarray
    cam_to_world: np.ndarray


def fibonacci_sphere(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) near-uniform unit directions over the whole sphere, randomly rotated by ``seed``."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z**2)
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    return Rotation.random(random_state=seed).apply(dirs)


def orbit_cameras(
    n_views: int, size: int, radius: float, seed: int = 0, fov_deg: float = 45.0, fill: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """Cameras on a sphere looking at the origin: (N, 3, 3) K and (N, 4, 4) poses.

    The camera distance makes a sphere of ``radius`` span ``fill`` of the frame.
    """
    half = np.deg2rad(fov_deg) / 2.0
    focal = (size / 2.0) / np.tan(half)
    centre = (size - 1) / 2.0  # integer pixel coordinates are pixel centres
    K = np.array([[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]])
    distance = max(radius / np.sin(np.arctan(fill * np.tan(half))), 1.2)
    poses = [look_at(distance * d, np.zeros(3), (0.0, 0.0, 1.0)) for d in fibonacci_sphere(n_views, seed)]
    return np.repeat(K[None], n_views, axis=0), np.stack(poses)


def albedo(p: np.ndarray) -> np.ndarray:
    """(..., 3) procedural 3D albedo in [0.08, 0.95]: smooth colour patches times stripes."""
    dirs = np.array([[0.8, 0.5, -0.3], [-0.2, 0.9, 0.4], [0.5, -0.4, 0.75]])
    freqs = np.array([5.0, 6.5, 4.2])
    phases = np.array([0.3, 2.1, 4.0])
    patches = 0.5 + 0.4 * np.sin(p @ dirs.T * freqs + phases)
    stripe_phase = p @ np.array([0.3, -0.55, 0.78]) / 0.11
    stripes = 0.55 + 0.45 * (np.sin(2.0 * np.pi * stripe_phase) > 0.0)
    return np.clip(patches * stripes[..., None], 0.08, 0.95)


def _surface_normals(mesh: trimesh.Trimesh, hits: RayHits) -> np.ndarray:
    """(M, 3) interpolated vertex normals at the M rays of ``hits`` that hit."""
    tri = mesh.faces[hits.face[hits.ok]]
    uv = hits.uv[hits.ok]
    bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
    n = np.einsum("mk,mkc->mc", bary, mesh.vertex_normals[tri])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _outward_normals(caster: Raycaster, hits: RayHits, dirs: np.ndarray) -> np.ndarray:
    """``_surface_normals`` turned to the camera's side of the surface the ray hit first (its face's
    normal decides): a mesh wound inward (negative volume, as some scans ship) gives the same cue
    as the same mesh wound outward, instead of normals that push the SDF inside out."""
    n = _surface_normals(caster.mesh, hits)
    n[caster.back_facing(hits, dirs)] *= -1.0
    return n


def _shade(mesh: trimesh.Trimesh, hits: RayHits, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(M, 3) linear colour of each ray; black where it misses."""
    t = hits.t_hit
    ok = hits.ok
    colour = np.zeros(dirs.shape, dtype=np.float64)
    if not ok.any():
        return colour
    points = origins[ok] + t[ok, None] * dirs[ok]
    n = _surface_normals(mesh, hits)
    n = np.where((np.sum(n * dirs[ok], axis=1) > 0)[:, None], -n, n)  # face the camera
    light = AMBIENT + (1.0 - AMBIENT) * np.clip(n @ LIGHT_DIR, 0.0, None)
    colour[ok] = albedo(points) * light[:, None]
    return colour


def _supersample_offsets(factor: int) -> np.ndarray:
    """(factor^2, 2) sub-pixel offsets, centred on the pixel centre."""
    g = (np.arange(factor) + 0.5) / factor - 0.5
    du, dv = np.meshgrid(g, g, indexing="xy")
    return np.stack([du.ravel(), dv.ravel()], axis=1)


def _photograph_view(caster: Raycaster, K: np.ndarray, pose: np.ndarray, size: int, factor: int):
    uv = pixel_grid(size, size).reshape(-1, 2)
    origins, dirs = pixel_rays_unit_z(K, pose, uv)
    centre = caster.cast(origins, dirs)
    ok = centre.ok
    depth = np.where(ok, centre.t_hit, 0.0).astype(np.float32)
    normals = np.zeros((uv.shape[0], 3), dtype=np.float32)
    normals[ok] = _outward_normals(caster, centre, dirs)
    colour = np.zeros((uv.shape[0], 3))
    for offset in _supersample_offsets(factor):
        o, d = pixel_rays_unit_z(K, pose, uv + offset)
        colour += _shade(caster.mesh, caster.cast(o, d), o, d)
    rgb = np.clip(colour / factor**2, 0.0, 1.0) * 255.0 + 0.5
    shape = (size, size)
    rgb = rgb.astype(np.uint8).reshape(*shape, 3)
    return rgb, ok.reshape(shape), depth.reshape(shape), normals.reshape(*shape, 3)


def photograph_views(
    mesh: trimesh.Trimesh,
    n_views: int = 40,
    size: int = 96,
    seed: int = 0,
    fov_deg: float = 45.0,
    supersample: int = 2,
) -> Photographs:
    """Ray-cast ``mesh`` (normalised units, centred on the origin) from cameras on a sphere."""
    caster = Raycaster(mesh)
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
    intrinsics, poses = orbit_cameras(n_views, size, radius, seed, fov_deg)
    views = [_photograph_view(caster, K, pose, size, supersample) for K, pose in zip(intrinsics, poses)]
    images, masks, depths, normals = (np.stack(v) for v in zip(*views))
    return Photographs(images, masks, depths, normals, intrinsics, poses)


# ----------------------------------------------------------------------------- writing


def refuse_non_empty(out_dir: Path) -> None:
    """Raise InputError when ``out_dir`` exists and is not an empty folder."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(out_dir, "output folder exists and is not empty; remove it or choose another")


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it becomes ``out_dir``.

    Refuses an ``out_dir`` that exists and is not an empty folder.
    """
    refuse_non_empty(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _world_mats(views: Photographs, scale_mat: np.ndarray) -> list[np.ndarray]:
    """(4, 4) world-unit projection matrices ``[K [R|t]; 0 0 0 1]`` per view."""
    mats = []
    for K, pose in zip(views.intrinsics, views.cam_to_world):
        mat = np.eye(4)
        mat[:3] = projection_from(K, _world_pose(pose, scale_mat))
        mats.append(mat)
    return mats


def write_dtu_layout(
    folder: Path, views: Photographs, scale_mat: np.ndarray, mesh_world: trimesh.Trimesh
) -> None:
    """Write views (normalised) as a DTU/IDR scene in world units into ``folder``."""
    world_per_unit = float(abs(np.linalg.det(scale_mat[:3, :3])) ** (1.0 / 3.0))
    cams = {}
    for i, mat in enumerate(_world_mats(views, scale_mat)):
        cams[f"world_mat_{i}"] = mat
        cams[f"scale_mat_{i}"] = scale_mat
    np.savez(folder / "cameras_sphere.npz", **cams)
    for name in ("image", "mask", "depth", "normal"):
        (folder / name).mkdir()
    jobs = []
    for i in range(len(views.images)):
        jobs.append((folder / "image" / f"{i:06d}.png", views.images[i]))
        mask_rgb = np.repeat(views.masks[i, ..., None], 3, axis=2).astype(np.uint8) * np.uint8(255)
        jobs.append((folder / "mask" / f"{i:03d}.png", mask_rgb))
        np.save(folder / "depth" / f"{i:06d}.npy", views.depths[i] * np.float32(world_per_unit))
        np.save(folder / "normal" / f"{i:06d}.npy", views.normals[i])
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda job: iio.imwrite(job[0], job[1]), jobs))
    mesh_world.export(folder / "gt_mesh.ply")


SPARSE_POINTS = 2000
"""Surface points sampled for a synthetic COLMAP model's points3D (those seen by two views or more are kept)."""


def sparse_points(views: Photographs, mesh: trimesh.Trimesh, n_points: int = SPARSE_POINTS,
                  seed: int = 0) -> tuple[np.ndarray, list[list[tuple[int, np.ndarray]]]]:
    """Surface points of ``mesh`` (normalised units) and where each is seen: per point, the
    (view, (u, v) pixel) of every view whose image holds it unoccluded; only points seen twice or more.
    What structure-from-motion would triangulate, without its noise."""
    points = np.asarray(trimesh.sample.sample_surface(mesh, n_points, seed=seed)[0], dtype=np.float64)
    caster = Raycaster(mesh)
    height, width = views.images.shape[1:3]
    seen: list[list[tuple[int, np.ndarray]]] = [[] for _ in points]
    for view, (K, pose) in enumerate(zip(views.intrinsics, views.cam_to_world)):
        uv, z = project_points(K, pose, points)
        dirs = points - pose[:3, 3]
        hits = caster.cast(np.broadcast_to(pose[:3, 3], dirs.shape), dirs)  # t = 1 at the point itself
        inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= width - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= height - 0.5)
        for i in np.flatnonzero(inside & (hits.t_hit > 1.0 - 1e-3)):
            seen[i].append((view, uv[i]))
    keep = [i for i, obs in enumerate(seen) if len(obs) >= 2]
    return points[keep], [seen[i] for i in keep]


def colmap_model_of(views: Photographs, scale_mat: np.ndarray, mesh: trimesh.Trimesh,
                    names: list[str], seed: int = 0) -> "Model":
    """The COLMAP model of ``views`` in world units (``scale_mat``): one PINHOLE camera per distinct
    K, world-to-camera poses, and sparse points sampled on ``mesh`` (normalised) with their tracks."""
    from recon.datasets.colmap_model import Camera, Image, Model, Points3D, rotation_to_qvec

    height, width = views.images.shape[1:3]
    cameras: dict[int, Camera] = {}
    camera_of: list[int] = []
    for K in views.intrinsics:
        params = np.array([K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])  # COLMAP: first pixel's centre at 0.5
        match = next((c.id for c in cameras.values() if np.array_equal(c.params, params)), None)
        if match is None:
            match = len(cameras) + 1
            cameras[match] = Camera(match, "PINHOLE", width, height, params)
        camera_of.append(match)
    points, tracks = sparse_points(views, mesh, seed=seed)
    observations: list[list[tuple[np.ndarray, int]]] = [[] for _ in names]
    track_rows = []
    for point_id, track in enumerate(tracks, start=1):
        for view, uv in track:
            track_rows.append((view + 1, len(observations[view])))
            observations[view].append((uv + 0.5, point_id))
    images = {}
    for view, (pose, name) in enumerate(zip(views.cam_to_world, names)):
        world_to_cam = np.linalg.inv(_world_pose(pose, scale_mat))
        obs = observations[view]
        xy = np.array([o[0] for o in obs]).reshape(-1, 2)
        images[view + 1] = Image(view + 1, rotation_to_qvec(world_to_cam[:3, :3]), world_to_cam[:3, 3],
                                 camera_of[view], name, xy, np.array([o[1] for o in obs], np.int64))
    world = points @ scale_mat[:3, :3].T + scale_mat[:3, 3]
    rgb = np.array([_pixel(views.images[t[0][0]], t[0][1]) for t in tracks], np.uint8)
    lengths = np.array([len(t) for t in tracks], np.int64)
    return Model(cameras, images, Points3D(np.arange(1, len(points) + 1), world, rgb.reshape(-1, 3),
                                           np.zeros(len(points)), lengths, np.array(track_rows, np.int32).reshape(-1, 2)))


def _pixel(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """The pixel of (H, W, 3) ``image`` nearest to ``uv`` (integers are pixel centres)."""
    u = min(max(int(np.rint(uv[0])), 0), image.shape[1] - 1)
    v = min(max(int(np.rint(uv[1])), 0), image.shape[0] - 1)
    return image[v, u]


def write_colmap_layout(folder: Path, views: Photographs, scale_mat: np.ndarray, mesh_world: trimesh.Trimesh,
                        binary: bool = True, seed: int = 0) -> None:
    """Write views (normalised) as a COLMAP capture in world units into ``folder``: ``images/``,
    ``masks/<name>.png``, ``sparse/0/`` (binary or text) and ``gt_mesh.ply``."""
    from recon.datasets.colmap_model import write_model

    names = [f"{i:06d}.png" for i in range(len(views.images))]
    model = colmap_model_of(views, scale_mat, _to_normalised(mesh_world, scale_mat), names, seed)
    write_model(model, folder / "sparse" / "0", binary)
    for name in ("images", "masks"):
        (folder / name).mkdir()
    jobs = []
    for name, image, mask in zip(names, views.images, views.masks):
        jobs.append((folder / "images" / name, image))
        jobs.append((folder / "masks" / f"{name}.png", mask.astype(np.uint8) * np.uint8(255)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda job: iio.imwrite(job[0], job[1]), jobs))
    mesh_world.export(folder / "gt_mesh.ply")


def _world_pose(pose: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-world pose in world units of a normalised pose (similarity ``scale_mat``)."""
    world_pose = pose.copy()
    world_pose[:3, 3] = (scale_mat @ np.append(pose[:3, 3], 1.0))[:3]
    return world_pose


def normalisation_for(mesh: trimesh.Trimesh, radius: float = USER_MESH_RADIUS) -> np.ndarray:
    """(4, 4) scale_mat (normalised -> mesh units) fitting the bounding box into a sphere of ``radius``."""
    lo, hi = mesh.bounds
    half_diagonal = float(np.linalg.norm(hi - lo)) / 2.0
    if not np.isfinite(half_diagonal) or half_diagonal <= 0:
        raise InputError("mesh", "mesh has an empty or degenerate bounding box")
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= half_diagonal / radius
    scale_mat[:3, 3] = (lo + hi) / 2.0
    return scale_mat


def _to_normalised(mesh_world: trimesh.Trimesh, scale_mat: np.ndarray) -> trimesh.Trimesh:
    inv = np.linalg.inv(scale_mat)
    verts = np.asarray(mesh_world.vertices) @ inv[:3, :3].T + inv[:3, 3]
    return trimesh.Trimesh(verts, np.asarray(mesh_world.faces), process=False)


def photograph_scene(
    mesh_world: trimesh.Trimesh,
    out_dir: str | Path,
    n_views: int = 40,
    size: int = 96,
    seed: int = 0,
    scale_mat: np.ndarray | None = None,
    fov_deg: float = 45.0,
    supersample: int = 2,
    info: dict | None = None,
    layout: str = "dtu",
) -> np.ndarray:
    """Photograph ``mesh_world`` into ``out_dir`` in the DTU/IDR or the COLMAP layout, atomically.

    dtu: ``cameras_sphere.npz``, ``image/``, ``mask/``, ``depth/`` (world z-depth),
    ``normal/``; colmap: ``images/``, ``masks/``, ``sparse/0/*.bin`` (PINHOLE cameras, sparse
    points sampled on the mesh and seen by two views or more). Both: ``gt_mesh.ply`` and
    ``synthetic.json``. Without a ``scale_mat`` the mesh's bounding box is fitted into a
    sphere of radius 0.8. Returns the (4, 4) scale_mat used.
    """
    _check_photo_args(n_views, size, supersample, layout)
    out_dir = Path(out_dir)
    if scale_mat is None:
        scale_mat = normalisation_for(mesh_world)
    scale_mat = np.asarray(scale_mat, dtype=np.float64)
    with atomic_dir(out_dir) as tmp:
        views = photograph_views(_to_normalised(mesh_world, scale_mat), n_views, size, seed, fov_deg, supersample)
        if layout == "colmap":
            write_colmap_layout(tmp, views, scale_mat, mesh_world, seed=seed)
        else:
            write_dtu_layout(tmp, views, scale_mat, mesh_world)
        meta = dict(info or {}, layout=layout, n_views=n_views, size=size, seed=seed, fov_deg=fov_deg)
        meta["scale_mat"] = scale_mat.tolist()
        (tmp / INFO_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return scale_mat


def _check_photo_args(n_views: int, size: int, supersample: int, layout: str = "dtu") -> None:
    if layout not in LAYOUTS:
        raise InputError("--format", f"synthetic scenes are written as {' or '.join(LAYOUTS)}, not {layout}")
    if n_views < 1:
        raise InputError("n_views", f"must be at least 1, got {n_views}")
    if size < 4:
        raise InputError("size", f"must be at least 4 pixels, got {size}")
    if supersample < 1:
        raise InputError("supersample", f"must be at least 1, got {supersample}")


# ----------------------------------------------------------------------------- entry point


@dataclass
class SynthReport:
    """What :func:`synthesize` wrote and how the mesh was normalised.

    ``world = scale * normalised + centre``.
    """

    out_dir: Path
    source: str
    n_views: int
    size: int
    centre: tuple[float, float, float]
    scale: float
    seconds: float


def default_scale_mat() -> np.ndarray:
    """(4, 4) scale_mat placing the default object in its (non-normalised) world frame."""
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= DEFAULT_WORLD_SCALE
    scale_mat[:3, 3] = DEFAULT_WORLD_CENTRE
    return scale_mat


def synthesize(
    out_dir: str | Path,
    mesh_path: Path | None = None,
    n_views: int = 40,
    size: int = 96,
    seed: int = 0,
    mesh_resolution: int = 256,
    layout: str = "dtu",
) -> SynthReport:
    """Photograph the default object, or the mesh at ``mesh_path``, into ``out_dir`` (``layout``:
    dtu or colmap; see :func:`photograph_scene`).

    A user's mesh stays in its own units (the world frame); it is normalised by
    its bounding-box centre and half-diagonal so that it fits a sphere of radius
    0.8. The normalisation is returned and written to ``synthetic.json``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    refuse_non_empty(out_dir)  # before the (slow) mesh is built
    check_output_dir(out_dir)
    _check_photo_args(n_views, size, 1, layout)
    if mesh_path is None:
        scale_mat = default_scale_mat()
        mesh_world = make_default_object(mesh_resolution).apply_transform(scale_mat)
        source = f"default object (marching cubes at {mesh_resolution}^3)"
    else:
        mesh_world = load_mesh(mesh_path)
        scale_mat = normalisation_for(mesh_world)
        source = str(mesh_path)
    scale = float(scale_mat[0, 0])
    centre = tuple(float(c) for c in scale_mat[:3, 3])
    info = {"source": source, "centre": list(centre), "scale": scale}
    photograph_scene(mesh_world, out_dir, n_views, size, seed, scale_mat=scale_mat, info=info, layout=layout)
    return SynthReport(out_dir, source, n_views, size, centre, scale, time.perf_counter() - start)
