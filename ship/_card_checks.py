"""Checks of an exported file against the float PyTorch model for its card (the ONNX file's
logits; the LiteRT file's), and the parts of a card that differ when the artifact is a LiteRT
file: its measures in the budget's LiteRT runtime."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.budget import Runtime
from edgeslim.data import DataBundle
from edgeslim.errors import CandidateError, StudyError
from edgeslim.evaluators.litert import litert_accuracy, measure_litert_file, open_runner
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.export import INPUT_NAME, ONNX_ATOL, OUTPUT_NAME, ort_session
from edgeslim.models import build_model, load_checkpoint
from edgeslim.search._prepare import base_test_accuracy
from edgeslim.search.records import StudyRecord

# How each runtime ran the file, for the card.
RUNTIME_TEXT = {
    "litert": "LiteRT (ai-edge-litert) CPU interpreter, batch 1, channels last",
    "litert-micro": "LiteRT for Microcontrollers (tflite-micro) built for this host, batch 1, "
                    "channels last: the device's reference kernels and arena planner",
}
# How many validation images the ONNX-against-PyTorch check runs on.
CHECK_IMAGES = 64


def check_onnx_against_torch(model: nn.Module, onnx_path: Path, data: DataBundle,
                             exact: bool) -> dict[str, Any]:
    """Runs the first ``CHECK_IMAGES`` validation images through the float PyTorch model and the
    ONNX file and compares logits. With ``exact`` (float32 weights in the file) the logits must
    agree within ``ONNX_ATOL``; a quantized file is expected to differ, and the check reports how
    much and how often the predicted class agrees."""
    x = data.normalize(data.val.x[:CHECK_IMAGES])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = ort_session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    diff = float(np.max(np.abs(expected - got)))
    agree = float((expected.argmax(1) == got.argmax(1)).mean())
    return {"max_abs_diff": diff, "tolerance": ONNX_ATOL if exact else None,
            "images": int(x.shape[0]), "argmax_agree": agree,
            "pass": diff <= ONNX_ATOL if exact else None,
            "note": "float32 weights: logits must match" if exact else
                    "quantized weights: logits differ by design; accuracy above is the file's"}


def with_base_test_accuracy(record: StudyRecord, base: dict[str, float], data: DataBundle,
                            runtime: Runtime) -> dict[str, float]:
    """``base`` with the base model's test accuracy in ``runtime``: a search leaves it to the
    card, since no limit or objective reads it. Unchanged without a test split, when ``base``
    has it already, or when the study's base weights are no longer on disk."""
    weights = record.path("base_weights")
    if data.test is None or "test_acc" in base or weights is None or not Path(weights).is_file():
        return base
    model = build_model(record.setup["model"], data.in_channels, data.num_classes)
    load_checkpoint(model, Path(weights), record.setup["model"])
    with tempfile.TemporaryDirectory(prefix="base-") as tmp:
        return {**base, "test_acc": base_test_accuracy(model.eval(), data, runtime, Path(tmp))}


# Float32 LiteRT against PyTorch: the same 1e-3 bound as the ONNX file (``ONNX_ATOL``).
LITERT_ATOL = 1e-3


def litert_measures(tflite: Path, onnx_path: Path, data: DataBundle, runtime: Runtime,
                    meter: LatencyMeter | None = None, mode: str = "none",
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    """The file's measures in ``runtime``, validation and test accuracy included; latency
    from ``meter`` when it is the device's (ssh) or its profile (from ``onnx_path`` and the
    file's quantization ``mode``)."""
    try:
        values, info = measure_litert_file(tflite, onnx_path, data, runtime, data.val,
                                           meter=meter, mode=mode)
        if data.test is not None:
            values["test_acc"] = litert_accuracy(tflite, data.test, data, runtime.name,
                                                 runtime.threads)
    except CandidateError as exc:
        raise StudyError(f"cannot measure the exported file in {runtime.name}: {exc}") from None
    return values, info


def check_litert_against_torch(model: nn.Module, tflite: Path, runtime: str,
                               data: DataBundle, images: int, exact: bool) -> dict[str, Any]:
    """The first ``images`` validation images through the float PyTorch model and the LiteRT
    file in ``runtime``: with ``exact`` (float32 file) the logits must agree within
    ``LITERT_ATOL``; a quantized file differs by design, and the check reports how much and
    how often the predicted class agrees."""
    x = data.normalize(data.val.x[:images])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    runner = open_runner(tflite, runtime)
    got = np.concatenate([runner.run(x[i:i + 1].numpy()) for i in range(len(x))])
    diff = float(np.max(np.abs(expected - got)))
    return {"runtime": runtime, "max_abs_diff": diff,
            "tolerance": LITERT_ATOL if exact else None, "images": int(x.shape[0]),
            "argmax_agree": float((expected.argmax(1) == got.argmax(1)).mean()),
            "pass": diff <= LITERT_ATOL if exact else None,
            "note": "float32 weights: logits must match" if exact else
                    "quantized file: logits differ by design; accuracy above is the file's"}
