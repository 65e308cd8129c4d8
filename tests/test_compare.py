"""recon compare: every arm fitted, extracted and evaluated alike; resumes only the unfinished arms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAST_FIT
from recon.cli import main
from recon.compare import CompareSpec, load_results, mean_std, parse_arms, preset_path, summarise
from recon.errors import InputError
from recon.report import build_report
from recon.sweep import run_compare

ITERS = ["train.iters=6", "train.ckpt_every=3"]


def _spec(scene: Path, out: Path, **kw) -> CompareSpec:
    args = dict(arms=("hashgrid", "densegrid"), seeds=1, resolution=24, overrides=tuple(FAST_FIT + ITERS),
                n_points=5_000)
    args.update(kw)
    return CompareSpec(scene, out, **args)


@pytest.fixture(scope="module")
def compared(tiny_scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    run_compare(_spec(tiny_scene_dir, out), progress=False)
    return out


def test_every_arm_is_fitted_alike_and_evaluated(compared: Path) -> None:
    settings, results = load_results(compared)
    assert [r["arm"] for r in results] == ["hashgrid", "densegrid"]
    for r in results:
        arm = compared / r["arm"] / "seed0"
        cfg = json.loads((arm / "meta.json").read_text())
        assert cfg["arm"] == r["arm"] and r["n_params_encoding"] == cfg["n_params_encoding"] > 0
        assert (arm / "mesh.ply").is_file() and r["fit_seconds"] > 0
        m = r["metrics"]
        assert 0 < m["chamfer_l1"] < float("inf") and 0 <= m["fscore@0.01"] <= 1
        assert 0 < m["kept_gt"] <= 1 and "detail_normal_consistency" in m and "fscore@0.05" in m
        assert r["settings"] == results[0]["settings"]  # same steps, sampler, resolution
    assert settings["config"]["train"]["iters"] == 6 and settings["resolution"] == 24
    # the dense grid is parameter-matched to the hash grid (both printed from meta.json)
    hash_n, dense_n = (r["n_params_encoding"] for r in results)
    assert abs(dense_n - hash_n) / hash_n < 0.5


def test_rerun_redoes_only_unfinished_arms(compared: Path, tiny_scene_dir: Path, capsys) -> None:
    done = compared / "hashgrid" / "seed0" / "result.json"
    redo = compared / "densegrid" / "seed0" / "result.json"
    before = done.stat().st_mtime_ns
    redo.unlink()
    capsys.readouterr()
    run_compare(_spec(tiny_scene_dir, compared), progress=False)
    out = capsys.readouterr().out
    assert "[1/2] scene / hashgrid / seed 0: finished earlier, kept" in out
    assert "1 finished earlier, 1 to run" in out and "scene / densegrid / seed 0: ok" in out
    assert done.stat().st_mtime_ns == before and redo.is_file()
    # other settings (here the mesh resolution) make every arm stale
    run_compare(_spec(tiny_scene_dir, compared, resolution=20), progress=False)
    assert done.stat().st_mtime_ns != before
    assert json.loads(done.read_text())["settings"]["resolution"] == 20
    html, md = build_report(compared, figures=False)
    assert "hashgrid" in md.read_text() and html.is_file()
    # another config cannot resume these fits: refused, nothing overwritten
    with pytest.raises(InputError, match="other settings.*train.lr"):
        run_compare(_spec(tiny_scene_dir, compared, overrides=tuple(FAST_FIT + ITERS + ["train.lr=0.01"])))
    assert json.loads(done.read_text())["settings"]["resolution"] == 20
    assert load_results(compared)[0]["resolution"] == 20 and "train.lr=0.01" not in load_results(compared)[0]["overrides"]


def test_mean_std_and_summary() -> None:
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert mean_std([None, float("inf")]) is None
    results = [{"arm": "a", "fit_seconds": 1.0, "metrics": {"chamfer_l1": 0.1}},
               {"arm": "a", "fit_seconds": 3.0, "metrics": {"chamfer_l1": 0.3}},
               {"arm": "b", "fit_seconds": 2.0, "metrics": None}]
    s = summarise(results, ["fit_seconds", "chamfer_l1"])
    assert s["a"]["chamfer_l1"] == (pytest.approx(0.2), pytest.approx(0.02**0.5))
    assert s["b"] == {"fit_seconds": (2.0, 0.0), "chamfer_l1": None}


def test_arms_and_presets_are_checked() -> None:
    assert parse_arms("hashgrid, densegrid,mlp,sdfgrid") == ("hashgrid", "densegrid", "mlp", "sdfgrid")
    with pytest.raises(InputError, match="unknown arm"):
        parse_arms("hashgrid,octree")
    with pytest.raises(InputError, match="twice"):
        parse_arms("mlp,mlp")
    assert preset_path("quick").is_file()
    with pytest.raises(InputError, match="unknown preset"):
        preset_path("nope")


def test_cli_bad_input_exits_2(tiny_scene_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["compare", str(tiny_scene_dir), "--out", str(tmp_path / "c"), "--arms", "voxels"]) == 2
    assert "--arms" in capsys.readouterr().err
    assert main(["compare", str(tiny_scene_dir), "--out", str(tmp_path / "c"), "--preset", "nope"]) == 2
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
