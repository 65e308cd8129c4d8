"""COLMAP captures: the model reader and writer (against pycolmap when installed), camera models and
pixel convention, the loader against the same scene in the DTU layout, normalisation, bad input."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from conftest import assert_refused
from recon.cli import main
from recon.datasets import detect_format, load_scene, synthesize
from recon.datasets.colmap import camera_intrinsics, load_colmap
from recon.datasets.colmap_model import (
    Camera,
    Image,
    Model,
    Points3D,
    qvec_to_rotation,
    read_model,
    rotation_to_qvec,
    write_model,
)
from recon.datasets.dtu import load_dtu
from recon.datasets.normalize import CAMERA_CLEARANCE, from_points
from recon.datasets.resample import distort
from recon.datasets.scene import Scene
from recon.errors import InputError
from recon.raycast import Raycaster

PARAMS = {  # one camera of each supported model, with every distortion term nonzero
    "SIMPLE_PINHOLE": [40.0, 16.2, 15.7],
    "PINHOLE": [40.0, 41.5, 16.2, 15.7],
    "SIMPLE_RADIAL": [40.0, 16.2, 15.7, -0.08],
    "RADIAL": [40.0, 16.2, 15.7, -0.08, 0.02],
    "OPENCV": [40.0, 41.5, 16.2, 15.7, -0.08, 0.02, 0.003, -0.002],
}


def _random_model(seed: int = 0) -> Model:
    """Five cameras (one per model), four images with 2D points, 30 points with tracks."""
    rng = np.random.default_rng(seed)
    cameras = {i + 1: Camera(i + 1, name, 32 + i, 24 + i, np.array(p)) for i, (name, p) in enumerate(PARAMS.items())}
    images = {}
    for i in range(4):
        q = rng.normal(size=4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        n = int(rng.integers(0, 6))
        images[10 + i] = Image(10 + i, q, rng.normal(size=3), 1 + i, f"sub dir/img_{i}.jpg",
                               rng.uniform(0, 30, (n, 2)), rng.integers(-1, 30, n))
    lengths = rng.integers(1, 5, 30)
    tracks = np.stack([rng.integers(10, 14, lengths.sum()), rng.integers(0, 6, lengths.sum())], axis=1)
    points = Points3D(np.arange(100, 130), rng.normal(size=(30, 3)), rng.integers(0, 256, (30, 3)).astype(np.uint8),
                      rng.uniform(0, 2, 30), lengths, tracks.astype(np.int32))
    return Model(cameras, images, points)


def _assert_same_model(a: Model, b: Model) -> None:
    assert a.cameras.keys() == b.cameras.keys() and a.images.keys() == b.images.keys()
    for cid, cam in a.cameras.items():
        other = b.cameras[cid]
        assert (cam.model, cam.width, cam.height) == (other.model, other.width, other.height)
        np.testing.assert_array_equal(cam.params, other.params)
    for iid, im in a.images.items():
        other = b.images[iid]
        assert (im.name, im.camera_id) == (other.name, other.camera_id)
        np.testing.assert_allclose(im.qvec, other.qvec, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(im.tvec, other.tvec)
        np.testing.assert_array_equal(im.xy, other.xy)
        np.testing.assert_array_equal(im.point3d_ids, other.point3d_ids)
    for name in ("ids", "xyz", "rgb", "error", "track_lengths", "tracks"):
        np.testing.assert_array_equal(getattr(a.points, name), getattr(b.points, name), err_msg=name)


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_model_round_trip(binary: bool, tmp_path: Path) -> None:
    model = _random_model()
    write_model(model, tmp_path, binary)
    assert {p.suffix for p in tmp_path.iterdir()} == {".bin" if binary else ".txt"}
    _assert_same_model(model, read_model(tmp_path))


def test_quaternions_match_rotations() -> None:
    # 90 degrees about z: (w, x, y, z) = (cos 45, 0, 0, sin 45)
    np.testing.assert_allclose(qvec_to_rotation(np.array([np.sqrt(0.5), 0, 0, np.sqrt(0.5)])),
                               [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    rng = np.random.default_rng(1)
    for _ in range(50):  # includes the w ~ 0 branches
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[0])
        np.testing.assert_allclose(rotation_to_qvec(qvec_to_rotation(q)), q, atol=1e-12)
    q = rotation_to_qvec(np.diag([1.0, -1.0, -1.0]))  # 180 degrees about x
    np.testing.assert_allclose(np.abs(q), [0, 1, 0, 0], atol=1e-15)


def test_camera_models_in_recon_convention() -> None:
    """K loses 0.5 on the principal point (COLMAP's first pixel centre is at 0.5); the distortion
    terms are named as the shared OpenCV polynomial; a point projects where COLMAP puts it, minus 0.5."""
    x = np.array([0.21, -0.13])  # normalised camera coordinates
    for name, params in PARAMS.items():
        K, coeffs = camera_intrinsics(Camera(1, name, 32, 24, np.array(params)), Path("cameras.bin"))
        f = params[0]
        fy = params[1] if name in ("PINHOLE", "OPENCV") else f
        cx, cy = (params[2], params[3]) if name in ("PINHOLE", "OPENCV") else (params[1], params[2])
        np.testing.assert_allclose(K, [[f, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]])
        r2 = x @ x
        terms = {"SIMPLE_RADIAL": params[3:] + [0, 0, 0], "RADIAL": params[3:] + [0, 0], "OPENCV": params[4:]}
        k1, k2, p1, p2 = terms.get(name, [0, 0, 0, 0])
        radial = 1 + k1 * r2 + k2 * r2 * r2  # COLMAP's formulas, written out
        xd = x[0] * radial + 2 * p1 * x[0] * x[1] + p2 * (r2 + 2 * x[0] ** 2)
        yd = x[1] * radial + 2 * p2 * x[0] * x[1] + p1 * (r2 + 2 * x[1] ** 2)
        colmap_uv = np.array([f * xd + cx, fy * yd + cy])
        ours = K[:2, :2] @ distort(x, coeffs) + K[:2, 2]
        np.testing.assert_allclose(ours + 0.5, colmap_uv, atol=1e-12)
    with pytest.raises(InputError, match="OPENCV_FISHEYE is not supported"):
        camera_intrinsics(Camera(3, "OPENCV_FISHEYE", 32, 24, np.zeros(8)), Path("cameras.bin"))


# ----------------------------------------------------------------------------- pycolmap


def _pycolmap_model(pycolmap, model: Model):
    rec = pycolmap.Reconstruction()
    for cam in model.cameras.values():
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=cam.model, width=cam.width, height=cam.height,
                                                        params=cam.params, camera_id=cam.id))
    for im in model.images.values():
        image = pycolmap.Image(name=im.name, keypoints=im.xy, camera_id=im.camera_id, image_id=im.id)
        w, x, y, z = im.qvec
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([x, y, z, w])), im.tvec)
        rec.add_image_with_trivial_frame(image, pose)
    ends = np.cumsum(model.points.track_lengths)
    for i in range(len(model.points)):
        track = pycolmap.Track()
        for image_id, idx in model.points.tracks[ends[i] - model.points.track_lengths[i]:ends[i]]:
            track.add_element(int(image_id), int(idx))
        rec.add_point3D(model.points.xyz[i], track, model.points.rgb[i])
    return rec


def _consistent_model() -> Model:
    """A model whose 2D points and tracks agree (pycolmap keeps them consistent): every track
    element observes a distinct 2D point, and every 2D point knows its 3D point."""
    base = _random_model(3)
    rng = np.random.default_rng(4)
    images = {iid: Image(iid, im.qvec, im.tvec, im.camera_id, im.name.replace(" ", "_"), rng.uniform(0, 20, (6, 2)),
                         np.full(6, -1, np.int64)) for iid, im in base.images.items()}
    rows, lengths = [], []
    for pid in range(1, 13):
        views = rng.choice(sorted(images), size=int(rng.integers(1, 4)), replace=False)
        for view in views:
            free = np.flatnonzero(images[view].point3d_ids == -1)
            images[view].point3d_ids[free[0]] = pid
            rows.append((view, free[0]))
        lengths.append(len(views))
    points = Points3D(np.arange(1, 13), rng.normal(size=(12, 3)), rng.integers(0, 256, (12, 3)).astype(np.uint8),
                      np.full(12, -1.0), np.array(lengths), np.array(rows, np.int32))
    return Model(base.cameras, images, points)


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_reader_reads_what_pycolmap_writes(binary: bool, tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    model = _consistent_model()
    rec = _pycolmap_model(pycolmap, model)
    (rec.write_binary if binary else rec.write_text)(str(tmp_path))
    _assert_same_model(model, read_model(tmp_path))


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_pycolmap_reads_what_the_writer_writes(binary: bool, tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    model = _consistent_model()
    write_model(model, tmp_path, binary)
    rec = pycolmap.Reconstruction(str(tmp_path))
    for cid, cam in model.cameras.items():
        assert rec.cameras[cid].model.name == cam.model
        np.testing.assert_array_equal(rec.cameras[cid].params, cam.params)
    for iid, im in model.images.items():
        pose = rec.images[iid].cam_from_world()
        np.testing.assert_allclose(pose.rotation.quat, [*im.qvec[1:], im.qvec[0]], atol=1e-15)
        np.testing.assert_array_equal(pose.translation, im.tvec)
        np.testing.assert_array_equal([p.xy for p in rec.images[iid].points2D], im.xy)
    for i, pid in enumerate(model.points.ids):
        np.testing.assert_array_equal(rec.points3D[int(pid)].xyz, model.points.xyz[i])
        np.testing.assert_array_equal(rec.points3D[int(pid)].color, model.points.rgb[i])


def test_pixel_convention_matches_pycolmap() -> None:
    """COLMAP's own projection of camera-space points, minus 0.5, is recon's K and lens model."""
    pycolmap = pytest.importorskip("pycolmap")
    cam_points = np.array([[0.3, -0.2, 1.0], [-0.1, 0.25, 2.0], [0.0, 0.0, 1.5]])
    for name, params in PARAMS.items():
        theirs = pycolmap.Camera(model=name, width=32, height=24, params=params).img_from_cam(cam_points)
        K, coeffs = camera_intrinsics(Camera(1, name, 32, 24, np.array(params)), Path("c"))
        ours = distort(cam_points[:, :2] / cam_points[:, 2:], coeffs) @ K[:2, :2].T + K[:2, 2]
        np.testing.assert_allclose(ours + 0.5, theirs, atol=1e-10, err_msg=name)


# ----------------------------------------------------------------------------- the loader


@pytest.fixture(scope="module")
def colmap_scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny scene of conftest (same seed and size) written in the COLMAP layout. Read-only."""
    out = tmp_path_factory.mktemp("colmap") / "scene"
    synthesize(out, n_views=8, size=32, seed=0, mesh_resolution=64, layout="colmap")
    return out


@pytest.fixture(scope="module")
def tiny(tiny_scene_dir: Path) -> Scene:
    return load_dtu(tiny_scene_dir)


def _world_poses(scene: Scene) -> np.ndarray:
    poses = scene.cam_to_world.copy()
    poses[:, :3, 3] = poses[:, :3, 3] @ scene.scale_mat[:3, :3].T + scene.scale_mat[:3, 3]
    return poses


def test_colmap_capture_equals_the_dtu_layout(tiny: Scene, colmap_scene_dir: Path, tmp_path: Path) -> None:
    sphere = [*tiny.scale_mat[:3, 3], tiny.scale_mat[0, 0]]
    assert detect_format(colmap_scene_dir) == "colmap"
    text = tmp_path / "text"
    shutil.copytree(colmap_scene_dir, text, ignore=shutil.ignore_patterns("sparse"))
    write_model(read_model(colmap_scene_dir / "sparse" / "0"), text / "sparse", binary=False)  # sparse/ directly
    for root in (colmap_scene_dir, text):
        scene = load_scene(root, colmap_sphere=sphere)
        assert scene.format == "colmap" and scene.n_images == 8
        np.testing.assert_array_equal(scene.scale_mat, tiny.scale_mat)  # the same normalisation
        np.testing.assert_array_equal(scene.images, tiny.images)
        np.testing.assert_array_equal(scene.masks, tiny.masks)
        np.testing.assert_allclose(scene.intrinsics, tiny.intrinsics, atol=1e-12)
        np.testing.assert_allclose(_world_poses(scene), _world_poses(tiny), atol=1e-11)
        assert scene.gt_mesh_path is not None and scene.warnings == ()
        assert scene.details["cameras"] == "1 (PINHOLE)" and scene.details["distortion"] == "none"


def test_sparse_points_are_on_the_surface_and_seen_where_observed(colmap_scene_dir: Path, tiny: Scene) -> None:
    model = read_model(colmap_scene_dir / "sparse" / "0")
    distance = Raycaster(trimesh.load(colmap_scene_dir / "gt_mesh.ply")).distance(model.points.xyz)
    assert len(model.points) > 500 and distance.max() < 1e-3 * tiny.scale_mat[0, 0]
    assert model.points.track_lengths.min() >= 2
    K = tiny.intrinsics[0]
    poses = _world_poses(tiny)
    for im in model.images.values():  # each observation is the point's projection, in COLMAP pixels
        observed = im.point3d_ids >= 0
        xyz = model.points.xyz[im.point3d_ids[observed] - 1]
        pose = poses[im.id - 1]
        cam = (xyz - pose[:3, 3]) @ pose[:3, :3]
        uv = cam @ K.T
        np.testing.assert_allclose(uv[:, :2] / uv[:, 2:] + 0.5, im.xy[observed], atol=1e-9)


def test_points_rule_draws_the_sphere_around_the_object(colmap_scene_dir: Path, tiny: Scene) -> None:
    scene = load_scene(colmap_scene_dir)
    assert scene.normalization_source.startswith("sparse points")
    gt = trimesh.load(colmap_scene_dir / "gt_mesh.ply").vertices
    inside = (gt - scene.scale_mat[:3, 3]) / scene.scale_mat[0, 0]
    assert 0.85 < np.linalg.norm(inside, axis=1).max() < 1.0  # the object fills the sphere, and fits
    assert np.linalg.norm(scene.cam_to_world[:, :3, 3], axis=1).min() > 1.2
    # the object's own sphere (the DTU layout's scale matrix: radius 50) is 37.5 / 0.75 of its extent
    assert np.linalg.norm(scene.scale_mat[:3, 3] - tiny.scale_mat[:3, 3]) < 0.05 * tiny.scale_mat[0, 0]
    cameras = load_scene(colmap_scene_dir, colmap_sphere_rule="cameras")
    assert cameras.normalization_source.startswith("cameras")


def test_from_points_rule_by_hand() -> None:
    """A cluster in view of every camera, far points each in view of one camera only, points seen
    once: the sphere is the cluster's median and 1.1 x its 99th distance percentile."""
    rng = np.random.default_rng(0)
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 31.5], [0, 0, 1]])
    from recon.datasets.cameras import look_at

    eyes = [np.array([6.0 * np.cos(a), 6.0 * np.sin(a), 1.0]) for a in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    poses = np.stack([look_at(e, np.zeros(3)) for e in eyes])
    cluster = rng.uniform(-1, 1, (400, 3)) + [0.2, -0.1, 0.05]
    far = np.stack([e * 3.0 for e in eyes])  # behind the opposite cameras: in few frusta
    points = np.vstack([cluster, far, rng.uniform(-1, 1, (50, 3)) * 0.1 + 5.0])
    tracks = np.concatenate([np.full(400, 4), np.full(8, 5), np.full(50, 2)])  # the last 50: two views only
    norm, warnings = from_points(points, tracks, np.repeat(K[None], 8, 0), poses, (64, 64), "p")
    centre = np.median(cluster, axis=0)
    np.testing.assert_allclose(norm.centre, centre)
    assert norm.radius == pytest.approx(1.1 * np.quantile(np.linalg.norm(cluster - centre, axis=1), 0.99))
    assert warnings == [] and "400 of 458" in norm.source
    close = poses.copy()
    close[0, :3, 3] = close[0, :3, 3] / 6.0 * 1.5  # a camera 1.5 from the origin: inside the sphere
    norm, warnings = from_points(points, tracks, np.repeat(K[None], 8, 0), close, (64, 64), "p")
    nearest = np.linalg.norm(close[:, :3, 3] - norm.centre, axis=1).min()
    assert norm.radius == pytest.approx(CAMERA_CLEARANCE * nearest) and "shrunk" in warnings[0]
    norm, warnings = from_points(points[:10], tracks[:10], np.repeat(K[None], 8, 0), poses, (64, 64), "p")
    assert norm.source.startswith("cameras") and "only 10 sparse points" in warnings[0]


def _copy(colmap_scene_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(colmap_scene_dir, tmp_path / "scene"))


def test_missing_images_are_skipped_with_one_warning_and_masks_by_stem(colmap_scene_dir: Path, tmp_path: Path) -> None:
    root = _copy(colmap_scene_dir, tmp_path)
    for i in (2, 5):
        (root / "images" / f"{i:06d}.png").unlink()
    for mask in (root / "masks").iterdir():  # masks/000000.png instead of masks/000000.png.png
        mask.rename(mask.with_name(mask.name[: -len(".png")]))
    shutil.copy(root / "images" / "000000.png", root / "images" / "extra.png")
    scene = load_scene(root)
    assert scene.n_images == 6 and scene.masks is not None and scene.masks.any()
    assert scene.warnings == ("2 of 8 images skipped: their files do not exist (first: 000002.png)",
                              "1 of the 7 images in images/ not in the model (not registered by COLMAP), not used "
                              "(first: extra.png)")
    (root / "masks" / "000003.png").unlink()
    with pytest.raises(InputError, match=r"masks/000003.png.png: mask file does not exist"):
        load_scene(root)


def _pattern(xy: np.ndarray) -> np.ndarray:
    """A smooth test pattern (0..255) over normalised camera coordinates (..., 2)."""
    return 128 + 100 * np.sin(20 * xy[..., 0]) * np.cos(16 * xy[..., 1])


def _soft_disc(xy: np.ndarray) -> np.ndarray:
    """A mask (0..255) with a soft edge (as IDR's): a disc of radius 0.33 off the optical axis."""
    return np.clip(128 + 1500 * (0.33 - np.linalg.norm(xy - [0.05, 0.03], axis=-1)), 0, 255)


def _views_through_lens(K: np.ndarray, coeffs: dict[str, float], size: tuple[int, int],
                        pattern: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pinhole, distorted) (H, W) views of ``pattern``: the distorted pixel sees the undistorted
    direction found by a fixed-point inverse of the lens model (independent of the loader's map)."""
    v, u = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
    target = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]], axis=-1)
    und = target.copy()
    for _ in range(60):
        und = und + (target - distort(und, coeffs))
    return pattern(target), pattern(und)


