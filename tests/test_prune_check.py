"""What of a model the search may prune, found once before training: modules torch-pruning
cannot analyse are hidden from its graph and keep their channels, and groups whose pruning
breaks the model are left out of the space with the reason."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp

from edgeslim.compress import apply_pruning
from edgeslim.compress.prune import dependency_graph, prune_group
from edgeslim.compress.prune_check import check_pruning
from edgeslim.compress.untraced import WHOLE_MODEL
from edgeslim.errors import CandidateError
from edgeslim.spaces import PruningSpace
from toys import MobileNet, PlainNet, ShuffleNet, channel_shuffle

X = torch.zeros(1, 1, 8, 8)
HIDDEN_REASON = "its channels reach units.2, which torch-pruning cannot analyse"
STEM_REASON = ("torch-pruning failed to prune 'stem' to 8 channels: RuntimeError: INDICES "
               "element is out of DATA bounds, id=24 axis_dim=8")


def test_torch_pruning_cannot_build_the_graph_of_three_shuffle_units():
    """The construct the hiding is for really defeats torch-pruning."""
    with pytest.raises(ZeroDivisionError):
        tp.DependencyGraph().build_dependency(ShuffleNet().eval(), example_inputs=X)


def test_the_unit_it_cannot_analyse_is_hidden_and_the_rest_is_pruned():
    model = ShuffleNet().eval()
    check = check_pruning(model, X, 10)
    # Hiding the third unit is enough: the first two are analysed and their branches pruned.
    assert check.untraced == ("units.2",)
    assert [(g.name, g.channels) for g in check.groups] == [
        ("units.0.branch.0", 12), ("units.1.branch.0", 12), ("head", 32)]
    assert check.left_out == (("stem", HIDDEN_REASON),)
    assert check.summary() == (
        "torch-pruning cannot analyse units.2, whose layers keep every channel (clustering and "
        "quantization still reach them); 1 group(s) reaching them are not searched")
    pruned = copy.deepcopy(model)
    kept = apply_pruning(pruned, X, {g.name: 0.5 for g in check.groups}, "l1")
    assert kept == {"units.0.branch.0": 8, "units.1.branch.0": 8, "head": 16}
    assert pruned(X).shape == (1, 10)
    assert pruned.units[2].branch[0].weight.shape == (12, 12, 1, 1)  # untouched inside
    assert pruned.units[0].branch[0].weight.shape == (8, 12, 1, 1)


def test_pruning_a_group_that_reaches_a_hidden_unit_fails_the_candidate():
    with pytest.raises(CandidateError) as err:
        apply_pruning(ShuffleNet().eval(), X, {"stem": 0.5}, "l1")
    assert str(err.value) == "pruning 'stem' reaches units.2, which torch-pruning cannot analyse"


def test_a_layer_inside_a_hidden_unit_is_not_prunable():
    with pytest.raises(CandidateError) as err:
        apply_pruning(ShuffleNet().eval(), X, {"units.2.branch.0": 0.5}, "l1")
    assert str(err.value) == ("layer 'units.2.branch.0' is inside a module torch-pruning "
                              "cannot analyse")


def test_a_group_the_pruner_mishandles_is_left_out_with_the_reason():
    model = MobileNet().eval()
    check = check_pruning(model, X, 10)
    assert check.untraced == ()
    assert check.left_out == (("stem", STEM_REASON),)
    assert [(g.name, g.channels) for g in check.groups] == [
        ("cat.a", 32), ("cat.se.reduce", 16), ("head", 64)]
    assert check.summary() == "pruning stem breaks the model, so it is not searched"
    # The reason is what torch-pruning does: the grouped convs behind the shuffle are
    # pruned by channel index as if they were not grouped.
    broken = copy.deepcopy(model)
    with pytest.raises(CandidateError) as err:
        prune_group(dependency_graph(broken, X), broken.stem, list(range(24)), "stem", 8)
    assert str(err.value) == STEM_REASON


def test_a_model_torch_pruning_reads_whole_has_nothing_left_out():
    check = check_pruning(PlainNet().eval(), X, 10)
    assert (check.untraced, check.left_out, check.summary()) == ((), (), None)
    assert [(g.name, g.channels) for g in check.groups] == [("conv1", 16), ("conv2", 32)]


class Flattened(torch.nn.Module):
    """Three shuffle units written out in the model's own forward, outside any submodule:
    no module can be hidden to help."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 24, 3, padding=1)
        self.branches = torch.nn.ModuleList(torch.nn.Conv2d(12, 12, 1) for _ in range(3))
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for branch in self.branches:
            kept, changed = x.chunk(2, dim=1)
            x = channel_shuffle(torch.cat((kept, torch.relu(branch(changed))), 1), 2)
        return self.fc(x.mean((2, 3)))


