"""``optimize profile``: build a device's latency profile and write it (atomically)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgeslim.errors import ConfigError
from edgeslim.evaluators.latency import available_cores
from edgeslim.evaluators.profile_build import ProfileOptions, build_profile
from edgeslim.fsutil import atomic_write_json
from edgeslim.models import resolve_factory
from edgeslim.runtimes import check_installed

# The runtimes whose latency a profile predicts: it times layers as ONNX files in onnxruntime,
# or as the LiteRT files converted from them in LiteRT. (LiteRT for Microcontrollers runs on
# boards without Python.)
PROFILED_RUNTIMES = ("onnxruntime", "litert")


def profile_options(args: argparse.Namespace) -> ProfileOptions:
    """The options of ``optimize profile``, validated before anything is timed."""
    if args.runtime not in PROFILED_RUNTIMES:
        raise ConfigError(f"--runtime: must be one of {', '.join(PROFILED_RUNTIMES)}, got "
                          f"{args.runtime!r} (a profile times layers on the board, as ONNX "
                          "files in onnxruntime or as LiteRT files in LiteRT)")
    check_installed(args.runtime)  # litert: the converter and LiteRT, on the board
    try:
        shape = tuple(int(v) for v in args.input_shape.lower().split("x"))
    except ValueError:
        shape = ()
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ConfigError(f"--input-shape: must be CxL, CxHxW or CxDxHxW with positive sizes, "
                          f"got {args.input_shape!r}")
    if not 0 < args.max_ratio < 1:
        raise ConfigError(f"--max-ratio: must be > 0 and < 1, got {args.max_ratio}")
    if args.out.exists() and args.out.is_dir():
        raise ConfigError(f"--out: {args.out} is a directory; give a file name")
    resolve_factory(args.model)
    modes = tuple(m.strip() for m in args.quantize.split(",") if m.strip())
    return ProfileOptions(model=args.model, input_shape=shape, num_classes=args.num_classes,
                          round_to=args.round_to, max_ratio=args.max_ratio, modes=modes,
                          threads=args.threads or available_cores(), models=args.models,
                          holdout=args.holdout, layer_seconds=args.layer_seconds,
                          model_seconds=args.model_seconds, seed=args.seed,
                          runtime=args.runtime)


def run_profile(args: argparse.Namespace, console: Console) -> int:
    opts = profile_options(args)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        tasks: dict[str, int] = {}

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(f"timing {phase}", total=total)
            progress.update(tasks[phase], completed=done)

        profile = build_profile(opts, report)
    atomic_write_json(profile, args.out)
    console.print(f"wrote {args.out}: {opts.model} {'x'.join(map(str, opts.input_shape))}, "
                  f"{len(next(iter(profile['layers'].values())))} layer configurations, "
                  f"{opts.threads} threads, {opts.runtime} {profile['runtime_version']}")
    for mode, err in profile["error"].items():
        console.print(f"  {mode}: held-out error median {100 * err['median_abs_error']:.1f}%, "
                      f"max {100 * err['max_abs_error']:.1f}%, Spearman {err['spearman']:.2f} "
                      f"({err['held_out_models']} models)")
    return 0
