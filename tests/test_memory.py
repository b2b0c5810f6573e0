"""Peak memory: the graph estimate against what onnxruntime really allocates on this host."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from edgeslim.compress.quantize import quantize_onnx
from edgeslim.evaluators.memory import memory_bytes, peak_memory_bytes, runtime_memory
from edgeslim.export import write_onnx
from edgeslim.models import build_model
from toys import DepthwiseNet, PlainNet, ResidualNet

# What the estimate leaves out (kernel scratch, prepacked weight copies) stays below this on
# the hosts the tests run on; "Peak memory" in docs/latency-and-memory.md states the same bound.
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


def test_activations_of_a_float_and_a_qdq_graph(tmp_path):
    # PlainNet on 1x8x8: the fp32 peak is conv2's output and its ReLU's, 32x8x8 floats each
    # (2 x 8,192 bytes). Quantized statically, the fused second conv reads conv1's 8-bit output
    # (16x8x8 = 1,024 bytes) while it writes its own (32x8x8 = 2,048 bytes).
    float_path = write_onnx(PlainNet().eval(), torch.zeros(1, 1, 8, 8), tmp_path / "f.onnx")
    calibration = [np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)]
    int8_path = quantize_onnx(float_path, tmp_path / "q.onnx", "int8_static", iter(calibration))
    # Weights after batch norm folds into the convs: conv1 16x1x3x3 + 16 bias, conv2 32x16x3x3
    # + 32 bias, fc 10x32 + 10 = 5,130 floats.
    assert memory_bytes(float_path) == (5130 * 4, 2 * 8192)
    assert memory_bytes(int8_path)[1] == 1024 + 2048
