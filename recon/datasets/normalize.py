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


def from_aabb(lower: np.ndarray, upper: np.ndarray, source: str) -> Normalization:
    """The sphere through the corners of an axis-aligned box."""
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    return Normalization((lower + upper) / 2, float(np.linalg.norm(upper - lower) / 2), source)


def normalise_poses(cam_to_world: np.ndarray, norm: Normalization) -> np.ndarray:
    """(N, 4, 4) poses in normalised coordinates (rotations unchanged)."""
    out = np.array(cam_to_world, dtype=np.float64, copy=True)
    out[:, :3, 3] = (out[:, :3, 3] - norm.centre) / norm.radius
    return out
