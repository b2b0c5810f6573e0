"""Writing LiteRT (TensorFlow Lite) files: the exported ONNX file converted by onnx2tf to a
Keras model, then by TensorFlow's ``TFLiteConverter`` to a ``.tflite`` file, quantized there
by LiteRT's own post-training quantizer.

Why this path (benchmarks/results/litert_conversion.md): ``litert-torch``, which converts a
PyTorch model directly, cannot be installed beside torch 2.15 (its converter pins
typing-extensions < 4.13, torch 2.15 needs >= 4.13), and in an environment of its own it
brings a second PyTorch with its CUDA libraries (about 2.8 GB to download). TensorFlow 2.21
installs beside torch 2.15 (same numpy and protobuf) and onnx2tf reads the ONNX file the search
already writes and checks.

The file takes one image at batch 1 in channels-last layout (NHWC: the ONNX input
``(1, C, H, W)`` becomes ``(1, H, W, C)``; a 1-D input ``(1, C, L)`` becomes ``(1, L, C)``),
as LiteRT's kernels and LiteRT for Microcontrollers expect.

Quantization modes map onto LiteRT's own (``edgeslim.compress.quantize`` names them):

- ``int8_static``: full-integer int8, activation ranges calibrated on the same normalised
  training images the onnxruntime path uses; weights int8 per channel. The input and output
  stay float32 (with a quantize and a dequantize op) unless ``int8_io``.
- ``int8_dynamic``: LiteRT's dynamic-range quantization (int8 weights, float activations).
- ``fp16``: float16 weights.
- ``none``: float32.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from edgeslim.errors import CandidateError
from edgeslim.export import _cut, one_line
from edgeslim.fsutil import atomic_write
from edgeslim.logs import captured_stderr

_MLIR_ERROR = re.compile(r"error: ([^\n]+)")
# The sample images onnx2tf looks for in the working directory (``_keras_model``).
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def channels_last(x: np.ndarray) -> np.ndarray:
    """A batch in the model's ONNX layout (N, C, ...) as the LiteRT file takes it (N, ..., C)."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _tensorflow():
    # TensorFlow and Triton (which PyTorch imports when torch._dynamo loads, as torchvision
    # does) each carry LLVM: whichever loads second registers LLVM's options again, and loading
    # Triton after TensorFlow aborts the process ("LLVM ERROR: inconsistency in registered
    # CommandLine options"); the other order works. So Triton, where installed, comes first.
    if find_spec("triton") is not None:
        import triton  # noqa: F401
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up messages
    # Some are printed before its logging reads that: kept in the run's log.
    with captured_stderr("TensorFlow's import"):
        import tensorflow as tf

    return tf


def _convert_errors(tf) -> tuple[type[BaseException], ...]:
    """What onnx2tf and the converter raise for a graph they cannot convert, each a property
    of that candidate's graph: an ONNX operator onnx2tf lacks or a shape it cannot map
    (ValueError, NotImplementedError, KeyError, AssertionError, or ``sys.exit`` after its log
    message: SystemExit), TensorFlow's errors while building the graph (``tf.errors.OpError``),
    the MLIR converter's refusal (``ConverterError``, a RuntimeError) and its quantizer's."""
    from tensorflow.lite.python.convert_phase import ConverterError

    return (ValueError, NotImplementedError, KeyError, AssertionError, RuntimeError,
            SystemExit, tf.errors.OpError, ConverterError)


def onnx_to_tflite(onnx_path: Path, dst: Path, quantize: str = "none",
                   calibration: Iterator[np.ndarray] | None = None,
                   int8_io: bool = False) -> Path:
    """Converts the ONNX file ``onnx_path`` to a LiteRT file ``dst`` (written atomically), at
    batch 1, channels last, quantized with ``quantize`` (see the module docstring).

    ``calibration`` yields normalised float32 batches in the ONNX layout (N, C, ...), for
    ``int8_static``; ``int8_io`` makes its input and output int8 too.

    Raises:
        CandidateError: when onnx2tf or the converter cannot convert the graph.
    """
    if quantize == "int8_static" and calibration is None:
        raise ValueError("int8_static needs calibration batches")
    tf = _tensorflow()
    # The converter prints its diagnostics (MLIR locations, a failed op's context) to the
    # process's stderr: kept in the run's log, off the terminal.
    try:
        with tempfile.TemporaryDirectory() as tmp, captured_stderr("the LiteRT converter"):
            keras_model = _keras_model(onnx_path, Path(tmp))
            data = _converted(tf, keras_model, quantize, calibration, int8_io)
    except ModuleNotFoundError as exc:
        # onnx2tf imports one module per ONNX operator: a missing one is an operator it lacks.
        if not (exc.name or "").startswith("onnx2tf.ops."):
            raise
        raise CandidateError(f"LiteRT conversion failed: onnx2tf cannot convert the ONNX "
                             f"operator {exc.name.removeprefix('onnx2tf.ops.')}") from exc
    except _convert_errors(tf) as exc:
        raise CandidateError(f"LiteRT conversion failed: {type(exc).__name__}: "
                             f"{convert_reason(exc)}") from exc
    return atomic_write(Path(dst), lambda tmp: tmp.write_bytes(data))


def convert_reason(exc: BaseException) -> str:
    """The converter's message on one line: its first ``error:`` (the MLIR converter's names
    the operator it refused: ``'tf.Erf' op is neither a custom op nor a flex op``), else the
    first line."""
    found = _MLIR_ERROR.search(str(exc))
    return _cut(found.group(1).strip()) if found else (one_line(exc) if str(exc)
                                                       else "see the log")


def _keras_model(onnx_path: Path, workdir: Path):
    import onnx2tf

    onnx_path, workdir = Path(onnx_path).resolve(), Path(workdir).resolve()
    # For a model whose input is an RGB image, onnx2tf checks its conversion on sample
    # images it downloads, unless the file is in the working directory: seeded normal noise
    # stands in for them (what it uses for any other input), so that it needs no network.
    rng = np.random.default_rng(0)
    np.save(workdir / SAMPLE_FILE, rng.standard_normal((20, 128, 128, 3), np.float32))
    # onnx2tf prints its progress (and its error messages) to stdout.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as log, \
            contextlib.chdir(workdir):
        warnings.simplefilter("ignore")
        try:
            return onnx2tf.convert(input_onnx_file_path=str(onnx_path),
                                   output_folder_path=str(workdir), batch_size=1,
                                   not_use_onnxsim=True, disable_model_save=True,
                                   non_verbose=True)
        except SystemExit as exc:  # onnx2tf's way of failing: the reason is in its log
            reason = _last_error(log.getvalue())
            raise RuntimeError(reason or f"onnx2tf exited with {exc.code}") from exc


def _last_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line]
    return (errors or lines or [""])[-1]


def _converted(tf, keras_model, quantize: str, calibration: Iterator[np.ndarray] | None,
               int8_io: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8_static":
        batches = list(calibration)

        def representative():
            for batch in batches:
                for image in channels_last(batch):
                    yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return converter.convert()
