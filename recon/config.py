"""One configuration schema for every stage of recon.

Configs are plain dataclasses. They load from YAML (``configs/*.yaml``) and take
``section.key=value`` overrides from the command line. Nothing reads a global:
each stage receives the section it needs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from recon.errors import InputError


ARMS = ("hashgrid", "densegrid", "mlp", "sdfgrid")
"""MonoSDF's four geometry arms (``geometry.arm``)."""
MESH_COLORS = ("none", "vertex", "texture")
"""What an exported mesh carries besides its normals (``recon extract --color``; ``recon.mesh_color``)."""
DEFAULT_TEXTURE_SIZE = 2048
"""Texels a side of a baked texture (``recon extract --texture-size``)."""


@dataclass
class GeometryConfig:
    """The geometry arm and its SDF network (MonoSDF / IDR layout)."""

    arm: Literal["hashgrid", "densegrid", "mlp", "sdfgrid"] = "hashgrid"
    """MonoSDF's four arms: a multi-resolution hash grid or one dense feature grid (both feeding the
    SDF MLP; see ``encoding``), no grid (a deep positional-encoding MLP), or a dense grid that stores
    the SDF itself (no geometry MLP)."""
    hidden_dim: int = 64
    """Grid arms: width of the SDF MLP's hidden layers (MonoSDF: 256)."""
    n_hidden_layers: int = 2
    """Grid arms: hidden layers of the SDF MLP."""
    feature_dim: int = 64
    """Size of the geometry feature passed to the colour MLP (MonoSDF: 256)."""
    pe_frequencies: int = 6
    """Positional-encoding frequencies of x in the SDF MLP's input."""
    softplus_beta: float = 100.0
    """Beta of the Softplus activation."""
    weight_norm: bool = True
    """Weight normalisation on the SDF MLP's linear layers."""
    sphere_radius: float = 0.6
    """Geometric initialisation: the SDF starts as a sphere of this radius."""
    inside_outside: bool = False
    """Flip the initial sphere (camera inside, for rooms)."""
    mlp_arm_hidden_dim: int = 256
    """MLP arm: width of its SDF MLP's hidden layers (MonoSDF: 256)."""
    mlp_arm_n_hidden_layers: int = 8
    """MLP arm: hidden layers of its SDF MLP (MonoSDF: 8)."""
    mlp_arm_skip_layer: int = 4
    """MLP arm: the linear layer that sees the encoded input again, concatenated (MonoSDF: 4; 0: none)."""
    sdf_grid_resolution: int = 0
    """SDF grid arm: vertices per axis; 0 matches the hash grid's parameter count (one value per vertex)."""
    numerical_gradient: bool = False
    """Neuralangelo's finite-difference SDF gradients while fitting (6 more SDF evaluations per point, no
    double backward), with a step of one cell of the finest active grid level."""


@dataclass
class EncodingConfig:
    """The grid encoding of points in [0, 1]^3 that feeds the SDF MLP of the two grid arms (field
    names follow tiny-cuda-nn): the hash grid's levels, or the dense grid's size."""

    n_levels: int = 16
    """Hash grid: number of resolution levels."""
    n_features_per_level: int = 2
    """Hash grid: features stored per vertex and level."""
    log2_hashmap_size: int = 19
    """Hash grid: log2 of the number of vertices a level may hold."""
    base_resolution: int = 16
    """Hash grid: resolution of the coarsest level."""
    finest_resolution: int = 2048
    """Hash grid: resolution of the finest level (sets the per-level scale)."""
    interpolation: Literal["linear", "smoothstep"] = "linear"
    """Interpolation weights: trilinear, or trilinear of smoothstep(frac)."""
    dense_resolution: int = 0
    """Dense grid: vertices per axis; 0 matches the hash grid's parameter count."""
    dense_features: int = 8
    """Dense grid: features per vertex."""
    init_scale: float = 1e-4
    """Parameters start uniform in [-init_scale, init_scale]."""
    backend: Literal["auto", "torch", "tcnn", "fused", "triton"] = "auto"
    """auto: on CUDA tinycudann when it imports, else the Triton kernels when triton imports; on the
    CPU the fused kernel when it builds; else pure PyTorch. fused: the compiled CPU kernel (an error
    when it cannot be built); triton: the Triton GPU kernels (CUDA)."""
    c2f_start_levels: int = 0
    """Coarse-to-fine (Neuralangelo): hash-grid levels whose features the SDF MLP sees at the start,
    one more every c2f_every steps (0: all levels from the start)."""
    c2f_every: int = 100
    """Coarse-to-fine: steps between enabling one more hash-grid level."""

    @property
    def per_level_scale(self) -> float:
        """Growth factor b between levels: exp(ln(finest / base) / (L - 1))."""
        if self.n_levels <= 1:
            return 1.0
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.n_levels - 1))


