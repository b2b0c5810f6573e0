"""The model contract: every registered model builds for the dataset's shape, prunes at several
ratios, and exports to an ONNX file that onnxruntime runs with PyTorch's outputs."""

from __future__ import annotations

import pytest
import torch

from edgeslim.compress import apply_pruning, prunable_groups
from edgeslim.errors import ModelError
from edgeslim.export import ONNX_ATOL, onnx_max_abs_diff, write_onnx
from edgeslim.models import MODELS, build_model, load_checkpoint
from toys import REPO

CONTRACT = sorted(MODELS) + ["torchvision:resnet18"]


@pytest.mark.parametrize("spec", CONTRACT)
def test_model_contract(spec, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
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


def test_channels_and_classes_follow_the_dataset():
    model = build_model("resnet20", 1, 7)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 7)
    adapted = build_model("torchvision:resnet18", 1, 4).eval()  # first conv adapted to grey input
    assert adapted(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


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
    ("resnet21", "unknown model 'resnet21'; registered: mobilenetv2, resnet20"),
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
