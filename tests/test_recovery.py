"""What a pruned candidate gets before its fine-tune: kept-channel maps, gradient criteria,
least-squares reconstruction, batch-norm re-estimation, attention transfer, calibration."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeslim.compress import apply_pruning, quantize_onnx
from edgeslim.compress.importance import CRITERIA, criterion, loss_gradients
from edgeslim.compress.prune import KeptIndices
from edgeslim.compress.reconstruct import reconstruct
from edgeslim.distill import BlockAttention, attention_map, block_names
from edgeslim.errors import CandidateError
from edgeslim.evaluators.recovery import Recovery, recover
from edgeslim.export import write_onnx
from edgeslim.models import build_model
from toys import PlainNet, ResidualNet

X = torch.zeros(1, 1, 8, 8)


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with batch norms that are not the identity."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


def test_kept_indices_follow_the_dropped_channels():
    m = PlainNet()
    with torch.no_grad():  # conv1's filters ranked by L1 norm: 0 smallest ... 15 largest
        for i in range(16):
            m.conv1.weight[i].fill_(i + 1)
    kept: dict[str, KeptIndices] = {}
    apply_pruning(m, X, {"conv1": 0.5}, "l1", kept_indices=kept)
    assert kept["conv1"] == KeptIndices(out=list(range(8, 16)), inp=None)
    assert kept["conv2"] == KeptIndices(out=None, inp=list(range(8, 16)))
    assert m.conv1.out_channels == 8


def test_kept_indices_compose_over_two_groups_on_one_layer():
    m = PlainNet()
    with torch.no_grad():
        for i in range(32):
            m.conv2.weight[i].fill_(32 - i)  # the first filters are the largest
        for i in range(16):
            m.conv1.weight[i].fill_(i + 1)
    kept: dict[str, KeptIndices] = {}
    apply_pruning(m, X, {"conv1": 0.5, "conv2": 0.75}, "l1", kept_indices=kept)
    assert kept["conv2"].out == list(range(8)) and kept["conv2"].inp == list(range(8, 16))
    assert kept["fc"] == KeptIndices(out=None, inp=list(range(8)))


@pytest.mark.parametrize("name", ["taylor", "hessian"])
def test_gradient_criteria_need_batches(name):
    assert criterion(name).needs_gradients
    with pytest.raises(ValueError, match=f"importance '{name}' reads loss gradients"):
        apply_pruning(PlainNet(), X, {"conv1": 0.5}, name)


@pytest.mark.parametrize("name", ["taylor", "hessian"])
def test_gradient_criteria_keep_the_channels_the_loss_depends_on(name):
    """conv1's channels 8..15 feed nothing (conv2 reads zeros from them): their gradients are
    zero, so a gradient criterion removes exactly those."""
    torch.manual_seed(0)
    m = _randomised(PlainNet())
    with torch.no_grad():
        m.conv2.weight[:, 8:] = 0
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    kept: dict[str, KeptIndices] = {}
    apply_pruning(m, X, {"conv1": 0.5}, name, batches=batches, kept_indices=kept)
    assert kept["conv1"].out == list(range(8))
    assert all(p.grad is None for p in m.parameters())  # no gradient left behind


def test_taylor_from_gradients_computed_once_prunes_as_from_the_batches():
    """The search prunes many copies of one base model: the base's loss gradients, computed
    once, rank channels exactly as the backward passes on each copy do, and leave the base
    without gradients."""
    base = _randomised(build_model("resnet20", 1, 10))
    batches = [(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))) for _ in range(2)]
    ratios = {"layer1.0.conv1": 0.5, "layer2.0.conv1": 0.25, "layer3.1.conv1": 0.75}
    gradients = loss_gradients(base, batches)
    assert all(p.grad is None for p in base.parameters())
    outcomes = []
    for source in ({"batches": batches}, {"gradients": gradients}):
        model, kept = copy.deepcopy(base), {}
        apply_pruning(model, X, ratios, "taylor", kept_indices=kept, **source)
        outcomes.append((kept, model.state_dict()))
    (kept_a, state_a), (kept_b, state_b) = outcomes
    assert kept_a == kept_b and kept_a["layer1.0.conv1"].out != list(range(8))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)



def test_a_run_computes_the_base_gradients_once_for_every_evaluator(digits, tmp_path,
                                                                    monkeypatch):
    """The search's evaluator, the finalists' and screening prune copies of one base model
    with the same images: one ``BaseGradients`` serves them all, computed on first use."""
    import edgeslim.evaluators.recovery as recovery_module
    from edgeslim.budget import Runtime
    from edgeslim.evaluators import StagedEvaluator
    from edgeslim.evaluators.recovery import BaseGradients
    from edgeslim.spaces import Candidate
    from edgeslim.training import TrainRecipe

    calls = []
    real = recovery_module.loss_gradients
    monkeypatch.setattr(recovery_module, "loss_gradients",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    base = build_model("resnet20", 1, 10).eval()
    shared = BaseGradients(base, digits, 0)
    candidate = Candidate(order=("prune",), prune_ratios=(("layer1.0.conv1", 0.5),),
                          importance="taylor", round_to=8)
    for n, steps in enumerate((1, 2)):
        evaluator = StagedEvaluator(base, digits, TrainRecipe(steps=steps), Runtime(),
                                    gradients=shared)
        assert evaluator.gradients is shared
        evaluator.build(candidate, tmp_path / str(n))
    assert calls == [1]


def test_base_gradients_are_taken_on_the_training_batch(digits):
    """The backward pass of the base's gradients holds what a training step of its batch
    holds: at ``--batch-size 32`` no larger batch (ViT-L/16 at 224x224 was killed for memory
    on the 128-image batches); the summed loss's gradients are the same however batched."""
    from edgeslim.budget import Runtime
    from edgeslim.evaluators import StagedEvaluator
    from edgeslim.evaluators.recovery import BaseGradients
    from edgeslim.training import TrainRecipe

    torch.manual_seed(0)
    base = build_model("resnet20", 1, 10).eval()
    evaluator = StagedEvaluator(base, digits, TrainRecipe(batch_size=32), Runtime())
    assert max(len(x) for x, _ in evaluator.gradients.batches()) == 32
    small, large = evaluator.gradients(), BaseGradients(base, digits, 0)()
    assert small.keys() == large.keys()
    for name, grad in large.items():
        assert torch.allclose(small[name], grad, rtol=1e-3, atol=1e-4), name


