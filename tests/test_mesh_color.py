"""Meshes people can use: SDF-gradient normals, colours along the reversed normal, baked textures, the
files they go to (PLY, OBJ + MTL + PNG, GLB), and the coloured mesh seen from cameras."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch import nn

from recon.config import load_config
from recon.errors import InputError, MissingDependencyError
from recon.mesh import extract_mesh, save_mesh
from recon.mesh_color import SurfaceShader, area_weighted_normals, color_mesh
from recon.rays import RayBatch
from recon.run import Model, build_model
from recon.texture import UVAtlas, bake_texture, dilate, rasterize_uv, sample_texture

RADIUS = 0.5
SCALE_MAT = np.array([[2.5, 0, 0, 1.0], [0, 2.5, 0, -2.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
"""Normalised -> world: scale 2.5, centre (1, -2, 3)."""


class SphereSDF(nn.Module):
    """Exact SDF of a sphere of radius ``RADIUS`` at the origin; the feature is the point itself."""

    feature_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # the field's device comes from its parameters

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.norm(dim=-1) - RADIUS, x


class KnownColor(nn.Module):
    """A colour network replaced by a known function of the position and the view direction."""

    def forward(self, x, view_dirs, normals, features, image_index=None, appearance_code=None):
        assert torch.allclose(features, x)  # the geometry feature of the point reaches the colour MLP
        return known_color(x, view_dirs)

    def mean_appearance(self):
        return None


def known_color(x, view_dirs):
    return (0.5 + 0.6 * x + 0.2 * view_dirs).clamp(0.0, 1.0)


def expected_color(world: np.ndarray) -> np.ndarray:
    """The known colour at world points on the sphere, seen along the reversed (outward) normal."""
    x = torch.from_numpy((world - SCALE_MAT[:3, 3]) / 2.5)
    return known_color(x, -x / x.norm(dim=-1, keepdim=True)).numpy()


@pytest.fixture(scope="module")
def sphere_model() -> Model:
    cfg = load_config(None, ["geometry.arm=mlp", "geometry.mlp_arm_hidden_dim=8", "geometry.mlp_arm_n_hidden_layers=2",
                             "geometry.mlp_arm_skip_layer=0"])
    field, density = build_model(cfg, 2, torch.device("cpu"))
    field.sdf_net, field.color_net = SphereSDF(), KnownColor()
    return Model(field, density, None, cfg, SCALE_MAT, {})


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    return extract_mesh(lambda p: p.norm(dim=-1) - RADIUS, 28, scale_mat=SCALE_MAT)


def test_vertex_normals_unit_outward_and_area_weighted(sphere_model, sphere_mesh):
    mesh = color_mesh(sphere_mesh, SurfaceShader(sphere_model), "none")
    radial = mesh.vertices - SCALE_MAT[:3, 3]
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertex_normals, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mesh.vertex_normals, area_weighted_normals(sphere_mesh), atol=1e-12)
    # outward, within the faceting of a 28^3 grid of the radial normal
    cos = np.einsum("ij,ij->i", mesh.vertex_normals, radial)
    assert cos.min() > 0.99 and np.mean(np.degrees(np.arccos(np.clip(cos, -1, 1)))) > 0.05
    # the shader's normals (the direction colours are seen along) are the SDF's gradient, in world units
    np.testing.assert_allclose(SurfaceShader(sphere_model)(mesh.vertices)[0], radial, atol=1e-5)


def test_area_weighted_normals_hand_computed():
    # two faces sharing vertex 0: a unit right triangle in z = 0 (area 0.5, normal +z) and one twice
    # as large in x = 0 (area 1, normal +x): vertex 0 gets (1, 0, 0.5) / |.|
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 2, 0], [0, 0, 1]], dtype=float)
    mesh = trimesh.Trimesh(v, [[0, 1, 2], [0, 3, 4]], process=False)
    np.testing.assert_allclose(area_weighted_normals(mesh)[0], np.array([1, 0, 0.5]) / np.sqrt(1.25))


def test_vertex_colors_are_the_color_network_along_the_reversed_normal(sphere_model, sphere_mesh, tmp_path: Path):
    mesh = color_mesh(sphere_mesh, SurfaceShader(sphere_model), "vertex")
    expected = np.round(expected_color(mesh.vertices) * 255)
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3], expected, atol=1)
    for suffix in (".ply", ".obj", ".glb"):
        path = save_mesh(mesh, tmp_path / f"sphere{suffix}")
        back = read_back(path)
        np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-5)
        np.testing.assert_allclose(back.vertex_normals, mesh.vertex_normals, atol=1e-5)
        np.testing.assert_allclose(back.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3], atol=1)
    attributes = glb_json(tmp_path / "sphere.glb")["meshes"][0]["primitives"][0]["attributes"]
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(attributes)


def test_appearance_code_is_the_mean_of_the_training_codes():
    cfg = load_config(None, ["color.appearance_dim=4", "color.hidden_dim=8"])
    field, _ = build_model(cfg, 3, torch.device("cpu"))
    codes = field.color_net.appearance.weight.detach()
    torch.testing.assert_close(field.color_net.mean_appearance(), codes.mean(dim=0))
    x, d = torch.randn(5, 3), torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    feature = torch.randn(5, cfg.geometry.feature_dim)
    with torch.no_grad():
        # a code given for every point equals looking that code up by index
        field.color_net.appearance.weight[1] = torch.tensor([0.3, -0.2, 0.1, 0.5])
        by_index = field.color_net(x, d, d, feature, torch.ones(5, dtype=torch.long))
        by_code = field.color_net(x, d, d, feature, appearance_code=torch.tensor([0.3, -0.2, 0.1, 0.5]))
    torch.testing.assert_close(by_code, by_index)


def read_back(path: Path) -> trimesh.Trimesh:
    """The file's one mesh as trimesh reads it, normals included (``force="mesh"`` would drop them)."""
    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):
        (loaded,) = loaded.geometry.values()
    assert "vertex_normals" in loaded._cache, f"{path.name} holds no vertex normals"
    return loaded


