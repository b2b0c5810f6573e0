"""Counting and pruning on toy models whose numbers are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from edgeslim.compress import apply_pruning, kept_channels, prunable_groups
from edgeslim.errors import CandidateError
from edgeslim.evaluators import count_macs, count_params
from toys import DepthwiseNet, PlainNet, ResidualNet

X = torch.zeros(1, 1, 8, 8)


def test_plain_net_counts():
    m = PlainNet()
    # conv1 1*16*9 + bn1 2*16 + conv2 16*32*9 + bn2 2*32 + fc 32*10+10
    assert count_params(m, X).value == 144 + 32 + 4608 + 64 + 330
    # per 8x8 position: conv1 16*9, conv2 32*16*9; batch norm 2 per element (scale and
    # shift, fvcore's eval-mode rule); global pooling 1 per input element; fc 32*10
    assert count_macs(m, X).value == 64 * (16 * 9 + 32 * 16 * 9) + 2 * 64 * (16 + 32) \
        + 64 * 32 + 320


def test_uncounted_operators_are_reported():
    count = count_macs(ResidualNet(), X)
    assert dict(count.uncounted_ops).get("aten::add", 0) + \
        dict(count.uncounted_ops).get("aten::add_", 0) >= 1


@pytest.mark.parametrize("channels, ratio, expected", [
    (64, 0.0, 64), (64, 0.5, 32), (64, 0.3, 48), (64, 0.8, 16), (16, 0.6, 8), (16, 0.3, 8),
    (16, 0.2, 16), (32, 0.75, 8), (24, 0.5, 16), (10, 0.0, 10),
])
def test_kept_channels_snap_to_multiples_of_8(channels, ratio, expected):
    assert kept_channels(channels, ratio) == expected


def test_kept_channels_other_multiple():
    assert kept_channels(64, 0.5, round_to=16) == 32
    assert kept_channels(64, 0.3, round_to=1) == 45
    with pytest.raises(ValueError):
        kept_channels(64, 1.0)


def test_groups_follow_dependencies():
    plain = prunable_groups(PlainNet(), X, 10)
    assert [(g.name, g.channels) for g in plain] == [("conv1", 16), ("conv2", 32)]
    assert plain[0].layers == ("conv1", "conv2")
    residual = prunable_groups(ResidualNet(), X, 10)
    # The stem and the block's last conv write to the same residual stream: one group.
    assert [g.name for g in residual] == ["conv1", "block_conv1"]
    assert set(residual[0].layers) == {"conv1", "block_conv1", "block_conv2", "fc"}
    depthwise = prunable_groups(DepthwiseNet(), X, 10)
    # The depthwise conv follows the expand conv; project has 24 > 8 channels.
    assert [g.name for g in depthwise] == ["stem", "expand", "project"]
    assert "dw" in depthwise[1].layers


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "lamp"])
def test_pruning_really_removes_channels(importance):
    m = PlainNet()
    kept = apply_pruning(m, X, {"conv1": 0.5, "conv2": 0.5}, importance)
    assert kept == {"conv1": 8, "conv2": 16}
    assert (m.conv1.out_channels, m.conv2.in_channels, m.conv2.out_channels,
            m.fc.in_features) == (8, 8, 16, 16)
    assert count_params(m, X).value == 72 + 16 + 1152 + 32 + 170
    assert m(X).shape == (1, 10)


def test_pruning_keeps_the_most_important_channels():
    m = PlainNet()
    with torch.no_grad():
        m.conv1.weight.zero_()
        m.conv1.weight[[1, 3, 5, 7, 9, 11, 13, 15]] = 1.0  # odd channels are the large ones
        expected = m.conv1.weight[[1, 3, 5, 7, 9, 11, 13, 15]].clone()
    apply_pruning(m, X, {"conv1": 0.5}, "l1")
    assert torch.equal(m.conv1.weight, expected)


def test_residual_and_depthwise_pruning_run():
    r = ResidualNet()
    apply_pruning(r, X, {"conv1": 0.75, "block_conv1": 0.5})
    assert (r.conv1.out_channels, r.block_conv2.out_channels, r.block_conv1.out_channels) == \
        (8, 8, 16)
    d = DepthwiseNet()
    apply_pruning(d, X, {"expand": 0.5})
    assert (d.expand.out_channels, d.dw.in_channels, d.dw.out_channels, d.dw.groups) == \
        (32, 32, 32, 32)
    assert r(X).shape == d(X).shape == (1, 10)


def test_unknown_layer_is_a_candidate_error():
    with pytest.raises(CandidateError, match="no layer named 'nope'"):
        apply_pruning(PlainNet(), X, {"nope": 0.5})
    with pytest.raises(CandidateError, match="is a BatchNorm2d, not prunable"):
        apply_pruning(PlainNet(), X, {"bn1": 0.5})


@pytest.mark.parametrize("net", [PlainNet, ResidualNet, DepthwiseNet])
def test_a_prunable_copy_prunes_like_the_model_without_tracing_it_again(net, monkeypatch):
    import copy

    from edgeslim.compress import graph as graph_module
    from edgeslim.compress import prunable_copy
    from edgeslim.compress import prune as prune_module

    torch.manual_seed(0)
    base = net()
    ratios = {g.name: 0.5 for g in prunable_groups(base, X, 10)}
    traced = copy.deepcopy(base)
    kept = apply_pruning(traced, X, ratios, "l1")
    first = prunable_copy(base, X)  # traces the base model's graph once
    calls = []
    trace = graph_module.dependency_graph
    for module in (graph_module, prune_module):
        monkeypatch.setattr(module, "dependency_graph",
                            lambda *a: calls.append(1) or trace(*a))
    second = prunable_copy(base, X)
    assert apply_pruning(first, X, ratios, "l1") == apply_pruning(second, X, ratios, "l1") \
        == kept
    assert calls == []  # neither copy was traced, nor the base model again
    y = torch.randn(2, 1, 8, 8)
    for pruned in (first, second):
        assert torch.equal(pruned.eval()(y), traced.eval()(y))
    assert count_params(base, X).value == count_params(net(), X).value  # base untouched


@pytest.mark.parametrize("error", [
    RecursionError("maximum recursion depth exceeded"),
    TypeError("cannot pickle 'SliceBackward0' object"),
], ids=["too-deep", "uncopyable"])
def test_a_graph_that_cannot_be_copied_is_traced_again_for_each_copy(monkeypatch, error):
    """copy.deepcopy recurses once per node along a dependency graph's chain, and a deep
    network's chain (EfficientNet's) exceeds Python's recursion limit; a transformer's graph
    (torchvision's Swin) keeps an autograd node that cannot be copied: those copies come
    without the graph, and their pruning traces one."""
    import copy

    from edgeslim.compress import graph as graph_module
    from edgeslim.compress import prunable_copy
    from edgeslim.compress import prune as prune_module

    torch.manual_seed(0)
    base = ResidualNet()
    ratios = {g.name: 0.5 for g in prunable_groups(base, X, 10)}
    expected = copy.deepcopy(base)
    kept = apply_pruning(expected, X, ratios, "l1")
    real = copy.deepcopy

    def deepcopy(obj, memo=None):
        if isinstance(obj, tuple):  # the model with its graph
            raise error
        return real(obj, memo)

    monkeypatch.setattr(graph_module.copy, "deepcopy", deepcopy)
    calls = []
    trace = graph_module.dependency_graph
    for module in (graph_module, prune_module):
        monkeypatch.setattr(module, "dependency_graph",
                            lambda *a: calls.append(1) or trace(*a))
    twins = [prunable_copy(base, X) for _ in range(2)]
    assert [apply_pruning(t, X, ratios, "l1") for t in twins] == [kept, kept]
    assert len(calls) == 3  # the base's graph once, then each copy's
    y = torch.randn(2, 1, 8, 8)
    assert all(torch.equal(t.eval()(y), expected.eval()(y)) for t in twins)


def test_spread_weights_works_through_large_layers_in_chunks(monkeypatch):
    """Each row of a layer larger than a chunk holds min(k, its nonzeros) distinct values,
    zeros stay zero, as when the layer is spread at once."""
    from edgeslim.compress import cluster

    torch.manual_seed(0)
    layer = torch.nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight[:, :25] = 0  # rows of 15 nonzeros
        layer.weight[3, 25:] = 0  # and one row of none
    zeros = layer.weight == 0
    monkeypatch.setattr(cluster, "SPREAD_CHUNK", 100)  # 2 rows at a time: 15 chunks
    assert cluster.spread_weights(layer, {"": 4}) == {"": 5}  # 4 levels and zero
    assert torch.equal(layer.weight == 0, zeros)
    assert [len(set(r[r != 0].tolist())) for r in layer.weight] == [4] * 3 + [0] + [4] * 26