def test_gradients_of_another_model_are_refused():
    gradients = loss_gradients(PlainNet(), [(torch.randn(4, 1, 8, 8), torch.arange(4))])
    with pytest.raises(ValueError, match="the gradients given do not match the model"):
        apply_pruning(ResidualNet(), X, {"conv1": 0.5}, "taylor", gradients=gradients)


def test_unknown_criterion_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown importance 'nope'; valid: l1, l2, bn_scale, "
                                         "lamp, taylor, hessian, none"):
        criterion("nope")
    assert list(CRITERIA) == ["l1", "l2", "bn_scale", "lamp", "taylor", "hessian", "none"]


def test_reconstruction_is_exact_when_the_removed_channels_are_redundant():
    """conv1's channels 8..15 are channels 0..7 scaled by 0.1 (their batch norm undoes the
    scale), so the unpruned conv2's output is a linear function of the kept channels: least
    squares finds it and the logits match (up to the ridge term)."""
    torch.manual_seed(0)
    base = _randomised(PlainNet())
    with torch.no_grad():
        base.conv1.weight[8:] = 0.1 * base.conv1.weight[:8]
        base.bn1.running_mean[8:] = 0.1 * base.bn1.running_mean[:8]
        base.bn1.running_var[8:] = 0.01 * base.bn1.running_var[:8]
        base.bn1.eps = 0.0
        base.bn1.weight[8:], base.bn1.bias[8:] = base.bn1.weight[:8], base.bn1.bias[:8]
    pruned = copy.deepcopy(base)
    kept: dict[str, KeptIndices] = {}
    apply_pruning(pruned, X, {"conv1": 0.5}, "none", kept_indices=kept)  # keeps 0..7
    images = torch.randn(64, 1, 8, 8)
    before = (pruned(images) - base(images)).abs().max().item()
    assert reconstruct(pruned, base, kept, images) == ["conv2"]
    with torch.no_grad():
        after = (pruned(images) - base(images)).abs().max().item()
    assert kept["conv1"].out == list(range(8))
    assert before > 0.05 and after < before / 100


