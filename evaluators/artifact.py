"""Measuring a deployable ONNX file: every number comes from the file itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeslim.budget import Runtime
from edgeslim.data import DataBundle, Split
from edgeslim.evaluators.accuracy import onnx_accuracy
from edgeslim.evaluators.latency import available_cores
from edgeslim.evaluators.memory import memory_bytes
from edgeslim.evaluators.meters import HostMeter, LatencyMeter
from edgeslim.export import runtime_errors
from edgeslim.timing import timed


@timed("measuring")
def measure_onnx_file(path: Path, data: DataBundle, runtime: Runtime,
                      split: Split | None = None, split_name: str = "val_acc",
                      meter: LatencyMeter | None = None,
                      ) -> tuple[dict[str, float], dict[str, Any]]:
    """size_bytes (file length), peak_memory_bytes and activation_bytes, latency_ms (from
    ``meter``; default: timed on this machine with the runtime's threads) and, when ``split``
    is given, the accuracy of the file in onnxruntime under the key ``split_name``.

    Returns:
        ``(values, info)``: the measures, and latency details for user attributes.

    Raises:
        CandidateError: when onnxruntime refuses the file or fails to run it.
    """
    # The memory estimate starts by loading the file in onnxruntime, the first place a file
    # the runtime refuses is found.
    with runtime_errors(path, "rejected"):
        weights, activations = memory_bytes(path)
    latency = (meter or HostMeter(runtime.threads)).measure(path)
    values: dict[str, float] = {
        "size_bytes": float(Path(path).stat().st_size),
        "peak_memory_bytes": float(weights + activations),
        "activation_bytes": float(activations),
        "latency_ms": latency.latency_ms,
    }
    info = {
        "latency_median_ms": latency.median_ms,
        "latency_p90_ms": latency.p90_ms,
        "latency_runs": latency.runs,
        "latency_threads": latency.threads,
        "latency_threads_capped": latency.capped,
        "latency_source": latency.source,
        "latency_spread": round(latency.spread, 4),
        "latency_unstable": latency.unstable,
    }
    if split is not None:
        values[split_name] = onnx_accuracy(path, split, data, threads=available_cores())
    return values, info
