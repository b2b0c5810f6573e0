"""scikit-learn's bundled handwritten digits: 1,797 8x8 grey images, 10 classes, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeslim.data._base import Augment, RawDataset, Split


def load_digits(data_dir: Path, cache_dir: Path | None) -> RawDataset:
    """Ships inside scikit-learn: ``data_dir`` and ``cache_dir`` are not used."""
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    # Pixel values are 0..16; scale to the uint8 range every other dataset uses.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    train = Split(torch.from_numpy(images), torch.from_numpy(bunch.target.astype(np.int64)))
    names = tuple(str(int(n)) for n in bunch.target_names)
    # Small shifts only: a flipped digit is another symbol.
    return RawDataset(train=train, test=None, class_names=names, augment=Augment(crop_padding=1))