@dataclass
class ColorConfig:
    """The colour MLP (IDR mode): position, view direction, normal and geometry feature -> RGB."""

    hidden_dim: int = 64
    """Width of the hidden layers (MonoSDF: 256)."""
    n_hidden_layers: int = 2
    """Hidden layers."""
    view_pe_frequencies: int = 4
    """Positional-encoding frequencies of the view direction."""
    appearance_dim: int = 0
    """Per-image appearance embedding size (0: none; MonoSDF: 32)."""


@dataclass
class RenderConfig:
    """Density, sampler and compositing."""

    density: Literal["laplace", "neus"] = "laplace"
    """VolSDF's Laplace-CDF density, or NeuS's logistic form."""
    beta_init: float = 0.1
    """Initial Laplace scale beta (NeuS: 1 / initial s)."""
    beta_min: float = 1e-4
    """Floor of beta."""
    sampler: Literal["error_bounded", "surface_guided"] = "surface_guided"
    """VolSDF's error-bounded sampler, or coarse search for the first surface crossing and dense samples around it."""
    n_eval: int = 64
    """Error-bounded sampler: samples per ray at which the SDF is evaluated."""
    n_importance: int = 32
    """Samples drawn from the final weights."""
    n_extra: int = 16
    """Samples kept from the evaluation set (with the importance samples: the rendered set)."""
    eps: float = 0.1
    """Error-bounded sampler: bound on the opacity error."""
    n_bisection: int = 10
    """Error-bounded sampler: bisection steps on beta."""
    max_rounds: int = 5
    """Error-bounded sampler: upsampling rounds."""
    scene_radius: float = 1.0
    """Rays are cut to this sphere (the normalised scene)."""
    background: Literal["auto", "white", "black", "nerf++"] = "auto"
    """What lies behind the scene sphere: a constant colour (white, black), or nerf++ (a small field on
    the inverted sphere, for unmasked real captures). auto: the images' border colour when it is
    uniform or the scene has masks (black when the border is not uniform), else nerf++."""
    n_background: int = 32
    """nerf++ background: samples per ray beyond the scene sphere (uniform in inverse distance)."""
    background_hidden_dim: int = 64
    """nerf++ background: width of its MLP's two hidden layers."""
    occupancy_resolution: int = 64
    """Occupancy grid cells per axis over the scene box, updated from the SDF while fitting: samples go
    only where the surface can be seen (not empty space, not the inside). 0: off. At 64 (the default)
    a fit makes 3.1x fewer field evaluations per ray for a mesh as good (docs/DECISIONS.md)."""
    occupancy_tolerance: float = 1e-3
    """Largest opacity the occupancy grid may cut from a ray (sets its margin around the surface)."""


