"""SDF and colour networks (MonoSDF / IDR layout): MonoSDF's four geometry arms.

``hashgrid`` / ``densegrid``: a grid encoding feeding a small SDF MLP; ``mlp``: no grid, a
deep positional-encoding MLP with a skip connection; ``sdfgrid``: a dense grid that stores
the SDF itself. All four feed the same colour MLP.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from recon.config import EncodingConfig, FieldConfig
from recon.encodings import TorchGridEncoding, make_encoding, matched_dense_resolution
from recon.errors import InputError


def positional_encoding(x: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """NeRF/IDR positional encoding.

    ``cat(x, sin(2^k x), cos(2^k x) for k < n_frequencies)``: (N, D) -> (N, D (1 + 2 n)).
    """
    if n_frequencies == 0:
        return x
    freqs = 2.0 ** torch.arange(n_frequencies, dtype=x.dtype, device=x.device)
    scaled = (x[..., None, :] * freqs[:, None]).flatten(-2)
    return torch.cat([x, torch.sin(scaled), torch.cos(scaled)], dim=-1)


def positional_encoding_dim(in_dim: int, n_frequencies: int) -> int:
    """Output size of ``positional_encoding``."""
    return in_dim * (1 + 2 * n_frequencies)


@dataclass(frozen=True)
class MLPShape:
    """Hidden layers of an SDF MLP; ``skip_layer`` (> 0) is the linear layer that sees the input again."""

    hidden_dim: int
    n_hidden_layers: int
    skip_layer: int = 0


class SDFNetwork(nn.Module):
    """SDF MLP: ``cat(x, PE(x), grid(x))`` -> (sdf, feature).

    Points are in normalised coordinates (the scene's unit sphere); the grid sees
    them mapped to [0, 1]^3 by ``(x / scene_radius + 1) / 2``. With a skip layer (IDR /
    MonoSDF's MLP arm), that layer's input is ``cat(h, input) / sqrt(2)``.
    """

    def __init__(
        self, cfg: FieldConfig, encoding: nn.Module | None, scene_radius: float = 1.0, shape: MLPShape | None = None
    ) -> None:
        super().__init__()
        shape = shape or MLPShape(cfg.hidden_dim, cfg.n_hidden_layers)
        self.cfg = cfg
        self.encoding = encoding
        self.grid_mask: torch.Tensor | None = None
        """Coarse-to-fine: a 0/1 mask (grid out_dim,) on the grid features, set by the trainer (None: all)."""
        self.scene_radius = scene_radius
        self.feature_dim = cfg.feature_dim
        self.skip_layer = shape.skip_layer if shape.skip_layer > 0 else -1
        grid_dim = encoding.out_dim if encoding is not None else 0
        in_dim = positional_encoding_dim(3, cfg.pe_frequencies) + grid_dim
        dims = [in_dim] + [shape.hidden_dim] * shape.n_hidden_layers + [1 + cfg.feature_dim]
        _check_skip(self.skip_layer, shape, in_dim)
        out_dims = [b - in_dim if index + 1 == self.skip_layer else b for index, b in enumerate(dims[1:])]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], out_dims))
        self._geometric_init(in_dim)
        if cfg.weight_norm:
            self.layers = nn.ModuleList(weight_norm(layer) for layer in self.layers)
        self.activation = nn.Softplus(beta=cfg.softplus_beta)

    @torch.no_grad()
    def _geometric_init(self, in_dim: int) -> None:
        """IDR's sphere initialisation; PE and grid inputs (first layer, skip layer) start at zero."""
        sign = -1.0 if self.cfg.inside_outside else 1.0
        for index, layer in enumerate(self.layers):
            out_dim, layer_in = layer.weight.shape
            if index == len(self.layers) - 1:
                nn.init.normal_(layer.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(layer_in), std=1e-4)
                nn.init.constant_(layer.bias, -sign * self.cfg.sphere_radius)
                continue
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
            nn.init.zeros_(layer.bias)
            if index == 0:
                layer.weight[:, 3:].zero_()
            elif index == self.skip_layer:
                layer.weight[:, layer_in - in_dim + 3 :].zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) normalised points -> sdf (N,), feature (N, feature_dim)."""
        inputs = [positional_encoding(x, self.cfg.pe_frequencies)]
        if self.encoding is not None:
            unit = (x / self.scene_radius + 1.0) * 0.5
            features = self.encoding(unit).to(x.dtype)
            inputs.append(features if self.grid_mask is None else features * self.grid_mask)
        first = torch.cat(inputs, dim=-1)
        h = first
        for index, layer in enumerate(self.layers):
            if index == self.skip_layer:
                h = torch.cat([h, first], dim=-1) / math.sqrt(2.0)
            h = layer(h)
            if index < len(self.layers) - 1:
                h = self.activation(h)
        return h[:, 0], h[:, 1:]


def _check_skip(skip_layer: int, shape: MLPShape, in_dim: int) -> None:
    """A skip layer must be a hidden layer's input, and the layer before it must keep some width."""
    if skip_layer == -1:
        return
    if not 1 <= skip_layer <= shape.n_hidden_layers - 1:
        raise InputError(
            "encoding.mlp_skip_layer", f"must be 0 or in 1..{shape.n_hidden_layers - 1} (a hidden layer), got {skip_layer}"
        )
    if shape.hidden_dim <= in_dim:
        raise InputError("encoding.mlp_hidden_dim", f"must exceed the input size {in_dim} to have a skip layer")


def sdf_grid_resolution(cfg: EncodingConfig) -> int:
    """Vertices per axis of the SDF grid: ``cfg.sdf_resolution``, or R^3 ~ the hash grid's count."""
    if cfg.sdf_resolution:
        return cfg.sdf_resolution
    return matched_dense_resolution(dataclasses.replace(cfg, dense_features=1))


class SDFGridNetwork(nn.Module):
    """MonoSDF's dense SDF grid arm: the SDF itself at R^3 vertices, trilinear, no geometry MLP.

    Storage is a one-level dense ``TorchGridEncoding`` with one feature (its hand-written first
    and second derivatives serve the eikonal loss). Vertex ``i`` of an axis sits at
    ``scene_radius (2 (i - 0.5) / (R - 2) - 1)``: half a cell beyond the box on each side,
    so every point of the box interpolates stored vertices (none wrap around). Values are
    stored in cell units (sdf = cell * table): an optimiser step then moves the surface by
    the same fraction of a cell whatever the resolution.

    The feature passed to the colour MLP is the positional encoding of x (its sin/cos part;
    the colour MLP also sees x itself): there is no geometry network to produce one.
    """

    def __init__(self, encoding_cfg: EncodingConfig, cfg: FieldConfig, scene_radius: float = 1.0) -> None:
        super().__init__()
        resolution = sdf_grid_resolution(encoding_cfg)
        if resolution < 4:
            raise InputError("encoding.sdf_resolution", f"must be at least 4 (or 0: parameter-matched), got {resolution}")
        storage = dataclasses.replace(encoding_cfg, dense_resolution=resolution, dense_features=1)
        self.encoding = TorchGridEncoding(storage, "densegrid")
        self.cfg = cfg
        self.resolution = resolution
        self.scene_radius = scene_radius
        self.cell = 2.0 * scene_radius / (resolution - 2)
        self.feature_dim = positional_encoding_dim(3, cfg.pe_frequencies) - 3
        self._sphere_init()

    def vertex_positions(self) -> torch.Tensor:
        """(R^3, 3) normalised positions of the vertices, in table order (x fastest)."""
        r = self.resolution
        axis = self.scene_radius * (2.0 * (torch.arange(r, dtype=torch.float64) - 0.5) / (r - 2) - 1.0)
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        return torch.stack((x, y, z), dim=-1).reshape(-1, 3)

    @torch.no_grad()
    def _sphere_init(self) -> None:
        """Table = signed distance to the sphere of radius ``sphere_radius`` (flipped when inside_outside)."""
        sign = -1.0 if self.cfg.inside_outside else 1.0
        sdf = sign * (self.vertex_positions().norm(dim=-1) - self.cfg.sphere_radius)
        params = self.encoding.params
        params.zero_()
        params[: sdf.numel()] = (sdf / self.cell).to(params.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) normalised points -> sdf (N,), feature (N, feature_dim)."""
        unit = ((x / self.scene_radius + 1.0) * 0.5).clamp(0.0, 1.0)
        r = self.resolution
        sdf = self.encoding(unit * ((r - 2) / (r - 1)))[:, 0].to(x.dtype) * self.cell
        return sdf, positional_encoding(x, self.cfg.pe_frequencies)[:, 3:]


class ColorNetwork(nn.Module):
    """IDR-mode colour MLP: ``cat(x, PE(view_dir), normal, feature[, appearance])`` -> RGB in (0, 1)."""

    def __init__(self, cfg: FieldConfig, n_images: int, feature_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        view_dim = positional_encoding_dim(3, cfg.view_pe_frequencies)
        in_dim = 3 + view_dim + 3 + feature_dim + cfg.appearance_dim
        dims = [in_dim] + [cfg.color_hidden_dim] * cfg.color_hidden_layers + [3]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.appearance = nn.Embedding(n_images, cfg.appearance_dim) if cfg.appearance_dim > 0 else None

    def forward(
        self,
        x: torch.Tensor,
        view_dirs: torch.Tensor,
        normals: torch.Tensor,
        features: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All inputs (N, .) -> rgb (N, 3); ``image_index`` (N,) selects the appearance code."""
        inputs = [x, positional_encoding(view_dirs, self.cfg.view_pe_frequencies), normals, features]
        if self.appearance is not None:
            if image_index is None:
                image_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            inputs.append(self.appearance(image_index))
        h = torch.cat(inputs, dim=-1)
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return torch.sigmoid(h)


def make_geometry(
    encoding_cfg: EncodingConfig, field_cfg: FieldConfig, scene_radius: float, device: torch.device
) -> SDFNetwork | SDFGridNetwork:
    """The geometry network of the arm ``encoding_cfg.type`` names."""
    if encoding_cfg.type == "sdfgrid":
        return SDFGridNetwork(encoding_cfg, field_cfg, scene_radius)
    if encoding_cfg.type == "mlp":
        shape = MLPShape(encoding_cfg.mlp_hidden_dim, encoding_cfg.mlp_n_hidden_layers, encoding_cfg.mlp_skip_layer)
        return SDFNetwork(field_cfg, None, scene_radius, shape)
    return SDFNetwork(field_cfg, make_encoding(encoding_cfg, encoding_cfg.type, device), scene_radius)


class NeuralSDF(nn.Module):
    """Geometry (one of the four arms) + colour MLP: the whole scene representation."""

    def __init__(
        self,
        encoding_cfg: EncodingConfig,
        field_cfg: FieldConfig,
        n_images: int,
        scene_radius: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.sdf_net = make_geometry(encoding_cfg, field_cfg, scene_radius, torch.device(device))
        self.color_net = ColorNetwork(field_cfg, n_images, self.sdf_net.feature_dim)
        self.fd_step = 0.0
        """> 0: gradients with create_graph are central differences with this step (Neuralangelo), set by the trainer."""

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> sdf (N,)."""
        return self.sdf_net(x)[0]

    def sdf_feature_gradient(
        self, x: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3) -> sdf (N,), feature (N, F), gradient of the sdf w.r.t. x (N, 3).

        ``create_graph=True`` keeps the gradient differentiable (for the eikonal loss); with
        ``fd_step > 0`` it is then the central difference ``(s(x + h e_i) - s(x - h e_i)) / 2h``
        (six more SDF evaluations, no double backward).
        """
        if create_graph and self.fd_step > 0:
            return self._finite_difference(x, self.fd_step)
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            sdf, feature = self.sdf_net(x)
            (gradient,) = torch.autograd.grad(sdf.sum(), x, create_graph=create_graph)
        return sdf, feature, gradient

    def _finite_difference(self, x: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sdf, feature at ``x`` (N, 3) and the central-difference gradient with step ``h``."""
        n = x.shape[0]
        offsets = h * torch.eye(3, dtype=x.dtype, device=x.device)
        shifted = torch.cat([x[None] + offsets[:, None], x[None] - offsets[:, None]]).reshape(-1, 3)
        sdf, feature = self.sdf_net(torch.cat([x, shifted]))
        plus, minus = sdf[n:].view(2, 3, n)
        return sdf[:n], feature[:n], ((plus - minus) / (2.0 * h)).T

    def grid_parameters(self) -> list[nn.Parameter]:
        """Parameters of the grid (feature table or SDF table), trained at a higher learning rate."""
        encoding = self.sdf_net.encoding
        return list(encoding.parameters()) if encoding is not None else []

    def network_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not part of the grid."""
        grid_ids = {id(p) for p in self.grid_parameters()}
        return [p for p in self.parameters() if id(p) not in grid_ids]

    def parameter_counts(self) -> dict[str, int]:
        """Scalars in the grid (``encoding``), the whole geometry (grid + SDF MLP), the colour MLP, and all."""
        def count(params) -> int:
            return sum(p.numel() for p in params)

        return {
            "encoding": count(self.grid_parameters()),
            "geometry": count(self.sdf_net.parameters()),
            "color": count(self.color_net.parameters()),
            "total": count(self.parameters()),
        }
