"""SDF and colour networks (MonoSDF / IDR layout): MonoSDF's four geometry arms.

``hashgrid`` / ``densegrid``: a grid encoding feeding a small SDF MLP; ``mlp``: no grid, a
deep positional-encoding MLP with a skip connection; ``sdfgrid``: a dense grid that stores
the SDF itself. All four feed the same colour MLP.

The field owns its training-time state: ``NeuralSDF.update_step(step)`` sets the
coarse-to-fine level mask (``encoding.c2f_*``) and the finite-difference step
(``geometry.numerical_gradient``) for the step about to run; the trainer only calls it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from recon.config import ColorConfig, EncodingConfig, GeometryConfig
from recon.encodings import GridEncoding, TorchGridEncoding, make_encoding, matched_dense_resolution
from recon.encodings.layout import hash_grid_levels
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


@dataclass(frozen=True)
class CoarseToFine:
    """Neuralangelo's coarse-to-fine schedule over a hash grid's levels (``encoding.c2f_*``)."""

    start_levels: int
    """Levels the SDF MLP sees at step 0 (0: all levels from the start)."""
    every: int
    """Steps between enabling one more level."""

    def active_levels(self, step: int, n_levels: int) -> int:
        """Levels whose features the SDF MLP sees at ``step``."""
        if self.start_levels <= 0:
            return n_levels
        return min(n_levels, self.start_levels + step // max(self.every, 1))


class SDFNetwork(nn.Module):
    """SDF MLP: ``cat(x, PE(x), grid(x))`` -> (sdf, feature).

    Points are in normalised coordinates (the scene's unit sphere); the grid sees
    them mapped to [0, 1]^3 by ``(x / scene_radius + 1) / 2``. With a skip layer (IDR /
    MonoSDF's MLP arm), that layer's input is ``cat(h, input) / sqrt(2)``.

    ``level_resolutions`` are the grid's level resolutions (the finest active one sets the
    finite-difference step); ``coarse_to_fine`` masks the features of the levels not yet active.
    """

    def __init__(
        self, cfg: GeometryConfig, encoding: GridEncoding | None, scene_radius: float = 1.0,
        shape: MLPShape | None = None, level_resolutions: list[int] | None = None,
        coarse_to_fine: CoarseToFine | None = None,
    ) -> None:
        super().__init__()
        shape = shape or MLPShape(cfg.hidden_dim, cfg.n_hidden_layers)
        self.cfg = cfg
        self.encoding = encoding
        self.grid_mask: torch.Tensor | None = None
        """Coarse-to-fine: a 0/1 mask (grid out_dim,) on the grid features (None: all), set by ``update_step``."""
        self.level_resolutions = level_resolutions or [lv.resolution for lv in encoding.levels]
        self.coarse_to_fine = coarse_to_fine
        self.finest_resolution = self.level_resolutions[-1]
        """Resolution of the finest level active at the current step."""
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

    def update_step(self, step: int) -> None:
        """The coarse-to-fine mask and the finest active level for ``step``."""
        n_levels = len(self.level_resolutions)
        active = self.coarse_to_fine.active_levels(step, n_levels) if self.coarse_to_fine else n_levels
        self.finest_resolution = self.level_resolutions[active - 1]
        if self.coarse_to_fine is None or self.encoding is None:
            return
        mask = None
        if active < n_levels:
            per_level = self.encoding.out_dim // n_levels
            mask = torch.zeros(self.encoding.out_dim, device=self.encoding.params.device)
            mask[: active * per_level] = 1.0
        self.grid_mask = mask

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
            "geometry.mlp_arm_skip_layer",
            f"must be 0 or in 1..{shape.n_hidden_layers - 1} (a hidden layer), got {skip_layer}",
        )
    if shape.hidden_dim <= in_dim:
        raise InputError("geometry.mlp_arm_hidden_dim", f"must exceed the input size {in_dim} to have a skip layer")


def sdf_grid_resolution(geometry: GeometryConfig, encoding: EncodingConfig) -> int:
    """Vertices per axis of the SDF grid: ``geometry.sdf_grid_resolution``, or R^3 ~ the hash grid's count."""
    if geometry.sdf_grid_resolution:
        return geometry.sdf_grid_resolution
    return matched_dense_resolution(dataclasses.replace(encoding, dense_features=1))


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

    def __init__(self, cfg: GeometryConfig, encoding_cfg: EncodingConfig, scene_radius: float = 1.0) -> None:
        super().__init__()
        resolution = sdf_grid_resolution(cfg, encoding_cfg)
        if resolution < 4:
            raise InputError(
                "geometry.sdf_grid_resolution", f"must be at least 4 (or 0: parameter-matched), got {resolution}"
            )
        storage = dataclasses.replace(encoding_cfg, dense_resolution=resolution, dense_features=1)
        self.encoding = TorchGridEncoding(storage, "densegrid")
        self.cfg = cfg
        self.resolution = resolution
        self.scene_radius = scene_radius
        self.cell = 2.0 * scene_radius / (resolution - 2)
        self.finest_resolution = resolution - 2
        """Cells across the scene box (2 scene_radius / cell): one cell sets the finite-difference step."""
        self.feature_dim = positional_encoding_dim(3, cfg.pe_frequencies) - 3
        self._sphere_init()

    def update_step(self, step: int) -> None:
        """Nothing changes with the step: the SDF grid has one level."""

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

    def __init__(self, cfg: ColorConfig, n_images: int, feature_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        view_dim = positional_encoding_dim(3, cfg.view_pe_frequencies)
        in_dim = 3 + view_dim + 3 + feature_dim + cfg.appearance_dim
        dims = [in_dim] + [cfg.hidden_dim] * cfg.n_hidden_layers + [3]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.appearance = nn.Embedding(n_images, cfg.appearance_dim) if cfg.appearance_dim > 0 else None

    def forward(
        self,
        x: torch.Tensor,
        view_dirs: torch.Tensor,
        normals: torch.Tensor,
        features: torch.Tensor,
        image_index: torch.Tensor | None = None,
        appearance_code: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All inputs (N, .) -> rgb (N, 3); ``image_index`` (N,) selects the appearance code, or
        ``appearance_code`` (appearance_dim,) is the one code of every point (e.g. ``mean_appearance``)."""
        inputs = [x, positional_encoding(view_dirs, self.cfg.view_pe_frequencies), normals, features]
        if self.appearance is not None:
            if appearance_code is not None:
                inputs.append(appearance_code.to(x)[None].expand(x.shape[0], -1))
            else:
                if image_index is None:
                    image_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                inputs.append(self.appearance(image_index))
        h = torch.cat(inputs, dim=-1)
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return torch.sigmoid(h)

    def mean_appearance(self) -> torch.Tensor | None:
        """The mean of the training images' appearance codes (appearance_dim,); None without codes."""
        return None if self.appearance is None else self.appearance.weight.detach().mean(dim=0)


def make_geometry(
    cfg: GeometryConfig, encoding_cfg: EncodingConfig, scene_radius: float, device: torch.device
) -> SDFNetwork | SDFGridNetwork:
    """The geometry network of the arm ``cfg.arm``."""
    if cfg.arm == "sdfgrid":
        return SDFGridNetwork(cfg, encoding_cfg, scene_radius)
    if cfg.arm == "mlp":
        shape = MLPShape(cfg.mlp_arm_hidden_dim, cfg.mlp_arm_n_hidden_layers, cfg.mlp_arm_skip_layer)
        resolutions = [level.resolution for level in hash_grid_levels(encoding_cfg)]
        return SDFNetwork(cfg, None, scene_radius, shape, level_resolutions=resolutions)
    encoding = make_encoding(encoding_cfg, cfg.arm, device)
    schedule = CoarseToFine(encoding_cfg.c2f_start_levels, encoding_cfg.c2f_every) if cfg.arm == "hashgrid" else None
    return SDFNetwork(cfg, encoding, scene_radius, coarse_to_fine=schedule)


class NeuralSDF(nn.Module):
    """Geometry (one of the four arms) + colour MLP: the whole scene representation."""

    def __init__(
        self,
        geometry: GeometryConfig,
        encoding: EncodingConfig,
        color: ColorConfig,
        n_images: int,
        scene_radius: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        self.sdf_net = make_geometry(geometry, encoding, scene_radius, torch.device(device))
        self.color_net = ColorNetwork(color, n_images, self.sdf_net.feature_dim)
        self.numerical_gradient = geometry.numerical_gradient
        self.scene_radius = scene_radius
        self.fd_step = 0.0
        """> 0: gradients with create_graph are central differences with this step (Neuralangelo), set by ``update_step``."""

    def update_step(self, step: int) -> None:
        """Training-time state for ``step``: the coarse-to-fine level mask and, with numerical
        gradients, a finite-difference step of one cell of the finest active level."""
        self.sdf_net.update_step(step)
        if self.numerical_gradient:
            self.fd_step = 2.0 * self.scene_radius / self.sdf_net.finest_resolution

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
