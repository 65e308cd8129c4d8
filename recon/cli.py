"""Command line: parses, loads the config, calls the library. Bad input exits with code 2.

A fit that diverged (its loss or state became NaN or inf) exits with code 3; a command that needs an
optional package that is not installed exits with code 4, naming the extra to install.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

from typing import TYPE_CHECKING

from recon.config import ARMS, DEFAULT_TEXTURE_SIZE, MESH_COLORS, RANGES, Range, at_least, check_range
from recon.errors import InputError, MissingDependencyError, TrainingDiverged

if TYPE_CHECKING:
    from recon.config import Config

EXIT_BAD_INPUT = 2
EXIT_ARMS_FAILED = 1
"""``recon compare`` / ``recon sweep``: every arm ran, some failed (recorded; a rerun retries them)."""
EXIT_DIVERGED = 3
EXIT_MISSING_DEPENDENCY = 4
EXIT_CODES = ("exit codes: 0 done; 1 compare / sweep: some arms failed (recorded; rerun to retry them); "
              "2 bad input (one line names the file or key; nothing written); "
              "3 the fit diverged (NaN or inf; the last good checkpoint is kept); "
              "4 an optional package is missing (one line names the extra); 130 interrupted (rerun to resume)")
OPTION_RANGES: dict[str, Range] = {
    "iters": RANGES["train.iters"],
    "holdout": RANGES["train.holdout"],
    "downscale": RANGES["data.downscale"],
    "resolution": RANGES["mesh.resolution"],
    "points": at_least(100),
    "seeds": at_least(1),
    "detail_radius": Range(0.0, 1.0, low_open=True, high_open=True),
}
"""Allowed values of the numeric options (by argparse ``dest``), checked before a command runs."""
RENAMED_OPTIONS = {"--encoding": "--arm", "--encodings": "--arms", "--background": "--rgba-background"}
"""Options of earlier versions -> their names now (refused with the new name)."""


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the embedded default scene (or a mesh of yours) as posed images")
    p.add_argument("out_dir", type=Path, help="folder to create")
    p.add_argument("--format", choices=["dtu", "colmap"], default="dtu",
                   help="capture layout: dtu (IDR/NeuS, with depth and normal cues; default) or colmap (images/, "
                        "masks/, sparse/0/*.bin with PINHOLE cameras and sparse points sampled on the mesh)")
    p.add_argument("--mesh", type=Path, default=None, help="render this mesh instead of the default object")
    p.add_argument("--views", type=int, default=40, help="number of views (default 40)")
    p.add_argument("--size", type=int, default=96, help="image width and height in pixels (default 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the texture and cameras")
    p.set_defaults(run=_run_synth)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit an SDF to posed images; rerun on the same --out to resume", epilog=EXIT_CODES)
    p.add_argument("data_dir", type=Path, help="scene folder (dtu, monosdf, nerf-synthetic, ngp or colmap layout)")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, logs, renders)")
    p.add_argument("--arm", choices=ARMS, default=None, help="geometry arm (geometry.arm; default hashgrid)")
    p.add_argument("--iters", type=int, default=None, help="optimisation steps (default from the config)")
    p.add_argument(
        "--config", type=Path, default=None, help="YAML config file (see configs/; configs/gpu.yaml for a CUDA GPU)"
    )
    p.add_argument(
        "--holdout", type=int, default=None, metavar="K",
        help="keep every K-th view (0, K, 2K, ...) out of training; report PSNR and mask IoU on them",
    )
    _add_data_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value (e.g. train.batch_rays=1024)")
    p.set_defaults(run=_run_fit)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    from recon.config import DataConfig

    formats = typing.get_args(typing.get_type_hints(DataConfig)["format"])
    p.add_argument("--format", choices=formats, default=None, help="capture format (default: auto, detected)")
    p.add_argument("--downscale", type=int, default=None, metavar="D", help="area-average the images by D (default 1)")
    p.add_argument("--colmap-sphere", type=float, nargs=4, default=None, metavar=("CX", "CY", "CZ", "R"),
                   help="COLMAP captures: the scene sphere, centre and radius in the model's units (data.colmap_sphere)")
    p.add_argument("--colmap-sphere-rule", choices=["points", "cameras"], default=None,
                   help="COLMAP captures: sphere around the sparse points most cameras see (default), or from the "
                        "cameras (data.colmap_sphere_rule)")


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="load a capture, validate it and print what was found, without training")
    p.add_argument("data_dir", type=Path, help="scene folder (dtu, monosdf, nerf-synthetic, ngp or colmap layout)")
    _add_data_options(p)
    p.add_argument("--rgba-background", choices=["white", "black"], default="white",
                   help="colour RGBA images are composited on (data.rgba_background; default white)")
    p.set_defaults(run=_run_check)


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="marching cubes on a fitted run; mesh in world units")
    p.add_argument("run_dir", type=Path, help="run directory written by `recon fit`")
    p.add_argument("--resolution", type=int, default=None, help="grid vertices per axis (default 256)")
    p.add_argument("-o", "--output", type=Path, required=True, help="mesh file (.ply, .obj or .glb)")
    p.add_argument("--largest-component", action="store_true", help="keep only the largest connected piece")
    p.add_argument("--gt", type=Path, default=None, help="ground-truth mesh to score against (default: the scene's)")
    p.add_argument("--color", choices=MESH_COLORS, default="none",
                   help="none: vertex normals only; vertex: also vertex colours from "
                        "the colour network, seen along the reversed normal; texture: a UV atlas (xatlas, "
                        "recon[texture]) and a baked texture: OBJ + MTL + PNG, or a GLB with a material (default none)")
    p.add_argument("--texture-size", type=int, default=DEFAULT_TEXTURE_SIZE, metavar="N",
                   help=f"--color texture: about N x N texels (default {DEFAULT_TEXTURE_SIZE})")
    p.add_argument("--psnr", action="store_true",
                   help="ray cast the coloured mesh from the training cameras and print its PSNR / SSIM against "
                        "the photographs (inside the masks), as held-out views are scored")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_extract)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="Chamfer, F-score and normal consistency of a mesh against ground truth, or DTU's official protocol",
        description="Score a mesh against a ground-truth mesh (--gt), or with DTU's official evaluation (--dtu-scan N "
                    "--dtu-dir DIR: accuracy, completeness and Chamfer in mm, in DTU's world frame, as DTU's MATLAB "
                    "code and its Python port compute them; recon's meshes of DTU scenes are in that frame). DIR holds "
                    "DTU's official files, ObsMask/ObsMask{N}_10.mat, ObsMask/Plane{N}.mat (the SampleSet download) "
                    "and Points/stl/stl{NNN}_total.ply (the Points download): see data/README.md.")
    p.add_argument("mesh", type=Path, help="predicted mesh (world units); with --dtu-scan also a PLY point cloud")
    p.add_argument("--gt", type=Path, default=None, help="ground-truth mesh")
    p.add_argument("--dtu-scan", type=int, default=None, metavar="N", help="DTU's official evaluation of scan N")
    p.add_argument("--dtu-dir", type=Path, default=None, metavar="DIR",
                   help="folder of DTU's official evaluation files (ObsMask/, Points/stl/; or SampleSet's 'MVS Data')")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    p.add_argument("--cull-to", type=Path, default=None, metavar="DATA_DIR",
                   help="count only surface that this scene's cameras see (inside the images and masks, not occluded)")
    p.add_argument("--detail-radius", type=float, default=None, metavar="REL",
                   help="curvature scale of the detail measure, as a fraction of the GT diagonal (default 0.01)")
    p.add_argument("--points", type=int, default=200_000, help="samples per mesh (default 200000)")
    p.set_defaults(run=_run_eval)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="fit several geometry arms on one scene, evaluate each, write report.html / .md")
    p.add_argument("data_dir", type=Path, help="scene folder (DTU/IDR/NeuS layout)")
    p.add_argument("--out", type=Path, required=True, help="comparison folder (one run per arm and seed; resumable)")
    _add_study_options(p)
    p.add_argument("overrides", nargs="*", help="config overrides for every arm, section.key=value")
    p.set_defaults(run=_run_compare)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="scenes x arms x seeds: one results table and one report across scenes; "
                                     "on this machine's cores or a Ray cluster")
    p.add_argument("items", nargs="+", metavar="SCENES",
                   help="scene folders, or YAML files listing scenes (path, name, format, downscale, overrides); "
                        "section.key=value items are config overrides for every arm")
    p.add_argument("--out", type=Path, required=True,
                   help="sweep folder: DIR/<scene>/<arm>/seed<k>/, results.csv, report.html / .md (resumable)")
    _add_study_options(p)
    p.set_defaults(run=_run_sweep, overrides=[])


def _add_study_options(p: argparse.ArgumentParser) -> None:
    """The options ``compare`` and ``sweep`` share: what is fitted, and where the fits run."""
    from recon.executors import DEFAULT_RETRIES, EXECUTORS

    p.add_argument("--arms", default=",".join(ARMS),
                   help=f"comma-separated geometry arms (default: MonoSDF's four, {','.join(ARMS)})")
    p.add_argument("--seeds", type=int, default=1, help="seeds per arm; K > 1 gives mean ± std (default 1)")
    p.add_argument("--iters", type=int, default=None, help="optimisation steps (default from the preset / config)")
    p.add_argument("--preset", default=None, help="configs/NAME.yaml, e.g. quick (all four arms in < 30 min on 2 CPU cores)")
    p.add_argument("--config", type=Path, default=None, help="YAML config file (instead of a preset)")
    p.add_argument("--resolution", type=int, default=None, help="marching-cubes resolution (default: the config's mesh.resolution)")
    p.add_argument("--no-cull", action="store_true", help="evaluate whole meshes, not only what the cameras see")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_pictures_option(p)
    g = p.add_argument_group("where the fits run")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a pool of worker processes on this machine (default); ray: tasks on a Ray cluster "
                        "(pip install 'recon[ray]'); serial: one fit after another in this process")
    g.add_argument("--workers", type=int, default=None,
                   help="local: fits at once (default: one per core up to the number of fits; with GPUs one per GPU, "
                        "or per GPU share)")
    g.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                   help="CPU threads of each fit, the same on every executor (default: cores / workers; on Ray the "
                        "cluster's CPUs / fits, at most one node's; Ray: the task's num_cpus)")
    g.add_argument("--gpus-per-task", type=float, default=None, metavar="G",
                   help="GPU share of each fit, 0 <= G <= 1 (0.25 packs four fits on one card; default 1 when there "
                        "are GPUs, else 0)")
    g.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"times a fit whose worker process died (killed, out of memory) is started again "
                        f"(default {DEFAULT_RETRIES})")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="the Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray)")


def _add_pictures_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-pictures", action="store_true",
                   help="reports without the mesh pictures (renders, distance maps, close-ups: about half a minute "
                        "per scene); tables and plots stay")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.html / .md and results.csv of a sweep or comparison folder")
    p.add_argument("out_dir", type=Path, help="folder written by `recon sweep` or `recon compare`")
    _add_pictures_option(p)
    p.set_defaults(run=_run_report)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job on the default scene: synth, fit, extract, evaluate")
    p.add_argument("out_dir", type=Path, help="folder for the scene, the run and the mesh")
    p.add_argument("--arm", choices=ARMS, default="hashgrid", help="geometry arm (default hashgrid)")
    p.add_argument("--iters", type=int, default=None, help="optimisation steps (default from the config)")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes resolution")
    p.set_defaults(run=_run_demo)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, exit code 2 (the usage is one ``--help`` away)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``recon`` argument parser."""
    parser = _Parser(prog="recon", description=__doc__.splitlines()[0] if __doc__ else None, epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_fit, _add_check, _add_extract, _add_eval, _add_compare, _add_sweep, _add_report,
                _add_demo):
        add(sub)
    return parser


