"""The extreme candidates of a search space, and their measures before training, which the
plan (``edgeslim.search.plan``) reports against each limit:

- the least compressed: no channel pruned, the most cluster values, each quantization mode
  the space offers (and none, where an order has no quantize stage);
- the most compressed: every group pruned at ``--max-ratio``, the fewest cluster values, the
  highest sparsity, each quantization mode; and pruning alone at ``--max-ratio`` (quantized
  files can be slower than float ones, so the fastest candidate need not be the smallest).

They are built from the untrained model, its batch norms given the non-trivial statistics a
trained model has (``like_trained``): a converter folds an identity batch norm away and would
understate the memory of a LiteRT file.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslim.evaluators.staged import StagedEvaluator
from edgeslim.search.repair import structure_measures
from edgeslim.spaces import Candidate, StagedSpace
from edgeslim.stages import STAGES

__all__ = ["describe", "extreme_candidates", "like_trained", "measure_candidate"]


def extreme_candidates(space: StagedSpace) -> tuple[list[Candidate], list[Candidate]]:
    """The least and the most compressed candidates of ``space`` (see the module docstring)."""
    pruning = space.pruning
    longest = max(space.orders, key=len)
    uses = {stage for order in space.orders for stage in order}
    modes = list(space.quant_modes) if "quantize" in uses else []

    def make(order: tuple[str, ...], most: bool, mode: str) -> Candidate:
        fields: dict[str, Any] = {"order": order, "importance": pruning.importances[0],
                                  "round_to": pruning.round_to}
        for name in order:
            fields.update(STAGES[name].extreme(space, most))
        return Candidate(**fields, quantize=mode if "quantize" in order else "none")

    plain = [o for o in space.orders if "quantize" not in o]
    quantized = [o for o in space.orders if "quantize" in o]
    least = [make(min(plain, key=len), False, "none")] if plain else []
    least += [make(min(quantized, key=len), False, mode) for mode in modes]
    most = [make(longest, True, mode)
            for mode in (modes if "quantize" in longest else ["none"])]
    if ("prune",) in space.orders and pruning.groups:
        most.append(make(("prune",), True, "none"))
    return _unique(least), _unique(most)


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    return list(dict.fromkeys(candidates))


def describe(candidate: Candidate) -> str:
    parts = [candidate.order_name]
    ratios = {r for _, r in candidate.prune_ratios}
    if ratios:
        parts.append(f"pruned {max(ratios):g}")
    if candidate.cluster_counts:
        parts.append(f"{min(k for _, k in candidate.cluster_counts)} cluster values")
    if candidate.quantize != "none":
        parts.append(candidate.quantize)
    return ", ".join(parts)


def measure_candidate(evaluator: StagedEvaluator, candidate: Candidate, workdir: Path,
                      timed: bool, latency_below_ms: float | None = None) -> dict[str, float]:
    """params and MACs of the pruned structure, and the measures of the file it deploys to
    (built as before training: no k-means, no fine-tune). With ``latency_below_ms``, latency
    is timed only as closely as telling it from that limit needs (a quick look when it is far
    below: see ``HostMeter``)."""
    values = structure_measures(evaluator.base, evaluator.example, candidate.ratios
                                if "prune" in candidate.order else {}, "l2", candidate.round_to)
    with tempfile.TemporaryDirectory(prefix="plan-", dir=workdir) as tmp:
        built = evaluator.build(candidate, Path(tmp), finetune=False)
        measured, _ = evaluator.measure_built(built, None, latency=timed,
                                              latency_below_ms=latency_below_ms)
        measured["size_bytes"] = float(built.deployable.stat().st_size)
    values.update(measured)
    return values


def like_trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of the untrained ``model`` whose batch norms hold statistics and affine
    parameters away from the identity (drawn with ``seed``), as a trained model's do: the
    LiteRT converter folds an identity batch norm into nothing, which a trained model never
    gets (on cnn1d, a 48-byte smaller LiteRT for Microcontrollers arena)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return model
