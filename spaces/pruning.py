"""Per-layer structured pruning ratios: one searched ratio per prunable dependency group."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch import nn

from edgeslim.compress.importance import CRITERIA, IMPORTANCES
from edgeslim.compress.prune import PrunableGroup, kept_channels
from edgeslim.compress.prune_check import PruningCheck, check_pruning
from edgeslim.defaults import MAX_RATIO
from edgeslim.errors import ConfigError
from edgeslim.spaces._base import Candidate

PARAM_PREFIX = "prune/"
IMPORTANCE_PARAM = "prune/importance"


@dataclass(frozen=True)
class PruningSpace:
    """One ratio per group, ``prune/<root layer>`` in ``[0, max_ratio]`` by ``step``, and the
    channel-importance criterion as ``prune/importance``.

    Example:
        >>> space = PruningSpace(groups=(PrunableGroup("conv1", 16, ("conv1",)),))
        >>> cand = space(optuna.trial.FixedTrial({"prune/conv1": 0.5, "prune/importance": "l1"}))
        >>> cand.prune_ratios, cand.importance
        ((('conv1', 0.5),), 'l1')
    """

    groups: tuple[PrunableGroup, ...]
    max_ratio: float = MAX_RATIO
    step: float = 0.05
    importances: tuple[str, ...] = IMPORTANCES
    round_to: int = 8
    # Modules torch-pruning cannot analyse, whose layers keep every channel, and the groups
    # not searched with the reason (``edgeslim.compress.prune_check``).
    untraced: tuple[str, ...] = ()
    left_out: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.max_ratio < 1.0:
            raise ConfigError(f"--max-ratio: must be > 0 and < 1, got {self.max_ratio}")
        if not 0.0 < self.step <= self.max_ratio:
            raise ConfigError(f"ratio step: must be > 0 and <= max ratio, got {self.step}")
        if self.round_to < 1:
            raise ConfigError(f"--round-to: must be >= 1 channel, got {self.round_to}")
        unknown = [i for i in self.importances if i not in CRITERIA]
        if unknown or not self.importances:
            raise ConfigError(f"--importance: must be among {', '.join(CRITERIA)}, "
                              f"got {', '.join(unknown) or 'none'}")

    @classmethod
    def from_model(cls, model: nn.Module, example_input: torch.Tensor, num_classes: int,
                   round_to: int = 8, seed: int = 0, **options: Any) -> PruningSpace:
        """The groups of ``model`` that prune without breaking it (checked on copies of it,
        ``check_pruning``); none when something was left out for a reason."""
        limits = {k: options[k] for k in ("max_ratio", "step") if k in options}
        found = check_pruning(model, example_input, num_classes, round_to, seed=seed, **limits)
        if not found.groups and not found.untraced and not found.left_out:
            raise ConfigError("the model has no layer with more than "
                              f"{round_to} output channels to prune")
        return cls(groups=found.groups, round_to=round_to, untraced=found.untraced,
                   left_out=found.left_out, **options)

    def not_pruned(self) -> str | None:
        """What of the model is not searched and why, on one line (None: everything is)."""
        return PruningCheck(self.groups, self.untraced, self.left_out).summary()

    def __call__(self, trial: optuna.trial.BaseTrial) -> Candidate:
        ratios, importance = self.suggest(trial)
        return Candidate(order=("prune",), prune_ratios=ratios, importance=importance,
                         round_to=self.round_to)

    def suggest(self, trial: optuna.trial.BaseTrial) -> tuple[tuple[tuple[str, float], ...],
                                                               str]:
        """The ratios and the importance criterion, as ``Candidate`` fields."""
        # Rounded: stepped floats come back as 0.15000000000000002.
        ratios = tuple(
            (g.name, round(trial.suggest_float(PARAM_PREFIX + g.name, 0.0, self.max_ratio,
                                               step=self.step), 10))
            for g in self.groups
        )
        importance = trial.suggest_categorical(IMPORTANCE_PARAM, list(self.importances))
        return ratios, str(importance)

    def params_for(self, candidate: Candidate) -> dict[str, Any]:
        """The trial parameters that make this space return ``candidate`` (for enqueueing).

        Raises:
            ConfigError: when the candidate ranks channels by a criterion the space does not
                offer (Optuna refuses a fixed parameter outside its choices).
        """
        if candidate.importance not in self.importances:
            raise ConfigError(f"importance {candidate.importance!r} is not among the searched "
                              f"ones ({', '.join(self.importances)})")
        ratios = candidate.ratios
        params: dict[str, Any] = {
            PARAM_PREFIX + g.name: self.on_grid(ratios.get(g.name, 0.0)) for g in self.groups
        }
        params[IMPORTANCE_PARAM] = candidate.importance
        return params

    def on_grid(self, ratio: float, up: bool = False) -> float:
        """``ratio`` clipped to ``[0, max_ratio]`` and put on the grid: the nearest point, or
        with ``up`` the next one at or above it."""
        scaled = min(max(ratio, 0.0), self.max_ratio) / self.step
        steps = math.ceil(scaled - 1e-9) if up else round(scaled)
        return round(min(steps * self.step, self.max_ratio), 10)

    def kept(self, candidate: Candidate) -> tuple[int, ...]:
        """The output channels each group keeps under ``candidate`` (``kept_channels``): ratios
        that snap to the same multiple of ``round_to`` build the same model."""
        ratios = candidate.ratios
        return tuple(kept_channels(g.channels, ratios.get(g.name, 0.0), candidate.round_to)
                     for g in self.groups)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "pruning",
            "groups": [{"name": g.name, "channels": g.channels, "layers": list(g.layers)}
                       for g in self.groups],
            "max_ratio": self.max_ratio,
            "step": self.step,
            "importances": list(self.importances),
            "round_to": self.round_to,
            "untraced": list(self.untraced),
            "left_out": dict(self.left_out),
        }

