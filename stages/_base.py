"""What a compression stage is (``Stage``), and what it may read while it runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from edgeslim.compress.importance import Batches, Gradients
from edgeslim.compress.prune import KeptIndices
from edgeslim.errors import ConfigError

if TYPE_CHECKING:  # the space and the records import the stages, not the other way round
    import optuna

    from edgeslim.search.records import TrialRecord
    from edgeslim.spaces import Candidate, StagedSpace


@dataclass
class StageContext:
    """What a stage may read beyond the model and the candidate, and what it reports back."""

    seed: int = 0
    batches: Callable[[], Batches] | None = None  # labelled training batches, made on demand
    # The loss gradients of the model the stage receives, on those batches, when known: only
    # while it is still the base model (see ``StagedEvaluator.build``).
    gradients: Callable[[], Gradients] | None = None
    kept: dict[str, KeptIndices] = field(default_factory=dict)  # filled by pruning


class Stage(ABC):
    """One compression stage.

    Class attributes say where it may run: ``trained`` stages change the PyTorch model and a
    fine-tune follows each; a stage that is not trained works on the exported file, so it
    comes last. ``not_after`` names the stages it cannot follow, with the reason. ``packs``:
    the deployable artifact of a candidate that runs it is the packed file.

    Methods, by concern (``space`` is the ``StagedSpace`` holding the stage's settings;
    ``runs`` says whether the candidate's order runs the stage):

    - search: ``check`` the space's settings, ``suggest`` a trial's candidate fields, and
      ``params_for`` (the parameters that give back a candidate's fields);
    - model: ``apply`` (and ``apply_structure``, as cheaply as the static limits allow),
      then the layers the following fine-tunes keep ``masked`` or ``clustered``;
    - ``key``: its part of the build key (equal keys build the same model);
    - ``extreme``: its fields at the space's least and most compression (for the plan);
    - ``card``: its section of the model card;
    - ``label``: its short name in tables.
    """

    name: ClassVar[str]
    short: ClassVar[str]
    trained: ClassVar[bool] = True
    packs: ClassVar[bool] = False
    not_after: ClassVar[dict[str, str]] = {}

    def check(self, space: StagedSpace) -> None:
        """Raises ConfigError for settings of ``space`` this stage cannot search."""

    @abstractmethod
    def suggest(self, space: StagedSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """The candidate's fields for this stage, sampled from ``trial``."""

    @abstractmethod
    def params_for(self, space: StagedSpace, candidate: Candidate) -> dict[str, Any]:
        """The trial parameters that make ``suggest`` return ``candidate``'s fields.

        Raises:
            ConfigError: for a setting the space does not offer.
        """

    @abstractmethod
    def key(self, space: StagedSpace, candidate: Candidate, runs: bool) -> dict[str, Any]:
        """This stage's part of the build key."""

    def extreme(self, space: StagedSpace, most: bool) -> dict[str, Any]:
        """The candidate fields of this stage at the space's most compressed setting
        (``most``) or its least compressed one; none by default."""
        return {}

    def card(self, record: TrialRecord, candidate: Candidate, space: dict[str, Any],
             runs: bool) -> dict[str, Any]:
        """This stage's section of the card's ``compression`` (``space``: the study's space
        description); nothing by default when the order does not run it."""
        return {}

    def label(self, mode: str) -> str:
        """Its name in narrow tables, for a candidate quantized with ``mode``."""
        return self.short

    def legend(self) -> str:
        return f"{self.short} {self.name}"

    def apply(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
              seed: int = 0, context: StageContext | None = None) -> dict[str, Any]:
        """Changes ``model`` in place; returns facts for the trial's user attributes. A stage
        that is not trained changes nothing here (it runs on the exported file)."""
        return {}

    def apply_structure(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
                        seed: int = 0) -> dict[str, Any]:
        """What the stage changes in the deployed file's size, memory and latency, as cheaply
        as that can be had (the limits checked before training look at this); by default the
        stage itself."""
        return self.apply(model, candidate, example, seed)

    def masked(self, model: nn.Module, candidate: Candidate) -> set[str]:
        """Layers whose zeros must stay zero from now on."""
        return set()

    def clustered(self, model: nn.Module, candidate: Candidate) -> set[str]:
        """Layers whose weights must stay tied to their shared values from now on."""
        return set()


def offered(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value``, or a ConfigError when the space does not search it."""
    if value not in choices:
        raise ConfigError(f"{what} {value!r} is not among the searched ones "
                          f"({', '.join(choices)})")
    return value
