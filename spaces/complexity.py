"""Complexity-driven allocation of pruning ratios: each dependency group loses channels in
proportion to its share of the network's parameters (PA), MACs (FA) or activation memory (MA),
after Zawish et al., "Complexity-driven CNN compression for resource-constrained edge AI"
(2022), which picks how much each layer loses from its contribution to the network's
complexity rather than by ranking filters.

How the shares are computed (``group_shares``): every convolution and linear layer gets a
complexity for batch 1 (``layer_complexity``):

- ``params``: its weight elements;
- ``flops``: its multiply-accumulates, weight elements times output positions (the H x W of a
  conv's output; the leading positions of a Linear acting on channels-last tensors);
- ``memory``: the elements of its output activation.

A group's complexity is the sum over the layers it touches (its producers lose output channels
and its consumers input channels, so pruning it lowers the cost of all of them); shares are
those sums divided by their total.

How ratios derive from the shares (``complexity_ratios``): one scale ``s`` is fitted per budget
(``edgeslim.search.references``), and a group with share ``w`` loses
``s * w / max(shares)`` of its channels, on the space's ratio grid: the most complex group
loses ``s``, a group half as complex loses ``s / 2``. No group loses more than the space's
``max_ratio``; when the budget needs more than the most complex group can give, ``s`` grows
past ``max_ratio`` and the others keep losing more until every group is at the cap.

Example:
    >>> complexity_ratios({"a": 0.6, "b": 0.3, "c": 0.1}, 0.5, step=0.05, max_ratio=0.8)
    {'a': 0.5, 'b': 0.25, 'c': 0.1}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from edgeslim.compress.prune import PrunableGroup

COMPLEXITY_MEASURES = ("params", "flops", "memory")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


@torch.no_grad()
def layer_complexity(model: nn.Module, example: torch.Tensor, measure: str) -> dict[str, float]:
    """The complexity of each convolution and linear layer of ``model`` for one input
    ``example`` (batch 1), by qualified name (see the module docstring)."""
    if measure not in COMPLEXITY_MEASURES:
        raise ValueError(f"unknown complexity measure {measure!r}; valid: "
                         f"{', '.join(COMPLEXITY_MEASURES)}")
    outputs: dict[str, tuple[int, int]] = {}  # name -> (output elements, output channels)
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            channels = module.out_features if isinstance(module, nn.Linear) \
                else module.out_channels

            def record(_m, _inp, out, name=name, channels=channels):
                outputs[name] = (out.numel(), channels)

            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    values = {}
    for name, module in model.named_modules():
        if name not in outputs:
            continue
        elements, channels = outputs[name]
        weights = module.weight.numel()
        values[name] = float({"params": weights, "flops": weights * (elements // channels),
                              "memory": elements}[measure])
    return values


def group_shares(model: nn.Module, example: torch.Tensor, groups: Sequence[PrunableGroup],
                 measure: str) -> dict[str, float]:
    """Each group's share of the complexity ``measure`` (shares sum to 1)."""
    per_layer = layer_complexity(model, example, measure)
    sums = {g.name: sum(per_layer.get(layer, 0.0) for layer in g.layers) for g in groups}
    total = sum(sums.values())
    if total <= 0:
        return {name: 1.0 / len(sums) for name in sums}
    return {name: value / total for name, value in sums.items()}


def complexity_ratios(shares: Mapping[str, float], scale: float, step: float,
                      max_ratio: float) -> dict[str, float]:
    """Per-group pruning ratios: ``scale * share / max(shares)``, put on the ``step`` grid
    (nearest point) and capped at ``max_ratio``."""
    top = max(shares.values())
    out = {}
    for name, share in shares.items():
        ratio = scale * share / top if top > 0 else 0.0
        out[name] = round(min(round(ratio / step) * step, max_ratio), 10)
    return out
