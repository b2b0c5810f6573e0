"""The pruning space under FixedTrial, and how measures become Optuna constraints."""

from __future__ import annotations

import optuna
import pytest
import torch

from edgeslim.budget import parse_budget
from edgeslim.compress import PrunableGroup
from edgeslim.errors import ConfigError
from edgeslim.evaluators import Caps
from edgeslim.search.objective import directions
from edgeslim.search.study import resolve_caps
from edgeslim.spaces import Candidate, PruningSpace
from toys import ResidualNet

GROUPS = (PrunableGroup("conv1", 32, ("conv1",)), PrunableGroup("layer1.0.conv1", 64, ()))


def test_space_maps_a_fixed_trial_to_a_candidate():
    space = PruningSpace(GROUPS)
    trial = optuna.trial.FixedTrial({"prune/conv1": 0.25, "prune/layer1.0.conv1": 0.5,
                                     "prune/importance": "taylor"})
    assert space(trial) == Candidate(prune_ratios=(("conv1", 0.25), ("layer1.0.conv1", 0.5)),
                                     importance="taylor", round_to=8)


def test_space_parameter_names_are_stable_and_readable():
    space = PruningSpace.from_model(ResidualNet(), torch.zeros(1, 1, 8, 8), 10)
    params = space.params_for(Candidate(prune_ratios=tuple((g.name, 0.5) for g in space.groups),
                                        importance="taylor"))
    assert sorted(params) == ["prune/block_conv1", "prune/conv1", "prune/importance"]


def test_params_for_refuses_a_criterion_the_space_does_not_offer():
    space = PruningSpace(GROUPS, importances=("l1",))
    with pytest.raises(ConfigError) as info:
        space.params_for(Candidate(importance="l2"))
    assert str(info.value) == "importance 'l2' is not among the searched ones (l1)"


def test_params_for_round_trips_through_the_space():
    space = PruningSpace(GROUPS, step=0.05)
    cand = Candidate(prune_ratios=(("conv1", 0.35), ("layer1.0.conv1", 0.8)),
                     importance="taylor")
    assert space(optuna.trial.FixedTrial(space.params_for(cand))) == cand
    # off-grid or out-of-range ratios are put on the grid
    off = Candidate(prune_ratios=(("conv1", 0.33), ("layer1.0.conv1", 0.95)), importance="taylor")
    assert space.params_for(off)["prune/conv1"] == 0.35
    assert space.params_for(off)["prune/layer1.0.conv1"] == 0.8


def test_space_uses_optuna_distributions():
    study = optuna.create_study()
    study.optimize(lambda t: sum(PruningSpace(GROUPS)(t).ratios.values()), n_trials=1)
    dist = study.trials[0].distributions["prune/conv1"]
    assert (dist.low, dist.high, dist.step) == (0.0, 0.8, 0.05)


@pytest.mark.parametrize("options, message", [
    ({"max_ratio": 1.0}, "--max-ratio: must be > 0 and < 1, got 1.0"),
    ({"round_to": 0}, "--round-to: must be >= 1 channel, got 0"),
    ({"importances": ("fisher",)}, "--importance: must be among l1, l2, bn_scale, lamp, "
                                   "taylor, hessian, none, got fisher"),
])
def test_space_options_are_validated(options, message):
    with pytest.raises(ConfigError) as info:
        PruningSpace(GROUPS, **options)
    assert str(info.value) == message


def test_candidate_dict_round_trip():
    cand = Candidate(prune_ratios=(("a", 0.5),), importance="l1", round_to=16)
    assert Candidate.from_dict(cand.to_dict()) == cand


def test_constraint_signs():
    caps = Caps(limits={"macs": 100.0, "latency_ms": 2.0}, min_val_acc=0.8)
    fits = caps.constraints({"macs": 50.0, "latency_ms": 2.0, "val_acc": 0.9})
    assert fits == pytest.approx({"macs": -0.5, "latency_ms": 0.0, "val_acc": -0.125})
    breaks = caps.constraints({"macs": 150.0, "latency_ms": 1.0, "val_acc": 0.7})
    assert breaks == pytest.approx({"macs": 0.5, "latency_ms": -0.5, "val_acc": 0.125})
    assert caps.violations({"macs": 150.0, "latency_ms": 1.0}, ("macs", "latency_ms")) == \
        ["macs 150 > 100"]


def test_caps_resolve_relative_limits_and_accuracy_drop():
    budget = parse_budget({"device": {"name": "b"},
                           "limits": {"flops": "50%", "size": "1MB", "accuracy_drop": "2%"},
                           "objectives": ["flops", "latency"]})
    caps = resolve_caps(budget, {"macs": 40e6, "size_bytes": 3e6, "val_acc": 0.91})
    assert caps.limits == {"macs": 20e6, "size_bytes": 1e6}
    assert caps.min_val_acc == pytest.approx(0.89)
    assert directions(budget.objectives) == ["maximize", "minimize", "minimize"]
