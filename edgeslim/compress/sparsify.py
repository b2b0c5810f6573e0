"""Unstructured magnitude pruning: the smallest weights of each layer set to exactly zero.

It shrinks the stored artifact (zeros cost one bit each in the packed file, see
``edgeslim.packing``) but not the MACs or the latency: the runtime still multiplies the zeros
with dense kernels. Model cards say so.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from edgeslim.compress.cluster import weight_layers


@torch.no_grad()
def sparsify(model: nn.Module, sparsity: float, layers: Iterable[str] | None = None,
             ) -> dict[str, float]:
    """Zeros, in place, the ``sparsity`` fraction of smallest-magnitude weights of each layer
    (every convolution and linear layer when ``layers`` is None). Ties at the threshold are
    broken by position, so exactly ``floor(sparsity * n)`` weights of an n-weight layer are zero
    afterwards (more if the layer already held zeros).

    Returns:
        The fraction of zero weights of each layer afterwards.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    found = weight_layers(model)
    names = list(found) if layers is None else list(layers)
    out = {}
    for name in names:
        weight = found[name].weight
        flat = weight.view(-1) if weight.is_contiguous() else weight.reshape(-1)
        drop = int(sparsity * flat.numel())
        if drop:
            order = torch.argsort(flat.abs(), stable=True)
            flat[order[:drop]] = 0.0
            if not weight.is_contiguous():
                weight.copy_(flat.view_as(weight))
        out[name] = float((weight == 0).float().mean())
    return out
