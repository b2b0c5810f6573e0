"""The ``optimize`` search options, parsed into a ``SearchConfig`` and checked at the edge."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeslim.errors import ConfigError
from edgeslim.runtimes import DEFAULT_QUANTIZE, runtime_info
from edgeslim.search.config import SearchConfig, SpaceOptions

if TYPE_CHECKING:
    from edgeslim.budget import Budget
    from edgeslim.evaluators.profile_build import ProfileOptions
    from edgeslim.training import TrainRecipe



def search_config(args: argparse.Namespace, budget: Budget | None = None) -> SearchConfig:
    """The search's typed configuration from the parsed command line; every option is
    checked here, so that a mistake costs nothing. ``budget``: ``--budget``, already read."""
    from edgeslim.budget import load_budget
    from edgeslim.data import dataset_entry
    from edgeslim.models import resolve_factory
    from edgeslim.recovery import Recovery
    from edgeslim.spaces.presets import preset
    from edgeslim.stages import order_name

    budget = load_budget(args.budget) if budget is None else budget
    entry = dataset_entry(args.dataset)
    resolve_factory(args.model)  # an unknown model fails here, before anything is written
    importances = _importances(args.importance)
    if not 0 < args.max_ratio < 1:
        raise ConfigError(f"--max-ratio: must be > 0 and < 1, got {args.max_ratio}")
    _check_checkpoint(args.checkpoint)
    base, finetune, final = _recipes(args, entry)
    recovery = Recovery() if args.recovery is None else Recovery.parse(args.recovery)
    finalists = entry.finalists if args.finalists is None else args.finalists
    if finalists < 0:
        raise ConfigError(f"--finalists: must be >= 0, got {finalists}")
    # A warm start's imported trials tell the sampler more than screening's one-shot scores.
    screen = (0 if args.resume_from else entry.screen_per_trial * args.trials) \
        if args.screen is None else args.screen
    if screen < 0:
        raise ConfigError(f"--screen: must be >= 0, got {screen}")
    stage_options = stage_options_of(args)
    stage_options["quant_modes"] = runtime_quant_modes(args.quantize, budget,
                                                       stage_options["quant_modes"])
    trials = args.trials
    if args.preset is not None and args.resume_from is not None:
        raise ConfigError("--resume-from: a --preset runs one pipeline and searches nothing; "
                          "give one or the other")
    if args.preset is not None:
        p = preset(args.preset)
        # The space holds exactly the preset's pipeline, and the study runs it once.
        stage_options.update(stages=p.order, order=order_name(p.order),
                             cluster_methods=(p.cluster_method,),
                             quant_modes=(p.quantize,) if "quantize" in p.order
                             else stage_options["quant_modes"])
        importances, trials, finalists, screen = (p.importance,), 1, 0, 0
    return SearchConfig(
        budget=budget, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
        checkpoint=args.checkpoint, trials=trials, study_name=args.study_name,
        storage=args.storage, workdir=args.workdir, seed=args.seed,
        sampler=args.sampler or entry.sampler,
        base_recipe=base, finetune=finetune, references=not args.no_references,
        preset=args.preset, repair=not args.no_repair, workers=args.workers,
        finalists=finalists, final=final if finalists else None, screen=screen,
        recovery=recovery, resume_from=args.resume_from,
        space=SpaceOptions(max_ratio=args.max_ratio, importances=importances,
                           round_to=args.round_to, **stage_options))


def _importances(text: str) -> tuple[str, ...]:
    from edgeslim.compress.importance import CRITERIA

    importances = tuple(i.strip() for i in text.split(",") if i.strip())
    unknown = [i for i in importances if i not in CRITERIA]
    if unknown or not importances:
        raise ConfigError(f"--importance: must be among {', '.join(CRITERIA)}, got {text!r}")
    return importances


def _check_checkpoint(path: Path | None) -> None:
    """A checkpoint must exist and be weights, not a pickle that runs code: refused here."""
    if path is None:
        return
    if not path.exists():
        raise ConfigError(f"--checkpoint: no such file {path}")
    from edgeslim.models._resolve import read_state_dict

    read_state_dict(path)


def _recipes(args: argparse.Namespace, entry: Any) -> tuple[TrainRecipe, TrainRecipe,
                                                             TrainRecipe]:
    """The base model's recipe, the search's fine-tunes' and the finalists'."""
    from edgeslim.defaults import FINETUNE_LR
    from edgeslim.training import TrainRecipe

    # The default peak rates are for batch 128; another batch scales them linearly (Goyal et
    # al., 2017). A rate given on the command line is taken as it is.
    batch = args.batch_size or TrainRecipe.batch_size
    scale = batch / TrainRecipe.batch_size
    base = TrainRecipe(epochs=args.base_epochs or entry.base_epochs, seed=args.seed,
                       batch_size=batch, lr=TrainRecipe.lr * scale)
    if not 0 < args.finetune_subset <= 1:
        raise ConfigError(f"--finetune-subset: must be > 0 and <= 1, got {args.finetune_subset}")
    finetune = TrainRecipe.finetune(
        epochs=args.finetune_epochs or entry.finetune_epochs, steps=args.finetune_steps,
        batch_size=batch, lr=args.finetune_lr or FINETUNE_LR * scale,
        **({"distill_alpha": 0.0} if args.no_distill else {}), seed=args.seed,
        subset=args.finetune_subset)
    final = dataclasses.replace(finetune, epochs=args.final_epochs or entry.final_epochs,
                                steps=None, subset=1.0)
    return base, finetune, final


def runtime_quant_modes(given: str | None, budget: Budget | None, modes: tuple[str, ...],
                        ) -> tuple[str, ...]:
    """The quantization modes the budget's runtime runs: by default those of ``modes`` it
    runs; an explicit ``--quantize`` (``given``) that names another is refused."""
    info = runtime_info(budget.runtime.name if budget is not None else "onnxruntime")
    if info.quant_modes is None:
        return modes
    other = [m for m in modes if m not in info.quant_modes]
    if other and given is not None:
        raise ConfigError(f"--quantize: runtime {info.name} runs "
                          f"{', '.join(info.quant_modes)} only ({info.quant_reason}), got "
                          f"{given!r}")
    return tuple(m for m in modes if m in info.quant_modes)


def _names(text: str, flag: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ConfigError(f"{flag}: must be among {', '.join(valid)}, got {text!r}")
    return names


def stage_options_of(args: argparse.Namespace) -> dict[str, object]:
    """The stage options of the search space, checked here so that a mistake costs nothing."""
    from edgeslim.compress import CLUSTER_METHODS, QUANT_MODES
    from edgeslim.stages import STAGES, order_name, order_problem, parse_order

    stages = _names(args.stages, "--stages", tuple(STAGES))
    order = None
    if args.order is not None:
        parsed = parse_order(args.order)
        problem = order_problem(parsed)
        if problem:
            raise ConfigError(f"--order {args.order}: {problem}")
        order = order_name(parsed)
    try:
        counts = tuple(sorted({int(k) for k in args.cluster_counts.split(",") if k.strip()}))
    except ValueError:
        raise ConfigError(f"--cluster-counts: must be integers separated by commas, got "
                          f"{args.cluster_counts!r}") from None
    if not counts or counts[0] < 2:
        raise ConfigError(f"--cluster-counts: each count must be >= 2, got "
                          f"{args.cluster_counts!r}")
    try:
        low, high = (float(v) for v in args.sparsity.split(":"))
    except ValueError:
        raise ConfigError(f"--sparsity: must be LOW:HIGH, got {args.sparsity!r}") from None
    if not 0 < low <= high < 1:
        raise ConfigError(f"--sparsity: must satisfy 0 < LOW <= HIGH < 1, got {args.sparsity!r}")
    return {"stages": stages, "order": order, "cluster_counts": counts,
            "cluster_methods": _names(args.cluster_methods, "--cluster-methods",
                                      CLUSTER_METHODS),
            "quant_modes": _names(args.quantize or DEFAULT_QUANTIZE, "--quantize",
                                  tuple(m for m in QUANT_MODES if m != "none")),
            "sparsity": (low, high)}


# The runtimes whose latency a profile predicts: it times layers as ONNX files in onnxruntime,
# or as the LiteRT files converted from them in LiteRT. (LiteRT for Microcontrollers runs on
# boards without Python.)
PROFILED_RUNTIMES = ("onnxruntime", "litert")


def profile_options(args: argparse.Namespace) -> ProfileOptions:
    """The options of ``optimize profile``, validated before anything is timed."""
    from edgeslim.evaluators.latency import available_cores
    from edgeslim.evaluators.profile_build import ProfileOptions
    from edgeslim.models import resolve_factory
    from edgeslim.runtimes import check_installed

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
