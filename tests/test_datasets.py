"""Datasets: camera maths, the synthetic generator, the DTU loader and its input checks."""

from __future__ import annotations

import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from scipy.ndimage import binary_dilation

from conftest import assert_refused
from recon.datasets import Scene, load_scene, synthesize
from recon.datasets.cameras import (
    decompose_projection,
    look_at,
    pixel_grid,
    pixel_rays_unit_z,
    project_points,
    projection_from,
)
from recon.datasets.dtu import load_dtu
from recon.datasets.synthetic import DEFAULT_WORLD_SCALE, default_scale_mat, make_default_object
from recon.errors import InputError

DTU_SCAN24 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dtu_scan24_neus"


@pytest.fixture(scope="module")
def tiny_scene(tiny_scene_dir: Path) -> Scene:
    return load_dtu(tiny_scene_dir)


@pytest.fixture()
def scene_copy(tiny_scene_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny scene to corrupt."""
    return Path(shutil.copytree(tiny_scene_dir, tmp_path / "scene"))


def _to_normalised(scene: Scene, points_world: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(scene.scale_mat)
    return points_world @ inv[:3, :3].T + inv[:3, 3]


def _assert_inside_masks(masks: np.ndarray, uv: np.ndarray, depth: np.ndarray) -> None:
    """Every projected point lies in front of the camera and on the mask (grown by one pixel)."""
    h, w = masks.shape
    assert np.all(depth > 0)
    pix = np.rint(uv).astype(int)
    assert pix[:, 0].min() >= 0 and pix[:, 0].max() < w and pix[:, 1].min() >= 0 and pix[:, 1].max() < h
    grown = binary_dilation(masks, np.ones((3, 3), bool))
    assert grown[pix[:, 1], pix[:, 0]].all()


def _ray_hits(origin: np.ndarray, direction: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Ray parameters of all hits of one ray with (F, 3, 3) triangles (Moller-Trumbore, brute force)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    e1, e2 = b - a, c - a
    p = np.cross(direction, e2)
    det = np.einsum("fk,fk->f", e1, p)
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - a
    u = np.einsum("fk,fk->f", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    t = np.einsum("fk,fk->f", e2, q) * inv
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    return t[hit]


# ----------------------------------------------------------------------------- cameras


@pytest.mark.parametrize("overall_scale", [1.0, 3.7, -0.02])
def test_decompose_projection_recovers_known_camera(overall_scale: float) -> None:
    K = np.array([[512.0, 1.5, 300.25], [0.0, 498.0, 241.75], [0.0, 0.0, 1.0]])
    pose = look_at(np.array([1.3, -2.2, 0.7]), np.array([0.1, 0.2, -0.1]), np.array([0.0, 0.0, 1.0]))
    P = overall_scale * projection_from(K, pose)
    K_out, pose_out = decompose_projection(P)
    np.testing.assert_allclose(K_out, K, atol=1e-9 * 512)
    np.testing.assert_allclose(pose_out, pose, atol=1e-10)
    assert np.linalg.det(pose_out[:3, :3]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "bad", [np.zeros((3, 4)), np.full((3, 4), np.nan), np.ones((2, 4))], ids=["rank0", "nan", "shape"]
)
def test_decompose_projection_rejects_bad_matrices(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        decompose_projection(bad)


def test_look_at_is_opencv() -> None:
    """Camera at -y looking at the origin with z up: world +x is image right, +z is image up."""
    K = np.array([[100.0, 0.0, 49.5], [0.0, 100.0, 39.5], [0.0, 0.0, 1.0]])
    pose = look_at(np.array([0.0, -5.0, 0.0]), np.zeros(3), np.array([0.0, 0.0, 1.0]))
    uv, depth = project_points(K, pose, np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(uv[0], [49.5, 39.5])
    np.testing.assert_allclose(depth, [5.0, 5.0, 5.0])
    assert uv[1, 0] == pytest.approx(69.5) and uv[1, 1] == pytest.approx(39.5)
    assert uv[2, 0] == pytest.approx(49.5) and uv[2, 1] == pytest.approx(19.5)
    np.testing.assert_allclose(np.linalg.det(pose[:3, :3]), 1.0)


def test_look_at_handles_up_parallel_to_view() -> None:
    pose = look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3), np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(pose[:3, 2], [0.0, 0.0, -1.0])


def test_pixel_rays_go_through_pixels_with_unit_camera_z() -> None:
    K = np.array([[80.0, 0.0, 15.5], [0.0, 70.0, 11.5], [0.0, 0.0, 1.0]])
    pose = look_at(np.array([0.4, 2.0, 1.0]), np.zeros(3))
    uv = pixel_grid(24, 32)
    assert uv.shape == (24, 32, 2) and tuple(uv[3, 5]) == (5.0, 3.0)
    origins, dirs = pixel_rays_unit_z(K, pose, uv.reshape(-1, 2))
    points = origins + 2.5 * dirs
    back, depth = project_points(K, pose, points)
    np.testing.assert_allclose(back, uv.reshape(-1, 2), atol=1e-9)
    np.testing.assert_allclose(depth, 2.5)


# ----------------------------------------------------------------------------- synthetic scenes


def test_default_object_is_watertight_with_a_handle() -> None:
    mesh = make_default_object(64)
    assert mesh.is_watertight and mesh.volume > 0
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.euler_number == 0  # genus 1: the torus handle
    assert np.linalg.norm(mesh.vertices, axis=1).max() < 0.78


def test_tiny_scene_layout_and_contents(tiny_scene_dir: Path, tiny_scene: Scene) -> None:
    names = {p.name for p in tiny_scene_dir.iterdir()}
    assert {"cameras_sphere.npz", "image", "mask", "depth", "normal", "gt_mesh.ply", "synthetic.json"} <= names
    assert sorted(p.name for p in (tiny_scene_dir / "mask").iterdir())[0] == "000.png"
    s = tiny_scene
    assert s.images.shape == (8, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.masks.shape == (8, 32, 32) and s.masks.dtype == bool
    assert s.depths.shape == (8, 32, 32) and s.normals.shape == (8, 32, 32, 3)
    assert s.intrinsics.shape == (8, 3, 3) and s.cam_to_world.shape == (8, 4, 4)
    np.testing.assert_allclose(s.scale_mat, default_scale_mat())
    assert s.gt_mesh_path == tiny_scene_dir / "gt_mesh.ply"
    assert [p.name for p in s.image_paths] == [f"{i:06d}.png" for i in range(8)]
    coverage = s.masks.mean(axis=(1, 2))
    assert np.all(coverage > 0.05) and np.all(coverage < 0.6)
    grown = np.stack([binary_dilation(m, np.ones((3, 3), bool)) for m in s.masks])
    assert np.all(s.images[~grown] == 0)  # black background (edges are anti-aliased)
    assert s.images[s.masks].std() > 10  # textured foreground
    assert np.all(np.linalg.norm(s.cam_to_world[:, :3, 3], axis=1) > 1.0)


def test_cues_agree_with_masks_and_cameras(tiny_scene: Scene) -> None:
    s = tiny_scene
    assert np.all((s.depths > 0) == s.masks)
    np.testing.assert_allclose(np.linalg.norm(s.normals[s.masks], axis=-1), 1.0, atol=1e-4)
    _, dirs = pixel_rays_unit_z(s.intrinsics[0], s.cam_to_world[0], pixel_grid(32, 32))
    facing = np.sum(s.normals[0] * dirs, axis=-1)[s.masks[0]]
    assert np.mean(facing < 0) > 0.95  # normals of visible surface face the camera
    assert 1.0 < s.depths[s.masks].min() and s.depths.max() < 4.0  # normalised units


def test_gt_vertices_project_into_masks(tiny_scene: Scene) -> None:
    """Geometric consistency: every GT vertex lands on the mask of every view."""
    mesh = trimesh.load(tiny_scene.gt_mesh_path, force="mesh")
    verts = _to_normalised(tiny_scene, np.asarray(mesh.vertices))
    assert np.linalg.norm(verts, axis=1).max() < 1.0
    for K, pose, mask in zip(tiny_scene.intrinsics, tiny_scene.cam_to_world, tiny_scene.masks):
        uv, depth = project_points(K, pose, verts)
        _assert_inside_masks(mask, uv, depth)


def test_world_mats_project_world_vertices_into_masks(tiny_scene_dir: Path, tiny_scene: Scene) -> None:
    mesh = trimesh.load(tiny_scene_dir / "gt_mesh.ply", force="mesh")
    assert np.ptp(mesh.vertices, axis=0).max() > 0.5 * DEFAULT_WORLD_SCALE  # world units
    hom = np.hstack([mesh.vertices, np.ones((len(mesh.vertices), 1))])
    with np.load(tiny_scene_dir / "cameras_sphere.npz") as cams:
        for i, mask in enumerate(tiny_scene.masks):
            world_mat = cams[f"world_mat_{i}"]
            np.testing.assert_array_equal(world_mat[3], [0, 0, 0, 1])
            proj = hom @ world_mat[:3].T
            _assert_inside_masks(mask, proj[:, :2] / proj[:, 2:], proj[:, 2])


def test_rays_through_mask_centres_hit_the_mesh_at_the_cue_depth(tiny_scene: Scene) -> None:
    s = tiny_scene
    mesh = trimesh.load(s.gt_mesh_path, force="mesh")
    mesh = trimesh.Trimesh(_to_normalised(s, np.asarray(mesh.vertices)), mesh.faces, process=False)
    triangles = mesh.vertices[mesh.faces]
    for i in range(s.n_images):
        vs, us = np.nonzero(s.masks[i])
        k = np.argmin((us - us.mean()) ** 2 + (vs - vs.mean()) ** 2)
        origin, direction = pixel_rays_unit_z(s.intrinsics[i], s.cam_to_world[i], np.array([us[k], vs[k]], float))
        t = _ray_hits(origin, direction, triangles)
        assert len(t) > 0, f"view {i}: ray through the mask centre misses the mesh"
        assert t.min() == pytest.approx(s.depths[i, vs[k], us[k]], abs=1e-4)  # camera z of direction is 1


def test_synthesize_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty") as err:
        synthesize(tmp_path, n_views=2, size=8, mesh_resolution=16)
    assert str(tmp_path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_synthesize_user_mesh_reports_normalisation(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(4.0, 2.0, 1.0))
    box.apply_translation((10.0, -3.0, 5.0))
    mesh_path = tmp_path / "box.obj"
    box.export(mesh_path)
    report = synthesize(tmp_path / "out", mesh_path=mesh_path, n_views=4, size=24, seed=1)
    half_diagonal = np.linalg.norm([4.0, 2.0, 1.0]) / 2.0
    assert report.centre == pytest.approx((10.0, -3.0, 5.0))
    assert report.scale == pytest.approx(half_diagonal / 0.8)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind
    scene = load_scene(tmp_path / "out")
    verts = _to_normalised(scene, np.asarray(trimesh.load(scene.gt_mesh_path, force="mesh").vertices))
    assert np.linalg.norm(verts, axis=1).max() == pytest.approx(0.8)
    for K, pose, mask in zip(scene.intrinsics, scene.cam_to_world, scene.masks):
        _assert_inside_masks(mask, *project_points(K, pose, verts))


def test_synthesized_normal_cues_face_outward_whatever_the_winding(tmp_path: Path) -> None:
    """A scan wound inward (negative volume: the staged happy Buddha and 5k bunny are) gives the same
    normal cues as the same mesh wound outward: on a sphere, the outward radial direction."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    inverted = sphere.copy()
    inverted.invert()
    assert inverted.volume < 0
    scenes = []
    for name, mesh in (("outward", sphere), ("inward", inverted)):
        mesh.export(tmp_path / f"{name}.obj")
        synthesize(tmp_path / name, mesh_path=tmp_path / f"{name}.obj", n_views=2, size=24, seed=1)
        scenes.append(load_scene(tmp_path / name))
    outward, inward = scenes
    np.testing.assert_allclose(inward.normals, outward.normals, atol=1e-5)
    hit = outward.depths > 0
    radial = np.einsum("nhwc,nhwc->nhw", outward.normals, _hit_points(outward))
    assert hit.sum() > 100 and (radial[hit] > 0.9).mean() > 0.99


def _hit_points(scene: Scene) -> np.ndarray:
    """(N, H, W, 3) unit directions from the centre to where each pixel's ray meets the surface (z-depth cue)."""
    uv = pixel_grid(scene.height, scene.width)
    points = []
    for K, pose, depth in zip(scene.intrinsics, scene.cam_to_world, scene.depths):
        origins, dirs = pixel_rays_unit_z(K, pose, uv)  # camera z of dirs is 1: the hit is at z-depth
        points.append(origins + depth[..., None] * dirs)
    points = np.stack(points)
    return points / np.maximum(np.linalg.norm(points, axis=-1, keepdims=True), 1e-12)


def test_synthesize_rejects_unreadable_mesh(tmp_path: Path) -> None:
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat nonsense\n")
    with pytest.raises(InputError, match="broken.ply"):
        synthesize(tmp_path / "out", mesh_path=bad, n_views=2, size=8)
    with pytest.raises(InputError, match="missing.obj"):
        synthesize(tmp_path / "out", mesh_path=tmp_path / "missing.obj", n_views=2, size=8)


# ----------------------------------------------------------------------------- loader input checks


def test_images_folder_is_accepted(scene_copy: Path) -> None:
    (scene_copy / "image").rename(scene_copy / "images")
    assert load_scene(scene_copy).n_images == 8


def test_cameras_npz_is_accepted_and_gray_alpha_images_are_converted(scene_copy: Path) -> None:
    (scene_copy / "cameras_sphere.npz").rename(scene_copy / "cameras.npz")
    gray = iio.imread(scene_copy / "image" / "000001.png")[..., 1]
    iio.imwrite(scene_copy / "image" / "000001.png", gray)
    rgba = np.dstack([iio.imread(scene_copy / "image" / "000002.png"), np.full((32, 32), 255, np.uint8)])
    iio.imwrite(scene_copy / "image" / "000002.png", rgba)
    scene = load_scene(scene_copy)
    assert scene.images.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(scene.images[1], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(scene.images[2], rgba[..., :3])


def _edit_cameras(root: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    path = root / "cameras_sphere.npz"
    with np.load(path) as data:
        cams = {k: data[k].copy() for k in data.files}
    edit(cams)
    np.savez(path, **cams)


def _write_image(path: Path, height: int, width: int) -> None:
    iio.imwrite(path, np.zeros((height, width, 3), np.uint8))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_world_mat(cams: dict[str, np.ndarray]) -> None:
    cams["world_mat_1"][0, 0] = np.nan


def _flat_world_mat(cams: dict[str, np.ndarray]) -> None:
    cams["world_mat_4"][:3, :3] = np.outer([1.0, 2.0, 3.0], [1.0, 0.5, 0.25])


CORRUPTIONS = {
    "no_cameras": (lambda r: (r / "cameras_sphere.npz").unlink(), ["cameras_sphere.npz"]),
    "bad_cameras_file": (lambda r: (r / "cameras_sphere.npz").write_bytes(b"junk"), ["cameras_sphere.npz"]),
    "no_image_folder": (lambda r: shutil.rmtree(r / "image"), ["image"]),
    "no_images": (lambda r: [p.unlink() for p in (r / "image").iterdir()], ["image", "no images"]),
    "missing_world_mat": (
        lambda r: _edit_cameras(r, lambda c: c.pop("world_mat_3")),
        ["cameras_sphere.npz", "world_mat_3", "000003.png"],
    ),
    "missing_scale_mat": (
        lambda r: _edit_cameras(r, lambda c: c.pop("scale_mat_2")),
        ["cameras_sphere.npz", "scale_mat_2"],
    ),
    "nan_world_mat": (lambda r: _edit_cameras(r, _nan_world_mat), ["cameras_sphere.npz", "world_mat_1", "non-finite"]),
    "degenerate_world_mat": (
        lambda r: _edit_cameras(r, _flat_world_mat),
        ["cameras_sphere.npz", "world_mat_4", "degenerate"],
    ),
    "truncated_png": (lambda r: _truncate(r / "image" / "000004.png"), ["000004.png"]),
    "odd_image_size": (lambda r: _write_image(r / "image" / "000005.png", 16, 24), ["000005.png", "24x16", "32x32"]),
    "mask_count": (lambda r: (r / "mask" / "007.png").unlink(), ["mask", "7 files for 8 images"]),
    "mask_size": (lambda r: _write_image(r / "mask" / "002.png", 16, 16), ["002.png", "16x16", "32x32"]),
    "truncated_mask": (lambda r: _truncate(r / "mask" / "006.png"), ["006.png"]),
    "depth_shape": (lambda r: np.save(r / "depth" / "000003.npy", np.zeros((4, 4))), ["000003.npy", "shape"]),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_inputs_raise_one_line_input_errors(scene_copy: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    corrupt, expected = CORRUPTIONS[name]
    corrupt(scene_copy)
    assert_refused(scene_copy, expected, capsys)


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as err:
        load_dtu(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        load_dtu(tmp_path / "file.txt")


# ----------------------------------------------------------------------------- real data


def test_real_dtu_scan24() -> None:
    if not DTU_SCAN24.is_dir():
        pytest.skip(f"staged DTU data not found at {DTU_SCAN24}")
    tracemalloc.start()
    scene = load_scene(DTU_SCAN24)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scene.images.shape == (20, 1200, 1600, 3) and scene.images.dtype == np.uint8
    assert peak < 1.5 * (scene.images.nbytes + scene.masks.nbytes)  # one copy of the pixels, no float copies
    assert scene.masks is not None and scene.masks.shape == (20, 1200, 1600)
    assert 0.05 < scene.masks.mean() < 0.9
    K0 = scene.intrinsics[0]
    np.testing.assert_allclose([K0[0, 0], K0[1, 1], K0[0, 2], K0[1, 2]], [2892.3, 2883.2, 823.2, 619.1], atol=0.1)
    with np.load(DTU_SCAN24 / "cameras_sphere.npz") as cams:
        K_world, _ = decompose_projection(cams["world_mat_0"][:3])
    np.testing.assert_allclose(K0, K_world, rtol=1e-6, atol=1e-6)  # the scale matrix leaves K unchanged
    assert np.all(np.linalg.norm(scene.cam_to_world[:, :3, 3], axis=1) > 1.0)
    assert scene.scale_mat[0, 0] == pytest.approx(231.07, abs=0.01)
    # the unit sphere's centre projects inside every image, in front of the camera
    for K, pose in zip(scene.intrinsics, scene.cam_to_world):
        uv, depth = project_points(K, pose, np.zeros((1, 3)))
        assert depth[0] > 0 and 0 <= uv[0, 0] < 1600 and 0 <= uv[0, 1] < 1200
