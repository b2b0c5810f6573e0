"""Running a search: prepare the base model once, then let an Optuna study sample candidates.

Everything the export and the reports need later is stored on the study itself (user
attributes), so a study can be exported, shown or resumed from its storage alone:

``setup``     what defines the search; a resumed run must match it
``budget``    the budget as parsed; ``caps`` its limits resolved against the base model
``base``      the base model's measures (validation and test accuracy, params, MACs, ...)
``data``      dataset name, input shape, mean/std, class names (the card's preprocessing)
``space``     the search space's description (groups, their channels, the ratio grid)
``paths``     where the artifacts, the data and the base weights live
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgeslim import __version__
from edgeslim.basemodel import BaseModel, obtain_base_model
from edgeslim.budget import Budget
from edgeslim.compress import weight_layers
from edgeslim.data import DataBundle, load_dataset
from edgeslim.errors import CandidateError, ConfigError, ModelError, StudyError
from edgeslim.evaluators import (
    MODEL_MEASURES,
    Caps,
    StagedEvaluator,
    measure_onnx_file,
    onnx_accuracy,
)
from edgeslim.evaluators.latency import available_cores
from edgeslim.evaluators.meters import LatencyMeter, make_meter
from edgeslim.export import write_onnx
from edgeslim.models import build_model, load_checkpoint
from edgeslim.search.config import SearchConfig
from edgeslim.search.notes import annotate
from edgeslim.search.objective import ACCURACY, Objective, directions, is_feasible
from edgeslim.search.references import enqueue_references
from edgeslim.search.repair import STRUCTURAL, StaticCheck
from edgeslim.search.report import print_report
from edgeslim.search.screening import (
    ScreenObjective,
    enqueue_screened,
    run_screening,
    screen_study,
    structural_caps,
)
from edgeslim.search.storage import (
    artifact_store,
    check_storage_url,
    open_storage,
    recover_interrupted,
)
from edgeslim.search.workers import counted, run_finalists, run_trials, spawn_workers
from edgeslim.spaces import Candidate, PruningSpace, StagedSpace, WeightLayer
from edgeslim.training import TrainRecipe


@dataclass(frozen=True)
class Prepared:
    """The inputs of a search, built once per run."""

    data: DataBundle
    base: BaseModel
    base_values: dict[str, float]
    caps: Caps
    space: StagedSpace


def resolve_caps(budget: Budget, base_values: dict[str, float]) -> Caps:
    """Absolute caps: relative limits become fractions of the base's measures, and the
    accuracy drop (percentage points) becomes a minimum validation accuracy."""
    limits = {lim.measure: lim.resolve(base_values[lim.measure]) for lim in budget.limits}
    min_acc = None
    if budget.accuracy_drop_points is not None:
        min_acc = base_values[ACCURACY] - budget.accuracy_drop_points / 100.0
    return Caps(limits=limits, min_val_acc=min_acc)


def measure_base(base: BaseModel, data: DataBundle, budget: Budget, out_dir: Path,
                 meter: LatencyMeter | None = None) -> dict[str, float]:
    """The base model measured exactly like a candidate: counted in PyTorch, then exported to
    ONNX and measured on that file (size, peak memory, latency, validation and test accuracy)."""
    example = torch.zeros(1, *data.input_shape)
    values = {name: float(m(base.model, example).value) for name, m in MODEL_MEASURES.items()}
    try:
        path = write_onnx(base.model, example, out_dir / "base.onnx")
        measured, _ = measure_onnx_file(path, data, budget.runtime, data.val, meter=meter)
    except CandidateError as exc:  # every candidate would fail the same way
        raise ModelError(f"the base model cannot be deployed: {exc}; every candidate is "
                         "measured as an ONNX file in onnxruntime") from None
    values.update(measured)
    if data.test is not None:
        values["test_acc"] = onnx_accuracy(path, data.test, data, threads=available_cores())
    return values


def setup_identity(config: SearchConfig, data: DataBundle) -> dict[str, Any]:
    """What must not change when a study is resumed."""
    return {
        "model": config.model,
        "dataset": config.dataset,
        "data_fingerprint": data.fingerprint,
        "checkpoint": str(config.checkpoint) if config.checkpoint else None,
        "budget": config.budget.to_dict(),
        "base_recipe": config.base_recipe.to_dict(),
        "finetune": config.finetune.to_dict(),
        "space": json.loads(json.dumps(asdict(config.space))),
        "seed": config.seed,
        "preset": config.preset,
    }


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of a study. TPE (the default) is multivariate and constraint-aware: Optuna 5
    reads ``Trial.set_constraint``, and so do NSGA-II and the Gaussian-process sampler (``gp``);
    random ignores the constraints. ``benchmarks/search_vs_rules.py`` compares them."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise StudyError(f"--sampler: must be one of tpe, nsga2, gp, random, got {name!r}")


def _fmt_acc(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


class _Progress:
    """A rich progress bar over the trials, showing the best feasible accuracy so far."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False)

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def task(self, description: str, total: int, done: int = 0) -> Callable[..., None]:
        task_id = self.progress.add_task(description, total=total, completed=done, status="")

        def update(**fields: Any) -> None:
            self.progress.update(task_id, **fields)

        return update


