"""CIFAR-10, MNIST and Fashion-MNIST from torchvision's files, or from an ImageFolder tree.

``--data-dir DIR`` may hold torchvision's own files (``DIR/cifar-10-batches-py``,
``DIR/MNIST/raw``, ``DIR/FashionMNIST/raw``), which are downloaded there when the machine is
online, or an ImageFolder tree ``DIR/train/<class>/`` with an optional ``DIR/test/``.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import torch

from edgeslim.data._base import Augment, RawDataset, Split
from edgeslim.data.imagefolder import load_imagefolder
from edgeslim.errors import DataError

DOWNLOAD_TIMEOUT_S = 10.0


def _from_torchvision(name: str, cls_name: str, data_dir: Path, augment: Augment,
                      grey: bool, cache_dir: Path | None) -> RawDataset:
    import torchvision.datasets as tvd

    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{name}: --data-dir {data_dir} is not a directory")
    if (data_dir / "train").is_dir():
        return load_imagefolder(data_dir, cache_dir=cache_dir, grey=grey, augment=augment)
    cls = getattr(tvd, cls_name)
    try:
        train_set = cls(str(data_dir), train=True, download=False)
    except RuntimeError:
        created = _topmost_missing(data_dir)  # the download creates it and its parents
        before = set(data_dir.iterdir()) if created is None else set()
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # offline machines fail fast, not hang
        try:
            train_set = cls(str(data_dir), train=True, download=True)
        except Exception as exc:  # no network, DNS failure, HTTP error...
            _undo_download(data_dir, created, before)
            raise DataError(
                f"{name}: no data in {data_dir} and downloading failed "
                f"({type(exc).__name__}); put torchvision's {name} files in {data_dir} "
                f"(as downloaded by torchvision.datasets.{cls_name}) or an ImageFolder tree "
                f"{data_dir}/train/<class>/*.png"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    try:
        test = _split(cls(str(data_dir), train=False, download=False))
    except RuntimeError:
        test = None
    return RawDataset(train=_split(train_set), test=test, class_names=tuple(train_set.classes),
                      augment=augment)


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet, or None when it exists."""
    top, path = None, path.absolute()
    while not path.exists():
        top, path = path, path.parent
    return top


def _undo_download(data_dir: Path, created: Path | None, before: set[Path]) -> None:
    """Removes what a failed download left: the folders it created, or the new entries of an
    existing ``data_dir`` (partial archives, empty folders)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for path in set(data_dir.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _split(dataset: object) -> Split:
    data = dataset.data
    x = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # -> N, C, H, W
    y = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return Split(x.contiguous(), y)


def load_cifar10(data_dir: Path, cache_dir: Path | None) -> RawDataset:
    return _from_torchvision("cifar10", "CIFAR10", data_dir, Augment(4, True), False, cache_dir)


def load_mnist(data_dir: Path, cache_dir: Path | None) -> RawDataset:
    return _from_torchvision("mnist", "MNIST", data_dir, Augment(2, False), True, cache_dir)


def load_fashion_mnist(data_dir: Path, cache_dir: Path | None) -> RawDataset:
    return _from_torchvision("fashion-mnist", "FashionMNIST", data_dir, Augment(2, True), True,
                             cache_dir)
