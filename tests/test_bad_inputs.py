"""Bad input and faults, met as a new user meets them.

The corpus: malformed configs, captures of every format, outputs that cannot be written and
checkpoints that are not recon's, over every command. Each case runs the CLI in-process and
asserts the exit code, exactly one line on stderr naming the file or key and the problem, that
nothing in the temporary folder was created, changed or removed, and (checkpoints) that the
pickled code never ran. Then the faults of a run: two writers, a diverging fit, a killed
checkpoint write, a killed fit's log lines, relative paths, JSON without NaN.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

import recon.extract
import recon.train
from conftest import FAST_FIT
from recon.cli import main
from recon.config import RANGES, Config, load_config
from recon.datasets import load_scene
from recon.datasets.dtu import load_dtu
from recon.errors import TrainingDiverged
from recon.io import LOCK_NAME, folder_lock, write_json_atomic
from recon.run import RunDir
from recon.train import DIVERGENCE_FACTOR, Fitter
from test_formats import write_monosdf, write_nerf_synthetic, write_ngp

FIT_ITERS = 2
"""Steps of the fitted run the extract, resume and fault cases start from."""


class Payload:
    """A pickle that creates ``marker`` when it is unpickled by a loader that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- templates


@pytest.fixture(scope="module")
def templates(tiny_scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only originals of every workspace part: the tiny scene in each format, a fitted run
    (fitted from a relative data path), the ground-truth mesh."""
    root = tmp_path_factory.mktemp("templates")
    shutil.copytree(tiny_scene_dir, root / "scene")
    tiny = load_dtu(tiny_scene_dir)
    write_ngp(tiny, root / "ngp")
    write_nerf_synthetic(tiny, root / "blender", {"train": [0, 1, 2, 3, 4, 5], "test": [6, 7]})
    write_monosdf(tiny, tiny_scene_dir / "cameras_sphere.npz", root / "monosdf")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        assert main(["fit", "scene", "--out", "run", "--iters", str(FIT_ITERS), "--quiet", *FAST_FIT,
                     "train.log_every=1"]) == 0
    finally:
        os.chdir(cwd)
    return root


def workspace(templates: Path, tmp_path: Path, parts: tuple[str, ...]) -> Path:
    """A fresh folder with copies of the template ``parts`` (the scene always)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for part in {"scene", *parts}:
        shutil.copytree(templates / part, ws / part)
    return ws


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``recon ARGV`` in this process: exit code, stdout, stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- corruptions


REMOVE = object()


def edit_json(path: str, **changes: typing.Any) -> Callable[[Path], None]:
    """Set top-level keys of a JSON file (``REMOVE``: remove the key)."""
    def edit(ws: Path) -> None:
        data = json.loads((ws / path).read_text())
        for key, value in changes.items():
            if value is REMOVE:
                data.pop(key, None)
            else:
                data[key] = value
        (ws / path).write_text(json.dumps(data))
    return edit


def edit_frame(path: str, index: int, **changes: typing.Any) -> Callable[[Path], None]:
    """Set keys of one frame of a transforms JSON (a non-dict value replaces the frame)."""
    def edit(ws: Path) -> None:
        data = json.loads((ws / path).read_text())
        if "frame" in changes:
            data["frames"][index] = changes["frame"]
        else:
            data["frames"][index].update(changes)
        (ws / path).write_text(json.dumps(data))
    return edit


def empty(path: str) -> Callable[[Path], None]:
    return lambda ws: (ws / path).write_bytes(b"")


def garbage(path: str) -> Callable[[Path], None]:
    return lambda ws: (ws / path).write_bytes(b"this is not the file you are looking for\n" * 8)


def npy(path: str, array: np.ndarray) -> Callable[[Path], None]:
    return lambda ws: np.save(ws / path, array, allow_pickle=True)


def truncated_npy(path: str) -> Callable[[Path], None]:
    def cut(ws: Path) -> None:
        data = (ws / path).read_bytes()
        (ws / path).write_bytes(data[: len(data) - 40])
    return cut


def text(path: str, content: str) -> Callable[[Path], None]:
    return lambda ws: (ws / path).write_text(content)


def nan_mesh(path: str) -> Callable[[Path], None]:
    def write(ws: Path) -> None:
        mesh = trimesh.load(ws / "scene" / "gt_mesh.ply", process=False)
        vertices = np.array(mesh.vertices)
        vertices[5] = np.nan
        trimesh.Trimesh(vertices, mesh.faces, process=False).export(ws / path)
    return write


def point_cloud(path: str) -> Callable[[Path], None]:
    return lambda ws: trimesh.PointCloud(np.random.default_rng(0).random((50, 3))).export(ws / path)


def checkpoint_with(edit: Callable[[dict, Path], typing.Any]) -> Callable[[Path], None]:
    """Rewrite ``run/checkpoint.pt`` as ``edit(state, ws)`` returns it (or the edited state)."""
    def write(ws: Path) -> None:
        path = ws / "run" / "checkpoint.pt"
        state = torch.load(path, weights_only=True)
        result = edit(state, ws)
        torch.save(state if result is None else result, path)
    return write


def _nan_field(state: dict, ws: Path) -> None:
    name = next(k for k, v in state["field"].items() if v.is_floating_point())
    state["field"][name] = torch.full_like(state["field"][name], float("nan"))


def _config_value(section: str, key: str, value: typing.Any) -> Callable[[dict, Path], None]:
    def edit(state: dict, ws: Path) -> None:
        state["config"][section][key] = value
    return edit


MALICIOUS = checkpoint_with(lambda state, ws: {**state, "config": Payload(ws / "PWNED")})
CHECKPOINT_CASES = ("malicious", "checkpoint")
"""Cases whose names hold one of these words are checkpoint cases: the payload's marker must never appear."""


@dataclass(frozen=True)
class Case:
    """One bad input: the command (``{ws}`` is the workspace), what the error line must name,
    how the workspace is corrupted first, the exit code, and the template parts it needs."""

    command: str
    expect: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    code: int = 2
    parts: tuple[str, ...] = ()


def fit(extra: str, expect: tuple[str, ...], setup: Callable[[Path], None] | None = None,
        data: str = "scene", parts: tuple[str, ...] = ()) -> Case:
    return Case(f"fit {{ws}}/{data} --out {{ws}}/out --quiet {extra}", expect, setup, parts=parts)


def check(extra: str, expect: tuple[str, ...], setup: Callable[[Path], None] | None = None,
          data: str = "scene", parts: tuple[str, ...] = ()) -> Case:
    return Case(f"check {{ws}}/{data} {extra}", expect, setup, parts=parts)


def extract(extra: str, expect: tuple[str, ...], setup: Callable[[Path], None] | None = None) -> Case:
    return Case(f"extract {{ws}}/run -o {{ws}}/mesh.ply --resolution 8 {extra}", expect, setup, parts=("run",))


def on_run(extra: str, expect: tuple[str, ...], setup: Callable[[Path], None] | None = None) -> Case:
    """``recon fit`` resuming the fitted run."""
    return Case(f"fit {{ws}}/scene --out {{ws}}/run --quiet {extra}", expect, setup, parts=("run",))


def ngp(edit: Callable[[Path], None], expect: tuple[str, ...], command: Callable = check) -> Case:
    return command("", ("transforms.json", *expect), edit, data="ngp", parts=("ngp",))


GT = "{ws}/scene/gt_mesh.ply"
MESH = "{ws}/scene/gt_mesh.ply"

CORPUS: dict[str, Case] = {
    # --- config values, refused before anything is read or written (the cases first)
    "fit_batch_rays_0": fit("train.batch_rays=0", ("train.batch_rays", "must be >= 1", "got 0")),
    "fit_batch_rays_negative": fit("train.batch_rays=-4", ("train.batch_rays", "must be >= 1", "got -4")),
    "fit_lr_nan": fit("train.lr=nan", ("train.lr", "finite", "> 0", "nan")),
    "fit_lr_negative": fit("train.lr=-1", ("train.lr", "must be > 0", "got -1.0")),
    "fit_lr_inf": fit("train.lr=.inf", ("train.lr", "finite", "inf")),
    "fit_ckpt_every_0": fit("train.ckpt_every=0", ("train.ckpt_every", ">= 1", "got 0")),
    "fit_log_every_0": fit("train.log_every=0", ("train.log_every", ">= 1", "got 0")),
    "fit_iters_0": fit("--iters 0", ("--iters", ">= 1", "got 0")),
    "fit_iters_negative": fit("--iters -5", ("--iters", ">= 1", "got -5")),
    "fit_override_iters_0": fit("train.iters=0", ("train.iters", ">= 1", "got 0")),
    "fit_holdout_1": fit("--holdout 1", ("--holdout", "0 (off) or >= 2", "got 1")),
    "fit_override_holdout_1": fit("train.holdout=1", ("train.holdout", "0 (off) or >= 2")),
    "fit_downscale_0": fit("--downscale 0", ("--downscale", ">= 1", "got 0")),
    "fit_override_downscale_0": fit("data.downscale=0", ("data.downscale", ">= 1", "got 0")),
    "fit_eps_1": fit("render.eps=1", ("render.eps", "in (0, 1)", "got 1.0")),
    "fit_occupancy_tolerance_0": fit("render.occupancy_tolerance=0", ("render.occupancy_tolerance", "in (0, 1)")),
    "fit_occupancy_resolution_negative": fit("render.occupancy_resolution=-1", ("render.occupancy_resolution", ">= 0", "got -1")),
    "fit_grid_lr_factor_0": fit("train.grid_lr_factor=0", ("train.grid_lr_factor", "> 0")),
    "fit_lr_final_factor_2": fit("train.lr_final_factor=2", ("train.lr_final_factor", "in (0, 1]")),
    "fit_negative_weight": fit("train.eikonal_weight=-0.1", ("train.eikonal_weight", ">= 0", "-0.1")),
    "fit_hashmap_40": fit("encoding.log2_hashmap_size=40", ("encoding.log2_hashmap_size", "in [1, 30]", "40")),
    "fit_base_resolution_1": fit("encoding.base_resolution=1", ("encoding.base_resolution", ">= 2")),
    "fit_finest_below_base": fit("encoding.finest_resolution=8", ("encoding.finest_resolution", "encoding.base_resolution (16)")),
    "fit_beta_init_below_min": fit("render.beta_init=1e-5", ("render.beta_init", "render.beta_min")),
    "fit_neus_beta_min_0": fit("render.density=neus render.beta_min=0", ("render.beta_min", "neus")),
    "fit_no_samples": fit("render.n_importance=0 render.n_extra=0", ("render.n_importance", "render.n_extra")),
    "fit_n_eval_2": fit("render.n_eval=2", ("render.n_eval", ">= 3", "surface_guided")),
    "fit_skip_layer_8": fit("geometry.mlp_arm_skip_layer=8", ("geometry.mlp_arm_skip_layer", "1..7", "got 8")),
    "fit_mesh_resolution_1": fit("mesh.resolution=1", ("mesh.resolution", ">= 8")),
    "fit_max_rays_0": fit("data.max_rays=0", ("data.max_rays", ">= 1")),
    "fit_device_tpu": fit("train.device=tpu", ("train.device", "auto, cpu, cuda", "'tpu'")),
    "fit_seed_negative": fit("train.seed=-1", ("train.seed", ">= 0")),
    "fit_sdf_grid_resolution_3": fit("geometry.sdf_grid_resolution=3", ("geometry.sdf_grid_resolution", "0 (parameter-matched) or >= 4")),
    "fit_dense_resolution_1": fit("encoding.dense_resolution=1", ("encoding.dense_resolution", ">= 2")),
    "fit_val_max_side_1": fit("train.val_max_side=1", ("train.val_max_side", ">= 2")),
    "fit_softplus_beta_0": fit("geometry.softplus_beta=0", ("geometry.softplus_beta", "> 0")),
    "fit_threads_negative": fit("train.threads=-2", ("train.threads", ">= 0")),
    "fit_scene_radius_0": fit("render.scene_radius=0", ("render.scene_radius", "> 0")),
    "fit_iters_fraction": fit("train.iters=2.5", ("train.iters", "expects int")),
    "fit_iters_text": fit("--iters abc", ("--iters", "invalid int value")),
    "fit_unknown_key": fit("train.nonsense=1", ("unknown config key train.nonsense",)),
    "fit_renamed_key": fit("encoding.type=mlp", ("encoding.type", "renamed to geometry.arm")),
    "fit_override_syntax": fit("iters=5", ("section.key=value",)),
    "fit_bad_choice": fit("render.density=gauss", ("render.density", "must be one of")),
    "fit_yaml_range": fit("--config {ws}/bad.yaml", ("bad.yaml", "train.batch_rays", ">= 1", "got 0"),
                          text("bad.yaml", "train:\n  batch_rays: 0\n")),
    "fit_yaml_nan": fit("--config {ws}/bad.yaml", ("bad.yaml", "train.lr", "finite"), text("bad.yaml", "train:\n  lr: .nan\n")),
    "fit_yaml_not_yaml": fit("--config {ws}/bad.yaml", ("bad.yaml", "not valid YAML"), text("bad.yaml", "train: [\n")),
    "fit_yaml_missing": fit("--config {ws}/nope.yaml", ("nope.yaml", "config file not found")),
    "fit_unknown_arm": fit("--arm octree", ("--arm", "invalid choice")),
    "fit_unknown_option": fit("--iterations 5", ("unrecognized arguments", "--iterations")),
    "fit_renamed_option": fit("--encoding mlp", ("--encoding was renamed to --arm",)),
    # --- the scene: dtu
    "check_downscale_0": check("--downscale 0", ("--downscale", ">= 1", "got 0")),
    "check_downscale_negative": check("--downscale -3", ("--downscale", ">= 1", "got -3")),
    "check_downscale_96": check("--downscale 96", ("downscale", "32x32", "got 96")),
    "check_downscale_33": check("--downscale 33", ("downscale", "[1, 32]", "got 33")),
    "fit_downscale_96": fit("--downscale 96", ("downscale", "32x32", "got 96")),
    "check_format_unknown": check("--format blender", ("--format", "invalid choice")),
    "check_empty_png": check("", ("000002.png", "file is empty"), empty("scene/image/000002.png")),
    "fit_empty_png": fit("", ("000002.png", "file is empty"), empty("scene/image/000002.png")),
    "check_empty_mask": check("", ("003.png", "file is empty"), empty("scene/mask/003.png")),
    "check_garbage_depth": check("", ("000001.npy", "not a NumPy .npy file"), garbage("scene/depth/000001.npy")),
    "fit_garbage_depth": fit("", ("000001.npy", "not a NumPy .npy file"), garbage("scene/depth/000001.npy")),
    "check_empty_depth": check("", ("000004.npy", "file is empty"), empty("scene/depth/000004.npy")),
    "check_object_depth": check("", ("000001.npy", "Python objects"),
                                npy("scene/depth/000001.npy", np.array([{"depth": 1}], dtype=object))),
    "check_truncated_depth": check("", ("000006.npy", "truncated"), truncated_npy("scene/depth/000006.npy")),
    "check_text_normal": check("", ("000002.npy", "not numbers"), npy("scene/normal/000002.npy", np.full((32, 32, 3), "x"))),
    "check_nan_depth": check("", ("000003.npy", "non-finite"), npy("scene/depth/000003.npy", np.full((32, 32), np.nan))),
    "check_empty_cameras": check("", ("cameras_sphere.npz", "file is empty"), empty("scene/cameras_sphere.npz")),
    "check_garbage_cameras": check("", ("cameras_sphere.npz", "not a valid .npz"), garbage("scene/cameras_sphere.npz")),
    "check_missing_folder": check("", ("nowhere", "does not exist"), data="nowhere"),
    "check_data_is_a_file": check("", ("gt_mesh.ply", "not a directory"), data="scene/gt_mesh.ply"),
    "check_unknown_layout": check("", ("unknown capture format",), lambda ws: (ws / "empty").mkdir(), data="empty"),
    # --- ngp (transforms.json): the four fields, under check and fit
    "ngp_w_text": ngp(edit_json("ngp/transforms.json", w="abc"), ("w must be a number", "'abc'")),
    "fit_ngp_w_text": ngp(edit_json("ngp/transforms.json", w="abc"), ("w must be a number", "'abc'"), fit),
    "ngp_fl_x_text": ngp(edit_json("ngp/transforms.json", fl_x="abc"), ("fl_x must be a number", "'abc'")),
    "fit_ngp_fl_x_text": ngp(edit_json("ngp/transforms.json", fl_x="abc"), ("fl_x must be a number",), fit),
    "ngp_cx_list": ngp(edit_json("ngp/transforms.json", cx=[1, 2]), ("cx must be a number", "[1, 2]")),
    "fit_ngp_cx_list": ngp(edit_json("ngp/transforms.json", cx=[1, 2]), ("cx must be a number",), fit),
    "ngp_k1_text": ngp(edit_json("ngp/transforms.json", k1="x"), ("k1 must be a number", "'x'")),
    "fit_ngp_k1_text": ngp(edit_json("ngp/transforms.json", k1="x"), ("k1 must be a number",), fit),
    "ngp_fl_y_null": ngp(edit_json("ngp/transforms.json", fl_y=None), ("fl_y must be a number", "None")),
    "ngp_h_bool": ngp(edit_json("ngp/transforms.json", h=True), ("h must be a number", "True")),
    "ngp_cy_infinite": ngp(edit_json("ngp/transforms.json", cy=float("inf")), ("cy must be finite",)),
    "ngp_angle_text": ngp(edit_json("ngp/transforms.json", fl_x=REMOVE, fl_y=REMOVE, camera_angle_x="wide"),
                          ("camera_angle_x must be a number", "'wide'")),
    "ngp_angle_too_wide": ngp(edit_json("ngp/transforms.json", fl_x=REMOVE, fl_y=REMOVE, camera_angle_x=4.0),
                              ("camera_angle_x", "(0, pi)")),
    "ngp_frame_fl_x_text": ngp(edit_frame("ngp/transforms.json", 3, fl_x="near"), ("frame 3", "fl_x must be a number")),
    "ngp_scale_negative": ngp(edit_json("ngp/transforms.json", aabb_scale=4, scale=-1), ("scale must be positive",)),
    "ngp_scale_text": ngp(edit_json("ngp/transforms.json", aabb_scale=4, scale="big"), ("scale must be a number",)),
    "ngp_offset_text": ngp(edit_json("ngp/transforms.json", aabb_scale=4, offset="x"), ("offset must be",)),
    "ngp_offset_two": ngp(edit_json("ngp/transforms.json", aabb_scale=4, offset=[0.5, 0.5]), ("offset must be",)),
    "ngp_empty_json": ngp(empty("ngp/transforms.json"), ("file is empty",)),
    "ngp_not_json": ngp(text("ngp/transforms.json", "{frames: ["), ("not valid JSON",)),
    "ngp_frames_not_list": ngp(edit_json("ngp/transforms.json", frames={}), ("'frames' list",)),
    "ngp_frame_not_object": ngp(edit_frame("ngp/transforms.json", 0, frame=5), ("frame 0 is not an object",)),
    "ngp_file_path_number": ngp(edit_frame("ngp/transforms.json", 2, file_path=7), ("frame 2 has no file_path",)),
    "ngp_matrix_text": ngp(edit_frame("ngp/transforms.json", 1, transform_matrix="eye"), ("frame 1", "transform_matrix")),
    "ngp_fisheye": ngp(edit_json("ngp/transforms.json", camera_model="OPENCV_FISHEYE"), ("not supported",)),
    "ngp_empty_png": check("", ("0001.png", "file is empty"), empty("ngp/images/0001.png"), "ngp", ("ngp",)),
    "ngp_downscale_96": check("--downscale 96", ("downscale", "32x32", "got 96"), data="ngp", parts=("ngp",)),
    # --- nerf-synthetic
    "blender_angle_text": check("", ("transforms_train.json", "camera_angle_x"),
                                edit_json("blender/transforms_train.json", camera_angle_x="abc"), "blender", ("blender",)),
    "fit_blender_angle_text": fit("", ("transforms_train.json", "camera_angle_x"),
                                  edit_json("blender/transforms_train.json", camera_angle_x="abc"), "blender", ("blender",)),
    "blender_frame_w_text": check("", ("transforms_test.json", "frame 0", "w must be a number"),
                                  edit_frame("blender/transforms_test.json", 0, w="wide"), "blender", ("blender",)),
    "blender_empty_png": check("", ("r_4.png", "file is empty"), empty("blender/train/r_4.png"), "blender", ("blender",)),
    "blender_empty_json": check("", ("transforms_test.json", "file is empty"), empty("blender/transforms_test.json"),
                                "blender", ("blender",)),
    "blender_downscale_96": check("--downscale 96", ("downscale", "32x32"), data="blender", parts=("blender",)),
    # --- monosdf
    "monosdf_garbage_depth": check("", ("000002_depth.npy", "not a NumPy .npy file"),
                                   garbage("monosdf/000002_depth.npy"), "monosdf", ("monosdf",)),
    "fit_monosdf_garbage_depth": fit("", ("000002_depth.npy", "not a NumPy .npy file"),
                                     garbage("monosdf/000002_depth.npy"), "monosdf", ("monosdf",)),
    "monosdf_object_normal": check("", ("000005_normal.npy", "Python objects"),
                                   npy("monosdf/000005_normal.npy", np.array([None], dtype=object)), "monosdf", ("monosdf",)),
    "monosdf_empty_rgb": check("", ("000003_rgb.png", "file is empty"), empty("monosdf/000003_rgb.png"), "monosdf", ("monosdf",)),
    "monosdf_empty_cameras": check("", ("cameras.npz", "file is empty"), empty("monosdf/cameras.npz"), "monosdf", ("monosdf",)),
    "monosdf_downscale_96": check("--downscale 96", ("downscale", "32x32"), data="monosdf", parts=("monosdf",)),
    # --- outputs that cannot be written, refused before the work
    "fit_out_is_a_file": Case("fit {ws}/scene --out {ws}/scene/gt_mesh.ply --quiet", ("gt_mesh.ply", "existing file, not a folder")),
    "fit_out_under_a_file": Case("fit {ws}/scene --out {ws}/scene/gt_mesh.ply/run --quiet", ("cannot be created", "is a file")),
    "extract_output_is_a_folder": extract("", ("is a folder, not a file",), lambda ws: (ws / "mesh.ply").mkdir()),
    "extract_output_under_a_file": Case("extract {ws}/run -o {ws}/scene/gt_mesh.ply/m.ply", ("cannot be created", "is a file"),
                                        parts=("run",)),
    "extract_output_suffix": Case("extract {ws}/run -o {ws}/mesh.stl", ("mesh.stl", "unknown mesh format"), parts=("run",)),
    "extract_resolution_0": extract("--resolution 0", ("--resolution", ">= 8", "got 0")),
    "extract_resolution_4": extract("--resolution 4", ("--resolution", ">= 8", "got 4")),
    "extract_gt_missing": extract("--gt {ws}/nope.ply", ("nope.ply", "not found")),
    "extract_gt_nan_vertex": extract("--gt {ws}/nan.ply", ("nan.ply", "non-finite"), nan_mesh("nan.ply")),
    "extract_broken_meta": extract("", ("meta.json", "not valid JSON"), text("run/meta.json", '{"gt_mesh": ')),
    "extract_not_a_run": Case("extract {ws}/scene -o {ws}/m.ply", ("no checkpoint.pt",)),
    "eval_json_is_a_folder": Case(f"eval {MESH} --gt {GT} --json {{ws}}/scene", ("is a folder, not a file",)),
    "eval_json_under_a_file": Case(f"eval {MESH} --gt {GT} --json {{ws}}/scene/gt_mesh.ply/m.json", ("cannot be created",)),
    "eval_nan_vertex": Case(f"eval {{ws}}/nan.ply --gt {GT}", ("nan.ply", "1 of its", "non-finite"), nan_mesh("nan.ply")),
    "eval_gt_nan_vertex": Case(f"eval {MESH} --gt {{ws}}/nan.ply", ("nan.ply", "non-finite"), nan_mesh("nan.ply")),
    "eval_missing_mesh": Case(f"eval {{ws}}/nope.ply --gt {GT}", ("nope.ply", "not found")),
    "eval_empty_mesh": Case(f"eval {{ws}}/empty.ply --gt {GT}", ("empty.ply",), empty("empty.ply")),
    "eval_point_cloud": Case(f"eval {{ws}}/cloud.ply --gt {GT}", ("cloud.ply", "no triangles"), point_cloud("cloud.ply")),
    "eval_points_0": Case(f"eval {MESH} --gt {GT} --points 0", ("--points", ">= 100", "got 0")),
    "eval_detail_radius_2": Case(f"eval {MESH} --gt {GT} --detail-radius 2", ("--detail-radius", "in (0, 1)", "got 2.0")),
    "eval_cull_to_missing": Case(f"eval {MESH} --gt {GT} --cull-to {{ws}}/nowhere", ("nowhere", "does not exist")),
    # --- compare, demo, synth
    "compare_seeds_0": Case("compare {ws}/scene --out {ws}/cmp --seeds 0", ("--seeds", ">= 1", "got 0")),
    "compare_resolution_0": Case("compare {ws}/scene --out {ws}/cmp --resolution 0", ("--resolution", ">= 8")),
    "compare_iters_0": Case("compare {ws}/scene --out {ws}/cmp --iters 0", ("--iters", ">= 1")),
    "compare_out_is_a_file": Case("compare {ws}/scene --out {ws}/scene/gt_mesh.ply --iters 1", ("gt_mesh.ply", "existing file")),
    "compare_unknown_arm": Case("compare {ws}/scene --out {ws}/cmp --arms hashgrid,octree", ("--arms", "octree")),
    "compare_unknown_preset": Case("compare {ws}/scene --out {ws}/cmp --preset nope", ("--preset", "'nope'")),
    "compare_preset_and_config": Case("compare {ws}/scene --out {ws}/cmp --preset quick --config {ws}/c.yaml",
                                      ("--preset", "not both")),
    "compare_lr_negative": Case("compare {ws}/scene --out {ws}/cmp train.lr=-1", ("train.lr", "> 0")),
    "compare_downscale_96": Case("compare {ws}/scene --out {ws}/cmp --iters 1 data.downscale=96", ("downscale", "32x32")),
    "compare_empty_png": Case("compare {ws}/scene --out {ws}/cmp --iters 1", ("000001.png", "file is empty"),
                              empty("scene/image/000001.png")),
    "demo_iters_0": Case("demo {ws}/demo --iters 0", ("--iters", ">= 1")),
    "demo_resolution_0": Case("demo {ws}/demo --resolution 0", ("--resolution", ">= 8")),
    "demo_out_is_a_file": Case("demo {ws}/scene/gt_mesh.ply --iters 1", ("gt_mesh.ply", "existing file")),
    "demo_unknown_arm": Case("demo {ws}/demo --arm octree", ("--arm", "invalid choice")),
    "synth_views_0": Case("synth {ws}/new --views 0", ("n_views", "at least 1")),
    "synth_size_2": Case("synth {ws}/new --size 2", ("size", "at least 4")),
    "synth_folder_not_empty": Case("synth {ws}/scene --views 2", ("scene", "not empty")),
    "synth_out_under_a_file": Case("synth {ws}/scene/gt_mesh.ply/new --views 2", ("cannot be created", "is a file")),
    "synth_mesh_missing": Case("synth {ws}/new --mesh {ws}/nope.obj", ("nope.obj", "not found")),
    "synth_mesh_nan_vertex": Case("synth {ws}/new --mesh {ws}/nan.ply", ("nan.ply", "non-finite"), nan_mesh("nan.ply")),
    # --- checkpoints: read as tensors and plain containers only; code in them never runs
    "extract_malicious_checkpoint": extract("", ("checkpoint.pt", "not a recon checkpoint", "nothing in it was run"), MALICIOUS),
    "fit_malicious_checkpoint": on_run("", ("checkpoint.pt", "not a recon checkpoint", "nothing in it was run"), MALICIOUS),
    "extract_checkpoint_without_config": extract("", ("checkpoint.pt", "not a recon checkpoint", "config"),
                                                 checkpoint_with(lambda state, ws: {"field": state["field"]})),
    "fit_checkpoint_without_config": on_run("", ("checkpoint.pt", "not a recon checkpoint", "config"),
                                            checkpoint_with(lambda state, ws: {k: v for k, v in state.items() if k != "config"})),
    "extract_checkpoint_is_a_tensor": extract("", ("checkpoint.pt", "holds a Tensor"),
                                              checkpoint_with(lambda state, ws: torch.zeros(3))),
    "extract_checkpoint_config_not_a_mapping": extract("", ("checkpoint.pt", "config of the wrong type"),
                                                       checkpoint_with(lambda state, ws: {**state, "config": [1, 2]})),
    "extract_empty_checkpoint": extract("", ("checkpoint.pt", "file is empty"), empty("run/checkpoint.pt")),
    "extract_garbage_checkpoint": extract("", ("checkpoint.pt", "truncated or corrupt"), garbage("run/checkpoint.pt")),
    "fit_garbage_checkpoint": on_run("", ("checkpoint.pt", "truncated or corrupt"), garbage("run/checkpoint.pt")),
    "extract_checkpoint_out_of_range": extract("", ("checkpoint.pt", "train.ckpt_every", ">= 1"),
                                               checkpoint_with(_config_value("train", "ckpt_every", 0))),
    "extract_checkpoint_unknown_key": extract("", ("checkpoint.pt", "unknown config key train.bogus"),
                                              checkpoint_with(_config_value("train", "bogus", 1))),
    "extract_nan_checkpoint": extract("", ("checkpoint.pt", "non-finite parameters", "diverged"), checkpoint_with(_nan_field)),
    # --- resuming the fitted run
    "fit_resume_other_settings": on_run(" ".join(FAST_FIT) + " train.lr=0.01", ("checkpoint.pt", "other settings", "train.lr")),
    "fit_resume_log_every_0": on_run("train.log_every=0", ("train.log_every", ">= 1")),
    "fit_resume_iters_0": on_run("--iters 0", ("--iters", ">= 1")),
}

NOT_AS_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
PERMISSION_CASES = {
    "fit_out_not_writable": Case("fit {ws}/scene --out {ws}/locked/run --quiet", ("locked", "no write permission")),
    "extract_output_not_writable": Case("extract {ws}/run -o {ws}/locked/m.ply", ("locked", "no write permission"),
                                        parts=("run",)),
    "eval_json_not_writable": Case(f"eval {MESH} --gt {GT} --json {{ws}}/locked/m.json", ("locked", "no write permission")),
}


def _run_case(case: Case, templates: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws = workspace(templates, tmp_path, case.parts)
    if case.setup is not None:
        case.setup(ws)
    argv = case.command.format(ws=ws).split()
    before = snapshot(ws)
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert len(lines) == 1, err
    assert re.match(rf"recon( {argv[0]})?: error: ", lines[0]), lines[0]
    for fragment in case.expect:
        assert fragment.format(ws=ws) in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert snapshot(ws) == before, "the command wrote, changed or removed files"
    assert not (ws / "PWNED").exists(), "code in the checkpoint ran"


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(name: str, templates: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    _run_case(CORPUS[name], templates, tmp_path, capsys)


@NOT_AS_ROOT
@pytest.mark.parametrize("name", list(PERMISSION_CASES))
def test_an_output_without_write_permission_is_refused(name: str, templates: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    locked = tmp_path / "ws" / "locked"

    def lock(ws: Path) -> None:
        locked.mkdir()
        locked.chmod(0o500)

    try:
        _run_case(dataclasses.replace(PERMISSION_CASES[name], setup=lock), templates, tmp_path, capsys)
    finally:
        if locked.exists():
            locked.chmod(0o700)


def test_the_corpus_covers_every_command_and_format() -> None:
    commands = {case.command.split()[0] for case in CORPUS.values()}
    assert commands == {"synth", "fit", "check", "extract", "eval", "compare", "demo"}
    data = {case.command.split()[1].split("/")[1] for case in CORPUS.values() if case.command.split()[0] in ("fit", "check")}
    assert {"scene", "ngp", "blender", "monosdf"} <= data
    assert len(CORPUS) >= 150


def test_the_checkpoint_payload_is_live(tmp_path: Path) -> None:
    """The malicious checkpoint of the corpus would run its code under a loader that allows it."""
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pt"
    torch.save({"config": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


# ----------------------------------------------------------------------------- config ranges


def _numeric_fields() -> list[str]:
    names = []
    for section in dataclasses.fields(Config):
        kind = type(getattr(Config(), section.name))
        hints = typing.get_type_hints(kind)
        names += [f"{section.name}.{f.name}" for f in dataclasses.fields(kind) if hints[f.name] in (int, float)]
    return names


def test_every_numeric_setting_has_a_range_that_holds_its_default() -> None:
    numeric = _numeric_fields()
    assert set(numeric) == set(RANGES), "declare the range of each numeric setting in recon.config.RANGES"
    cfg = Config()
    for name in numeric:
        section, key = name.split(".")
        assert RANGES[name].allows(getattr(getattr(cfg, section), key)), name


# ----------------------------------------------------------------------------- faults: one writer


LOCK_HOLDER = """
import sys, time
from recon.io import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _hold_lock(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(templates: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    ws = workspace(templates, tmp_path, ("run",))
    holder = _hold_lock(ws / "run")
    try:
        before = snapshot(ws)
        code, _, err = run_cli(["fit", str(ws / "scene"), "--out", str(ws / "run"), "--quiet", *FAST_FIT], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert str(ws / "run") in err and f"pid {holder.pid}" in err and "another recon process" in err
        assert snapshot(ws) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (ws / "run" / LOCK_NAME).is_file(), "the killed holder's lock file stays behind"
    with folder_lock(ws / "run"):  # ... and does not block
        assert f"pid {os.getpid()}" in (ws / "run" / LOCK_NAME).read_text()
    assert not (ws / "run" / LOCK_NAME).exists()


def test_a_checkpoint_written_by_another_process_while_a_fit_starts_is_not_overwritten(
    templates: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace(templates, tmp_path, ("run",))
    checkpoint = ws / "run" / "checkpoint.pt"
    newer = checkpoint.read_bytes() + b"\0"  # what the other writer saved (never read here)
    read_scene = recon.train.load_data

    def other_writer_finishes_meanwhile(*args, **kwargs):
        scene = read_scene(*args, **kwargs)
        checkpoint.write_bytes(newer)
        return scene

    monkeypatch.setattr(recon.train, "load_data", other_writer_finishes_meanwhile)
    code, _, err = run_cli(["fit", str(ws / "scene"), "--out", str(ws / "run"), "--quiet", *FAST_FIT], capsys)
    assert code == 2 and "was written by another process while this one started" in err, err
    assert checkpoint.read_bytes() == newer and not (ws / "run" / LOCK_NAME).exists()


def test_a_finished_fit_leaves_no_lock_and_the_lock_is_reentrant(templates: Path, tmp_path: Path) -> None:
    assert not (templates / "run" / LOCK_NAME).exists()
    with folder_lock(tmp_path / "a"):
        with folder_lock(tmp_path / "a"):
            assert (tmp_path / "a" / LOCK_NAME).is_file()
        assert (tmp_path / "a" / LOCK_NAME).is_file()
    assert not (tmp_path / "a" / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- faults: divergence


def test_a_fit_whose_loss_goes_nan_stops_with_exit_3_and_keeps_the_last_good_checkpoint(
    tiny_scene_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(["fit", str(tiny_scene_dir), "--out", str(run), "--iters", "6", "--quiet", *FAST_FIT,
                            "train.lr=1e30", "train.ckpt_every=1", "train.log_every=1"], capsys)
    assert code == 3, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"recon fit: error: {run}: training diverged: the loss became non-finite (NaN or inf) at step 2")
    assert "the last good checkpoint (step 1) is kept" in line and "lower train.lr" in line
    state = RunDir(run).read_checkpoint()
    assert state["step"] == 1
    tensors = [t for part in ("field", "density") for t in state[part].values() if t.is_floating_point()]
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    assert [r["step"] for r in RunDir(run).training_log()] == [1]


def _fitter(scene_dir: Path, run: Path, extra: tuple[str, ...] = ()) -> Fitter:
    cfg = load_config(None, [*FAST_FIT, "train.batch_rays=32", *extra])
    return Fitter(load_scene(scene_dir), run, cfg, scene_dir)


def test_non_finite_parameters_are_never_saved(tiny_scene_dir: Path, tmp_path: Path) -> None:
    fitter = _fitter(tiny_scene_dir, tmp_path / "run")
    fitter.train_step()
    fitter.save_checkpoint()
    saved = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        next(fitter.density.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"1 tensors of the training state.*density\..*last good checkpoint \(step 1\)"):
        fitter.save_checkpoint()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == saved


def test_the_loss_record_notes_the_first_non_finite_step_without_a_sync(tiny_scene_dir: Path, tmp_path: Path) -> None:
    fitter = _fitter(tiny_scene_dir, tmp_path / "run")
    for step, loss in enumerate([0.5, float("nan"), 0.4, float("inf")]):
        fitter.step = step
        fitter._record_finite(torch.tensor(loss))
    assert fitter.first_bad_step.ndim == 0 and int(fitter.first_bad_step) == 2
    with pytest.raises(TrainingDiverged, match="at step 2; no checkpoint was written"):
        fitter.check_finite()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the host-sync check needs CUDA")
def test_the_loss_record_never_syncs_with_the_host_on_cuda(tiny_scene_dir: Path, tmp_path: Path) -> None:
    fitter = _fitter(tiny_scene_dir, tmp_path / "run", ("train.device=cuda",))
    loss = torch.tensor(float("nan"), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fitter._record_finite(loss)
        fitter._record_finite(loss * 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(fitter.first_bad_step) == 1


def test_a_loss_that_grows_by_orders_of_magnitude_warns_once(tiny_scene_dir: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    fitter = _fitter(tiny_scene_dir, tmp_path / "run", ("train.lr=0.5",))
    fitter._record_finite(torch.tensor(0.25))
    with caplog.at_level("WARNING", logger="recon.train"):
        fitter.warn_if_diverging(0.25 * DIVERGENCE_FACTOR * 0.9)
        assert not caplog.records
        fitter.warn_if_diverging(0.25 * DIVERGENCE_FACTOR * 4)
        fitter.warn_if_diverging(1e30)
    assert len(caplog.records) == 1
    assert "grew from 0.25 to 1e+03" in caplog.records[0].message and "lower train.lr (0.5)" in caplog.records[0].message


# ----------------------------------------------------------------------------- faults: killed writes


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_rerun_removes_killed_writes_temporary_files_and_trims_the_log(templates: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    ws = workspace(templates, tmp_path, ("run",))
    run = ws / "run"
    orphans = [run / ".checkpoint.k3j9x_0a.pt", run / ".metrics.a1b2c3d4.jsonl", run / "val" / ".step_000002.zzzzzzzz.png"]
    (run / "val").mkdir(exist_ok=True)
    for path in orphans:
        path.write_bytes(b"half a write")
    kept = [run / "notes.txt", run / ".hidden"]
    for path in kept:
        path.write_text("mine")
    with (run / "metrics.jsonl").open("a") as log:  # a killed continuation's lines, after the checkpoint
        log.write('{"step": 3, "loss": 1.0, "elapsed_s": 9}\n{"step": 4, "loss": 1.0, "elapsed_s": 9}\n{"step": 5, "lo')
    code, out, err = run_cli(["fit", str(ws / "scene"), "--out", str(run), "--iters", str(FIT_ITERS), "--quiet",
                              *FAST_FIT, "train.log_every=1"], capsys)
    assert code == 0, err
    assert f"resuming {run} from step {FIT_ITERS} of {FIT_ITERS}" in out.splitlines()
    assert not [p for p in orphans if p.exists()]
    assert all(p.read_text() == "mine" for p in kept)
    assert _steps(run) == list(range(1, FIT_ITERS + 1))
    assert not (run / LOCK_NAME).exists()


def test_a_rerun_of_a_fit_killed_before_its_first_checkpoint_starts_the_log_afresh(
    templates: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ws = workspace(templates, tmp_path, ("run",))
    run = ws / "run"
    (run / "checkpoint.pt").unlink()  # killed before it saved: config, meta and log lines only
    assert _steps(run) == [1, 2]
    code, out, err = run_cli(["fit", str(ws / "scene"), "--out", str(run), "--iters", "1", "--quiet", *FAST_FIT,
                              "train.log_every=1"], capsys)
    assert code == 0, err
    assert "resuming" not in out
    assert _steps(run) == [1]


# ----------------------------------------------------------------------------- faults: paths and JSON


def test_meta_holds_absolute_paths_and_extract_scores_from_any_folder(templates: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    meta = json.loads((templates / "run" / "meta.json").read_text())
    assert meta["data_dir"] == str((templates / "scene").resolve())  # fitted from the relative path "scene"
    assert meta["gt_mesh"] == str((templates / "scene" / "gt_mesh.ply").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    score = recon.extract.mesh_metrics
    monkeypatch.setattr(recon.extract, "mesh_metrics", lambda mesh, gt: score(mesh, gt, n_points=5000))  # speed only
    ws = workspace(templates, tmp_path, ("run",))
    code, out, err = run_cli(["extract", str(ws / "run"), "-o", "m.ply", "--resolution", "16"], capsys)
    assert code == 0, err
    assert f"vs {meta['gt_mesh']}: Chamfer" in out and (elsewhere / "m.metrics.json").is_file()
    gone = json.loads((ws / "run" / "meta.json").read_text())
    gone["gt_mesh"] = str(tmp_path / "moved" / "gt_mesh.ply")
    (ws / "run" / "meta.json").write_text(json.dumps(gone))
    code, out, err = run_cli(["extract", str(ws / "run"), "-o", "n.ply", "--resolution", "16"], capsys)
    assert code == 0 and "error" not in err, err
    assert f"not scored: the scene's ground truth {gone['gt_mesh']} (meta.json) is not found" in out
    assert (elsewhere / "n.ply").is_file() and not (elsewhere / "n.metrics.json").exists()


def _strict_json(text: str) -> typing.Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_json_outputs_hold_null_for_non_finite_numbers(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "result.json", {"chamfer": math.inf, "psnr": [1.5, math.nan], "n": 3, "ok": "x"})
    assert _strict_json((tmp_path / "result.json").read_text()) == {"chamfer": None, "psnr": [1.5, None], "n": 3, "ok": "x"}
    run = RunDir(tmp_path / "run")
    run.append_metrics({"step": 1, "psnr": math.inf})
    assert _strict_json(run.metrics.read_text()) == {"step": 1, "psnr": None}


# ----------------------------------------------------------------------------- warnings


def test_a_downscale_that_does_not_divide_the_images_says_what_it_crops(tiny_scene_dir: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(["check", str(tiny_scene_dir), "--downscale", "3"], capsys)
    assert code == 0
    assert ("warning:       --downscale 3 does not divide the 32x32 (WxH) images: the last 2 columns and 2 rows "
            "of pixels are cropped (intrinsics unchanged)") in out.splitlines()
    assert "resolution:    10x10" in out
    code, out, _ = run_cli(["check", str(tiny_scene_dir), "--downscale", "4"], capsys)
    assert code == 0 and "cropped" not in out


def test_a_frame_outside_the_capture_folder_is_named(templates: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    ws = workspace(templates, tmp_path, ("ngp",))
    (ws / "elsewhere").mkdir()
    shutil.copy(ws / "ngp" / "images" / "0004.png", ws / "elsewhere" / "frame.png")
    edit_frame("ngp/transforms.json", 4, file_path="../elsewhere/frame.png")(ws)
    code, out, _ = run_cli(["check", str(ws / "ngp")], capsys)
    assert code == 0
    assert (f"warning:       1 of 8 frames' file_path lead outside the capture folder {(ws / 'ngp').resolve()} "
            f"(first: {(ws / 'elsewhere' / 'frame.png').resolve()})") in out.splitlines()


def test_a_zero_byte_png_and_a_garbage_npy_get_plain_messages(templates: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    ws = workspace(templates, tmp_path, ())
    empty("scene/image/000002.png")(ws)
    _, _, err = run_cli(["check", str(ws / "scene")], capsys)
    assert "pip install" not in err and "imageio" not in err and err.strip().endswith("000002.png: file is empty (0 bytes)")
    shutil.copy(templates / "scene" / "image" / "000002.png", ws / "scene" / "image" / "000002.png")
    garbage("scene/depth/000001.npy")(ws)
    _, _, err = run_cli(["check", str(ws / "scene")], capsys)
    assert "pickled" not in err and err.strip().endswith("000001.npy: not a NumPy .npy file (no .npy header)")



def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture) -> None:
    for argv in (["--help"], ["fit", "--help"]):
        code, out, _ = run_cli(argv, capsys)
        assert code == 0 and "3 the fit diverged" in " ".join(out.split())
