"""Measuring a LiteRT file in the runtimes it deploys to: LiteRT (``ai-edge-litert``'s
interpreter, the TensorFlow Lite runtime of phones and Linux boards) and LiteRT for
Microcontrollers (``tflite-micro``'s Python interpreter, the same kernels and memory planner
as on the microcontroller, compiled for this host).

The file takes one image at batch 1, channels last (``edgeslim.litert``); an int8 input or
output is quantized and dequantized with the scale and zero point the file records.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeslim.budget import Runtime
from edgeslim.data import DataBundle, Split
from edgeslim.errors import CandidateError
from edgeslim.evaluators.latency import (
    LatencyResult,
    available_cores,
    timed_runs,
    timing_result,
)
from edgeslim.evaluators.memory import memory_bytes
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.export import _cut, one_line, runtime_errors
from edgeslim.litert import channels_last
from edgeslim.timing import timed

# The arena LiteRT for Microcontrollers is given on this host: large enough for any model the
# search builds; what it really uses is read back (``micro_arena_bytes``).
HOST_ARENA_BYTES = 64 * 2**20
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


@dataclass
class Runner:
    """One LiteRT file loaded in a runtime: ``run`` takes a float32 batch of one image in the
    ONNX layout (1, C, ...) and returns float32 logits (1, classes)."""

    runtime: str
    interpreter: object
    path: Path

    def run(self, x: np.ndarray) -> np.ndarray:
        x = channels_last(x)
        try:
            if self.runtime == "litert-micro":
                self.interpreter.set_input(_quantized(x, self.interpreter.get_input_details(0)),
                                           0)
                self.interpreter.invoke()
                out, details = self.interpreter.get_output(0), \
                    self.interpreter.get_output_details(0)
            else:
                inp = self.interpreter.get_input_details()[0]
                self.interpreter.set_tensor(inp["index"], _quantized(x, inp))
                self.interpreter.invoke()
                details = self.interpreter.get_output_details()[0]
                out = self.interpreter.get_tensor(details["index"])
        except RuntimeError as exc:  # a kernel that fails on this file's graph
            raise CandidateError(f"{self.runtime} failed to run the artifact "
                                 f"{self.path.name}: {one_line(exc)}") from exc
        return _dequantized(out, details)

    def invoke(self) -> None:
        """One more run on the input already set (what latency times)."""
        self.interpreter.invoke()


def _params(details: dict) -> tuple[float, int]:
    q = details.get("quantization_parameters") or {}
    scales, zeros = q.get("scales", []), q.get("zero_points", [])
    if len(scales):
        return float(scales[0]), int(zeros[0])
    scale, zero = details.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def _quantized(x: np.ndarray, details: dict) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = _params(details)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantized(y: np.ndarray, details: dict) -> np.ndarray:
    if np.dtype(details["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero = _params(details)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def open_runner(path: Path, runtime: str, threads: int = 1) -> Runner:
    """``path`` loaded in ``runtime`` (``litert`` or ``litert-micro``), with ``threads``
    threads in LiteRT (LiteRT for Microcontrollers runs on one).

    Raises:
        CandidateError: when the runtime refuses the file (an operator or type it lacks).
    """
    path = Path(path)
    try:
        if runtime == "litert-micro":
            from tflite_micro.python.tflite_micro import runtime as micro

            # Why it refuses a file (the operator, the node) is printed to stderr, not raised.
            said: list[str] = []
            try:
                with _fd2_lines(said):
                    interpreter = micro.Interpreter.from_bytes(path.read_bytes(),
                                                               arena_size=HOST_ARENA_BYTES)
            except RuntimeError as exc:
                reason = " ".join(said[-2:]) or one_line(exc)
                raise CandidateError(f"{runtime} rejected the artifact {path.name}: "
                                     f"{_cut(reason)}") from exc
        else:
            from ai_edge_litert.interpreter import Interpreter

            # It announces its CPU delegate on stderr each time: not for the terminal.
            with _fd2_lines([]):
                interpreter = Interpreter(model_path=str(path), num_threads=threads)
                interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise CandidateError(f"{runtime} rejected the artifact {path.name}: "
                             f"{one_line(exc)}") from exc
    return Runner(runtime, interpreter, path)


@timed("measuring")
def litert_accuracy(path: Path, split: Split, data: DataBundle, runtime: str = "litert",
                    threads: int = 1) -> float:
    """val_acc / test_acc: top-1 accuracy (fraction correct) of the LiteRT file run in
    ``runtime`` over every image of ``split``, one at a time, with the dataset's
    normalisation.

    Raises:
        CandidateError: when the runtime refuses the file or fails to run it.
    """
    runner = open_runner(path, runtime, threads)
    x = data.normalize(split.x).numpy()
    predicted = np.array([int(np.argmax(runner.run(x[i:i + 1]))) for i in range(len(x))])
    return float((predicted == split.y.numpy()).mean()) if len(x) else 0.0


def litert_latency(path: Path, input_shape: tuple[int, ...], runtime: str = "litert",
                   threads: int = 1, seed: int = 0, **stopping: float) -> LatencyResult:
    """latency_ms: the wall time of one ``invoke`` at batch 1 in ``runtime`` on this machine,
    with ``threads`` threads (capped at this process's cores; one for LiteRT for
    Microcontrollers), on random normal input of shape ``(1, *input_shape)`` (ONNX layout);
    warm-ups and when runs stop as for onnxruntime (``timed_runs``)."""
    used = 1 if runtime == "litert-micro" else max(1, min(threads, available_cores()))
    times = timed_runs(invoker(path, input_shape, runtime, used, seed), **stopping)
    return timing_result(times, used, threads, source=f"host ({runtime})")


def invoker(path: Path, input_shape: tuple[int, ...], runtime: str = "litert",
            threads: int = 1, seed: int = 0) -> Callable[[], None]:
    """One run of the file in ``runtime`` at batch 1, its input (random normal, shape
    ``(1, *input_shape)`` in the ONNX layout) set once: what latency times."""
    runner = open_runner(path, runtime, threads)
    runner.run(np.random.default_rng(seed).standard_normal((1, *input_shape))
               .astype(np.float32))
    return runner.invoke


def micro_arena_bytes(path: Path, input_shape: tuple[int, ...]) -> int:
    """The tensor arena LiteRT for Microcontrollers uses for this file: what its recording
    allocator reports after one inference (``Arena allocation total``: the planned activations
    and scratch buffers plus the interpreter's persistent structures; the weights stay in the
    file, in flash). This is the ``tensor_arena`` size to give the interpreter on the device
    (plus alignment slack); measured with this host's build of the same kernels.

    Raises:
        CandidateError: when LiteRT for Microcontrollers refuses the file or fails to run it.
    """
    runner = open_runner(path, "litert-micro")
    runner.run(np.zeros((1, *input_shape), np.float32))
    report = _fd2_output(runner.interpreter.print_allocations)
    found = _ARENA_TOTAL.search(report)
    if found is None:
        raise RuntimeError(f"LiteRT for Microcontrollers printed no arena total: {report!r}")
    return int(found.group(1))


def _fd2_output(call) -> str:
    """What ``call`` writes to file descriptor 2 (C++ code's stderr)."""
    lines: list[str] = []
    with _fd2_lines(lines):
        call()
    return "\n".join(lines)


@contextmanager
def _fd2_lines(lines: list[str]) -> Iterator[None]:
    """Appends to ``lines`` what the body writes to file descriptor 2 (C++ code's stderr)."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [line.strip() for line in sink.read().decode(errors="replace")
                      .splitlines() if line.strip()]


@timed("measuring")
def measure_litert_file(path: Path, onnx_path: Path | None, data: DataBundle, runtime: Runtime,
                        split: Split | None = None, split_name: str = "val_acc",
                        latency: bool = True, meter: LatencyMeter | None = None,
                        mode: str = "none") -> tuple[dict[str, float], dict[str, Any]]:
    """The measures of a LiteRT file in the budget's runtime (``litert`` or
    ``litert-micro``): size_bytes (its length); latency_ms timed in that runtime on this host
    (``litert_latency``), on the device by an ssh ``meter``, or predicted by a profile
    ``meter`` from ``onnx_path`` and the file's quantization ``mode`` (not with ``latency``
    False);
    the accuracy on ``split`` under
    ``split_name``, run in that runtime; and memory:

    - ``litert-micro``: activation_bytes is the tensor arena the runtime uses
      (``micro_arena_bytes``), peak_memory_bytes that plus the file's bytes (the weights
      stay in the file, in flash on a microcontroller);
    - ``litert``: the graph estimate of ``onnx_path``, the ONNX file it was converted from
      (``edgeslim.evaluators.memory``): LiteRT does not report its allocations.

    The ONNX graph's estimate is kept beside the runtime's measure in ``info``
    (``onnx_activation_bytes``, ``onnx_peak_memory_bytes``; float32 tensors).

    Raises:
        CandidateError: when the runtime refuses the file or fails to run it.
    """
    path = Path(path)
    shape = tuple(data.input_shape)
    values: dict[str, float] = {"size_bytes": float(path.stat().st_size)}
    info: dict[str, Any] = {"runtime": runtime.name}
    if onnx_path is not None:
        with runtime_errors(onnx_path, "rejected"):
            weights, activations = memory_bytes(onnx_path)
        info.update(onnx_activation_bytes=activations,
                    onnx_peak_memory_bytes=weights + activations)
        values.update(activation_bytes=float(activations),
                      peak_memory_bytes=float(weights + activations))
    if runtime.name == "litert-micro":
        arena = micro_arena_bytes(path, shape)
        values.update(activation_bytes=float(arena), peak_memory_bytes=float(arena)
                      + values["size_bytes"])
        info["micro_arena_bytes"] = arena
    if latency:
        if meter is not None and meter.source == "ssh":
            timing = meter.measure(path, input_shape=shape)
        elif meter is not None and meter.source == "profile":
            timing = meter.measure(path, graph=onnx_path, mode=mode)
        else:
            timing = litert_latency(path, shape, runtime.name, runtime.threads)
        values["latency_ms"] = timing.latency_ms
        info.update(timing.attrs())
    if split is not None:
        values[split_name] = litert_accuracy(path, split, data, runtime.name, runtime.threads)
    return values, info
