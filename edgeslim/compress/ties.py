"""Fine-tuning that keeps what earlier stages fixed: pruned zeros stay zero, clustered weights
stay tied to their shared values.

Before a fine-tune, each constrained layer's weight is re-expressed
(``torch.nn.utils.parametrize``) as ``codebook[assign] * mask``: ``codebook`` holds the layer's
distinct values and is what trains, so a centroid's gradient is the sum of its members'
gradients (Deep Compression's update); ``mask`` keeps unstructured zeros at zero. The
constraints are read from the weights themselves (their distinct values and zeros), so they
survive any structural change in between: pruning channels out of a clustered layer leaves
fewer members per centroid, not more centroids.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeslim.compress.cluster import weight_layers


class TiedWeight(nn.Module):
    """``weight = codebook[assign] * mask``; either part may be absent (plain or no mask)."""

    def __init__(self, weight: torch.Tensor, clustered: bool, masked: bool) -> None:
        super().__init__()
        self.clustered = clustered
        if clustered:
            values, inverse = torch.unique(weight.detach(), return_inverse=True)
            self.codebook = nn.Parameter(values.clone())
            self.register_buffer("assign", inverse.reshape(weight.shape))
        self.register_buffer("mask", (weight.detach() != 0).to(weight.dtype) if masked else None)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        weight = self.codebook[self.assign] if self.clustered else original
        return weight if self.mask is None else weight * self.mask


@contextmanager
def tied(model: nn.Module, clustered: Iterable[str] = (), masked: Iterable[str] = ()):
    """Within the block, the named layers train under their constraints; on exit their weights
    are plain tensors again holding the constrained values (exactly: at most as many distinct
    values as before, zeros where there were zeros)."""
    layers = weight_layers(model)
    clustered, masked = set(clustered), set(masked)
    names = sorted(clustered | masked)
    trainable = {name: layers[name].weight.requires_grad for name in names}
    for name in names:
        module = layers[name]
        parametrize.register_parametrization(
            module, "weight", TiedWeight(module.weight, name in clustered, name in masked),
            unsafe=True)
        if name in clustered:
            # The unconstrained copy is not used by the forward pass; keep it out of training.
            module.parametrizations.weight.original.requires_grad_(False)
    try:
        yield model
    finally:
        for name in names:
            if parametrize.is_parametrized(layers[name], "weight"):
                parametrize.remove_parametrizations(layers[name], "weight",
                                                    leave_parametrized=True)
            # The frozen unconstrained copy becomes the weight again: make it trainable as it
            # was, or later stages (torch-pruning traces autograd) would not see the layer.
            layers[name].weight.requires_grad_(trainable[name])
