"""What a candidate gets between a stage and its fine-tune, so that the fine-tune starts close
to the base model: cheap next to an epoch of training (seconds for ResNet-20 on CPU).

- ``reconstruct``: after pruning, least-squares weights for every layer whose inputs lost
  channels, so its outputs match the unpruned model's on ``images`` training images
  (``edgeslim.compress.reconstruct``).
- ``recalibrate_bn``: after each stage, every batch norm's running statistics re-estimated on
  ``bn_images`` training images (``edgeslim.evaluators.screening.recalibrate_batch_norm``);
  pruning and clustering change what each batch norm sees, and its stale statistics are what
  the fine-tune's first steps would otherwise spend correcting.

``benchmarks/recovery.py`` measures each step on and off; the defaults follow its table.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from edgeslim.compress.importance import GRADIENT_IMAGES, loss_gradients
from edgeslim.compress.prune import KeptIndices
from edgeslim.compress.reconstruct import reconstruct
from edgeslim.data import DataBundle
from edgeslim.evaluators.screening import recalibrate_batch_norm
from edgeslim.recovery import STEPS, Recovery

__all__ = ["STEPS", "Recovery", "calibration_images", "labelled_batches", "recover"]


def calibration_images(data: DataBundle, images: int, seed: int) -> torch.Tensor:
    """``images`` normalised training images drawn with ``seed`` (no augmentation)."""
    return data.normalize(data.train.x[_draw(data, images, seed)])


def labelled_batches(data: DataBundle, images: int, seed: int, batch: int = 128,
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``images`` normalised training images with their labels, in batches: what the
    gradient criteria of pruning (``taylor``, ``hessian``) read."""
    idx = _draw(data, images, seed)
    return [(data.normalize(data.train.x[idx[i:i + batch]]), data.train.y[idx[i:i + batch]])
            for i in range(0, len(idx), batch)]


class BaseGradients:
    """The base model's loss gradients on the labelled batches the gradient criteria read
    (``labelled_batches`` of ``GRADIENT_IMAGES`` images), computed on the first call and
    shared by whoever holds this: a run's screening, its search and its finalists prune the
    same base model with the same batches. ``batch`` is the training batch: the backward pass
    holds what a training step of that batch holds (which the memory check before training
    sized), and the summed loss's gradients do not depend on how the images are batched."""

    def __init__(self, base: nn.Module, data: DataBundle, seed: int, batch: int = 128) -> None:
        self.base, self.data, self.seed, self.batch = base, data, seed, batch
        self._gradients: dict[str, torch.Tensor] | None = None

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return labelled_batches(self.data, GRADIENT_IMAGES, self.seed, self.batch)

    def __call__(self) -> dict[str, torch.Tensor]:
        if self._gradients is None:
            self._gradients = loss_gradients(self.base, self.batches())
        return self._gradients


def _draw(data: DataBundle, images: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randperm(len(data.train), generator=gen)[:images]


def recover(model: nn.Module, before: nn.Module | None, kept: dict[str, KeptIndices],
            recovery: Recovery, data: DataBundle, seed: int) -> dict[str, object]:
    """Applies ``recovery`` to ``model`` after a stage, in place. ``before`` is the model as it
    was before the stage and ``kept`` the channels pruning kept (empty when it did not
    prune). Returns facts for the trial's attributes."""
    info: dict[str, object] = {}
    if recovery.reconstruct and kept and before is not None:
        start = time.perf_counter()
        layers = reconstruct(model, before, kept,
                             calibration_images(data, recovery.images, seed), seed)
        info.update(reconstructed_layers=len(layers),
                    reconstruct_seconds=round(time.perf_counter() - start, 3))
    if recovery.recalibrate_bn:
        start = time.perf_counter()
        recalibrate_batch_norm(model, data, recovery.bn_images, seed)
        info["recalibrate_bn_seconds"] = round(time.perf_counter() - start, 3)
    return info