def _run_synth(args: argparse.Namespace) -> None:
    from recon.datasets import synthesize

    synthesize(args.out_dir, mesh_path=args.mesh, n_views=args.views, size=args.size, seed=args.seed,
               layout=args.format)
    print(f"wrote scene to {args.out_dir}")


def _fit_request(args: argparse.Namespace) -> tuple[Config, set[str]]:
    """The config a fit command asks for, and the keys it sets itself (``recon.config.asked_keys``)."""
    from recon.config import asked_keys, load_config

    overrides = list(getattr(args, "overrides", []))
    if args.arm is not None:
        overrides.append(f"geometry.arm={args.arm}")
    if args.iters is not None:
        overrides.append(f"train.iters={args.iters}")
    if getattr(args, "holdout", None) is not None:
        overrides.append(f"train.holdout={args.holdout}")
    if getattr(args, "format", None) is not None:
        overrides.append(f"data.format={args.format}")
    if getattr(args, "downscale", None) is not None:
        overrides.append(f"data.downscale={args.downscale}")
    if getattr(args, "colmap_sphere", None) is not None:
        overrides.append(f"data.colmap_sphere={list(args.colmap_sphere)}")
    if getattr(args, "colmap_sphere_rule", None) is not None:
        overrides.append(f"data.colmap_sphere_rule={args.colmap_sphere_rule}")
    config_file = getattr(args, "config", None)
    return load_config(config_file, overrides), asked_keys(config_file, overrides)


