"""Pictures of meshes for the report, without a display: ray cast with :mod:`recon.raycast`.

Cameras follow recon's convention (OpenCV: x right, y down, z forward; pinhole
``K``, pose ``cam_to_world``), in the meshes' world units. Two kinds of image:
normal shading (world-space normals as colours, headlight-lit, so that grooves
and bumps show) and the distance of each visible point to a reference mesh
through a colour map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from recon.datasets.cameras import look_at, pixel_grid, pixel_rays_unit_z
from recon.raycast import Raycaster

BACKGROUND = np.array([255, 255, 255], dtype=np.uint8)


@dataclass
class Camera:
    """A pinhole camera: ``K`` (3, 3), ``cam_to_world`` (4, 4), image ``size`` (square, pixels)."""

    K: np.ndarray
    cam_to_world: np.ndarray
    size: int


def orbit_camera(centre: np.ndarray, radius: float, azimuth_deg: float, elevation_deg: float, size: int,
                 up: np.ndarray, fov_deg: float = 30.0) -> Camera:
    """A camera looking at ``centre`` from a direction on the sphere around it, framing a ball of ``radius``.

    Azimuth and elevation are measured in the frame whose z is ``up``.
    """
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    front = np.cross(up, side)
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    direction = np.cos(el) * (np.cos(az) * side + np.sin(az) * front) + np.sin(el) * up
    distance = radius / np.sin(np.deg2rad(fov_deg) / 2.0)
    return _camera(np.asarray(centre) + distance * direction, np.asarray(centre), up, size, fov_deg)


def closeup_camera(point: np.ndarray, normal: np.ndarray, half_width: float, size: int, up: np.ndarray,
                   fov_deg: float = 30.0) -> Camera:
    """A camera looking at ``point`` against its ``normal``, framing ``half_width`` around it."""
    normal = np.asarray(normal, dtype=np.float64) / np.linalg.norm(normal)
    distance = half_width / np.tan(np.deg2rad(fov_deg) / 2.0)
    up = np.asarray(up, dtype=np.float64)
    if abs(float(normal @ up)) > 0.95 * np.linalg.norm(up):
        up = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    return _camera(np.asarray(point) + distance * normal, np.asarray(point), up, size, fov_deg)


def _camera(eye: np.ndarray, target: np.ndarray, up: np.ndarray, size: int, fov_deg: float) -> Camera:
    focal = (size / 2.0) / np.tan(np.deg2rad(fov_deg) / 2.0)
    c = (size - 1) / 2.0
    K = np.array([[focal, 0.0, c], [0.0, focal, c], [0.0, 0.0, 1.0]])
    return Camera(K, look_at(eye, target, up), size)


@dataclass
class Hits:
    """Per pixel of a square image: whether the ray hit, the hit point and the unit normal facing the camera."""

    ok: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    dirs: np.ndarray


def cast(mesh: trimesh.Trimesh, camera: Camera) -> Hits:
    """Ray cast every pixel of ``camera`` against ``mesh``."""
    uv = pixel_grid(camera.size, camera.size).reshape(-1, 2)
    origins, dirs = pixel_rays_unit_z(camera.K, camera.cam_to_world, uv)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    caster = Raycaster(mesh)
    hits = caster.cast(origins, dirs)
    ok = hits.ok
    normals = np.zeros_like(dirs)
    if ok.any():
        normals[ok] = caster.face_normals(hits)
        normals[np.flatnonzero(ok)[caster.back_facing(hits, dirs)]] *= -1.0
    points = origins + np.where(ok, hits.t_hit, 0.0)[:, None] * dirs
    return Hits(ok, points, normals, dirs)


def normal_image(mesh: trimesh.Trimesh, camera: Camera) -> np.ndarray:
    """(S, S, 3) uint8: camera-space normals as colours, times a headlight shade; white background."""
    hits = cast(mesh, camera)
    rot = camera.cam_to_world[:3, :3]
    cam_normals = hits.normals @ rot  # world -> camera
    colour = (cam_normals * np.array([1.0, -1.0, -1.0]) + 1.0) * 0.5
    shade = 0.35 + 0.65 * np.clip(-np.einsum("ij,ij->i", hits.normals, hits.dirs), 0.0, 1.0)
    rgb = np.clip(colour * shade[:, None], 0.0, 1.0) * 255.0
    return _compose(rgb, hits.ok, camera.size)


def distance_image(mesh: trimesh.Trimesh, reference: trimesh.Trimesh, camera: Camera, vmax: float,
                   cmap: str = "inferno") -> np.ndarray:
    """(S, S, 3) uint8: each visible point's distance to ``reference`` through ``cmap`` on [0, vmax], lit."""
    import matplotlib

    hits = cast(mesh, camera)
    values = np.zeros(len(hits.ok))
    if hits.ok.any():
        values[hits.ok] = Raycaster(reference).distance(hits.points[hits.ok])
    colours = matplotlib.colormaps[cmap](np.clip(values / vmax, 0.0, 1.0))[:, :3]
    shade = 0.55 + 0.45 * np.clip(-np.einsum("ij,ij->i", hits.normals, hits.dirs), 0.0, 1.0)
    return _compose(colours * shade[:, None] * 255.0, hits.ok, camera.size)


def _compose(rgb: np.ndarray, ok: np.ndarray, size: int) -> np.ndarray:
    out = np.broadcast_to(BACKGROUND, rgb.shape).copy()
    out[ok] = rgb[ok].astype(np.uint8)
    return out.reshape(size, size, 3)
