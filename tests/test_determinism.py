"""The same seed and inputs give the same search: the parameters a study samples, the data
split, and the base model's weights, bit for bit."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from edgeslim.basemodel import obtain_base_model
from edgeslim.budget import load_budget
from edgeslim.data import load_dataset
from edgeslim.models import build_model
from edgeslim.search.config import SearchConfig
from edgeslim.search.objective import directions
from edgeslim.search.samplers import make_sampler
from edgeslim.search.study import build_space
from edgeslim.spaces import StagedSpace
from edgeslim.training import TrainRecipe
from toys import PI4

# Past the 10 random start-up trials of TPE and GP, so that their models sample too.
TRIALS = 13


@pytest.fixture(scope="module")
def space(digits) -> StagedSpace:
    """The space the default search builds: ResNet-20 on digits, the default stages."""
    config = SearchConfig(budget=load_budget(PI4))
    return build_space(config, build_model("resnet20", digits.in_channels, digits.num_classes),
                       digits)


def fake_values(params: dict) -> tuple[list[float], float]:
    """Stand-ins for a trial's accuracy, MACs and latency and for one constraint, computed
    from its parameters alone (no training), so that they are the same for the same
    parameters."""
    ratios = [v for k, v in params.items() if k.startswith("prune/") and isinstance(v, float)]
    removed = sum(ratios) / max(1, len(ratios))
    stages = len(str(params["stages/order"]).split(">"))
    values = [0.99 - 0.2 * removed * removed, 1.0 - removed, 1.0 - 0.5 * removed + 0.1 * stages]
    return values, 0.5 - removed  # feasible once half the channels are gone


def sampled(space: StagedSpace, sampler: str, seed: int) -> list[dict]:
    """The parameters of ``TRIALS`` trials of an in-memory study, as the search asks them."""
    study = optuna.create_study(directions=directions(["macs", "latency_ms"]),
                                sampler=make_sampler(sampler, seed))
    for _ in range(TRIALS):
        trial = study.ask()
        space(trial)
        values, constraint = fake_values(trial.params)
        trial.set_constraint("macs", constraint)
        study.tell(trial, values)
    return [t.params for t in study.trials]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp"])
def test_same_seed_samples_the_same_parameters(space, sampler):
    first = sampled(space, sampler, seed=0)
    assert len(first) == TRIALS and all("stages/order" in p for p in first)
    assert sampled(space, sampler, seed=0) == first
    assert sampled(space, sampler, seed=1) != first


def test_same_seed_splits_the_data_the_same_way():
    first = load_dataset("digits", Path("unused"), seed=0)
    again = load_dataset("digits", Path("unused"), seed=0)
    assert again.fingerprint == first.fingerprint
    assert torch.equal(again.val.y, first.val.y) and torch.equal(again.train.x, first.train.x)
    other = load_dataset("digits", Path("unused"), seed=1)
    assert other.fingerprint != first.fingerprint
    assert not torch.equal(other.val.y, first.val.y)


@pytest.mark.parametrize("spec", ["toys:plain_net", "toys:ResidualNet"])
def test_same_seed_trains_the_same_base_model(tmp_path, spec):
    """Trained twice from scratch (separate caches, separately loaded data), the weights are
    bit-identical. Both run with the default thread count, as the search does (results may
    differ between thread counts, not between runs with the same count). The toy CNNs run the
    same training loop as ResNet-20 in a fraction of the time."""
    recipe = TrainRecipe(steps=10, seed=0)
    first = obtain_base_model(spec, load_dataset("digits", Path("unused"), seed=0), recipe,
                              tmp_path / "a")
    again = obtain_base_model(spec, load_dataset("digits", Path("unused"), seed=0), recipe,
                              tmp_path / "b")
    assert first.trained_here and again.trained_here
    assert again.weights_path.name == first.weights_path.name  # the same cache key
    a, b = first.model.state_dict(), again.model.state_dict()
    assert list(a) == list(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    torch.manual_seed(recipe.seed)  # the initial weights both started from
    untrained = build_model(spec, 1, 10).state_dict()
    assert not torch.equal(untrained["fc.weight"], a["fc.weight"])  # training changed them
