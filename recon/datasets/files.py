"""Reading the files of a capture: image headers, decoding, cue arrays, one uint8 copy of the pixels.

Every failure raises :class:`InputError` naming the file and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from recon.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def natural_key(path: Path) -> list[int | str]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes`` (any case), in natural order."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes]
    return sorted(files, key=natural_key)


def check_numbering(paths: Sequence[Path], stem_of: Callable[[Path], str], pairs_with: str) -> None:
    """When every name is a number, the numbers must run on without a gap from 0 (or 1): a gap
    means a deleted file, which would silently pair every later file with the wrong ``pairs_with``."""
    stems = [stem_of(p) for p in paths]
    if not all(stem.isdigit() for stem in stems):
        return
    first = min(int(stems[0]), 1)
    for expected, (stem, path) in enumerate(zip(stems, paths), start=first):
        if int(stem) != expected:
            missing = path.with_name(path.name.replace(stem, f"{expected:0{len(stem)}d}", 1))
            raise InputError(missing, f"file does not exist: the files are numbered from {first} and pair with "
                             f"{pairs_with} by position, but number {expected} is missing")


def check_data_dir(root: Path) -> None:
    """Raise unless ``root`` is an existing directory."""
    if not root.exists():
        raise InputError(root, "data directory does not exist")
    if not root.is_dir():
        raise InputError(root, "data path is not a directory")


def reason(exc: Exception) -> str:
    """One-line description of a library error."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def check_not_empty(path: Path) -> None:
    """``InputError`` when ``path`` is a file of 0 bytes (readers' own messages for it mislead)."""
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")


def image_shape(path: Path) -> tuple[int, ...]:
    """(H, W[, C]) from the file header, without decoding the pixels."""
    if not path.is_file():
        raise InputError(path, "image file does not exist")
    check_not_empty(path)
    try:
        return tuple(iio.improps(path).shape)
    except Exception as exc:
        raise InputError(path, f"cannot read image ({reason(exc)})") from exc


def size_text(shape: Sequence[int]) -> str:
    """``WxH`` of an (H, W, ...) shape."""
    return f"{shape[1]}x{shape[0]}"


def check_same_size(paths: Sequence[Path], what: str = "image") -> tuple[int, int]:
    """(H, W) shared by all ``paths``, read from the file headers."""
    first = image_shape(paths[0])[:2]
    for path in paths[1:]:
        shape = image_shape(path)[:2]
        if shape != first:
            raise InputError(
                path,
                f"{what} is {size_text(shape)} (WxH) but {paths[0].name} is {size_text(first)}; "
                f"all {what}s must have the same size",
            )
    return first


def check_sizes(paths: Sequence[Path], size: tuple[int, int], what: str) -> None:
    """Raise unless every file in ``paths`` is ``size`` = (H, W)."""
    for path in paths:
        shape = image_shape(path)[:2]
        if shape != size:
            raise InputError(path, f"{what} is {size_text(shape)} (WxH) but the images are {size_text(size)}")


def decode(path: Path) -> np.ndarray:
    """The decoded pixels of an image file (Pillow directly: half imageio's time on a JPEG)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F"):
                image = image.convert("RGB")
            return np.asarray(image)
    except Exception as exc:
        raise InputError(path, f"cannot decode image, corrupt or truncated ({reason(exc)})") from exc


def to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 pixels from uint8, uint16, bool or float-in-[0, 255] arrays."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    return np.clip(array.astype(np.float32), 0, 255).astype(np.uint8)


def channels_last(image: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, C) view of a decoded (H, W) or (H, W, C) image."""
    if image.ndim == 2:
        return image[..., None]
    if image.ndim != 3 or image.shape[2] > 4:
        raise InputError(path, f"unexpected image array shape {image.shape}")
    return image


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8: alpha dropped, grey replicated."""
    image = channels_last(to_uint8(decode(path)), path)
    if image.shape[2] in (1, 2):  # grey, or grey + alpha
        return np.repeat(image[..., :1], 3, axis=2)
    return image[..., :3]


def read_rgba(path: Path) -> np.ndarray:
    """(H, W, 4) uint8; an image without alpha gets an opaque one."""
    image = channels_last(to_uint8(decode(path)), path)
    if image.shape[2] in (1, 2):
        alpha = image[..., 1:2] if image.shape[2] == 2 else np.full_like(image[..., :1], 255)
        return np.concatenate([np.repeat(image[..., :1], 3, axis=2), alpha], axis=2)
    if image.shape[2] == 3:
        return np.concatenate([image, np.full_like(image[..., :1], 255)], axis=2)
    return image


def read_mask_values(path: Path) -> np.ndarray:
    """(H, W) uint8 of the mask image's first channel (foreground > 127)."""
    mask = to_uint8(decode(path))
    return mask if mask.ndim == 2 else mask[..., 0]


def read_array(path: Path) -> np.ndarray:
    """A ``.npy`` array (no pickles)."""
    check_array_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(path, f"cannot read array ({reason(exc)})") from exc


def array_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` file from its header (memory-mapped, nothing read)."""
    check_array_file(path)
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except Exception as exc:
        raise InputError(path, f"cannot read array ({reason(exc)})") from exc


NPY_MAGIC = b"\x93NUMPY"


def check_array_file(path: Path) -> None:
    """``InputError`` unless ``path`` is a ``.npy`` file of numbers (not missing, empty, another
    format, or an array of Python objects)."""
    if not path.is_file():
        raise InputError(path, "file does not exist")
    check_not_empty(path)
    with path.open("rb") as handle:
        if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise InputError(path, "not a NumPy .npy file (no .npy header)")
        handle.seek(0)
        try:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
        except Exception as exc:
            raise InputError(path, f"not a readable .npy file, truncated or corrupt header ({reason(exc)})") from None
        data_start = handle.tell()
    if dtype.hasobject:
        raise InputError(path, "holds Python objects, not numbers (refused, not loaded)")
    if dtype.kind not in "biuf":
        raise InputError(path, f"holds {dtype} values, not numbers")
    needed = data_start + dtype.itemsize * int(np.prod(shape))
    if path.stat().st_size < needed:
        raise InputError(path, f"truncated: {path.stat().st_size} bytes, its header promises {needed}")


def fill_parallel(out: np.ndarray, items: Sequence[object], read: Callable[[object], np.ndarray]) -> np.ndarray:
    """Write ``read(items[i])`` into ``out[i]`` with a few threads; ``out`` is the only full-size copy."""

    def one(i: int) -> None:
        value = read(items[i])
        if value.shape != out.shape[1:]:
            raise InputError(str(items[i]), f"decoded to shape {value.shape}, expected {out.shape[1:]}")
        out[i] = value

    with ThreadPoolExecutor(max_workers=max(1, min(4, len(items)))) as pool:
        list(pool.map(one, range(len(items))))
    return out
