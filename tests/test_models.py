"""The model contract: every registered model builds for the dataset's shape, prunes at several
ratios, and exports to an ONNX file that onnxruntime runs with PyTorch's outputs."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from edgeslim._pooling import window_matrix
from edgeslim.compress import apply_pruning, prunable_groups
from edgeslim.errors import ModelError
from edgeslim.export import ONNX_ATOL, onnx_max_abs_diff, write_onnx
from edgeslim.models import MODELS, build_model, load_checkpoint
from toys import REPO

CONTRACT = sorted(MODELS) + ["torchvision:resnet18"]


def _example(spec: str, batch: int = 2) -> torch.Tensor:
    """3x32x32 images, or 3 channels of 32 steps for a model whose first layer is a Conv1d."""
    first = next(m for m in build_model(spec, 3, 10).modules()
                 if isinstance(m, (nn.Conv1d, nn.Conv2d)))
    return torch.randn(batch, 3, 32) if isinstance(first, nn.Conv1d) else \
        torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("spec", CONTRACT)
def test_model_contract(spec, tmp_path):
    torch.manual_seed(0)
    x = _example(spec)
    for ratio in (0.3, 0.6):
        model = build_model(spec, 3, 10).eval()
        assert model(x).shape == (2, 10)
        groups = prunable_groups(model, x[:1], 10)
        assert groups, f"{spec} has nothing to prune"
        before = sum(p.numel() for p in model.parameters())
        apply_pruning(model, x[:1], {g.name: ratio for g in groups}, "l2")
        assert sum(p.numel() for p in model.parameters()) < before
        path = write_onnx(model.eval(), x[:1], tmp_path / f"{ratio}.onnx")
        assert onnx_max_abs_diff(model, path, x) <= ONNX_ATOL


@pytest.mark.parametrize("size, out", [(5, 3), (7, 2), (1, 7), (6, 4), (9, 9), (4, 1)])
def test_adaptive_pooling_windows_are_pytorchs(size, out):
    x = torch.randn(2, 3, size)
    expected = nn.functional.adaptive_avg_pool1d(x, out)
    assert torch.allclose(x @ window_matrix(size, out).t(), expected, atol=1e-6)


def test_adaptive_pooling_to_a_size_that_does_not_divide_exports(tmp_path):
    """VGG's 7x7 pool on the 1x1 map of a 32x32 image has no ONNX form in the TorchScript
    exporter: it is exported as the equal matrix products, and the model is left as it was."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((3, None)),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.randn(2, 3, 9, 7)  # the conv leaves 7x5: pooled to 3x5, then to 2x2
    path = write_onnx(model, x[:1], tmp_path / "pool.onnx")
    assert onnx_max_abs_diff(model, path, x) <= ONNX_ATOL
    assert not any("forward" in vars(m) for m in model.modules())
    divides = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2)).eval()
    path = write_onnx(divides, x[:1, :, :6, :6], tmp_path / "plain.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMul" not in ops  # a pool the exporter takes is left to it


@pytest.mark.parametrize("spec", ["alexnet", "convnext_atto", "resnet18", "resnet34",
                                  "vgg16_bn", "vgg19_bn"])
def test_study_models_take_28x28_grey_images(spec):
    assert build_model(spec, 1, 10).eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("ratio, stage1, hidden1, stage4", [(0.3, 32, 112, 224),
                                                          (0.6, 16, 64, 128)])
def test_convnext_pruning_keeps_layer_scale_and_norms_in_step(ratio, stage1, hidden1, stage4):
    """Stage widths 40/80/160/320 and MLP hidden widths 4x those: every group loses ``ratio``
    of its channels (snapped to multiples of 8), and the layer scales, LayerNorms and depthwise
    convs of each residual stream follow its channels."""
    from edgeslim.models.convnext_cifar import Block

    model = build_model("convnext_atto", 3, 10).eval()
    x = torch.randn(1, 3, 32, 32)
    groups = prunable_groups(model, x, 10)
    # one group per residual stream (4 stages) and one per block's MLP hidden layer (12 blocks)
    assert len(groups) == 16
    apply_pruning(model, x, {g.name: ratio for g in groups}, "l1")
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    first, last = blocks[0], blocks[-1]
    assert (first.dwconv.out_channels, first.dwconv.groups) == (stage1, stage1)
    assert first.norm.normalized_shape == (stage1,)
    assert first.pwconv1.out_features == hidden1 and first.pwconv2.in_features == hidden1
    assert first.scale.gamma.shape == (stage1,)
    assert last.scale.gamma.shape == (stage4,) and model.norm.normalized_shape == (stage4,)
    assert model.head.in_features == stage4
    assert model(x).shape == (1, 10)


def test_unranked_pruning_keeps_the_first_channels():
    model = build_model("cnn1d", 9, 6).eval()
    weight = model.features[0].weight.detach().clone()
    apply_pruning(model, torch.zeros(1, 9, 128), {"features.0": 0.5}, "none")
    assert torch.equal(model.features[0].weight, weight[:32])


def test_channels_and_classes_follow_the_dataset():
    model = build_model("resnet20", 1, 7)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 7)
    adapted = build_model("torchvision:resnet18", 1, 4).eval()  # first conv adapted to grey input
    assert adapted(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


def test_torchvision_models_with_auxiliary_heads_train_on_their_logits_alone():
    """GoogLeNet returns its auxiliary classifiers' outputs beside the logits in training
    mode, which no loss of a fine-tune reads: it is built without them."""
    model = build_model("torchvision:googlenet", 3, 10).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    assert not any("aux" in name for name, _ in model.named_modules())


def test_user_model_from_a_file(tmp_path):
    (tmp_path / "mine.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom toys import PlainNet\n"
        "def make(num_classes):\n    return PlainNet(1, num_classes)\n" % str(REPO / "tests"))
    model = build_model(f"{tmp_path / 'mine.py'}:make", 1, 5)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 5)


def test_user_model_from_a_module():
    model = build_model("toys:plain_net", 1, 3)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


@pytest.mark.parametrize("spec, message", [
    ("resnet21", "unknown model 'resnet21'; registered: alexnet, cnn1d, convnext_atto, "
     "mobilenetv2, resnet18, resnet20"),
    ("torchvision:notamodel", "unknown torchvision classification model 'notamodel'; available: "),
    ("no/such/file.py:make", "no such file"),
    ("toys:nothing", "has no callable 'nothing'"),
])
def test_bad_model_specifications(spec, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        build_model(spec, 3, 10)


def test_checkpoint_mismatch_is_one_clear_line(tmp_path):
    torch.save(build_model("resnet32", 3, 10).state_dict(), tmp_path / "r32.pt")
    with pytest.raises(ModelError) as info:
        load_checkpoint(build_model("resnet20", 3, 10), tmp_path / "r32.pt", "resnet20")
    assert str(info.value).startswith(f"checkpoint {tmp_path / 'r32.pt'} does not match model "
                                      "'resnet20': ")
    assert "\n" not in str(info.value)


def test_checkpoint_is_loaded_without_running_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="cannot be loaded as weights"):
        load_checkpoint(build_model("resnet20", 3, 10), tmp_path / "evil.pt", "resnet20")
