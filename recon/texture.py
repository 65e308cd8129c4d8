"""Texture atlases: a UV unwrap (xatlas), texels -> surface points, baking, seam padding, lookups.

Conventions (OBJ's and trimesh's): ``uv`` in [0, 1]^2, ``v`` up. A texture image (H, W, C) has
row 0 at the top (v = 1); texel ``(row, col)`` has its centre at
``u = (col + 0.5) / W``, ``v = 1 - (row + 0.5) / H``, as OpenGL samples a texture. glTF's ``v``
points down; trimesh flips it when it writes a GLB.

Nothing here knows about fields: :func:`bake_texture` takes a colour function of surface points.
xatlas (the ``texture`` extra) is imported only by :func:`unwrap`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from recon.errors import InputError
from recon.optional import require

PADDING_TEXELS = 2
"""Empty texels xatlas leaves between charts, so a bilinear lookup at a chart's edge reads its own chart."""
DILATE_TEXELS = 4
"""Texels beyond each chart's edge that baking fills with the colour of the nearest texel inside it
(more than the gap between charts, so the gap is filled from both sides; mip-mapping viewers then
blur no black into the seams)."""
RASTER_CHUNK = 4_000_000
"""Most candidate texels tested against their triangles at once (memory bound of the rasteriser)."""


@dataclass
class UVAtlas:
    """A mesh cut into charts and laid out in a texture.

    Attributes:
        vmapping: (V',) index of the input vertex each atlas vertex copies (vertices on a seam are
            duplicated, one copy per chart).
        faces: (F, 3) the input faces, re-indexed into the atlas vertices (same order).
        uv: (V', 2) texture coordinates in [0, 1], v up.
        width, height: texture size in texels that the layout was packed for.
    """

    vmapping: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    width: int
    height: int


def require_xatlas(size: int):
    """The xatlas module, for a texture of ``size`` texels a side: ``InputError`` when the size is below
    16, ``MissingDependencyError`` naming the extra when xatlas is not installed."""
    if size < 16:
        raise InputError("--texture-size", f"must be at least 16, got {size}")
    return require("xatlas")


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int) -> UVAtlas:
    """UV-unwrap a mesh with xatlas into one texture of about ``size`` x ``size`` texels.

    xatlas chooses the texel density so that the charts fill one atlas of roughly that size
    (the atlas may come out a few percent larger: its reported size is kept), with
    ``PADDING_TEXELS`` between charts. Cost grows with the face count: about 20 s for 20k faces
    and minutes for 100k on a 2-core machine.
    """
    xatlas = require_xatlas(size)
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = PADDING_TEXELS
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise InputError("--texture-size", f"xatlas needed {atlas.atlas_count} textures for this mesh; raise it")
    vmapping, atlas_faces, uv = atlas.get_mesh(0)
    return UVAtlas(vmapping.astype(np.int64), atlas_faces.astype(np.int64), uv.astype(np.float64),
                   int(atlas.width), int(atlas.height))


