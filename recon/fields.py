"""SDF and colour networks (MonoSDF / IDR layout) on top of a grid encoding."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from recon.config import EncodingConfig, FieldConfig
from recon.encodings import make_encoding


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


class SDFNetwork(nn.Module):
    """SDF MLP: ``cat(x, PE(x), grid(x))`` -> (sdf, feature).

    Points are in normalised coordinates (the scene's unit sphere); the grid sees
    them mapped to [0, 1]^3 by ``(x / scene_radius + 1) / 2``.
    """

    def __init__(self, cfg: FieldConfig, encoding: nn.Module | None, scene_radius: float = 1.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoding = encoding
        self.scene_radius = scene_radius
        grid_dim = encoding.out_dim if encoding is not None else 0
        pe_dim = positional_encoding_dim(3, cfg.pe_frequencies)
        dims = [pe_dim + grid_dim] + [cfg.hidden_dim] * cfg.n_hidden_layers + [1 + cfg.feature_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self._geometric_init(pe_dim)
        if cfg.weight_norm:
            self.layers = nn.ModuleList(weight_norm(layer) for layer in self.layers)
        self.activation = nn.Softplus(beta=cfg.softplus_beta)

    @torch.no_grad()
    def _geometric_init(self, pe_dim: int) -> None:
        """IDR's sphere initialisation; PE and grid inputs of the first layer start at zero."""
        sign = -1.0 if self.cfg.inside_outside else 1.0
        for index, layer in enumerate(self.layers):
            out_dim, in_dim = layer.weight.shape
            if index == len(self.layers) - 1:
                nn.init.normal_(layer.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(layer.bias, -sign * self.cfg.sphere_radius)
                continue
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
            nn.init.zeros_(layer.bias)
            if index == 0:
                layer.weight[:, 3:].zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) normalised points -> sdf (N,), feature (N, feature_dim)."""
        inputs = [positional_encoding(x, self.cfg.pe_frequencies)]
        if self.encoding is not None:
            unit = (x / self.scene_radius + 1.0) * 0.5
            inputs.append(self.encoding(unit).to(x.dtype))
        h = torch.cat(inputs, dim=-1)
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if index < len(self.layers) - 1:
                h = self.activation(h)
        return h[:, 0], h[:, 1:]


class ColorNetwork(nn.Module):
    """IDR-mode colour MLP: ``cat(x, PE(view_dir), normal, feature[, appearance])`` -> RGB in (0, 1)."""

    def __init__(self, cfg: FieldConfig, n_images: int) -> None:
        super().__init__()
        self.cfg = cfg
        view_dim = positional_encoding_dim(3, cfg.view_pe_frequencies)
        in_dim = 3 + view_dim + 3 + cfg.feature_dim + cfg.appearance_dim
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


class NeuralSDF(nn.Module):
    """Encoding + SDF MLP + colour MLP: the whole scene representation."""

    def __init__(
        self,
        encoding_cfg: EncodingConfig,
        field_cfg: FieldConfig,
        n_images: int,
        scene_radius: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        encoding = make_encoding(encoding_cfg, torch.device(device))
        self.sdf_net = SDFNetwork(field_cfg, encoding, scene_radius)
        self.color_net = ColorNetwork(field_cfg, n_images)

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> sdf (N,)."""
        return self.sdf_net(x)[0]

    def sdf_feature_gradient(
        self, x: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3) -> sdf (N,), feature (N, F), gradient of the sdf w.r.t. x (N, 3).

        ``create_graph=True`` keeps the gradient differentiable (for the eikonal loss).
        """
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            sdf, feature = self.sdf_net(x)
            (gradient,) = torch.autograd.grad(sdf.sum(), x, create_graph=create_graph)
        return sdf, feature, gradient

    def grid_parameters(self) -> list[nn.Parameter]:
        """Parameters of the grid encoding (trained at a higher learning rate)."""
        encoding = self.sdf_net.encoding
        return list(encoding.parameters()) if encoding is not None else []

    def network_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not part of the grid encoding."""
        grid_ids = {id(p) for p in self.grid_parameters()}
        return [p for p in self.parameters() if id(p) not in grid_ids]
