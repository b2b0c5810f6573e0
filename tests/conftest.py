"""Shared fixtures (the toy models live in toys.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", module="torch.onnx")


@pytest.fixture(scope="session")
def digits():
    from edgeslim.data import load_dataset

    return load_dataset("digits", Path("unused"))


@pytest.fixture
def example() -> torch.Tensor:
    return torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="session")
def searched(tmp_path_factory):
    """The work directory of a 3-trial search on digits under the Pi 4 budget (the digits
    defaults: 30 base epochs, 5 fine-tune epochs), shared by the command-line tests."""
    from edgeslim.cli import main
    from toys import PI4

    workdir = tmp_path_factory.mktemp("run")
    assert main(["--budget", str(PI4), "--trials", "3", "--workdir", str(workdir)]) == 0
    return workdir
