"""A coloured mesh seen from a scene's cameras: ray cast through the pixels the volume renderer uses
(``recon.render.image.render_view``: the same 1/k resolution, rays per pixel and block-mean targets),
so its scores sit beside the volume renderer's.

Each ray takes the colour of the surface point it hits first: the face's vertex colours
interpolated with the hit's barycentric coordinates, or the texture looked up (bilinear) at the
interpolated UV. Rays that miss show ``background`` (the fit's matte colour).
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from tqdm import tqdm

from recon.holdout import HoldoutScores, holdout_scores
from recon.rays import RayBatch, RaySource
from recon.raycast import Raycaster
from recon.render.image import RenderedImage, render_view
from recon.texture import sample_texture


class MeshRenderer:
    """Per-ray colour, normal, depth and coverage of a coloured mesh (world units), in a scene's
    normalised frame (``scale_mat``: normalised -> world)."""

    def __init__(self, mesh: trimesh.Trimesh, scale_mat: np.ndarray, background: torch.Tensor | None) -> None:
        scale_mat = np.asarray(scale_mat, dtype=np.float64)
        linear_inv = np.linalg.inv(scale_mat[:3, :3])
        vertices = (np.asarray(mesh.vertices, dtype=np.float64) - scale_mat[:3, 3]) @ linear_inv.T
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        self.caster = Raycaster(trimesh.Trimesh(vertices=vertices, faces=self.faces, process=False))
        normals = np.asarray(mesh.vertex_normals, dtype=np.float64) @ scale_mat[:3, :3]  # world -> normalised: A^T n
        self.normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        self.background = np.zeros(3) if background is None else background.detach().cpu().double().numpy()
        visual = mesh.visual
        self.texture = self.uv = self.colors = None
        if isinstance(visual, trimesh.visual.TextureVisuals):
            material = visual.material
            image = material.baseColorTexture if hasattr(material, "baseColorTexture") else material.image
            self.texture = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
            self.uv = np.asarray(visual.uv, dtype=np.float64)
        elif visual.kind == "vertex":
            self.colors = np.asarray(visual.vertex_colors[:, :3], dtype=np.float64) / 255.0
        else:
            raise ValueError("the mesh has neither vertex colours nor a texture")

    def _interpolate(self, values: np.ndarray, face: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """Per-vertex ``values`` (V, C) at hits in ``face`` (M,) with barycentrics ``uv`` (M, 2)."""
        corners = values[self.faces[face]]  # (M, 3, C)
        return corners[:, 0] * (1.0 - uv.sum(axis=1, keepdims=True)) + corners[:, 1] * uv[:, :1] + corners[:, 2] * uv[:, 1:]

    def surface_colors(self, face: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """(M, 3) colours at hits in faces ``face`` (M,) with barycentrics ``uv`` (M, 2)."""
        if self.texture is not None:
            return sample_texture(self.texture, self._interpolate(self.uv, face, uv))
        return self._interpolate(self.colors, face, uv)

    def __call__(self, image: RayBatch, world_to_cam: torch.Tensor) -> dict[str, torch.Tensor]:
        """``render_view``'s per-ray outputs for one image's rays."""
        origins, dirs = image.origins.cpu().double().numpy(), image.dirs.cpu().double().numpy()
        hits = self.caster.cast(origins, dirs)
        ok = hits.ok
        rgb = np.tile(self.background, (len(dirs), 1))
        rgb[ok] = self.surface_colors(hits.face[ok], hits.uv[ok])
        normal = np.zeros_like(dirs)
        normal[ok] = self._interpolate(self.normals, hits.face[ok], hits.uv[ok])
        depth = np.where(ok, hits.t_hit, 0.0) * image.z_scale.cpu().double().numpy()
        out = {"rgb": rgb, "normal": normal @ world_to_cam.cpu().double().numpy().T,
               "opacity": ok.astype(np.float64), "weighted_depth": depth}
        return {key: torch.from_numpy(value).float() for key, value in out.items()}


def render_mesh_views(mesh: trimesh.Trimesh, scale_mat: np.ndarray, rays: RaySource, max_side: int,
                      background: torch.Tensor | None, supersample: int = 1,
                      progress: bool = False) -> list[RenderedImage]:
    """Every view of ``rays`` seen on the coloured ``mesh``, laid out as ``render_view`` does."""
    renderer = MeshRenderer(mesh, scale_mat, background)
    return [render_view(renderer, rays, index, max_side, background, supersample)
            for index in tqdm(range(rays.n_images), desc="mesh views", disable=not progress, unit="view")]


def mesh_color_scores(mesh: trimesh.Trimesh, scale_mat: np.ndarray, rays: RaySource, max_side: int,
                      background: torch.Tensor | None, supersample: int = 1,
                      progress: bool = False) -> list[HoldoutScores]:
    """The held-out scores (PSNR inside the masks, ...) of the coloured mesh on every view of ``rays``."""
    return [holdout_scores(view) for view in
            render_mesh_views(mesh, scale_mat, rays, max_side, background, supersample, progress)]
