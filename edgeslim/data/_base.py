"""In-memory datasets: images decoded once into uint8 tensors, split deterministically."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgeslim.errors import DataError


@dataclass(frozen=True)
class Split:
    """Images as a uint8 tensor (N, C, H, W) or (N, C, L) (float32 for sensor arrays read from
    an .npz file) and labels as int64 (N,)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Augment:
    """Training augmentation, applied to whole uint8 batches as tensors (see ``augment_batch``).

    crop_padding: random translation by up to this many pixels (zero-padded random crop).
    hflip: random horizontal flip with probability 1/2 (off for digits and letters).
    """

    crop_padding: int = 0
    hflip: bool = False


@dataclass(frozen=True)
class RawDataset:
    """What a dataset loader returns before the validation split is carved out."""

    train: Split
    test: Split | None
    class_names: tuple[str, ...]
    augment: Augment


@dataclass(frozen=True)
class DataBundle:
    """A dataset ready for training: train/val carved from the training data, optional test.

    ``mean`` and ``std`` are per channel on the [0, 1] scale, computed on the training part; the
    model's input is ``(x / 255 - mean) / std`` (the card records them).
    """

    name: str
    train: Split
    val: Split
    test: Split | None
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    fingerprint: str  # hash of the pixels and labels of train/val/test and of the split

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (or float32) batch -> normalized float32 batch, the model's input."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, device=x.device).view(shape)
        std = torch.tensor(self.std, device=x.device).view(shape)
        # A copy: ``float()`` of a float32 batch is the batch itself, which must not change.
        return (x.to(torch.float32, copy=True).div_(255.0) - mean) / std


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: how to load it and what suits it by default."""

    load: Callable[[Path, Path | None], RawDataset]  # (data_dir, cache_dir) -> raw data
    val_fraction: float  # share of the training data carved out for validation
    base_epochs: int  # epochs of the base-model recipe when the tool trains the base itself
    description: str
    finetune_epochs: float = 1.0  # default fine-tune of each candidate during the search
    # Multi-fidelity: this many Pareto trials are fine-tuned again, for this many epochs per
    # stage (default: three times the search's), once the search is done.
    finalists: int = 2
    final_epochs_per_stage: float | None = None
    # Pruning allocations screened (ranked without training) per search trial.
    screen_per_trial: int = 4
    # The sampler a search uses by default: Gaussian-process proposals cost seconds, which pay
    # where a trial's fine-tune takes minutes (benchmarks/results/sampler_cost.md).
    sampler: str = "gp"

    @property
    def final_epochs(self) -> float:
        return self.final_epochs_per_stage or 3 * self.finetune_epochs


def carve_validation(raw: RawDataset, name: str, val_fraction: float, seed: int) -> DataBundle:
    """Splits ``raw.train`` into train and validation parts, stratified by class, with a fixed
    seed: the same data and seed always give the same split."""
    y = raw.train.y.numpy()
    rng = np.random.default_rng(seed)
    val_idx = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = max(1, int(round(len(members) * val_fraction)))
        val_idx.append(rng.permutation(members)[:take])
    val = np.sort(np.concatenate(val_idx))
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    train_idx = torch.from_numpy(np.flatnonzero(mask))
    val_t = torch.from_numpy(val)
    train = Split(raw.train.x[train_idx].contiguous(), raw.train.y[train_idx].contiguous())
    valid = Split(raw.train.x[val_t].contiguous(), raw.train.y[val_t].contiguous())
    if len(train) == 0 or len(valid) == 0:
        raise DataError(f"{name}: too few images ({len(y)}) to carve a validation split")
    pixels = train.x.to(torch.float32, copy=True).div_(255.0).transpose(0, 1) \
        .reshape(train.x.shape[1], -1)
    mean = tuple(round(float(v), 6) for v in pixels.mean(dim=1))
    std = tuple(round(max(float(v), 1e-6), 6) for v in pixels.std(dim=1))
    digest = hashlib.blake2b(digest_size=12)
    for part in (train, valid, raw.test):
        if part is not None:
            digest.update(part.x.numpy().tobytes())
            digest.update(part.y.numpy().tobytes())
    return DataBundle(name=name, train=train, val=valid, test=raw.test,
                      class_names=raw.class_names, mean=mean, std=std, augment=raw.augment,
                      fingerprint=digest.hexdigest())


def augment_batch(x: Tensor, augment: Augment, generator: torch.Generator | None = None) -> Tensor:
    """Random crop (by zero padding and a random offset per image) and random horizontal flip of
    a uint8 batch (N, C, H, W), as whole-batch tensor operations."""
    if x.dim() != 4 or (augment.crop_padding == 0 and not augment.hflip):
        return x
    n, c, h, w = x.shape
    dev = x.device
    if augment.crop_padding:
        p = augment.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator).to(dev)
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=generator).to(dev)
        rows = (dy + torch.arange(h, device=dev)).view(n, 1, h, 1)
        cols = (dx + torch.arange(w, device=dev)).view(n, 1, 1, w)
        batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
        chan = torch.arange(c, device=dev).view(1, c, 1, 1)
        x = padded[batch, chan, rows, cols]
    if augment.hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(dev).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    return x
