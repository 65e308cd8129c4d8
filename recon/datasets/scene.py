"""The one in-memory form every loader produces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Scene:
    """Posed images normalised so that the object of interest lies in the unit sphere.

    Camera convention (OpenCV): x right, y down, z forward; a pixel with integer
    coordinates (u, v) is looked at through its centre, i.e. the ray through
    ``K^-1 [u, v, 1]`` with u in 0..W-1 and v in 0..H-1.

    Attributes:
        images: (N, H, W, 3) uint8 RGB.
        intrinsics: (N, 3, 3) float64 pixel intrinsics K.
        cam_to_world: (N, 4, 4) float64 camera-to-normalised-world poses.
        scale_mat: (4, 4) float64 mapping normalised coordinates to world units
            (``world = scale_mat @ [x, 1]``).
        masks: (N, H, W) bool foreground masks, or None.
        depths: (N, H, W) float32 depth cues (z-depth, normalised units), or None.
        normals: (N, H, W, 3) float32 world-space normal cues, or None.
        image_paths: the files the images came from (for messages).
        gt_mesh_path: ground-truth mesh in world units, when the scene has one.
    """

    images: np.ndarray
    intrinsics: np.ndarray
    cam_to_world: np.ndarray
    scale_mat: np.ndarray
    masks: np.ndarray | None = None
    depths: np.ndarray | None = None
    normals: np.ndarray | None = None
    image_paths: tuple[Path, ...] = ()
    gt_mesh_path: Path | None = None

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def select(self, indices: "np.ndarray | list[int]") -> "Scene":
        """The scene restricted to the views ``indices`` (same normalisation)."""
        idx = np.asarray(indices, dtype=np.int64)

        def pick(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[idx]

        paths = tuple(self.image_paths[i] for i in idx) if self.image_paths else ()
        return Scene(
            images=self.images[idx],
            intrinsics=self.intrinsics[idx],
            cam_to_world=self.cam_to_world[idx],
            scale_mat=self.scale_mat,
            masks=pick(self.masks),
            depths=pick(self.depths),
            normals=pick(self.normals),
            image_paths=paths,
            gt_mesh_path=self.gt_mesh_path,
        )
