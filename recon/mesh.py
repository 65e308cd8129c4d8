"""SDF -> triangle mesh: block-wise, coarse-to-fine marching cubes.

Coordinates: the SDF is queried in the scene's *normalised* frame (the unit
sphere of ``recon.datasets``). The grid spans ``[bbox_min, bbox_max]`` in that
frame with ``resolution`` vertices per axis; grid axis 0/1/2 is x/y/z. Output
vertices are mapped to world units by ``world = scale_mat @ [x, 1]``.

The grid is cut into blocks of ``block_size`` cells per axis (``block_size + 1``
vertices; neighbours share a face of vertices). Coarse-to-fine: a coarse grid
(every ``COARSE_STRIDE``-th vertex) is evaluated first; a coarse cell is
"near" when a corner is within a margin of the level or its corners change
sign. Only fine vertices of near cells are evaluated; the others get a fill of
the right sign, and blocks without near cells are skipped. Marching cubes runs
per block and the pieces are welded, so the mesh equals one dense
marching-cubes pass whenever the field varies by less than the margin over
half a coarse diagonal (true for any field up to ~4-Lipschitz).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes
from tqdm import tqdm

from recon.errors import InputError
from recon.io import atomic_path, check_output_file

SdfFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps points ``(M, 3)`` float32 (normalised frame, CPU) to SDF ``(M,)``, negative inside."""

COARSE_STRIDE = 4
"""Fine cells per coarse cell (the coarse grid has ~resolution/4 vertices per axis)."""

MARGIN_DIAGONALS = 2.0
"""A coarse cell is refined when a corner's |sdf - level| is below this many coarse cell diagonals.

An exact SDF needs only half a diagonal; the factor 4 over that tolerates fields
that are up to ~4-Lipschitz (learned SDFs are not exactly distances)."""

MESH_FORMATS = (".ply", ".obj", ".glb")
TEXTURED_FORMATS = (".obj", ".glb")


def empty_mesh() -> trimesh.Trimesh:
    """A mesh with no vertices and no faces."""
    return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64), process=False)


