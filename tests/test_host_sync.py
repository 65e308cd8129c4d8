"""No host syncs in a CUDA training step, proven on the CPU: the step runs under a dispatch mode that
records every op which makes a CUDA device wait for the host to read a value back.

On CUDA the trainer keeps fixed shapes (``compact=False``); the test forces that path on the CPU. The
CPU path (``compact=True``) selects rows instead, which costs nothing there; both render the same.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import FAST_FIT, sphere_rays
from recon.config import RenderConfig, load_config
from recon.datasets import load_scene
from recon.render.background import ConstantBackground
from recon.render.density import make_density
from recon.render.renderer import render_rays
from recon.train import Fitter

aten = torch.ops.aten
SYNCING = {
    aten._local_scalar_dense,  # .item(), float(t), int(t), bool(t)
    aten.is_nonzero,  # bool(t)
    aten.nonzero,  # data-sized output
    aten.masked_select,
    aten.unique_consecutive,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.repeat_interleave,  # without output_size
    aten.bincount,
    aten.equal,
    aten.allclose,
}
"""Ops whose result the host must wait for on CUDA (or whose output size depends on the data)."""
INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
"""Indexing ops: they sync when an index is a boolean mask (it is turned into indices first)."""


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices)


class SyncRecorder(TorchDispatchMode):
    """Records the ops that would sync a CUDA stream with the host, with where they were called.

    ``host_tensors``: data pointers of tensors that live on the host even in a CUDA run (Adam's step
    counters, ``capturable=False``): reading them waits for nothing.
    """

    def __init__(self, host_tensors: set[int]) -> None:
        super().__init__()
        self.host_tensors = host_tensors
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        syncing = packet in SYNCING or (packet in INDEXING and _bool_index(args))
        on_host = bool(args) and isinstance(args[0], torch.Tensor) and args[0].data_ptr() in self.host_tensors
        if syncing and not (packet is aten._local_scalar_dense and on_host):
            stack = traceback.extract_stack()[:-1]
            where = [f"{f.filename}:{f.lineno} {f.name}" for f in stack if "/recon/" in f.filename]
            self.syncs.append(f"{func} at {' <- '.join(reversed(where[-4:]))}")
        return func(*args, **(kwargs or {}))


def _optimizer_steps(fitter: Fitter) -> set[int]:
    return {s["step"].data_ptr() for s in fitter.optimizer.state.values() if isinstance(s.get("step"), torch.Tensor)}


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["render.sampler=error_bounded", "render.background=nerf++"],
        ["render.occupancy_resolution=0", "geometry.numerical_gradient=true"],
    ],
    ids=["default", "error-bounded-nerf++", "no-grid-numerical-gradient"],
)
def test_training_step_never_syncs_with_the_host(tiny_scene_dir: Path, tmp_path: Path, extra: list[str]) -> None:
    """A whole step (rays, occupancy segments, sampler, render, background, every loss with cues and
    masks, backward, Adam) on the fixed-shape path records no syncing op; the occupancy grid's own
    update (every ``train.occupancy_every`` steps) is the one place that may read values back."""
    cfg = load_config(None, FAST_FIT + ["train.batch_rays=64", "render.occupancy_resolution=16", *extra])
    fitter = Fitter(load_scene(tiny_scene_dir), tmp_path / "run", cfg, tiny_scene_dir)
    fitter.compact = fitter.objective.compact = False  # CUDA's path
    fitter.train_step()  # step 0: the occupancy update, and Adam's state
    recorder = SyncRecorder(_optimizer_steps(fitter))
    with recorder:
        terms = fitter.train_step()
    assert recorder.syncs == []
    assert {"depth", "normal_l1", "normal_angular", "mask"} <= terms.keys()
    assert all(t.dim() == 0 and t.device == fitter.device for t in terms.values())


def test_the_recorder_sees_the_syncs_of_the_cpu_path(tiny_scene_dir: Path, tmp_path: Path) -> None:
    """The same step on the CPU's compacting path: the recorder must catch its row selections."""
    cfg = load_config(None, FAST_FIT + ["train.batch_rays=64", "render.occupancy_resolution=16"])
    fitter = Fitter(load_scene(tiny_scene_dir), tmp_path / "run", cfg, tiny_scene_dir)
    assert fitter.compact
    fitter.train_step()
    recorder = SyncRecorder(_optimizer_steps(fitter))
    with recorder:
        fitter.train_step()
    assert any("nonzero" in s for s in recorder.syncs)
    assert any("_local_scalar_dense" in s for s in recorder.syncs)


@pytest.mark.parametrize("sampler", ["surface_guided", "error_bounded"])
def test_fixed_shapes_render_what_compaction_renders(sampler: str) -> None:
    """Rays that hit, graze and miss the scene sphere: the same colours, depths, normals, opacities. (The
    error-bounded sampler runs all its rounds at fixed shapes, adding zero-length intervals on rays already
    done, where compaction stops: other samples of the same field, so only close.)"""
    from recon.fields import NeuralSDF
    from recon.config import ColorConfig, EncodingConfig, GeometryConfig

    torch.manual_seed(0)
    field = NeuralSDF(GeometryConfig(hidden_dim=32, feature_dim=8), EncodingConfig(n_levels=4, log2_hashmap_size=12,
                      finest_resolution=64, backend="torch"), ColorConfig(hidden_dim=32), 1)
    cfg = RenderConfig(sampler=sampler, n_eval=32, n_importance=16, n_extra=8, occupancy_resolution=0)
    origins, dirs = sphere_rays(64, spread=0.9)
    background = ConstantBackground([1.0, 1.0, 1.0])
    density = make_density(cfg)
    outs = [render_rays(field, density, origins, dirs, cfg, background, False, compact=c) for c in (True, False)]
    assert not bool(outs[0].hit.all()) and bool(outs[0].hit.any())
    for name in ("rgb", "depth", "normal", "opacity", "hit"):
        tol = (1e-5, 1e-6) if sampler == "surface_guided" else (0.0, 2e-2)
        torch.testing.assert_close(getattr(outs[1], name), getattr(outs[0], name), rtol=tol[0], atol=tol[1])