def _run_fit(args: argparse.Namespace) -> None:
    from recon.run import RunDir
    from recon.train import fit

    cfg, asked = _fit_request(args)
    run_dir = fit(args.data_dir, args.out, cfg, progress=not args.quiet, asked=asked)
    summary = RunDir(run_dir).holdout_summary()
    if summary is not None:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if k not in ("step", "every", "views"))
        print(f"held-out views {[v['view'] for v in summary['views']]}: {scores}")
    print(f"run saved in {run_dir}")


def _run_check(args: argparse.Namespace) -> None:
    from recon.datasets import load_scene
    from recon.datasets.check import describe

    downscale = 1 if args.downscale is None else args.downscale
    datasets_log = logging.getLogger("recon.datasets")
    level = datasets_log.level
    datasets_log.setLevel(logging.ERROR)  # the report below lists the warnings
    try:
        scene = load_scene(args.data_dir, args.format or "auto", downscale, args.rgba_background,
                           args.colmap_sphere or (), args.colmap_sphere_rule or "points")
    finally:
        datasets_log.setLevel(level)  # in-process callers (tests, notebooks) keep their warnings
    print("\n".join(describe(scene, args.data_dir)))


def _run_extract(args: argparse.Namespace) -> None:
    from recon.extract import extract_run

    result = extract_run(args.run_dir, args.output, args.resolution, args.largest_component, args.gt,
                         args.color, args.texture_size, args.psnr, progress=not args.quiet)
    print(result)


