"""DTU's official evaluation protocol: accuracy, completeness and Chamfer in millimetres, in DTU's
world frame, so that a recon mesh sits beside the published DTU tables.

What it follows, step by step: the MATLAB evaluation of the DTU MVS 2014 benchmark
(``BaseEvalMain_web.m`` / ``PointCompareMain.m`` / ``MaxDistCP.m`` / ``ComputeStat_web.m`` of the
SampleSet) and its Python port, jzhangbs/DTUeval-python ``eval.py`` (which NeuS, MonoSDF, sdfstudio
and most neural-surface papers run, within ~0.02 % of the MATLAB numbers):

1. **Sample the mesh** (``MeshSupSamp_web``; the port's ``sample_single_tri``): each triangle with
   edges v1 = p1 - p0, v2 = p2 - p0 gets the points p0 + a v1 + b v2 for a = (i + 1/2) / n1,
   b = (j + 1/2) / n2, a + b < 1, where n_k = floor(|v_k| / t) and t = 0.2 sqrt(|v1| |v2| / |v1 x v2|);
   the vertices are added. A point cloud is taken as it is.
2. **Downsample to 0.2 mm** (``reducePts_haa``): visit the points in a random order; each point not yet
   removed removes every other point within 0.2 mm. recon's order comes from a fixed seed (the
   port's is unseeded; the port reports ~0.01 % spread between orders). The same result as the
   sequential loop is computed in rounds (a point is kept when no neighbour earlier in the order is).
3. **Cull with the observation mask** (``ObsMask/ObsMask{scan}_10.mat``: ``ObsMask`` a boolean voxel
   grid, ``BB`` its 2 x 3 bounding box, ``Res`` its voxel size in mm): a sampled point counts for
   accuracy when it lies inside ``BB`` (``MaxDistCP`` gives points outside it the 20 mm cut-off) and its
   voxel ``round((x - BB[0]) / Res)`` (MATLAB's 1-based index less one) is set.
4. **Cull the ground truth with the plane** (``ObsMask/Plane{scan}.mat``: ``P`` (4,)): only ground-truth
   points of ``Points/stl/stl{scan:03d}_total.ply`` with ``P . [x, 1] > 0`` (above the table) inside ``BB``
   count for completeness.
5. **Distances with the 20 mm outlier cut**: accuracy = mean distance from the culled sample points to
   the nearest ground-truth point, completeness = mean distance from the culled ground-truth points to
   the nearest (downsampled, uncut) sample point, each over the distances below 20 mm only
   (``ComputeStat_web``: ``Ddata(Ddata < MaxDist)``); Chamfer = their mean.

The official files are not shipped: DTU's "SampleSet" and "Points" downloads (``data/README.md``
says where and how to unpack them) hold ``ObsMask/`` and ``Points/stl/``. recon's meshes of DTU
scenes are already in DTU's world frame (millimetres): extraction maps them back with the scene's
scale matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from recon.errors import InputError

DENSITY_MM = 0.2
"""Sampling density and the downsampling radius of the protocol."""
MAX_DIST_MM = 20.0
"""Distances at or beyond this count as outliers and are left out of both means."""
MASK_MARGIN = 10
"""The margin in the observation mask's file name (``ObsMask{scan}_10.mat``), as the evaluation uses."""


@dataclass
class DtuReference:
    """The official ground truth of one DTU scan.

    Attributes:
        stl: (N, 3) the structured-light points, mm.
        obs_mask: (X, Y, Z) bool, voxel (i, j, k) centred at ``bb[0] + (i, j, k) * res``.
        bb: (2, 3) the mask's bounding box (min row, max row), mm.
        res: voxel size, mm.
        plane: (4,) the table plane; points with ``plane . [x, 1] > 0`` are above it.
    """

    stl: np.ndarray
    obs_mask: np.ndarray
    bb: np.ndarray
    res: float
    plane: np.ndarray


def reference_paths(dtu_dir: str | Path, scan: int) -> dict[str, Path]:
    """The three files of scan ``scan`` under ``dtu_dir`` (the folder holding ``ObsMask/`` and ``Points/``;
    DTU's unpacked ``SampleSet/MVS Data`` is accepted too)."""
    root = Path(dtu_dir)
    if not (root / "ObsMask").is_dir() and (root / "MVS Data" / "ObsMask").is_dir():
        root = root / "MVS Data"
    return {
        "stl": root / "Points" / "stl" / f"stl{scan:03d}_total.ply",
        "mask": root / "ObsMask" / f"ObsMask{scan}_{MASK_MARGIN}.mat",
        "plane": root / "ObsMask" / f"Plane{scan}.mat",
    }


