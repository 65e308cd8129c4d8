"""Fitting: the optimisation loop of one run, resumable from its run directory.

The trainer only trains. The run directory (files, checkpoints, the metrics log, model build and
resume rule) is ``recon.run``; the loss is ``recon.objective``; the optimiser and its schedule
``recon.optim``; the background ``recon.render.background``; held-out views ``recon.holdout``; the
field and the occupancy grid update their own training-time state from the step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from recon.config import Config, config_to_dict
from recon.datasets import load_data
from recon.datasets.scene import Scene
from recon.errors import InputError, TrainingDiverged
from recon.holdout import score_holdout, split_holdout
from recon.io import check_output_dir
from recon.monitor import open_monitor
from recon.objective import Objective, StepLosses
from recon.optim import lr_factor, make_optimizer, set_learning_rates
from recon.rays import RaySource
from recon.render.background import make_background
from recon.render.image import render_image
from recon.render.occupancy import make_occupancy_grid
from recon.render.renderer import render_rays
from recon.render.samplers import compact_rows
from recon.run import Model, RunDir, build_model, choose_device, non_finite_tensors, resume_config, runnable_here
from recon.visualize import save_validation_image

log = logging.getLogger(__name__)

DIVERGENCE_FACTOR = 1e3
"""A logged loss this many times the first step's warns that the fit is diverging (without NaN yet)."""


def reseed(seed: int, step: int) -> int:
    """The batch generator's seed for a run resumed at ``step`` on another kind of device."""
    return (seed * 1_000_003 + step) % (1 << 63)


