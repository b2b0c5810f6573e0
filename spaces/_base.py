"""What a search space is: a pure function from an Optuna trial to a frozen Candidate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import optuna

from edgeslim.stages import STAGES, order_name


@dataclass(frozen=True)
class Candidate:
    """A compression recipe for the base model, before it is applied.

    ``order`` lists the stages in the order they run (see ``edgeslim.stages``); the
    other fields configure the stages the order names and keep their defaults otherwise:

    - prune: ``prune_ratios`` pairs a dependency group's root layer with the fraction of its
      channels to remove (snapped to multiples of ``round_to``); ``importance`` ranks channels.
    - sparsify: ``sparsity`` is the fraction of each layer's weights set to zero.
    - cluster: ``cluster_counts`` pairs a layer with its number of shared values;
      ``cluster_method`` builds the codebooks.
    - quantize: ``quantize`` is the mode (``int8_static``, ``int8_dynamic``, ``fp16``);
      ``none`` when the order has no quantize stage.
    """

    order: tuple[str, ...] = ("prune",)
    prune_ratios: tuple[tuple[str, float], ...] = ()
    importance: str = "l2"
    round_to: int = 8
    sparsity: float = 0.0
    cluster_counts: tuple[tuple[str, int], ...] = ()
    cluster_method: str = "kmeans"
    quantize: str = "none"

    @property
    def ratios(self) -> dict[str, float]:
        return dict(self.prune_ratios)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.cluster_counts)

    @property
    def order_name(self) -> str:
        return order_name(self.order)

    @property
    def packed(self) -> bool:
        """Whether the deployable artifact is a packed file (clustered or sparse weights)."""
        return any(STAGES[name].packs for name in self.order)

    def to_dict(self) -> dict[str, Any]:
        return {"order": list(self.order), "prune_ratios": dict(self.prune_ratios),
                "importance": self.importance, "round_to": self.round_to,
                "sparsity": self.sparsity, "cluster_counts": dict(self.cluster_counts),
                "cluster_method": self.cluster_method, "quantize": self.quantize}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Candidate:
        return cls(order=tuple(raw.get("order", ("prune",))),
                   prune_ratios=tuple((str(k), float(v)) for k, v in raw["prune_ratios"].items()),
                   importance=str(raw["importance"]), round_to=int(raw["round_to"]),
                   sparsity=float(raw.get("sparsity", 0.0)),
                   cluster_counts=tuple((str(k), int(v)) for k, v in
                                        raw.get("cluster_counts", {}).items()),
                   cluster_method=str(raw.get("cluster_method", "kmeans")),
                   quantize=str(raw.get("quantize", "none")))


@runtime_checkable
class Space(Protocol):
    """Maps a trial to a Candidate by calling ``trial.suggest_*``; must not touch models.

    Works with ``optuna.trial.FixedTrial`` so that a space can be tested without a study.
    """

    def __call__(self, trial: optuna.trial.BaseTrial) -> Candidate: ...

    def params_for(self, candidate: Candidate) -> dict[str, Any]:
        """The trial parameters that make the space return ``candidate`` (for enqueueing)."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, stored on the study."""
        ...