@dataclass
class TrainConfig:
    """Optimisation."""

    iters: int = 3000
    """Optimisation steps."""
    batch_rays: int = 512
    """Rays per step, from random pixels of random images."""
    lr: float = 2e-3
    """Learning rate of the MLPs (MonoSDF: 5e-4; 2e-3 reaches the same Chamfer 2-3x sooner on a CPU budget)."""
    grid_lr_factor: float = 20.0
    """Grid parameters learn this many times faster."""
    lr_final_factor: float = 0.1
    """Exponential decay to this fraction of the learning rate over the run."""
    warmup_iters: int = 0
    """Linear learning-rate warm-up."""
    eikonal_weight: float = 0.1
    """Weight of the eikonal loss."""
    mask_weight: float = 0.1
    """Weight of the mask BCE (when masks exist)."""
    smooth_weight: float = 0.005
    """Weight of the normal smoothness loss."""
    depth_weight: float = 0.1
    """Weight of the scale-and-shift-invariant depth loss (when the scene has depth cues; MonoSDF: 0.1)."""
    normal_l1_weight: float = 0.05
    """Weight of the L1 loss on camera-space normals (when the scene has normal cues; MonoSDF: 0.05)."""
    normal_angular_weight: float = 0.05
    """Weight of the angular (1 - cos) normal loss (when the scene has normal cues; MonoSDF: 0.05)."""
    holdout: int = 0
    """Keep every K-th view (0, K, 2K, ...) out of training and report PSNR / mask IoU on them (0: off)."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """auto (CUDA when torch sees a GPU, else the CPU), cpu or cuda."""
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    """Float32 matrix products, i.e. the MLPs (the grids have none): highest (full float32), high (TF32
    on GPUs that have it), medium (bfloat16 products); torch.set_float32_matmul_precision. Off by
    default: what TF32 or bf16 costs in accuracy is not measured yet (docs/DECISIONS.md)."""
    log_every: int = 50
    """Steps between lines of the metrics log."""
    val_every: int = 500
    """Steps between validation renders (0: only at the end)."""
    ckpt_every: int = 500
    """Steps between checkpoints."""
    val_max_side: int = 160
    """Validation and held-out renders are made at 1/k resolution (one ray per k x k block of pixels,
    against the block's mean colour), k the smallest that brings the long side to at most this."""
    holdout_supersample: int = 2
    """Held-out scores: each pixel is the mean of this many x this many rays spread over its k x k block
    (val_max_side), so it integrates its footprint as the block's mean colour does (1: one ray through
    the centre, which aliases fine texture: -0.65 dB on dtu_scan24_neus, docs/DECISIONS.md)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    occupancy_every: int = 16
    """Steps between updates of the occupancy grid (render.occupancy_resolution)."""
    tensorboard: Literal["auto", "on", "off"] = "auto"
    """TensorBoard event files in RUN/tensorboard/ (every metrics.jsonl record as scalars, validation and
    held-out renders as images): auto when the tensorboard package is installed (recon[tensorboard]),
    on (an error without it), off."""


@dataclass
class DataConfig:
    """How a capture is read (recon.datasets.load_scene) and turned into rays."""

    format: Literal["auto", "dtu", "monosdf", "nerf-synthetic", "ngp", "colmap"] = "auto"
    """Capture format; auto detects it from the files."""
    downscale: int = 1
    """Integer factor: images, masks and cues are area-averaged, intrinsics follow."""
    rgba_background: Literal["white", "black"] = "white"
    """Colour that RGBA images (NeRF-synthetic, ngp) are composited on when read (NeRF: white); what the
    fit renders behind the scene is ``render.background``."""
    max_rays: int = 1 << 20
    """Most rays built at once (a training batch, or a chunk of a rendered image)."""
    colmap_sphere_rule: Literal["points", "cameras"] = "points"
    """COLMAP captures: the scene sphere around the sparse points most cameras see, or from the cameras
    alone (as for the JSON formats)."""
    colmap_sphere: list[float] = dataclasses.field(default_factory=list)
    """COLMAP captures: the scene sphere given, [cx, cy, cz, r] in the model's world units (overrides
    the rule); empty: by the rule."""


@dataclass
class MeshConfig:
    """Marching-cubes extraction."""

    resolution: int = 256
    """Grid vertices per axis over the bounding box."""
    block_size: int = 64
    """Vertices per axis evaluated at once."""
    level: float = 0.0
    """Iso-level of the SDF."""
    largest_component: bool = False
    """Keep only the largest connected component."""


@dataclass
class Config:
    """Everything a run needs."""

    geometry: GeometryConfig = dataclasses.field(default_factory=GeometryConfig)
    encoding: EncodingConfig = dataclasses.field(default_factory=EncodingConfig)
    color: ColorConfig = dataclasses.field(default_factory=ColorConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low`` to ``high`` (each end included unless
    ``*_open``), plus ``off`` (a value outside the interval that means "off"). Numbers are
    always finite."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    off: float | None = None
    off_means: str = "off"

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.off is not None and value == self.off:
            return True
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 1]``, ``0 (off) or >= 2``, ..."""
        if self.high == math.inf:
            text = f"{'>' if self.low_open else '>='} {self.low:g}" if self.low > -math.inf else "a finite number"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return text if self.off is None else f"{self.off:g} ({self.off_means}) or {text}"


