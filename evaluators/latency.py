"""Latency of an ONNX artifact in onnxruntime, timed on this machine (``time_once`` and
``time_interleaved`` time LiteRT files too, in LiteRT, for a LiteRT profile).

``edgeslim.evaluators.remote`` runs the same timing as a command, which is how the ``ssh``
latency source times an artifact on the device.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
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
    def latency_ms(self) -> float:
        """The artifact's latency: the 10th percentile of the run times. Other work on the
        machine (other processes, other tenants of a virtual host) only ever adds time, and on a
        shared host it comes and goes for seconds at a time, so a median moves by a third
        between two timings of the same file; the fast end of the distribution is the
        artifact's own speed and repeats. On a quiet device it sits a few percent under the
        median (both are recorded)."""
        return self.p10_ms

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative width of the middle 80% of runs."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def capped(self) -> bool:
        return self.threads < self.threads_requested

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def attrs(self) -> dict[str, object]:
        """The timing's details as a trial records them (``latency_ms`` aside)."""
        return {"latency_median_ms": self.median_ms, "latency_p90_ms": self.p90_ms,
                "latency_runs": self.runs, "latency_threads": self.threads,
                "latency_threads_capped": self.capped, "latency_source": self.source,
                "latency_spread": round(self.spread, 4), "latency_unstable": self.unstable}


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
              seed: int = 0, **stopping: float) -> LatencyResult:
    """One timing of ``session.run`` (see ``timed_runs`` for warm-ups and when runs stop)."""
    used = max(1, min(threads, available_cores()))
    run = _runner(onnx_path, input_shape, used, seed)
    # A kernel that cannot run this file's graph fails at the first run. (A try block costs
    # nothing in the timed loop.)
    with runtime_errors(onnx_path):
        times = timed_runs(run, warmup, **stopping)
    return timing_result(times, used, threads)


def timed_runs(run: Callable[[], object], warmup: int = 10, min_runs: int = 30,
               max_runs: int = 1000, min_seconds: float = 0.3, max_seconds: float = 1.0,
               stable_within: float = 0.01) -> list[float]:
    """The milliseconds of each timed ``run``: ``warmup`` untimed runs, then runs in blocks
    of ``BLOCK``. Once at least ``min_runs`` are done and ``min_seconds`` have passed (a timing
    long enough to span the spells of other work on a shared machine), it stops when the
    latency (``LatencyResult.latency_ms``) moved by at most ``stable_within`` (relative) over
    the last block, or ``max_runs`` are done, or ``max_seconds`` have passed. (A timing of 0.3
    to 1 s is as repeatable as one of 1 to 3 s in nine cases of ten, its rare outliers larger:
    ``benchmarks/results/latency_timing.md``.)"""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    previous = None
    while True:
        for _ in range(BLOCK):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        fast = float(np.percentile(times, 10))
        if len(times) >= min_runs and (elapsed >= max_seconds or (
                elapsed >= min_seconds and (
                    len(times) >= max_runs
                    or (previous is not None and abs(fast - previous) <= stable_within * fast)))):
            return times
        previous = fast


def time_interleaved(files: list[tuple[Path, tuple[int, ...]]], threads: int, seconds: float,
                     warmup: int = 5, min_runs: int = 30, burst: int = 5, seed: int = 0,
                     ) -> list[LatencyResult]:
    """Several files timed together, in turns: each file's turn is one untimed run, which
    brings its weights back into the caches the other files used, then ``burst`` timed runs;
    for ``seconds`` in all and at least ``min_runs`` timed runs each. Spells of other work on
    the machine then fall on every file alike, so their latencies compare even on a busy
    shared host, where files timed one after another can each land in a different spell; and
    each file is timed warm, as it runs on a device that runs only it (one run of each in
    turn would time every run with cold caches, slower the more files are timed together)."""
    used = max(1, min(threads, available_cores()))
    opened = []
    for path, shape in files:
        with runtime_errors(path):
            run = _runner(path, shape, used, seed)
            for _ in range(warmup):
                run()
        opened.append(run)
    times: list[list[float]] = [[] for _ in files]
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times[-1]) < min_runs:
        for run, runs in zip(opened, times, strict=True):
            run()
            for _ in range(burst):
                t0 = time.perf_counter()
                run()
                runs.append((time.perf_counter() - t0) * 1e3)
    return [timing_result(runs, used, threads) for runs in times]


def _runner(path: Path, input_shape: tuple[int, ...], threads: int, seed: int,
            ) -> Callable[[], object]:
    """One run of the file at batch 1 on random normal input of shape ``(1, *input_shape)``
    (ONNX layout): in onnxruntime, or in LiteRT for a ``.tflite`` file (its input set once,
    each run an ``invoke``)."""
    if Path(path).suffix == ".tflite":
        from edgeslim.evaluators.litert import invoker

        return invoker(path, input_shape, "litert", threads, seed)
    session, feed = _session(path, input_shape, threads, seed)
    return lambda: session.run(None, feed)


def _session(onnx_path: Path, input_shape: tuple[int, ...], threads: int, seed: int):
    session = ort_session(onnx_path, threads=threads)
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    x = np.random.default_rng(seed).standard_normal((1, *input_shape)).astype(dtype)
    return session, {inp.name: x}


def timing_result(times: list[float], used: int, threads: int, source: str = "host",
                  ) -> LatencyResult:
    """The ``LatencyResult`` of run times ``times`` made with ``used`` of ``threads``."""
    p10, med, p90 = np.percentile(times, [10, 50, 90])
    return LatencyResult(float(med), float(p10), float(p90), len(times), used, threads, source)


def measure_latency(onnx_path: Path, input_shape: tuple[int, ...] | None, threads: int,
                    max_spread: float = 0.25, **options: float) -> LatencyResult:
    """The wall time of one ``session.run`` at batch 1 in onnxruntime CPU
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
