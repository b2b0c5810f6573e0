"""Arrays in an ``.npz`` file (``npz:PATH``): sensor time series, spectrograms, or images that
are already decoded.

The file holds ``x_train`` and ``y_train``, and optionally ``x_test`` and ``y_test`` and
``class_names``. ``x`` is N x C x L (C channels of L steps, e.g. UCI-HAR's 9 x 128) or
N x C x H x W; uint8 (pixels) or any float type (kept as float32). ``y`` holds integer class
labels 0 to K-1. The model's input is ``(x / 255 - mean) / std`` per channel, as for images;
for float data the 1/255 cancels out in the standardisation.

Example:
    >>> np.savez("har.npz", x_train=x, y_train=y)  # doctest: +SKIP
    >>> load_dataset("npz:har.npz", Path("unused"))  # doctest: +SKIP
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from edgeslim.data._base import Augment, RawDataset, Split
from edgeslim.errors import DataError

REQUIRED = ("x_train", "y_train")


def load_npz(path: Path, cache_dir: Path | None = None) -> RawDataset:
    """Reads and checks ``path``; ``cache_dir`` is not used (an .npz file loads in a moment)."""
    where = f"npz:{path}"
    if not Path(path).is_file():
        raise DataError(f"{where}: no such file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{where}: cannot be read as an .npz file (not a zip archive as written "
                        "by numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for k in archive.files:
                try:
                    arrays[k] = archive[k]
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise DataError(f"{where}: array {k!r} holds Python objects, which are not "
                                    "loaded (unpickling them could run code); save numeric or "
                                    "string arrays") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where}: cannot be read as an .npz file "
                        f"({str(exc).splitlines()[0][:120]})") from None
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise DataError(f"{where}: missing array {missing[0]!r}; found "
                        f"{', '.join(sorted(arrays)) or 'none'} (expected x_train, y_train and "
                        "optionally x_test, y_test, class_names)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise DataError(f"{where}: {have} is given without {lack}")
    train = _split(where, "train", arrays)
    test = _split(where, "test", arrays) if "x_test" in arrays else None
    if test is not None and test.x.shape[1:] != train.x.shape[1:]:
        raise DataError(f"{where}: x_test samples have shape {tuple(test.x.shape[1:])}, "
                        f"x_train samples {tuple(train.x.shape[1:])}")
    classes = int(train.y.max()) + 1
    if test is not None:
        classes = max(classes, int(test.y.max()) + 1)
    names = tuple(str(i) for i in range(classes))
    if "class_names" in arrays:
        given = arrays["class_names"]
        if given.ndim != 1 or given.dtype.kind not in "US" or len(given) < classes:
            raise DataError(f"{where}: class_names must be {classes} or more strings, got "
                            f"{given.dtype} of shape {given.shape}")
        names = tuple(str(n) for n in given)
    return RawDataset(train=train, test=test, class_names=names, augment=Augment())


def _split(where: str, part: str, arrays: dict[str, np.ndarray]) -> Split:
    x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise DataError(f"{where}: x_{part} has dtype {x.dtype}; expected uint8 or a float type")
    if x.ndim not in (3, 4):
        raise DataError(f"{where}: x_{part} has shape {x.shape}; expected N x C x L or "
                        "N x C x H x W")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: y_{part} has dtype {y.dtype}; expected integer class labels")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: y_{part} has shape {y.shape} for {len(x)} samples in "
                        f"x_{part}; expected one label per sample")
    if len(y) == 0:
        raise DataError(f"{where}: x_{part} holds no samples")
    if y.min() < 0:
        raise DataError(f"{where}: y_{part} labels must be 0 to K-1, got {int(y.min())}")
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{where}: x_{part} holds NaN or infinite values")
    return Split(torch.from_numpy(np.ascontiguousarray(x)),
                 torch.from_numpy(y.astype(np.int64)))
