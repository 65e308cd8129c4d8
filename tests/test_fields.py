"""SDF and colour networks: positional encoding, sphere initialisation, gradients."""

import math

import pytest
import torch

from recon.config import ColorConfig, EncodingConfig, GeometryConfig
from recon.fields import NeuralSDF, positional_encoding, positional_encoding_dim

SMALL_GRID = EncodingConfig(n_levels=4, log2_hashmap_size=12, base_resolution=4, finest_resolution=32)


def test_positional_encoding_by_hand():
    x = torch.tensor([[0.5, -1.0, 0.0]])
    out = positional_encoding(x, 2)
    expected = [0.5, -1.0, 0.0]
    expected += [math.sin(0.5), math.sin(-1.0), 0.0, math.sin(1.0), math.sin(-2.0), 0.0]
    expected += [math.cos(0.5), math.cos(-1.0), 1.0, math.cos(1.0), math.cos(-2.0), 1.0]
    torch.testing.assert_close(out, torch.tensor([expected]))
    assert out.shape[1] == positional_encoding_dim(3, 2)


@pytest.mark.parametrize("encoding_type", ["hashgrid", "densegrid"])
@pytest.mark.parametrize("inside_outside", [False, True])
def test_sphere_initialisation(encoding_type, inside_outside):
    torch.manual_seed(0)
    enc = EncodingConfig(**{**SMALL_GRID.__dict__, "dense_resolution": 16})
    geometry = GeometryConfig(arm=encoding_type, sphere_radius=0.6, inside_outside=inside_outside)
    field = NeuralSDF(geometry, enc, ColorConfig(), n_images=3)
    x = torch.randn(512, 3)
    x = x / x.norm(dim=-1, keepdim=True) * torch.rand(512, 1) * 0.95
    sdf, _, grad = field.sdf_feature_gradient(x, create_graph=False)
    radius = x.norm(dim=-1)
    sign = -1.0 if inside_outside else 1.0
    # Random-feature initialisation: a sphere on average, not exactly.
    assert (sign * sdf)[radius < 0.35].max() < 0 and (sign * sdf)[radius > 0.85].min() > 0
    assert (sdf - sign * (radius - 0.6)).abs().mean() < 0.12
    cos = torch.nn.functional.cosine_similarity(grad, sign * x, dim=-1)
    assert cos[radius > 0.2].mean() > 0.9


def test_gradient_is_twice_differentiable():
    torch.manual_seed(0)
    field = NeuralSDF(GeometryConfig(hidden_dim=16, feature_dim=8), SMALL_GRID, ColorConfig(hidden_dim=16), n_images=2)
    with torch.no_grad():  # the grid's first-layer weights start at zero: wake them up
        field.sdf_net.layers[0].parametrizations.weight.original1[:, -field.sdf_net.encoding.out_dim :] = 0.1
    x = torch.rand(64, 3) - 0.5
    _, _, grad = field.sdf_feature_gradient(x, create_graph=True)
    loss = ((grad.norm(dim=-1) - 1) ** 2).mean()
    loss.backward()
    grid = field.grid_parameters()[0]
    assert grid.grad is not None and grid.grad.abs().sum() > 0
    first = field.sdf_net.layers[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters())


def test_colour_in_unit_range_and_appearance_codes():
    field = NeuralSDF(GeometryConfig(feature_dim=8), SMALL_GRID, ColorConfig(appearance_dim=4), n_images=5)
    n = 10
    rgb = field.color_net(torch.rand(n, 3), torch.randn(n, 3), torch.randn(n, 3), torch.randn(n, 8), torch.arange(n) % 5)
    assert rgb.shape == (n, 3) and (rgb > 0).all() and (rgb < 1).all()


def test_parameter_groups_split_grid_from_networks():
    field = NeuralSDF(GeometryConfig(), SMALL_GRID, ColorConfig(), n_images=1)
    grid_ids = {id(p) for p in field.grid_parameters()}
    net_ids = {id(p) for p in field.network_parameters()}
    assert grid_ids and net_ids and not grid_ids & net_ids
    assert len(grid_ids) + len(net_ids) == len(list(field.parameters()))
