"""COLMAP's sparse model files: a reader and a writer of its documented binary and text formats.

A model folder (``sparse/0``) holds ``cameras``, ``images`` and ``points3D``, each as ``.bin``
or ``.txt`` (binary first when both are there, as COLMAP reads them). Newer COLMAP versions
add ``rigs`` and ``frames``; single-camera rigs change nothing recon reads, so they are ignored.

Conventions (COLMAP's): ``qvec`` = (w, x, y, z) and ``tvec`` map world to camera,
``x_cam = R(qvec) x_world + tvec``, OpenCV axes (x right, y down, z forward); image
coordinates put the centre of the top-left pixel at (0.5, 0.5). Binary files are
little-endian (cameras: ``uint64 n``, then ``int32 id, int32 model, uint64 w, h,
float64 params[]``; images: ``uint64 n``, then ``int32 id, float64 qvec[4], tvec[3],
int32 camera_id, name\\0, uint64 m, m x (float64 x, y, int64 point3D_id)``; points3D:
``uint64 n``, then ``uint64 id, float64 xyz[3], uint8 rgb[3], float64 error, uint64 t,
t x (int32 image_id, int32 point2D_idx)``). Every failure is an :class:`InputError`
naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.errors import InputError

CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5), 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4), 16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
"""COLMAP's camera model ids -> (name, number of parameters) (COLMAP 4.0's list: every model reads;
:mod:`recon.datasets.colmap` says which it can use)."""
MODEL_IDS = {name: (model_id, n) for model_id, (name, n) in CAMERA_MODELS.items()}
PARTS = ("cameras", "images", "points3D")
POINT2D = np.dtype([("xy", "<f8", (2,)), ("point3d_id", "<i8")])
POINT_HEAD = struct.Struct("<Q3d3BdQ")  # id, xyz, rgb, error, track length: 51 bytes
TRACK = np.dtype([("image_id", "<i4"), ("point2d_idx", "<i4")])


@dataclass(frozen=True)
class Camera:
    """One intrinsic calibration: ``model`` is COLMAP's name, ``params`` its parameters in order."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass(frozen=True)
class Image:
    """One registered image: world-to-camera ``qvec`` (w, x, y, z) and ``tvec``; its 2D points
    ``xy`` (M, 2) (COLMAP pixel coordinates) and the 3D point each observes (-1: none)."""

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True)
class Points3D:
    """The sparse points as arrays: ids (P,), xyz (P, 3), rgb (P, 3) uint8, error (P,),
    track_lengths (P,) and the tracks one after another, (sum of lengths, 2) int32 of
    (image_id, point2D index)."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    track_lengths: np.ndarray
    tracks: np.ndarray

    @staticmethod
    def empty() -> "Points3D":
        return Points3D(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0),
                        np.zeros(0, np.int64), np.zeros((0, 2), np.int32))

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class Model:
    """A COLMAP sparse model: cameras and images by id, and the points."""

    cameras: dict[int, Camera]
    images: dict[int, Image]
    points: Points3D


def qvec_to_rotation(qvec: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a (w, x, y, z) quaternion (normalised first)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotation_to_qvec(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) unit quaternion of a (3, 3) rotation, w >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    diag = np.diag(R)
    i = int(np.argmax([trace, *diag]))
    if i == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = np.array([0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s])
    else:
        a, b, c = (i - 1), i % 3, (i + 1) % 3
        s = 2.0 * np.sqrt(1.0 + R[a, a] - R[b, b] - R[c, c])
        q = np.zeros(4)
        q[0] = (R[c, b] - R[b, c]) / s
        q[1 + a] = 0.25 * s
        q[1 + b] = (R[b, a] + R[a, b]) / s
        q[1 + c] = (R[c, a] + R[a, c]) / s
    return q if q[0] >= 0 else -q


# ----------------------------------------------------------------------------- reading


def model_files(folder: Path) -> dict[str, Path]:
    """The model's three files (``.bin`` preferred over ``.txt``); InputError when one is missing."""
    found = {}
    for part in PARTS:
        for suffix in (".bin", ".txt"):
            if (folder / f"{part}{suffix}").is_file():
                found[part] = folder / f"{part}{suffix}"
                break
        else:
            raise InputError(folder / f"{part}.bin", f"file does not exist (a COLMAP model needs {part}.bin or .txt)")
    return found


