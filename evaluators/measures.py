"""Cost measures of a PyTorch model, as plain functions in a name -> function registry."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeslim.timing import timed


@dataclass(frozen=True)
class Count:
    """A measured count, plus the operators the counter saw but could not count."""

    value: int
    uncounted_ops: tuple[tuple[str, int], ...] = ()  # (operator, occurrences)


@timed("measuring")
def count_params(model: nn.Module, example_input: torch.Tensor) -> Count:  # noqa: ARG001
    """params: number of scalar elements in all parameters (weights, biases, norm scales and
    shifts). Buffers such as batch-norm running statistics are not counted."""
    return Count(sum(p.numel() for p in model.parameters()))


@timed("measuring")
def count_macs(model: nn.Module, example_input: torch.Tensor) -> Count:
    """macs: multiply-accumulates for one input of the model's input shape, batch 1, as counted
    by fvcore (one multiply-add = 1 in convolutions, linear layers, matmul and einsum; batch norm
    and adaptive pooling by their own fvcore rules). Element-wise operators fvcore has no rule
    for (additions, activations, max pooling) are not counted and are reported in
    ``uncounted_ops``, never silently taken as zero cost."""
    from fvcore.nn import FlopCountAnalysis

    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(model, example_input)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = int(analysis.total())
        uncounted = tuple(sorted(analysis.unsupported_ops().items()))
    return Count(total, uncounted)


Measure = Callable[[nn.Module, torch.Tensor], Count]

MODEL_MEASURES: dict[str, Measure] = {
    "params": count_params,
    "macs": count_macs,
}

