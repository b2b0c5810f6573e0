"""Measuring a deployable ONNX file: every number comes from the file itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeslim.budget import Runtime
from edgeslim.data import DataBundle, Split
from edgeslim.evaluators.accuracy import onnx_accuracy
from edgeslim.evaluators.latency import available_cores, measure_latency
from edgeslim.evaluators.memory import peak_memory_bytes


def measure_onnx_file(path: Path, data: DataBundle, runtime: Runtime,
                      split: Split | None = None, split_name: str = "val_acc",
                      ) -> tuple[dict[str, float], dict[str, Any]]:
    """size_bytes (file length), peak_memory_bytes, latency_ms and, when ``split`` is given,
    the accuracy of the file in onnxruntime under the key ``split_name``.

    Returns:
        ``(values, info)``: the measures, and latency details for user attributes.
    """
    latency = measure_latency(path, data.input_shape, runtime.threads)
    values: dict[str, float] = {
        "size_bytes": float(Path(path).stat().st_size),
        "peak_memory_bytes": float(peak_memory_bytes(path)),
        "latency_ms": latency.median_ms,
    }
    info = {
        "latency_p10_ms": latency.p10_ms,
        "latency_p90_ms": latency.p90_ms,
        "latency_runs": latency.runs,
        "latency_threads": latency.threads,
        "latency_threads_capped": latency.capped,
    }
    if split is not None:
        values[split_name] = onnx_accuracy(path, split, data, threads=available_cores())
    return values, info
