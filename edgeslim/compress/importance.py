"""Channel importance criteria: how the channels of a pruning group are ranked, by name
(``CRITERIA``), and the loss gradients that the gradient criteria read. The scorers are
torch-pruning's."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from edgeslim.heap import release_freed_memory

# The criterion the search uses by default (``CRITERIA`` lists every one): first-order Taylor
# kept 0.6 validation points more than L2 (three seeds) after a one-epoch fine-tune of
# ResNet-20 at half the MACs, for a second of gradients; L1, L2 and LAMP rank a group's
# channels alike (benchmarks/results/recovery.md).
IMPORTANCES = ("taylor",)
# Not ranked: the first channels of each group are kept. Offered to presets of methods that
# prune without ranking filters; not among the criteria the search chooses from by default.
UNRANKED = "none"


@dataclass(frozen=True)
class Criterion:
    """A channel importance criterion: how torch-pruning scores the channels of a group.

    ``needs_gradients``: the scorer reads gradients of the loss on training images, which
    ``apply_pruning`` computes on the unpruned model from its ``batches`` first.
    """

    make: Callable[[], Callable[[tp.Group], torch.Tensor | None]]
    needs_gradients: bool = False
    per_sample: bool = False  # squared gradients accumulated sample by sample (Hessian)


CRITERIA: dict[str, Criterion] = {
    "l1": Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=1)),
    # The group norm (Fang et al., DepGraph, CVPR 2023): the L2 norm of every parameter the
    # group removes, across all its layers.
    "l2": Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=2)),
    "bn_scale": Criterion(lambda: tp.importance.BNScaleImportance()),
    "lamp": Criterion(lambda: tp.importance.LAMPImportance(p=2)),
    # First-order Taylor expansion of the loss (Molchanov et al., CVPR 2019): |w * dL/dw|.
    "taylor": Criterion(lambda: tp.importance.GroupTaylorImportance(), needs_gradients=True),
    # Optimal Brain Damage's diagonal Hessian, from squared per-sample gradients.
    "hessian": Criterion(lambda: tp.importance.GroupHessianImportance(), needs_gradients=True,
                         per_sample=True),
    UNRANKED: Criterion(lambda: _first_channels),
}
# Images whose loss gradients the gradient criteria read (Taylor: summed over batches; Hessian:
# squared per image, so it sees fewer).
GRADIENT_IMAGES = 512
HESSIAN_IMAGES = 64


def criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown importance {name!r}; valid: {', '.join(CRITERIA)}") \
            from None


def _first_channels(group: tp.Group) -> torch.Tensor:
    """Scores that keep the lowest channel indices: no ranking at all."""
    n = len(group[0].idxs)
    return torch.arange(n, 0, -1, dtype=torch.float32)


Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (normalised inputs, labels)


Gradients = Mapping[str, torch.Tensor]  # parameter name -> gradient of the loss


def loss_gradients(model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
    """The gradient of the summed cross-entropy over ``batches`` with respect to each
    parameter of ``model`` (eval mode: batch-norm statistics stay the model's), by parameter
    name: what a gradient criterion of ``apply_pruning`` reads. Computed on a copy: ``model``
    is untouched. A search prunes many copies of one base model with the same training
    images; their gradients, computed once, serve every copy (``apply_pruning``'s
    ``gradients``)."""
    twin = copy.deepcopy(model).eval()
    twin.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches:
            F.cross_entropy(twin(x), y, reduction="sum").backward()
    gradients = {name: p.grad.detach() for name, p in twin.named_parameters()
                 if p.grad is not None}
    del twin
    release_freed_memory()  # the backward pass's activations and the copy
    return gradients


def scorer_for(name: str, model: nn.Module, batches: Batches | None,
            gradients: Gradients | None = None):
    """The criterion's scorer, its gradients computed on ``model`` when it reads them (or
    taken from ``gradients``, those of the same weights, when the criterion needs no
    per-sample gradients)."""
    crit = criterion(name)
    scorer = crit.make()
    if not crit.needs_gradients:
        return scorer
    if gradients is not None and not crit.per_sample:
        for pname, p in model.named_parameters():
            grad = gradients.get(pname)
            if grad is None or grad.shape != p.shape:
                raise ValueError(f"the gradients given do not match the model at {pname!r}")
            p.grad = grad.clone()
        return scorer
    if not batches:
        raise ValueError(f"importance {name!r} reads loss gradients: give training batches")
    was_training = model.training
    model.eval()  # batch-norm statistics stay the base model's
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            if crit.per_sample:
                scorer.zero_grad()
                seen = 0
                for x, y in batches:
                    for xi, yi in zip(x, y):
                        if seen >= HESSIAN_IMAGES:
                            break
                        model.zero_grad(set_to_none=True)
                        F.cross_entropy(model(xi[None]), yi[None]).backward()
                        scorer.accumulate_grad(model)
                        seen += 1
            else:
                for x, y in batches:
                    F.cross_entropy(model(x), y, reduction="sum").backward()
    finally:
        model.train(was_training)
    return scorer