def glb_json(path: Path) -> dict:
    data = path.read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20 : 20 + length])


# ----------------------------------------------------------------------------- textures


def test_rasterize_uv_hand_counted():
    # the lower-left half of a 4 x 4 texture: texel centres (c + .5, r + .5) / 4 with u + v < 1 (v up),
    # plus the 4 whose centres lie on the diagonal
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texels = rasterize_uv(uv, np.array([[0, 1, 2]]), 4, 4)
    u, v = (texels.cols + 0.5) / 4, 1 - (texels.rows + 0.5) / 4
    assert len(texels.rows) == 6 + 4 and np.all(u + v <= 1 + 1e-12)
    # barycentric weights reproduce each texel centre
    np.testing.assert_allclose(texels.bary @ uv, np.stack([u, v], axis=1), atol=1e-12)
    # a square of two triangles covers each of the 8 x 8 texels exactly once
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    both = rasterize_uv(square, np.array([[0, 1, 2], [0, 2, 3]]), 8, 8)
    assert len(both.rows) == 64 and len(set(zip(both.rows, both.cols))) == 64


def test_rasterize_uv_in_chunks_matches(monkeypatch):
    import recon.texture as texture

    rng = np.random.default_rng(0)
    uv, faces = rng.random((30, 2)), rng.integers(0, 30, (40, 3))
    whole = rasterize_uv(uv, faces, 32, 24)
    monkeypatch.setattr(texture, "RASTER_CHUNK", 7)
    pieces = rasterize_uv(uv, faces, 32, 24)
    for a, b in zip(vars(whole).values(), vars(pieces).values()):
        np.testing.assert_array_equal(a, b)


def test_dilate_copies_the_nearest_texel_then_the_mean():
    image = np.zeros((1, 8, 1))
    image[0, 2], image[0, 3] = 1.0, 3.0
    filled = np.zeros((1, 8), dtype=bool)
    filled[0, 2:4] = True
    out = dilate(image, filled, texels=2)
    np.testing.assert_allclose(out[0, :, 0], [1, 1, 1, 3, 3, 3, 2, 2])


def test_sample_texture_is_bilinear_at_texel_centres():
    image = np.array([[[0.0], [1.0]], [[2.0], [3.0]]])  # row 0 at the top (v = 1)
    uv = np.array([[0.25, 0.75], [0.75, 0.25], [0.5, 0.5], [0.0, 1.0], [0.5, 0.75]])
    np.testing.assert_allclose(sample_texture(image, uv)[:, 0], [0.0, 3.0, 1.5, 0.0, 0.5])


def test_bake_texture_on_a_flat_square_equals_the_function():
    vertices = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    atlas = UVAtlas(np.arange(4), np.array([[0, 1, 2], [0, 2, 3]]), uv, 16, 8)

    def color(points: np.ndarray) -> np.ndarray:
        return np.stack([points[:, 0] / 2, points[:, 1], 0.5 + 0 * points[:, 0]], axis=1)

    image = bake_texture(color, vertices, atlas)
    cols, rows = np.meshgrid(np.arange(16), np.arange(8))
    np.testing.assert_allclose(image[..., 0], (cols + 0.5) / 16, atol=1e-12)
    np.testing.assert_allclose(image[..., 1], 1 - (rows + 0.5) / 8, atol=1e-12)


@pytest.fixture(scope="module")
def textured_sphere(sphere_model, tmp_path_factory) -> tuple[trimesh.Trimesh, trimesh.Trimesh, Path]:
    pytest.importorskip("xatlas")
    small = extract_mesh(lambda p: p.norm(dim=-1) - RADIUS, 20, scale_mat=SCALE_MAT)
    return small, color_mesh(small, SurfaceShader(sphere_model), "texture", texture_size=256), \
        tmp_path_factory.mktemp("textured")


