"""Writing deployable files: ONNX (checked in onnxruntime) and a self-contained PyTorch program."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from torch import nn

from edgeslim._pooling import exportable_pooling
from edgeslim.errors import CandidateError
from edgeslim.fsutil import atomic_write
from edgeslim.logs import captured_stderr

ONNX_OPSET = 17
# The largest message protobuf serialises: one ONNX file holds at most this many bytes.
ONNX_FILE_LIMIT = 2**31
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# ONNX fp32 against PyTorch fp32 on the same input: kernels differ in summation order, so
# logits agree to about 1e-5 relative; 1e-3 absolute on logits of magnitude ~10 is a clear bound.
ONNX_ATOL = 1e-3
# What onnxruntime raises when it refuses a file or fails while running it: an operator, type
# or opset it does not implement, a graph it finds invalid, a kernel that fails on the shapes
# the candidate produces. Each says something about that file, so the candidate fails and the
# search goes on. Left out, so that they stop the search: NoSuchFile, NoModel, ModelLoaded,
# EngineError, EPFail, DeviceReset (a missing file, a misused session or a broken runtime,
# whatever the candidate). These exceptions derive from Exception only, not RuntimeError.
ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.InvalidProtobuf,
    ort_state.NotImplemented, ort_state.RuntimeException)
# What the exporters raise for a model they cannot convert, each a property of that model:
# torch.onnx's errors (UnsupportedOperatorError, SymbolicValueError, the dynamo exporter's
# ConversionError and TorchExportError), torch.export's and the tracer's are RuntimeError, as
# are the errors of PyTorch operators that reject the candidate's shapes during tracing; the
# TorchScript exporter's symbolic functions signal a node they cannot convert (an unknown
# rank, an unsupported argument) with AssertionError, ValueError or NotImplementedError.
# TypeError, AttributeError and the like are left to surface: a bug in the calling code.
EXPORT_ERRORS: tuple[type[Exception], ...] = (RuntimeError, AssertionError, ValueError,
                                              NotImplementedError)
# onnxruntime's messages name where its C++ source raised, with the full signature.
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ")
_ORT_SOURCE = re.compile(r"/onnxruntime_src/\S+:\d+ (?:[^(]*\([^)]*\) )?")
_LOAD_FROM = re.compile(r"Load model from \S+ failed:")
REASON_CHARS = 300  # a fail_reason is one line: long enough for the operator and node names


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _cut(text: str, limit: int = REASON_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when it has none), cut at
    ``REASON_CHARS``: readable in a table and a dashboard."""
    return _cut(_first_line(exc))


def ort_reason(exc: BaseException) -> str:
    """onnxruntime's message on one line, without the temporary path and the C++ source
    location: ``INVALID_GRAPH: ... No Op registered for Foo with domain_version of 17``."""
    text = _ORT_PREFIX.sub(r"\1: ", _first_line(exc))
    return _cut(_ORT_SOURCE.sub("", _LOAD_FROM.sub("", text)))


@contextmanager
def runtime_errors(path: Path, doing: str = "failed to run") -> Iterator[None]:
    """Turns onnxruntime's refusal of the file ``path`` (``ORT_ERRORS``) into the failure of
    the candidate it holds: ``onnxruntime <doing> the artifact <name>: <reason>``."""
    try:
        yield
    except ORT_ERRORS as exc:
        # Chained: --debug and Optuna's log show onnxruntime's full message.
        raise CandidateError(f"onnxruntime {doing} the artifact {Path(path).name}: "
                             f"{ort_reason(exc)}") from exc


