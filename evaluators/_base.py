"""What an evaluator is: it applies a Candidate to a copy of the base model, trains, measures."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeslim.spaces import Candidate

# Measures whose value is fixed by the candidate's structure, so their limits are checked
# before any training (latency too: the artifact's graph does not change when weights train).
STATIC_MEASURES = ("params", "macs", "size_bytes", "peak_memory_bytes", "activation_bytes",
                   "latency_ms")
# Every measure a Measurement may carry, with its unit, as shown in tables and cards.
UNITS = {
    "val_acc": "fraction",
    "test_acc": "fraction",
    "params": "count",
    "macs": "count",
    "size_bytes": "bytes",
    "peak_memory_bytes": "bytes",
    "activation_bytes": "bytes",  # peak live activations alone (RAM when weights stay in flash)
    "latency_ms": "ms",
}


@dataclass(frozen=True)
class Caps:
    """Absolute limits, resolved from the budget against the base model's measures."""

    limits: dict[str, float] = field(default_factory=dict)  # measure -> largest allowed value
    min_val_acc: float | None = None  # smallest allowed val_acc (fraction)

    def violations(self, values: dict[str, float], measures: tuple[str, ...]) -> list[str]:
        """Human-readable reasons why ``values`` break the limits among ``measures``."""
        out = []
        for name in measures:
            cap = self.limits.get(name)
            if cap is not None and name in values and values[name] > cap:
                out.append(f"{name} {values[name]:.6g} > {cap:.6g}")
        return out

    def verdicts(self, values: dict[str, float]) -> dict[str, dict[str, Any]]:
        """Pass or fail per limit: ``{measure: {"limit", "value", "pass"}}``, the accuracy
        drop under ``accuracy_drop`` (its limit the smallest allowed ``val_acc``). A measure
        missing from ``values`` fails, with value None."""
        out: dict[str, dict[str, Any]] = {
            name: {"limit": cap, "value": values.get(name),
                   "pass": name in values and values[name] <= cap}
            for name, cap in self.limits.items()}
        if self.min_val_acc is not None:
            acc = values.get("val_acc")
            out["accuracy_drop"] = {"limit": self.min_val_acc, "value": acc,
                                    "pass": acc is not None and acc >= self.min_val_acc}
        return out

    def constraints(self, values: dict[str, float]) -> dict[str, float]:
        """Optuna constraint values (feasible when <= 0): ``value / cap - 1`` per limited
        measure, ``(min_acc - acc) / min_acc`` for the accuracy drop."""
        out = {name: values[name] / cap - 1.0 for name, cap in self.limits.items()
               if name in values}
        if self.min_val_acc is not None and "val_acc" in values:
            out["val_acc"] = (self.min_val_acc - values["val_acc"]) / max(self.min_val_acc, 1e-9)
        return out


@dataclass(frozen=True)
class Measurement:
    """What an evaluator found for one candidate.

    ``values`` holds the measures (names as in ``UNITS``); ``info`` extra JSON-able facts for
    the trial's user attributes (channels kept per group, latency spread, throughput);
    ``artifacts`` files to keep with the trial; ``infeasible`` the reasons a candidate was not
    fine-tuned because a limit checkable before training was broken.
    """

    values: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    infeasible: tuple[str, ...] = ()

    @property
    def finetuned(self) -> bool:
        return not self.infeasible


class Evaluator(ABC):
    """Scores candidates. Implementations must leave the base model untouched and raise
    ``edgeslim.errors.CandidateError`` for a candidate that cannot be built or trained."""

    @abstractmethod
    def evaluate(self, candidate: Candidate, workdir: Path) -> Measurement:
        """Applies ``candidate``, trains, measures; files go under ``workdir``. The search
        has checked the limits checkable before training already."""

    @abstractmethod
    def static_values(self, candidate: Candidate, workdir: Path, accuracy: bool = False,
                      ) -> dict[str, float]:
        """The measures of ``candidate``'s untrained structure that the limits checked before
        training need, besides params and MACs (size, memory, latency), and its untrained
        validation accuracy with ``accuracy``; files go under ``workdir``."""
