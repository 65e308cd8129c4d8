"""The ray-casting helper against hand-computed hits and distances."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import trimesh

from recon.mesh import empty_mesh
from recon.raycast import Raycaster

ATOL = 1e-6  # open3d works in float32


def unit_cube() -> trimesh.Trimesh:
    """The cube [-0.5, 0.5]^3, wound outward."""
    return trimesh.creation.box((1.0, 1.0, 1.0))


def triangle() -> trimesh.Trimesh:
    """One triangle (0, 0, 0), (1, 0, 0), (0, 1, 0) in the z = 0 plane, normal +z."""
    return trimesh.Trimesh([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0, 1, 2]], process=False)


def test_import_does_not_load_open3d() -> None:
    code = "import sys, recon.raycast, recon.mesh_pictures; assert 'open3d' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cube_hits_misses_and_normals() -> None:
    caster = Raycaster(unit_cube())
    origins = np.array([[-2.0, 0.0, 0.0], [-2.0, 5.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 0.1, 0.2]])
    dirs = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    hits = caster.cast(origins, dirs)
    # outside -> x = -0.5 face; a miss above the cube; from the centre -> x = +0.5 face (its back);
    # a direction of length 2 halves the ray parameter
    np.testing.assert_allclose(hits.t_hit, [1.5, np.inf, 0.5, 0.75], atol=ATOL)
    np.testing.assert_array_equal(hits.ok, [True, False, True, True])
    assert hits.t_hit.dtype == np.float64 and hits.face.dtype == np.int64
    assert hits.face[1] == -1 and np.all(hits.face[hits.ok] >= 0)
    np.testing.assert_array_equal(caster.face_normals(hits), [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(caster.back_facing(hits, dirs), [False, True, False])


def test_triangle_barycentric_coordinates() -> None:
    caster = Raycaster(triangle())
    origins = np.array([[0.2, 0.3, 1.0], [0.2, 0.3, -2.0], [0.8, 0.8, 1.0]])
    dirs = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    hits = caster.cast(origins, dirs)
    np.testing.assert_allclose(hits.t_hit, [1.0, 2.0, np.inf], atol=ATOL)
    np.testing.assert_array_equal(hits.face, [0, 0, -1])
    # weights of the second and third vertex: x and y of the hit point (0.2, 0.3, 0)
    np.testing.assert_allclose(hits.uv, [[0.2, 0.3], [0.2, 0.3], [0.0, 0.0]], atol=ATOL)
    np.testing.assert_array_equal(caster.back_facing(hits, dirs), [False, True])


def test_distance_to_cube() -> None:
    caster = Raycaster(unit_cube())
    points = np.array([[2.0, 0.0, 0.0], [1.5, 1.5, 1.5], [0.0, 0.0, 0.0], [0.5, 0.1, 0.1]])
    # beside a face, off a corner (sqrt 3), inside (unsigned: to the nearest face), on the surface
    np.testing.assert_allclose(caster.distance(points), [1.5, np.sqrt(3.0), 0.5, 0.0], atol=ATOL)
    assert caster.distance(points).dtype == np.float64


def test_empty_mesh_misses_everything() -> None:
    caster = Raycaster(empty_mesh())
    hits = caster.cast(np.zeros((2, 3)), np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))
    np.testing.assert_array_equal(hits.t_hit, [np.inf, np.inf])
    np.testing.assert_array_equal(hits.face, [-1, -1])
    assert caster.face_normals(hits).shape == (0, 3)
