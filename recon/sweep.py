"""recon sweep: scenes x geometry arms x seeds, on any executor, one results table, one report.

Layout of a sweep folder ``DIR``::

    DIR/sweep.json                  the plan: scenes (name, data folder), arms, seeds
    DIR/<scene>/                    each scene laid out as a comparison (``recon.compare``):
    DIR/<scene>/compare.json          its settings
    DIR/<scene>/<arm>/seed<k>/        one run per arm and seed, ``result.json`` written last
    DIR/<scene>/report.html, .md      the scene's report (tables, mesh pictures, curves)
    DIR/results.csv                 one row per scene x arm x seed: status, error, every metric
    DIR/report.html, DIR/report.md  the report across scenes (``recon.sweep_report``)
    DIR/.recon.lock                 held while a sweep runs here (pid and host inside)

``recon compare`` is the one-scene case: the same driver on one scene laid out in ``DIR`` itself
(``DIR/compare.json``, ``DIR/<arm>/seed<k>/``, ``DIR/results.csv``, ``DIR/report.html``).

The driver plans, submits the unfinished arms to an executor (``recon.executors``) and summarises;
each task writes its own result. Finished arms (``status: ok`` with the same settings) are never
recomputed; a rerun of the same command runs the failed and unfinished ones, whose fits resume
from their checkpoints. Two sweeps on one folder are refused (``recon.io.folder_lock``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from recon.compare import (
    SET_BY_EXECUTOR, SETTINGS, ArmTask, CompareSpec, failed_result, is_finished, is_ok, one_line_result,
    load_results, read_result, read_settings, run_arm, scene_up,
)
from recon.config import load_config
from recon.errors import InputError
from recon.executors import Executor, Lost, SerialExecutor, describe
from recon.io import check_output_dir, folder_lock, write_json_atomic, write_text_atomic
from recon.run import RunDir, check_resumable

PLAN = "sweep.json"
RESULTS_CSV = "results.csv"
SCENE_FILE_KEYS = ("path", "name", "format", "downscale", "overrides")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESERVED_NAMES = ("report_files",)
BASE_COLUMNS = ("scene", "arm", "seed", "status", "error_type", "error", "threads", "host", "seconds", "fit_seconds",
                "mesh_seconds", "n_params_encoding", "n_params_total", "train_psnr", "holdout_psnr", "holdout_mask_iou")


@dataclass(frozen=True)
class SceneEntry:
    """One scene of a sweep: its data folder, its name, and options for it alone."""

    path: Path
    name: str
    overrides: tuple[str, ...] = ()


@dataclass
class SweepSpec:
    """What a sweep (or a comparison: one scene, ``layout="compare"``) fits and measures."""

    out_dir: Path
    scenes: tuple[CompareSpec, ...]
    layout: Literal["sweep", "compare"] = "sweep"

    @property
    def arms(self) -> tuple[str, ...]:
        return self.scenes[0].arms

    @property
    def seeds(self) -> int:
        return self.scenes[0].seeds


# ----------------------------------------------------------------------------- scenes


def read_scenes(sources: Sequence[Path]) -> list[SceneEntry]:
    """Scene folders, and YAML files listing scenes (``scenes: [{path, name, format, downscale,
    overrides}]``, paths relative to the file), in the order given; names checked and unique."""
    if not sources:
        raise InputError("SCENES", "no scene given")
    entries: list[SceneEntry] = []
    for source in map(Path, sources):
        if source.is_file() and source.suffix in (".yaml", ".yml"):
            entries += _scenes_file(source)
        elif source.is_dir():
            entries.append(SceneEntry(source, _check_name(source.resolve().name, source)))
        else:
            raise InputError(source, "not a scene folder nor a YAML file listing scenes")
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.name in seen:
            raise InputError(entry.path, f"two scenes are named {entry.name!r} (the other: {seen[entry.name]}); "
                                         "give them names in a scenes file")
        seen[entry.name] = entry.path
    return entries


def _scenes_file(path: Path) -> list[SceneEntry]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({type(err).__name__})") from None
    items = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise InputError(path, "expected a list 'scenes:' of scenes, each with a 'path'")
    return [_scene_item(path, number, item) for number, item in enumerate(items, start=1)]


def _scene_item(path: Path, number: int, item: Any) -> SceneEntry:
    where = f"{path}: scene {number}"
    if isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, dict) or "path" not in item:
        raise InputError(where, "needs a 'path' (the scene folder)")
    unknown = sorted(set(item) - set(SCENE_FILE_KEYS))
    if unknown:
        raise InputError(where, f"unknown key(s) {', '.join(unknown)} (known: {', '.join(SCENE_FILE_KEYS)})")
    folder = (path.parent / str(item["path"])).resolve()
    if not folder.is_dir():
        raise InputError(where, f"scene folder {folder} not found")
    overrides = _scene_overrides(where, item.get("overrides") or [])
    if item.get("format") is not None:
        overrides.append(f"data.format={item['format']}")
    if item.get("downscale") is not None:
        overrides.append(f"data.downscale={item['downscale']}")
    return SceneEntry(folder, _check_name(str(item.get("name") or folder.name), where), tuple(overrides))


def _scene_overrides(where: str, overrides: Any) -> list[str]:
    """A scene's ``overrides``: a list of ``section.key=value`` or a mapping ``section.key: value``."""
    if isinstance(overrides, dict):
        return [f"{key}={value}" for key, value in overrides.items()]
    if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
        return list(overrides)
    raise InputError(where, "'overrides' must be a list of section.key=value or a mapping section.key: value")


