"""What a search needs before its study: data, search space, base model and its measures,
the budget's caps. Everything the user can get wrong is checked here, before training."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from edgeslim.basemodel import BaseModel, obtain_base_model
from edgeslim.budget import Budget, Runtime
from edgeslim.compress import weight_layers
from edgeslim.data import DataBundle, cache_writes_held, load_dataset
from edgeslim.errors import CandidateError, ConfigError, ModelError
from edgeslim.evaluators import MODEL_MEASURES, Caps, measure_onnx_file, onnx_accuracy
from edgeslim.evaluators.litert import litert_accuracy, measure_litert_file
from edgeslim.evaluators.meters import LatencyMeter, make_meter
from edgeslim.export import write_onnx
from edgeslim.litert import onnx_to_tflite
from edgeslim.models import build_model, load_checkpoint
from edgeslim.models.check import check_model
from edgeslim.present._progress import _Progress
from edgeslim.runtimes import runtime_info
from edgeslim.search.config import SearchConfig, SpaceOptions
from edgeslim.search.records import ACCURACY
from edgeslim.search.repair import STRUCTURAL
from edgeslim.search.screening import structural_caps
from edgeslim.spaces import PruningSpace, StagedSpace, WeightLayer
from edgeslim.stages import parse_order


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
    ONNX (and converted to a float32 LiteRT file with a LiteRT runtime) and measured on that
    file in the budget's runtime (size, peak memory, validation accuracy, and latency when the
    budget asks for it). Its test accuracy, which no limit or objective reads, is taken for
    the card at export (``base_test_accuracy``)."""
    example = torch.zeros(1, *data.input_shape)
    values = {name: float(m(base.model, example).value) for name, m in MODEL_MEASURES.items()}
    try:
        path, tflite = _base_files(base.model, example, budget.runtime.name, out_dir)
        if tflite is not None:
            measured, _ = measure_litert_file(tflite, path, data, budget.runtime, data.val,
                                              latency=budget.asks_for("latency_ms"),
                                              meter=meter)
        else:
            measured, _ = measure_onnx_file(path, data, budget.runtime, data.val, meter=meter,
                                            latency=budget.asks_for("latency_ms"))
    except CandidateError as exc:  # every candidate would fail the same way
        raise ModelError(f"the base model cannot be deployed: {exc}; every candidate is "
                         f"measured in {budget.runtime.name}") from None
    values.update(measured)
    return values


def base_test_accuracy(model: torch.nn.Module, data: DataBundle, runtime: Runtime,
                       out_dir: Path) -> float | None:
    """The base model's accuracy on the test split, run as ``measure_base`` runs it (its ONNX
    file, or the LiteRT file made from it, in ``runtime``); None without a test split."""
    if data.test is None:
        return None
    path, tflite = _base_files(model, torch.zeros(1, *data.input_shape), runtime.name, out_dir)
    if tflite is not None:
        return litert_accuracy(tflite, data.test, data, runtime.name, runtime.threads)
    return onnx_accuracy(path, data.test, data, threads=torch.get_num_threads())


def _base_files(model: torch.nn.Module, example: torch.Tensor, runtime: str, out_dir: Path,
                ) -> tuple[Path, Path | None]:
    path = write_onnx(model, example, out_dir / "base.onnx")
    litert = runtime_info(runtime).litert
    return path, onnx_to_tflite(path, out_dir / "base.tflite") if litert else None


