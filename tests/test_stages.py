"""Clustering, unstructured sparsity, tied fine-tuning and stage orders, with exact values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeslim.compress import cluster_weights, sparsify, tied
from edgeslim.compress.cluster import assign, cluster_tensor, codebook
from edgeslim.errors import CandidateError
from edgeslim.stages import STAGES, Stage, buildable_orders, order_problem, parse_order, stage
from toys import PlainNet


def test_linear_codebook_spans_the_range_evenly():
    values = np.array([0.0, 0.1, 0.4, 0.65, 0.8, 0.9, 1.0])
    assert codebook(values, 5, "linear").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("method", ["kmeans", "density", "linear"])
def test_few_distinct_values_are_their_own_codebook(method):
    assert codebook(np.array([2.0, 1.0, 2.0, 1.0]), 4, method).tolist() == [1.0, 2.0]


def test_assign_picks_the_nearest_centroid():
    centroids = np.array([-1.0, 0.0, 2.0])
    assert assign(np.array([-0.6, -0.4, 0.9, 1.1, 5.0]), centroids).tolist() == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("method", ["kmeans", "density"])
def test_kmeans_centroids_are_their_members_means(method):
    w = torch.tensor([1.0, 1.25, 0.75, 5.0, 5.5, 4.5])
    assert cluster_tensor(w, 2, method).tolist() == [1.0, 1.0, 1.0, 5.0, 5.0, 5.0]


def test_clustering_keeps_zeros_and_caps_distinct_values():
    torch.manual_seed(0)
    m = PlainNet()
    sparsify(m, 0.5, ["conv2"])
    distinct = cluster_weights(m, {"conv2": 16, "fc": 8})
    w = m.conv2.weight
    assert int((w == 0).sum()) == 4608 // 2  # the zeros survive, and count as one value
    assert distinct == {"conv2": int(torch.unique(w).numel()), "fc": 8}
    assert distinct["conv2"] <= 17


def test_cluster_count_above_the_weights_leaves_the_layer_as_it_is():
    torch.manual_seed(0)
    m = PlainNet()
    before = m.conv1.weight.clone()
    assert cluster_weights(m, {"conv1": 1000}) == {"conv1": 144}
    assert torch.equal(m.conv1.weight, before)


@pytest.mark.parametrize("counts, message", [
    ({"conv1": 1}, "cannot cluster 'conv1' into 1 clusters (need k >= 2)"),
    ({"bn1": 4}, "cannot cluster 'bn1': not a convolution or linear layer"),
])
def test_bad_cluster_requests(counts, message):
    with pytest.raises(CandidateError) as err:
        cluster_weights(PlainNet(), counts)
    assert str(err.value) == message


def test_sparsify_zeros_exactly_the_smallest_fraction():
    torch.manual_seed(0)
    m = PlainNet()
    first_kept = m.conv2.weight.detach().abs().flatten().sort().values[1382]
    fractions = sparsify(m, 0.3)
    # floor(0.3 * n) weights per layer: conv1 144 -> 43, conv2 4608 -> 1382, fc 320 -> 96
    zeros = {name: int((getattr(m, name).weight == 0).sum()) for name in fractions}
    assert zeros == {"conv1": 43, "conv2": 1382, "fc": 96}
    assert fractions == pytest.approx({"conv1": 43 / 144, "conv2": 1382 / 4608, "fc": 0.3})
    kept = m.conv2.weight.detach()
    assert float(kept[kept != 0].abs().min()) == float(first_kept)


def _centroid_gradient(weight, grad, mode):
    m = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        m[0].weight.copy_(weight)
    with tied(m, clustered={"0"}, centroid_gradient=mode):
        (m[0].weight * grad).sum().backward()
        book = m[0].parametrizations.weight[0].codebook
        return book.tolist(), book.grad.tolist()


def test_centroid_gradient_is_the_mean_of_its_members_gradients():
    # value 1.0 sits at (0,0), (0,2) and (1,1); value 2.0 at (0,1) and (1,0)
    w = torch.tensor([[1.0, 2.0, 1.0], [2.0, 1.0, 2.5]])
    g = torch.tensor([[0.5, 3.0, 2.5], [7.0, 12.0, -1.0]])
    assert _centroid_gradient(w, g, "mean") == ([1.0, 2.0, 2.5],
                                                [(0.5 + 12.0 + 2.5) / 3, (3.0 + 7.0) / 2, -1.0])
    assert _centroid_gradient(w, g, "sum") == ([1.0, 2.0, 2.5],
                                               [0.5 + 12.0 + 2.5, 3.0 + 7.0, -1.0])


def test_unknown_centroid_gradient_is_refused():
    with pytest.raises(ValueError, match="centroid gradient"):
        _centroid_gradient(torch.ones(1, 2), torch.ones(1, 2), "median")


def test_tied_training_keeps_values_shared_and_zeros_zero():
    torch.manual_seed(0)
    m = PlainNet()
    sparsify(m, 0.5, ["conv2"])
    cluster_weights(m, {"conv2": 8, "fc": 4})
    zeros = m.conv2.weight == 0
    x = torch.randn(4, 1, 8, 8)
    opt = None
    with tied(m, clustered={"conv2", "fc"}, masked={"conv2"}):
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    assert torch.equal(m.conv2.weight == 0, zeros)
    assert torch.unique(m.conv2.weight).numel() <= 9 and torch.unique(m.fc.weight).numel() <= 4
    # plain trainable parameters again, so later stages (pruning traces autograd) see them
    assert type(m.conv2) is nn.Conv2d and m.conv2.weight.requires_grad


def test_pruning_after_clustering_finds_every_layer():
    from edgeslim.compress import apply_pruning

    m = PlainNet()
    cluster_weights(m, {"conv1": 8, "conv2": 8})
    with tied(m, clustered={"conv1", "conv2"}):
        pass
    assert apply_pruning(m, torch.zeros(1, 1, 8, 8), {"conv1": 0.5, "conv2": 0.5}) == \
        {"conv1": 8, "conv2": 16}
    assert m.conv2.weight.shape == (16, 8, 3, 3)


def test_buildable_orders_of_the_default_stages():
    assert buildable_orders(("prune", "cluster", "quantize")) == (
        ("prune",), ("cluster",), ("quantize",),
        ("prune", "cluster"), ("prune", "quantize"), ("cluster", "prune"),
        ("cluster", "quantize"),
        ("prune", "cluster", "quantize"), ("cluster", "prune", "quantize"),
    )


def test_sparsify_never_follows_cluster():
    orders = buildable_orders(("sparsify", "cluster"))
    assert ("sparsify", "cluster") in orders and ("cluster", "sparsify") not in orders


@pytest.mark.parametrize("text, problem", [
    ("", "an order needs at least one stage"),
    ("prune,shrink", "unknown stage 'shrink' (stages: prune, sparsify, cluster, quantize)"),
    ("prune,cluster,prune", "stage 'prune' appears more than once"),
    ("quantize,prune", "quantize must be the last stage (it works on the exported file)"),
    ("cluster>sparsify", "sparsify cannot follow cluster (its zeros would add a value to "
                         "every codebook)"),
    ("prune > cluster > quantize", None),
])
def test_order_problems(text, problem):
    assert order_problem(parse_order(text)) == problem


def test_an_unknown_stage_lists_the_registered_ones():
    with pytest.raises(KeyError, match="unknown stage 'shrink'; valid: prune, sparsify, "
                                       "cluster, quantize"):
        stage("shrink")


class _Halve(Stage):
    """A stage registered by a test: halves every weight, never after clustering."""

    name = "halve"
    short = "H"
    not_after = {"cluster": "it would move the shared values"}

    def suggest(self, space, trial):
        return {}

    def params_for(self, space, candidate):
        return {}

    def key(self, space, candidate, runs):
        return {"halved": runs}

    def apply(self, model, candidate, example, seed=0, context=None):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        return {"halved": True}


def test_orders_follow_the_rules_the_registered_stages_state(monkeypatch):
    monkeypatch.setitem(STAGES, "halve", _Halve())
    orders = buildable_orders(("halve", "cluster", "quantize"))
    assert ("halve", "cluster", "quantize") in orders
    assert ("cluster", "halve") not in orders and ("halve", "quantize") in orders
    assert order_problem(("cluster", "halve")) == \
        "halve cannot follow cluster (it would move the shared values)"
    assert order_problem(("quantize", "halve")) == \
        "quantize must be the last stage (it works on the exported file)"


def test_a_registered_stage_takes_part_in_the_build_key_and_the_build(monkeypatch, digits,
                                                                      tmp_path):
    from edgeslim.budget import Runtime
    from edgeslim.evaluators import StagedEvaluator
    from edgeslim.spaces import Candidate, PruningSpace, StagedSpace, WeightLayer
    from edgeslim.training import TrainRecipe

    monkeypatch.setitem(STAGES, "halve", _Halve())
    base = PlainNet().eval()
    space = StagedSpace(PruningSpace.from_model(base, torch.zeros(1, 1, 8, 8), 10),
                        (WeightLayer("conv1", 144),), orders=(("halve",), ("prune",)))
    halved = Candidate(order=("halve",))
    assert '"halved": true' in space.built_as(halved)
    assert '"halved": false' in space.built_as(Candidate(order=("prune",)))
    evaluator = StagedEvaluator(base, digits, TrainRecipe(epochs=0), Runtime())
    built = evaluator.build(halved, tmp_path)
    assert built.info["halved"] is True and "halve_seconds" in built.info
    assert torch.equal(built.model.conv1.weight, base.conv1.weight * 0.5)
