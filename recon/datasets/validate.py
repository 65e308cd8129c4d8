"""Checks of cameras shared by every loader; each failure names the file and the view."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon.errors import InputError

ROTATION_TOLERANCE = 1e-3
"""Largest |R^T R - I| entry (and |det R - 1|) accepted for a pose's rotation."""


def as_4x4(matrix: np.ndarray, where: str | Path, what: str) -> np.ndarray:
    """(4, 4) float64 from a finite (4, 4) or (3, 4) matrix (a (3, 4) one gains the row (0, 0, 0, 1))."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise InputError(where, f"{what} has shape {matrix.shape}, expected (4, 4) or (3, 4)")
    if not np.all(np.isfinite(matrix)):
        raise InputError(where, f"{what} has non-finite values (NaN or inf)")
    return matrix


def check_pose(pose: np.ndarray, where: str | Path, view: str) -> np.ndarray:
    """(4, 4) float64 camera-to-world pose: finite, a proper rotation, last row (0, 0, 0, 1)."""
    pose = as_4x4(pose, where, f"{view}: pose")
    if not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(where, f"{view}: pose's last row is {pose[3].tolist()}, expected [0, 0, 0, 1]")
    R = pose[:3, :3]
    error = float(np.abs(R.T @ R - np.eye(3)).max())
    if error > ROTATION_TOLERANCE:
        raise InputError(where, f"{view}: pose's rotation is not orthonormal (|R^T R - I| = {error:.3g})")
    det = float(np.linalg.det(R))
    if abs(det - 1.0) > ROTATION_TOLERANCE:
        raise InputError(where, f"{view}: pose's rotation has determinant {det:.4g}, expected +1 (a reflection?)")
    return pose


def check_intrinsics(K: np.ndarray, where: str | Path, view: str) -> np.ndarray:
    """(3, 3) float64 K with finite entries and positive focal lengths."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise InputError(where, f"{view}: intrinsics must be a finite 3x3 matrix, got {K.tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(where, f"{view}: focal lengths must be positive, got fx={K[0, 0]:.4g}, fy={K[1, 1]:.4g}")
    return K


def check_cameras(K: np.ndarray, poses: np.ndarray, where: str | Path, views: Sequence[str]) -> None:
    """Check (N, 3, 3) intrinsics and (N, 4, 4) poses, naming the view of the first bad one."""
    for k, pose, view in zip(K, poses, views):
        check_intrinsics(k, where, view)
        check_pose(pose, where, view)


def orthonormalize(R: np.ndarray) -> np.ndarray:
    """Nearest proper rotation (SVD) to a rotation within float32 noise."""
    u, _, vt = np.linalg.svd(R)
    return u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
