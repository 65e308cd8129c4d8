"""DTU's official evaluation on constructed cases with known answers, and its readers on files written
here in the official formats (the official files are not in the repository)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.io import savemat
from scipy.spatial import cKDTree

from recon.dtu_eval import (DtuReference, downsample, evaluate_dtu, evaluate_points, in_observation_mask,
                            load_reference, reference_paths, sample_mesh)
from recon.errors import InputError

SCAN = 24
BB = np.array([[-5.0, -5.0, -30.0], [25.0, 25.0, 30.0]])


def plane_points(z: float = 0.0, size: float = 20.0, spacing: float = 0.2) -> np.ndarray:
    """A grid of points on the square [0, size]^2 at height z."""
    axis = np.arange(0.0, size + 1e-9, spacing)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)


def square(z: float, lo: float = 0.0, hi: float = 20.0) -> trimesh.Trimesh:
    """Two triangles covering [lo, hi]^2 at height z."""
    v = [[lo, lo, z], [hi, lo, z], [hi, hi, z], [lo, hi, z]]
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)


def full_mask(res: float = 1.0) -> np.ndarray:
    shape = np.floor((BB[1] - BB[0]) / res).astype(int) + 1
    return np.ones(shape, dtype=bool)


def reference(stl: np.ndarray, mask: np.ndarray | None = None, plane=(0.0, 0.0, 1.0, 30.0)) -> DtuReference:
    return DtuReference(stl, full_mask() if mask is None else mask, BB, 1.0, np.asarray(plane, dtype=float))


def write_dtu_files(root: Path, ref: DtuReference, scan: int = SCAN) -> Path:
    """The three official files of ``scan`` in DTU's formats: MATLAB .mat files and a binary PLY."""
    paths = reference_paths(root, scan)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    savemat(paths["mask"], {"ObsMask": ref.obs_mask.astype(np.uint8), "BB": ref.bb, "Res": np.array([[ref.res]])})
    savemat(paths["plane"], {"P": ref.plane.reshape(4, 1)})
    trimesh.PointCloud(ref.stl).export(paths["stl"], encoding="binary")
    assert paths["stl"].read_bytes().startswith(b"ply\nformat binary_little_endian")
    return root


def test_sample_mesh_hand_counted():
    # legs of 1 mm, right angle: step 0.2 sqrt(1 * 1 / 1) = 0.2, n1 = n2 = 5, coefficients (i + .5) / 5:
    # a + b < 1 holds for 4 + 3 + 2 + 1 + 0 of them; plus the three vertices
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    points = sample_mesh(tri.vertices, tri.faces)
    assert len(points) == 3 + 10
    inner = points[3:]
    np.testing.assert_allclose(sorted(inner[:, 0])[:4], [0.1] * 4)
    assert np.all(inner.sum(axis=1) < 1) and np.all(inner[:, 2] == 0)
    # a degenerate triangle adds its vertices only
    flat = sample_mesh(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0.0]]), np.array([[0, 1, 2]]))
    assert len(flat) == 3


def test_sample_mesh_density_on_a_large_square():
    points = sample_mesh(square(0.0).vertices, square(0.0).faces)
    # every spot of the square has a sample within 0.2 mm (the protocol's density)
    probe = np.random.default_rng(0).random((2000, 2)) * 20
    d, _ = cKDTree(points[:, :2]).query(probe)
    assert d.max() < 0.2


def test_downsample_equals_the_sequential_loop():
    rng = np.random.default_rng(3)
    points = rng.random((3000, 3)) * [4.0, 4.0, 0.5]
    kept = downsample(points, 0.2, seed=7)
    tree = cKDTree(points)
    keep = np.ones(len(points), dtype=bool)
    for current in np.random.default_rng(7).permutation(len(points)):  # reducePts_haa, verbatim in spirit
        if keep[current]:
            keep[tree.query_ball_point(points[current], 0.2)] = False
            keep[current] = True
    np.testing.assert_array_equal(kept, np.flatnonzero(keep))
    assert cKDTree(points[kept]).query(points[kept], k=2)[0][:, 1].min() > 0.2
    assert tree.query(points)[0].max() == 0 and cKDTree(points[kept]).query(points)[0].max() <= 0.2


