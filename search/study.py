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

import json
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
from edgeslim.errors import CandidateError, StudyError
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
from edgeslim.models import build_model
from edgeslim.search.config import SearchConfig
from edgeslim.search.notes import annotate
from edgeslim.search.objective import ACCURACY, Objective, directions, is_feasible
from edgeslim.search.references import enqueue_references
from edgeslim.search.report import print_report
from edgeslim.search.storage import artifact_store, open_storage
from edgeslim.spaces import PruningSpace, StagedSpace, WeightLayer

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
            optuna.trial.TrialState.PRUNED)


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
    path = write_onnx(base.model, example, out_dir / "base.onnx")
    measured, _ = measure_onnx_file(path, data, budget.runtime, data.val, meter=meter)
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
    """TPE is multivariate and constraint-aware (Optuna 5 reads ``Trial.set_constraint``);
    NSGA-II reads the same constraints; random ignores them."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise StudyError(f"--sampler: must be one of tpe, nsga2, random, got {name!r}")


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
    data = load_dataset(config.dataset, config.data_dir, config.cache_dir / "data", config.seed)
    space = build_space(config, build_model(config.model, data.in_channels, data.num_classes),
                        data)
    return data, space


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
    return Prepared(data, base, base_values, caps, space)


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


def open_or_create_study(config: SearchConfig, prepared: Prepared) -> optuna.Study:
    """Creates the study, or resumes it when one of the same name exists with the same setup."""
    storage = open_storage(config.storage_url)
    identity = setup_identity(config, prepared.data)
    study = optuna.create_study(storage=storage, study_name=config.name,
                                directions=directions(config.budget.objectives),
                                sampler=make_sampler(config.sampler, config.seed),
                                load_if_exists=True)
    stored = study.user_attrs.get("setup")
    if stored is not None:
        if json.dumps(stored, sort_keys=True) != json.dumps(identity, sort_keys=True):
            changed = sorted(k for k in identity if stored.get(k) != identity[k])
            raise StudyError(f"study {config.name!r} in {config.storage_url} was created with a "
                             f"different {', '.join(changed)}; resume it with the same options "
                             "or pick a new --study-name")
        return study
    data = prepared.data
    attrs = {
        "setup": identity,
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
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    if config.references or config.preset:
        example = torch.zeros(1, *data.input_shape)
        names = [config.preset] if config.preset else None
        enqueued = enqueue_references(study, prepared.space, prepared.base.model, example,
                                      prepared.caps.limits, names, model_name=config.model)
        study.set_user_attr("references", enqueued)
    return study


def run_search(config: SearchConfig, console: Console | None = None) -> optuna.Study:
    """Runs (or resumes) the study until it holds ``config.trials`` finished trials, then prints
    the Pareto table. Candidates that fail are recorded as failed trials with their reason."""
    console = console or Console()
    inputs = load_inputs(config)
    meter = latency_meter(config, inputs[0])
    open_storage(config.storage_url)  # a bad URL fails before any training
    prepared = prepare(config, console, inputs, meter)
    study = open_or_create_study(config, prepared)
    evaluator = StagedEvaluator(prepared.base.model, prepared.data, config.finetune,
                                config.budget.runtime, prepared.caps, seed=config.seed,
                                meter=meter)
    objective = Objective(prepared.space, evaluator, prepared.caps, config.budget.objectives,
                          artifact_store(config.workdir), config.workdir / "trials")
    done = sum(t.state in FINISHED for t in study.trials)
    remaining = max(0, config.trials - done)
    console.print(f"study {study.study_name!r} in {config.storage_url}: {done} finished, "
                  f"{remaining} to run; {len(prepared.space.pruning.groups)} prunable groups, "
                  f"{len(prepared.space.layers)} weight layers, "
                  f"{len(prepared.space.orders)} stage orders")
    if remaining:
        with _Progress(console) as progress:
            update = progress.task("search", config.trials, done)
            refresh = _progress_callback(update)
            refresh(study, None)
            study.optimize(objective, n_trials=remaining, catch=(CandidateError,),
                           callbacks=[refresh], gc_after_trial=True)
    annotate(study, config.storage_url)  # the study's note in optuna-dashboard
    print_report(study, console)
    return study


def _progress_callback(update: Callable[..., None]) -> Callable[..., None]:
    def refresh(study: optuna.Study, _trial: optuna.trial.FrozenTrial | None) -> None:
        trials = study.get_trials(deepcopy=False)
        feasible = [t.values[0] for t in trials if is_feasible(t)
                    and t.user_attrs.get("finetuned")]
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
        update(completed=sum(t.state in FINISHED for t in trials),
               status=f"best feasible {_fmt_acc(max(feasible) if feasible else None)}"
                      + (f", {failed} failed" if failed else ""))

    return refresh
