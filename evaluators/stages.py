"""The stages that change a PyTorch model, each followed by a fine-tune (``*Stage`` family).

Quantization is not among them: it works on the exported ONNX file
(``edgeslim.compress.quantize``) and always runs last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from edgeslim.compress import (
    apply_pruning,
    cluster_weights,
    sparsify,
    spread_weights,
    weight_layers,
)
from edgeslim.compress.importance import UNRANKED, Batches, Gradients, criterion
from edgeslim.compress.prune import KeptIndices
from edgeslim.spaces import Candidate


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
    """Changes a model in place according to a candidate, and says which layers the following
    fine-tunes must keep constrained."""

    name: ClassVar[str]

    @abstractmethod
    def apply(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
              seed: int = 0, context: StageContext | None = None) -> dict[str, Any]:
        """Applies the stage; returns facts for the trial's user attributes."""

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


class PruneStage(Stage):
    """Removes channels (torch-pruning); ``channels/<group>`` records the channels kept."""

    name = "prune"

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
        return {f"channels/{name}": n for name, n in kept.items()}

    def apply_structure(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
                        seed: int = 0) -> dict[str, Any]:
        """The same channel counts; a criterion that reads gradients is replaced by no
        ranking (it would need training images), since which channels go does not change the
        file's size, memory or latency."""
        importance = UNRANKED if criterion(candidate.importance).needs_gradients \
            else candidate.importance
        kept = apply_pruning(model, example, candidate.ratios, importance, candidate.round_to)
        return {f"channels/{name}": n for name, n in kept.items()}


class SparsifyStage(Stage):
    """Zeros the smallest weights of every convolution and linear layer."""

    name = "sparsify"

    def apply(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
              seed: int = 0, context: StageContext | None = None) -> dict[str, Any]:
        sparsify(model, candidate.sparsity)
        return {}

    def masked(self, model: nn.Module, candidate: Candidate) -> set[str]:
        return set(weight_layers(model))


class ClusterStage(Stage):
    """Clusters each layer's weights; ``clusters/<layer>`` records the distinct values left."""

    name = "cluster"

    def apply(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
              seed: int = 0, context: StageContext | None = None) -> dict[str, Any]:
        distinct = cluster_weights(model, candidate.counts, candidate.cluster_method, seed)
        return {f"clusters/{name}": n for name, n in distinct.items()}

    def apply_structure(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
                        seed: int = 0) -> dict[str, Any]:
        """The cluster counts without k-means (``spread_weights``): as many distinct values
        per row as the clustered model can hold, which is what the packed file's size
        depends on."""
        distinct = spread_weights(model, candidate.counts, seed)
        return {f"clusters/{name}": n for name, n in distinct.items()}

    def clustered(self, model: nn.Module, candidate: Candidate) -> set[str]:
        return set(candidate.counts)


MODEL_STAGES: dict[str, Stage] = {s.name: s for s in (PruneStage(), SparsifyStage(),
                                                      ClusterStage())}


def model_stage(name: str) -> Stage:
    try:
        return MODEL_STAGES[name]
    except KeyError:
        raise KeyError(f"unknown model stage {name!r}; valid: {', '.join(MODEL_STAGES)}") \
            from None
