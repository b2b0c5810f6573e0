"""Dataset registry: decoded once into uint8 tensors, with a deterministic validation split."""

from __future__ import annotations

from pathlib import Path

from edgeslim.data._base import (
    Augment,
    DataBundle,
    DatasetEntry,
    RawDataset,
    Split,
    augment_batch,
    carve_validation,
)
from edgeslim.data.arrays import load_npz
from edgeslim.data.digits import load_digits
from edgeslim.data.imagefolder import cache_writes_held, load_imagefolder
from edgeslim.data.torchvision_files import load_cifar10, load_fashion_mnist, load_mnist
from edgeslim.errors import DataError

DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, entry: DatasetEntry) -> None:
    """Adds a dataset under ``name``; refuses a name that is taken."""
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    DATASETS[name] = entry


# Digits is tiny (1,437 training images, 11 steps an epoch), so its fine-tune takes several epochs.
# Digits fine-tunes take a second or two, about as long as a few screenings: two per trial;
# and no longer than a Gaussian-process proposal, so TPE samples (sampler_cost.md).
register_dataset("digits", DatasetEntry(load_digits, 0.2, 30,
                                        "scikit-learn's 8x8 handwritten digits (offline)",
                                        finetune_epochs=5, screen_per_trial=2, sampler="tpe"))
# Three fine-tune epochs per stage: after pruning ResNet-20 to half its MACs, one epoch
# recovered to 81.7% (base 85.1%) and missed a 2-point accuracy limit in every trial
# (benchmarks/results/cifar10_resnet20_1epoch.md); three recover about 1.6 points more.
# The finalists' fine-tune is where the exported model's accuracy is made: 27 epochs a stage.
# From an 89% ResNet-20 the default pi4 study exported nothing with nine (finalists 2.25 and
# 2.60 validation points below the base) and a model that fits with 27 (1.58 below), in 58
# minutes on 2 cores (benchmarks/results/pi4_study_avg.md, pi4_study_27.md).
FINAL_EPOCHS_PER_STAGE = 27
register_dataset("cifar10", DatasetEntry(load_cifar10, 0.1, 15, "CIFAR-10, 32x32 RGB",
                                         finetune_epochs=3,
                                         final_epochs_per_stage=FINAL_EPOCHS_PER_STAGE))
register_dataset("mnist", DatasetEntry(load_mnist, 0.1, 5, "MNIST, 28x28 grey"))
register_dataset("fashion-mnist", DatasetEntry(load_fashion_mnist, 0.1, 10,
                                               "Fashion-MNIST, 28x28 grey"))
IMAGEFOLDER_PREFIX = "imagefolder:"
NPZ_PREFIX = "npz:"
PATH_PREFIXES = (IMAGEFOLDER_PREFIX, NPZ_PREFIX)  # datasets named by a path after the prefix


def dataset_entry(spec: str) -> DatasetEntry:
    prefix = next((p for p in PATH_PREFIXES if spec.startswith(p)), None)
    if prefix is not None and not spec.removeprefix(prefix).strip():
        raise DataError(f"dataset {spec!r}: give a path after {prefix}, e.g. {prefix}PATH")
    if spec.startswith(IMAGEFOLDER_PREFIX):
        return DatasetEntry(lambda d, c: load_imagefolder(d, cache_dir=c), 0.1, 15,
                            "image files in class folders",
                            final_epochs_per_stage=FINAL_EPOCHS_PER_STAGE)
    if spec.startswith(NPZ_PREFIX):
        # Sensor sets are small (UCI-HAR: 7,352 windows, 51 steps an epoch): two fine-tune
        # epochs per stage and 20 for the base model.
        return DatasetEntry(load_npz, 0.1, 20, "arrays in an .npz file", finetune_epochs=2)
    try:
        return DATASETS[spec]
    except KeyError:
        raise DataError(f"unknown dataset {spec!r}; registered: {', '.join(DATASETS)} "
                        f"(or {IMAGEFOLDER_PREFIX}PATH, {NPZ_PREFIX}PATH)") from None


def load_dataset(spec: str, data_dir: Path, cache_dir: Path | None = None,
                 seed: int = 0) -> DataBundle:
    """Loads dataset ``spec`` and carves its validation split with ``seed``.

    ``imagefolder:PATH`` and ``npz:PATH`` read PATH; the registered names read ``data_dir``.
    """
    entry = dataset_entry(spec)
    root = Path(spec.partition(":")[2]) if spec.startswith(PATH_PREFIXES) else Path(data_dir)
    raw = entry.load(root, cache_dir)  # loaders that cache create ``cache_dir`` on writing
    return carve_validation(raw, spec, entry.val_fraction, seed)


__all__ = [
    "DATASETS", "Augment", "DataBundle", "DatasetEntry", "RawDataset", "Split",
    "augment_batch", "cache_writes_held", "carve_validation", "dataset_entry", "load_dataset",
    "register_dataset",
]
