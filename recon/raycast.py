"""Ray casting against a triangle mesh: open3d's ``RaycastingScene``, built once per mesh.

The mesh is handed to open3d as float32 vertices and uint32 faces; rays and
query points go in as float32, results come back as float64 (and int64 face
ids). open3d is imported inside the functions so that ``import recon`` works
without it. A mesh without faces is an empty scene: every ray misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from recon.optional import require


@dataclass
class RayHits:
    """What each of N rays hit first.

    Attributes:
        t_hit: (N,) float64 distance along the ray to the first hit, in units of
            the direction's length; inf for a miss.
        face: (N,) int64 index of the face hit; -1 for a miss.
        uv: (N, 2) float64 barycentric coordinates of the hit in its face
            (weights of the face's second and third vertex); 0 for a miss.
    """

    t_hit: np.ndarray
    face: np.ndarray
    uv: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """(N,) bool: whether each ray hit."""
        return np.isfinite(self.t_hit)


class Raycaster:
    """A mesh's ray-casting scene: rays -> first hits, points -> unsigned distance."""

    def __init__(self, mesh: trimesh.Trimesh) -> None:
        o3d = require("open3d")

        self.mesh = mesh
        self._scene = o3d.t.geometry.RaycastingScene()
        if len(mesh.faces):
            self._scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
                                      o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)))

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> RayHits:
        """First hits of the rays ``origins + t dirs`` (both (N, 3), ``dirs`` of any length)."""
        o3d = require("open3d")

        rays = np.concatenate([origins, dirs], axis=-1).reshape(-1, 6).astype(np.float32)
        out = self._scene.cast_rays(o3d.core.Tensor(rays))
        t_hit = out["t_hit"].numpy().astype(np.float64)
        ok = np.isfinite(t_hit)
        face = np.where(ok, out["primitive_ids"].numpy().astype(np.int64), -1)
        return RayHits(t_hit, face, out["primitive_uvs"].numpy().astype(np.float64))

    def face_normals(self, hits: RayHits) -> np.ndarray:
        """(M, 3) unit normals of the faces hit, for the M rays of ``hits`` that hit."""
        return np.asarray(self.mesh.face_normals)[hits.face[hits.ok]]

    def back_facing(self, hits: RayHits, dirs: np.ndarray) -> np.ndarray:
        """(M,) bool, for the M rays that hit: the face's normal points along the ray (its back was hit)."""
        ok = hits.ok
        return np.einsum("mc,mc->m", self.face_normals(hits), dirs[ok]) > 0

    def distance(self, points: np.ndarray) -> np.ndarray:
        """(N,) float64 unsigned distance from ``points`` (N, 3) to the mesh's surface."""
        o3d = require("open3d")

        query = o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
        return self._scene.compute_distance(query).numpy().astype(np.float64)
