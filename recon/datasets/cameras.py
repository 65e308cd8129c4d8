"""Pinhole camera helpers in the OpenCV convention.

Camera frame: x right, y down, z forward (the camera looks down +z). A pixel
with integer coordinates (u, v) is seen through its centre, so the ray through
it has direction ``R @ K^-1 [u, v, 1]`` in the world, where ``R`` is the
camera-to-world rotation. A projection matrix is ``P = K [R_wc | t_wc]`` with
``R_wc = R^T`` (world-to-camera).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a projection matrix into intrinsics and a camera-to-world pose.

    ``P`` is defined up to a (possibly negative) scale; the result is the
    unique ``K`` with a positive diagonal and ``K[2, 2] = 1`` together with a
    proper rotation, such that ``P ~ K [R_wc | t_wc]`` with points in front of
    the camera at positive depth.

    Args:
        P: (3, 4) projection matrix (a (4, 4) one is accepted; its last row is
            ignored).

    Returns:
        K: (3, 3) float64 intrinsics.
        cam_to_world: (4, 4) float64 pose ``[R | C]``, C the camera centre.

    Raises:
        ValueError: wrong shape, non-finite values, or a singular 3x3 block.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.shape == (4, 4):
        P = P[:3]
    if P.shape != (3, 4):
        raise ValueError(f"projection matrix must be (3, 4), got {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("projection matrix has non-finite values")
    M = P[:, :3]
    if np.linalg.matrix_rank(M) < 3:
        raise ValueError("projection matrix is degenerate (its 3x3 block has rank < 3)")
    K, R = scipy.linalg.rq(M)
    signs = np.sign(np.diag(K))
    K, R = K * signs[None, :], signs[:, None] * R  # K D, D R with D = diag(signs)
    if np.linalg.det(R) < 0:  # P carried a negative overall scale
        R = -R
    centre = -np.linalg.solve(M, P[:, 3])  # null space of P: P [C, 1] = 0
    K = K / K[2, 2]
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = R.T
    cam_to_world[:3, 3] = centre
    return K, cam_to_world


def projection_from(K: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """(3, 4) projection ``K [R_wc | t_wc]`` from (3, 3) ``K`` and a (4, 4) pose."""
    world_to_cam = np.linalg.inv(np.asarray(cam_to_world, dtype=np.float64))
    return np.asarray(K, dtype=np.float64) @ world_to_cam[:3, :4]


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """(4, 4) camera-to-world pose at ``eye`` looking at ``target``.

    ``up`` is the world direction that appears upwards in the image (towards
    smaller v); when it is parallel to the viewing direction another one is used.
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z = z / np.linalg.norm(z)
    up = np.asarray(up, dtype=np.float64)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6 * np.linalg.norm(up):  # up parallel to the view: use the axis most across it
        x = np.cross(z, np.eye(3)[np.argmin(np.abs(z))])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose


def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float64 integer pixel coordinates (u, v): u along width."""
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    return np.stack([u, v], axis=-1)


def pixel_rays_unit_z(K: np.ndarray, cam_to_world: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays through pixel coordinates.

    Args:
        K: (3, 3) intrinsics.
        cam_to_world: (4, 4) pose.
        uv: (..., 2) pixel coordinates (integers are pixel centres).

    Returns:
        origins: (..., 3) camera centre, broadcast.
        dirs: (..., 3) directions ``R K^-1 [u, v, 1]``, NOT normalised: their
            camera-space z is 1, so the ray parameter at a hit is its z-depth.
    """
    uv = np.asarray(uv, dtype=np.float64)
    pix = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], axis=-1)
    cam = pix @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T
    cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
    dirs = cam @ cam_to_world[:3, :3].T
    origins = np.broadcast_to(cam_to_world[:3, 3], dirs.shape).copy()
    return origins, dirs


def project_points(
    K: np.ndarray, cam_to_world: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) world points; returns (N, 2) pixel coordinates and (N,) z-depths."""
    P = projection_from(K, cam_to_world)
    hom = np.asarray(points, dtype=np.float64) @ P[:, :3].T + P[:, 3]
    depth = hom[:, 2]
    return hom[:, :2] / depth[:, None], depth


def visual_hull(
    intrinsics: np.ndarray, cam_to_world: np.ndarray, masks: np.ndarray, n: int = 48, box: float = 1.5
) -> np.ndarray:
    """(M, 3) points of an n^3 grid over [-box, box]^3 that land inside every mask
    ((N, H, W) bool); a point outside a view's image or behind its camera is carved."""
    g = np.linspace(-box, box, n)
    points = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    height, width = masks.shape[1:3]
    for K, pose, mask in zip(intrinsics, cam_to_world, masks):
        uv, z = project_points(K, pose, points)
        u, v = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
        ok = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        keep = np.zeros(len(points), bool)
        keep[ok] = mask[v[ok], u[ok]]
        points = points[keep]
    return points
