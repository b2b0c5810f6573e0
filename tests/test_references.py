"""Presets and reference trials: ratios fitted to the budget, enqueued as real trials."""

from __future__ import annotations

import optuna
import pytest
import torch

from edgeslim.errors import ConfigError
from edgeslim.search.references import (
    enqueue_references,
    fit_uniform_ratio,
    preset_candidate,
    reference_names,
    structure_measures,
)
from edgeslim.spaces import PruningSpace, StagedSpace, WeightLayer
from edgeslim.spaces.presets import PRESETS, preset
from edgeslim.stages import buildable_orders
from toys import PlainNet

X = torch.zeros(1, 1, 8, 8)
# PlainNet: conv1 1*16*9 + bn1 32 + conv2 16*32*9 + bn2 64 + fc 330 = 5178 params
BASE_PARAMS = 5178


def _space(stages=("prune", "cluster", "quantize"), **options) -> StagedSpace:
    model = PlainNet()
    pruning = PruningSpace.from_model(model, X, 10)
    layers = (WeightLayer("conv1", 144), WeightLayer("conv2", 4608), WeightLayer("fc", 320))
    return StagedSpace(pruning, layers, buildable_orders(stages), **options)


def test_uniform_ratio_is_the_smallest_that_fits():
    model, space = PlainNet(), _space()
    # Half of each group: conv1 16 -> 8 and conv2 32 -> 16 channels:
    # conv1 72 + bn1 16 + conv2 8*16*9 + bn2 32 + fc 16*10+10 = 1442 params
    half = {"conv1": 0.5, "conv2": 0.5}
    assert structure_measures(model, X, half)["params"] == 72 + 16 + 1152 + 32 + 170
    ratio = fit_uniform_ratio(model, X, space, {"params": 1442})
    # 0.35 keeps round(32 * 0.65 / 8) * 8 = 24 channels of conv2 (2114 params); 0.4 keeps 16
    assert ratio == 0.4
    fits = structure_measures(model, X, {"conv1": ratio, "conv2": ratio})
    below = structure_measures(model, X, {"conv1": ratio - 0.05, "conv2": ratio - 0.05})
    assert fits["params"] <= 1442 < below["params"]
    assert fit_uniform_ratio(model, X, space, {"latency_ms": 1.0}) == 0.0
    assert structure_measures(model, X, {})["params"] == BASE_PARAMS


def test_a_budget_no_uniform_ratio_meets_is_reported():
    with pytest.raises(ConfigError) as err:
        fit_uniform_ratio(PlainNet(), X, _space(), {"params": 100})
    assert str(err.value).startswith("no uniform pruning ratio up to --max-ratio 0.8 meets "
                                     "the budget (params ")


def test_preset_counts_fit_what_the_space_offers():
    space = _space(cluster_counts=(8, 16, 256))
    cand = preset_candidate(preset("prune-cluster-int8"), PlainNet(), X, space, {})
    # 32 per conv and 16 per linear layer, snapped down to the offered counts
    assert cand.counts == {"conv1": 16, "conv2": 16, "fc": 16}
    assert (cand.order, cand.quantize) == (("prune", "cluster", "quantize"), "int8_static")
    assert cand.ratios == {"conv1": 0.0, "conv2": 0.0}


def test_references_are_enqueued_as_real_trials():
    space = _space()
    study = optuna.create_study(directions=["maximize"])
    names = enqueue_references(study, space, PlainNet(), X, {"params": 1442})
    generic = [name for name, p in PRESETS.items() if not p.models]
    assert generic == ["prune-cluster-int8", "prune-dynamic-int8", "uniform", "complexity-pa",
                       "complexity-fa", "complexity-ma"]
    trials = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["reference"] for t in trials] == names
    # Every rule is in the study: as its own trial, or named on the trial it would repeat.
    assert sorted(n for t in trials for n in reference_names(t)) == sorted(generic)
    first = space(optuna.trial.FixedTrial(trials[0].system_attrs["fixed_params"]))
    assert first.order == ("prune", "cluster", "quantize") and set(first.ratios.values()) == {0.4}
    for t in trials:  # each just meets the budget: one grid step less breaks it
        ratios = space(optuna.trial.FixedTrial(t.system_attrs["fixed_params"])).ratios
        assert structure_measures(PlainNet(), X, ratios)["params"] <= 1442


def test_complexity_allocations_reach_budgets_beyond_max_ratio():
    """PlainNet's memory shares are 0.599 (conv1) and 0.401 (conv2). Only both groups at the
    largest ratio, 0.8, meet 770 params (8 channels each); at scale 0.8 conv2 loses 0.55 and
    keeps 16, so the scale grows on (conv1 capped at 0.8) to 0.97, where conv2 loses 0.65 and
    keeps 8 (snapped to a multiple of 8)."""
    space = _space(("prune",))
    cand = preset_candidate(preset("complexity-ma"), PlainNet(), X, space, {"params": 770})
    assert cand.ratios == {"conv1": 0.8, "conv2": 0.65}
    assert structure_measures(PlainNet(), X, cand.ratios)["params"] == 770
    below = preset_candidate(preset("complexity-ma"), PlainNet(), X, space, {"params": 1442})
    assert below.ratios == {"conv1": 0.6, "conv2": 0.4}


def test_presets_the_space_cannot_sample_are_skipped():
    study = optuna.create_study(directions=["maximize"])
    assert enqueue_references(study, _space(("prune",)), PlainNet(), X, {}) == ["uniform"]
    # Without limits every allocation prunes nothing, whatever criterion would rank the
    # channels: they all build the base model, one trial.
    (uniform,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert reference_names(uniform) == ["uniform", "complexity-pa", "complexity-fa",
                                        "complexity-ma"]


def test_references_no_uniform_ratio_can_fit_are_left_out():
    study = optuna.create_study(directions=["maximize"])
    assert enqueue_references(study, _space(), PlainNet(), X, {"params": 100}) == []
    with pytest.raises(ConfigError):
        enqueue_references(study, _space(), PlainNet(), X, {"params": 100}, ["uniform"])


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        preset("deep-compression")
    assert str(err.value) == ("--preset: unknown preset 'deep-compression'; valid: "
                              "prune-cluster-int8, prune-dynamic-int8, uniform, "
                              "convnext-prune-dynamic-int8, complexity-pa, complexity-fa, "
                              "complexity-ma, prune-finetune-int8-kmeans, prune-retrain-int8")
