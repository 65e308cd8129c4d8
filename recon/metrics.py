"""Mesh-to-mesh metrics: Chamfer-L1, precision / recall / F-score, normal consistency.

Both meshes are sampled (area-weighted) and compared point to nearest point, in
the meshes' own (world) units. Every distance is also reported relative to the
ground truth's bounding-box diagonal (keys ending ``_rel``). Thresholds ``tau``
are given relative to that diagonal; the key ``fscore@0.01`` means tau = 1% of
it, and ``tau@0.01`` holds tau in world units.

Nearest neighbours come from open3d, imported inside the functions so that
``import recon`` works without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import trimesh

from recon.errors import InputError

DEFAULT_THRESHOLDS = (0.0025, 0.005, 0.01, 0.02)


def sample_surface(mesh: trimesh.Trimesh, n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted samples on ``mesh`` -> points ``(n, 3)``, unit face normals ``(n, 3)``.

    An empty mesh gives two ``(0, 3)`` arrays.
    """
    if len(mesh.faces) == 0 or n_points <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    points, face_index = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    return np.asarray(points, dtype=np.float64), np.asarray(mesh.face_normals[face_index], dtype=np.float64)


def nearest_neighbors(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query point ``(n, 3)`` its nearest ``ref`` point ``(m, 3)`` -> dist ``(n,)``, idx ``(n,)``.

    Uses ``open3d.core.nns`` (multi-threaded; about 0.18 s for 200k x 200k on
    2 cores, 5x faster than a loop over ``KDTreeFlann``).
    """
    import open3d as o3d  # optional dependency: only the metrics need it

    query = np.ascontiguousarray(query, dtype=np.float64).reshape(-1, 3)
    ref = np.ascontiguousarray(ref, dtype=np.float64).reshape(-1, 3)
    if len(ref) == 0:
        raise ValueError("nearest_neighbors needs at least one reference point")
    if len(query) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(ref))
    nns.knn_index()
    idx, dist2 = nns.knn_search(o3d.core.Tensor(query), 1)
    return np.sqrt(dist2.numpy()[:, 0]), idx.numpy()[:, 0].astype(np.int64)


def _tau_key(tau_rel: float) -> str:
    return f"{tau_rel:g}"


def _precision_recall(d_pred: np.ndarray, d_gt: np.ndarray, tau: float) -> tuple[float, float, float]:
    """Fraction of pred points within tau of gt, of gt points within tau of pred, and their F-score."""
    precision = float(np.mean(d_pred < tau)) if len(d_pred) else 0.0
    recall = float(np.mean(d_gt < tau)) if len(d_gt) else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, fscore


def _empty_prediction(diag: float, thresholds_rel: Sequence[float]) -> dict[str, float]:
    """Metrics of a prediction with no surface: infinite distances, zero scores."""
    out = {"gt_diagonal": diag}
    for key in ("accuracy", "completeness", "chamfer_l1"):
        out[key] = out[f"{key}_rel"] = float("inf")
    out["normal_consistency"] = 0.0
    for t in thresholds_rel:
        k = _tau_key(t)
        out.update({f"tau@{k}": t * diag, f"precision@{k}": 0.0, f"recall@{k}": 0.0, f"fscore@{k}": 0.0})
    return out


def mesh_metrics(
    pred: trimesh.Trimesh,
    gt: trimesh.Trimesh,
    n_points: int = 200_000,
    thresholds_rel: Sequence[float] = DEFAULT_THRESHOLDS,
    seed: int = 0,
) -> dict[str, float]:
    """Compare a predicted mesh with the ground truth (both in world units).

    accuracy = mean distance pred samples -> gt samples; completeness = gt ->
    pred; chamfer_l1 = their mean; each also as ``*_rel`` (/ gt bbox diagonal).
    For every relative threshold t: ``tau@t`` (world units), ``precision@t``,
    ``recall@t``, ``fscore@t``. normal_consistency = mean |n_a . n_b| over
    nearest-neighbour pairs, averaged over both directions. ``n_points`` are
    sampled on each mesh (pred with ``seed``, gt with ``seed + 1``).
    An empty ``pred`` gives infinite distances and zero scores.
    """
    if len(gt.faces) == 0:
        raise InputError("ground-truth mesh", "has no faces")
    diag = float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
    if len(pred.faces) == 0:
        return _empty_prediction(diag, thresholds_rel)
    p_pts, p_nrm = sample_surface(pred, n_points, seed)
    g_pts, g_nrm = sample_surface(gt, n_points, seed + 1)
    d_pred, i_pred = nearest_neighbors(p_pts, g_pts)
    d_gt, i_gt = nearest_neighbors(g_pts, p_pts)
    out = {"gt_diagonal": diag, "accuracy": float(d_pred.mean()), "completeness": float(d_gt.mean())}
    out["chamfer_l1"] = 0.5 * (out["accuracy"] + out["completeness"])
    for key in ("accuracy", "completeness", "chamfer_l1"):
        out[f"{key}_rel"] = out[key] / diag
    nc_pred = np.abs(np.einsum("ij,ij->i", p_nrm, g_nrm[i_pred])).mean()
    nc_gt = np.abs(np.einsum("ij,ij->i", g_nrm, p_nrm[i_gt])).mean()
    out["normal_consistency"] = float(0.5 * (nc_pred + nc_gt))
    for t in thresholds_rel:
        k = _tau_key(t)
        precision, recall, fscore = _precision_recall(d_pred, d_gt, t * diag)
        out.update({f"tau@{k}": t * diag, f"precision@{k}": precision, f"recall@{k}": recall, f"fscore@{k}": fscore})
    return out


def format_metrics(d: dict[str, float]) -> str:
    """One line: Chamfer-L1 (units and % of the GT diagonal), F-score@1%, normal consistency."""
    parts = [f"Chamfer-L1 {d['chamfer_l1']:.4g} ({100 * d['chamfer_l1_rel']:.3g}% of diag {d['gt_diagonal']:.4g})"]
    if "fscore@0.01" in d:
        parts.append(f"F-score@1% {100 * d['fscore@0.01']:.1f}")
    parts.append(f"acc {d['accuracy']:.4g} / comp {d['completeness']:.4g}")
    parts.append(f"NC {d['normal_consistency']:.3f}")
    return ", ".join(parts)
