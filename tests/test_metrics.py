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
from recon.metrics import (
    Views,
    detail_region,
    format_metrics,
    mesh_metrics,
    nearest_neighbors,
    sample_surface,
    surface_variation,
    visible_points,
)
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


def test_without_open3d_the_distances_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without open3d (a GPU machine set up for fitting only): scipy's neighbours, the same
    Chamfer and F-score; the detail measure, which needs open3d, left out with ``detail=False``."""
    rng = np.random.default_rng(1)
    query, ref = rng.random((500, 3)), rng.random((700, 3))
    with_open3d = nearest_neighbors(query, ref)
    pred, gt = trimesh.creation.icosphere(subdivisions=3), trimesh.creation.icosphere(subdivisions=3, radius=1.02)
    full = mesh_metrics(pred, gt, n_points=5000)
    monkeypatch.setitem(sys.modules, "open3d", None)  # import open3d now raises ImportError
    without = nearest_neighbors(query, ref)
    np.testing.assert_allclose(without[0], with_open3d[0], rtol=1e-12)
    np.testing.assert_array_equal(without[1], with_open3d[1])
    plain = mesh_metrics(pred, gt, n_points=5000, detail=False)
    assert not any(key.startswith("detail") for key in plain)
    for key in ("chamfer_l1", "fscore@0.01", "normal_consistency"):
        assert plain[key] == pytest.approx(full[key], rel=1e-9)


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


# ----------------------------------------------------------------------------- culling


def _camera_looking_down(height: float = 2.0, size: int = 64, focal: float = 64.0) -> Views:
    """One camera at (0, 0, height) looking down -z; its image spans x, y in [-1, 1] at z = 0."""
    K = np.array([[focal, 0.0, (size - 1) / 2], [0.0, focal, (size - 1) / 2], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = np.diag([1.0, -1.0, -1.0])  # x right, y down (world -y), z forward (world -z)
    pose[:3, 3] = (0.0, 0.0, height)
    return Views(K[None], pose[None], size, size)


def test_visible_points_frustum_mask_and_occlusion() -> None:
    views = _camera_looking_down()
    floor = square(8.0)  # z = 0, far wider than the view
    pts = np.array([[0.0, 0.0, 0.0], [0.9, 0.9, 0.0], [1.2, 0.0, 0.0], [0.0, -3.0, 0.0], [0.0, 0.0, 2.5]])
    seen = visible_points(pts, views, floor, tol=1e-3)
    # centre and near corner in view; x = 1.2 and y = -3 outside the image; z = 2.5 behind the camera
    np.testing.assert_array_equal(seen, [True, True, False, False, False])
    # occlusion: a box above the origin hides the floor under it, not beside it
    box = trimesh.creation.box(extents=(0.4, 0.4, 0.4)).apply_translation((0.0, 0.0, 0.5))
    scene_mesh = trimesh.util.concatenate([floor, box])
    under = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.7], [0.0, 0.0, 0.3]])
    np.testing.assert_array_equal(visible_points(under, views, scene_mesh, tol=1e-3), [False, True, True, False])
    # a mask with only the left half of the image (x < 0) keeps only points there
    masked = Views(views.intrinsics, views.cam_to_world, 64, 64, masks=np.zeros((1, 64, 64), dtype=bool))
    masked.masks[0, :, :32] = True
    left_right = np.array([[-0.4, 0.2, 0.0], [0.4, 0.2, 0.0]])
    np.testing.assert_array_equal(visible_points(left_right, masked, floor, tol=1e-3), [True, False])


def test_culling_a_plane_half_outside_the_view() -> None:
    """GT: a 2 x 1 strip x in [0, 2]; the camera sees x in [-1, 1]: half of it is culled on both sides."""
    views = _camera_looking_down()
    verts = np.array([[0.0, -0.5, 0.0], [2.0, -0.5, 0.0], [2.0, 0.5, 0.0], [0.0, 0.5, 0.0]])
    gt = trimesh.Trimesh(verts, np.array([[0, 1, 2], [0, 2, 3]]), process=False)
    pred = gt.copy().apply_translation((0.0, 0.0, 0.05))
    m = mesh_metrics(pred, gt, n_points=40_000, views=views)
    # the GT (depth 2) is seen for x < 1; pred, 0.05 nearer the camera, for x < 0.975
    assert m["kept_gt"] == pytest.approx(0.5, abs=0.005) and m["kept_pred"] == pytest.approx(0.4875, abs=0.005)
    assert m["accuracy"] == pytest.approx(0.05, rel=0.02) and m["completeness"] == pytest.approx(0.05, rel=0.02)
    # a prediction covering only the seen half is complete once culled, and not without culling
    half = trimesh.Trimesh(verts * [0.5, 1, 1], np.array([[0, 1, 2], [0, 2, 3]]), process=False)
    assert mesh_metrics(half, gt, n_points=40_000, views=views)["recall@0.01"] > 0.99
    assert mesh_metrics(half, gt, n_points=40_000)["recall@0.01"] < 0.55


def test_views_from_scene_maps_cameras_to_world() -> None:
    from recon.datasets.scene import Scene

    views = _camera_looking_down()
    scale_mat = np.diag([2.0, 2.0, 2.0, 1.0])
    scale_mat[:3, 3] = (1.0, 2.0, 3.0)
    normalised = views.cam_to_world.copy()
    normalised[:, :3, 3] = (normalised[:, :3, 3] - scale_mat[:3, 3]) / 2.0
    scene = Scene(np.zeros((1, 64, 64, 3), np.uint8), views.intrinsics, normalised, scale_mat)
    np.testing.assert_allclose(Views.from_scene(scene).cam_to_world, views.cam_to_world, atol=1e-12)
    scale_mat[0, 1] = 0.5
    with pytest.raises(InputError, match="similarity"):
        Views.from_scene(Scene(scene.images, scene.intrinsics, normalised, scale_mat))


# ----------------------------------------------------------------------------- detail measure


def test_surface_variation_plane_sphere_and_crease() -> None:
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(-1, 1, (20_000, 2)), np.zeros(20_000)]
    assert surface_variation(plane, 0.1).max() < 1e-12
    sphere, _ = sample_surface(trimesh.creation.icosphere(subdivisions=6), 50_000, seed=0)
    # a cap of radius r on a unit sphere: sagitta variance over in-plane variance -> l0 / sum ~ r^2 / 24
    assert np.median(surface_variation(sphere, 0.1)) == pytest.approx(0.1**2 / 24, rel=0.15)
    crease = np.r_[plane[plane[:, 0] < 0], np.c_[plane[plane[:, 0] >= 0][:, 0], plane[plane[:, 0] >= 0][:, 1],
                                                   plane[plane[:, 0] >= 0][:, 0]]]  # folded 45 degrees at x = 0
    sv = surface_variation(crease, 0.1)
    near = np.abs(crease[:, 0]) < 0.02
    far = np.abs(crease[:, 0]) > 0.2
    assert sv[near].mean() > 20 * max(sv[far].mean(), 1e-6)


def test_detail_measure_separates_lost_detail_from_offset() -> None:
    """A sphere with fine rings: smoothing the rings away costs detail NC; a small shift costs little."""
    ico = trimesh.creation.icosphere(subdivisions=6)
    v = ico.vertices
    gt = trimesh.Trimesh(v * (1.0 + 0.01 * np.sin(40 * v[:, 2]))[:, None], ico.faces, process=False)
    smooth = trimesh.smoothing.filter_laplacian(gt.copy(), iterations=20)
    shifted = gt.copy().apply_translation((0.01, 0.0, 0.0))  # 0.29% of the diagonal
    m_same, m_smooth, m_shift = (mesh_metrics(m, gt, n_points=50_000) for m in (gt, smooth, shifted))
    floor = 1 - m_same["detail_normal_consistency"]
    assert floor < 0.01
    # Chamfer ranks the shift worse than the smoothing; the detail measure ranks it far better
    assert m_shift["chamfer_l1"] > m_smooth["chamfer_l1"]
    loss_smooth = 1 - m_smooth["detail_normal_consistency"] - floor
    loss_shift = 1 - m_shift["detail_normal_consistency"] - floor
    assert loss_smooth > 0.005 and loss_smooth > 10 * abs(loss_shift)


def test_detail_region_lies_along_the_creases() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    pts, _ = sample_surface(box, 60_000, seed=0)
    region = detail_region(pts, 0.03)
    # on a cube, the most curved tenth and its 0.03 neighbourhood lie along the edges
    dist_to_edge = np.sort(0.5 - np.abs(pts), axis=1)[:, 1]
    assert np.all(dist_to_edge[region] < 0.07)
    assert 0.15 < region.mean() < 0.45 and np.all(region[dist_to_edge < 0.01])


def test_cli_eval_with_culling(tiny_scene_dir, tmp_path, capsys) -> None:
    import json

    from recon.cli import main

    gt = tiny_scene_dir / "gt_mesh.ply"
    out = tmp_path / "m.json"
    args = ["eval", str(gt), "--gt", str(gt), "--cull-to", str(tiny_scene_dir), "--json", str(out), "--points", "10000"]
    assert main(args) == 0
    m = json.loads(out.read_text())
    assert 0.5 < m["kept_gt"] <= 1.0 and m["fscore@0.02"] > 0.99 and "detail_normal_consistency" in m
    capsys.readouterr()
    assert main(["eval", str(gt), "--gt", str(gt), "--detail-radius", "2"]) == 2
    assert "--detail-radius" in capsys.readouterr().err