def _read_mat(path: Path, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    if not path.is_file():
        raise InputError(path, "not found (DTU's official evaluation files: see data/README.md)")
    try:
        data = loadmat(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable .mat is one user-facing error
        raise InputError(path, f"not a readable MATLAB file ({type(err).__name__}: {err})") from None
    missing = [name for name in fields if name not in data]
    if missing:
        raise InputError(path, f"has no {', '.join(missing)} (holds {', '.join(k for k in data if not k.startswith('__'))})")
    return {name: np.asarray(data[name]) for name in fields}


def read_points(path: str | Path) -> np.ndarray:
    """(N, 3) float64 points of a PLY point cloud (or a mesh's vertices)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found (DTU's official evaluation files: see data/README.md)")
    try:
        cloud = trimesh.load(path, process=False)
    except Exception as err:  # noqa: BLE001
        raise InputError(path, f"not a readable point cloud ({type(err).__name__}: {err})") from None
    points = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise InputError(path, "holds no points")
    return points


def load_reference(dtu_dir: str | Path, scan: int) -> DtuReference:
    """Read scan ``scan``'s ground-truth points, observation mask and plane; a missing or malformed
    file is an ``InputError`` naming it."""
    paths = reference_paths(dtu_dir, scan)
    mask = _read_mat(paths["mask"], ("ObsMask", "BB", "Res"))
    plane = _read_mat(paths["plane"], ("P",))["P"].astype(np.float64).reshape(-1)
    obs, bb = mask["ObsMask"].astype(bool), mask["BB"].astype(np.float64)
    if obs.ndim != 3 or bb.shape != (2, 3) or mask["Res"].size != 1 or plane.shape != (4,):
        raise InputError(paths["mask"], f"expected ObsMask (X, Y, Z), BB (2, 3), Res (1,) and P (4,), got "
                         f"{obs.shape}, {bb.shape}, {mask['Res'].shape}, {plane.shape}")
    return DtuReference(read_points(paths["stl"]), obs, bb, float(mask["Res"].reshape(-1)[0]), plane)


# ----------------------------------------------------------------------------- the steps


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, density: float = DENSITY_MM) -> np.ndarray:
    """Step 1: the protocol's triangle sampling at ``density`` (mm) plus the vertices -> (N, 3)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    corners = vertices[np.asarray(faces, dtype=np.int64)]
    v1, v2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    l1, l2 = np.linalg.norm(v1, axis=1), np.linalg.norm(v2, axis=1)
    area2 = np.linalg.norm(np.cross(v1, v2), axis=1)
    keep = area2 > 0
    step = density * np.sqrt(l1[keep] * l2[keep] / area2[keep])
    n1, n2 = np.floor(l1[keep] / step).astype(np.int64), np.floor(l2[keep] / step).astype(np.int64)
    origin, v1, v2 = corners[keep, 0], v1[keep], v2[keep]
    pieces = [vertices]
    counts = np.stack([n1, n2], axis=1)
    for (a, b), members in _groups(counts):
        ab = _triangle_grid(a, b)
        if len(ab):
            pieces.append((origin[members, None] + ab[None, :, :1] * v1[members, None]
                           + ab[None, :, 1:] * v2[members, None]).reshape(-1, 3))
    return np.concatenate(pieces)


def _groups(counts: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
    """The rows of ``counts`` (F, 2) grouped by value: ((n1, n2), row indices)."""
    if len(counts) == 0:
        return []
    values, inverse = np.unique(counts, axis=0, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    bounds = np.cumsum(np.bincount(inverse.reshape(-1), minlength=len(values)))[:-1]
    return [((int(a), int(b)), rows) for (a, b), rows in zip(values, np.split(order, bounds))]


def _triangle_grid(n1: int, n2: int) -> np.ndarray:
    """(M, 2) the coefficients (a, b) = ((i + 1/2) / n1, (j + 1/2) / n2), i <= n1, j <= n2, with a + b < 1."""
    if n1 <= 0 or n2 <= 0:
        return np.zeros((0, 2))
    a, b = np.meshgrid((np.arange(n1 + 1) + 0.5) / n1, (np.arange(n2 + 1) + 0.5) / n2, indexing="ij")
    ab = np.stack([a.ravel(), b.ravel()], axis=1)
    return ab[ab.sum(axis=1) < 1.0]


def downsample(points: np.ndarray, radius: float = DENSITY_MM, seed: int = 0) -> np.ndarray:
    """Step 2: the points that the protocol's greedy thinning keeps (no two within ``radius``),
    visiting them in the random order of ``seed``; returns their indices, sorted."""
    from scipy.spatial import cKDTree

    n = len(points)
    rank = np.empty(n, dtype=np.int64)
    rank[np.random.default_rng(seed).permutation(n)] = np.arange(n)
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    undecided, kept = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    while undecided.any():
        live = undecided[src] & undecided[dst]
        src, dst = src[live], dst[live]
        earliest = np.full(n, n, dtype=np.int64)  # lowest rank among undecided neighbours
        np.minimum.at(earliest, src, rank[dst])
        new = undecided & (rank < earliest)
        kept |= new
        undecided &= ~new
        undecided[dst[new[src]]] = False
    return np.flatnonzero(kept)


def in_box(points: np.ndarray, bb: np.ndarray) -> np.ndarray:
    """(N,) whether each point lies in ``bb`` (2, 3), lower bound included (``MaxDistCP``'s test)."""
    return np.all((points >= bb[0]) & (points < bb[1]), axis=1)


def in_observation_mask(points: np.ndarray, ref: DtuReference) -> np.ndarray:
    """Step 3: (N,) whether each point lies in ``ref.bb`` and in a set voxel of ``ref.obs_mask``."""
    voxel = np.floor((points - ref.bb[0]) / ref.res + 0.5).astype(np.int64)  # MATLAB's round, 0-based
    inside = in_box(points, ref.bb) & np.all((voxel >= 0) & (voxel < np.array(ref.obs_mask.shape)), axis=1)
    out = np.zeros(len(points), dtype=bool)
    out[inside] = ref.obs_mask[voxel[inside, 0], voxel[inside, 1], voxel[inside, 2]]
    return out


def above_plane(points: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Step 4: (N,) whether ``plane . [x, 1] > 0``."""
    return points @ plane[:3] + plane[3] > 0


def _cut_mean(distances: np.ndarray, max_dist: float) -> tuple[float, float]:
    """Mean of the distances below ``max_dist`` (NaN when none) and the fraction at or above it."""
    inliers = distances < max_dist
    mean = float(distances[inliers].mean()) if inliers.any() else math.nan
    return mean, float(1.0 - inliers.mean()) if len(distances) else 0.0


def evaluate_points(points: np.ndarray, ref: DtuReference, seed: int = 0, max_dist: float = MAX_DIST_MM,
                    density: float = DENSITY_MM) -> dict[str, Any]:
    """Steps 2-5 on sampled points (N, 3) in DTU's world frame (mm)."""
    from recon.metrics import nearest_neighbors

    data = points[downsample(points, density, seed)]
    data_in = data[in_observation_mask(data, ref)]
    if len(data_in) == 0:
        raise InputError("mesh", "no point of it lies in the scan's observation mask: is it in DTU's world frame (mm)?")
    stl = ref.stl[above_plane(ref.stl, ref.plane) & in_box(ref.stl, ref.bb)]
    accuracy, acc_out = _cut_mean(nearest_neighbors(data_in, ref.stl)[0], max_dist)
    completeness, comp_out = _cut_mean(nearest_neighbors(stl, data)[0], max_dist)
    return {
        "accuracy_mm": accuracy, "completeness_mm": completeness, "chamfer_mm": 0.5 * (accuracy + completeness),
        "accuracy_outliers": acc_out, "completeness_outliers": comp_out,
        "n_sampled": len(points), "n_downsampled": len(data), "n_in_mask": len(data_in), "n_gt_above_plane": len(stl),
        "max_dist_mm": max_dist, "density_mm": density,
    }


def evaluate_dtu(path: str | Path, scan: int, dtu_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """DTU's protocol on a mesh file (sampled as step 1 says) or a point cloud (taken as it is)."""
    from recon.mesh import load_mesh

    ref = load_reference(dtu_dir, scan)
    try:
        mesh = load_mesh(path)
    except InputError as err:
        if "no triangles" not in err.problem:
            raise
        points = read_points(path)
    else:
        points = sample_mesh(mesh.vertices, mesh.faces)
    return {"scan": scan, **evaluate_points(points, ref, seed)}