def test_reconstruction_matches_residual_outputs_better_than_pruning_alone():
    torch.manual_seed(0)
    base = _randomised(ResidualNet())
    pruned = copy.deepcopy(base)
    kept: dict[str, KeptIndices] = {}
    apply_pruning(pruned, X, {"conv1": 0.5, "block_conv1": 0.5}, "l2", kept_indices=kept)
    images = torch.randn(128, 1, 8, 8)
    with torch.no_grad():
        before = (pruned(images) - base(images)).pow(2).mean().item()
        done = reconstruct(pruned, base, kept, images)
        after = (pruned(images) - base(images)).pow(2).mean().item()
    assert done == ["block_conv1", "block_conv2", "fc"]
    assert after < before / 4


def test_recover_reports_what_it_ran(digits):
    torch.manual_seed(0)
    base = build_model("resnet20", 1, 10).eval()
    model = copy.deepcopy(base)
    kept: dict[str, KeptIndices] = {}
    apply_pruning(model, X, {"layer1.0.conv1": 0.5}, "l1", kept_indices=kept)
    info = recover(model, base, kept, Recovery(True, True, images=32, bn_images=64), digits, 0)
    assert info["reconstructed_layers"] == 1  # layer1.0.conv2 reads the pruned channels
    assert set(info) == {"reconstructed_layers", "reconstruct_seconds",
                         "recalibrate_bn_seconds"}
    assert recover(model, base, {}, Recovery(reconstruct=True), digits, 0) == {}


def test_block_names_pick_the_outermost_blocks():
    assert block_names(build_model("resnet20", 3, 10)) == [
        f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert block_names(build_model("vgg11_bn", 3, 10)) == ["features"]
    assert block_names(build_model("mobilenetv2", 3, 10))[:3] == [
        "features.0", "features.1", "features.2"]


def test_attention_transfer_is_zero_for_the_same_model_and_positive_after_pruning():
    torch.manual_seed(0)
    teacher = _randomised(build_model("resnet20", 1, 10))
    student = copy.deepcopy(teacher)
    features = BlockAttention(student, teacher)
    x = torch.randn(4, 1, 8, 8)
    student(x), teacher(x)
    assert features.loss().item() == 0.0
    apply_pruning(student, X, {"layer1.0.conv1": 0.5, "conv1": 0.5}, "l1")
    student(x), teacher(x)
    assert features.loss().item() > 0.0
    features.close()
    student(x)
    assert features.student == {}  # hooks removed


def test_attention_map_is_unit_norm_per_image():
    x = torch.randn(3, 5, 4, 4)
    a = attention_map(x)
    assert a.shape == (3, 16)
    assert torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.allclose(attention_map(torch.cat([x, x], 1)), a)  # channel count cancels


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_int8_calibration_methods(tmp_path, method):
    torch.manual_seed(0)
    src = write_onnx(_randomised(PlainNet()), X, tmp_path / "float.onnx")
    batches = [torch.randn(8, 1, 8, 8).numpy() for _ in range(2)]
    out = quantize_onnx(src, tmp_path / f"{method}.onnx", "int8_static", iter(batches), method)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_unknown_calibration_is_refused(tmp_path):
    src = write_onnx(PlainNet().eval(), X, tmp_path / "float.onnx")
    with pytest.raises(ValueError, match="unknown calibration 'mse'; valid: minmax, "
                                         "percentile, entropy"):
        quantize_onnx(src, tmp_path / "q.onnx", "int8_static", iter([X.numpy()]), "mse")


def test_pruning_errors_are_still_candidate_errors():
    with pytest.raises(CandidateError, match="no layer named 'nope'"):
        apply_pruning(PlainNet(), X, {"nope": 0.5}, "taylor", batches=[])


@pytest.mark.parametrize("text, expected", [
    ("none", Recovery(reconstruct=False, recalibrate_bn=False)),
    ("reconstruct", Recovery(reconstruct=True, recalibrate_bn=False)),
    ("recalibrate_bn, reconstruct", Recovery(reconstruct=True, recalibrate_bn=True)),
])
def test_recovery_option_parses(text, expected):
    assert Recovery.parse(text) == expected
    assert Recovery.parse(expected.describe()) == expected


@pytest.mark.parametrize("text", ["", "none,reconstruct", "bn"])
def test_recovery_option_refuses(text):
    from edgeslim.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        Recovery.parse(text)
    assert str(info.value) == ("--recovery: must be none or among reconstruct, recalibrate_bn, "
                               f"got {text!r}")
