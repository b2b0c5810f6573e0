"""Quantization of an exported ONNX model, with onnxruntime's quantizer (PyTorch's
``torch.ao.quantization`` is deprecated).

Modes (``QUANT_MODES``):

- ``int8_static``: post-training static quantization. onnxruntime's pre-processing (shape
  inference, graph optimisation), then ``quantize_static`` in QDQ format: weights int8 per
  output channel (symmetric), activations uint8 per tensor with ranges calibrated (min/max) on
  training images. onnxruntime fuses the QDQ pairs into int8 kernels (QLinearConv, ...).
- ``int8_dynamic``: weights int8 per output channel, activations quantized on the fly at each
  run (``quantize_dynamic``; ConvInteger / MatMulInteger). No calibration.
- ``fp16``: weights stored as float16 and cast back to float32 when the runtime loads the model
  (onnxruntime folds the casts), so the file halves and the compute stays float32: CPU runtimes
  have no float16 convolution kernels on most edge CPUs (the Cortex-A72 of a Pi 4 lacks float16
  arithmetic).
- ``none``: the float32 file unchanged.

Whether int8 runs faster depends on the CPU: measure the artifact, never assume.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeslim.errors import CandidateError
from edgeslim.export import INPUT_NAME, ORT_ERRORS, one_line, ort_reason, value_bytes

QUANT_MODES = ("none", "int8_static", "int8_dynamic", "fp16")
# How int8_static sets each activation's range from the calibration images (onnxruntime's
# calibrators): the extremes seen, a percentile of the magnitudes (99.999th), or the range that
# minimises the KL divergence between the float and the quantized histograms (entropy).
CALIBRATIONS = ("minmax", "percentile", "entropy")
# How quantization fails on a graph it cannot handle, a property of that candidate: the
# quantizer (Python code) raises ValueError, NotImplementedError or RuntimeError, or fails one
# of its many asserts, for a node pattern it does not support; its calibration runs the graph
# in onnxruntime (ORT_ERRORS); its pre-processing runs onnx's checker and shape inference; and
# onnx refuses (ValueError) to save a model past 2 GiB. A TypeError, AttributeError or KeyError
# is left to surface: it comes from calling the quantizer wrongly, a bug of this package.
QUANT_ERRORS: tuple[type[Exception], ...] = (
    ValueError, NotImplementedError, RuntimeError, AssertionError, *ORT_ERRORS,
    onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
# onnxruntime's assertion when a range it computes is nan: min and max of activations that
# hold inf or nan.
_NAN_RANGE = "scale issue"
# How many calibration batches' activations the min/max calibrator holds before it folds them
# into its running ranges (onnxruntime's strided min/max): the same ranges as holding them all,
# in the memory of one batch. onnxruntime otherwise keeps every activation of every batch
# (15 GB for ViT-B/16 at 224x224); its CalibMaxIntermediateOutputs drops them instead of
# folding them in (onnxruntime 1.31).
HELD_BATCHES = 1
# Activation bytes one calibration batch may hold. The min/max calibrator outputs every tensor
# of the graph for each image of a batch: 133 MB an image for MaxViT-T at 224x224, 8.5 GB
# for a batch of 64, for which the kernel killed the search. Batches are split to stay under
# this; the ranges are the same (min/max folds batch after batch).
CALIBRATION_BATCH_BYTES = 1 << 30
# Operators whose float weights the fp16 mode stores as float16.
_WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def quantize_onnx(src: Path, dst: Path, mode: str,
                  calibration: Iterator[np.ndarray] | None = None,
                  calibrate: str = "minmax") -> Path:
    """Writes ``src`` quantized with ``mode`` to ``dst`` and returns ``dst``.

    ``calibration`` yields float32 input batches (already normalised) for ``int8_static``;
    ``calibrate`` is how their activation ranges are set (``CALIBRATIONS``).

    Raises:
        CandidateError: when the quantizer fails on the model (``QUANT_ERRORS``).
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; valid: {', '.join(QUANT_MODES)}")
    if mode == "int8_static" and calibration is None:
        raise ValueError("int8_static needs calibration batches")
    if calibrate not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {calibrate!r}; valid: {', '.join(CALIBRATIONS)}")
    src, dst = Path(src), Path(dst)
    if mode == "none":
        dst.write_bytes(src.read_bytes())
        return dst
    try:
        if mode == "fp16":
            onnx.save(fp16_weights(onnx.load(str(src))), str(dst))
        else:
            _int8(src, dst, mode, calibration, calibrate)
    except QUANT_ERRORS as exc:
        detail = f" in onnxruntime: {ort_reason(exc)}" if isinstance(exc, ORT_ERRORS) \
            else f": {type(exc).__name__}: {one_line(exc)}"
        if isinstance(exc, AssertionError) and str(exc) == _NAN_RANGE:
            detail = (": a calibrated range is not a number: the float model's activations "
                      "overflow (inf or nan) on the calibration images")
        raise CandidateError(f"{mode} quantization failed{detail}") from exc
    return dst


def _int8(src: Path, dst: Path, mode: str, calibration: Iterator[np.ndarray] | None,
          calibrate: str = "minmax") -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The histogram calibrators print their progress to stdout: kept off the terminal.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if mode == "int8_dynamic":
            quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8)
            return

        batches = _split(list(calibration), _image_bytes(pre))

        class Reader(CalibrationDataReader):
            """The batches, one range of them at a time (``set_range``, for the strided
            min/max calibration)."""

            def __init__(self) -> None:
                self.set_range(0, len(batches))

            def __len__(self) -> int:
                return len(batches)

            def set_range(self, start_index: int, end_index: int) -> None:
                self.batches = iter(batches[start_index:end_index])

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self.batches, None)
                return None if batch is None else {INPUT_NAME: batch}

        # Strided min/max folds each batch's activations into the running ranges before the
        # next batch runs, where onnxruntime otherwise holds every activation of every batch.
        stride = {"CalibStridedMinMax": HELD_BATCHES} if calibrate == "minmax" and HELD_BATCHES \
            else {}
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options=stride,
                        calibrate_method={
                            "minmax": CalibrationMethod.MinMax,
                            "percentile": CalibrationMethod.Percentile,
                            "entropy": CalibrationMethod.Entropy}[calibrate])


def _image_bytes(path: Path) -> int:
    """Bytes of every float tensor the graph at ``path`` computes for one image (its shapes
    inferred, the batch dimension taken as 1)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(value_bytes(info) for info in (*graph.value_info, *graph.output)
               if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT)


def _split(batches: list[np.ndarray], image_bytes: int) -> list[np.ndarray]:
    """``batches`` cut so that none holds more than ``CALIBRATION_BATCH_BYTES`` of
    activations (``image_bytes`` an image); the same images in the same order."""
    size = max(1, CALIBRATION_BATCH_BYTES // max(1, image_bytes))
    return [b[i:i + size] for b in batches for i in range(0, len(b), size)]


def fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose float32 weight initializers (the weight input of Conv, Gemm,
    MatMul) are stored as float16, each followed by a Cast back to float32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weights = {node.input[i] for node in graph.node
               for op, i in _WEIGHT_OPS.items() if node.op_type == op and len(node.input) > i}
    weights |= {node.input[0] for node in graph.node
                if node.op_type in ("MatMul", "Gemm") and node.input[0] in inits}
    casts = []
    for name in sorted(weights):
        tensor = inits.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16),
                                       name + "_fp16")
        tensor.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}_cast"))
    # Casts first: the graph stays topologically sorted.
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model
