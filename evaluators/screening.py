"""Screening: the cheapest fidelity of the search, a pruned model's accuracy before any
fine-tune, once its batch-norm statistics are estimated again on training images.

Pruning removes channels that the remaining ones' batch-norm statistics were computed with, so
a pruned model evaluated with the base model's running statistics scores near chance whatever
its structure. Re-estimating the statistics (adaptive batch norm: EagleEye, Li et al., ECCV
2020) on a few thousand training images, with no gradient step, gives an accuracy that ranks
pruned structures much as their fine-tuned accuracies do, in a second or two instead of an
epoch. The search uses it to rank many candidate allocations and fine-tunes only the best
(``edgeslim.search.screening``).

recalibrated_accuracy: top-1 accuracy (fraction correct) on the first ``val_images`` images of
the validation split, PyTorch, after the running statistics of every batch norm are replaced by
their plain average over ``images`` training images (no augmentation; drawn with ``seed``).
Models without batch norm are evaluated as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeslim.data import DataBundle, Split, augment_batch
from edgeslim.precision import autocast_for, default_device

BATCH = 256


def _batches(x: torch.Tensor, data: DataBundle, device: torch.device, batch: int = BATCH,
             augment: torch.Generator | None = None):
    """Normalised batches of ``x`` on ``device``, each augmented as in training first when
    ``augment`` (the generator drawing the crops and flips) is given."""
    fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
    for i in range(0, len(x), batch):
        xb = x[i:i + batch] if augment is None else augment_batch(x[i:i + batch],
                                                                  data.augment, augment)
        yield data.normalize(xb.to(device)).contiguous(memory_format=fmt)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, data: DataBundle, images: int = 2048,
                           seed: int = 0, device: torch.device | None = None,
                           augment: bool = False) -> int:
    """Re-estimates every batch norm's running mean and variance of ``model`` (in place) as the
    average over ``images`` training images, plain or (``augment``) augmented as in training.
    Returns the number of batch norms recalibrated.

    A trained model keeps its accuracy only with ``augment``: its weights were trained against
    statistics of augmented images (zero-padded random crops shift every mean), and those of
    plain images cost a CIFAR-10 ResNet-20 four points of validation accuracy. A pruned
    model's statistics are wrong either way; screening ranks allocations with plain images,
    which ranked fine-tuned accuracy no worse (benchmarks/results/bn_recalibration.md)."""
    device = device or default_device()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen, not an EMA
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=gen)[:images]
    model.to(device, memory_format=_format(data)).train()
    ctx, _ = autocast_for("auto", device)
    try:
        with ctx:
            for xb in _batches(data.train.x[idx], data, device,
                               augment=gen if augment else None):
                model(xb)
    finally:
        model.eval().to(memory_format=torch.contiguous_format)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return len(norms)


@torch.no_grad()
def fast_accuracy(model: nn.Module, split: Split, data: DataBundle, limit: int,
                  device: torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` on the first ``limit`` images of ``split`` (eval mode, the
    training's autocast precision: a ranking, not the score a trial reports)."""
    device = device or default_device()
    model.to(device, memory_format=_format(data)).eval()
    ctx, _ = autocast_for("auto", device)
    x, y = split.x[:limit], split.y[:limit]
    correct = 0
    with ctx:
        for i, xb in enumerate(_batches(x, data, device)):
            pred = model(xb).float().argmax(1).cpu()
            correct += int((pred == y[i * BATCH:(i + 1) * BATCH]).sum())
    model.to(memory_format=torch.contiguous_format)
    return correct / max(1, len(y))


def _format(data: DataBundle) -> torch.memory_format:
    # channels_last runs these CNNs about twice as fast on CPU (as in training).
    return torch.channels_last if len(data.input_shape) == 3 else torch.contiguous_format


def recalibrated_accuracy(model: nn.Module, data: DataBundle, images: int = 2048,
                          val_images: int = 2000, seed: int = 0,
                          device: torch.device | None = None, augment: bool = False) -> float:
    """``model``'s accuracy after ``recalibrate_batch_norm`` (see the module docstring); the
    model is changed in place."""
    recalibrate_batch_norm(model, data, images, seed, device, augment)
    return fast_accuracy(model, data.val, data, val_images, device)
