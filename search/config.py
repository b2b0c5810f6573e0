"""The typed configuration of a search, built once by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgeslim.budget import Budget
from edgeslim.compress import IMPORTANCES
from edgeslim.defaults import (
    CLUSTER_COUNTS,
    CLUSTER_METHODS,
    DATASET,
    MAX_RATIO,
    MODEL,
    ROUND_TO,
    SPARSITY,
    STAGES,
    TRIALS,
)
from edgeslim.recovery import Recovery
from edgeslim.search.storage import default_storage
from edgeslim.training import TrainRecipe

__all__ = ["DEFAULT_STAGES", "SamplerName", "SearchConfig", "SpaceOptions",
           "default_storage"]

SamplerName = Literal["tpe", "nsga2", "gp", "random"]


DEFAULT_STAGES = STAGES


@dataclass(frozen=True)
class SpaceOptions:
    """What the search space may choose from."""

    max_ratio: float = MAX_RATIO  # largest fraction of a group's channels that may be removed
    step: float = 0.05  # ratio grid
    importances: tuple[str, ...] = IMPORTANCES
    round_to: int = ROUND_TO  # kept channel counts are multiples of this
    stages: tuple[str, ...] = DEFAULT_STAGES  # the search tries every buildable order of these
    order: str | None = None  # one fixed order instead, e.g. "prune>cluster>quantize"
    cluster_counts: tuple[int, ...] = CLUSTER_COUNTS  # shared values per layer
    cluster_methods: tuple[str, ...] = CLUSTER_METHODS
    quant_modes: tuple[str, ...] = ("int8_static", "int8_dynamic", "fp16")
    sparsity: tuple[float, float] = SPARSITY  # range of the unstructured sparsity searched


@dataclass(frozen=True)
class SearchConfig:
    budget: Budget
    model: str = MODEL
    dataset: str = DATASET
    data_dir: Path = Path("data")
    checkpoint: Path | None = None
    trials: int = TRIALS  # finished trials (complete or failed) the study should hold
    study_name: str | None = None  # default: "<model>-<dataset>-<budget>"
    storage: str | None = None  # any Optuna storage URL; default: a journal file in ``workdir``
    workdir: Path = Path("edgeslim-runs")
    seed: int = 0
    sampler: SamplerName = "gp"
    base_recipe: TrainRecipe = field(default_factory=TrainRecipe)
    finetune: TrainRecipe = field(default_factory=TrainRecipe.finetune)
    space: SpaceOptions = field(default_factory=SpaceOptions)
    references: bool = True  # enqueue the presets the space can sample as reference trials
    preset: str | None = None  # run this one preset instead of searching
    repair: bool = True  # move candidates over a static limit to the nearest that fits
    workers: int = 1  # processes on this machine running trials of the study at once
    finalists: int = 0  # Pareto trials fine-tuned again with ``final`` once the search is done
    final: TrainRecipe | None = None  # the finalists' long fine-tune (default: ``finetune``)
    screen: int = 0  # allocations ranked by recalibrated accuracy before fine-tuning (0: off)
    recovery: Recovery = field(default_factory=Recovery)  # between each stage and its fine-tune
    # A study of the same storage, searched for another budget, whose trials a new study
    # starts from (``edgeslim.search.warmstart``).
    resume_from: str | None = None

    @property
    def name(self) -> str:
        if self.study_name:
            return self.study_name
        parts = [self.model, self.dataset, self.budget.name]
        if self.preset:
            parts.append(self.preset)
        return "-".join(s.replace(":", "_").replace("/", "_") for s in parts)

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage(self.workdir)

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"