def uv_to_pixels(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 2) uv -> (N, 2) continuous (x, y) texel coordinates, texel centres at integers (x right, y down)."""
    return np.stack([uv[:, 0] * width - 0.5, (1.0 - uv[:, 1]) * height - 0.5], axis=1)


@dataclass
class Texels:
    """The texels whose centres lie inside a UV triangle.

    Attributes:
        rows, cols: (T,) texel indices; each texel appears once.
        face: (T,) the face that covers it (on a shared edge, the first such face).
        bary: (T, 3) barycentric weights of the texel centre in that face.
    """

    rows: np.ndarray
    cols: np.ndarray
    face: np.ndarray
    bary: np.ndarray


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, width: int, height: int) -> Texels:
    """The texels of a ``width`` x ``height`` texture covered by the UV triangles ``uv[faces]``.

    A texel belongs to a triangle when its centre lies inside it or on its edge (edge functions,
    tolerance 1e-9 of the triangle's doubled area). Triangles of zero UV area cover nothing.
    """
    corners = uv_to_pixels(np.asarray(uv, dtype=np.float64), width, height)[np.asarray(faces)]  # (F, 3, 2)
    lo = np.clip(np.ceil(corners.min(axis=1)), 0, [width, height]).astype(np.int64)
    hi = np.clip(np.floor(corners.max(axis=1)), -1, [width - 1, height - 1]).astype(np.int64)
    count = np.maximum(hi - lo + 1, 0)
    n_candidates = count[:, 0] * count[:, 1]
    found = [_covered(corners, lo, count, n_candidates, run) for run in _face_chunks(n_candidates)]
    if not found:
        return Texels(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)))
    rows, cols, face, bary = (np.concatenate(parts) for parts in zip(*found))
    _, first = np.unique(rows * width + cols, return_index=True)
    return Texels(rows[first], cols[first], face[first], bary[first])


def _face_chunks(n_candidates: np.ndarray) -> list[np.ndarray]:
    """Face indices in consecutive runs of about ``RASTER_CHUNK`` candidate texels each."""
    total = int(n_candidates.sum())
    cuts = np.searchsorted(np.cumsum(n_candidates), np.arange(RASTER_CHUNK, total, RASTER_CHUNK))
    return [run for run in np.split(np.arange(len(n_candidates)), np.unique(cuts)) if len(run)]


def _covered(corners: np.ndarray, lo: np.ndarray, count: np.ndarray, n_candidates: np.ndarray,
             faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, cols, faces and barycentrics of the candidate texels of ``faces`` that their triangle covers."""
    per_face = n_candidates[faces]
    face = np.repeat(faces, per_face)
    local = np.arange(len(face)) - np.repeat(np.cumsum(per_face) - per_face, per_face)
    cols = lo[face, 0] + local % count[face, 0]
    rows = lo[face, 1] + local // count[face, 0]
    a, b, c = corners[face, 0], corners[face, 1], corners[face, 2]
    p = np.stack([cols, rows], axis=1).astype(np.float64)
    area = _cross(b - a, c - a)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.stack([_cross(c - b, p - b), _cross(a - c, p - c), _cross(b - a, p - a)], axis=1) / area[:, None]
    inside = (area != 0) & np.all(w >= -1e-9, axis=1)
    return rows[inside], cols[inside], face[inside], np.clip(w[inside], 0.0, 1.0)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z of the 2D cross product of (N, 2) vectors."""
    return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]


def dilate(image: np.ndarray, filled: np.ndarray, texels: int = DILATE_TEXELS) -> np.ndarray:
    """Copy into each empty texel within ``texels`` of a filled one the value of the nearest filled
    texel; texels farther away get the mean of the filled ones. ``image`` (H, W, C), ``filled`` (H, W)."""
    out = image.copy()
    if not filled.any():
        return out
    distance, (near_rows, near_cols) = ndimage.distance_transform_edt(~filled, return_indices=True)
    grow = ~filled & (distance <= texels)
    out[grow] = image[near_rows[grow], near_cols[grow]]
    out[~filled & ~grow] = image[filled].mean(axis=0)
    return out


def bake_texture(color_fn: Callable[[np.ndarray], np.ndarray], vertices: np.ndarray, atlas: UVAtlas,
                 chunk: int = 262_144) -> np.ndarray:
    """A texture (H, W, 3) float in [0, 1]: each covered texel is ``color_fn`` at the surface point
    its centre maps to (barycentric interpolation of ``vertices`` (V, 3), the input mesh's), then
    ``dilate`` pads every chart.

    ``color_fn``: (N, 3) points -> (N, 3) colours, called with at most ``chunk`` points.
    """
    texels = rasterize_uv(atlas.uv, atlas.faces, atlas.width, atlas.height)
    corners = np.asarray(vertices, dtype=np.float64)[atlas.vmapping[atlas.faces[texels.face]]]  # (T, 3, 3)
    points = np.einsum("tk,tkc->tc", texels.bary, corners)
    colors = np.concatenate([color_fn(points[i : i + chunk]) for i in range(0, len(points), chunk)]) \
        if len(points) else np.zeros((0, 3))
    image = np.zeros((atlas.height, atlas.width, 3))
    image[texels.rows, texels.cols] = colors
    filled = np.zeros((atlas.height, atlas.width), dtype=bool)
    filled[texels.rows, texels.cols] = True
    return dilate(image, filled)


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``image`` (H, W, C) at ``uv`` (N, 2) -> (N, C), edges clamped (OpenGL's
    ``GL_LINEAR`` with ``CLAMP_TO_EDGE``)."""
    height, width = image.shape[:2]
    xy = uv_to_pixels(np.asarray(uv, dtype=np.float64).reshape(-1, 2), width, height)
    x = np.clip(xy[:, 0], 0.0, width - 1.0)
    y = np.clip(xy[:, 1], 0.0, height - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2) if width > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2) if height > 1 else np.zeros(len(y), np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
