"""The CIFAR-10 archive of ../shared/data, extracted once for the benchmark scripts."""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path


def extract(archive: Path) -> Path:
    """The folder holding ``train/<class>/*.jpg``, extracted from ``archive`` into the temporary
    directory the first time; exits with a message when the archive is missing."""
    if not archive.is_file():
        sys.exit(f"no CIFAR-10 archive at {archive}; pass --archive PATH "
                 "(see ../shared/data/README.md)")
    target = Path(tempfile.gettempdir()) / "edgeslim-cifar10"
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def cifar_split(archive: Path, per_class: int, test_per_class: int) -> Path:
    """An image-folder tree of links: the first ``per_class`` images of each class as train/,
    the next ``test_per_class`` as test/ (never used for a choice: only reported)."""
    full = extract(archive)
    root = Path(tempfile.gettempdir()) / f"edgeslim-cifar10-{per_class}-{test_per_class}"
    for cls in sorted(p for p in (full / "train").iterdir() if p.is_dir()):
        images = sorted(cls.iterdir())
        for split, chosen in (("train", images[:per_class]),
                              ("test", images[per_class:per_class + test_per_class])):
            target = root / split / cls.name
            if target.is_dir():
                continue
            target.mkdir(parents=True)
            for image in chosen:
                (target / image.name).symlink_to(image)
    return root