def _check_name(name: str, where: str | Path) -> str:
    if not _NAME.match(name) or name in RESERVED_NAMES:
        raise InputError(where, f"scene name {name!r} must be letters, digits, '.', '_' or '-' (and not "
                                f"{', '.join(RESERVED_NAMES)})")
    return name


def sweep_spec(scenes: Sequence[SceneEntry], out_dir: Path, arms: tuple[str, ...], seeds: int = 1,
               resolution: int | None = None, cull: bool = True, cfg_file: Path | None = None,
               overrides: Sequence[str] = (), n_points: int = 200_000) -> SweepSpec:
    """A sweep's spec: every scene with the shared settings, then its own overrides; each scene's mesh
    resolution ``resolution`` or its config's ``mesh.resolution``."""
    specs = []
    for scene in scenes:
        scene_overrides = (*overrides, *scene.overrides)
        res = resolution or load_config(cfg_file, list(scene_overrides)).mesh.resolution
        specs.append(CompareSpec(scene.path, Path(out_dir) / scene.name, arms, seeds, res, cull, cfg_file,
                                 scene_overrides, n_points, scene.name))
    return SweepSpec(Path(out_dir), tuple(specs))


def compare_spec(spec: CompareSpec) -> SweepSpec:
    """A comparison as the one-scene sweep laid out in its own folder."""
    return SweepSpec(spec.out_dir, (spec,), "compare")


# ----------------------------------------------------------------------------- the driver


@dataclass
class _Plan:
    """What runs, what was finished before, and the table of every arm."""

    keys: list[tuple[str, str, int]]  # (scene, arm, seed), in table order
    results: dict[tuple[str, str, int], dict[str, Any]]
    todo: list[ArmTask]


def run_compare(spec: CompareSpec, executor: Executor | None = None, progress: bool = True,
                report: bool = False, pictures: bool = True) -> list[dict[str, Any]]:
    """Fit, extract and evaluate every arm of one scene not finished yet; return all arms' results."""
    return run_sweep(compare_spec(spec), executor, progress, report=report, pictures=pictures)


