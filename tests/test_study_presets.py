"""The studies' presets: complexity-driven allocation, the parameter share a study kept, cluster
counts from a reduction of unique weights, and which searches enqueue them."""

from __future__ import annotations

import optuna
import pytest
import torch

from edgeslim.search.references import enqueue_references, preset_candidate, structure_measures
from edgeslim.spaces import PruningSpace, StagedSpace, WeightLayer
from edgeslim.spaces.complexity import complexity_ratios, group_shares, layer_complexity
from edgeslim.spaces.presets import PRESETS, preset
from edgeslim.stages import buildable_orders
from toys import PlainNet

X = torch.zeros(1, 1, 8, 8)


def _space(**options) -> StagedSpace:
    pruning = PruningSpace.from_model(PlainNet(), X, 10, **options)
    layers = (WeightLayer("conv1", 144), WeightLayer("conv2", 4608), WeightLayer("fc", 320))
    return StagedSpace(pruning, layers, buildable_orders(("prune", "cluster", "quantize")))


@pytest.mark.parametrize("measure, conv1, conv2, fc", [
    ("params", 144, 4608, 320),  # weight elements
    ("flops", 144 * 64, 4608 * 64, 320),  # weights times the 8x8 output positions
    ("memory", 16 * 64, 32 * 64, 10),  # output activation elements
])
def test_layer_complexity_of_plainnet(measure, conv1, conv2, fc):
    assert layer_complexity(PlainNet(), X, measure) == {"conv1": conv1, "conv2": conv2, "fc": fc}


def test_group_shares_sum_the_layers_each_group_touches():
    # group conv1 touches conv1 (out) and conv2 (in); group conv2 touches conv2 and fc
    shares = group_shares(PlainNet(), X, _space().pruning.groups, "memory")
    assert shares == {"conv1": (1024 + 2048) / 5130, "conv2": (2048 + 10) / 5130}


def test_complexity_ratios_follow_the_shares():
    assert complexity_ratios({"a": 0.6, "b": 0.3, "c": 0.1}, 0.5, 0.05, 0.8) == \
        {"a": 0.5, "b": 0.25, "c": 0.1}
    assert complexity_ratios({"a": 0.5, "b": 0.5}, 0.9, 0.05, 0.8) == {"a": 0.8, "b": 0.8}


def test_memory_allocation_prunes_the_larger_activations_more():
    """Memory shares 0.599 and 0.401: the fitted scale 0.3 removes 0.3 of conv1 and
    0.3 * 0.401 / 0.599 = 0.2 of conv2; 8 and 24 channels kept give 2114 params <= 2500."""
    cand = preset_candidate(preset("complexity-ma"), PlainNet(), X, _space(), {"params": 2500})
    assert cand.ratios == {"conv1": 0.3, "conv2": 0.2}
    assert cand.order == ("prune",)
    assert cand.importance == _space().pruning.importances[0]  # "none" is not offered
    assert structure_measures(PlainNet(), X, cand.ratios)["params"] == 2114


def test_unranked_preset_keeps_its_criterion_where_offered():
    space = _space(importances=("none",))
    assert preset_candidate(preset("complexity-pa"), PlainNet(), X, space, {}).importance == \
        "none"


def test_convnext_preset_keeps_at_most_the_studys_share_of_parameters():
    """0.41 of 5178 params is 2123: ratio 0.25 keeps 3930 params, 0.3 keeps 2114."""
    cand = preset_candidate(preset("convnext-prune-dynamic-int8"), PlainNet(), X, _space(), {})
    assert cand.ratios == {"conv1": 0.3, "conv2": 0.3}
    assert (cand.order, cand.quantize) == (("prune", "quantize"), "int8_dynamic")


def test_kmeans_preset_clusters_to_80x_fewer_unique_weights():
    cand = preset_candidate(preset("prune-finetune-int8-kmeans"), PlainNet(), X, _space(), {})
    # 144 // 80 = 1 (below every offered count: the smallest, 8), 4608 // 80 = 57 -> 32,
    # 320 // 80 = 4 -> 8
    assert cand.counts == {"conv1": 8, "conv2": 32, "fc": 8}
    assert (cand.order, cand.quantize) == (("prune", "cluster", "quantize"), "int8_static")


# On PlainNet under 2,500 params every complexity-driven allocation keeps 8 and 24 channels
# (MA's 0.2 on conv2 snaps to the 24 that PA's and FA's 0.3 keep): one trial, named on PA. In a
# space offering L1 and L2 it differs from the uniform preset's by its criterion (L1, the
# space's first, for PA's unranked channels; L2 for uniform).
CRITERIA = ("l1", "l2", "bn_scale", "lamp")
GENERIC = ["prune-cluster-int8", "prune-dynamic-int8", "uniform", "complexity-pa"]


@pytest.mark.parametrize("model, names", [
    (None, GENERIC),
    ("resnet34", ["prune-finetune-int8-kmeans", *GENERIC]),
    ("cnn1d", ["prune-retrain-int8", *GENERIC]),
])
def test_a_studys_presets_are_enqueued_for_its_models(model, names):
    study = optuna.create_study(directions=["maximize"])
    assert enqueue_references(study, _space(importances=CRITERIA), PlainNet(), X,
                              {"params": 2500},
                              model_name=model) == names
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["reference"] for t in waiting] == names
    assert waiting[-1].user_attrs["same_as"] == ["complexity-fa", "complexity-ma"]


def test_every_study_preset_names_registered_models():
    from edgeslim.models import MODELS

    for p in PRESETS.values():
        assert set(p.models) <= set(MODELS), p.name


@pytest.mark.parametrize("method", ["kmeans", "density", "linear"])
def test_every_clustering_method_is_a_search_choice(method):
    from edgeslim._options import stage_options_of
    from edgeslim.cli import build_parser
    from edgeslim.spaces import Candidate

    args = build_parser().parse_args(["search", "--budget", "b.yaml", "--cluster-methods",
                                      "kmeans,density,linear"])
    methods = stage_options_of(args)["cluster_methods"]
    assert methods == ("kmeans", "density", "linear")
    pruning = _space().pruning
    space = StagedSpace(pruning, _space().layers, (("cluster",),), cluster_methods=methods)
    cand = Candidate(order=("cluster",), cluster_counts=(("conv1", 8), ("conv2", 16),
                                                          ("fc", 8)), cluster_method=method)
    assert space(optuna.trial.FixedTrial(space.params_for(cand))) == cand
