"""Writing deployable files: ONNX (checked in onnxruntime) and a self-contained PyTorch program."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgeslim.errors import CandidateError
from edgeslim.fsutil import atomic_write

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# ONNX fp32 against PyTorch fp32 on the same input: kernels differ in summation order, so
# logits agree to about 1e-5 relative; 1e-3 absolute on logits of magnitude ~10 is a clear bound.
ONNX_ATOL = 1e-3


def onnx_bytes(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """Serialises ``model`` (eval mode, fp32) to ONNX with a dynamic batch dimension.

    Uses the TorchScript-based exporter, which takes well under a second for these CNNs (the
    dynamo exporter takes several); falls back to the dynamo exporter where it is gone.
    """
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
        except Exception as exc:
            raise CandidateError(f"ONNX export failed: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}") from None
    return buf.getvalue()


def write_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    data = onnx_bytes(model, example_input)
    onnx.checker.check_model(onnx.load_from_string(data))
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def ort_session(path: Path, threads: int = 1,
                level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                ) -> ort.InferenceSession:
    """An onnxruntime CPU session with ``threads`` intra-op threads and sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CandidateError(f"onnxruntime rejected {Path(path).name}: "
                             f"{str(exc).splitlines()[0][:200]}") from None


def onnx_max_abs_diff(model: nn.Module, path: Path, example: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and onnxruntime's logits on ``example``."""
    with torch.no_grad():
        expected = model.eval()(example).numpy()
    got = ort_session(path).run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0]
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
