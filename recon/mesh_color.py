"""A mesh people can use: vertex normals and colours from the fitted field, or a baked texture.

Vertex normals are the mesh's own area-weighted normals: on a fitted run they lay 0.7-2.1° nearer the
ground truth's than the SDF's gradient at the vertices (docs/DECISIONS.md), and they agree with the
faces a viewer shades. Colours come from the colour network queried as instant-nsr-pl and
Neuralangelo export them: at the surface point, looking straight at it, i.e. view direction = -n
with n the SDF's unit gradient (the normal the colour network saw while fitting), with the point's
geometry feature and, when the fit has
per-image appearance codes (``color.appearance_dim > 0``), the mean of the training images' codes
(one colour for the whole capture, no single photograph's exposure).

Meshes are in world units (``scale_mat``); the field is queried in the normalised frame, and a
normal n of the normalised frame is ``A^-T n`` in the world (A the scale matrix's linear part).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import trimesh
from PIL import Image
from tqdm import tqdm

from recon.config import DEFAULT_TEXTURE_SIZE
from recon.run import Model
from recon.texture import bake_texture, unwrap
from recon.visualize import to_uint8

ColorMode = Literal["none", "vertex", "texture"]
"""One of ``recon.config.MESH_COLORS``."""


class SurfaceShader:
    """Unit normals and colours of a fitted field at surface points given in world units."""

    def __init__(self, model: Model, chunk: int = 65_536, progress: bool = False) -> None:
        self.field = model.field
        self.device = next(model.field.parameters()).device
        scale_mat = np.asarray(model.scale_mat, dtype=np.float64)
        self.linear, self.offset = scale_mat[:3, :3], scale_mat[:3, 3]
        self.linear_inv = np.linalg.inv(self.linear)
        self.appearance = model.field.color_net.mean_appearance()
        self.chunk, self.progress = chunk, progress

    def to_normalised(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world -> (N, 3) normalised frame."""
        return (np.asarray(points, dtype=np.float64) - self.offset) @ self.linear_inv.T

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> unit world normals (N, 3) (the SDF's gradient) and colours (N, 3) in
        [0, 1] (the colour network seen along -normal)."""
        x = self.to_normalised(points)
        normals, colors = np.zeros_like(x), np.zeros_like(x)
        starts = range(0, len(x), self.chunk)
        for start in tqdm(starts, desc="field at surface", disable=not self.progress or len(starts) < 2, leave=False):
            sl = slice(start, start + self.chunk)
            normals[sl], colors[sl] = self._query(torch.from_numpy(x[sl]).float().to(self.device))
        world = normals @ self.linear_inv  # A^-T n, as row vectors
        return world / np.maximum(np.linalg.norm(world, axis=1, keepdims=True), 1e-12), colors

    def _query(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        _, feature, gradient = self.field.sdf_feature_gradient(x, create_graph=False)
        with torch.no_grad():
            normal = torch.nn.functional.normalize(gradient, dim=-1)
            rgb = self.field.color_net(x, -normal, normal, feature, appearance_code=self.appearance)
        return normal.double().cpu().numpy(), rgb.double().cpu().numpy()


def area_weighted_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """(V, 3) unit vertex normals: the mean of the adjacent faces' normals weighted by their areas."""
    faces = np.asarray(mesh.faces)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    cross = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])  # |cross| = 2 area
    sums = np.zeros_like(v)
    for corner in range(3):
        np.add.at(sums, faces[:, corner], cross)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-300)


def color_mesh(mesh: trimesh.Trimesh, shader: SurfaceShader, mode: ColorMode,
               texture_size: int = DEFAULT_TEXTURE_SIZE) -> trimesh.Trimesh:
    """The mesh with area-weighted vertex normals and, by ``mode``: nothing more (``none``), vertex
    colours (``vertex``), or a UV atlas with a texture baked from the colour network (``texture``,
    a PBR material whose base colour is the texture; seam vertices are duplicated)."""
    normals = area_weighted_normals(mesh)
    if mode == "texture":
        return _textured(mesh, normals, shader, texture_size)
    out = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    if mode == "vertex":
        out.visual.vertex_colors = _to_rgba8(shader(mesh.vertices)[1])
    out.vertex_normals = normals
    return out


def _textured(mesh: trimesh.Trimesh, normals: np.ndarray, shader: SurfaceShader, size: int) -> trimesh.Trimesh:
    atlas = unwrap(mesh.vertices, mesh.faces, size)
    image = bake_texture(lambda points: shader(points)[1], mesh.vertices, atlas)
    material = trimesh.visual.material.PBRMaterial(
        name="baked", baseColorTexture=Image.fromarray(to_uint8(image)), metallicFactor=0.0, roughnessFactor=1.0,
    )
    out = trimesh.Trimesh(vertices=np.asarray(mesh.vertices)[atlas.vmapping], faces=atlas.faces, process=False,
                          visual=trimesh.visual.TextureVisuals(uv=atlas.uv, material=material))
    out.vertex_normals = normals[atlas.vmapping]
    return out


def _to_rgba8(colors: np.ndarray) -> np.ndarray:
    """(N, 3) colours in [0, 1] -> (N, 4) uint8, opaque."""
    rgb = to_uint8(colors)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], axis=1)
