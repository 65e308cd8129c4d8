"""TensorBoard beside metrics.jsonl: the event files hold the log's values, the renders, and survive a
resume; without tensorboard nothing breaks, and ``on`` names the extra."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from conftest import FAST_FIT
from recon.config import load_config
from recon.errors import MissingDependencyError
from recon.monitor import scalar_tag
from recon.train import fit

TINY = FAST_FIT + ["train.batch_rays=64", "train.val_max_side=16", "train.log_every=2", "train.val_every=2",
                   "train.holdout=4"]


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def monitored_run(tiny_scene_dir: Path, tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    run = tmp_path_factory.mktemp("monitor") / "run"
    fit(tiny_scene_dir, run, load_config(None, TINY + ["train.iters=4", "train.tensorboard=on"]), progress=False)
    return run


def test_scalars_equal_the_metrics_log(monitored_run: Path):
    acc = events(monitored_run)
    records = logged(monitored_run)
    assert [r["step"] for r in records] == [2, 4, 4]  # two training lines, the held-out means
    expected = {}
    for record in records:
        for key, value in record.items():
            if key != "step":
                expected.setdefault(scalar_tag(key), {})[record["step"]] = value
    assert {"train/loss", "train/psnr", "holdout/psnr", "holdout/ssim", "holdout/mask_iou"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, by_step in expected.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == by_step.keys(), tag
        np.testing.assert_allclose([got[s] for s in by_step], list(by_step.values()), rtol=1e-6, err_msg=tag)


def test_validation_and_held_out_renders_are_images(monitored_run: Path):
    acc = events(monitored_run)
    assert {"val", "holdout/view_000", "holdout/view_004"} <= set(acc.Tags()["images"])
    val = acc.Images("val")
    assert [e.step for e in val] == [2, 4]
    strip = np.asarray(Image.open(io.BytesIO(val[-1].encoded_image_string)))
    saved = iio.imread(monitored_run / "val" / "step_000004.png")
    np.testing.assert_array_equal(strip, saved)


def test_a_resume_drops_the_events_written_after_the_checkpoint(monitored_run: Path, tiny_scene_dir: Path,
                                                                 tmp_path: Path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    shutil.copytree(monitored_run, run)
    stale = SummaryWriter(str(run / "tensorboard"))  # what a run that crashed after its checkpoint left
    stale.add_scalar("train/loss", 999.0, 6)
    stale.close()
    fit(tiny_scene_dir, run, load_config(None, TINY + ["train.iters=6", "train.tensorboard=on"]), progress=False)
    scalars = events(run).Scalars("train/loss")
    assert len(scalars) == 3 and 999.0 not in [e.value for e in scalars]
    loss = {e.step: e.value for e in scalars}
    by_log = {r["step"]: r["loss"] for r in logged(run) if "loss" in r}
    assert loss.keys() == by_log.keys() == {2, 4, 6}
    np.testing.assert_allclose([loss[s] for s in (2, 4, 6)], [by_log[s] for s in (2, 4, 6)], rtol=1e-6)


def test_without_tensorboard(monkeypatch, tiny_scene_dir: Path, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails
    quick = TINY[:-1] + ["train.iters=2", "train.val_every=0"]
    run = fit(tiny_scene_dir, tmp_path / "auto", load_config(None, quick), progress=False)
    assert (run / "metrics.jsonl").is_file() and not (run / "tensorboard").exists()
    with pytest.raises(MissingDependencyError, match=r"train.tensorboard=on.*'tensorboard' extra"):
        fit(tiny_scene_dir, tmp_path / "on", load_config(None, quick + ["train.tensorboard=on"]), progress=False)
    assert not (tmp_path / "on").exists()
    off = fit(tiny_scene_dir, tmp_path / "off", load_config(None, quick + ["train.tensorboard=off"]), progress=False)
    assert not (off / "tensorboard").exists()