def test_opencv_distortion_is_removed_from_images_and_masks(colmap_scene_dir: Path, tmp_path: Path) -> None:
    """Photographs and masks through an OPENCV lens come back as the pinhole views, at the K of the
    camera less half a pixel."""
    root = _copy(colmap_scene_dir, tmp_path)
    model = read_model(root / "sparse" / "0")
    pinhole = model.cameras[1]
    coeffs = {"k1": -0.3, "k2": 0.05, "p1": 0.01, "p2": -0.008}
    cameras = {1: Camera(1, "OPENCV", pinhole.width, pinhole.height, np.array([*pinhole.params, *coeffs.values()]))}
    write_model(Model(cameras, model.images, model.points), root / "sparse" / "0")
    K, _ = camera_intrinsics(cameras[1], Path("c"))
    truth, seen = _views_through_lens(K, coeffs, (32, 32), _pattern)
    mask_truth, mask_seen = _views_through_lens(K, coeffs, (32, 32), _soft_disc)
    for i in range(8):
        name = f"{i:06d}.png"
        iio.imwrite(root / "images" / name, np.repeat(np.clip(seen + 0.5, 0, 255).astype(np.uint8)[..., None], 3, 2))
        iio.imwrite(root / "masks" / f"{name}.png", np.clip(mask_seen + 0.5, 0, 255).astype(np.uint8))
    scene = load_scene(root)
    assert scene.details["distortion"] == "removed: k1=-0.3, k2=0.05, p1=0.01, p2=-0.008"
    interior = (slice(3, -3), slice(3, -3))
    restored = scene.images[:, :, :, 0].astype(np.float64)
    assert np.abs(restored - truth)[:, interior[0], interior[1]].max() < 6.0
    assert np.abs(seen - truth)[interior].max() > 40.0  # the lens moves the pattern a lot
    wrong_after = (scene.masks != (mask_truth > 127.5)[None]).mean()
    wrong_before = ((mask_seen > 127.5) != (mask_truth > 127.5)).mean()
    assert wrong_after < 0.005 and wrong_before > 0.02, (wrong_after, wrong_before)
    np.testing.assert_allclose(scene.intrinsics[0], K, atol=1e-12)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _edit_text_model(root: Path, part: str, edit) -> None:
    model_dir = root / "sparse" / "0"
    model = read_model(model_dir)
    for p in model_dir.iterdir():
        p.unlink()
    write_model(model, model_dir, binary=False)
    path = model_dir / f"{part}.txt"
    path.write_text(edit(path.read_text()))


