"""Evaluators: how a candidate is built, fine-tuned and measured."""

from edgeslim.evaluators._base import STATIC_MEASURES, UNITS, Caps, Evaluator, Measurement
from edgeslim.evaluators.accuracy import onnx_accuracy
from edgeslim.evaluators.artifact import measure_onnx_file
from edgeslim.evaluators.latency import LatencyResult, available_cores, measure_latency
from edgeslim.evaluators.measures import MODEL_MEASURES, Count, count_macs, count_params
from edgeslim.evaluators.memory import peak_memory_bytes
from edgeslim.evaluators.prune_finetune import (
    ARTIFACT_ONNX,
    ARTIFACT_STATE,
    PruneFinetuneEvaluator,
)

__all__ = [
    "ARTIFACT_ONNX", "ARTIFACT_STATE", "MODEL_MEASURES", "STATIC_MEASURES", "UNITS", "Caps",
    "Count", "Evaluator", "LatencyResult", "Measurement", "PruneFinetuneEvaluator",
    "available_cores", "count_macs", "count_params", "measure_latency", "measure_onnx_file",
    "onnx_accuracy", "peak_memory_bytes",
]
