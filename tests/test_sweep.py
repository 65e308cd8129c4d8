"""recon sweep: the plan and layout, executors with equal results, failures recorded and retried,
a lost worker, resume after the driver is killed, the lock, the report, and Ray's absence."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, SWEEP_ARMS, SWEEP_OVERRIDES, assert_same_results, sweep_of, sweep_values
from recon.cli import main
from recon.compare import CompareSpec
from recon.errors import InputError
from recon.executors import Budget, LocalExecutor, plan_budget
from recon.io import folder_lock
from recon.run import RunDir, sweep_run_dir
from recon.sweep import compare_spec, read_scenes, run_sweep

import sweep_tasks

CLI_OPTIONS = ["--resolution", "24", "--threads-per-worker", "1", "--no-pictures", "--quiet", *SWEEP_OVERRIDES]


def test_layout_and_results_table(serial_sweep: Path) -> None:
    plan = json.loads((serial_sweep / "sweep.json").read_text())
    assert [s["name"] for s in plan["scenes"]] == ["a", "b"] and plan["arms"] == list(SWEEP_ARMS)
    rows = list(csv.DictReader((serial_sweep / "results.csv").open()))
    assert [(r["scene"], r["arm"], r["seed"], r["status"]) for r in rows] == [
        ("a", "hashgrid", "0", "ok"), ("a", "densegrid", "0", "ok"), ("b", "hashgrid", "0", "ok"),
        ("b", "densegrid", "0", "ok")]
    for row in rows:
        run = RunDir(sweep_run_dir(serial_sweep, row["scene"], row["arm"], 0))
        result = json.loads(run.result.read_text())
        assert run.mesh.is_file() and result["threads"] == 1 and row["threads"] == "1"
        assert float(row["chamfer_l1"]) == pytest.approx(result["metrics"]["chamfer_l1"], rel=1e-12)
        assert float(row["fscore@0.01"]) == pytest.approx(result["metrics"]["fscore@0.01"], rel=1e-12)
        assert "train.threads" not in json.dumps(result["settings"]["config"]["train"])
    # each scene's folder is a comparison folder, with its own overrides and GT
    a = json.loads((serial_sweep / "a" / "compare.json").read_text())
    assert a["name"] == "a" and a["gt_mesh"].endswith("gt_mesh.ply") and a["config"]["train"]["iters"] == 6


def test_local_pool_gives_the_serial_results(two_scenes: Path, serial_sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pool"
    run_sweep(sweep_of(two_scenes, out), LocalExecutor(workers=2, threads=1), progress=False)
    assert_same_results(sweep_values(out), sweep_values(serial_sweep))
    lines = capsys.readouterr().out
    assert "local pool: 2 worker(s) x 1 thread(s)" in lines and "[4/4 run, 4/4 in all]" in lines


def test_failed_arm_is_recorded_shown_and_retried(tiny_scene_dir: Path, tmp_path: Path, capsys) -> None:
    scenes = tmp_path / "scenes.yaml"
    scenes.write_text(f"scenes:\n  - {{path: {tiny_scene_dir}, name: good}}\n"
                      f"  - {{path: {tiny_scene_dir}, name: diverges, overrides: {{train.lr: 1.0e+30}}}}\n")
    out = tmp_path / "sweep"
    args = ["sweep", str(scenes), "--out", str(out), "--arms", "hashgrid", "--executor", "serial", *CLI_OPTIONS]
    assert main(args) == 1  # every arm ran; one failed
    captured = capsys.readouterr()
    assert "1 of 2 arms failed" in captured.err and "diverges / hashgrid / seed 0: FAILED (TrainingDiverged" in captured.out
    good, bad = (RunDir(sweep_run_dir(out, name, "hashgrid", 0)) for name in ("good", "diverges"))
    failed = json.loads(bad.result.read_text())
    assert failed["status"] == "failed" and failed["error_type"] == "TrainingDiverged" and "\n" not in failed["error"]
    assert "Traceback" in bad.error.read_text() and not bad.mesh.exists()
    assert json.loads(good.result.read_text())["status"] == "ok"
    rows = {r["scene"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["diverges"]["status"] == "failed" and rows["diverges"]["error_type"] == "TrainingDiverged"
    assert rows["good"]["status"] == "ok" and float(rows["good"]["chamfer_l1"]) > 0
    md = (out / "report.md").read_text()
    assert "| hashgrid | 1/2 (1 failed) |" in md and "## Failed arms" in md
    assert "| diverges | hashgrid | 0 | TrainingDiverged |" in md
    assert "| arm | good | mean rank |" in md  # a scene where no arm finished is not ranked
    assert "class=failed" in (out / "report.html").read_text()
    # a rerun keeps the finished arm and retries the failed one (which fails again)
    kept, retried = good.result.stat().st_mtime_ns, bad.result.stat().st_mtime_ns
    assert main(args) == 1
    assert "good / hashgrid / seed 0: finished earlier, kept" in capsys.readouterr().out
    assert good.result.stat().st_mtime_ns == kept and bad.result.stat().st_mtime_ns != retried


def _one_arm(scene: Path, out: Path) -> CompareSpec:
    return CompareSpec(scene, out, ("hashgrid",), 1, 24, True, None, SWEEP_OVERRIDES, 5_000)


def test_local_pool_retries_a_lost_worker(tiny_scene_dir: Path, tmp_path: Path) -> None:
    spec = _one_arm(tiny_scene_dir, tmp_path / "once")
    [result] = run_sweep(compare_spec(spec), LocalExecutor(1, 1, retries=1), False, sweep_tasks.die_once)
    assert result["status"] == "ok" and (spec.run_dir("hashgrid", 0).root / sweep_tasks.MARKER).is_file()


def test_lost_worker_recorded_as_failed_then_retried_on_rerun(tiny_scene_dir: Path, tmp_path: Path) -> None:
    spec = _one_arm(tiny_scene_dir, tmp_path / "always")
    run = spec.run_dir("hashgrid", 0)
    [result] = run_sweep(compare_spec(spec), LocalExecutor(1, 1, retries=1), False, sweep_tasks.always_die)
    assert result["status"] == "failed" and result["error_type"] == "WorkerLost" and "2 attempts" in result["error"]
    assert "signal 9" not in result["error"] and "exit code 9" in result["error"]
    assert len((run.root / sweep_tasks.MARKER).read_text().split()) == 2  # started twice, then given up
    assert json.loads(run.result.read_text())["status"] == "failed"  # written by the driver
    [result] = run_sweep(compare_spec(spec), LocalExecutor(1, 1, retries=0), False)
    assert result["status"] == "ok" and run.mesh.is_file()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_resume_after_the_driver_is_killed(tiny_scene_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny_scene_dir), "--out", str(out), "--arms", ",".join(SWEEP_ARMS), *CLI_OPTIONS]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    driver = subprocess.Popen([sys.executable, "-m", "recon.cli", *args, "--executor", "local", "--workers", "1"],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(out.glob("*/*/seed0/result.json")):
        assert driver.poll() is None and time.monotonic() < deadline, "the sweep ended before its first result"
        time.sleep(0.1)
    while not (workers := [w for w in _children(driver.pid) if _alive(w)]):  # the worker, on the next fit
        assert driver.poll() is None and time.monotonic() < deadline, "the sweep ended early"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers):  # a worker whose driver died stops by itself
        assert time.monotonic() < deadline, "a worker outlived its driver"
        time.sleep(0.2)
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed0/result.json")}
    assert len(done) == 1
    assert main([*args, "--executor", "serial"]) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())  # never recomputed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["arm"], r["status"]) for r in rows] == [("hashgrid", "ok"), ("densegrid", "ok")]


def test_a_second_sweep_on_the_folder_is_refused(two_scenes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["sweep", str(two_scenes), "--out", str(out), "--executor", "serial", *CLI_OPTIONS]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"another recon process (pid {holder.pid} on" in err and not list(out.glob("*/*/seed0"))
    with folder_lock(out):  # the killed holder's lock does not block
        pass


LOCK_HOLDER = """
import sys, time
from recon.io import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_report_rebuilds_from_disk(serial_sweep: Path, capsys) -> None:
    for name in ("report.md", "report.html", "results.csv"):
        (serial_sweep / name).unlink(missing_ok=True)
    assert main(["report", str(serial_sweep), "--no-pictures"]) == 0
    md = (serial_sweep / "report.md").read_text()
    for part in ("## Arms across scenes", "## Rank per scene (by Chamfer % diag)", "## Paired differences",
                 "### a", "### b", "[a: report](a/report.html)", "report_files/differences.png",
                 "report_files/scenes.png", "report_files/fscore_sweep.png", "detail normal cons."):
        assert part in md, part
    pairs = [line for line in md.splitlines() if " − " in line and line.startswith("| ") and "| pair" not in line]
    assert pairs[0].startswith("| hashgrid − densegrid | Chamfer % diag |") and "2 scenes" in pairs[0]
    assert len(list(csv.DictReader((serial_sweep / "results.csv").open()))) == 4
    assert (serial_sweep / "a" / "report.md").is_file() and (serial_sweep / "report.html").is_file()
    # a scene's folder is a comparison folder: its one-scene report
    assert main(["report", str(serial_sweep / "a"), "--no-pictures"]) == 0
    assert (serial_sweep / "a" / "report.md").read_text().startswith("# recon compare: a")
    assert main(["report", str(serial_sweep / "a" / "hashgrid")]) == 2
    assert "not a recon sweep or comparison folder" in capsys.readouterr().err


