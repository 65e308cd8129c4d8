"""Which detail measure separates fine detail from overall shape? (docs/DECISIONS.md)

Candidates, on a GT mesh against (a) itself, (b) Laplacian-smoothed copies (trimesh, lambda 0.5) (detail
removed, shape kept), (c) a copy shifted by 0.5% of the diagonal, (d) a copy
scaled by 1%:
  A  Chamfer and 1 - normal consistency restricted to the GT's detail region
     (recon.metrics.detail_region: near the top 10% by PCA surface variation at radius r);
  B  the high-pass height error at radius r (high_pass_heights below).
A good measure penalises (b) much more than the overall Chamfer does, and (c)/(d) little.

    .venv/bin/python benchmarks/bench_detail_measure.py [MESH ...]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import trimesh

from recon.datasets.synthetic import make_default_object
from recon.metrics import mesh_metrics, nearest_neighbors, sample_surface

N = 100_000
R_RELS = (0.01,)


def high_pass_heights(points: np.ndarray, normals: np.ndarray, radius: float) -> np.ndarray:
    """Candidate B: each sample's signed height above the least-squares plane of its neighbours within ``radius``."""
    import open3d as o3d

    nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(points))
    nns.hybrid_index(radius)
    heights = np.zeros(len(points))
    for start in range(0, len(points), 20_000):
        chunk = slice(start, start + 20_000)
        idx, _, _ = nns.hybrid_search(o3d.core.Tensor(points[chunk]), radius, 96)
        idx = idx.numpy().astype(np.int64)
        valid = idx >= 0
        nb, w = points[np.where(valid, idx, 0)], valid[..., None].astype(np.float64)
        count = np.maximum(w.sum(axis=1), 1.0)
        centroid = (nb * w).sum(axis=1) / count
        centred = (nb - centroid[:, None]) * w
        axis = np.linalg.eigh(np.einsum("nki,nkj->nij", centred, centred))[1][:, :, 0]
        axis *= np.sign(np.einsum("ij,ij->i", axis, normals[chunk]) + 1e-12)[:, None]
        heights[chunk] = np.where(valid.sum(1) >= 4, np.einsum("ij,ij->i", points[chunk] - centroid, axis), 0.0)
    return heights


def measures(pred: trimesh.Trimesh, gt: trimesh.Trimesh, r_rel: float) -> dict[str, float]:
    m = mesh_metrics(pred, gt, n_points=N, detail_radius_rel=r_rel)
    out = {"chamfer%": 100 * m["chamfer_l1_rel"], "A_chamfer%": 100 * m["detail_chamfer_l1_rel"],
           "A_1-NC": 1 - m["detail_normal_consistency"], "1-NC": 1 - m["normal_consistency"]}
    diag = m["gt_diagonal"]
    p, pn = sample_surface(pred, N, 0)
    g, gn = sample_surface(gt, N, 1)
    _, i_p = nearest_neighbors(p, g)
    _, i_g = nearest_neighbors(g, p)
    hp, hg = high_pass_heights(p, pn, r_rel * diag), high_pass_heights(g, gn, r_rel * diag)
    out["B_detail%"] = 50 * (np.abs(hp - hg[i_p]).mean() + np.abs(hg - hp[i_g]).mean()) / diag
    return out


def main(paths: list[str]) -> None:
    meshes = {"default object": make_default_object(256)}
    meshes.update({path.rsplit("/", 1)[-1]: trimesh.load(path, force="mesh") for path in paths})
    for name, gt in meshes.items():
        diag = float(np.linalg.norm(gt.extents))
        copies = {
            "itself": gt,
            "Laplacian x10": trimesh.smoothing.filter_laplacian(gt.copy(), iterations=10),
            "Laplacian x40": trimesh.smoothing.filter_laplacian(gt.copy(), iterations=40),
            "shift 0.5%": gt.copy().apply_translation([0.005 * diag / np.sqrt(3)] * 3),
            "scale 1.01": gt.copy().apply_scale(1.01),
        }
        for r_rel in R_RELS:
            print(f"\n{name}, r = {r_rel:g} x diag")
            print("| copy | Chamfer % | 1 - NC | A: detail Chamfer % | A: 1 - detail NC | B: high-pass % |")
            for copy_name, copy in copies.items():
                start = time.perf_counter()
                m = measures(copy, gt, r_rel)
                print(f"| {copy_name} | {m['chamfer%']:.4f} | {m['1-NC']:.4f} | {m['A_chamfer%']:.4f} | {m['A_1-NC']:.4f} | "
                      f"{m['B_detail%']:.4f} | ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
