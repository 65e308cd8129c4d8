"""Marching-cubes extraction: analytic shapes, orientation, world mapping, coarse-to-fine, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from recon.errors import InputError
from recon.mesh import extract_mesh, keep_largest_component, save_mesh


def sphere_sdf(radius: float = 0.5, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)):
    c = torch.tensor(centre)

    def sdf(p: torch.Tensor) -> torch.Tensor:
        return (p - c).norm(dim=1) - radius

    return sdf


def sphere_torus_sdf(p: torch.Tensor) -> torch.Tensor:
    """Sphere r 0.5 united with a torus (R 0.6, r 0.15, axis y, centred at y 0.3)."""
    ring = torch.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - 0.6
    torus = torch.sqrt(ring**2 + (p[:, 1] - 0.3) ** 2) - 0.15
    return torch.minimum(p.norm(dim=1) - 0.5, torus)


def wavy_field(p: torch.Tensor) -> torch.Tensor:
    """Not a distance: a scaled, rippled quadric (|gradient| ~2 at the surface, ~6 at the box corners)."""
    ripple = 0.04 * torch.sin(12 * p[:, 0]) * torch.sin(9 * p[:, 1])
    return 1.5 * (p[:, 0] ** 2 + 0.7 * p[:, 1] ** 2 + 1.3 * p[:, 2] ** 2 - 0.3) + ripple


def tiny_blobs(p: torch.Tensor) -> torch.Tensor:
    """Spheres (r 0.03) inside single coarse cells at resolution 81, scaled by 3 (not a distance).

    No coarse corner changes sign: only the margin test can find them.
    """
    centres = torch.tensor([[0.05, 0.05, 0.05], [-0.35, 0.25, 0.55], [0.65, -0.45, -0.85]])
    return 3.0 * ((p[:, None, :] - centres).norm(dim=2).min(dim=1).values - 0.03)


def dense_reference(fn, resolution: int) -> trimesh.Trimesh:
    """One skimage pass over the whole grid on [-1, 1]^3, welded and cleaned."""
    g = np.linspace(-1.0, 1.0, resolution)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    vol = fn(torch.from_numpy(pts).float()).numpy().reshape((resolution,) * 3)
    verts, faces, _, _ = marching_cubes(vol, 0.0, spacing=(g[1] - g[0],) * 3)
    mesh = trimesh.Trimesh(verts - 1.0, faces)  # process=True merges duplicate vertices
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    return mesh


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    return max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max())


def test_sphere_radius_volume_orientation() -> None:
    mesh = extract_mesh(sphere_sdf(0.5), 64)
    cell = 2.0 / 63
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - 0.5).max() < 0.5 * cell
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.02)
    # outward: every face normal points away from the centre
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center)
    assert (outward > 0).all()


def test_scale_mat_maps_to_world() -> None:
    scale_mat = np.diag([10.0, 10.0, 10.0, 1.0])
    scale_mat[:3, 3] = [3.0, -2.0, 7.0]
    mesh = extract_mesh(sphere_sdf(0.5, (0.1, 0.0, -0.2)), 48, scale_mat=scale_mat)
    centre = np.array([3.0 + 1.0, -2.0, 7.0 - 2.0])
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert np.abs(radii - 5.0).max() < 0.5 * 10 * 2.0 / 47
    assert mesh.volume > 0


def test_reflecting_scale_mat_keeps_outward_normals() -> None:
    scale_mat = np.diag([-2.0, 2.0, 2.0, 1.0])
    mesh = extract_mesh(sphere_sdf(0.5), 32, scale_mat=scale_mat)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 1.0**3, rel=0.05)


@pytest.mark.parametrize(
    "fn", [sphere_torus_sdf, wavy_field, tiny_blobs], ids=["sphere_torus", "non_metric", "sub_coarse_blobs"]
)
def test_coarse_to_fine_equals_dense(fn) -> None:
    res = 81  # 80 cells: blocks of 32 leave a partial last block; the coarse grid divides evenly
    fast = extract_mesh(fn, res, block_size=32)
    dense = extract_mesh(fn, res, block_size=32, coarse_to_fine=False)
    reference = dense_reference(fn, res)
    assert len(fast.vertices) == len(dense.vertices) == len(reference.vertices)
    assert len(fast.faces) == len(dense.faces) == len(reference.faces)
    assert hausdorff(fast.vertices, reference.vertices) < 1e-5
    assert fast.is_watertight


def test_coarse_to_fine_evaluates_fewer_points_in_bounded_chunks() -> None:
    counted, grad_modes = [], set()

    def counting(p: torch.Tensor) -> torch.Tensor:
        counted.append(len(p))
        grad_modes.add(torch.is_grad_enabled())
        assert p.dtype == torch.float32 and p.shape[1] == 3
        return sphere_torus_sdf(p)

    mesh = extract_mesh(counting, 130, block_size=32, progress=True)  # 129 cells: a short last coarse cell
    assert len(mesh.faces) > 0
    assert sum(counted) < 0.5 * 130**3
    assert max(counted) <= 33**3
    assert grad_modes == {False}


def test_block_size_does_not_change_result() -> None:
    a = extract_mesh(sphere_torus_sdf, 50, block_size=7)
    b = extract_mesh(sphere_torus_sdf, 50, block_size=64)
    assert len(a.vertices) == len(b.vertices) and len(a.faces) == len(b.faces)
    assert hausdorff(a.vertices, b.vertices) < 1e-6


def test_level_and_bbox() -> None:
    mesh = extract_mesh(sphere_sdf(0.5), 40, bbox_min=(-0.8, -0.8, -0.8), bbox_max=(0.8, 0.8, 0.8), level=0.1)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - 0.6).max() < 0.5 * 1.6 / 39


def test_no_crossing_gives_empty_mesh() -> None:
    mesh = extract_mesh(lambda p: p.norm(dim=1) + 1.0, 32)
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0
    mesh = extract_mesh(lambda p: -torch.ones(len(p)), 32, coarse_to_fine=False)
    assert len(mesh.faces) == 0


def test_accepts_column_output_and_rejects_bad_shape() -> None:
    mesh = extract_mesh(lambda p: sphere_sdf()(p)[:, None], 24)
    assert len(mesh.faces) > 0
    with pytest.raises(ValueError, match="shape"):
        extract_mesh(lambda p: torch.zeros(len(p), 2), 24)


def test_largest_component() -> None:
    def two_spheres(p: torch.Tensor) -> torch.Tensor:
        big = (p - torch.tensor([-0.4, 0.0, 0.0])).norm(dim=1) - 0.4
        small = (p - torch.tensor([0.6, 0.0, 0.0])).norm(dim=1) - 0.2
        return torch.minimum(big, small)

    both = extract_mesh(two_spheres, 48)
    assert len(both.split(only_watertight=False)) == 2
    big = extract_mesh(two_spheres, 48, largest_component=True)
    assert np.all(big.vertices[:, 0] < 0.05)
    assert len(keep_largest_component(big).faces) == len(big.faces)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_save_mesh_round_trip(tmp_path, suffix: str) -> None:
    mesh = extract_mesh(sphere_sdf(), 24)
    path = save_mesh(mesh, tmp_path / "sub" / f"mesh{suffix}")
    assert sorted(p.name for p in path.parent.iterdir()) == [f"mesh{suffix}"]  # no temp files left
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == len(mesh.faces)
    assert loaded.volume == pytest.approx(mesh.volume, rel=1e-4)


def test_save_mesh_empty_and_bad_suffix(tmp_path) -> None:
    save_mesh(extract_mesh(lambda p: torch.ones(len(p)), 8), tmp_path / "empty.ply")
    assert (tmp_path / "empty.ply").exists()
    with pytest.raises(InputError, match="mesh.stl"):
        save_mesh(extract_mesh(sphere_sdf(), 16), tmp_path / "mesh.stl")
    assert list(tmp_path.iterdir()) == [tmp_path / "empty.ply"]