def test_texture_lookups_at_vertices_match_the_function(textured_sphere):
    source, mesh, _ = textured_sphere
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    image = np.asarray(mesh.visual.material.baseColorTexture, dtype=np.float64) / 255
    looked_up = sample_texture(image, mesh.visual.uv)
    np.testing.assert_allclose(looked_up, expected_color(mesh.vertices), atol=4 / 255)
    # seams duplicate vertices, the surface is the same
    assert len(mesh.vertices) > len(source.vertices) and len(mesh.faces) == len(source.faces)
    np.testing.assert_allclose(mesh.area, source.area, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertex_normals, axis=1), 1.0, atol=1e-6)


def test_textured_obj_mtl_png_and_glb_round_trip(textured_sphere):
    _, mesh, folder = textured_sphere
    image = np.asarray(mesh.visual.material.baseColorTexture)
    save_mesh(mesh, folder / "tex.obj")
    assert {"tex.obj", "tex.mtl", "tex.png"} <= {p.name for p in folder.iterdir()}
    mtl = (folder / "tex.mtl").read_text()
    assert "map_Kd tex.png" in mtl and "Kd 1.0" in mtl
    for path in (folder / "tex.obj", save_mesh(mesh, folder / "tex.glb")):
        back = read_back(path)
        material = back.visual.material
        back_image = material.baseColorTexture if hasattr(material, "baseColorTexture") else material.image
        np.testing.assert_array_equal(np.asarray(back_image.convert("RGB")), image)
        np.testing.assert_allclose(back.visual.uv, mesh.visual.uv, atol=1e-6)
        np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-5)
        np.testing.assert_allclose(back.vertex_normals, mesh.vertex_normals, atol=1e-5)
    gltf = glb_json(folder / "tex.glb")
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(gltf["meshes"][0]["primitives"][0]["attributes"])
    assert "baseColorTexture" in gltf["materials"][0]["pbrMetallicRoughness"]
    with pytest.raises(InputError, match="textured mesh"):
        save_mesh(mesh, folder / "tex.ply")


def test_texture_without_xatlas_names_the_extra(monkeypatch, sphere_mesh, sphere_model):
    import sys

    monkeypatch.setitem(sys.modules, "xatlas", None)
    with pytest.raises(MissingDependencyError, match=r"extract --color texture.*'texture' extra"):
        color_mesh(sphere_mesh, SurfaceShader(sphere_model), "texture")


# ----------------------------------------------------------------------------- the coloured mesh seen from cameras


def ray_batch(origins: np.ndarray, dirs: np.ndarray) -> RayBatch:
    n = len(origins)
    return RayBatch(torch.tensor(origins).float(), torch.tensor(dirs).float(), torch.zeros(n, 3), None,
                    torch.zeros(n, dtype=torch.long), torch.full((n,), 0.5))


def test_mesh_renderer_interpolates_vertex_colours_and_looks_up_textures():
    from PIL import Image

    from recon.mesh_views import MeshRenderer

    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    triangle = trimesh.Trimesh([[0, 0, 0], [2, 0, 0], [0, 2, 0]], [[0, 1, 2]], process=False)
    triangle.visual.vertex_colors = [[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]]
    triangle.vertex_normals = [[0, 0, 1]] * 3
    renderer = MeshRenderer(triangle, scale, torch.tensor([0.2, 0.4, 0.6]))
    # normalised frame: the triangle spans (0,0)-(1,0)-(0,1) at z = 0; rays straight down from z = 3
    at = np.array([[1 / 3, 1 / 3], [0.5, 0.25], [2.0, 2.0]])
    origins = np.concatenate([at, np.full((3, 1), 3.0)], axis=1)
    out = renderer(ray_batch(origins, np.tile([0.0, 0.0, -1.0], (3, 1))), torch.eye(3))
    expected = [[1 / 3, 1 / 3, 1 / 3], [0.25, 0.5, 0.25], [0.2, 0.4, 0.6]]
    np.testing.assert_allclose(out["rgb"].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(out["opacity"].numpy(), [1, 1, 0])
    np.testing.assert_allclose(out["weighted_depth"].numpy(), [1.5, 1.5, 0], atol=1e-6)  # t = 3, z_scale 0.5
    np.testing.assert_allclose(out["normal"].numpy()[:2], [[0, 0, 1]] * 2, atol=1e-6)

    texture = np.zeros((2, 2, 3), dtype=np.uint8)
    texture[1, 0] = [200, 100, 50]  # bottom-left texel: uv centre (0.25, 0.25)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    textured = trimesh.Trimesh([[0, 0, 0], [2, 0, 0], [0, 2, 0]], [[0, 1, 2]], process=False,
                               visual=trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [0, 1]], material=material))
    out = MeshRenderer(textured, scale, None)(ray_batch(np.array([[0.25, 0.25, 3.0]]), np.array([[0, 0, -1.0]])),
                                              torch.eye(3))
    np.testing.assert_allclose(out["rgb"].numpy()[0], np.array([200, 100, 50]) / 255, atol=1e-6)
