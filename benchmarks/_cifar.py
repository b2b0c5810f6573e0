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
