"""Latency of an ONNX artifact in onnxruntime on this machine."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.export import INPUT_NAME, ort_session


@dataclass(frozen=True)
class LatencyResult:
    """Timing of one artifact; all times in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int  # intra-op threads actually used
    threads_requested: int  # what the budget asked for; more than ``threads`` when capped

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative width of the middle 80% of runs."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def capped(self) -> bool:
        return self.threads < self.threads_requested


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure_latency(onnx_path: Path, input_shape: tuple[int, ...], threads: int,
                    warmup: int = 10, min_runs: int = 30, max_runs: int = 300,
                    max_seconds: float = 3.0, seed: int = 0) -> LatencyResult:
    """latency_ms: median wall time of one ``session.run`` at batch 1 in onnxruntime CPU
    (sequential execution, all graph optimisations), with ``threads`` intra-op threads capped at
    the cores this process may use, after ``warmup`` untimed runs. Runs continue until
    ``min_runs`` are done and either ``max_runs`` are done or ``max_seconds`` have passed.
    The input is random normal data of shape (1, *input_shape).
    """
    used = max(1, min(threads, available_cores()))
    session = ort_session(onnx_path, threads=used)
    x = np.random.default_rng(seed).standard_normal((1, *input_shape)).astype(np.float32)
    feed = {INPUT_NAME: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    p10, med, p90 = np.percentile(times, [10, 50, 90])
    return LatencyResult(float(med), float(p10), float(p90), len(times), used, threads)
