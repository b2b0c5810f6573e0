"""``prune``: removes whole channels (torch-pruning's dependency groups).

Parameters: ``prune/<group>`` (the fraction of a group's channels removed) and
``prune/importance`` (how channels are ranked), sampled by the space's ``PruningSpace``.
Records ``channels/<group>``: the channels kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgeslim.compress import apply_pruning
from edgeslim.compress.importance import UNRANKED, criterion
from edgeslim.search.records import CHANNELS_PREFIX
from edgeslim.stages._base import Stage, StageContext

if TYPE_CHECKING:
    import optuna

    from edgeslim.search.records import TrialRecord
    from edgeslim.spaces import Candidate, StagedSpace


class PruneStage(Stage):
    """Removes channels (torch-pruning); ``channels/<group>`` records the channels kept."""

    name = "prune"
    short = "P"

    def suggest(self, space: StagedSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        ratios, importance = space.pruning.suggest(trial)
        return {"prune_ratios": ratios, "importance": importance}

    def params_for(self, space: StagedSpace, candidate: Candidate) -> dict[str, Any]:
        return space.pruning.params_for(candidate)

    def key(self, space: StagedSpace, candidate: Candidate, runs: bool) -> dict[str, Any]:
        """The channels each group keeps; the criterion only when it removed any."""
        kept = space.pruning.kept(candidate) if runs else ()
        pruned = any(k < g.channels for k, g in zip(kept, space.pruning.groups))
        return {"channels": list(kept), "importance": candidate.importance if pruned else None}

    def extreme(self, space: StagedSpace, most: bool) -> dict[str, Any]:
        """Every group at ``max_ratio``, or none pruned."""
        ratio = space.pruning.max_ratio if most else 0.0
        return {"prune_ratios": tuple((g.name, space.pruning.on_grid(ratio))
                                      for g in space.pruning.groups)}

    def card(self, record: TrialRecord, candidate: Candidate, space: dict[str, Any],
             runs: bool) -> dict[str, Any]:
        if not runs:
            return {}
        return {"channels": record.channels,
                "base_channels": {g["name"]: g["channels"] for g in space["groups"]}}

    def apply(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
              seed: int = 0, context: StageContext | None = None) -> dict[str, Any]:
        context = context or StageContext(seed)
        batches = gradients = None
        crit = criterion(candidate.importance)
        if crit.needs_gradients and context.gradients is not None and not crit.per_sample:
            gradients = context.gradients()
        elif crit.needs_gradients:
            if context.batches is None:
                raise ValueError(f"importance {candidate.importance!r} needs training batches")
            batches = context.batches()
        kept = apply_pruning(model, example, candidate.ratios, candidate.importance,
                             candidate.round_to, batches=batches, kept_indices=context.kept,
                             gradients=gradients)
        return {CHANNELS_PREFIX + name: n for name, n in kept.items()}

    def apply_structure(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
                        seed: int = 0) -> dict[str, Any]:
        """The same channel counts; a criterion that reads gradients is replaced by no
        ranking (it would need training images), since which channels go does not change the
        file's size, memory or latency."""
        importance = UNRANKED if criterion(candidate.importance).needs_gradients \
            else candidate.importance
        kept = apply_pruning(model, example, candidate.ratios, importance, candidate.round_to)
        return {CHANNELS_PREFIX + name: n for name, n in kept.items()}