def _run_eval(args: argparse.Namespace) -> None:
    from recon.extract import evaluate_files
    from recon.io import json_text
    from recon.metrics import DETAIL_RADIUS_REL

    dtu = args.dtu_scan is not None or args.dtu_dir is not None
    if dtu == (args.gt is not None):
        raise InputError("--gt", "give a ground-truth mesh (--gt) or DTU's evaluation (--dtu-scan N --dtu-dir DIR), one of them")
    if dtu:
        _run_dtu_eval(args)
        return
    radius = DETAIL_RADIUS_REL if args.detail_radius is None else args.detail_radius
    metrics = evaluate_files(args.mesh, args.gt, args.json, args.cull_to, radius, args.points)
    print(json_text(metrics, indent=2))


def _run_dtu_eval(args: argparse.Namespace) -> None:
    from recon.dtu_eval import evaluate_dtu
    from recon.io import check_output_file, json_text, write_json_atomic

    if args.dtu_scan is None or args.dtu_dir is None:
        raise InputError("--dtu-scan" if args.dtu_scan is None else "--dtu-dir",
                         "DTU's evaluation needs both --dtu-scan and --dtu-dir")
    if args.json is not None:
        check_output_file(args.json)
    metrics = evaluate_dtu(args.mesh, args.dtu_scan, args.dtu_dir)
    if args.json is not None:
        write_json_atomic(args.json, metrics)
    print(json_text(metrics, indent=2))


