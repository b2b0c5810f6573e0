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
