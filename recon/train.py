"""Fitting: a run directory, the optimisation loop, validation renders and resumable checkpoints."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from recon.config import Config, config_from_dict, config_to_dict
from recon.datasets import load_scene
from recon.datasets.scene import Scene
from recon.errors import InputError
from recon.fields import NeuralSDF
from recon.io import atomic_path, write_json_atomic, write_text_atomic
from recon.losses import eikonal, mask_bce, normal_smoothness, psnr, rgb_l1
from recon.rays import RayBatch, RaySource
from recon.render.renderer import Density, RenderOutput, render_rays
from recon.visualize import save_validation_image

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunFiles:
    """Where a run keeps its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def val_dir(self) -> Path:
        return self.root / "val"


def choose_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("train.device", "CUDA was asked for but is not available")
    return torch.device(name)


@dataclass
class Model:
    """What a checkpoint restores: the field, the density and the scene's normalisation."""

    field: NeuralSDF
    density: Density
    cfg: Config
    scale_mat: np.ndarray
    meta: dict[str, Any]


def build_model(cfg: Config, n_images: int, device: torch.device) -> tuple[NeuralSDF, Density]:
    """Fresh field and density for a config."""
    field = NeuralSDF(cfg.encoding, cfg.field, n_images, cfg.render.scene_radius, device).to(device)
    return field, Density(cfg.render).to(device)


def load_model(run_dir: str | Path, device: torch.device | None = None) -> Model:
    """Restore the field of a run from its checkpoint."""
    files = RunFiles(Path(run_dir))
    if not files.checkpoint.is_file():
        raise InputError(files.root, f"no {CHECKPOINT}: not a recon run directory, or its fit has not saved yet")
    state = _read_checkpoint(files.checkpoint)
    cfg = config_from_dict(state["config"], str(files.checkpoint))
    device = device or choose_device(cfg.train.device)
    field, density = build_model(cfg, state["meta"]["n_images"], device)
    field.load_state_dict(state["field"])
    density.load_state_dict(state["density"])
    field.eval()
    return Model(field, density, cfg, np.asarray(state["meta"]["scale_mat"]), state["meta"])


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is one user-facing error
        raise InputError(path, f"unreadable checkpoint ({type(err).__name__})") from None


def make_optimizer(field: NeuralSDF, density: Density, cfg: Config) -> torch.optim.Adam:
    """Adam with the grid at ``grid_lr_factor`` times the base learning rate."""
    groups = [
        {"params": field.network_parameters() + list(density.parameters()), "lr": cfg.train.lr},
        {"params": field.grid_parameters(), "lr": cfg.train.lr * cfg.train.grid_lr_factor},
    ]
    # fused: one kernel for all parameters, 8x faster than the default on a 12M-entry grid (CPU).
    return torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.99), eps=1e-15, fused=True)


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up, then exponential decay to ``lr_final_factor`` at the last step."""
    t = cfg.train
    warm = min(1.0, (step + 1) / t.warmup_iters) if t.warmup_iters > 0 else 1.0
    return warm * t.lr_final_factor ** (min(step, t.iters) / max(t.iters, 1))


BORDER_UNIFORMITY = 0.05
"""Largest spread (95th - 5th percentile, colours in [0, 1]) of a border taken as a uniform background."""


def background_colour(scene: Scene, mode: str) -> list[float]:
    """RGB in [0, 1] composited behind the surface.

    ``auto``: the median colour of the images' one-pixel border when that border is
    uniform (a rendered or masked-out background), else black.
    """
    if mode == "white":
        return [1.0, 1.0, 1.0]
    if mode == "black":
        return [0.0, 0.0, 0.0]
    images = scene.images
    border = np.concatenate(
        [images[:, 0].reshape(-1, 3), images[:, -1].reshape(-1, 3), images[:, :, 0].reshape(-1, 3),
         images[:, :, -1].reshape(-1, 3)]
    ).astype(np.float32) / 255.0
    low, high = np.percentile(border, [5, 95], axis=0)
    if float((high - low).max()) > BORDER_UNIFORMITY:
        return [0.0, 0.0, 0.0]
    return np.median(border, axis=0).tolist()


@dataclass
class StepLosses:
    """The terms of one step's loss."""

    total: torch.Tensor
    rgb: torch.Tensor
    eikonal: torch.Tensor
    mask: torch.Tensor
    smooth: torch.Tensor
    psnr: torch.Tensor


