"""Fine-tuning that keeps what earlier stages fixed: pruned zeros stay zero, clustered weights
stay tied to their shared values.

Before a fine-tune, each constrained layer's weight is re-expressed
(``torch.nn.utils.parametrize``) as ``codebook[assign] * mask``: ``codebook`` holds the layer's
distinct values and is what trains; ``mask`` keeps unstructured zeros at zero. The constraints
are read from the weights themselves (their distinct values and zeros), so they survive any
structural change in between: pruning channels out of a clustered layer leaves fewer members
per centroid, not more centroids.

A centroid's gradient is the mean of its members' gradients (``CENTROID_GRADIENTS``), so it
moves as far as its average member would: the update of training the members untied for one
step, then setting each cluster to its members' mean. Deep Compression (Han et al., 2016)
sums them instead; at the rates a fine-tune uses that moves a centroid with a thousand members
a thousand times further than a weight, and one epoch of it leaves a ResNet-20 whose layers
keep four or eight values each at 9% or 17% on CIFAR-10, where the mean leaves it within three
points or one of the unclustered model (benchmarks/results/cluster_recovery.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeslim.compress.cluster import weight_layers

# How a centroid's gradient combines its members': "mean" (the default) or "sum" (Deep
# Compression's rule, kept for comparison).
CENTROID_GRADIENTS = ("mean", "sum")


class _ScaleGradient(torch.autograd.Function):
    """The identity, whose backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class TiedWeight(nn.Module):
    """``weight = codebook[assign] * mask``; either part may be absent (plain or no mask).
    ``gradient`` is one of ``CENTROID_GRADIENTS``."""

    def __init__(self, weight: torch.Tensor, clustered: bool, masked: bool,
                 gradient: str = "mean") -> None:
        super().__init__()
        if gradient not in CENTROID_GRADIENTS:
            raise ValueError(f"centroid gradient must be one of {CENTROID_GRADIENTS}, "
                             f"got {gradient!r}")
        self.clustered = clustered
        mask = (weight.detach() != 0).to(weight.dtype) if masked else None
        self.register_buffer("mask", mask)
        self.register_buffer("scale", None)
        if clustered:
            values, inverse = torch.unique(weight.detach(), return_inverse=True)
            self.codebook = nn.Parameter(values.clone())
            self.register_buffer("assign", inverse.reshape(weight.shape))
            if gradient == "mean":
                # The mask zeroes only the weights of the zero centroid, whose gradient it
                # already cancels: every centroid's members count.
                counts = torch.bincount(inverse.reshape(-1), minlength=values.numel())
                self.scale = 1.0 / counts.to(values.dtype)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        if self.clustered:
            book = self.codebook
            if self.scale is not None:
                book = _ScaleGradient.apply(book, self.scale)
            weight = book[self.assign]
        else:
            weight = original
        return weight if self.mask is None else weight * self.mask


@contextmanager
def tied(model: nn.Module, clustered: Iterable[str] = (), masked: Iterable[str] = (),
         centroid_gradient: str = "mean"):
    """Within the block, the named layers train under their constraints, each centroid's
    gradient the ``centroid_gradient`` of its members' (see the module docstring); on exit
    their weights are plain tensors again holding the constrained values (exactly: at most as
    many distinct values as before, zeros where there were zeros)."""
    layers = weight_layers(model)
    clustered, masked = set(clustered), set(masked)
    names = sorted(clustered | masked)
    trainable = {name: layers[name].weight.requires_grad for name in names}
    for name in names:
        module = layers[name]
        parametrize.register_parametrization(
            module, "weight", TiedWeight(module.weight, name in clustered, name in masked,
                                       centroid_gradient),
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
