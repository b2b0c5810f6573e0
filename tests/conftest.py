"""Shared fixtures (the toy models live in toys.py)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", module="torch.onnx")


def pytest_configure(config: pytest.Config) -> None:
    """Train with the idle cores, as a search does (``edgeslim.cores``): the fixtures and unit
    tests that train call the training loop directly, outside a search."""
    from edgeslim.cores import training_threads

    torch.set_num_threads(training_threads())


@pytest.fixture(scope="session")
def digits():
    from edgeslim.data import load_dataset

    return load_dataset("digits", Path("unused"))


@pytest.fixture
def example() -> torch.Tensor:
    return torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="session")
def digits_base(tmp_path_factory, digits) -> Path:
    """The base-model cache (``cache/base`` of a work directory) holding the ResNet-20 a search
    on digits trains with its defaults (30 epochs, seed 0), trained once per session. The
    cache key (model, data, recipe) makes sharing it safe: a search with other options trains
    its own."""
    from edgeslim.basemodel import obtain_base_model
    from edgeslim.data import dataset_entry
    from edgeslim.training import TrainRecipe

    cache = tmp_path_factory.mktemp("base-cache")
    recipe = TrainRecipe(epochs=dataset_entry("digits").base_epochs, seed=0)
    obtain_base_model("resnet20", digits, recipe, cache)
    return cache


@pytest.fixture
def workdir(tmp_path, digits_base) -> Path:
    """A fresh work directory whose base-model cache holds the session's digits ResNet-20."""
    path = tmp_path / "w"
    shutil.copytree(digits_base, path / "cache" / "base")
    return path


@pytest.fixture(scope="session")
def searched(tmp_path_factory, digits_base):
    """The work directory of a 3-trial search on digits under the Pi 4 budget (the digits
    defaults: 30 base epochs, 5 fine-tune epochs), shared by the command-line tests."""
    from edgeslim.cli import main
    from toys import PI4

    workdir = tmp_path_factory.mktemp("run")
    shutil.copytree(digits_base, workdir / "cache" / "base")
    assert main(["--budget", str(PI4), "--trials", "3", "--workdir", str(workdir)]) == 0
    return workdir
