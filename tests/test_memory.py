"""Peak memory: the graph estimate against what onnxruntime really allocates on this host."""

from __future__ import annotations

import sys

import pytest
import torch

from edgeslim.evaluators.memory import peak_memory_bytes, runtime_memory
from edgeslim.export import write_onnx
from edgeslim.models import build_model
from toys import DepthwiseNet, PlainNet, ResidualNet

# What the estimate leaves out (kernel scratch, prepacked weight copies) stays below this on
# the hosts the tests run on; the README's "Peak memory" section states the same bound.
MAX_UNCOUNTED_BYTES = 1.5 * 2**20


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2 and /proc")
@pytest.mark.parametrize("name", ["plain", "residual", "depthwise", "resnet20"])
def test_estimate_bounds_what_onnxruntime_allocates(name, tmp_path):
    model = {"plain": lambda: PlainNet(3), "residual": lambda: ResidualNet(3),
             "depthwise": lambda: DepthwiseNet(3),
             "resnet20": lambda: build_model("resnet20", 3, 10)}[name]().eval()
    path = write_onnx(model, torch.zeros(1, 3, 32, 32), tmp_path / "m.onnx")
    estimate = peak_memory_bytes(path)
    measured = runtime_memory(path)
    assert measured.session_bytes > 0 and measured.run_bytes > 0
    assert estimate <= measured.total_bytes <= estimate + MAX_UNCOUNTED_BYTES, (
        f"estimate {estimate}, onnxruntime allocated {measured}")