def run_sweep(spec: SweepSpec, executor: Executor | None = None, progress: bool = True,
              task_fn: Callable[[ArmTask], dict[str, Any]] = run_arm, report: bool = False,
              pictures: bool = True) -> list[dict[str, Any]]:
    """Run every unfinished arm of ``spec`` on ``executor`` (default: serially in this process with
    torch's threads); return the results of all arms, in table order (scene, seed, arm).

    Bad input is refused before anything is written; the output folder is locked while it runs.
    ``task_fn`` is the task each arm runs (``run_arm``); ``report``: write the report at the end
    (``pictures``: with the scenes' mesh pictures).
    """
    executor = executor or SerialExecutor(_torch_threads())
    facts = _check(spec)
    with folder_lock(spec.out_dir):
        _write_plan(spec, facts)
        plan = _plan(spec, executor.threads, progress and isinstance(executor, SerialExecutor))
        kept = len(plan.results)
        for number, key in enumerate(plan.keys, start=1):
            if key in plan.results:
                print(f"[{number}/{len(plan.keys)}] {_label(key)}: finished earlier, kept")
        print(f"{_what(spec)}: {len(plan.keys)} arms, {kept} finished earlier, {len(plan.todo)} to run "
              f"({describe(executor) if plan.todo else 'nothing to do'})")
        write_results_csv(spec.out_dir, plan.keys, plan.results)
        if plan.todo:
            executor.prepare(_needs_cpu_kernel(plan.todo, executor))
            executor.run(task_fn, plan.todo, _on_done(spec, plan))
        if report:
            from recon.sweep_report import write_report

            html_path, md_path = write_report(spec.out_dir, pictures=pictures)
            print(f"report: {html_path} and {md_path}")
    return [plan.results[k] for k in plan.keys if k in plan.results]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _what(spec: SweepSpec) -> str:
    if spec.layout == "compare":
        return f"compare {spec.scenes[0].name}: {len(spec.arms)} arm(s) x {spec.seeds} seed(s)"
    return f"sweep: {len(spec.scenes)} scene(s) x {len(spec.arms)} arm(s) x {spec.seeds} seed(s)"


def _label(key: tuple[str, str, int]) -> str:
    return f"{key[0]} / {key[1]} / seed {key[2]}"


