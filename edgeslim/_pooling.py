"""Adaptive average pooling in a form every ONNX exporter and runtime takes.

PyTorch's TorchScript exporter refuses ``adaptive_avg_pool2d`` whose output size does not
divide its input size ("output size that are not factor of input size"): VGG's 7x7 pool after
the 1x1 map a 32x32 image leaves, AlexNet's 6x6 one at 64x64. For a fixed input size the pool
is linear and separable: PyTorch averages output cell (i, j) over rows
``floor(i * H / oh) .. ceil((i + 1) * H / oh)`` and the same columns of the width, so the pool
equals ``R @ x @ C.T`` with R (oh x H) and C (ow x W) holding those windows' weights. During
an export (``exportable_pooling``) each such pool runs as those two matrix products; the model
is left as it was afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def window_matrix(size: int, out: int) -> torch.Tensor:
    """The (out x size) matrix averaging PyTorch's adaptive pooling windows along one axis."""
    matrix = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, math.ceil((i + 1) * size / out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class _PoolByMatmul:
    """The forward of one pool during an export: ``rows @ x @ cols.T``."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        self.rows, self.cols = rows, cols.t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows.to(x), x), self.cols.to(x))


def _output_size(pool: nn.AdaptiveAvgPool2d, size: tuple[int, int]) -> tuple[int, int]:
    out = pool.output_size
    pair = (out, out) if isinstance(out, int) or out is None else tuple(out)
    return tuple(s if o is None else int(o) for o, s in zip(pair, size))  # type: ignore


def _needs_rewrite(pool: nn.AdaptiveAvgPool2d) -> bool:
    """Whether ``pool`` could meet an input its output does not divide (output 1 divides all)."""
    out = pool.output_size
    return any(o not in (None, 1) for o in ((out, out) if isinstance(out, int) else out))


@contextmanager
def exportable_pooling(model: nn.Module, example_input: torch.Tensor) -> Iterator[None]:
    """Within the block, every ``nn.AdaptiveAvgPool2d`` of ``model`` whose output size does not
    divide the input size it meets on ``example_input`` computes the same values as two matrix
    products (see the module docstring). Costs one forward pass, only for models holding a
    pool to a size other than 1."""
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)
             and _needs_rewrite(m)]
    if not pools:
        yield
        return
    sizes: dict[nn.Module, set[tuple[int, int]]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        sizes.setdefault(module, set()).add(tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in pools]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    patched = []
    for pool, seen in sizes.items():
        if len(seen) != 1:  # one module pooling inputs of several sizes: left to the exporter
            continue
        ((height, width),) = seen
        out_h, out_w = _output_size(pool, (height, width))
        if height % out_h or width % out_w:
            pool.forward = _PoolByMatmul(window_matrix(height, out_h), window_matrix(width, out_w))
            patched.append(pool)
    try:
        yield
    finally:
        for pool in patched:
            del pool.forward  # the class's forward again
