"""Evaluators: how a candidate is built, fine-tuned and measured."""

from edgeslim.artifacts import ARTIFACT_ONNX, ARTIFACT_PACKED, ARTIFACT_STATE, DEPLOYABLE
from edgeslim.evaluators._base import STATIC_MEASURES, UNITS, Caps, Evaluator, Measurement
from edgeslim.evaluators.accuracy import onnx_accuracy
from edgeslim.evaluators.artifact import measure_onnx_file
from edgeslim.evaluators.latency import LatencyResult, available_cores, measure_latency
from edgeslim.evaluators.measures import MODEL_MEASURES, Count, count_macs, count_params
from edgeslim.evaluators.memory import memory_bytes, peak_memory_bytes
from edgeslim.evaluators.staged import Built, StagedEvaluator, calibration_batches

__all__ = [
    "ARTIFACT_ONNX", "ARTIFACT_PACKED", "ARTIFACT_STATE", "DEPLOYABLE", "MODEL_MEASURES",
    "STATIC_MEASURES", "UNITS", "Built", "Caps", "Count", "Evaluator", "LatencyResult",
    "Measurement", "StagedEvaluator", "available_cores", "calibration_batches", "count_macs",
    "count_params", "measure_latency", "measure_onnx_file", "memory_bytes", "onnx_accuracy",
    "peak_memory_bytes",
]