def load_inputs(config: SearchConfig) -> tuple[DataBundle, StagedSpace]:
    """The data and the search space. The space needs only the architecture, so a bad stage
    option fails here, before the storage is opened or anything is trained."""
    if config.checkpoint is not None:
        # Its keys and shapes depend on the data's channels and classes: checked on data
        # decoded without its cache, so that a checkpoint for another model writes nothing.
        bare = load_dataset(config.dataset, config.data_dir, None, config.seed)
        load_checkpoint(build_model(config.model, bare.in_channels, bare.num_classes),
                        config.checkpoint, config.model)
    data = load_dataset(config.dataset, config.data_dir, config.cache_dir / "data", config.seed)
    model = build_model(config.model, data.in_channels, data.num_classes)
    space = build_space(config, model, data)
    # Params and MACs need no trained weights: a budget only pruning can meet is checked
    # against the stages now, before a base model is trained.
    example = torch.zeros(1, *data.input_shape)
    counted = {m: float(MODEL_MEASURES[m](model, example).value) for m in STRUCTURAL}
    limits = {lim.measure: lim.resolve(counted[lim.measure]) for lim in config.budget.limits
              if lim.measure in STRUCTURAL}
    return data, feasible_orders(space, Caps(limits=limits), counted)


def refuse_other_setup(config: SearchConfig, data: DataBundle) -> None:
    """Refuses to resume a stored study that was created with other options, before anything
    is trained (and creates no storage file to find out)."""
    url = config.storage_url
    if url.startswith("journal:") and not Path(url.removeprefix("journal:")).is_file():
        return
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return
    storage = open_storage(url)
    if config.name not in {s.study_name for s in optuna.get_all_study_summaries(
            storage, include_best_trial=False)}:
        return
    stored = optuna.load_study(study_name=config.name, storage=storage).user_attrs.get("setup")
    if stored is not None:
        _same_setup(config, stored, setup_identity(config, data))


def _same_setup(config: SearchConfig, stored: dict[str, Any], identity: dict[str, Any]) -> None:
    if json.dumps(stored, sort_keys=True) != json.dumps(identity, sort_keys=True):
        changed = sorted(k for k in identity if stored.get(k) != identity[k])
        raise StudyError(f"study {config.name!r} in {config.storage_url} was created with a "
                         f"different {', '.join(changed)}; resume it with the same options "
                         "or pick a new --study-name")


def latency_meter(config: SearchConfig, data: DataBundle) -> LatencyMeter:
    """The budget's latency source, checked against the search before anything is trained: a
    profile must have been made for this runtime, model, input, threads, channel grid and
    quantization modes; an ssh device must answer and have edgeslim installed."""
    budget = config.budget
    meter = make_meter(budget.latency, budget.runtime, config.cache_dir)
    if budget.latency.source == "profile":
        opts = config.space
        modes = ("none", *opts.quant_modes) if "quantize" in opts.stages else ("none",)
        meter.profile.check(budget.runtime.name, budget.runtime.threads, config.model,
                            tuple(data.input_shape), data.num_classes, opts.round_to,
                            opts.max_ratio, modes)
    elif budget.latency.source == "ssh":
        meter.check()
    return meter


def prepare(config: SearchConfig, console: Console,
            inputs: tuple[DataBundle, StagedSpace] | None = None,
            meter: LatencyMeter | None = None) -> Prepared:
    """Loads the data and builds the search space (unless ``inputs`` holds them), obtains the
    base model (trained and cached when no checkpoint is given), measures it, and resolves the
    budget's caps."""
    data, space = inputs or load_inputs(config)
    console.print(f"data: {data.name}, {len(data.train)} train / {len(data.val)} val"
                  + (f" / {len(data.test)} test" if data.test is not None else "")
                  + f" images of shape {tuple(data.input_shape)}, {data.num_classes} classes")
    with _Progress(console) as progress:
        update: Callable[..., None] | None = None

        def on_step(step: int, total: int) -> None:
            nonlocal update
            if update is None:
                update = progress.task("training the base model", total)
            update(completed=step)

        base = obtain_base_model(config.model, data, config.base_recipe, config.cache_dir / "base",
                                 config.checkpoint, on_step=on_step)
    origin = "trained" if base.trained_here else "loaded"
    console.print(f"base model: {config.model}, {origin} from {base.weights_path}")
    base_values = measure_base(base, data, config.budget, config.workdir / "base", meter)
    caps = resolve_caps(config.budget, base_values)
    return Prepared(data, base, base_values, caps, feasible_orders(space, caps, base_values))