def _grid_axes(
    resolution: int, bbox_min: Sequence[float], bbox_max: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Origin ``(3,)`` and cell size ``(3,)`` of a grid of ``resolution`` vertices per axis."""
    lo = np.asarray(bbox_min, dtype=np.float64).reshape(3)
    hi = np.asarray(bbox_max, dtype=np.float64).reshape(3)
    if np.any(hi <= lo):
        raise ValueError(f"bbox_max {hi.tolist()} must exceed bbox_min {lo.tolist()} on every axis")
    return lo, (hi - lo) / (resolution - 1)


def _evaluate(sdf_fn: SdfFn, points: np.ndarray, chunk: int) -> np.ndarray:
    """SDF at ``points`` ``(M, 3)`` -> ``(M,)`` float32, without autograd, ``chunk`` points per call."""
    out = np.empty(len(points), dtype=np.float32)
    for i in range(0, len(points), chunk):
        part = points[i : i + chunk]
        with torch.no_grad():
            values = sdf_fn(torch.from_numpy(part.astype(np.float32)))
        values = torch.as_tensor(values).detach().reshape(-1)
        if values.numel() != len(part):
            raise ValueError(f"sdf_fn returned {values.numel()} values for {len(part)} points; expected shape (M,)")
        out[i : i + chunk] = values.to("cpu", torch.float32).numpy()
    return out


def _lattice(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, origin: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Points ``(len(ix) * len(iy) * len(iz), 3)`` at integer grid indices, x slowest."""
    gx, gy, gz = np.meshgrid(ix, iy, iz, indexing="ij")
    idx = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
    return origin + idx * cell


def _block_starts(resolution: int, block_size: int) -> np.ndarray:
    """First vertex index of each block along one axis (a block spans ``block_size`` cells)."""
    return np.arange(0, resolution - 1, block_size)


def _coarse_indices(resolution: int) -> np.ndarray:
    """Fine indices of the coarse vertices along one axis: every stride-th, plus the last."""
    idx = np.arange(0, resolution, COARSE_STRIDE)
    return idx if idx[-1] == resolution - 1 else np.append(idx, resolution - 1)


@dataclass
class _Coarse:
    """Coarse lattice and which of its cells the surface may cross."""

    idx: np.ndarray
    """Fine indices of the coarse vertices along each axis ``(C,)``."""
    values: np.ndarray
    """SDF at the coarse vertices ``(C, C, C)``."""
    near: np.ndarray
    """Coarse cells ``(C-1, C-1, C-1)`` to evaluate at full resolution."""
    margin: float
    """|sdf - level| below which a coarse corner marks its cells as near."""


def _coarse_grid(sdf_fn: SdfFn, resolution: int, origin: np.ndarray, cell: np.ndarray, level: float,
                 chunk: int, progress: bool) -> _Coarse:
    """Evaluate the coarse lattice (in x-slabs of about ``chunk`` points) and mark near cells.

    A coarse cell is near when one of its corners is within ``margin`` of the
    level or its corners differ in sign; a fine vertex outside every near cell
    is then at least ``margin - L * half a coarse diagonal`` from the level.
    """
    idx = _coarse_indices(resolution)
    n = len(idx)
    values = np.empty((n, n, n), dtype=np.float32)
    step = max(1, chunk // (n * n))
    for i in tqdm(range(0, n, step), desc="coarse sdf", disable=not progress, leave=False):
        pts = _lattice(idx[i : i + step], idx, idx, origin, cell)
        values[i : i + step] = _evaluate(sdf_fn, pts, chunk).reshape(-1, n, n)
    margin = MARGIN_DIAGONALS * float(np.linalg.norm(cell * COARSE_STRIDE))
    d = values - level
    corners = [d[a : n - 1 + a, b : n - 1 + b, c : n - 1 + c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    lo = np.minimum.reduce(corners)
    hi = np.maximum.reduce(corners)
    near = (np.minimum.reduce([np.abs(x) for x in corners]) <= margin) | ((lo < 0) & (hi > 0))
    return _Coarse(idx, values, near, margin)


def _take3(grid: np.ndarray, ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """``grid[np.ix_(ix, iy, iz)]`` as three cheaper takes."""
    return grid.take(ix, axis=0).take(iy, axis=1).take(iz, axis=2)


def _block_need(coarse: _Coarse, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Which fine vertices ``start..stop`` (inclusive) touch a near coarse cell ``(a, b, c)``, and their fill.

    A fine cell inherits ``near`` from the coarse cell holding it; a vertex is
    needed when one of its (up to 8) fine cells is. The fill of the others is
    the coarse value at the lower corner of their coarse cell: its sign is
    right for every vertex outside the near cells. ``(None, None)``: none needed.
    """
    cells = [np.searchsorted(coarse.idx, np.arange(start[a], stop[a]), side="right") - 1 for a in range(3)]
    if not coarse.near[tuple(slice(c[0], c[-1] + 1) for c in cells)].any():
        return None, None
    near = _take3(coarse.near, *cells)
    need = np.zeros([n + 1 for n in near.shape], dtype=bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                need[dx : dx + near.shape[0], dy : dy + near.shape[1], dz : dz + near.shape[2]] |= near
    last = len(coarse.idx) - 2
    verts = [np.minimum(np.searchsorted(coarse.idx, np.arange(start[a], stop[a] + 1), side="right") - 1, last)
             for a in range(3)]
    return need, _take3(coarse.values, *verts)


def _fine_block(sdf_fn: SdfFn, start: np.ndarray, stop: np.ndarray, origin: np.ndarray, cell: np.ndarray,
                level: float, coarse: _Coarse | None, chunk: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """SDF on the fine vertices ``start..stop`` (inclusive) ``(a, b, c)`` and the mask evaluated.

    With a coarse grid only vertices in near coarse cells are evaluated; the
    others get ``level +- margin`` with the coarse sign. ``(None, None)`` when
    no vertex of the block is needed.
    """
    axes = [np.arange(start[a], stop[a] + 1) for a in range(3)]
    shape = [len(ax) for ax in axes]
    if coarse is None:
        return _evaluate(sdf_fn, _lattice(*axes, origin, cell), chunk).reshape(shape), None
    need, sign = _block_need(coarse, start, stop)
    if need is None:
        return None, None
    values = np.where(sign > level, level + coarse.margin, level - coarse.margin).astype(np.float32)
    idx = np.argwhere(need) + start
    values[need] = _evaluate(sdf_fn, origin + idx * cell, chunk)
    return values, need


def _march_block(values: np.ndarray, level: float, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on one block ``(a, b, c)`` -> verts ``(V, 3)`` in index units, faces ``(F, 3)``.

    Faces wind counter-clockwise seen from the side of larger SDF, so normals
    point outwards for a negative-inside SDF. ``mask`` limits the cells visited.
    """
    if min(values.shape) < 2 or not (values.min() < level < values.max()):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, _, _ = marching_cubes(values, level=level, mask=mask)
    return verts.astype(np.float64), faces.astype(np.int64)


def _iter_blocks(resolution: int, block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Inclusive vertex ranges ``(start (3,), stop (3,))`` of every block."""
    starts = _block_starts(resolution, block_size)
    for sx in starts:
        for sy in starts:
            for sz in starts:
                start = np.array([sx, sy, sz])
                yield start, np.minimum(start + block_size, resolution - 1)


def _weld(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices ``(V, 3)`` (index units) equal up to 1e-6 cell; drop faces that collapse.

    Copies come from neighbouring blocks (their shared face) and from grid
    vertices where the SDF equals the level (one copy per edge).
    """
    if len(verts) == 0:
        return verts, faces
    keys = np.round(verts * 1e6).astype(np.int64)
    order = np.lexsort(keys.T[::-1])
    sorted_keys = keys[order]
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    faces = inverse[faces]
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return verts[order[starts]], faces[ok]


def _to_world(verts_idx: np.ndarray, origin: np.ndarray, cell: np.ndarray,
              scale_mat: np.ndarray | None) -> np.ndarray:
    """Index-space verts ``(V, 3)`` -> normalised -> world (``scale_mat @ [x, 1]``)."""
    x = origin + verts_idx * cell
    if scale_mat is None:
        return x
    m = np.asarray(scale_mat, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"scale_mat must have shape (4, 4), got {m.shape}")
    return x @ m[:3, :3].T + m[:3, 3]


def keep_largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected piece (through shared vertices) with the most faces."""
    if len(mesh.faces) == 0:
        return mesh
    f = mesh.faces
    n = len(mesh.vertices)
    rows = np.concatenate([f[:, 0], f[:, 1]])
    cols = np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_label = labels[f[:, 0]]
    biggest = np.bincount(face_label).argmax()
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=f[face_label == biggest], process=False)
    out.remove_unreferenced_vertices()
    return out


def extract_mesh(
    sdf_fn: SdfFn,
    resolution: int,
    bbox_min: Sequence[float] = (-1.0, -1.0, -1.0),
    bbox_max: Sequence[float] = (1.0, 1.0, 1.0),
    scale_mat: np.ndarray | None = None,
    block_size: int = 64,
    level: float = 0.0,
    largest_component: bool = False,
    progress: bool = False,
    coarse_to_fine: bool = True,
) -> trimesh.Trimesh:
    """Iso-surface ``sdf = level`` of ``sdf_fn`` as a mesh in world units.

    Args:
        sdf_fn: points ``(M, 3)`` float32 CPU tensor in the normalised frame ->
            SDF ``(M,)`` (negative inside); called under ``torch.no_grad`` with
            at most ``(block_size + 1)^3`` points at once. Move points to the
            model's device inside it if needed.
        resolution: grid vertices per axis over the bounding box (>= 2).
        bbox_min, bbox_max: grid box ``(3,)`` in the normalised frame.
        scale_mat: ``(4, 4)`` normalised -> world; ``None`` keeps normalised units.
        block_size: cells per axis of a block evaluated at once.
        level: iso-level.
        largest_component: keep only the connected piece with the most faces.
        progress: show tqdm bars.
        coarse_to_fine: evaluate a coarse grid (every 4th vertex) first and the
            full grid only in coarse cells near the level; ``False`` evaluates
            every vertex (the dense reference).

    Returns:
        Mesh with outward normals (towards increasing SDF), vertices ``(V, 3)``
        in world units; an empty mesh when the SDF never crosses ``level``.
    """
    if resolution < 2 or block_size < 1:
        raise ValueError(f"need resolution >= 2 and block_size >= 1, got {resolution}, {block_size}")
    origin, cell = _grid_axes(resolution, bbox_min, bbox_max)
    chunk = (block_size + 1) ** 3
    coarse = None
    if coarse_to_fine:
        coarse = _coarse_grid(sdf_fn, resolution, origin, cell, level, chunk, progress)
    all_verts, all_faces, n_verts = [], [], 0
    n_blocks = len(_block_starts(resolution, block_size)) ** 3
    for start, stop in tqdm(_iter_blocks(resolution, block_size), total=n_blocks, desc="mesh blocks",
                            disable=not progress, leave=False):
        values, mask = _fine_block(sdf_fn, start, stop, origin, cell, level, coarse, chunk)
        if values is None:
            continue
        verts, faces = _march_block(values, level, mask)
        all_verts.append(verts + start)
        all_faces.append(faces + n_verts)
        n_verts += len(verts)
    return _assemble(all_verts, all_faces, origin, cell, scale_mat, largest_component)


def _assemble(all_verts: list[np.ndarray], all_faces: list[np.ndarray], origin: np.ndarray, cell: np.ndarray,
              scale_mat: np.ndarray | None, largest_component: bool) -> trimesh.Trimesh:
    """Weld block pieces (index units), map to world, clean up."""
    if not all_verts or sum(len(f) for f in all_faces) == 0:
        return empty_mesh()
    verts, faces = _weld(np.concatenate(all_verts), np.concatenate(all_faces))
    verts = _to_world(verts, origin, cell, scale_mat)
    if scale_mat is not None and np.linalg.det(np.asarray(scale_mat)[:3, :3]) < 0:
        faces = faces[:, ::-1]  # a reflection would turn the normals inwards
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if largest_component:
        mesh = keep_largest_component(mesh)
    return mesh


def check_mesh_path(path: str | Path, textured: bool = False) -> Path:
    """``path`` as a mesh file name: .ply, .obj or .glb (.obj or .glb for a textured mesh), else ``InputError``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise InputError(path, f"unknown mesh format {path.suffix!r} (use one of {', '.join(MESH_FORMATS)})")
    if textured and suffix not in TEXTURED_FORMATS:
        raise InputError(path, f"a textured mesh is written as {' or '.join(TEXTURED_FORMATS)}, not {suffix}")
    check_output_file(path)
    return path


def save_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` to ``path`` (.ply, .obj or .glb, chosen by suffix) atomically.

    Vertex normals are written when the mesh holds them (set ``mesh.vertex_normals``), vertex
    colours when it has them. A textured mesh (``TextureVisuals``) goes to .glb (one file, PBR
    material) or .obj, whose ``STEM.mtl`` and ``STEM.png`` are written beside it first.
    """
    textured = isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.uv is not None
    path = check_mesh_path(path, textured)
    if path.suffix.lower() == ".obj":
        _save_obj(mesh, path, textured)
        return path
    with atomic_path(path) as tmp:
        mesh.export(tmp, file_type=path.suffix.lower()[1:])
    return path


def _save_obj(mesh: trimesh.Trimesh, path: Path, textured: bool) -> None:
    """OBJ (+ MTL + PNG): the texture's material is written with a white diffuse colour, so viewers
    show the texture as it is."""
    normals = "vertex_normals" in mesh._cache
    if textured:
        source = mesh.visual.material
        image = source.baseColorTexture if hasattr(source, "baseColorTexture") else source.image
        material = trimesh.visual.material.SimpleMaterial(
            image=image, diffuse=[255, 255, 255, 255], ambient=[255, 255, 255, 255], specular=[0, 0, 0, 255], name=path.stem)
        plain = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False,
                                visual=trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material))
        if normals:
            plain.vertex_normals = mesh.vertex_normals
        mesh = plain
    text, files = trimesh.exchange.obj.export_obj(
        mesh, include_normals=normals, return_texture=True, mtl_name=f"{path.stem}.mtl")
    for name, data in files.items():
        with atomic_path(path.parent / name) as tmp:
            tmp.write_bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read a triangle mesh; a missing or unreadable file, or one without triangles, is an ``InputError``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mesh file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # noqa: BLE001 - every reader failure is one user-facing error
        raise InputError(path, f"not a readable mesh ({type(err).__name__}: {' '.join(str(err).split())})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(path, "holds no triangles")
    bad = int((~np.isfinite(mesh.vertices).all(axis=1)).sum())
    if bad:
        raise InputError(path, f"{bad} of its {len(mesh.vertices)} vertices have non-finite coordinates (NaN or inf)")
    return mesh