def _set_image_field(text: str, image_id: int, index: int, value: str) -> str:
    """images.txt with field ``index`` of image ``image_id``'s pose line replaced."""
    lines = text.split("\n")
    data = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    row = next(i for i in data[::2] if lines[i].split()[0] == str(image_id))
    tokens = lines[row].split()
    tokens[index] = value
    lines[row] = " ".join(tokens)
    return "\n".join(lines)


def _set_field(text: str, row: int, index: int, value: str) -> str:
    """A text model file with field ``index`` of its data line ``row`` replaced."""
    lines = text.split("\n")
    line = [i for i, item in enumerate(lines) if item and not item.startswith("#")][row]
    tokens = lines[line].split()
    tokens[index] = value
    lines[line] = " ".join(tokens)
    return "\n".join(lines)


def _camera_model_id(root: Path, model_id: int) -> None:
    path = root / "sparse" / "0" / "cameras.bin"
    data = bytearray(path.read_bytes())
    data[12:16] = struct.pack("<i", model_id)
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated_cameras": (lambda r: _truncate(r / "sparse/0/cameras.bin"), ["cameras.bin", "truncated"]),
    "truncated_images": (lambda r: _truncate(r / "sparse/0/images.bin"), ["images.bin", "truncated"]),
    "truncated_points": (lambda r: _truncate(r / "sparse/0/points3D.bin"), ["points3D.bin", "truncated"]),
    "missing_points": (lambda r: (r / "sparse/0/points3D.bin").unlink(), ["unknown capture format"]),
    "unknown_model_id": (lambda r: _camera_model_id(r, 99), ["cameras.bin", "camera 1", "unknown camera model id 99"]),
    "fisheye_model": (lambda r: _camera_model_id(r, 8), ["cameras.bin", "SIMPLE_RADIAL_FISHEYE is not supported"]),
    "unknown_model_name": (lambda r: _edit_text_model(r, "cameras", lambda t: t.replace("PINHOLE", "PINHOLE_X")),
                           ["cameras.txt", "unknown camera model 'PINHOLE_X'"]),
    "wrong_param_count": (lambda r: _edit_text_model(r, "cameras", lambda t: t.rstrip() + " 0.5\n"),
                          ["cameras.txt", "PINHOLE takes 4 parameters, got 5"]),
    "missing_camera": (lambda r: _edit_text_model(r, "images", lambda t: _set_image_field(t, 4, 8, "7")),
                       ["images.txt", "image 4 (000003.png) refers to camera 7"]),
    "nan_pose": (lambda r: _edit_text_model(r, "images", lambda t: _set_image_field(t, 3, 1, "nan")),
                 ["images.txt", "image 3", "non-finite"]),
    "nan_point": (lambda r: _edit_text_model(r, "points3D", lambda t: _set_field(t, 0, 1, "nan")),
                  ["points3D.txt", "point 1 has non-finite coordinates"]),
    "inf_camera": (lambda r: _edit_text_model(r, "cameras", lambda t: _set_field(t, 0, 4, "inf")),
                   ["cameras.txt", "camera 1: non-finite parameters"]),
    "bad_number": (lambda r: _edit_text_model(r, "points3D", lambda t: t.replace("\n1 ", "\n1 x", 1)),
                   ["points3D.txt", "expected numbers"]),
    "camera_size": (lambda r: _edit_text_model(r, "cameras", lambda t: t.replace(" 32 32 ", " 64 32 ")),
                    ["000000.png", "camera 1 in cameras.txt is 64x32"]),
    "odd_image": (lambda r: iio.imwrite(r / "images" / "000004.png", np.zeros((16, 32, 3), np.uint8)),
                  ["000004.png", "32x16"]),
    "no_images": (lambda r: [p.unlink() for p in (r / "images").iterdir()], ["none of the 8 images"]),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_colmap_input_gives_one_line_errors(name: str, colmap_scene_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    root = _copy(colmap_scene_dir, tmp_path)
    corrupt, expected = CORRUPTIONS[name]
    corrupt(root)
    assert_refused(root, expected, capsys)


def test_nan_pose_corruption_hits_the_pose(colmap_scene_dir: Path, tmp_path: Path) -> None:
    """(The edit above must produce a NaN quaternion, not a parse error.)"""
    root = _copy(colmap_scene_dir, tmp_path)
    CORRUPTIONS["nan_pose"][0](root)
    image = read_model(root / "sparse" / "0").images[3]
    assert np.isnan(image.qvec[0])


def test_recon_check_reports_a_colmap_capture(colmap_scene_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", str(colmap_scene_dir)]) == 0
    out = capsys.readouterr().out
    for text in ("format:        colmap", "views:         8\n", "cameras:       1 (PINHOLE)", "distortion:    none",
                 "sparse points: ", "masks:         yes", "normalisation: centre", "from sparse points", "warnings:      none"):
        assert text in out, f"{text!r} not in {out}"
    assert main(["check", str(colmap_scene_dir), "--colmap-sphere", "0.3", "-0.2", "2", "50"]) == 0
    assert "radius 50 world units, from data.colmap_sphere" in capsys.readouterr().out
    assert main(["check", str(colmap_scene_dir), "--colmap-sphere", "0", "0", "0", "-1"]) == 2
    assert "data.colmap_sphere: expects [cx, cy, cz, r] with r > 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the same scene, two layouts

EQUIVALENCE_ITERS = 100
SAME_MESH_BOUND = 0.01
"""Chamfer-L1 between the two fits' meshes, relative to the GT diagonal. The DTU-layout fit's own
seed-to-seed spread at these settings is several times larger (docs/DECISIONS.md, "COLMAP input"):
with the same pixels, cameras and sphere, the two fits may differ by float rounding only."""


def test_fitting_the_colmap_capture_gives_the_dtu_layout_mesh(tiny_scene_dir: Path, colmap_scene_dir: Path,
                                                              tmp_path: Path) -> None:
    from conftest import FAST_FIT
    from recon.mesh import extract_mesh
    from recon.metrics import mesh_metrics
    from recon.run import load_model

    dtu = Path(shutil.copytree(tiny_scene_dir, tmp_path / "dtu", ignore=shutil.ignore_patterns("depth", "normal")))
    tiny = load_scene(dtu)  # no cues, as the COLMAP capture
    sphere = [str(v) for v in (*tiny.scale_mat[:3, 3], tiny.scale_mat[0, 0])]
    settings = [*FAST_FIT, "--iters", str(EQUIVALENCE_ITERS), "--quiet"]
    assert main(["fit", str(dtu), "--out", str(tmp_path / "run_dtu"), *settings]) == 0
    assert main(["fit", str(colmap_scene_dir), "--out", str(tmp_path / "run_colmap"), "--colmap-sphere", *sphere,
                 *settings]) == 0
    models = [load_model(tmp_path / run) for run in ("run_dtu", "run_colmap")]
    np.testing.assert_allclose(models[1].scale_mat, models[0].scale_mat, rtol=0, atol=1e-12)  # same frame first
    meshes = [extract_mesh(m.field.sdf, 48, scale_mat=m.scale_mat) for m in models]
    gt = trimesh.load(tiny_scene_dir / "gt_mesh.ply")
    apart = mesh_metrics(meshes[1], meshes[0], n_points=20_000)["chamfer_l1"] / np.linalg.norm(gt.extents)
    assert apart < SAME_MESH_BOUND, apart
    assert mesh_metrics(meshes[0], gt, n_points=20_000)["chamfer_l1_rel"] < 0.2  # a surface was fitted at all


def test_real_sfm_of_dtu_scan24_gets_the_sphere_idr_drew_by_hand(shared_data_dir: Path, tmp_path: Path) -> None:
    """A real COLMAP model (pycolmap's SIFT + incremental mapping on the 20 staged DTU photographs,
    downscaled 4x): recon reads it, and the sparse points' sphere, carried into DTU's frame by the
    similarity that aligns the camera centres, is IDR's hand-made one (radius 231 mm)."""
    pycolmap = pytest.importorskip("pycolmap")
    source = shared_data_dir / "dtu_scan24_neus"
    if not source.is_dir():
        pytest.skip(f"{source} not found")
    from recon.datasets.resample import downscale_uint8

    root = tmp_path / "scan24"
    (root / "images").mkdir(parents=True)
    for path in sorted((source / "image").glob("*.png")):
        iio.imwrite(root / "images" / path.name, downscale_uint8(iio.imread(path)[..., :3], 4))
    database = tmp_path / "database.db"
    pycolmap.set_random_seed(0)  # and one thread in every stage: the same model every run
    pycolmap.extract_features(database, root / "images", camera_mode=pycolmap.CameraMode.SINGLE,
                              extraction_options=pycolmap.FeatureExtractionOptions(num_threads=1))
    pycolmap.match_exhaustive(database, matching_options=pycolmap.FeatureMatchingOptions(num_threads=1))
    options = pycolmap.IncrementalPipelineOptions(num_threads=1, random_seed=0)  # its first model has 2 views
    models = pycolmap.incremental_mapping(database, root / "images", tmp_path / "sfm", options=options)
    largest = max(models.values(), key=lambda m: m.num_reg_images())
    (root / "sparse" / "0").mkdir(parents=True)
    largest.write(root / "sparse" / "0")
    scene = load_scene(root)
    assert scene.details["cameras"] == "1 (SIMPLE_RADIAL)" and scene.n_images >= 15
    dtu = load_scene(source, downscale=4)
    names = [p.name for p in dtu.image_paths]
    ours = _world_poses(scene)[:, :3, 3]
    theirs = _world_poses(dtu)[[names.index(p.name) for p in scene.image_paths], :3, 3]
    scale, R, t = _similarity(ours, theirs)
    assert np.abs(scale * ours @ R.T + t - theirs).max() < 10.0  # mm: the same cameras
    centre = scale * R @ scene.scale_mat[:3, 3] + t
    assert abs(scale * scene.scale_mat[0, 0] / dtu.scale_mat[0, 0] - 1.0) < 0.15
    assert np.linalg.norm(centre - dtu.scale_mat[:3, 3]) < 0.2 * dtu.scale_mat[0, 0]


def _similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with ``b ~ s R a + t`` for (N, 3) point sets (Umeyama)."""
    ma, mb = a.mean(0), b.mean(0)
    u, sv, vt = np.linalg.svd((b - mb).T @ (a - ma))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    R = u @ d @ vt
    scale = float((sv * np.diag(d)).sum() / ((a - ma) ** 2).sum())
    return scale, R, mb - scale * R @ ma


def test_sphere_config_keys() -> None:
    from recon.config import load_config

    data = load_config(None, ["data.colmap_sphere=[0.3, -0.2, 2, 50]", "data.colmap_sphere_rule=cameras"]).data
    assert data.colmap_sphere == [0.3, -0.2, 2.0, 50.0] and all(isinstance(v, float) for v in data.colmap_sphere)
    assert data.colmap_sphere_rule == "cameras" and load_config().data.colmap_sphere == []
    with pytest.raises(InputError, match="data.colmap_sphere"):
        load_config(None, ["data.colmap_sphere=50"])
    with pytest.raises(InputError, match="data.colmap_sphere"):
        load_config(None, ["data.colmap_sphere=[1, two]"])
    with pytest.raises(InputError, match="must be one of points, cameras"):
        load_config(None, ["data.colmap_sphere_rule=median"])