def _check(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every input checked before anything is written; each scene's GT mesh path and up vector
    (the scenes are loaded one at a time and let go)."""
    from recon.datasets import load_data

    check_output_dir(spec.out_dir)
    first = spec.scenes[0]
    if first.seeds < 1:
        raise InputError("--seeds", f"must be at least 1, got {first.seeds}")
    loaded = []
    for scene in spec.scenes:
        if scene.resolution < 8:
            raise InputError("--resolution", f"must be at least 8, got {scene.resolution}")
        asked = {o.split("=", 1)[0].strip() for o in scene.overrides}
        for key in SET_BY_EXECUTOR:
            if key in asked:
                raise InputError(key, "set by the executor's thread budget: use --threads-per-worker")
        data = scene.config_for(scene.arms[0], 0).data
        loaded_scene = load_data(scene.data_dir, data)
        gt = loaded_scene.gt_mesh_path
        loaded.append({"gt_mesh": str(gt.resolve()) if gt else None, "up": scene_up(loaded_scene).tolist()})
        del loaded_scene
        settings = scene.settings()
        for seed in range(scene.seeds):
            for arm in scene.arms:
                run = scene.run_dir(arm, seed)
                if not is_finished(run, settings):
                    check_resumable(run.root, scene.config_for(arm, seed))
    return loaded


def _write_plan(spec: SweepSpec, facts: list[dict[str, Any]]) -> None:
    for scene, fact in zip(spec.scenes, facts):
        write_json_atomic(scene.out_dir / SETTINGS, {**scene.settings(), "name": scene.name, "arms": list(scene.arms),
                                                     "seeds": scene.seeds, "overrides": list(scene.overrides), **fact})
    if spec.layout == "sweep":
        write_json_atomic(spec.out_dir / PLAN, {
            "scenes": [{"name": s.name, "data_dir": str(s.data_dir.resolve())} for s in spec.scenes],
            "arms": list(spec.arms), "seeds": spec.seeds})


def _plan(spec: SweepSpec, threads: int, progress: bool) -> _Plan:
    keys, results, todo = [], {}, []
    for scene in spec.scenes:
        settings = scene.settings()
        for seed in range(scene.seeds):
            for arm in scene.arms:
                key = (scene.name, arm, seed)
                keys.append(key)
                run = scene.run_dir(arm, seed)
                if is_finished(run, settings):
                    results[key] = {"scene": scene.name, **read_result(run)}
                else:
                    todo.append(scene.task(arm, seed, threads, progress))
    return _Plan(keys, results, todo)


def _needs_cpu_kernel(tasks: Sequence[ArmTask], executor: Executor) -> bool:
    """Whether some task fits a grid arm on the CPU with the fused kernel (``encoding.backend`` auto / fused)."""
    if getattr(executor, "gpus_per_task", 0.0) > 0:
        return False
    for task in tasks:
        cfg = task.config()
        if cfg.geometry.arm in ("hashgrid", "densegrid") and cfg.encoding.backend in ("auto", "fused"):
            return True
    return False


def _on_done(spec: SweepSpec, plan: _Plan) -> Callable[[int, Any], None]:
    finished = [0]

    def on_done(index: int, value: Any) -> None:
        task = plan.todo[index]
        if isinstance(value, Lost):
            value = failed_result(task, value.error_type, value.error, 0.0)
            write_json_atomic(RunDir(task.run_dir).result, value)
        key = (task.scene, task.arm, task.seed)
        plan.results[key] = value
        finished[0] += 1
        print(f"[{finished[0]}/{len(plan.todo)} run, {len(plan.results)}/{len(plan.keys)} in all] "
              f"{_label(key)}: {one_line_result(value)}", flush=True)
        write_results_csv(spec.out_dir, plan.keys, plan.results)

    return on_done


# ----------------------------------------------------------------------------- the results table


def result_row(result: dict[str, Any] | None, key: tuple[str, str, int]) -> dict[str, Any]:
    """One row of ``results.csv``: the arm, its status (pending when it has no result) and every value."""
    row: dict[str, Any] = {"scene": key[0], "arm": key[1], "seed": key[2], "status": "pending"}
    if result is None:
        return row
    row["status"] = "ok" if is_ok(result) else "failed"
    row.update({c: result.get(c) for c in BASE_COLUMNS[4:] if result.get(c) is not None})
    row.update((result.get("metrics") or {}) if is_ok(result) else {})
    return row


def write_results_csv(out_dir: Path, keys: Sequence[tuple[str, str, int]],
                      results: dict[tuple[str, str, int], dict[str, Any]]) -> Path:
    """``OUT/results.csv``: one row per scene x arm x seed (written atomically)."""
    rows = [result_row(results.get(key), key) for key in keys]
    columns = list(BASE_COLUMNS) + list(dict.fromkeys(k for row in rows for k in row if k not in BASE_COLUMNS))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(out_dir) / RESULTS_CSV
    write_text_atomic(path, text.getvalue())
    return path


# ----------------------------------------------------------------------------- reading a folder back


@dataclass
class SceneResults:
    """One scene of a sweep (or a comparison) as it is on disk."""

    name: str
    folder: Path
    settings: dict[str, Any]
    results: list[dict[str, Any]]  # every recorded arm, finished and failed, each with its "scene"


@dataclass
class SweepResults:
    """A sweep or comparison folder as it is on disk."""

    out_dir: Path
    layout: Literal["sweep", "compare"]
    scenes: list[SceneResults]
    arms: list[str]
    seeds: int

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r for s in self.scenes for r in s.results]

    def keys(self) -> list[tuple[str, str, int]]:
        return [(s.name, arm, seed) for s in self.scenes for seed in range(self.seeds) for arm in self.arms]


def load_sweep(out_dir: str | Path) -> SweepResults:
    """Read a sweep folder (``sweep.json``) or a comparison folder (``compare.json``)."""
    out_dir = Path(out_dir)
    if (out_dir / PLAN).is_file():
        plan = json.loads((out_dir / PLAN).read_text())
        scenes = [_scene_results(out_dir / s["name"], s["name"]) for s in plan["scenes"]]
        return SweepResults(out_dir, "sweep", scenes, plan["arms"], plan["seeds"])
    if not (out_dir / SETTINGS).is_file():
        raise InputError(out_dir, f"neither {PLAN} nor {SETTINGS}: not a recon sweep or comparison folder")
    settings = read_settings(out_dir)
    scene = _scene_results(out_dir, settings.get("name") or Path(settings["data_dir"]).name)
    return SweepResults(out_dir, "compare", [scene], settings["arms"], settings["seeds"])


def _scene_results(folder: Path, name: str) -> SceneResults:
    settings, results = load_results(folder)
    return SceneResults(name, folder, settings, [{**r, "scene": name} for r in results])


def rewrite_results_csv(sweep: SweepResults) -> Path:
    """``results.csv`` rebuilt from what is on disk."""
    results = {(r["scene"], r["arm"], r["seed"]): r for r in sweep.results}
    return write_results_csv(sweep.out_dir, sweep.keys(), results)

