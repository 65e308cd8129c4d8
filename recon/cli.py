"""Command line: parses, loads the config, calls the library. Bad input exits with code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recon.errors import InputError

EXIT_BAD_INPUT = 2


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the embedded default scene (or a mesh of yours) as posed images")
    p.add_argument("out_dir", type=Path, help="folder to create (DTU/IDR layout)")
    p.add_argument("--mesh", type=Path, default=None, help="render this mesh instead of the default object")
    p.add_argument("--views", type=int, default=40, help="number of views (default 40)")
    p.add_argument("--size", type=int, default=96, help="image width and height in pixels (default 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the texture and cameras")
    p.set_defaults(run=_run_synth)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit an SDF to posed images; rerun on the same --out to resume")
    p.add_argument("data_dir", type=Path, help="scene folder (DTU/IDR/NeuS layout)")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, logs, renders)")
    p.add_argument("--encoding", choices=["hashgrid", "densegrid"], default=None, help="grid encoding (default hashgrid)")
    p.add_argument("--iters", type=int, default=None, help="optimisation steps (default from the config)")
    p.add_argument("--config", type=Path, default=None, help="YAML config file (see configs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides, section.key=value (e.g. train.batch_rays=1024)")
    p.set_defaults(run=_run_fit)


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="marching cubes on a fitted run; mesh in world units")
    p.add_argument("run_dir", type=Path, help="run directory written by `recon fit`")
    p.add_argument("--resolution", type=int, default=None, help="grid vertices per axis (default 256)")
    p.add_argument("-o", "--output", type=Path, required=True, help="mesh file (.ply, .obj or .glb)")
    p.add_argument("--largest-component", action="store_true", help="keep only the largest connected piece")
    p.add_argument("--gt", type=Path, default=None, help="ground-truth mesh to score against (default: the scene's)")
    p.set_defaults(run=_run_extract)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Chamfer, F-score and normal consistency of a mesh against ground truth")
    p.add_argument("mesh", type=Path, help="predicted mesh (world units)")
    p.add_argument("--gt", type=Path, required=True, help="ground-truth mesh")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    p.set_defaults(run=_run_eval)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job on the default scene: synth, fit, extract, evaluate")
    p.add_argument("out_dir", type=Path, help="folder for the scene, the run and the mesh")
    p.add_argument("--encoding", choices=["hashgrid", "densegrid"], default="hashgrid")
    p.add_argument("--iters", type=int, default=None, help="optimisation steps (default from the config)")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes resolution")
    p.set_defaults(run=_run_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``recon`` argument parser."""
    parser = argparse.ArgumentParser(prog="recon", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_fit, _add_extract, _add_eval, _add_demo):
        add(sub)
    return parser


def _run_synth(args: argparse.Namespace) -> None:
    from recon.datasets import synthesize

    synthesize(args.out_dir, mesh_path=args.mesh, n_views=args.views, size=args.size, seed=args.seed)
    print(f"wrote scene to {args.out_dir}")


def _fit_config(args: argparse.Namespace):
    from recon.config import load_config

    overrides = list(getattr(args, "overrides", []))
    if args.encoding is not None:
        overrides.append(f"encoding.type={args.encoding}")
    if args.iters is not None:
        overrides.append(f"train.iters={args.iters}")
    return load_config(getattr(args, "config", None), overrides)


def _run_fit(args: argparse.Namespace) -> None:
    from recon.train import fit

    cfg = _fit_config(args)
    run_dir = fit(args.data_dir, args.out, cfg, progress=not args.quiet)
    print(f"run saved in {run_dir}")


def _run_extract(args: argparse.Namespace) -> None:
    from recon.extract import extract_run

    result = extract_run(args.run_dir, args.output, args.resolution, args.largest_component, args.gt)
    print(result)


def _run_eval(args: argparse.Namespace) -> None:
    from recon.extract import evaluate_files

    metrics = evaluate_files(args.mesh, args.gt, args.json)
    print(json.dumps(metrics, indent=2))


def _run_demo(args: argparse.Namespace) -> None:
    from recon.datasets import synthesize
    from recon.extract import extract_run
    from recon.train import fit

    scene_dir, run_dir = args.out_dir / "scene", args.out_dir / f"run_{args.encoding}"
    if not (scene_dir / "cameras_sphere.npz").is_file():
        synthesize(scene_dir)
        print(f"wrote the default scene to {scene_dir}")
    fit(scene_dir, run_dir, _fit_config(args))
    print(extract_run(run_dir, args.out_dir / f"mesh_{args.encoding}.ply", args.resolution, False, None))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recon`` console script."""
    parser = build_parser()
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
        args.run(args)
    except InputError as err:
        print(f"recon {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"recon {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