def is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` holds the three files of a COLMAP model."""
    return all(any((folder / f"{p}{s}").is_file() for s in (".bin", ".txt")) for p in PARTS)


def read_model(folder: str | Path) -> Model:
    """Read the COLMAP model in ``folder`` (binary or text, file by file)."""
    paths = model_files(Path(folder))
    readers = {".bin": (read_cameras_bin, read_images_bin, read_points_bin),
               ".txt": (read_cameras_txt, read_images_txt, read_points_txt)}
    cameras = readers[paths["cameras"].suffix][0](paths["cameras"])
    images = readers[paths["images"].suffix][1](paths["images"])
    points = readers[paths["points3D"].suffix][2](paths["points3D"])
    return Model(cameras, images, points)


class _Buffer:
    """Sequential little-endian reads from a file's bytes; running off the end names the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.offset = 0

    def unpack(self, fmt: struct.Struct | str) -> tuple:
        st = fmt if isinstance(fmt, struct.Struct) else struct.Struct("<" + fmt)
        if self.offset + st.size > len(self.data):
            self.truncated()
        values = st.unpack_from(self.data, self.offset)
        self.offset += st.size
        return values

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.offset + size > len(self.data):
            self.truncated()
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += size
        return out

    def string(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            self.truncated()
        text = self.data[self.offset:end].decode("utf-8", errors="replace")
        self.offset = end + 1
        return text

    def truncated(self) -> None:
        raise InputError(self.path, f"truncated or corrupt COLMAP binary file (ends at byte {len(self.data)}, "
                         f"reading at {self.offset})")

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise InputError(self.path, f"{len(self.data) - self.offset} unexpected bytes after the last record")


def _camera(path: Path, camera_id: int, model: str, width: int, height: int, params: list[float] | np.ndarray) -> Camera:
    if model not in MODEL_IDS:
        raise InputError(path, f"camera {camera_id}: unknown camera model {model!r}")
    params = np.asarray(params, dtype=np.float64)
    if params.shape != (MODEL_IDS[model][1],):
        raise InputError(path, f"camera {camera_id}: {model} takes {MODEL_IDS[model][1]} parameters, got {params.size}")
    if width <= 0 or height <= 0:
        raise InputError(path, f"camera {camera_id}: size {width}x{height} must be positive")
    return Camera(camera_id, model, int(width), int(height), params)


def read_cameras_bin(path: Path) -> dict[int, Camera]:
    buf = _Buffer(path)
    (count,) = buf.unpack("Q")
    cameras = {}
    for _ in range(count):
        camera_id, model_id, width, height = buf.unpack("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise InputError(path, f"camera {camera_id}: unknown camera model id {model_id}")
        name, n_params = CAMERA_MODELS[model_id]
        cameras[camera_id] = _camera(path, camera_id, name, width, height, buf.array("<f8", n_params))
    buf.finish()
    return cameras


def read_images_bin(path: Path) -> dict[int, Image]:
    buf = _Buffer(path)
    (count,) = buf.unpack("Q")
    images = {}
    for _ in range(count):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = buf.unpack("i7di")
        name = buf.string()
        (m,) = buf.unpack("Q")
        points = buf.array(POINT2D, m)
        images[image_id] = Image(image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), camera_id, name,
                                 points["xy"].copy(), points["point3d_id"].copy())
    buf.finish()
    return images


def read_points_bin(path: Path) -> Points3D:
    """The points' fixed fields are gathered with numpy once each record's start is known."""
    buf = _Buffer(path)
    (count,) = buf.unpack("Q")
    starts = np.empty(count, np.int64)
    lengths = np.empty(count, np.int64)
    data, offset, head = buf.data, buf.offset, POINT_HEAD.size
    track_length = struct.Struct("<Q").unpack_from
    size = len(data)
    for i in range(count):
        if offset + head > size:
            buf.offset = offset
            buf.truncated()
        starts[i] = offset
        (n,) = track_length(data, offset + head - 8)
        lengths[i] = n
        offset += head + 8 * n
    buf.offset = offset
    if offset > len(data):
        buf.truncated()
    buf.finish()
    raw = np.frombuffer(data, np.uint8)
    heads = raw[starts[:, None] + np.arange(head)]  # (P, 51)
    fields = np.dtype([("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("n", "<u8")])
    rec = np.ascontiguousarray(heads).view(fields).reshape(-1)
    track_index = (np.repeat(starts + head, lengths) + 8 * (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)))
    tracks = raw[track_index[:, None] + np.arange(8)].copy().view("<i4").reshape(-1, 2)
    return Points3D(rec["id"].astype(np.int64), rec["xyz"].copy(), rec["rgb"].copy(), rec["error"].copy(),
                    lengths, tracks.astype(np.int32))


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the data lines (comments dropped; blank lines kept for images.txt)."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a text file ({exc.reason})") from None
    return [(n, line.strip()) for n, line in enumerate(lines, start=1) if not line.startswith("#")]


def _numbers(path: Path, line_no: int, tokens: list[str], kind: type) -> list:
    try:
        return [kind(t) for t in tokens]
    except ValueError:
        raise InputError(path, f"line {line_no}: expected numbers, got {' '.join(tokens)!r}") from None


def read_cameras_txt(path: Path) -> dict[int, Camera]:
    cameras = {}
    for n, line in _text_lines(path):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 4:
            raise InputError(path, f"line {n}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
        camera_id, width, height = _numbers(path, n, [tokens[0], tokens[2], tokens[3]], int)
        cameras[camera_id] = _camera(path, camera_id, tokens[1], width, height, _numbers(path, n, tokens[4:], float))
    return cameras


def read_images_txt(path: Path) -> dict[int, Image]:
    lines = _text_lines(path)
    while lines and not lines[-1][1]:
        lines.pop()
    images = {}
    for k in range(0, len(lines), 2):
        n, line = lines[k]
        tokens = line.split(maxsplit=9)
        if len(tokens) < 10:
            raise InputError(path, f"line {n}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        image_id = _numbers(path, n, tokens[:1], int)[0]
        pose = _numbers(path, n, tokens[1:8], float)
        camera_id = _numbers(path, n, tokens[8:9], int)[0]
        n2, points_line = lines[k + 1] if k + 1 < len(lines) else (n + 1, "")
        values = points_line.split()
        if len(values) % 3:
            raise InputError(path, f"line {n2}: POINTS2D must be triples (X, Y, POINT3D_ID)")
        xy = _array(path, values, np.float64).reshape(-1, 3)
        images[image_id] = Image(image_id, np.array(pose[:4]), np.array(pose[4:]), camera_id, tokens[9],
                                 xy[:, :2].copy(), xy[:, 2].astype(np.int64))
    return images


def read_points_txt(path: Path) -> Points3D:
    """Tokens are gathered line by line and converted by numpy at once (4x faster than per value)."""
    heads: list[list[str]] = []
    tracks: list[str] = []
    lengths: list[int] = []
    for n, line in _text_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise InputError(path, f"line {n}: expected POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID, POINT2D_IDX)")
        heads.append(tokens[:8])
        tracks.extend(tokens[8:])
        lengths.append((len(tokens) - 8) // 2)
    if not heads:
        return Points3D.empty()
    head = _array(path, heads, np.float64)
    track = _array(path, tracks, np.int64).reshape(-1, 2)
    if not (np.all(head[:, 0] == np.round(head[:, 0])) and np.all((head[:, 4:7] >= 0) & (head[:, 4:7] <= 255))):
        raise InputError(path, "point ids must be integers and colours 0..255")
    return Points3D(head[:, 0].astype(np.int64), head[:, 1:4].copy(), head[:, 4:7].astype(np.uint8), head[:, 7].copy(),
                    np.array(lengths, np.int64), track.astype(np.int32))


def _array(path: Path, tokens: list, dtype: type) -> np.ndarray:
    """numpy's conversion of many number tokens; a bad one is found and named (slow path)."""
    try:
        return np.array(tokens, dtype=dtype)
    except ValueError:
        flat = [t for row in tokens for t in (row if isinstance(row, list) else [row])]
        bad = next(t for t in flat if not _is_number(t, dtype))
        raise InputError(path, f"expected numbers, got {bad!r}") from None


def _is_number(token: str, dtype: type) -> bool:
    try:
        dtype(token) if dtype is not np.int64 else int(token)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------- writing


def write_model(model: Model, folder: str | Path, binary: bool = True) -> None:
    """Write ``model`` into ``folder`` (created) as ``.bin`` or ``.txt`` files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        (folder / "cameras.bin").write_bytes(_cameras_bin(model.cameras))
        (folder / "images.bin").write_bytes(_images_bin(model.images))
        (folder / "points3D.bin").write_bytes(_points_bin(model.points))
    else:
        (folder / "cameras.txt").write_text(_cameras_txt(model.cameras))
        (folder / "images.txt").write_text(_images_txt(model.images))
        (folder / "points3D.txt").write_text(_points_txt(model.points))


def _cameras_bin(cameras: dict[int, Camera]) -> bytes:
    out = [struct.pack("<Q", len(cameras))]
    for cam in cameras.values():
        out.append(struct.pack("<iiQQ", cam.id, MODEL_IDS[cam.model][0], cam.width, cam.height))
        out.append(np.asarray(cam.params, "<f8").tobytes())
    return b"".join(out)


def _images_bin(images: dict[int, Image]) -> bytes:
    out = [struct.pack("<Q", len(images))]
    for im in images.values():
        out.append(struct.pack("<i7di", im.id, *im.qvec, *im.tvec, im.camera_id))
        out.append(im.name.encode() + b"\0")
        points = np.zeros(len(im.xy), POINT2D)
        points["xy"], points["point3d_id"] = im.xy, im.point3d_ids
        out.append(struct.pack("<Q", len(points)) + points.tobytes())
    return b"".join(out)


def _points_bin(points: Points3D) -> bytes:
    out = [struct.pack("<Q", len(points))]
    ends = np.cumsum(points.track_lengths)
    for i in range(len(points)):
        out.append(POINT_HEAD.pack(int(points.ids[i]), *points.xyz[i], *points.rgb[i], float(points.error[i]),
                                   int(points.track_lengths[i])))
        out.append(np.asarray(points.tracks[ends[i] - points.track_lengths[i]:ends[i]], "<i4").tobytes())
    return b"".join(out)


def _cameras_txt(cameras: dict[int, Camera]) -> str:
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [" ".join([str(c.id), c.model, str(c.width), str(c.height), *map(repr, map(float, c.params))])
              for c in cameras.values()]
    return "\n".join(lines) + "\n"


def _images_txt(images: dict[int, Image]) -> str:
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for im in images.values():
        lines.append(" ".join([str(im.id), *map(repr, map(float, im.qvec)), *map(repr, map(float, im.tvec)),
                               str(im.camera_id), im.name]))
        lines.append(" ".join(f"{x!r} {y!r} {int(p)}" for (x, y), p in zip(im.xy.tolist(), im.point3d_ids)))
    return "\n".join(lines) + "\n"


def _points_txt(points: Points3D) -> str:
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    ends = np.cumsum(points.track_lengths)
    for i in range(len(points)):
        track = points.tracks[ends[i] - points.track_lengths[i]:ends[i]].reshape(-1)
        lines.append(" ".join([str(int(points.ids[i])), *map(repr, points.xyz[i].tolist()),
                               *map(str, points.rgb[i].tolist()), repr(float(points.error[i])), *map(str, track.tolist())]))
    return "\n".join(lines) + "\n"
