"""Fitting: the optimisation loop of one run, resumable from its run directory.

The trainer only trains. The run directory (files, checkpoints, the metrics log, model build and
resume rule) is ``recon.run``; the loss is ``recon.objective``; the optimiser and its schedule
``recon.optim``; the background ``recon.render.background``; held-out views ``recon.holdout``; the
field and the occupancy grid update their own training-time state from the step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from recon.config import Config, config_to_dict
from recon.datasets import load_scene
from recon.datasets.scene import Scene
from recon.errors import InputError
from recon.holdout import score_holdout, split_holdout
from recon.monitor import open_monitor
from recon.objective import Objective, StepLosses
from recon.optim import lr_factor, make_optimizer, set_learning_rates
from recon.rays import RaySource
from recon.render.background import make_background
from recon.render.image import render_image
from recon.render.occupancy import make_occupancy_grid
from recon.render.renderer import render_rays
from recon.run import Model, RunDir, build_model, choose_device, resume_config
from recon.visualize import save_validation_image


class Fitter:
    """One fit of a field to a scene, resumable from its run directory."""

    def __init__(
        self, scene: Scene, run_dir: Path, cfg: Config, data_dir: Path,
        held_out: Scene | None = None, held_out_indices: list[int] | None = None,
    ) -> None:
        if cfg.train.holdout_supersample < 1:
            raise InputError("train.holdout_supersample", f"must be at least 1, got {cfg.train.holdout_supersample}")
        self.scene, self.cfg, self.run = scene, cfg, RunDir(run_dir)
        self.device = choose_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.rays = RaySource(scene, self.device, cfg.data.max_rays)
        self.held_out = RaySource(held_out, self.device, cfg.data.max_rays) if held_out is not None else None
        self.held_out_indices = held_out_indices or []
        self.field, self.density = build_model(cfg, scene.n_images, self.device)
        self.background = make_background(scene, cfg.render, self.device)
        extra = list(self.density.parameters()) + list(self.background.parameters())
        self.optimizer = make_optimizer(self.field, cfg.train, extra)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.occupancy = make_occupancy_grid(cfg.render, self.device)
        self.objective = Objective(cfg.train, cfg.render.scene_radius, self.rays.cam_to_world, self.occupancy is not None)
        self.meta = {
            "data_dir": str(data_dir),
            "n_images": scene.n_images,
            "image_size": [scene.height, scene.width],
            "scale_mat": scene.scale_mat.tolist(),
            "gt_mesh": str(scene.gt_mesh_path) if scene.gt_mesh_path else None,
            "arm": cfg.geometry.arm,
            "background": self.background.describe(),
            "holdout_views": self.held_out_indices,
            **{f"n_params_{part}": n for part, n in self.field.parameter_counts().items()},
        }
        self.step, self.elapsed = 0, 0.0
        self.monitor = open_monitor(self.run.tensorboard, cfg.train.tensorboard)

    @property
    def model(self) -> Model:
        """The networks being fitted, with the config and the scene's normalisation."""
        return Model(self.field, self.density, self.background, self.cfg, self.scene.scale_mat, self.meta)

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns its loss terms."""
        self.field.update_step(self.step)
        set_learning_rates(self.optimizer, lr_factor(self.step, self.cfg.train))
        if self.occupancy is not None:
            self.occupancy.update_every_n_steps(
                self.step, self.cfg.train.occupancy_every, self.field.sdf, lambda: float(self.density.current_beta().detach())
            )
        batch = self.rays.random_batch(self.cfg.train.batch_rays, self.generator)
        out = render_rays(
            self.field, self.density, batch.origins, batch.dirs, self.cfg.render, self.background,
            training=True, image_index=batch.image_index, generator=self.generator, occupancy=self.occupancy,
        )
        losses: StepLosses = self.objective(self.field, batch, out, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        self.optimizer.step()
        self.step += 1
        return {name: float(value.detach()) for name, value in vars(losses).items() if value is not None}

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs."""
        return {
            "field": self.field.state_dict(),
            "density": self.density.state_dict(),
            "background": self.background.state_dict(),
            "occupancy": self.occupancy.state_dict() if self.occupancy is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "config": config_to_dict(self.cfg),
            "meta": self.meta,
        }

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically."""
        self.run.save_checkpoint(self.checkpoint_state())

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state."""
        self.field.load_state_dict(state["field"])
        self.density.load_state_dict(state["density"])
        if state.get("background") is not None:
            self.background.load_state_dict(state["background"])
        if self.occupancy is not None and state.get("occupancy") is not None:
            self.occupancy.load_state_dict(state["occupancy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])

    def validate(self) -> float:
        """Render one view (rgb, normals, depth) to ``val/step_XXXXXX.png``; return its PSNR."""
        index = (self.step // max(self.cfg.train.val_every, 1)) % self.scene.n_images
        rendered = render_image(
            self.field, self.density, self.background, self.rays, index, self.cfg.render, self.cfg.train.val_max_side
        )
        strip = save_validation_image(self.run.val_dir / f"step_{self.step:06d}.png", rendered)
        self.monitor.image("val", strip, self.step)
        return rendered.psnr

    def log(self, losses: dict[str, float]) -> None:
        """One line of the metrics log: the step's losses, beta, the learning rate and the time so far."""
        record = {
            "step": self.step,
            "elapsed_s": round(self.elapsed, 3),
            "loss": losses["total"],
            "rgb_l1": losses["rgb"],
            "eikonal": losses["eikonal"],
            "mask_bce": losses["mask"],
            "smooth": losses["smooth"],
            "psnr": losses["psnr"],
            "beta": float(self.density.current_beta().detach()),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        record.update({name: losses[name] for name in ("depth", "normal_l1", "normal_angular") if name in losses})
        if not all(math.isfinite(v) for v in record.values()):
            raise FloatingPointError(f"non-finite training state at step {self.step}: {record}")
        self.run.append_metrics(record)
        self.monitor.scalars(record)


def fit(
    data_dir: str | Path, run_dir: str | Path, cfg: Config, progress: bool = True, asked: Collection[str] | None = None
) -> Path:
    """Fit ``cfg`` to the scene in ``data_dir``; resume if ``run_dir`` holds a checkpoint (under
    ``recon.run.resume_config``'s rule; ``asked``: the keys the command set, None: all).

    Returns the run directory. Everything the run writes is written atomically.
    """
    data_dir, run = Path(data_dir), RunDir(Path(run_dir))
    state = run.read_checkpoint()
    if state is not None:
        cfg = resume_config(run.checkpoint_config(state), cfg, run.checkpoint, asked)
    scene = load_scene(data_dir, cfg.data.format, cfg.data.downscale, cfg.data.rgba_background)
    scene, held_out, held_out_indices = split_holdout(scene, cfg.train.holdout)
    fitter = Fitter(scene, run.root, cfg, data_dir, held_out, held_out_indices)
    if state is not None:
        fitter.restore(state)
        run.truncate_metrics(fitter.step)
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg)
    run.write_meta(fitter.meta)
    _loop(fitter, progress)
    return run.root


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
            fitter.log(losses)
            bar.set_postfix(loss=f"{losses['total']:.4f}", psnr=f"{losses['psnr']:.2f}")
        if t.val_every > 0 and fitter.step % t.val_every == 0 and fitter.step < t.iters:
            fitter.validate()
        if fitter.step % t.ckpt_every == 0 and fitter.step < t.iters:
            fitter.save_checkpoint()
    bar.close()
    if fitter.step == t.iters and t.iters > 0:
        fitter.validate()
        if fitter.held_out is not None:
            score_holdout(fitter.model, fitter.held_out, fitter.held_out_indices, fitter.run, fitter.step, progress,
                          fitter.monitor)
        fitter.save_checkpoint()
    fitter.monitor.close()
