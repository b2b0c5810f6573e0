"""``sparsify``: zeros the smallest weights of every convolution and linear layer.

Parameter: ``sparsify/ratio``, the fraction of each layer's weights set to zero. The zeros
shrink the packed file only: runtimes compute with dense kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgeslim.compress import sparsify, weight_layers
from edgeslim.errors import ConfigError
from edgeslim.stages._base import Stage, StageContext

if TYPE_CHECKING:
    import optuna

    from edgeslim.search.records import TrialRecord
    from edgeslim.spaces import Candidate, StagedSpace

SPARSITY_PARAM = "sparsify/ratio"
SPARSITY_NOTE = ("unstructured sparsity shrinks the stored file only: the runtime computes "
                 "with dense kernels, so MACs and latency are those of the dense model")


class SparsifyStage(Stage):
    """Zeros the smallest weights of every convolution and linear layer."""

    name = "sparsify"
    short = "S"
    packs = True
    not_after = {"cluster": "its zeros would add a value to every codebook"}

    def check(self, space: StagedSpace) -> None:
        if not 0.0 < space.sparsity_low <= space.sparsity_high < 1.0:
            raise ConfigError(f"--sparsity: must be a range within (0, 1), got "
                              f"{space.sparsity_low}..{space.sparsity_high}")

    def suggest(self, space: StagedSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        return {"sparsity": round(trial.suggest_float(
            SPARSITY_PARAM, space.sparsity_low, space.sparsity_high, step=space.sparsity_step),
            10)}

    def params_for(self, space: StagedSpace, candidate: Candidate) -> dict[str, Any]:
        """The sampled ratio nearest ``candidate.sparsity``, on the space's grid."""
        steps = round((candidate.sparsity - space.sparsity_low) / space.sparsity_step)
        return {SPARSITY_PARAM: round(min(max(
            space.sparsity_low + steps * space.sparsity_step, space.sparsity_low),
            space.sparsity_high), 10)}

    def key(self, space: StagedSpace, candidate: Candidate, runs: bool) -> dict[str, Any]:
        return {"sparsity": candidate.sparsity if runs else None}

    def extreme(self, space: StagedSpace, most: bool) -> dict[str, Any]:
        return {"sparsity": space.sparsity_high if most else space.sparsity_low}

    def card(self, record: TrialRecord, candidate: Candidate, space: dict[str, Any],
             runs: bool) -> dict[str, Any]:
        if not runs:
            return {}
        return {"weight_sparsity": record.measure("weight_sparsity"),
                "sparsity_note": SPARSITY_NOTE}

    def apply(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
              seed: int = 0, context: StageContext | None = None) -> dict[str, Any]:
        sparsify(model, candidate.sparsity)
        return {}

    def masked(self, model: nn.Module, candidate: Candidate) -> set[str]:
        return set(weight_layers(model))