def test_ray_missing_and_bad_executor_options_exit_2(two_scenes: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "sweep"
    assert main(["sweep", str(two_scenes), "--out", str(out), "--executor", "ray", *CLI_OPTIONS]) == 2
    assert "pip install 'recon[ray]'" in capsys.readouterr().err and not out.exists()
    for extra, option in [(["--retries", "-1"], "--retries"), (["--executor", "serial", "--workers", "2"], "--workers"),
                          (["--threads-per-worker", "0"], "--threads-per-worker"),
                          (["train.threads=2"], "train.threads: set by the executor")]:
        assert main(["sweep", str(two_scenes), "--out", str(out), *CLI_OPTIONS, *extra]) == 2
        assert option in capsys.readouterr().err and not out.exists()


def test_scenes_from_folders_and_files(tiny_scene_dir: Path, two_scenes: Path, tmp_path: Path) -> None:
    listed = tmp_path / "more.yml"
    listed.write_text(f"scenes:\n  - {tiny_scene_dir}\n  - path: {tiny_scene_dir}\n    name: small\n    format: dtu\n"
                      "    downscale: 2\n    overrides: [train.holdout=4]\n")
    got = read_scenes([two_scenes, listed])
    assert [(s.name, s.overrides) for s in got] == [
        ("a", ()), ("b", ()), ("scene", ()), ("small", ("train.holdout=4", "data.format=dtu", "data.downscale=2"))]
    assert got[1].path == two_scenes.parent / "other"  # relative to the file
    assert read_scenes([tiny_scene_dir])[0].name == "scene"
    bad = tmp_path / "bad.yaml"
    for text, message in [("scenes: []", "expected a list"), ("scenes:\n  - {name: x}", "scene 1: needs a 'path'"),
                          (f"scenes:\n  - {{path: {tiny_scene_dir}, colour: red}}", "unknown key.*colour"),
                          ("scenes:\n  - {path: nowhere}", "scene folder .*nowhere not found"),
                          (f"scenes:\n  - {{path: {tiny_scene_dir}, name: a/b}}", "scene name 'a/b'"),
                          (f"scenes:\n  - {{path: {tiny_scene_dir}, overrides: 3}}", "'overrides' must be")]:
        bad.write_text(text)
        with pytest.raises(InputError, match=message):
            read_scenes([bad])
    with pytest.raises(InputError, match="two scenes are named 'scene'"):
        read_scenes([tiny_scene_dir, listed])
    with pytest.raises(InputError, match="not a scene folder"):
        read_scenes([tmp_path / "missing"])


def test_the_budget_shares_the_cores() -> None:
    assert plan_budget(16, 2, 0) == Budget(2, 1, 0.0)  # many fits, 2 cores: 2 workers x 1 thread
    assert plan_budget(4, 16, 0) == Budget(4, 4, 0.0)  # few fits: the cores shared among them
    assert plan_budget(100, 16, 0, threads=4) == Budget(4, 4, 0.0)
    assert plan_budget(100, 16, 0, workers=3) == Budget(3, 5, 0.0)
    assert plan_budget(100, 64, 8) == Budget(8, 8, 1.0)  # one GPU per worker
    assert plan_budget(100, 64, 8, gpus_per_task=0.25) == Budget(32, 2, 0.25)  # four fits per card
    assert plan_budget(3, 64, 8, gpus_per_task=0.25) == Budget(3, 21, 0.25)
    assert plan_budget(100, 64, 8, gpus_per_task=0) == Budget(64, 1, 0.0)  # GPUs left alone
    for kwargs, message in [({"gpus_per_task": 2.0}, "--gpus-per-task"), ({"workers": 0}, "--workers"),
                            ({"threads": 0}, "--threads-per-worker")]:
        with pytest.raises(InputError, match=message):
            plan_budget(4, 8, 1, **kwargs)
    with pytest.raises(InputError, match="no GPU is visible"):
        plan_budget(4, 8, 0, gpus_per_task=0.5)
    quarter = LocalExecutor(8, 2, gpus_per_task=0.25, n_gpus=2)
    assert [quarter.slot_gpu(s) for s in range(8)] == ["0", "0", "0", "0", "1", "1", "1", "1"]
    assert LocalExecutor(2, 1, 0.0, n_gpus=2).slot_gpu(1) == ""  # no share: no GPU
    assert LocalExecutor(2, 1).slot_gpu(0) is None


def test_the_cli_and_the_sweep_do_not_import_ray() -> None:
    code = ("import sys, recon.cli, recon.sweep, recon.sweep_report; recon.cli.build_parser(); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=300)


def _one_thread(_: int) -> int:
    import torch

    torch.set_num_threads(1)
    return torch.get_num_threads()


def test_serial_executor_gives_this_process_its_threads_back() -> None:
    import torch

    from recon.executors import SerialExecutor

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got: dict[int, int] = {}
        SerialExecutor(threads=1).run(_one_thread, [0, 1], got.__setitem__)
        assert got == {0: 1, 1: 1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