def _study_settings(args: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """The config file (preset or --config) and overrides every arm of a comparison or sweep gets."""
    from recon.compare import preset_path

    if args.preset is not None and args.config is not None:
        raise InputError("--preset", "give a preset or a config file, not both")
    cfg_file = preset_path(args.preset) if args.preset is not None else args.config
    overrides = list(args.overrides) + ([f"train.iters={args.iters}"] if args.iters is not None else [])
    return cfg_file, overrides


def _executor(args: argparse.Namespace, n_tasks: int):
    from recon.executors import ExecutorOptions, make_executor

    options = ExecutorOptions(args.executor, args.workers, args.threads_per_worker, args.gpus_per_task, args.retries,
                              args.ray_address)
    return make_executor(options, n_tasks)


def _run_compare(args: argparse.Namespace) -> int:
    from recon.compare import CompareSpec, parse_arms
    from recon.config import load_config
    from recon.sweep import run_compare

    cfg_file, overrides = _study_settings(args)
    resolution = args.resolution if args.resolution is not None else load_config(cfg_file, overrides).mesh.resolution
    spec = CompareSpec(args.data_dir, args.out, parse_arms(args.arms), args.seeds, resolution,
                       not args.no_cull, cfg_file, tuple(overrides))
    executor = _executor(args, len(spec.arms) * max(1, spec.seeds))
    return _failures(run_compare(spec, executor, progress=not args.quiet, report=True, pictures=not args.no_pictures))


def _run_sweep(args: argparse.Namespace) -> int:
    from recon.compare import parse_arms
    from recon.sweep import read_scenes, run_sweep, sweep_spec

    scene_items = [i for i in args.items if Path(i).exists() or "=" not in i]
    args.overrides = [i for i in args.items if i not in scene_items] + list(args.overrides)
    cfg_file, overrides = _study_settings(args)
    spec = sweep_spec(read_scenes([Path(i) for i in scene_items]), args.out, parse_arms(args.arms), args.seeds,
                      args.resolution, not args.no_cull, cfg_file, overrides)
    executor = _executor(args, len(spec.scenes) * len(spec.arms) * max(1, spec.seeds))
    return _failures(run_sweep(spec, executor, progress=not args.quiet, report=True, pictures=not args.no_pictures))


def _failures(results: list[dict]) -> int:
    """Exit code 1 (after a line saying so) when some arm failed, else 0."""
    failed = [r for r in results if r.get("status", "ok") != "ok"]
    if failed:
        print(f"{len(failed)} of {len(results)} arms failed (their errors are in the report and results.csv); "
              "rerun the same command to retry them", file=sys.stderr)
    return EXIT_ARMS_FAILED if failed else 0


def _run_report(args: argparse.Namespace) -> None:
    from recon.sweep_report import write_report

    html_path, md_path = write_report(args.out_dir, pictures=not args.no_pictures)
    print(f"report: {html_path} and {md_path}")


def _run_demo(args: argparse.Namespace) -> None:
    from recon.datasets import synthesize
    from recon.extract import extract_run
    from recon.io import check_output_dir
    from recon.train import fit

    check_output_dir(args.out_dir)
    scene_dir, run_dir = args.out_dir / "scene", args.out_dir / f"run_{args.arm}"
    if not (scene_dir / "cameras_sphere.npz").is_file():
        synthesize(scene_dir)
        print(f"wrote the default scene to {scene_dir}")
    cfg, asked = _fit_request(args)
    fit(scene_dir, run_dir, cfg, asked=asked)
    print(extract_run(run_dir, args.out_dir / f"mesh_{args.arm}.ply", args.resolution, False, None))


def check_options(args: argparse.Namespace) -> None:
    """``InputError`` naming the option when a numeric option lies outside ``OPTION_RANGES``."""
    for dest, allowed in OPTION_RANGES.items():
        value = getattr(args, dest, None)
        if value is not None:
            check_range(f"--{dest.replace('_', '-')}", value, allowed)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recon`` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    for old, new in RENAMED_OPTIONS.items():
        if any(a == old or a.startswith(old + "=") for a in argv):
            parser.error(f"{old} was renamed to {new}")
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        # Overrides may stand anywhere after the data folder, between the options.
        unknown = [a for a in extra if a.startswith("-")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = list(args.overrides) + extra
    try:
        check_options(args)
        code = args.run(args)
    except InputError as err:
        print(f"recon {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as err:
        print(f"recon {args.command}: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except MissingDependencyError as err:
        print(f"recon {args.command}: error: {err}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    except KeyboardInterrupt:
        print(f"recon {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
