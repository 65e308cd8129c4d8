"""The one in-memory form every loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.datasets.normalize import Normalization


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
        depths: (N, H, W) float32 depth cues along the camera's z axis, or None; 0 where
            a view has no cue. Only defined up to a per-view scale and shift: the
            ``depth/`` folders of the DTU layout hold metric z-depth (converted to
            normalised units), MonoSDF's ``*_depth.npy`` hold monocular predictions
            (Omnidata) whose scale and shift are unknown; use them only through a
            scale-and-shift-invariant loss.
        normals: (N, H, W, 3) float32 unit normal cues in normalised-world coordinates
            (MonoSDF's camera-space cues are rotated by the camera-to-world rotation),
            or None; 0 where a view has no cue.
        image_paths: the files the images came from (for messages).
        gt_mesh_path: ground-truth mesh in world units, when the scene has one.
        format: the capture format it was read from (dtu, monosdf, nerf-synthetic, ngp, colmap).
        normalization_source: where scale_mat came from (the format's scale matrix,
            the cameras, or an aabb).
        splits: view indices of the named splits a format provides ("train", "val",
            "test"); empty when the format has none (every view is a training view).
        warnings: what the loader skipped or guessed, one line each.
        details: what else the loader read that ``recon check`` reports, by name (a COLMAP
            model's camera models, distortion and sparse points).
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
    format: str = "dtu"
    normalization_source: str = "scale_mat"
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def normalization(self) -> Normalization:
        """Centre and radius (world units) of the unit sphere, and their source."""
        return Normalization.of_scale_mat(self.scale_mat, self.normalization_source)

    def split(self, name: str) -> "Scene":
        """The views of split ``name`` (see ``splits``)."""
        if name not in self.splits:
            raise KeyError(f"scene has no split {name!r} (has: {', '.join(self.splits) or 'none'})")
        return self.select(self.splits[name])

    def select(self, indices: "np.ndarray | list[int]") -> "Scene":
        """The scene restricted to the views ``indices`` (same normalisation)."""
        idx = np.asarray(indices, dtype=np.int64)

        def pick(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[idx]

        paths = tuple(self.image_paths[i] for i in idx) if self.image_paths else ()
        position = {int(old): new for new, old in enumerate(idx)}
        splits = {name: np.array([position[int(i)] for i in views if int(i) in position], dtype=np.int64)
                  for name, views in self.splits.items()}
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
            format=self.format,
            normalization_source=self.normalization_source,
            splits={name: views for name, views in splits.items() if len(views)},
            warnings=self.warnings,
            details=self.details,
        )
