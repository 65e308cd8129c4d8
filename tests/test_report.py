"""The comparison report: table, figures, self-contained HTML, and a headless-Chromium screenshot."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh

from recon.compare import FSCORE_THRESHOLDS, SETTINGS
from recon.io import write_json_atomic
from recon.metrics import mesh_metrics
from recon.report import build_report, table_rows

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "tools" / "screenshot_report.sh"


def _fake_arm(out: Path, arm_name: str, seed: int, mesh: trimesh.Trimesh, gt: trimesh.Trimesh) -> None:
    """A finished arm: a real mesh and its real metrics, a made-up training log."""
    arm = out / arm_name / f"seed{seed}"
    arm.mkdir(parents=True)
    mesh.export(arm / "mesh.ply")
    log = [{"step": s, "elapsed_s": 0.5 * s, "loss": 1.0 / s, "psnr": 10 + 2 * np.log(s)} for s in range(10, 110, 10)]
    (arm / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
    result = {
        "arm": arm_name, "seed": seed, "settings": {}, "n_params_encoding": 1000 * (1 + seed),
        "n_params_total": 5000, "mesh": "mesh.ply", "mesh_seconds": 1.0, "fit_seconds": 50.0, "train_psnr": 20.0 + seed,
        "metrics": mesh_metrics(mesh, gt, n_points=20_000, thresholds_rel=FSCORE_THRESHOLDS),
    }
    write_json_atomic(arm / "result.json", result)


@pytest.fixture(scope="module")
def report_dir(tiny_scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A comparison folder with two arms x two seeds: the GT itself (noisy) and a smoothed copy."""
    out = tmp_path_factory.mktemp("compare")
    gt = trimesh.load(tiny_scene_dir / "gt_mesh.ply", force="mesh")
    smooth = trimesh.smoothing.filter_laplacian(gt.copy(), iterations=15)
    settings = {"data_dir": str(tiny_scene_dir), "gt_mesh": str(tiny_scene_dir / "gt_mesh.ply"), "up": [0, 0, 1],
                "resolution": 64, "cull": False, "arms": ["exact", "smooth"],
                "seeds": 2, "overrides": [], "config": {"train": {"iters": 100, "batch_rays": 256},
                                                         "render": {"sampler": "surface_guided"}}}
    write_json_atomic(out / SETTINGS, settings)
    for seed in range(2):
        _fake_arm(out, "exact", seed, gt, gt)
        _fake_arm(out, "smooth", seed, smooth, gt)
    build_report(out)
    return out


def test_table_marks_the_best_per_column(report_dir: Path) -> None:
    from recon.compare import load_results

    settings, results = load_results(report_dir)
    headings, rows = table_rows(settings, results)
    assert headings[0] == "arm" and "Chamfer-L1" in headings and "detail normal cons." in headings
    by_enc = {row[0][0]: row for row in rows}
    chamfer = headings.index("Chamfer-L1")
    assert by_enc["exact"][chamfer][1] and not by_enc["smooth"][chamfer][1]
    assert "±" in by_enc["exact"][chamfer][0]  # two seeds: mean ± std
    params = headings.index("encoding params")
    assert not any(row[params][1] for row in rows)  # parameter counts are not ranked


def test_markdown_and_html_structure(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    page = (report_dir / "report.html").read_text()
    for name in ("normals", "distance", "closeup", "fscore", "training"):
        assert (report_dir / "report_files" / f"{name}.png").is_file()
        assert f"report_files/{name}.png" in md
    assert md.count("| exact |") == 1 and "**" in md
    assert "exact/seed0/mesh.ply" in md and "exact/seed1/mesh.ply" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "report_files" not in page  # self-contained: nothing is loaded from beside it
    assert page.count("class=best") >= 5


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless chromium not installed (apt-get install chromium)")
def test_screenshot_shows_table_and_images(report_dir: Path) -> None:
    import imageio.v3 as iio

    png = report_dir / "shot.png"
    subprocess.run(["bash", str(SCREENSHOT), str(report_dir / "report.html"), str(png), "1200", "2400"],
                   check=True, timeout=120, capture_output=True)
    image = iio.imread(png)[..., :3].astype(np.float64)
    assert image.shape[:2] == (2400, 1200)
    assert image.std() > 20  # not blank
    rows_with_content = (image.std(axis=(1, 2)) > 1).mean()
    assert rows_with_content > 0.5
    # the renders: a band of the page holds the figures' colours, not only text on white
    colourful = (image.max(axis=2) - image.min(axis=2)) > 60
    assert colourful.mean() > 0.01


def test_held_out_ssim_sits_beside_psnr() -> None:
    settings = {"seeds": 1}
    results = [{"arm": arm, "seed": 0, "n_params_encoding": 1, "n_params_total": 2, "fit_seconds": 3.0,
                "holdout_psnr": psnr, "holdout_ssim": ssim, "metrics": None}
               for arm, psnr, ssim in (("hashgrid", 25.5, 0.912), ("densegrid", 24.0, 0.934))]
    headings, rows = table_rows(settings, results)
    column = headings.index("held-out SSIM")
    assert headings[column - 1] == "held-out PSNR"
    cells = {row[0][0]: row[column] for row in rows}
    assert cells["hashgrid"] == ("0.912", False) and cells["densegrid"] == ("0.934", True)