@pytest.mark.parametrize("shift", [2.0, 5.0])
def test_plane_against_a_shifted_plane(shift: float):
    out = evaluate_points(sample_mesh(square(shift).vertices, square(shift).faces), reference(plane_points()))
    assert out["accuracy_mm"] == pytest.approx(shift, abs=0.01)
    assert out["completeness_mm"] == pytest.approx(shift, abs=0.03)
    assert out["chamfer_mm"] == pytest.approx(shift, abs=0.02)
    assert out["accuracy_outliers"] == 0 and out["completeness_outliers"] == 0


def test_plane_beyond_the_outlier_cut():
    out = evaluate_points(sample_mesh(square(25.0).vertices, square(25.0).faces), reference(plane_points()))
    assert math.isnan(out["accuracy_mm"]) and math.isnan(out["completeness_mm"])
    assert out["accuracy_outliers"] == 1 and out["completeness_outliers"] == 1


def test_outliers_are_left_out_of_the_mean():
    near, far = square(2.0), square(24.0, lo=0.0, hi=4.0)  # a 4 mm patch 24 mm above the plane
    points = np.concatenate([sample_mesh(near.vertices, near.faces), sample_mesh(far.vertices, far.faces)])
    out = evaluate_points(points, reference(plane_points()))
    assert out["accuracy_mm"] == pytest.approx(2.0, abs=0.01)  # with the patch counted it would be ~2.9
    assert out["accuracy_outliers"] == pytest.approx(16 / (400 + 16), abs=0.01)  # by area
    assert out["completeness_mm"] == pytest.approx(2.0, abs=0.03)


def test_observation_mask_culls_accuracy_not_completeness():
    mask = full_mask()
    mask[: 15] = False  # voxels x < 10 mm (x = -5 + i)
    low, high = square(5.0, 0.0, 20.0), square(1.0, 0.0, 20.0)
    points = np.concatenate([sample_mesh(low.vertices, low.faces), sample_mesh(high.vertices, high.faces)])
    points = points[(points[:, 2] == 5.0) & (points[:, 0] < 9.4) | (points[:, 2] == 1.0) & (points[:, 0] > 10.6)]
    out = evaluate_points(points, reference(plane_points(), mask))
    assert out["accuracy_mm"] == pytest.approx(1.0, abs=0.01)  # the z = 5 half lies outside the mask
    # completeness sees every sample point: a GT point at x is 5 mm below the low part or 1 mm below the
    # high part, or reaches the nearer one's edge across the gap
    x = plane_points()[:, 0]
    to_low = np.where(x <= 9.4, 5.0, np.hypot(x - 9.4, 5.0))
    to_high = np.where(x >= 10.6, 1.0, np.hypot(10.6 - x, 1.0))
    assert out["completeness_mm"] == pytest.approx(np.minimum(to_low, to_high).mean(), abs=0.03)
    ref = reference(plane_points(), mask)
    probes = np.array([[9.4, 3, 0], [9.6, 3, 0], [-5.6, 0, 0], [24.9, 0, 0], [25.0, 0, 0]])
    # round((x - BB0) / Res): 14.4 -> 14 (unset), 14.6 -> 15 (set); outside BB: never
    np.testing.assert_array_equal(in_observation_mask(probes, ref), [False, True, False, True, False])


def test_plane_culls_ground_truth_below_the_table():
    stl = np.concatenate([plane_points(0.0), plane_points(-10.0)])
    pred = square(0.5)
    kept = evaluate_points(sample_mesh(pred.vertices, pred.faces), reference(stl, plane=(0, 0, 1, 5.0)))
    assert kept["n_gt_above_plane"] == len(plane_points()) and kept["completeness_mm"] == pytest.approx(0.5, abs=0.03)
    everything = evaluate_points(sample_mesh(pred.vertices, pred.faces), reference(stl, plane=(0, 0, 1, 50.0)))
    assert everything["completeness_mm"] == pytest.approx((0.5 + 10.5) / 2, abs=0.05)


