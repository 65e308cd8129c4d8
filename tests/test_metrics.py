"""Mesh metrics against hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from recon.errors import InputError
from recon.metrics import format_metrics, mesh_metrics, nearest_neighbors, sample_surface
from recon.mesh import empty_mesh


def square(side: float = 2.0) -> trimesh.Trimesh:
    """Square in the z = 0 plane centred at the origin, two triangles, normal +z."""
    h = side / 2
    verts = np.array([[-h, -h, 0.0], [h, -h, 0.0], [h, h, 0.0], [-h, h, 0.0]])
    return trimesh.Trimesh(verts, np.array([[0, 1, 2], [0, 2, 3]]), process=False)


def test_import_does_not_load_open3d() -> None:
    code = "import sys, recon.metrics, recon.mesh; assert 'open3d' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sample_surface_is_seeded_and_on_the_mesh() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=3)
    pts, nrm = sample_surface(mesh, 1000, seed=3)
    again, _ = sample_surface(mesh, 1000, seed=3)
    assert pts.shape == nrm.shape == (1000, 3)
    np.testing.assert_array_equal(pts, again)
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-9)
    assert np.all(np.linalg.norm(pts, axis=1) <= 1.0 + 1e-9)
    assert np.all(np.einsum("ij,ij->i", pts, nrm) > 0)  # face normals point outwards
    empty_pts, empty_nrm = sample_surface(empty_mesh(), 10, seed=0)
    assert empty_pts.shape == empty_nrm.shape == (0, 3)


def test_nearest_neighbors_matches_kdtree() -> None:
    rng = np.random.default_rng(0)
    query, ref = rng.random((2000, 3)), rng.random((3000, 3))
    dist, idx = nearest_neighbors(query, ref)
    ref_dist, ref_idx = cKDTree(ref).query(query)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12)
    np.testing.assert_array_equal(idx, ref_idx)


def test_identical_meshes() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=4)
    m = mesh_metrics(mesh, mesh, n_points=50_000)
    # independent samples on the same surface: nearest-sample spacing ~ 0.5 / sqrt(density) ~ 0.008
    assert m["chamfer_l1"] < 0.012 and m["chamfer_l1_rel"] < 0.0035
    assert m["fscore@0.01"] == 1.0 and m["precision@0.02"] == 1.0 and m["recall@0.02"] == 1.0
    assert m["normal_consistency"] > 0.995
    assert m["gt_diagonal"] == pytest.approx(2 * math.sqrt(3), rel=0.01)


def test_concentric_spheres() -> None:
    inner = trimesh.creation.icosphere(subdivisions=5)
    outer = inner.copy().apply_scale(1.05)
    m = mesh_metrics(outer, inner, n_points=100_000)
    assert m["accuracy"] == pytest.approx(0.05, rel=0.03)
    assert m["completeness"] == pytest.approx(0.05, rel=0.03)
    # tau@0.01 = 0.035 < 0.05 < tau@0.02 = 0.069
    assert m["fscore@0.01"] == 0.0 and m["fscore@0.02"] == 1.0


def test_translated_planes() -> None:
    gt = square(2.0)
    pred = square(2.0).apply_translation((0.0, 0.0, 0.05))
    m = mesh_metrics(pred, gt, n_points=50_000)
    assert m["accuracy"] == pytest.approx(0.05, rel=0.02)
    assert m["completeness"] == pytest.approx(0.05, rel=0.02)
    assert m["normal_consistency"] == pytest.approx(1.0)
    assert m["gt_diagonal"] == pytest.approx(math.sqrt(8))


def test_translated_thin_box() -> None:
    """Box 2 x 2 x 0.2 moved 0.05 along z; exact mean distance (each direction) is 0.4 / 9.6.

    Over the surface area 9.6: the far face (area 4) is 0.05 away; the face
    inside the other box (area 4) is 0.05 away except a 0.05 strip along its
    edges (area 0.4) nearer a side, at mean 0.025; the sides (area 1.6) overlap
    for 3/4 of their height and are at mean 0.025 for the rest:
    4 * 0.05 + 3.6 * 0.05 + 0.4 * 0.025 + 1.6 * 0.25 * 0.025 = 0.4.
    """
    gt = trimesh.creation.box(extents=(2.0, 2.0, 0.2))
    pred = gt.copy().apply_translation((0.0, 0.0, 0.05))
    m = mesh_metrics(pred, gt, n_points=200_000)
    expected = 0.4 / 9.6
    assert m["accuracy"] == pytest.approx(expected, rel=0.03)
    assert m["completeness"] == pytest.approx(expected, rel=0.03)
    assert m["chamfer_l1"] == pytest.approx(expected, rel=0.03)
    # within tau = 1% of the diagonal (0.0284): the 0.0284 edge strip (area 0.227) and
    # 3/4 + 1/4 * 0.0284 / 0.05 of the sides (area 1.427), out of 9.6 -> 0.172
    assert m["precision@0.01"] == pytest.approx(0.172, abs=0.01)
    assert m["precision@0.02"] == pytest.approx(1.0, abs=1e-3)
    diag = math.sqrt(2.0**2 + 2.0**2 + 0.2**2)
    assert m["gt_diagonal"] == pytest.approx(diag)
    assert m["tau@0.01"] == pytest.approx(0.01 * diag)
    for key in ("accuracy", "completeness", "chamfer_l1"):
        assert m[f"{key}_rel"] == pytest.approx(m[key] / diag)


def test_normal_consistency_of_tilted_plane() -> None:
    """Every normal pair between planes 60 degrees apart has |cos| = 0.5, whatever the neighbour."""
    gt = square(2.0)
    pred = square(2.0).apply_transform(trimesh.transformations.rotation_matrix(math.pi / 3, [1, 0, 0]))
    m = mesh_metrics(pred, gt, n_points=10_000)
    assert m["normal_consistency"] == pytest.approx(0.5, abs=1e-9)


def test_fscore_is_harmonic_mean() -> None:
    gt = trimesh.creation.icosphere(subdivisions=3)
    half = gt.copy()
    half.update_faces(half.triangles_center[:, 2] > 0)  # upper half only: precise but incomplete
    m = mesh_metrics(half, gt, n_points=20_000)
    p, r = m["precision@0.02"], m["recall@0.02"]
    assert p == pytest.approx(1.0) and 0.4 < r < 0.65
    assert m["fscore@0.02"] == pytest.approx(2 * p * r / (p + r))


def test_empty_prediction_and_empty_gt() -> None:
    gt = trimesh.creation.icosphere(subdivisions=2)
    m = mesh_metrics(empty_mesh(), gt)
    assert math.isinf(m["accuracy"]) and math.isinf(m["completeness"]) and math.isinf(m["chamfer_l1_rel"])
    assert m["fscore@0.01"] == 0.0 and m["precision@0.0025"] == 0.0
    assert "inf" in format_metrics(m)
    with pytest.raises(InputError, match="ground-truth"):
        mesh_metrics(gt, empty_mesh())


def test_format_metrics() -> None:
    gt = square(2.0)
    pred = square(2.0).apply_translation((0.0, 0.0, 0.05))
    line = format_metrics(mesh_metrics(pred, gt, n_points=5_000))
    assert line.startswith("Chamfer-L1 0.05")
    assert "% of diag" in line and "F-score@1% 0.0" in line and "\n" not in line
