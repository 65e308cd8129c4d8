"""The sweep on a local Ray cluster (``ray.init(num_cpus=2)``): the serial results, a lost worker
retried, failures recorded. Ray is the optional extra ``recon[ray]``, which CI installs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, SWEEP_OVERRIDES, assert_same_results, sweep_of, sweep_values
from recon.compare import CompareSpec
from recon.executors import ExecutorOptions, RayExecutor, local_runtime_env, make_executor
from recon.sweep import compare_spec, run_sweep

ray = pytest.importorskip("ray")
import sweep_tasks  # noqa: E402  (after the skip: imported by the Ray workers too)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs whose workers import this checkout's recon and tests/sweep_tasks.py."""
    paths = os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", paths)
        ray.init(num_cpus=2, include_dashboard=False, runtime_env=local_runtime_env())
    yield
    ray.shutdown()


def test_ray_gives_the_serial_results(ray_cluster, two_scenes: Path, serial_sweep: Path, tmp_path: Path,
                                      capsys) -> None:
    executor = make_executor(ExecutorOptions("ray", threads=1), n_tasks=4)
    assert isinstance(executor, RayExecutor) and executor.threads == 1 and executor.gpus_per_task == 0
    out = tmp_path / "ray"
    run_sweep(sweep_of(two_scenes, out), executor, progress=False)
    assert_same_results(sweep_values(out), sweep_values(serial_sweep))
    assert "Ray: tasks of 1 CPU(s)" in capsys.readouterr().out
    assert ray.is_initialized()  # a connection made before is left as it was


def _one_arm(scene: Path, out: Path, *extra: str) -> CompareSpec:
    return CompareSpec(scene, out, ("hashgrid",), 1, 24, True, None, (*SWEEP_OVERRIDES, *extra), 5_000)


def test_ray_retries_a_lost_worker(ray_cluster, tiny_scene_dir: Path, tmp_path: Path) -> None:
    spec = _one_arm(tiny_scene_dir, tmp_path / "once")
    [result] = run_sweep(compare_spec(spec), RayExecutor(threads=1, retries=1), False, sweep_tasks.die_once)
    assert result["status"] == "ok" and (spec.run_dir("hashgrid", 0).root / sweep_tasks.MARKER).is_file()


def test_ray_records_lost_and_failed_tasks(ray_cluster, tiny_scene_dir: Path, tmp_path: Path) -> None:
    spec = _one_arm(tiny_scene_dir, tmp_path / "always")
    [lost] = run_sweep(compare_spec(spec), RayExecutor(threads=1, retries=1), False, sweep_tasks.always_die)
    assert lost["status"] == "failed" and lost["error_type"] == "WorkerLost"
    assert len((spec.run_dir("hashgrid", 0).root / sweep_tasks.MARKER).read_text().split()) == 2  # 1 + 1 retry
    diverging = _one_arm(tiny_scene_dir, tmp_path / "diverges", "train.lr=1e30")
    [failed] = run_sweep(compare_spec(diverging), RayExecutor(threads=1, retries=1), False)
    assert failed["status"] == "failed" and failed["error_type"] == "TrainingDiverged"
    assert json.loads(diverging.run_dir("hashgrid", 0).result.read_text())["error_type"] == "TrainingDiverged"


def test_cli_runs_on_the_cluster_at_ray_address(ray_cluster, tiny_scene_dir: Path, tmp_path: Path) -> None:
    """A second driver (the CLI) joins the running cluster; --ray-address wins over RAY_ADDRESS."""
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_ADDRESS": "127.0.0.1:9"}  # nothing there
    args = ["compare", str(tiny_scene_dir), "--out", str(out), "--arms", "hashgrid", "--executor", "ray",
            "--ray-address", ray.get_runtime_context().gcs_address, "--threads-per-worker", "1", "--resolution", "24",
            "--no-pictures", "--quiet", *SWEEP_OVERRIDES]
    proc = subprocess.run([sys.executable, "-m", "recon.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray: tasks of 1 CPU(s)" in proc.stdout and "hashgrid / seed 0: ok" in proc.stdout
    result = json.loads((out / "hashgrid" / "seed0" / "result.json").read_text())
    assert result["status"] == "ok" and result["threads"] == 1 and (out / "report.md").is_file()