def onnx_bytes(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """Serialises ``model`` (eval mode, fp32) to ONNX with a dynamic batch dimension.

    Uses the TorchScript-based exporter, which takes well under a second for these CNNs (the
    dynamo exporter takes several); falls back to the dynamo exporter where it is gone.

    Raises:
        CandidateError: when the exporter cannot convert the model (``EXPORT_ERRORS``).
    """
    model = model.eval()
    weights = sum(t.numel() * t.element_size()
                  for t in (*model.parameters(), *model.buffers()))
    if weights > ONNX_FILE_LIMIT:  # the exporter would fail after minutes, saying less
        raise CandidateError(f"ONNX export failed: the model's weights take "
                             f"{weights / 1e9:.1f} GB, over the {ONNX_FILE_LIMIT / 2**30:.0f} "
                             "GiB one ONNX file holds (protobuf's limit)")
    buf = io.BytesIO()
    # The TorchScript exporter dumps the whole graph to its log when it fails, and turns that
    # log on in every export; sent to stderr, the dump is caught with the rest into the run's
    # log file (``captured_stderr``) instead of the terminal.
    with contextlib.suppress(AttributeError, RuntimeError):
        torch._C._jit_set_onnx_log_output_stream("stderr")
    with warnings.catch_warnings(), captured_stderr("the ONNX exporter"):
        warnings.simplefilter("ignore")
        try:
            with exportable_pooling(model, example_input):
                _export(model, example_input, buf)
        except EXPORT_ERRORS as exc:
            raise CandidateError(f"ONNX export failed: {type(exc).__name__}: "
                                 f"{one_line(exc)}") from exc
    return buf.getvalue()


def _export(model: nn.Module, example_input: torch.Tensor, buf: io.BytesIO) -> None:
    try:
        torch.onnx.export(model, (example_input,), buf, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except TypeError:  # an exporter without the TorchScript path
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(model, (example_input,), dynamo=True,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},))
        program.save(buf)


def write_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Exports ``model`` to ``path`` (atomically) after onnx's checker accepts the graph.

    Raises:
        CandidateError: when the export fails or writes a graph the checker rejects.
    """
    data = onnx_bytes(model, example_input)
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except onnx.checker.ValidationError as exc:
        # The exporter wrote a graph ONNX itself calls invalid: a property of this model.
        raise CandidateError(f"ONNX export failed: the exported graph is invalid: "
                             f"{one_line(exc)}") from exc
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def value_dims(info: onnx.ValueInfoProto) -> list[int]:
    """The shape of a graph value, each symbolic dimension (the batch) taken as 1."""
    return [d.dim_value if d.HasField("dim_value") else 1
            for d in info.type.tensor_type.shape.dim]


def value_bytes(info: onnx.ValueInfoProto) -> int:
    """Bytes one instance of a graph value holds (batch 1); 0 when its shape is unknown."""
    ttype = info.type.tensor_type
    if not ttype.HasField("shape"):
        return 0
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).itemsize
    return int(np.prod(value_dims(info), dtype=np.int64)) * itemsize


def ort_session(path: Path, threads: int = 1,
                level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                ) -> ort.InferenceSession:
    """An onnxruntime CPU session with ``threads`` intra-op threads and sequential execution.

    Raises:
        CandidateError: when onnxruntime refuses the file (``ORT_ERRORS``).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    with runtime_errors(path, "rejected"):
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_max_abs_diff(model: nn.Module, path: Path, example: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and onnxruntime's logits on ``example``."""
    with torch.no_grad():
        expected = model.eval()(example).numpy()
    session = ort_session(path)
    with runtime_errors(path):
        got = session.run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0]
    return float(np.max(np.abs(expected - got)))


def write_torch_program(model: nn.Module, example_input: torch.Tensor, out_dir: Path,
                        stem: str = "model") -> tuple[Path, str]:
    """Saves a PyTorch file that loads without this package's model code, with a dynamic
    batch dimension: a ``torch.export`` program ``<stem>.pt2``
    (``torch.export.load(path).module()``) or, where export fails on a model, a TorchScript
    trace ``<stem>.torchscript.pt`` (``torch.jit.load(path)``).

    Returns:
        ``(path, format)`` with format ``"torch.export"`` or ``"torchscript"``.
    """
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # Traced at batch 2: a batch of 1 would specialise the dimension to 1.
            batch2 = example_input.expand(2, *example_input.shape[1:]).contiguous()
            program = torch.export.export(model, (batch2,),
                                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
            path = atomic_write(Path(out_dir) / f"{stem}.pt2",
                                lambda tmp: torch.export.save(program, str(tmp)))
            return path, "torch.export"
        except Exception:
            traced = torch.jit.trace(model, example_input)
            path = atomic_write(Path(out_dir) / f"{stem}.torchscript.pt",
                                lambda tmp: torch.jit.save(traced, str(tmp)))
            return path, "torchscript"
