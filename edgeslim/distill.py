"""Distillation for fine-tunes: the teacher's soft targets (``soft_target_loss``), and attention
transfer on the outputs of the model's blocks (``BlockAttention``).

A pruned student has fewer channels than its teacher, so their feature maps cannot be compared
channel by channel without adapters. Attention transfer (Zagoruyko and Komodakis, ICLR 2017)
compares what does not depend on the channel count: each block output's spatial attention map,
the mean over channels of the squared activations, flattened and L2-normalised. The loss is
the mean squared difference between student and teacher maps (over images and positions),
summed over blocks; the paper weights it by 1,000.

Blocks (``block_names``) are the containers held in a ``Sequential`` (ResNet's basic blocks,
MobileNetV2's inverted residuals, ConvNeXt's blocks); a model without any (VGG's flat
``features``) uses its top-level containers instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) \
        -> torch.Tensor:
    """Hinton et al. (2015): KL divergence between softened distributions, scaled by T^2 so
    its gradient stays comparable to the cross-entropy's as T changes."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def block_names(model: nn.Module) -> list[str]:
    """Qualified names of the modules whose outputs are distilled (see the module docstring)."""
    modules = dict(model.named_modules())
    names: list[str] = []
    for name, m in modules.items():
        if (name and isinstance(modules[name.rpartition(".")[0]], nn.Sequential)
                and any(True for _ in m.children())
                and not any(name.startswith(outer + ".") for outer in names)):
            names.append(name)  # the outermost only: not the layers inside a block
    return names or [name for name, m in model.named_children() if any(True for _ in m.children())]


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """(N, positions): the L2-normalised mean over channels of ``x`` squared (N, C, ...)."""
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1)


class BlockAttention:
    """Collects the block outputs of ``student`` and ``teacher`` on each forward pass (forward
    hooks) and gives their attention-transfer loss; ``close`` removes the hooks."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self.names = [n for n in block_names(student)
                      if n in dict(teacher.named_modules())]
        self.student: dict[str, torch.Tensor] = {}
        self.teacher: dict[str, torch.Tensor] = {}
        self.handles = [
            module.get_submodule(name).register_forward_hook(self._keep(store, name))
            for module, store in ((student, self.student), (teacher, self.teacher))
            for name in self.names]

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 3:
                store[name] = output
        return hook

    def loss(self) -> torch.Tensor:
        names = [n for n in self.names if n in self.student and n in self.teacher]
        terms = [(attention_map(self.student[n]) - attention_map(self.teacher[n].detach()))
                 .pow(2).mean() for n in names]
        self.student.clear()
        self.teacher.clear()
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def close(self) -> None:
        for h in self.handles:
            h.remove()