def at_least(low: float) -> Range:
    return Range(low)


def positive() -> Range:
    return Range(0.0, low_open=True)


def check_range(where: str, value: Any, allowed: Range) -> None:
    """Raise ``InputError(where, "must be <range>, got <value>")`` unless ``allowed`` holds ``value``."""
    if not allowed.allows(value):
        finite = "" if math.isfinite(value) or allowed.low == -math.inf else "a finite number "
        raise InputError(where, f"must be {finite}{allowed.describe()}, got {value!r}")


COUNT, ANY_NUMBER, WEIGHT = at_least(1), Range(), at_least(0)
RANGES: dict[str, Range] = {
    "geometry.hidden_dim": COUNT,
    "geometry.n_hidden_layers": COUNT,
    "geometry.feature_dim": COUNT,
    "geometry.pe_frequencies": at_least(0),
    "geometry.softplus_beta": positive(),
    "geometry.sphere_radius": positive(),
    "geometry.mlp_arm_hidden_dim": COUNT,
    "geometry.mlp_arm_n_hidden_layers": COUNT,
    "geometry.mlp_arm_skip_layer": at_least(0),
    "geometry.sdf_grid_resolution": Range(4, off=0, off_means="parameter-matched"),
    "encoding.n_levels": COUNT,
    "encoding.n_features_per_level": COUNT,
    "encoding.log2_hashmap_size": Range(1, 30),
    "encoding.base_resolution": at_least(2),
    "encoding.finest_resolution": at_least(2),
    "encoding.dense_resolution": Range(2, off=0, off_means="parameter-matched"),
    "encoding.dense_features": COUNT,
    "encoding.init_scale": at_least(0),
    "encoding.c2f_start_levels": at_least(0),
    "encoding.c2f_every": COUNT,
    "color.hidden_dim": COUNT,
    "color.n_hidden_layers": COUNT,
    "color.view_pe_frequencies": at_least(0),
    "color.appearance_dim": at_least(0),
    "render.beta_init": positive(),
    "render.beta_min": at_least(0),
    "render.n_eval": at_least(2),
    "render.n_importance": at_least(0),
    "render.n_extra": at_least(0),
    "render.eps": Range(0, 1, low_open=True, high_open=True),
    "render.n_bisection": at_least(0),
    "render.max_rounds": at_least(0),
    "render.scene_radius": positive(),
    "render.n_background": COUNT,
    "render.background_hidden_dim": COUNT,
    "render.occupancy_resolution": at_least(0),
    "render.occupancy_tolerance": Range(0, 1, low_open=True, high_open=True),
    "train.iters": COUNT,
    "train.batch_rays": COUNT,
    "train.lr": positive(),
    "train.grid_lr_factor": positive(),
    "train.lr_final_factor": Range(0, 1, low_open=True),
    "train.warmup_iters": at_least(0),
    "train.eikonal_weight": WEIGHT,
    "train.mask_weight": WEIGHT,
    "train.smooth_weight": WEIGHT,
    "train.depth_weight": WEIGHT,
    "train.normal_l1_weight": WEIGHT,
    "train.normal_angular_weight": WEIGHT,
    "train.holdout": Range(2, off=0),
    "train.seed": at_least(0),
    "train.log_every": COUNT,
    "train.val_every": at_least(0),
    "train.ckpt_every": COUNT,
    "train.val_max_side": at_least(2),
    "train.holdout_supersample": COUNT,
    "train.threads": at_least(0),
    "train.occupancy_every": COUNT,
    "data.downscale": COUNT,
    "data.max_rays": COUNT,
    "mesh.resolution": at_least(8),
    "mesh.block_size": at_least(2),
    "mesh.level": ANY_NUMBER,
}
"""The allowed range of every numeric setting, checked when a config is loaded (``load_config``,
``config_from_dict``), before anything is written."""

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
"""``train.device``: auto, cpu, cuda or cuda:N."""