def test_sphere_against_a_slightly_larger_sphere():
    n = 120_000  # ~0.2 mm apart on a 20 mm sphere
    k = np.arange(n) + 0.5
    theta, phi = np.arccos(1 - 2 * k / n), np.pi * (1 + 5**0.5) * k
    gt = 20.0 * np.stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)], axis=1) + 10.0
    pred = trimesh.creation.icosphere(subdivisions=5, radius=20.5)
    pred.apply_translation([10.0, 10.0, 10.0])
    mask = np.ones((60, 60, 60), dtype=bool)
    ref = DtuReference(gt, mask, np.array([[-20.0, -20.0, -20.0], [40.0, 40.0, 40.0]]), 1.0, np.array([0, 0, 1, 100.0]))
    out = evaluate_points(sample_mesh(pred.vertices, pred.faces), ref)
    assert out["accuracy_mm"] == pytest.approx(0.5, abs=0.01)
    assert out["completeness_mm"] == pytest.approx(0.5, abs=0.01)


def test_readers_round_trip_the_official_formats(tmp_path: Path):
    mask = full_mask()
    mask[3, 4, 5] = False
    ref = reference(plane_points(), mask, plane=(0.1, -0.2, 0.97, 12.5))
    write_dtu_files(tmp_path / "MVS Data", ref)
    back = load_reference(tmp_path, SCAN)  # DTU's unpacked SampleSet/MVS Data is found from its parent
    np.testing.assert_allclose(back.stl, ref.stl, atol=1e-5)
    np.testing.assert_array_equal(back.obs_mask, ref.obs_mask)
    np.testing.assert_array_equal(back.bb, ref.bb)
    assert back.res == 1.0 and back.obs_mask.dtype == bool
    np.testing.assert_allclose(back.plane, ref.plane)
    with pytest.raises(InputError, match="ObsMask25_10.mat: not found"):
        load_reference(tmp_path, 25)
    savemat(reference_paths(tmp_path / "MVS Data", SCAN)["plane"], {"Q": np.zeros((4, 1))})
    with pytest.raises(InputError, match="has no P"):
        load_reference(tmp_path, SCAN)


def test_mesh_and_point_cloud_files(tmp_path: Path):
    root = write_dtu_files(tmp_path / "dtu", reference(plane_points()))
    mesh_path = tmp_path / "pred.ply"
    square(3.0).export(mesh_path)
    from_mesh = evaluate_dtu(mesh_path, SCAN, root)
    assert from_mesh["scan"] == SCAN and from_mesh["chamfer_mm"] == pytest.approx(3.0, abs=0.02)
    cloud_path = tmp_path / "cloud.ply"
    trimesh.PointCloud(plane_points(3.0, spacing=0.1)).export(cloud_path)
    from_cloud = evaluate_dtu(cloud_path, SCAN, root)
    assert from_cloud["n_sampled"] == len(plane_points(3.0, spacing=0.1))  # taken as it is, not resampled
    assert from_cloud["chamfer_mm"] == pytest.approx(3.0, abs=0.02)
    far = tmp_path / "far.ply"
    square(3.0).apply_translation([500.0, 0.0, 0.0]).export(far)
    with pytest.raises(InputError, match="observation mask"):
        evaluate_dtu(far, SCAN, root)


def test_cli_dtu_eval(tmp_path: Path, capsys: pytest.CaptureFixture):
    from recon.cli import main

    root = write_dtu_files(tmp_path / "dtu", reference(plane_points()))
    mesh_path = tmp_path / "pred.obj"
    square(2.0).export(mesh_path)

    def recon(*args) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's own errors and --help
            code = int(exit_.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = recon("eval", mesh_path, "--dtu-scan", SCAN, "--dtu-dir", root, "--json", tmp_path / "dtu.json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["chamfer_mm"] == pytest.approx(2.0, abs=0.02)
    assert json.loads((tmp_path / "dtu.json").read_text()) == printed
    for args in ([], ["--gt", mesh_path, "--dtu-scan", SCAN, "--dtu-dir", root], ["--dtu-scan", SCAN]):
        code, _, err = recon("eval", mesh_path, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "DTU" in recon("eval", "--help")[1]