class Fitter:
    """One fit of a field to a scene, resumable from its run directory."""

    def __init__(self, scene: Scene, run_dir: Path, cfg: Config, data_dir: Path) -> None:
        self.scene, self.cfg, self.files = scene, cfg, RunFiles(run_dir)
        self.device = choose_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.rays = RaySource(scene, self.device)
        self.field, self.density = build_model(cfg, scene.n_images, self.device)
        self.optimizer = make_optimizer(self.field, self.density, cfg)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.background = torch.tensor(background_colour(scene, cfg.render.background), device=self.device)
        self.meta = {
            "data_dir": str(data_dir),
            "n_images": scene.n_images,
            "image_size": [scene.height, scene.width],
            "scale_mat": scene.scale_mat.tolist(),
            "gt_mesh": str(scene.gt_mesh_path) if scene.gt_mesh_path else None,
            "encoding": cfg.encoding.type,
            "background": self.background.tolist(),
            "n_params_encoding": sum(p.numel() for p in self.field.grid_parameters()),
            "n_params_total": sum(p.numel() for p in self.field.parameters()),
        }
        self.step, self.elapsed = 0, 0.0

    def losses(self, batch: RayBatch, out: RenderOutput) -> StepLosses:
        """The weighted loss of one batch."""
        t = self.cfg.train
        use_mask = batch.mask is not None
        rgb = rgb_l1(out.rgb, batch.rgb, batch.mask if use_mask else None)
        mask = mask_bce(out.opacity, batch.mask) if use_mask else out.rgb.new_zeros(())
        eik, smooth = self._regularisers(batch, out)
        total = rgb + t.eikonal_weight * eik + t.mask_weight * mask + t.smooth_weight * smooth
        with torch.no_grad():
            scored = batch.mask if use_mask and bool(batch.mask.any()) else slice(None)
            quality = psnr(out.rgb[scored], batch.rgb[scored])
        return StepLosses(total, rgb, eik, mask, smooth, quality)

    def _regularisers(self, batch: RayBatch, out: RenderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Eikonal on the ray samples, uniform box points and surface points; smoothness on the latter."""
        n = batch.origins.shape[0]
        r = self.cfg.render.scene_radius
        uniform = (torch.rand(n, 3, generator=self.generator).to(self.device) * 2.0 - 1.0) * r
        opaque = out.opacity.detach() > 0.5
        hit_distance = out.depth.detach()[opaque] / out.opacity.detach()[opaque]
        surface = batch.origins[opaque] + hit_distance[:, None] * batch.dirs[opaque]
        nearby = surface + (torch.rand(surface.shape, generator=self.generator).to(self.device) - 0.5) * 0.02
        points = torch.cat([uniform, surface, nearby])
        _, _, grad = self.field.sdf_feature_gradient(points, create_graph=True)
        gradients = torch.cat([out.gradients.reshape(-1, 3), grad])
        if surface.shape[0] == 0 or self.cfg.train.smooth_weight == 0:
            return eikonal(gradients), grad.new_zeros(())
        normals = torch.nn.functional.normalize(grad[n:], dim=-1)
        m = surface.shape[0]
        return eikonal(gradients), normal_smoothness(normals[:m], normals[m:])

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns its loss terms."""
        factor = lr_factor(self.step, self.cfg)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs()):
            group["lr"] = base * factor
        batch = self.rays.random_batch(self.cfg.train.batch_rays, self.generator)
        out = render_rays(
            self.field, self.density, batch.origins, batch.dirs, self.cfg.render, self.background,
            training=True, image_index=batch.image_index, generator=self.generator,
        )
        losses = self.losses(batch, out)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        self.optimizer.step()
        self.step += 1
        return {name: float(value.detach()) for name, value in vars(losses).items()}

    def _base_lrs(self) -> list[float]:
        t = self.cfg.train
        bases = [t.lr, t.lr * t.grid_lr_factor]
        return bases[: len(self.optimizer.param_groups)]

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically."""
        state = {
            "field": self.field.state_dict(),
            "density": self.density.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "config": config_to_dict(self.cfg),
            "meta": self.meta,
        }
        with atomic_path(self.files.checkpoint) as tmp:
            torch.save(state, tmp)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state."""
        self.field.load_state_dict(state["field"])
        self.density.load_state_dict(state["density"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])

    def validate(self) -> float:
        """Render one view (rgb, normals, depth) to ``val/step_XXXXXX.png``; return its PSNR."""
        index = (self.step // max(self.cfg.train.val_every, 1)) % self.scene.n_images
        rendered = render_image(self.field, self.density, self.rays, index, self.cfg, self.background)
        path = self.files.val_dir / f"step_{self.step:06d}.png"
        save_validation_image(path, rendered)
        return float(rendered["psnr"])


@torch.no_grad()
def render_image(
    field: NeuralSDF, density: Density, rays: RaySource, index: int, cfg: Config, background: torch.Tensor,
    chunk: int = 4096,
) -> dict[str, Any]:
    """Render image ``index`` (every k-th pixel, long side <= ``val_max_side``) as arrays:
    rgb, target, normal (camera space), depth (z), opacity."""
    step = max(1, math.ceil(max(rays.height, rays.width) / cfg.train.val_max_side))
    u, v, h, w = rays.image_pixels(index, step)
    parts: dict[str, list[torch.Tensor]] = {"rgb": [], "target": [], "normal": [], "depth": [], "opacity": []}
    world_to_cam = rays.cam_to_world[index, :3, :3].T
    for start in range(0, u.shape[0], chunk):
        sl = slice(start, start + chunk)
        image_index = torch.full_like(u[sl], index)
        batch = rays.batch(image_index, u[sl], v[sl])
        out = render_rays(field, density, batch.origins, batch.dirs, cfg.render, background, False, image_index)
        depth = out.depth / out.opacity.clamp_min(1e-6)
        parts["rgb"].append(out.rgb)
        parts["target"].append(batch.rgb)
        parts["normal"].append(out.normal @ world_to_cam.T)
        parts["depth"].append(depth * batch.z_scale)
        parts["opacity"].append(out.opacity)
    result: dict[str, Any] = {k: torch.cat(p).reshape(h, w, -1).squeeze(-1).cpu().numpy() for k, p in parts.items()}
    result["psnr"] = float(psnr(torch.from_numpy(result["rgb"]), torch.from_numpy(result["target"])))
    return result


def fit(data_dir: str | Path, run_dir: str | Path, cfg: Config, progress: bool = True) -> Path:
    """Fit ``cfg`` to the scene in ``data_dir``; resume if ``run_dir`` holds a checkpoint.

    Returns the run directory. Everything the run writes is written atomically.
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    files = RunFiles(run_dir)
    state = _read_checkpoint(files.checkpoint) if files.checkpoint.is_file() else None
    if state is not None:
        cfg = _resumed_config(state, cfg, files.checkpoint)
    scene = load_scene(data_dir)
    fitter = Fitter(scene, run_dir, cfg, data_dir)
    if state is not None:
        fitter.restore(state)
        _truncate_log(files.metrics, fitter.step)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(files.config, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    write_json_atomic(files.meta, fitter.meta)
    _loop(fitter, progress)
    return run_dir


def _resumed_config(state: dict[str, Any], requested: Config, where: Path) -> Config:
    """The saved config, with the requested number of iterations (the one thing a resume may change)."""
    saved = config_from_dict(state["config"], str(where))
    if saved.encoding.type != requested.encoding.type:
        raise InputError(
            where, f"run was fitted with encoding {saved.encoding.type!r}, not {requested.encoding.type!r}; "
            "use another --out to start a new run"
        )
    saved.train.iters = requested.train.iters
    return saved


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint that a resume continues from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    """The step of a log line; a line cut short by a crash counts as never written."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _loop(fitter: Fitter, progress: bool) -> None:
    t = fitter.cfg.train
    bar = tqdm(total=t.iters, initial=fitter.step, disable=not progress, unit="it", dynamic_ncols=True)
    fitter.field.train()
    while fitter.step < t.iters:
        start = time.perf_counter()
        losses = fitter.train_step()
        fitter.elapsed += time.perf_counter() - start
        bar.update(1)
        if fitter.step % t.log_every == 0 or fitter.step == t.iters:
            _log(fitter, losses)
            bar.set_postfix(loss=f"{losses['total']:.4f}", psnr=f"{losses['psnr']:.2f}")
        if t.val_every > 0 and fitter.step % t.val_every == 0 and fitter.step < t.iters:
            fitter.validate()
        if fitter.step % t.ckpt_every == 0 and fitter.step < t.iters:
            fitter.save_checkpoint()
    bar.close()
    if fitter.step == t.iters and t.iters > 0:
        fitter.validate()
        fitter.save_checkpoint()


def _log(fitter: Fitter, losses: dict[str, float]) -> None:
    record = {
        "step": fitter.step,
        "elapsed_s": round(fitter.elapsed, 3),
        "loss": losses["total"],
        "rgb_l1": losses["rgb"],
        "eikonal": losses["eikonal"],
        "mask_bce": losses["mask"],
        "smooth": losses["smooth"],
        "psnr": losses["psnr"],
        "beta": float(fitter.density.current_beta().detach()),
        "lr": fitter.optimizer.param_groups[0]["lr"],
    }
    if not all(math.isfinite(v) for v in record.values()):
        raise FloatingPointError(f"non-finite training state at step {fitter.step}: {record}")
    fitter.files.root.mkdir(parents=True, exist_ok=True)
    with fitter.files.metrics.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
