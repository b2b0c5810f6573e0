"""Least-squares weight reconstruction after channel pruning.

Removing channels changes what every later layer sees. Before any fine-tune, each convolution
and linear layer whose input lost channels is given the weights that make its output, on a few
hundred training images fed through the *pruned* model, match the unpruned model's output on
the same images at the channels it keeps: a ridge regression over the layer's input patches
(as ThiNet, Luo et al., ICCV 2017, and the channel pruning of He et al., ICCV 2017, and AIMET
do). Layers are solved in the order the forward pass reaches them, each from the inputs the
already reconstructed layers before it produce, so errors do not pile up along the depth.

The output matched is the layer's own (before its batch norm, whose statistics stay the base
model's), so a pruned residual block's output is matched channel by channel to the unpruned
one's. Grouped and depthwise convolutions are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.compress.prune import KeptIndices

# Output positions sampled per image and layer: enough rows for the largest layer's patch
# width (64 channels x 3 x 3 = 576 in ResNet-20) many times over, at a few MB per layer.
POSITIONS = 64
# Ridge term, relative to the mean diagonal of the patches' Gram matrix.
RIDGE = 1e-3


def _solvable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1


def _patches(module: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(rows, features): the inputs from which ``module`` computes its output at positions
    ``pos`` (N, count) of each image (a conv's patches, channel-major as its weight is laid
    out; a linear layer's input rows)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise ValueError("reconstruction needs explicit zero padding")
    if isinstance(module, nn.Conv1d):  # as a conv over a 1 x L image
        x = x.unsqueeze(2)
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        padding, dilation = (0, *module.padding), (1, *module.dilation)
    else:
        kernel, stride, padding, dilation = (module.kernel_size, module.stride, module.padding,
                                             module.dilation)
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    out_w = (xp.shape[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    top, left = (pos // out_w) * stride[0], (pos % out_w) * stride[1]
    rows = top[..., None] + dilation[0] * torch.arange(kernel[0])  # (N, count, kh)
    cols = left[..., None] + dilation[1] * torch.arange(kernel[1])  # (N, count, kw)
    n = torch.arange(x.shape[0]).view(-1, 1, 1, 1)
    patches = xp[n, :, rows[..., :, None], cols[..., None, :]]  # (N, count, kh, kw, C)
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, x.shape[1] * kernel[0] * kernel[1])


def _outputs(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """(N, channels, positions) of a layer's output, without its bias."""
    if module.bias is not None:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        y = y - module.bias.view(shape) if not isinstance(module, nn.Linear) \
            else y - module.bias
    return y.reshape(-1, y.shape[-1], 1) if isinstance(module, nn.Linear) \
        else y.flatten(2)


@torch.no_grad()
def reconstruct(pruned: nn.Module, base: nn.Module, kept: Mapping[str, KeptIndices],
                images: torch.Tensor, seed: int = 0) -> list[str]:
    """Refits, in place, the weights of every layer of ``pruned`` whose input channels were
    pruned (``kept``, from ``apply_pruning``) so its output on ``images`` (normalised model
    inputs) matches ``base``'s at the channels it keeps. Returns the layers refitted.
    """
    layers = {name: m for name, m in pruned.named_modules()
              if name in kept and kept[name].inp is not None and _solvable(m)}
    if not layers:
        return []
    gen = torch.Generator().manual_seed(seed)
    positions: dict[str, torch.Tensor] = {}
    targets: dict[str, torch.Tensor] = {}
    base_modules = dict(base.named_modules())

    def keep_target(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            y = _outputs(module, output.float())
            count = min(POSITIONS, y.shape[2])  # drawn with replacement
            pos = torch.randint(0, y.shape[2], (y.shape[0], count), generator=gen)
            positions[name] = pos
            out = kept[name].out
            y = y if out is None else y[:, out]
            targets[name] = torch.gather(y, 2, pos[:, None].expand(-1, y.shape[1], -1))
        return hook

    def refit(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            a = _patches(module, args[0].float(), positions[name])
            y = targets[name].transpose(1, 2).reshape(-1, targets[name].shape[1])
            gram = (a.T @ a).double()
            gram.diagonal().add_(RIDGE * gram.diagonal().mean().clamp_min(1e-12))
            w = torch.linalg.solve(gram, (a.T @ y).double()).T  # (out, features)
            module.weight.copy_(w.reshape(module.weight.shape).to(module.weight.dtype))
        return hook

    was = pruned.training, base.training
    pruned.eval(), base.eval()
    handles = [base_modules[name].register_forward_hook(keep_target(name)) for name in layers]
    try:
        base(images)
    finally:
        for h in handles:
            h.remove()
    handles = [m.register_forward_pre_hook(refit(name)) for name, m in layers.items()]
    try:
        pruned(images)
    finally:
        for h in handles:
            h.remove()
        pruned.train(was[0]), base.train(was[1])
    return list(layers)
