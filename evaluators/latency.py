"""Latency of an ONNX artifact in onnxruntime, timed on this machine.

``edgeslim.evaluators.remote`` runs the same timing as a command, which is how the ``ssh``
latency source times an artifact on the device.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from edgeslim.export import ort_session, runtime_errors

BLOCK = 10  # runs between two stability checks


@dataclass(frozen=True)
class LatencyResult:
    """Timing of one artifact; all times in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int  # intra-op threads actually used
    threads_requested: int  # what the budget asked for; more than ``threads`` when capped
    source: str = "host"  # host, profile (predicted) or ssh (timed on the device)
    unstable: bool = False  # the spread stayed above the limit after one retry
    attempts: int = 1  # timings made (2 when the first one's spread was too wide)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative width of the middle 80% of runs."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def capped(self) -> bool:
        return self.threads < self.threads_requested

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def input_shape_of(onnx_path: Path) -> tuple[int, ...]:
    """The model input's shape without the batch dimension, read from the file."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    init = {t.name for t in graph.initializer}
    inp = next(i for i in graph.input if i.name not in init)
    return tuple(d.dim_value or 1 for d in inp.type.tensor_type.shape.dim[1:])


def time_once(onnx_path: Path, input_shape: tuple[int, ...], threads: int, warmup: int = 10,
              min_runs: int = 30, max_runs: int = 1000, max_seconds: float = 3.0,
              stable_within: float = 0.01, seed: int = 0) -> LatencyResult:
    """One timing: ``warmup`` untimed runs, then runs in blocks of ``BLOCK`` until at least
    ``min_runs`` are done and the median moved by at most ``stable_within`` (relative) over the
    last block, or ``max_runs`` are done, or ``max_seconds`` have passed."""
    used = max(1, min(threads, available_cores()))
    session = ort_session(onnx_path, threads=used)
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = np.random.default_rng(seed).standard_normal((1, *input_shape)).astype(dtype)
    feed = {inp.name: x}
    times: list[float] = []
    # A kernel that cannot run this file's graph fails at the first run. (A try block costs
    # nothing in the timed loop.)
    with runtime_errors(onnx_path):
        for _ in range(warmup):
            session.run(None, feed)
        deadline = time.perf_counter() + max_seconds
        previous = None
        while len(times) < max_runs:
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - t0) * 1e3)
            median = float(np.median(times))
            if len(times) >= min_runs and (
                    time.perf_counter() > deadline
                    or (previous is not None
                        and abs(median - previous) <= stable_within * median)):
                break
            previous = median
    p10, med, p90 = np.percentile(times, [10, 50, 90])
    return LatencyResult(float(med), float(p10), float(p90), len(times), used, threads)


def measure_latency(onnx_path: Path, input_shape: tuple[int, ...] | None, threads: int,
                    max_spread: float = 0.25, **options: float) -> LatencyResult:
    """latency_ms: median wall time of one ``session.run`` at batch 1 in onnxruntime CPU
    (sequential execution, all graph optimisations), with ``threads`` intra-op threads capped
    at the cores this process may use, on random normal input of shape ``(1, *input_shape)``
    (read from the file when None); see ``time_once`` for warm-ups and when runs stop.

    Noise: when the spread ((p90 - p10) / median) exceeds ``max_spread``, the timing is redone
    once and the narrower of the two kept; if that one is still too wide the result is flagged
    ``unstable`` (the trial records it, the card shows it).
    """
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(onnx_path)
    first = time_once(onnx_path, shape, threads, **options)
    if first.spread <= max_spread:
        return first
    second = time_once(onnx_path, shape, threads, **options)
    best = min(first, second, key=lambda r: r.spread)
    return replace(best, unstable=best.spread > max_spread, attempts=2)


def host_description() -> dict[str, object]:
    """What this machine offers for timing: for messages, cards and profiles."""
    import onnxruntime

    return {"machine": platform.machine(), "cpu": _cpu_name(),
            "system": platform.system(), "node": platform.node(), "cores": available_cores(),
            "runtime": "onnxruntime", "runtime_version": onnxruntime.__version__}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
