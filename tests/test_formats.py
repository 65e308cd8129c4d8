"""Capture formats: tiny scenes of each format written here, their corruptions, the real data, memory."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from conftest import assert_refused
from recon.cli import main
from recon.datasets import detect_format, load_scene
from recon.datasets.cameras import pixel_rays_unit_z, visual_hull
from recon.datasets.dtu import downscale_cue, load_dtu
from recon.datasets.monosdf import crop_intrinsics
from recon.datasets.normalize import closest_point_to_axes
from recon.datasets.resample import distort, downscaled_intrinsics, undistort_map, undistort_uint8
from recon.datasets.scene import Scene
from recon.errors import InputError
from recon.rays import RaySource

GL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL camera axes


@pytest.fixture(scope="module")
def tiny(tiny_scene_dir: Path) -> Scene:
    return load_dtu(tiny_scene_dir)


# ----------------------------------------------------------------------------- writers


def write_nerf_synthetic(scene: Scene, root: Path, splits: dict[str, list[int]]) -> Path:
    """The tiny scene as a Blender capture (RGBA, extensionless file_path, OpenGL poses)."""
    angle = 2 * np.arctan(scene.width / 2 / scene.intrinsics[0, 0, 0])
    for split, views in splits.items():
        (root / split).mkdir(parents=True)
        frames = []
        for i in views:
            iio.imwrite(root / split / f"r_{i}.png", np.dstack([scene.images[i], scene.masks[i] * np.uint8(255)]))
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": (scene.cam_to_world[i] @ GL).tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return root


def write_ngp(scene: Scene, root: Path, extra: dict | None = None, missing: int = 0) -> Path:
    """The tiny scene as an instant-ngp capture (shared intrinsics; ``missing`` frames without files)."""
    (root / "images").mkdir(parents=True)
    K = scene.intrinsics[0]
    frames = []
    for i in range(scene.n_images):
        iio.imwrite(root / "images" / f"{i:04d}.png", scene.images[i])
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": (scene.cam_to_world[i] @ GL).tolist()})
    frames += [{"file_path": f"images/gone_{j}.jpg", "transform_matrix": frames[0]["transform_matrix"]} for j in range(missing)]
    meta = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2] + 0.5, "cy": K[1, 2] + 0.5,
            "w": scene.width, "h": scene.height, **(extra or {}), "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def write_monosdf(scene: Scene, cameras: Path, root: Path) -> Path:
    """The tiny scene as MonoSDF files: camera-space normals in [0, 1] as (3, H, W)."""
    root.mkdir(parents=True)
    shutil.copy(cameras, root / "cameras.npz")
    for i in range(scene.n_images):
        iio.imwrite(root / f"{i:06d}_rgb.png", scene.images[i])
        np.save(root / f"{i:06d}_depth.npy", scene.depths[i])
        camera_normals = scene.normals[i] @ scene.cam_to_world[i, :3, :3]  # R^T n
        np.save(root / f"{i:06d}_normal.npy", np.moveaxis(camera_normals * 0.5 + 0.5, -1, 0).astype(np.float32))
    return root


@pytest.fixture()
def blender_dir(tiny: Scene, tmp_path: Path) -> Path:
    return write_nerf_synthetic(tiny, tmp_path / "lego", {"train": [0, 1, 2, 3, 4, 5], "test": [6, 7]})


@pytest.fixture()
def ngp_dir(tiny: Scene, tmp_path: Path) -> Path:
    return write_ngp(tiny, tmp_path / "fox", missing=3)


@pytest.fixture()
def monosdf_dir(tiny: Scene, tiny_scene_dir: Path, tmp_path: Path) -> Path:
    return write_monosdf(tiny, tiny_scene_dir / "cameras_sphere.npz", tmp_path / "scan")


@pytest.fixture()
def dtu_dir(tiny_scene_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_scene_dir, tmp_path / "dtu"))


def _world_centres(scene: Scene) -> np.ndarray:
    return scene.cam_to_world[:, :3, 3] @ scene.scale_mat[:3, :3].T + scene.scale_mat[:3, 3]


# ----------------------------------------------------------------------------- formats


def test_detect_format(blender_dir: Path, ngp_dir: Path, monosdf_dir: Path, dtu_dir: Path, tmp_path: Path) -> None:
    for root, fmt in ((blender_dir, "nerf-synthetic"), (ngp_dir, "ngp"), (monosdf_dir, "monosdf"), (dtu_dir, "dtu")):
        assert detect_format(root) == fmt
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="unknown capture format"):
        load_scene(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown format"):
        load_scene(dtu_dir, fmt="bundler")
    with pytest.raises(InputError, match="positive integer"):
        load_scene(dtu_dir, downscale=0)


def test_nerf_synthetic_round_trip(tiny: Scene, blender_dir: Path, tiny_scene_dir: Path) -> None:
    scene = load_scene(blender_dir)
    assert scene.format == "nerf-synthetic" and scene.n_images == 8
    assert {k: v.tolist() for k, v in scene.splits.items()} == {"train": [0, 1, 2, 3, 4, 5], "test": [6, 7]}
    assert any("transforms_val.json" in w for w in scene.warnings)
    np.testing.assert_allclose(scene.intrinsics, tiny.intrinsics, atol=1e-9)  # cx = (W - 1) / 2
    np.testing.assert_array_equal(scene.masks, tiny.masks)
    white = np.where(tiny.masks[..., None], tiny.images, 255)
    np.testing.assert_array_equal(scene.images, white)
    black = load_scene(blender_dir, rgba_background="black").images
    np.testing.assert_array_equal(black, np.where(tiny.masks[..., None], tiny.images, 0))
    np.testing.assert_allclose(scene.cam_to_world[:, :3, :3], tiny.cam_to_world[:, :3, :3], atol=1e-6)
    np.testing.assert_allclose(_world_centres(scene), tiny.cam_to_world[:, :3, 3], atol=1e-9)
    # normalised from the cameras: the object inside the unit sphere, every camera outside it
    assert scene.normalization_source.startswith("cameras")
    vertices = trimesh.load(tiny_scene_dir / "gt_mesh.ply").vertices
    vertices = (vertices - tiny.scale_mat[:3, 3]) / tiny.scale_mat[0, 0]  # JSON frame = tiny's normalised frame
    inside = (vertices - scene.scale_mat[:3, 3]) / scene.scale_mat[0, 0]
    assert np.linalg.norm(inside, axis=1).max() < 1.0
    assert np.linalg.norm(scene.cam_to_world[:, :3, 3], axis=1).min() > 1.0
    test_views = scene.split("test")
    assert test_views.n_images == 2 and test_views.splits == {"test": pytest.approx(np.array([0, 1]))}


def test_ngp_round_trip_skips_missing_frames_with_one_warning(
    tiny: Scene, ngp_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        scene = load_scene(ngp_dir)
    skipped = [w for w in scene.warnings if "skipped" in w]
    assert skipped == ["3 of 11 frames skipped: their image files do not exist (first: gone_0.jpg)"]
    assert sum("skipped" in r.message for r in caplog.records) == 1
    assert scene.format == "ngp" and scene.n_images == 8 and scene.masks is None
    np.testing.assert_array_equal(scene.images, tiny.images)
    np.testing.assert_allclose(scene.intrinsics, tiny.intrinsics, atol=1e-9)  # cx - 0.5: pixel centres
    np.testing.assert_allclose(_world_centres(scene), tiny.cam_to_world[:, :3, 3], atol=1e-9)
    cube = load_scene(write_ngp(tiny, ngp_dir.parent / "cube", {"aabb_scale": 4, "scale": 0.5, "offset": [0.5, 0.5, 0.5]}))
    assert cube.normalization_source.startswith("aabb")
    np.testing.assert_allclose(cube.scale_mat[:3, 3], 0.0, atol=1e-12)
    assert cube.scale_mat[0, 0] == pytest.approx(np.sqrt(3.0))  # the sphere through the cube [-1, 1]^3


def test_numbered_images_may_start_at_one(dtu_dir: Path) -> None:
    for i in reversed(range(8)):
        (dtu_dir / "image" / f"{i:06d}.png").rename(dtu_dir / "image" / f"{i + 1:06d}.png")
    assert load_scene(dtu_dir).n_images == 8


def test_monosdf_round_trip(tiny: Scene, monosdf_dir: Path) -> None:
    scene = load_scene(monosdf_dir)
    assert scene.format == "monosdf" and scene.masks is None
    np.testing.assert_array_equal(scene.images, tiny.images)
    np.testing.assert_allclose(scene.intrinsics, tiny.intrinsics, atol=1e-6)  # no crop: principal point central
    np.testing.assert_allclose(scene.depths, tiny.depths, atol=1e-6)
    valid = np.linalg.norm(tiny.normals, axis=-1) > 0.5
    np.testing.assert_allclose(scene.normals[valid], tiny.normals[valid], atol=1e-5)  # back in world space
    assert np.all(scene.normals[~valid] == 0)


def test_monosdf_dtu_crop_matches_its_loader_up_to_half_a_pixel() -> None:
    K = np.array([[2892.3, 0.3, 823.2], [0.0, 2883.2, 619.1], [0.0, 0.0, 1.0]])
    s = 384 / 1200
    cropped = crop_intrinsics(K, (384, 384), Path("cameras.npz"))
    monosdf = K.copy()
    monosdf[0, 2] -= 200
    monosdf[:2] *= s  # MonoSDF's center_crop_for_dtu
    np.testing.assert_allclose(cropped[:2, :2], monosdf[:2, :2])
    np.testing.assert_allclose(cropped[:2, 2], monosdf[:2, 2] + 0.5 * s - 0.5)  # pixel centres aligned
    np.testing.assert_array_equal(crop_intrinsics(np.diag([300.0, 300.0, 1.0]) + [[0, 0, 191.5], [0, 0, 191.5], [0, 0, 0]],
                                                  (384, 384), Path("c")), np.array([[300, 0, 191.5], [0, 300, 191.5], [0, 0, 1.0]]))


def test_downscale_averages_blocks_and_keeps_rays_through_block_centres(tiny: Scene, dtu_dir: Path) -> None:
    small = load_scene(dtu_dir, downscale=2)
    assert small.images.shape == (8, 16, 16, 3) and small.masks.shape == (8, 16, 16)
    blocks = tiny.images.reshape(8, 16, 2, 16, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert np.abs(small.images - blocks).max() <= 0.5
    np.testing.assert_array_equal(small.masks, tiny.masks.reshape(8, 16, 2, 16, 2).mean(axis=(2, 4)) >= 0.5)
    assert small.depths.shape == (8, 16, 16) and small.normals.shape == (8, 16, 16, 3)
    # the ray through the new pixel (u', v') is the one through the old block centre d u' + (d - 1) / 2
    for d in (2, 3, 4):
        K_small = downscaled_intrinsics(tiny.intrinsics[0], d)
        uv = np.array([[0.0, 0.0], [5.0, 2.0], [7.0, 3.0]])
        _, rays_small = pixel_rays_unit_z(K_small, tiny.cam_to_world[0], uv)
        _, rays_full = pixel_rays_unit_z(tiny.intrinsics[0], tiny.cam_to_world[0], d * uv + (d - 1) / 2)
        np.testing.assert_allclose(rays_small, rays_full, atol=1e-12)


def test_cue_downscale_averages_valid_pixels_only() -> None:
    depth = np.array([[1.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(downscale_cue(depth, 2), [[2.0, 0.0]])  # 0 = no cue, not a depth
    normals = np.zeros((2, 2, 3), np.float32)
    normals[0, 0], normals[1, 1] = [0.0, 0.0, -1.0], [0.0, 0.6, -0.8]
    expected = np.array([0.0, 0.6, -1.8]) / np.linalg.norm([0.0, 0.6, -1.8])
    np.testing.assert_allclose(downscale_cue(normals, 2)[0, 0], expected, atol=1e-6)


def test_undistortion_inverts_the_lens_model() -> None:
    """A distorted view of a smooth pattern, made with an independent (fixed-point) inverse of the
    lens model, is undistorted back to the pinhole view."""
    h, w = 90, 120
    K = np.array([[100.0, 0.0, 59.5], [0.0, 100.0, 44.5], [0.0, 0.0, 1.0]])
    coeffs = {"k1": 0.25, "k2": -0.1, "p1": -0.004, "p2": 0.006}
    pattern = lambda x, y: 128 + 100 * np.sin(9 * x) * np.cos(7 * y)  # noqa: E731
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    pinhole = pattern(x, y)
    und = np.stack([x, y], axis=-1)  # solve distort(p) = (x, y) for the undistorted p
    for _ in range(50):
        und = und + (np.stack([x, y], axis=-1) - distort(und, coeffs))
    distorted = np.clip(pattern(und[..., 0], und[..., 1]) + 0.5, 0, 255).astype(np.uint8)
    image = np.repeat(distorted[..., None], 4, axis=2)
    restored = undistort_uint8(image, undistort_map(K, coeffs, h, w))[..., 0].astype(np.float64)
    interior = (slice(5, -5), slice(5, -5))
    assert np.abs(restored - pinhole)[interior].max() < 3.0
    assert np.abs(distorted.astype(np.float64) - pinhole)[interior].max() > 20.0  # the test has teeth
    identity = undistort_uint8(image, undistort_map(K, {}, h, w))
    np.testing.assert_array_equal(identity, image)


def test_closest_point_to_axes_and_parallel_axes() -> None:
    target = np.array([0.3, -0.2, 0.5])
    origins = np.array([[3.0, 0, 0], [0, 4.0, 0], [0, 0, -5.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(closest_point_to_axes(origins, target - origins, "x"), target, atol=1e-12)
    with pytest.raises(InputError, match="parallel"):
        closest_point_to_axes(origins, np.tile([0.0, 0.0, 1.0], (4, 1)), "x")


# ----------------------------------------------------------------------------- corruptions


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_npz(path: Path, edit: Callable[[dict], None]) -> None:
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    edit(arrays)
    np.savez(path, **arrays)


def _set_pose(frame: int, value: list) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        data["frames"][frame]["transform_matrix"] = value

    return edit


_NAN_POSE = [[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
_SCALED_POSE = [[2.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0], [0, 0, 0, 1]]
_MIRROR_POSE = [[-1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0], [0, 0, 0, 1]]

CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None], list[str]]] = {
    "dtu_deleted_image": ("dtu", lambda r: (r / "image" / "000003.png").unlink(), ["000003.png", "number 3 is missing"]),
    "dtu_truncated_png": ("dtu", lambda r: _truncate(r / "image" / "000002.png"), ["000002.png", "truncated"]),
    "dtu_nan_pose": ("dtu", lambda r: _edit_npz(r / "cameras_sphere.npz", lambda c: c["world_mat_5"].__setitem__((1, 1), np.nan)),
                     ["cameras_sphere.npz", "world_mat_5", "non-finite"]),
    "dtu_depth_shape": ("dtu", lambda r: np.save(r / "depth" / "000001.npy", np.zeros((31, 32))), ["000001.npy", "(31, 32)", "(32, 32)"]),
    "monosdf_deleted_image": ("monosdf", lambda r: (r / "000004_rgb.png").unlink(), ["000004_rgb.png", "number 4 is missing"]),
    "monosdf_deleted_last_image": ("monosdf", lambda r: (r / "000007_rgb.png").unlink(), ["000007_depth.npy", "no image 000007_rgb.png"]),
    "monosdf_truncated_png": ("monosdf", lambda r: _truncate(r / "000006_rgb.png"), ["000006_rgb.png", "truncated"]),
    "monosdf_nan_pose": ("monosdf", lambda r: _edit_npz(r / "cameras.npz", lambda c: c["world_mat_2"].__setitem__((0, 3), np.inf)),
                         ["cameras.npz", "world_mat_2", "non-finite"]),
    "monosdf_depth_shape": ("monosdf", lambda r: np.save(r / "000003_depth.npy", np.zeros((32, 16), np.float32)),
                            ["000003_depth.npy", "(32, 16)", "(32, 32)"]),
    "monosdf_normal_layout": ("monosdf", lambda r: np.save(r / "000001_normal.npy", np.zeros((32, 32, 3), np.float32)),
                              ["000001_normal.npy", "(32, 32, 3)", "(3, 32, 32)"]),
    "monosdf_missing_normal": ("monosdf", lambda r: (r / "000005_normal.npy").unlink(), ["000005_normal.npy", "7 of 8 views"]),
    "blender_deleted_image": ("nerf-synthetic", lambda r: (r / "train" / "r_3.png").unlink(),
                              ["transforms_train.json", "frame 3", "./train/r_3", "does not exist"]),
    "blender_truncated_png": ("nerf-synthetic", lambda r: _truncate(r / "test" / "r_7.png"), ["r_7.png", "truncated"]),
    "blender_nan_pose": ("nerf-synthetic", lambda r: _edit_json(r / "transforms_train.json", _set_pose(2, _NAN_POSE)),
                         ["transforms_train.json", "frame 2", "non-finite"]),
    "blender_scaled_rotation": ("nerf-synthetic", lambda r: _edit_json(r / "transforms_test.json", _set_pose(1, _SCALED_POSE)),
                                ["transforms_test.json", "frame 1", "not orthonormal"]),
    "blender_reflection": ("nerf-synthetic", lambda r: _edit_json(r / "transforms_train.json", _set_pose(2, _MIRROR_POSE)),
                           ["transforms_train.json", "frame 2", "determinant -1"]),
    "blender_no_angle": ("nerf-synthetic", lambda r: _edit_json(r / "transforms_train.json", lambda d: d.pop("camera_angle_x")),
                         ["transforms_train.json", "camera_angle_x"]),
    "blender_bad_json": ("nerf-synthetic", lambda r: (r / "transforms_test.json").write_text("{frames: ["),
                         ["transforms_test.json", "not valid JSON"]),
    "blender_odd_size": ("nerf-synthetic", lambda r: iio.imwrite(r / "train" / "r_1.png", np.zeros((16, 32, 4), np.uint8)),
                         ["r_1.png", "32x16", "32x32"]),
    "ngp_truncated_png": ("ngp", lambda r: _truncate(r / "images" / "0005.png"), ["0005.png", "truncated"]),
    "ngp_nan_pose": ("ngp", lambda r: _edit_json(r / "transforms.json", _set_pose(2, _NAN_POSE)),
                     ["transforms.json", "frame 2", "images/0002.png", "non-finite"]),
    "ngp_all_missing": ("ngp", lambda r: shutil.rmtree(r / "images"), ["transforms.json", "none of the 11 frames"]),
    "ngp_wrong_width": ("ngp", lambda r: _edit_json(r / "transforms.json", lambda d: d.update(w=64)), ["transforms.json", "w=64", "32x32"]),
    "ngp_fisheye": ("ngp", lambda r: _edit_json(r / "transforms.json", lambda d: d.update(camera_model="OPENCV_FISHEYE")),
                    ["transforms.json", "OPENCV_FISHEYE", "not supported"]),
    "ngp_negative_focal": ("ngp", lambda r: _edit_json(r / "transforms.json", lambda d: d.update(fl_x=-5.0)),
                           ["transforms.json", "focal lengths must be positive"]),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_captures_give_precise_one_line_errors(
    name: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    fmt, corrupt, expected = CORRUPTIONS[name]
    fixture = {"dtu": "dtu_dir", "monosdf": "monosdf_dir", "nerf-synthetic": "blender_dir", "ngp": "ngp_dir"}[fmt]
    root = request.getfixturevalue(fixture)
    corrupt(root)
    assert_refused(root, expected, capsys)


def test_cameras_are_checked_before_any_image_is_decoded(ngp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _edit_json(ngp_dir / "transforms.json", _set_pose(2, _NAN_POSE))

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr("recon.datasets.files.decode", no_decoding)
    with pytest.raises(InputError, match="non-finite"):
        load_scene(ngp_dir)


# ----------------------------------------------------------------------------- memory


def test_loading_keeps_one_uint8_copy_of_the_pixels(tiny_scene_dir: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_scene_dir, tmp_path / "big", ignore=shutil.ignore_patterns("mask", "depth", "normal")))
    rng = np.random.default_rng(0)
    for i in range(8):
        iio.imwrite(root / "image" / f"{i:06d}.png", rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    tracemalloc.start()
    scene = load_scene(root)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scene.images.dtype == np.uint8 and scene.images.nbytes == 8 * 240 * 320 * 3
    assert peak < 1.6 * scene.images.nbytes  # one copy plus a few images in flight; a float copy would be 4x
    rays = RaySource(scene, torch.device("cpu"))
    assert rays.images.data_ptr() == scene.images.ctypes.data  # shared, not copied


def test_ray_budget_is_explicit(tiny: Scene) -> None:
    rays = RaySource(tiny, torch.device("cpu"), max_rays=100)
    generator = torch.Generator().manual_seed(0)
    assert rays.random_batch(100, generator).origins.shape == (100, 3)
    with pytest.raises(InputError, match="budget of 100"):
        rays.random_batch(101, generator)
    with pytest.raises(InputError, match="budget of 100"):
        rays.image_batch(0, 1)  # 1024 pixels
    image, h, w = rays.image_batch(0, 4)  # 8 x 8 = 64 rays fit
    assert (h, w) == (8, 8) and image.origins.shape == (64, 3)


def test_image_batch_is_the_image_at_lower_resolution(tiny: Scene) -> None:
    """Each ray goes through the centre of its block of pixels and its target is the block's mean,
    short blocks at the far edges included (32 pixels in blocks of 5: 6 full, one of 2)."""
    rays = RaySource(tiny, torch.device("cpu"))
    image, h, w = rays.image_batch(2, 5)
    assert (h, w) == (7, 7)
    pixels = tiny.images[2].astype(np.float64) / 255.0
    target = image.rgb.reshape(h, w, 3).numpy()
    np.testing.assert_allclose(target[1, 2], pixels[5:10, 10:15].reshape(-1, 3).mean(0), atol=1e-6)
    np.testing.assert_allclose(target[6, 6], pixels[30:32, 30:32].reshape(-1, 3).mean(0), atol=1e-6)
    centre = RaySource(tiny, torch.device("cpu")).batch(torch.tensor([2]), torch.tensor([12]), torch.tensor([7]))
    np.testing.assert_allclose(image.dirs.reshape(h, w, 3)[1, 2].numpy(), centre.dirs[0].numpy(), atol=1e-6)
    _, corner = pixel_rays_unit_z(tiny.intrinsics[2], tiny.cam_to_world[2], np.array([30.5, 30.5]))
    np.testing.assert_allclose(image.dirs.reshape(h, w, 3)[6, 6].numpy(), corner / np.linalg.norm(corner), atol=1e-5)
    # a ray through another point of each block: column 1/10, row 9/10 of the way across
    shifted, _, _ = rays.image_batch(2, 5, at=(0.1, 0.9))
    inner = RaySource(tiny, torch.device("cpu")).batch(torch.tensor([2]), torch.tensor([10]), torch.tensor([9]))
    np.testing.assert_allclose(shifted.dirs.reshape(h, w, 3)[1, 2].numpy(), inner.dirs[0].numpy(), atol=1e-6)
    _, short = pixel_rays_unit_z(tiny.intrinsics[2], tiny.cam_to_world[2], np.array([29.7, 31.3]))  # the 2-pixel blocks
    np.testing.assert_allclose(shifted.dirs.reshape(h, w, 3)[6, 6].numpy(), short / np.linalg.norm(short), atol=1e-5)
    np.testing.assert_array_equal(shifted.rgb.numpy(), image.rgb.numpy())  # the targets stay the block means
    assert tiny.masks is not None
    coverage = tiny.masks[2, 5:10, 10:15].mean() > 0.5
    assert bool(image.mask.reshape(h, w)[1, 2]) == bool(coverage)
    # with a background, the photo outside the mask is replaced by it before averaging
    composited, _, _ = rays.image_batch(2, 5, torch.tensor([0.0, 1.0, 0.0]))
    replaced = np.where(tiny.masks[2][..., None], pixels, [0.0, 1.0, 0.0])
    for row, col in [(1, 2), (3, 3), (6, 6)]:
        block = replaced[5 * row : 5 * row + 5, 5 * col : 5 * col + 5].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(composited.rgb.reshape(h, w, 3)[row, col].numpy(), block, atol=1e-6)
    edge = tiny.masks[2].reshape(-1).any() and not tiny.masks[2].all()
    assert edge  # the tiny scene has a silhouette, so the two targets differ somewhere
    assert not torch.allclose(composited.rgb, image.rgb)
    with pytest.raises(InputError, match="max_rays"):
        RaySource(tiny, torch.device("cpu"), max_rays=0)


# ----------------------------------------------------------------------------- real data

REAL = {
    "dtu_scan24_neus": ("dtu", 20, 4, ["masks:         yes"]),
    "dtu_scan24_monosdf_priors8": ("monosdf", 8, 1, ["cues:          depth, normal", "384x384"]),
    "dtu_scan24_monosdf_rgb49": ("monosdf", 49, 1, ["cues:          none"]),
    "nerf_synthetic_lego": ("nerf-synthetic", 100, 8, ["splits:        train 100", "from cameras", "transforms_val.json"]),
    "instant_ngp_fox": ("ngp", 50, 8, ["17 of 67 frames skipped", "lens distortion", "from aabb"]),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_data_passes_recon_check(name: str, shared_data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    root = shared_data_dir / name
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    fmt, views, downscale, expected = REAL[name]
    assert main(["check", str(root), "--downscale", str(downscale)]) == 0
    out = capsys.readouterr().out
    assert f"format:        {fmt}" in out and f"views:         {views}\n" in out
    for text in expected:
        assert text in out, f"{text!r} not in {out}"
    assert "inside the unit sphere" not in out and "look away" not in out


def _visual_hull(scene: Scene) -> np.ndarray:
    """(M, 3) grid points (normalised) inside every mask; points outside an image are carved."""
    return visual_hull(scene.intrinsics, scene.cam_to_world, scene.masks)


def test_real_lego_object_inside_unit_sphere_cameras_outside(shared_data_dir: Path) -> None:
    root = shared_data_dir / "nerf_synthetic_lego"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    scene = load_scene(root, downscale=8)
    hull = _visual_hull(scene.select(range(0, 100, 4)))
    assert len(hull) > 100 and np.linalg.norm(hull, axis=1).max() < 1.0
    assert np.linalg.norm(scene.cam_to_world[:, :3, 3], axis=1).min() > 2.0
    K = scene.intrinsics[0]
    assert K[0, 0] == pytest.approx(1111.11 / 8, abs=0.01) and K[0, 2] == pytest.approx(49.5)


def test_real_monosdf_agrees_with_neus_cameras_and_cue_conventions(shared_data_dir: Path) -> None:
    mono_dir, neus_dir = shared_data_dir / "dtu_scan24_monosdf_priors8", shared_data_dir / "dtu_scan24_neus"
    if not (mono_dir.is_dir() and neus_dir.is_dir()):
        pytest.skip("staged DTU data not found")
    mono, neus = load_scene(mono_dir), load_scene(neus_dir, downscale=8)
    np.testing.assert_allclose(_world_centres(mono), _world_centres(neus)[:8], rtol=1e-6)
    np.testing.assert_allclose(mono.cam_to_world[:, :3, :3], neus.cam_to_world[:8, :3, :3], atol=1e-6)
    fx_full = neus.intrinsics[0, 0, 0] * 8
    assert mono.intrinsics[0, 0, 0] == pytest.approx(fx_full * 384 / 1200, rel=1e-6)
    # cues: unit normals, mostly facing the camera (camera-space z < 0), relative depth > 0
    normals = mono.normals.reshape(8, -1, 3)
    camera = np.einsum("nij,npi->npj", mono.cam_to_world[:, :3, :3], normals)  # R^T n
    assert np.allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-4)
    assert (camera[..., 2] < 0).mean() > 0.9
    assert mono.depths.min() >= 0 and (mono.depths > 0).mean() > 0.999  # a few clamped predictions are 0


FIT_DOWNSCALE = {"dtu_scan24_neus": 16, "dtu_scan24_monosdf_priors8": 4, "dtu_scan24_monosdf_rgb49": 8,
                 "nerf_synthetic_lego": 16, "instant_ngp_fox": 16}


@pytest.mark.parametrize("name", list(FIT_DOWNSCALE))
def test_real_data_short_fit(name: str, shared_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`recon fit --downscale` runs a few steps on every real capture and writes its normalisation."""
    root = shared_data_dir / name
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    from conftest import FAST_FIT

    run = tmp_path / "run"
    args = ["fit", str(root), "--out", str(run), "--iters", "1", "--downscale", str(FIT_DOWNSCALE[name]), "--quiet"]
    assert main(args + FAST_FIT + ["train.batch_rays=64", "train.val_max_side=16"]) == 0, capsys.readouterr().err
    scale_mat = np.array(json.loads((run / "meta.json").read_text())["scale_mat"])
    assert np.all(np.isfinite(scale_mat)) and np.linalg.det(scale_mat[:3, :3]) > 0  # meshes go back to world units
    assert "downscale: " + str(FIT_DOWNSCALE[name]) in (run / "config.yaml").read_text()