def check_config(cfg: Config) -> Config:
    """Raise ``InputError`` naming the key when settings contradict each other (each value's own
    range is checked as it is set, ``RANGES``); return ``cfg``."""
    r, e, g = cfg.render, cfg.encoding, cfg.geometry
    if r.beta_init <= r.beta_min:
        raise InputError("render.beta_init", f"must exceed render.beta_min ({r.beta_min:g}), got {r.beta_init:g}")
    if r.density == "neus" and r.beta_min <= 0:
        raise InputError("render.beta_min", f"must be > 0 with render.density=neus, got {r.beta_min:g}")
    if r.n_importance + r.n_extra < 1:
        raise InputError("render.n_importance", "and render.n_extra must not both be 0 (no samples to render)")
    if r.sampler == "surface_guided" and r.n_eval < 3:
        raise InputError("render.n_eval", f"must be >= 3 with render.sampler=surface_guided, got {r.n_eval}")
    if e.finest_resolution < e.base_resolution:
        raise InputError("encoding.finest_resolution",
                         f"must be >= encoding.base_resolution ({e.base_resolution}), got {e.finest_resolution}")
    if g.mlp_arm_skip_layer >= g.mlp_arm_n_hidden_layers:
        raise InputError("geometry.mlp_arm_skip_layer", f"must be 0 (no skip) or a hidden layer, 1.."
                         f"{g.mlp_arm_n_hidden_layers - 1} (geometry.mlp_arm_n_hidden_layers - 1), got {g.mlp_arm_skip_layer}")
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML and checkpoints)."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the annotated field type."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML reads a bare on / off as a boolean
        if value not in choices:
            raise InputError(where, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    try:
        if annotation is bool:
            if isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise TypeError(value)
            (item,) = typing.get_args(annotation)
            return [_coerce(v, item, where) for v in value]
    except (TypeError, ValueError):
        raise InputError(where, f"expects {getattr(annotation, '__name__', annotation)}, got {value!r}") from None
    return value


def _section_types(section: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


RENAMED_KEYS = {
    "encoding.type": "geometry.arm",
    "encoding.mlp_hidden_dim": "geometry.mlp_arm_hidden_dim",
    "encoding.mlp_n_hidden_layers": "geometry.mlp_arm_n_hidden_layers",
    "encoding.mlp_skip_layer": "geometry.mlp_arm_skip_layer",
    "encoding.sdf_resolution": "geometry.sdf_grid_resolution",
    **{f"field.{key}": f"geometry.{key}" for key in (
        "hidden_dim", "n_hidden_layers", "feature_dim", "pe_frequencies", "softplus_beta", "weight_norm",
        "sphere_radius", "inside_outside")},
    "field.color_hidden_dim": "color.hidden_dim",
    "field.color_hidden_layers": "color.n_hidden_layers",
    "field.view_pe_frequencies": "color.view_pe_frequencies",
    "field.appearance_dim": "color.appearance_dim",
    "train.c2f_start_levels": "encoding.c2f_start_levels",
    "train.c2f_every": "encoding.c2f_every",
    "train.numerical_gradient": "geometry.numerical_gradient",
    "data.background": "data.rgba_background",
}
"""Keys of earlier versions -> their names now. A config that uses an old key is refused with the
new name; a checkpoint's saved config is translated (``config_from_dict(..., migrate=True)``)."""


def apply_dict(cfg: Config, data: dict[str, Any], source: str, migrate: bool = False) -> Config:
    """Set the fields named in a nested dict; unknown or renamed keys raise ``InputError``
    (``migrate``: renamed keys are taken under their new names instead)."""
    if not isinstance(data, dict):
        raise InputError(source, "must hold a mapping of sections")
    for name, value in _flatten(data, source).items():
        if name in RENAMED_KEYS:
            if not migrate:
                raise InputError(source, f"config key {name} was renamed to {RENAMED_KEYS[name]}")
            name = RENAMED_KEYS[name]
        section_name, key = name.split(".", 1)
        section = getattr(cfg, section_name, None) if section_name in _section_names() else None
        if section is None:
            raise InputError(source, f"unknown config section {section_name!r} (known: {', '.join(_section_names())})")
        types = _section_types(section)
        if key not in types:
            raise InputError(source, f"unknown config key {name}")
        where = name if source.split("=", 1)[0] == name else f"{source}: {name}"
        setattr(section, key, _checked(_coerce(value, types[key], where), name, where))
    return cfg


def _checked(value: Any, name: str, where: str) -> Any:
    """``value`` of setting ``name`` when it lies in the setting's range (``RANGES``; ``train.device``:
    ``DEVICE``), else ``InputError(where, ...)``."""
    if name in RANGES:
        check_range(where, value, RANGES[name])
    elif name == "train.device" and not DEVICE.match(value):
        raise InputError(where, f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _flatten(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``{'train': {'iters': 5}}`` -> ``{'train.iters': 5}``; a section that is not a mapping is an error."""
    flat = {}
    for section_name, values in data.items():
        if not isinstance(values, dict):
            known = section_name in _section_names() or section_name == "field"
            if not known:
                raise InputError(source, f"unknown config section {section_name!r} (known: {', '.join(_section_names())})")
            raise InputError(source, f"section {section_name!r} must be a mapping")
        flat.update({f"{section_name}.{key}": value for key, value in values.items()})
    return flat


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def parse_override(text: str) -> dict[str, Any]:
    """``'train.iters=100'`` -> ``{'train': {'iters': '100'}}`` (YAML-typed value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise InputError(text, "overrides look like section.key=value, e.g. train.iters=500")
    key, raw = text.split("=", 1)
    section, name = key.split(".", 1)
    value = yaml.safe_load(raw) if raw else ""
    return {section: {name: value}}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides."""
    cfg = Config()
    if path is not None:
        apply_dict(cfg, _read_yaml(Path(path)), str(path))
    for text in overrides or []:
        apply_dict(cfg, parse_override(text), text)
    return check_config(cfg)


def asked_keys(path: str | Path | None = None, overrides: list[str] | None = None) -> set[str]:
    """The ``section.key`` names that the YAML file at ``path`` and the overrides set (what a command
    asks for, as opposed to the defaults); call after ``load_config`` has checked them."""
    keys = set(_flatten(_read_yaml(Path(path)), str(path))) if path is not None else set()
    for text in overrides or []:
        keys |= set(_flatten(parse_override(text), text))
    return keys


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None


def config_from_dict(data: dict[str, Any], source: str = "checkpoint", migrate: bool = False) -> Config:
    """Rebuild a config saved with ``config_to_dict`` (``migrate``: one saved by an earlier version,
    its renamed keys taken under their new names)."""
    return check_config(apply_dict(Config(), data, source, migrate))
