"""The command line as a user runs it: fit, resume, extract, eval, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_FIT
from recon.cli import main


def recon(*args: str | Path, process: bool = False) -> subprocess.CompletedProcess:
    """``recon ARGS``: in this process (its stdout, stderr and exit code), or with ``process`` in a
    new one, exactly as a user runs it."""
    argv = [str(a) for a in args]
    if process:
        return subprocess.run([sys.executable, "-m", "recon.cli", *argv], capture_output=True, text=True, timeout=600)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors and --help
            code = int(exit_.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def fitted_run(tiny_scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    result = recon("fit", tiny_scene_dir, "--arm", "hashgrid", "--out", run, "--iters", "6", "--quiet", *FAST_FIT,
                   process=True)
    assert result.returncode == 0, result.stderr
    return run


def test_fit_writes_a_complete_run_directory(fitted_run: Path):
    names = {p.name for p in fitted_run.iterdir()}
    assert {"config.yaml", "meta.json", "metrics.jsonl", "checkpoint.pt", "val"} <= names
    steps = [json.loads(line)["step"] for line in (fitted_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [6]
    assert list((fitted_run / "val").glob("step_*.png"))
    assert not [p for p in fitted_run.rglob(".*") if p.is_file()], "temporary files left behind"


def test_rerunning_fit_resumes(fitted_run: Path, tiny_scene_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    result = recon("fit", tiny_scene_dir, "--arm", "hashgrid", "--out", run, "--iters", "12", "--quiet", *FAST_FIT)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6, 10, 12]
    assert records[1]["elapsed_s"] >= records[0]["elapsed_s"]


def test_resume_refuses_another_encoding(fitted_run: Path, tiny_scene_dir: Path):
    result = recon("fit", tiny_scene_dir, "--arm", "densegrid", "--out", fitted_run, "--iters", "8", *FAST_FIT)
    assert_clean_error(result, "checkpoint.pt", "hashgrid")


def test_extract_and_eval(fitted_run: Path, tiny_scene_dir: Path, tmp_path: Path):
    mesh = tmp_path / "mesh.ply"
    result = recon("extract", fitted_run, "--resolution", "48", "-o", mesh, process=True)
    assert result.returncode == 0, result.stderr
    assert mesh.is_file() and "Chamfer" in result.stdout
    obj = tmp_path / "mesh.obj"
    assert recon("extract", fitted_run, "--resolution", "32", "-o", obj).returncode == 0
    result = recon("eval", mesh, "--gt", tiny_scene_dir / "gt_mesh.ply", "--json", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["chamfer_l1"] > 0 and 0 <= metrics["fscore@0.01"] <= 1


def test_help_lists_every_command():
    out = recon("--help").stdout
    for command in ("synth", "fit", "extract", "eval", "demo"):
        assert command in out
    assert "section.key=value" in recon("fit", "--help").stdout


def test_missing_data_folder(tmp_path: Path):
    result = recon("fit", tmp_path / "nope", "--out", tmp_path / "run", "--iters", "1", process=True)
    assert_clean_error(result, "nope")
    assert not (tmp_path / "run").exists()


def test_unknown_config_key(tiny_scene_dir: Path, tmp_path: Path):
    result = recon("fit", tiny_scene_dir, "--out", tmp_path / "run", "train.nonsense=3")
    assert_clean_error(result, "unknown config key train.nonsense")
    assert not (tmp_path / "run").exists()


def test_corrupt_png_leaves_nothing(tiny_scene_dir: Path, tmp_path: Path):
    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene_dir, scene)
    victim = sorted((scene / "image").glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:40])
    result = recon("fit", scene, "--out", tmp_path / "run", "--iters", "1")
    assert_clean_error(result, victim.name)
    assert not (tmp_path / "run").exists()


def test_extract_without_run(tmp_path: Path):
    result = recon("extract", tmp_path, "--resolution", "32", "-o", tmp_path / "m.ply")
    assert_clean_error(result, "checkpoint.pt")
    assert not (tmp_path / "m.ply").exists()


def test_synth_writes_a_loadable_scene_and_refuses_to_overwrite(tmp_path: Path):
    from recon.datasets import load_scene

    out = tmp_path / "scene"
    result = recon("synth", out, "--views", "4", "--size", "24")
    assert result.returncode == 0, result.stderr
    scene = load_scene(out)
    assert scene.n_images == 4 and (scene.height, scene.width) == (24, 24) and scene.masks is not None
    assert scene.gt_mesh_path is not None and scene.masks.any()
    assert_clean_error(recon("synth", out, "--views", "4", "--size", "24"), str(out))


def test_extract_with_colours_and_texture(fitted_run: Path, tmp_path: Path):
    import re

    import trimesh

    coloured = tmp_path / "coloured.ply"
    result = recon("extract", fitted_run, "--resolution", "32", "-o", coloured, "--color", "vertex", "--psnr", "--quiet")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("coloured mesh on the 8 training views"))
    assert 0 < float(re.search(r"psnr ([\d.]+)", line).group(1)) < 60 and "ssim" in line and "mask_iou" in line
    mesh = trimesh.load(coloured, process=False)
    assert "vertex_normals" in mesh._cache and mesh.visual.kind == "vertex"
    assert len(np.unique(mesh.visual.vertex_colors[:, :3], axis=0)) > 1
    textured = tmp_path / "textured.obj"
    result = recon("extract", fitted_run, "--resolution", "24", "-o", textured, "--color", "texture",
                   "--texture-size", "128", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "textured.mtl").is_file() and (tmp_path / "textured.png").is_file()
    assert_clean_error(recon("extract", fitted_run, "-o", tmp_path / "t.ply", "--color", "texture"), "t.ply", ".obj or .glb")
    assert_clean_error(recon("extract", fitted_run, "-o", tmp_path / "p.ply", "--psnr"), "--psnr", "--color")
    assert not (tmp_path / "t.ply").exists() and not (tmp_path / "p.ply").exists()
    assert "--color" in recon("extract", "--help").stdout