def test_a_model_whose_own_forward_defeats_torch_pruning_is_searched_without_pruning():
    model = Flattened().eval()
    with pytest.raises(ZeroDivisionError):
        tp.DependencyGraph().build_dependency(model, example_inputs=X)
    check = check_pruning(model, X, 10)
    assert (check.groups, check.untraced, check.left_out) == ((), (WHOLE_MODEL,), ())
    assert check.summary() == ("torch-pruning cannot analyse the whole model, whose layers "
                               "keep every channel (clustering and quantization still reach "
                               "them)")
    space = PruningSpace.from_model(model, X, 10)
    assert space.groups == () and space.describe()["untraced"] == [WHOLE_MODEL]
    assert apply_pruning(model, X, {}, "l1") == {}  # nothing to prune: no graph is built
    # The plan counts the unpruned structure of such a model on a copy, without a graph.
    from edgeslim.compress import prunable_copy
    from edgeslim.search.repair import structure_measures

    assert prunable_copy(model, X) is not model
    assert structure_measures(model, X, {}) == {
        "params": float(sum(p.numel() for p in model.parameters())), "macs": 41712.0}


def test_the_space_records_what_was_left_out():
    space = PruningSpace.from_model(MobileNet().eval(), X, 10)
    described = space.describe()
    assert described["untraced"] == []
    assert described["left_out"] == {"stem": STEM_REASON}
    assert [g["name"] for g in described["groups"]] == ["cat.a", "cat.se.reduce", "head"]
    assert space.not_pruned() == "pruning stem breaks the model, so it is not searched"


def test_narrowing_stops_after_its_tries_with_a_hiding_that_builds(monkeypatch):
    """On a model whose analysis takes too long, the hiding reached when the tries run out is
    kept: coarser (here every top-level module: nothing is pruned), but the graph builds and
    the search starts."""
    from edgeslim.compress import untraced

    monkeypatch.setattr(untraced, "NARROWING_BUILDS", 0)
    monkeypatch.setattr(untraced, "_FOUND", {})
    model = ShuffleNet().eval()
    check = check_pruning(model, X, 10)
    assert check.untraced == tuple(name for name, _ in model.named_children())
    assert check.groups == ()
    dependency_graph(model, X)  # builds with them hidden


@pytest.mark.slow
def test_the_tries_leave_torchvision_shufflenet_narrowed_to_its_shuffling_units(monkeypatch):
    """ShuffleNetV2 at 32x32 needs 30 graph builds to narrow the hiding down to its five
    shuffling units: within ``NARROWING_BUILDS``, so the cap changes nothing for it."""
    from edgeslim.compress import untraced
    from edgeslim.compress.graph import untraced as untraced_of
    from edgeslim.models import build_model

    narrow, tries = untraced._narrow, []

    def counting(model, names, builds, left):
        def counted(hidden):
            tries.append(hidden)
            return builds(hidden)
        return narrow(model, names, counted, left)

    monkeypatch.setattr(untraced, "_narrow", counting)
    monkeypatch.setattr(untraced, "_FOUND", {})
    model = build_model("torchvision:shufflenet_v2_x0_5", 3, 10).eval()
    found = untraced_of(model, torch.zeros(1, 3, 32, 32))
    assert found == ("stage2.2", "stage3.2", "stage3.4", "stage3.6", "stage4.2")
    assert len(tries) == 30 < untraced.NARROWING_BUILDS
