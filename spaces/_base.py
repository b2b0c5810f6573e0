"""What a search space is: a pure function from an Optuna trial to a frozen Candidate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import optuna


@dataclass(frozen=True)
class Candidate:
    """A compression recipe for the base model, before it is applied.

    ``prune_ratios`` pairs a dependency group's root layer with the fraction of its channels to
    remove (snapped to multiples of ``round_to`` when applied); ``importance`` ranks channels.
    """

    prune_ratios: tuple[tuple[str, float], ...] = ()
    importance: str = "l2"
    round_to: int = 8
    tags: tuple[str, ...] = field(default=(), compare=False)  # e.g. ("reference",)

    @property
    def ratios(self) -> dict[str, float]:
        return dict(self.prune_ratios)

    def to_dict(self) -> dict[str, Any]:
        return {"prune_ratios": dict(self.prune_ratios), "importance": self.importance,
                "round_to": self.round_to}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Candidate:
        return cls(prune_ratios=tuple((str(k), float(v)) for k, v in raw["prune_ratios"].items()),
                   importance=str(raw["importance"]), round_to=int(raw["round_to"]))


@runtime_checkable
class Space(Protocol):
    """Maps a trial to a Candidate by calling ``trial.suggest_*``; must not touch models.

    Works with ``optuna.trial.FixedTrial`` so that a space can be tested without a study.
    """

    def __call__(self, trial: optuna.trial.BaseTrial) -> Candidate: ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, stored on the study."""
        ...
