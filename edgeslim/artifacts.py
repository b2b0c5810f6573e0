"""The names of a trial's stored files, shared by the evaluator that writes them and the
commands that read them (no PyTorch import: ``optimize export`` refuses a trial in seconds)."""

from __future__ import annotations

from edgeslim.packing import SUFFIX

ARTIFACT_ONNX = "model.onnx"
ARTIFACT_TFLITE = "model.tflite"  # with a LiteRT runtime
ARTIFACT_PACKED = "model" + SUFFIX
ARTIFACT_STATE = "model_state.pt"
# The first a trial has is what a user deploys.
DEPLOYABLE = (ARTIFACT_PACKED, ARTIFACT_TFLITE, ARTIFACT_ONNX)