def feasible_orders(space: StagedSpace, caps: Caps, base_values: dict[str, float],
                    ) -> StagedSpace:
    """``space`` without the stage orders that cannot meet the budget: when it caps params or
    MACs below the base model's, only pruning lowers them (clustering, sparsity and
    quantization keep every parameter and MAC), so orders without it are left out.

    Raises:
        ConfigError: when no order of the enabled stages prunes.
    """
    below = [m for m in structural_caps(caps.limits) if caps.limits[m] < base_values[m]]
    if not below:
        return space
    orders = tuple(o for o in space.orders if "prune" in o)
    if not orders:
        raise ConfigError(f"the budget caps {' and '.join(below)} below the base model's, "
                          "which only pruning can meet; add prune to --stages (or --order)")
    return dataclasses.replace(space, orders=orders)


def build_space(config: SearchConfig, model: torch.nn.Module, data: DataBundle) -> StagedSpace:
    """The search space for ``model``: its prunable groups and weight layers, and the options."""
    opts = config.space
    example = torch.zeros(1, *data.input_shape)
    pruning = PruningSpace.from_model(model, example, data.num_classes, round_to=opts.round_to,
                                      max_ratio=opts.max_ratio, step=opts.step,
                                      importances=opts.importances)
    layers = tuple(WeightLayer(name, m.weight.numel()) for name, m in weight_layers(model).items())
    return StagedSpace.for_stages(pruning, layers, stages=opts.stages, order=opts.order,
                                  cluster_counts=opts.cluster_counts,
                                  cluster_methods=opts.cluster_methods,
                                  quant_modes=opts.quant_modes, sparsity_low=opts.sparsity[0],
                                  sparsity_high=opts.sparsity[1])


def open_or_create_study(config: SearchConfig, prepared: Prepared,
                         check: StaticCheck | None = None) -> optuna.Study:
    """Creates the study, or resumes it when one of the same name exists with the same setup.
    A new study gets its reference trials (``check`` decides what fits the budget)."""
    storage = open_storage(config.storage_url)
    identity = setup_identity(config, prepared.data)
    study = optuna.create_study(storage=storage, study_name=config.name,
                                directions=directions(config.budget.objectives),
                                sampler=make_sampler(config.sampler, config.seed),
                                load_if_exists=True)
    stored = study.user_attrs.get("setup")
    if stored is not None:
        _same_setup(config, stored, identity)
        return study
    data = prepared.data
    attrs = {
        "budget": config.budget.to_dict(),
        "caps": {"limits": prepared.caps.limits, "min_val_acc": prepared.caps.min_val_acc},
        "base": prepared.base_values,
        "data": {"name": data.name, "input_shape": list(data.input_shape),
                 "mean": list(data.mean), "std": list(data.std),
                 "class_names": list(data.class_names)},
        "space": prepared.space.describe(),
        "objectives": [ACCURACY, *config.budget.objectives],
        "paths": {"workdir": str(config.workdir.resolve()),
                  "artifacts": str((config.workdir / "artifacts").resolve()),
                  "data_dir": str(Path(config.data_dir).resolve()),
                  "base_weights": str(prepared.base.weights_path.resolve())},
        "edgeslim_version": __version__,
    }
    if config.references or config.preset:
        example = torch.zeros(1, *data.input_shape)
        names = [config.preset] if config.preset else None
        enqueued = enqueue_references(study, prepared.space, prepared.base.model, example,
                                      prepared.caps.limits, names, model_name=config.model,
                                      check=check, limit=config.trials)
        attrs["references"] = enqueued
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    # Written last: a study without it was interrupted while being set up, and is set up again.
    study.set_user_attr("setup", identity)
    return study


def make_evaluators(config: SearchConfig, prepared: Prepared, meter: LatencyMeter,
                    ) -> tuple[StagedEvaluator, StagedEvaluator, StaticCheck]:
    """The search's evaluator (short fine-tune), the finalists' (long fine-tune), and the check
    of the limits that need no training, which measures untrained artifacts with the first."""
    def evaluator(recipe: TrainRecipe) -> StagedEvaluator:
        return StagedEvaluator(prepared.base.model, prepared.data, recipe,
                               config.budget.runtime, prepared.caps, seed=config.seed,
                               meter=meter)

    search, final = evaluator(config.finetune), evaluator(config.final or config.finetune)
    scratch = config.workdir / "trials"

    def artifact(candidate: Candidate) -> dict[str, float]:
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="static-", dir=scratch) as tmp:
            return search.static_values(candidate, Path(tmp))

    check = StaticCheck(prepared.base.model, torch.zeros(1, *prepared.data.input_shape),
                        prepared.caps.limits, artifact)
    return search, final, check