def load_inputs(config: SearchConfig) -> tuple[DataBundle, StagedSpace]:
    """The data and the search space. The space needs only the architecture, so a bad stage
    option fails here, before the storage is opened or anything is trained."""
    with cache_writes_held():
        data = load_dataset(config.dataset, config.data_dir, config.cache_dir / "data",
                            config.seed)
        if config.checkpoint is not None:
            # Its keys and shapes depend on the data's channels and classes; a checkpoint for
            # another model leaves the decoded data uncached, so the command writes nothing.
            load_checkpoint(build_model(config.model, data.in_channels, data.num_classes),
                            config.checkpoint, config.model)
    model = build_model(config.model, data.in_channels, data.num_classes)
    # Seconds: a model that does not fit the data, train, export, or whose training step
    # does not fit in memory, is refused before training.
    check_model(model, config.model, data.name, tuple(data.input_shape), data.num_classes,
                train_batch=training_batch(config, len(data.train)), processes=config.workers)
    space = build_space(config, model, data)
    # Params and MACs need no trained weights: a budget only pruning can meet is checked
    # against the stages now, before a base model is trained.
    example = torch.zeros(1, *data.input_shape)
    counted = {m: float(MODEL_MEASURES[m](model, example).value) for m in STRUCTURAL}
    limits = {lim.measure: lim.resolve(counted[lim.measure]) for lim in config.budget.limits
              if lim.measure in STRUCTURAL}
    return data, feasible_orders(space, Caps(limits=limits), counted)


def training_batch(config: SearchConfig, n_train: int) -> int:
    """The largest batch any of the run's trainings takes (the base model's, unless loaded
    from a checkpoint; the fine-tunes'; the finalists')."""
    recipes = [config.finetune, config.final or config.finetune]
    if config.checkpoint is None:
        recipes.append(config.base_recipe)
    return max(min(r.batch_size, r.subset_size(n_train)) for r in recipes)


def latency_meter(config: SearchConfig, data: DataBundle) -> LatencyMeter:
    """The budget's latency source for the search (``checked_meter``)."""
    return checked_meter(config.budget, config.model, data, config.space, config.cache_dir)


def checked_meter(budget: Budget, model: str, data: DataBundle, opts: SpaceOptions,
                  cache_dir: Path) -> LatencyMeter:
    """``budget``'s latency source, checked against a search of ``model`` on ``data`` with
    the space ``opts`` before anything is trained: a profile must have been made for this
    runtime, model, input, threads, channel grid and quantization modes; an ssh device must
    answer and have edgeslim installed."""
    meter = make_meter(budget.latency, budget.runtime, cache_dir)
    if budget.latency.source == "profile":
        modes = ("none", *opts.quant_modes) if "quantize" in opts.stages else ("none",)
        meter.profile.check(budget.runtime.name, budget.runtime.threads, model,
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
    not_pruned = space.pruning.not_pruned()
    if not_pruned:
        console.print(f"pruning: {not_pruned}", soft_wrap=True)
    with _Progress(console) as progress:
        update: Callable[..., None] | None = None

        epochs = config.base_recipe.epochs

        def on_step(step: int, total: int) -> None:
            nonlocal update
            if update is None:
                update = progress.task("training the base model", total)
            epoch = min(epochs, math.ceil(step * epochs / total))
            update(completed=step, status=f"epoch {epoch:g}/{epochs:g}")

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
    """The search space for ``model``: its prunable groups and weight layers, and the options.
    When nothing of the model can be pruned (torch-pruning cannot analyse it), the stage
    orders are those of the other stages.

    Raises:
        ConfigError: when that leaves no stage to search.
    """
    opts = config.space
    example = torch.zeros(1, *data.input_shape)
    pruning = PruningSpace.from_model(model, example, data.num_classes, round_to=opts.round_to,
                                      max_ratio=opts.max_ratio, step=opts.step,
                                      importances=opts.importances, seed=config.seed)
    stages, order = opts.stages, opts.order
    if not pruning.groups:
        stages = tuple(s for s in stages if s != "prune")
        if order is not None:
            order = ",".join(s for s in parse_order(order) if s != "prune") or None
        if not stages or (opts.order is not None and order is None):
            raise ConfigError(f"nothing of {config.model!r} can be pruned "
                              f"({pruning.not_pruned()}), and no other stage is searched; "
                              "add cluster or quantize to --stages")
    layers = tuple(WeightLayer(name, m.weight.numel()) for name, m in weight_layers(model).items())
    return StagedSpace.for_stages(pruning, layers, stages=stages, order=order,
                                  cluster_counts=opts.cluster_counts,
                                  cluster_methods=opts.cluster_methods,
                                  quant_modes=opts.quant_modes, sparsity_low=opts.sparsity[0],
                                  sparsity_high=opts.sparsity[1])