class Fitter:
    """One fit of a field to a scene, resumable from its run directory."""

    def __init__(
        self, scene: Scene, run_dir: Path, cfg: Config, data_dir: Path,
        held_out: Scene | None = None, held_out_indices: list[int] | None = None,
    ) -> None:
        self.scene, self.cfg, self.run = scene, cfg, RunDir(run_dir)
        self.device = choose_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        torch.set_float32_matmul_precision(cfg.train.matmul_precision)
        torch.manual_seed(cfg.train.seed)
        self.rays = RaySource(scene, self.device, cfg.data.max_rays)
        self.held_out = RaySource(held_out, self.device, cfg.data.max_rays) if held_out is not None else None
        self.held_out_indices = held_out_indices or []
        self.field, self.density = build_model(cfg, scene.n_images, self.device)
        self.background = make_background(scene, cfg.render, self.device)
        extra = list(self.density.parameters()) + list(self.background.parameters())
        self.optimizer = make_optimizer(self.field, cfg.train, extra)
        self.generator = torch.Generator(self.device).manual_seed(cfg.train.seed)
        self.occupancy = make_occupancy_grid(cfg.render, self.device)
        self.compact = compact_rows(self.device)
        """Cut work down to the rays that need it by host-side selection (the CPU), or keep fixed shapes (CUDA)."""
        self.objective = Objective(
            cfg.train, cfg.render.scene_radius, self.rays.cam_to_world, self.occupancy is not None, self.compact
        )
        self.meta = {
            "data_dir": str(Path(data_dir).resolve()),
            "n_images": scene.n_images,
            "image_size": [scene.height, scene.width],
            "scale_mat": scene.scale_mat.tolist(),
            "gt_mesh": str(Path(scene.gt_mesh_path).resolve()) if scene.gt_mesh_path else None,
            "arm": cfg.geometry.arm,
            "background": self.background.describe(),
            "holdout_views": self.held_out_indices,
            **{f"n_params_{part}": n for part, n in self.field.parameter_counts().items()},
        }
        self.step, self.elapsed = 0, 0.0
        self.saved_step: int | None = None
        """The step of the run's last good checkpoint (None: none yet)."""
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        """The first step whose loss was NaN or inf (-1: none), kept on the device: updated every step
        without a host sync, read at log lines, before checkpoints and at the end."""
        self.first_loss: torch.Tensor | None = None
        """The loss of this process's first step (on the device), the reference of the divergence warning."""
        self.warned_divergence = False
        self.monitor = open_monitor(self.run.tensorboard, cfg.train.tensorboard)

    @property
    def model(self) -> Model:
        """The networks being fitted, with the config and the scene's normalisation."""
        return Model(self.field, self.density, self.background, self.cfg, self.scene.scale_mat, self.meta)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step; returns its loss terms as detached 0-d tensors on the device.

        Nothing in it reads a value back to the host (``tests/test_host_sync.py``), except the
        occupancy grid's update every ``train.occupancy_every`` steps: a CUDA step is one stream of
        kernels. Convert the terms to numbers only when they are logged.
        """
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
            compact=self.compact,
        )
        losses: StepLosses = self.objective(self.field, batch, out, self.generator)
        self._record_finite(losses.total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        self.optimizer.step()
        self.step += 1
        return {name: value.detach() for name, value in vars(losses).items() if value is not None}

    def _record_finite(self, loss: torch.Tensor) -> None:
        """Note (on the device, no sync) the step at which the loss is first non-finite."""
        step = torch.full_like(self.first_bad_step, self.step + 1)
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step, self.first_bad_step)
        if self.first_loss is None:
            self.first_loss = loss

    def check_finite(self) -> None:
        """Raise ``TrainingDiverged`` when the loss was NaN or inf at any step so far (one host sync)."""
        bad = int(self.first_bad_step)
        if bad >= 0:
            self._diverged(f"the loss became non-finite (NaN or inf) at step {bad}")

    def check_state_finite(self) -> None:
        """``check_finite``, and every parameter and optimiser state tensor is finite."""
        self.check_finite()
        modules = {"field": self.field, "density": self.density, "background": self.background}
        named = {f"{part}.{key}": value for part, module in modules.items() for key, value in module.state_dict().items()}
        param_names = {id(p): f"{part}.{key}" for part, module in modules.items() for key, p in module.named_parameters()}
        for param, state in self.optimizer.state.items():
            named.update({f"{param_names.get(id(param), '?')} (Adam {key})": value for key, value in state.items()})
        bad = non_finite_tensors(named)
        if bad:
            self._diverged(f"{len(bad)} tensors of the training state became non-finite (NaN or inf) by step "
                           f"{self.step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")

    def _diverged(self, what: str) -> None:
        kept = (f"the last good checkpoint (step {self.saved_step}) is kept" if self.saved_step is not None
                else "no checkpoint was written")
        raise TrainingDiverged(self.run.root, f"training diverged: {what}; {kept}; lower train.lr "
                               f"({self.cfg.train.lr:g}) and fit into a new folder")

    def warn_if_diverging(self, loss: float) -> None:
        """Warn once when the loss has grown by ``DIVERGENCE_FACTOR`` since the first step (no NaN yet)."""
        if self.warned_divergence or self.first_loss is None:
            return
        first = float(self.first_loss)
        if loss > DIVERGENCE_FACTOR * max(first, 1e-12):
            self.warned_divergence = True
            log.warning("%s: the loss grew from %.3g to %.3g by step %d: the fit is diverging; lower train.lr (%g)",
                        self.run.root, first, loss, self.step, self.cfg.train.lr)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs: tensors and plain containers only (read back with
        ``weights_only``)."""
        return {
            "field": self.field.state_dict(),
            "density": self.density.state_dict(),
            "background": self.background.state_dict(),
            "occupancy": self.occupancy.state_dict() if self.occupancy is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "generator_device": self.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "step": self.step,
            "elapsed": self.elapsed,
            "config": config_to_dict(self.cfg),
            "meta": self.meta,
        }

    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically, after checking that the training state is finite
        (``TrainingDiverged`` otherwise: the last good checkpoint stays)."""
        self.check_state_finite()
        self.run.save_checkpoint(self.checkpoint_state())
        self.saved_step = self.step

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state."""
        self.field.load_state_dict(state["field"])
        self.density.load_state_dict(state["density"])
        if state.get("background") is not None:
            self.background.load_state_dict(state["background"])
        if self.occupancy is not None and state.get("occupancy") is not None:
            self.occupancy.load_state_dict(state["occupancy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.saved_step = self.step
        torch.set_rng_state(state["torch_rng"])
        self._restore_generator(state)

    def _restore_generator(self, state: dict[str, Any]) -> None:
        """The batch generator's state, when the checkpoint was written on this kind of device; else a
        seed derived from (seed, step): a resume on another device continues, not bit-identically."""
        if state.get("generator_device", "cpu") == self.device.type:
            self.generator.set_state(state["generator"])
            if self.device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            return
        self.generator.manual_seed(reseed(self.cfg.train.seed, self.step))
        log.warning(
            "checkpoint written on %s, resumed on %s: the random draws continue from a seed derived from "
            "(train.seed, step), so the run is not bit-identical to one that never moved",
            state.get("generator_device", "cpu"), self.device.type,
        )

    def validate(self) -> float:
        """Render one view (rgb, normals, depth) to ``val/step_XXXXXX.png``; return its PSNR."""
        self.check_finite()
        index = (self.step // max(self.cfg.train.val_every, 1)) % self.scene.n_images
        rendered = render_image(
            self.field, self.density, self.background, self.rays, index, self.cfg.render, self.cfg.train.val_max_side,
            occupancy=self.occupancy,
        )
        strip = save_validation_image(self.run.val_dir / f"step_{self.step:06d}.png", rendered)
        self.monitor.image("val", strip, self.step)
        return rendered.psnr

    def log(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """One line of the metrics log: the step's losses, beta, the learning rate and the time so far
        (the one place the step's values are read back to the host); returns the losses as numbers."""
        losses = {name: float(value) for name, value in terms.items()}
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
        self.check_finite()
        bad = [name for name, value in record.items() if not math.isfinite(value)]
        if bad:
            self._diverged(f"{', '.join(bad)} became non-finite (NaN or inf) by step {self.step}")
        self.warn_if_diverging(record["loss"])
        self.run.append_metrics(record)
        self.monitor.scalars(record)
        return losses


def fit(
    data_dir: str | Path, run_dir: str | Path, cfg: Config, progress: bool = True, asked: Collection[str] | None = None
) -> Path:
    """Fit ``cfg`` to the scene in ``data_dir``; resume if ``run_dir`` holds a checkpoint (under
    ``recon.run.resume_config``'s rule; ``asked``: the keys the command set, None: all).

    Returns the run directory. Everything the run writes is written atomically.
    """
    data_dir, run = Path(data_dir), RunDir(Path(run_dir))
    check_output_dir(run.root)
    stamp = run.checkpoint_stamp()
    state = run.read_checkpoint()
    if state is not None:
        cfg = resume_config(runnable_here(run.checkpoint_config(state)), cfg, run.checkpoint, asked)
    scene = load_data(data_dir, cfg.data)
    scene, held_out, held_out_indices = split_holdout(scene, cfg.train.holdout)
    fitter = Fitter(scene, run.root, cfg, data_dir, held_out, held_out_indices)
    with run.writing():  # everything above only read; from here on this process is the run's one writer
        if run.checkpoint_stamp() != stamp:
            raise InputError(run.checkpoint, "was written by another process while this one started; rerun the "
                             "command to resume from it")
        if state is not None:
            fitter.restore(state)
            print(f"resuming {run.root} from step {fitter.step} of {cfg.train.iters}")
        run.truncate_metrics(fitter.step)  # lines a killed process wrote after its last checkpoint
        run.write_config(cfg)
        run.write_meta(fitter.meta)
        try:
            _loop(fitter, progress)
        finally:
            fitter.monitor.close()  # what it kept, also when the fit stops early
    return run.root


def _loop(fitter: Fitter, progress: bool) -> None:
    t = fitter.cfg.train
    bar = tqdm(total=t.iters, initial=fitter.step, disable=not progress, unit="it", dynamic_ncols=True)
    fitter.field.train()
    while fitter.step < t.iters:
        start = time.perf_counter()
        losses = fitter.train_step()
        logging_now = fitter.step % t.log_every == 0 or fitter.step == t.iters
        if logging_now and fitter.device.type == "cuda":
            torch.cuda.synchronize(fitter.device)  # the steps queued so far count in elapsed_s
        fitter.elapsed += time.perf_counter() - start
        bar.update(1)
        if logging_now:
            losses = fitter.log(losses)
            bar.set_postfix(loss=f"{losses['total']:.4f}", psnr=f"{losses['psnr']:.2f}")
        if t.val_every > 0 and fitter.step % t.val_every == 0 and fitter.step < t.iters:
            fitter.validate()
        if fitter.step % t.ckpt_every == 0 and fitter.step < t.iters:
            fitter.save_checkpoint()
    bar.close()
    if fitter.step == t.iters:
        fitter.check_state_finite()
        fitter.validate()
        if fitter.held_out is not None:
            score_holdout(fitter.model, fitter.held_out, fitter.held_out_indices, fitter.run, fitter.step, progress,
                          fitter.monitor)
        fitter.save_checkpoint()