def run_search(config: SearchConfig, console: Console | None = None) -> optuna.Study:
    """Runs (or resumes) the study until it holds ``config.trials`` trials that were fine-tuned
    or failed, in ``config.workers`` processes; then fine-tunes the finalists with the long
    recipe and prints the Pareto table. Candidates that fail are recorded as failed trials
    with their reason; trials whose process died are failed and run again."""
    console = console or Console()
    check_storage_url(config.storage_url)  # a bad URL fails before any training
    inputs = load_inputs(config)
    refuse_other_setup(config, inputs[0])
    meter = latency_meter(config, inputs[0])
    prepared = prepare(config, console, inputs, meter)
    search, final, check = make_evaluators(config, prepared, meter)
    study = open_or_create_study(config, prepared, check)
    recover_interrupted(study, config.workdir)
    objective = Objective(prepared.space, search, prepared.caps, config.budget.objectives,
                          artifact_store(config.workdir), config.workdir / "trials",
                          check=check if config.repair else None, final_evaluator=final)
    done = counted(study.trials)
    remaining = max(0, config.trials - done)
    console.print(f"study {study.study_name!r} in {config.storage_url}: {done} finished, "
                  f"{remaining} to run" + (f" in {config.workers} processes"
                                           if config.workers > 1 and remaining else "")
                  + f"; {len(prepared.space.pruning.groups)} prunable groups, "
                  f"{len(prepared.space.layers)} weight layers, "
                  f"{len(prepared.space.orders)} stage orders")
    if remaining and config.screen:
        screen(config, prepared, check, study, remaining, console)
    if remaining:
        with _Progress(console) as progress:
            update = progress.task("search", config.trials, done)
            refresh = _progress_callback(update)
            with spawn_workers(config, config.workers - 1):
                run_trials(study, objective, config.trials, config.workdir, [refresh])
    if config.finalists:
        run_finalists(study, objective, config.finalists, config.workdir, console)
    annotate(study, config.storage_url)  # the study's note in optuna-dashboard
    print_report(study, console)
    return study


def screen(config: SearchConfig, prepared: Prepared, check: StaticCheck, study: optuna.Study,
           remaining: int, console: Console) -> None:
    """Ranks ``config.screen`` pruning allocations that meet the budget's params and MAC limits
    by their recalibrated accuracy, and enqueues the best as trials of ``study``
    (``edgeslim.search.screening``); nothing when the budget limits neither."""
    caps = structural_caps(prepared.caps.limits)
    if not caps or "prune" not in {s for o in prepared.space.orders for s in o}:
        console.print("screening skipped: the budget limits neither params nor MACs")
        return
    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    if remaining <= waiting:
        return  # the reference trials fill the count
    screening = screen_study(study, make_sampler(config.sampler, config.seed))
    objective = ScreenObjective(prepared.space, prepared.base.model, prepared.data,
                                check.with_limits(caps), config.seed)
    start = time.perf_counter()
    with _Progress(console) as progress:
        update = progress.task("screening", config.screen)
        ran = run_screening(screening, objective, config.screen,
                            lambda n: update(completed=n))
    enqueued = enqueue_screened(study, screening, prepared.space, remaining - waiting)
    console.print(f"screened {ran} allocations in {time.perf_counter() - start:.0f} s; the "
                  f"best {len(enqueued)} are fine-tuned first")


def worker_main(config: SearchConfig, threads: int) -> None:
    """One extra worker of ``run_search --workers N``: joins the study the first process set up
    and runs trials until the study holds its count. Nothing is printed but failures."""
    torch.set_num_threads(threads)
    console = Console(quiet=True)
    inputs = load_inputs(config)
    meter = latency_meter(config, inputs[0])
    prepared = prepare(config, console, inputs, meter)
    search, final, check = make_evaluators(config, prepared, meter)
    study = open_or_create_study(config, prepared, check)
    objective = Objective(prepared.space, search, prepared.caps, config.budget.objectives,
                          artifact_store(config.workdir), config.workdir / "trials",
                          check=check if config.repair else None, final_evaluator=final)
    run_trials(study, objective, config.trials, config.workdir)


def _progress_callback(update: Callable[..., None]) -> Callable[..., None]:
    def refresh(study: optuna.Study, _trial: optuna.trial.FrozenTrial | None) -> None:
        trials = study.get_trials(deepcopy=False)
        feasible = [t.values[0] for t in trials if is_feasible(t)
                    and t.user_attrs.get("finetuned")]
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
        update(completed=counted(trials),
               status=f"best feasible {_fmt_acc(max(feasible) if feasible else None)}"
                      + (f", {failed} failed" if failed else ""))

    return refresh
