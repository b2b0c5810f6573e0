"""Measuring a deployable ONNX file: every number comes from the file itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgeslim.budget import Runtime
from edgeslim.data import DataBundle, Split
from edgeslim.evaluators.accuracy import onnx_accuracy
from edgeslim.evaluators.memory import memory_bytes
from edgeslim.evaluators.meters import HostMeter, LatencyMeter
from edgeslim.export import runtime_errors
from edgeslim.timing import timed


@timed("measuring")
def measure_onnx_file(path: Path, data: DataBundle, runtime: Runtime,
                      split: Split | None = None, split_name: str = "val_acc",
                      meter: LatencyMeter | None = None, latency: bool = True,
                      latency_below_ms: float | None = None,
                      ) -> tuple[dict[str, float], dict[str, Any]]:
    """size_bytes (file length), peak_memory_bytes and activation_bytes, latency_ms (from
    ``meter``; default: timed on this machine with the runtime's threads; not with
    ``latency`` False, and only as precise as telling that it is below ``latency_below_ms``
    needs when that is given) and, when ``split`` is given, the accuracy of the file in
    onnxruntime under the key ``split_name``.

    Returns:
        ``(values, info)``: the measures, and latency details for user attributes.

    Raises:
        CandidateError: when onnxruntime refuses the file or fails to run it.
    """
    # The memory estimate starts by loading the file in onnxruntime, the first place a file
    # the runtime refuses is found.
    with runtime_errors(path, "rejected"):
        weights, activations = memory_bytes(path)
    values: dict[str, float] = {
        "size_bytes": float(Path(path).stat().st_size),
        "peak_memory_bytes": float(weights + activations),
        "activation_bytes": float(activations),
    }
    info: dict[str, Any] = {}
    if latency:
        timing = (meter or HostMeter(runtime.threads)).measure(path, latency_below_ms)
        values["latency_ms"] = timing.latency_ms
        info = timing.attrs()
    if split is not None:
        # With the threads training runs with: the idle cores (``edgeslim.cores``), as
        # onnxruntime's threads, like PyTorch's, wait for one that shares a busy core.
        values[split_name] = onnx_accuracy(path, split, data, threads=torch.get_num_threads())
    return values, info
