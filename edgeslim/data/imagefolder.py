"""Image files in class folders (``ROOT/train/<class>/*.png``, optional ``ROOT/test/``).

Files are decoded once (Pillow, two threads; its decoders release the GIL) into one uint8
tensor per split. The decoded tensors are cached beside the run's other caches, keyed by the
file list with sizes and modification times, so a second study on the same folder starts in a
second.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edgeslim.data._base import Augment, RawDataset, Split
from edgeslim.errors import DataError
from edgeslim.fsutil import atomic_torch_save

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Cache files decoded inside ``cache_writes_held``, to write when it ends without an error.
_HELD: ContextVar[list[tuple[Split, Path]] | None] = ContextVar("held_cache_writes",
                                                                 default=None)


@contextmanager
def cache_writes_held() -> Iterator[None]:
    """Inside, decoded splits are read from their cache files but new ones are not written
    until the block ends without an error: what the data is checked against (a checkpoint's
    shapes, say) can refuse it first, and a refused command writes nothing."""
    held: list[tuple[Split, Path]] = []
    token = _HELD.set(held)
    try:
        yield
    finally:
        _HELD.reset(token)
    for split, cache in held:  # only reached when the block raised nothing
        _write_cache(split, cache)


def _write_cache(split: Split, cache: Path) -> None:
    held = _HELD.get()
    if held is not None:
        held.append((split, cache))
    else:
        atomic_torch_save({"x": split.x, "y": split.y}, cache)


def find_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items = []
    for label, cls in enumerate(classes):
        for dirpath, _, files in os.walk(root / cls):
            for f in sorted(files):
                if f.lower().endswith(EXTENSIONS):
                    items.append((Path(dirpath) / f, label))
    return classes, items


def scan_split(root: Path, classes: list[str] | None = None,
               ) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class folders of ``root`` and its image files with their labels, checked: class
    folders exist (the same as the training split's ``classes`` when given), hold images, and
    a training split has at least two."""
    found, items = find_images(root)
    if not found:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/*.png, one folder "
                        "per class, or train/ and test/ holding them)")
    if classes is not None and found != classes:
        raise DataError(f"{root}: class folders {found} differ from the training split's "
                        f"{classes}")
    if not items:
        raise DataError(f"{root}: no image files ({', '.join(EXTENSIONS)}) in class folders")
    if classes is None and len(found) < 2:
        raise DataError(f"{root}: a classifier needs at least 2 class folders, found "
                        f"{len(found)} ({found[0]!r})")
    return found, items


def _read_split(items: list[tuple[Path, int]], cache_dir: Path | None, grey: bool,
                ) -> tuple[Split, Path | None]:
    """The split from its cache file, or decoded, with the cache file still to write (None
    when it came from the cache or there is no cache)."""
    key = hashlib.blake2b(digest_size=12)
    for path, label in items:
        st = path.stat()
        key.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}|{grey}\n".encode())
    cache = cache_dir / f"imagefolder-{key.hexdigest()}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            return Split(blob["x"], blob["y"]), None
        except Exception:  # an unreadable cache file is decoded again and replaced
            pass
    mode = "L" if grey else "RGB"

    def decode(path: Path) -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert(mode)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot be decoded as an image ({exc})") from None

    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(pool.map(decode, (p for p, _ in items)))
    # Images of another size than the most common one are resized to it (bilinear).
    width, height = Counter(im.size for im in images).most_common(1)[0][0]
    arrays = np.stack([np.asarray(im if im.size == (width, height)
                                  else im.resize((width, height), Image.BILINEAR))
                       for im in images])
    x = torch.from_numpy(arrays.reshape(len(images), height, width, -1)).permute(0, 3, 1, 2)
    split = Split(x.contiguous(), torch.tensor([lab for _, lab in items], dtype=torch.int64))
    return split, cache


def load_imagefolder(root: Path, cache_dir: Path | None = None, grey: bool = False,
                     augment: Augment | None = None) -> RawDataset:
    """Loads ``root/train`` (or ``root`` itself when it holds class folders) and ``root/test``.

    Both splits are checked before either is decoded, and decoded before either is cached: a
    mistake in the test split leaves nothing written.
    """
    if not root.is_dir():
        what = "not a directory" if root.exists() else "no such directory"
        raise DataError(f"{root}: {what} (expected class folders, or train/ and test/ holding "
                        "class folders)")
    train_root = root / "train" if (root / "train").is_dir() else root
    classes, train_items = scan_split(train_root)
    test_items = scan_split(root / "test", classes)[1] if (root / "test").is_dir() else None
    train, train_cache = _read_split(train_items, cache_dir, grey)
    test, test_cache = _read_split(test_items, cache_dir, grey) if test_items else (None, None)
    for split, cache in ((train, train_cache), (test, test_cache)):
        if split is not None and cache is not None:
            _write_cache(split, cache)
    if augment is None:
        augment = Augment(crop_padding=max(1, train.x.shape[-1] // 8), hflip=True)
    return RawDataset(train=train, test=test, class_names=tuple(classes), augment=augment)
