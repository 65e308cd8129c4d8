"""Normalisation to the unit sphere for formats without a scale matrix.

The result is a similarity ``scale_mat`` (normalised -> world): ``world = radius * x + centre``.
From the cameras, the centre is the point closest (least squares) to every optical axis
(as instant-ngp's ``colmap2nerf.py`` recentres a capture) and the radius is that of the
largest sphere about it that every camera sees whole: camera i, at distance ``d_i`` from
the centre, sees a cone of half-angle ``a_i`` around the centre's direction before the
nearest image border, so a sphere of radius ``d_i sin(a_i)`` fits in its image. The
median over cameras is used (a few close-ups must not shrink the object); see
docs/DECISIONS.md for the measurement. An object framed by the images therefore lies
inside the unit sphere and every camera outside it (``sin(a_i) < 1``).

From a sparse point cloud (:func:`from_points`, COLMAP captures), the sphere is drawn around the
points that most cameras see: the points seen in at least ``MIN_TRACK`` images (track length)
that lie inside the view frustum of at least half the cameras; the centre is their
coordinate-wise median and the radius ``POINT_MARGIN`` times the ``POINT_QUANTILE`` quantile of
their distances to it. It is then checked against the cameras: a sphere that would hold a
camera is shrunk to ``CAMERA_CLEARANCE`` of the nearest camera's distance, and too few such
points (or a centre behind most cameras) fall back to the cameras' rule, each with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.errors import InputError


@dataclass(frozen=True)
class Normalization:
    """centre (3,) and radius in world units; source: where they came from."""

    centre: np.ndarray
    radius: float
    source: str

    @property
    def scale_mat(self) -> np.ndarray:
        """(4, 4) normalised -> world."""
        mat = np.eye(4)
        mat[:3, :3] *= self.radius
        mat[:3, 3] = self.centre
        return mat

    @staticmethod
    def of_scale_mat(scale_mat: np.ndarray, source: str) -> "Normalization":
        """Centre and (geometric-mean) radius of a given scale matrix."""
        radius = float(abs(np.linalg.det(scale_mat[:3, :3])) ** (1.0 / 3.0))
        return Normalization(np.asarray(scale_mat[:3, 3], dtype=np.float64), radius, source)

    def describe(self) -> str:
        """One line: centre, radius and source."""
        c = ", ".join(f"{v:.4g}" for v in self.centre)
        return f"centre ({c}), radius {self.radius:.4g} world units, from {self.source}"


def closest_point_to_axes(origins: np.ndarray, axes: np.ndarray, where: str) -> np.ndarray:
    """(3,) least-squares point nearest to the lines ``origins[i] + t axes[i]`` ((N, 3) each)."""
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    proj = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]  # (N, 3, 3) projectors across each axis
    A, b = proj.sum(0), np.einsum("nij,nj->i", proj, origins)
    eig = np.linalg.eigvalsh(A)
    if eig[0] < 1e-3 * eig[-1]:
        raise InputError(where, "the cameras' optical axes are (nearly) parallel, so they look at no common "
                         "point; give the scene a scale matrix or an aabb")
    return np.linalg.solve(A, b)


def visible_radius(K: np.ndarray, cam_to_world: np.ndarray, centre: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N,) radius of the largest sphere about ``centre`` that each camera sees whole (0 if unseen).

    K (N, 3, 3), cam_to_world (N, 4, 4), size (H, W). The cone seen around the centre's
    direction is bounded by the nearest of the four border points on the centre's row and column.
    """
    h, w = size
    radii = np.zeros(len(K))
    for i, (k, pose) in enumerate(zip(K, cam_to_world)):
        p_cam = pose[:3, :3].T @ (centre - pose[:3, 3])
        if p_cam[2] <= 0:
            continue
        uc, vc = (k @ (p_cam / p_cam[2]))[:2]
        if not (-0.5 <= uc <= w - 0.5 and -0.5 <= vc <= h - 0.5):
            continue
        border = np.array([[-0.5, vc, 1], [w - 0.5, vc, 1], [uc, -0.5, 1], [uc, h - 0.5, 1]])
        rays = border @ np.linalg.inv(k).T
        cosines = rays @ p_cam / (np.linalg.norm(rays, axis=1) * np.linalg.norm(p_cam))
        half_angle = float(np.arccos(np.clip(cosines, -1.0, 1.0)).min())
        radii[i] = np.linalg.norm(p_cam) * np.sin(half_angle)
    return radii


def from_cameras(K: np.ndarray, cam_to_world: np.ndarray, size: tuple[int, int], where: str) -> Normalization:
    """Normalisation of an object-centric capture from its cameras alone (see the module docstring)."""
    centre = closest_point_to_axes(cam_to_world[:, :3, 3], cam_to_world[:, :3, 2], where)
    radii = visible_radius(K, cam_to_world, centre, size)
    seen = radii > 0
    if seen.sum() < max(1, len(radii) // 2):
        raise InputError(where, f"only {int(seen.sum())} of {len(radii)} cameras see the point their axes meet at "
                         "(not an object-centric capture?); give the scene a scale matrix or an aabb")
    return Normalization(centre, float(np.median(radii[seen])), f"cameras ({int(seen.sum())} views)")


MIN_TRACK = 3
"""Sparse points seen in fewer images are left out of the scene sphere (unless too few remain)."""
MIN_VISIBLE_FRACTION = 0.5
"""A point belongs to the scene when it lies in the view frustum of at least this share of the cameras."""
POINT_QUANTILE, POINT_MARGIN = 0.99, 1.1
"""The radius: this margin times this quantile of the scene points' distances to their median."""
CAMERA_CLEARANCE = 0.9
"""A sphere reaching a camera is shrunk to this fraction of the nearest camera's distance."""
MIN_SCENE_POINTS = 20
"""Fewer scene points than this: the sphere comes from the cameras instead."""


def frustum_fraction(K: np.ndarray, cam_to_world: np.ndarray, size: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """(P,) share of the N cameras ((N, 3, 3) K, (N, 4, 4) poses, images of ``size`` (H, W)) in
    whose image each of the (P, 3) points falls, in front of the camera (occlusion ignored)."""
    h, w = size
    count = np.zeros(len(points))
    for k, pose in zip(K, cam_to_world):
        cam = (points - pose[:3, 3]) @ pose[:3, :3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam @ k.T)[:, :2] / z[:, None]
        count += (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= h - 0.5)
    return count / len(K)


def from_points(points: np.ndarray, track_lengths: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray,
                size: tuple[int, int], where: str) -> tuple[Normalization, list[str]]:
    """The scene sphere around the sparse points (P, 3) that most cameras see (see the module
    docstring), and the warnings of its checks against the cameras."""
    tracked = track_lengths >= MIN_TRACK
    if tracked.sum() < MIN_SCENE_POINTS:
        tracked = track_lengths >= 1
    seen = frustum_fraction(K, cam_to_world, size, points[tracked]) >= MIN_VISIBLE_FRACTION
    scene_points = points[tracked][seen]
    if len(scene_points) < MIN_SCENE_POINTS:
        return from_cameras(K, cam_to_world, size, where), [
            f"only {len(scene_points)} sparse points lie in the view of half the cameras; normalised from the cameras"]
    centre = np.median(scene_points, axis=0)
    radius = POINT_MARGIN * float(np.quantile(np.linalg.norm(scene_points - centre, axis=1), POINT_QUANTILE))
    warnings = []
    centre_seen = frustum_fraction(K, cam_to_world, size, centre[None])[0]
    if centre_seen < MIN_VISIBLE_FRACTION:
        return from_cameras(K, cam_to_world, size, where), [
            f"the sparse points' centre is in view of only {100 * centre_seen:.0f}% of the cameras; "
            "normalised from the cameras"]
    nearest = float(np.linalg.norm(cam_to_world[:, :3, 3] - centre, axis=1).min())
    if radius >= CAMERA_CLEARANCE * nearest:
        warnings.append(f"the sparse points' sphere (radius {radius:.4g}) reached a camera; shrunk to "
                        f"{CAMERA_CLEARANCE:g} x the nearest camera's distance")
        radius = CAMERA_CLEARANCE * nearest
    source = (f"sparse points ({len(scene_points)} of {len(points)}, seen in >= {int(track_lengths[tracked].min())} "
              f"images and in view of >= {MIN_VISIBLE_FRACTION:.0%} of the cameras)")
    return Normalization(centre, radius, source), warnings


def from_aabb(lower: np.ndarray, upper: np.ndarray, source: str) -> Normalization:
    """The sphere through the corners of an axis-aligned box."""
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    return Normalization((lower + upper) / 2, float(np.linalg.norm(upper - lower) / 2), source)


def normalise_poses(cam_to_world: np.ndarray, norm: Normalization) -> np.ndarray:
    """(N, 4, 4) poses in normalised coordinates (rotations unchanged)."""
    out = np.array(cam_to_world, dtype=np.float64, copy=True)
    out[:, :3, 3] = (out[:, :3, 3] - norm.centre) / norm.radius
    return out
