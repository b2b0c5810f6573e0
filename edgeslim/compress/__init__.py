"""Compression operations applied to a model copy or to its exported file: structured pruning,
unstructured sparsity, weight clustering and quantization (the stages that run them, and their
orders: ``edgeslim.stages``)."""

from edgeslim.compress.cluster import (
    CLUSTER_METHODS,
    cluster_weights,
    spread_weights,
    weight_layers,
)
from edgeslim.compress.importance import IMPORTANCES
from edgeslim.compress.prune import (
    PrunableGroup,
    apply_pruning,
    kept_channels,
    prunable_copy,
    prunable_groups,
)
from edgeslim.compress.quantize import QUANT_MODES, quantize_onnx
from edgeslim.compress.sparsify import sparsify
from edgeslim.compress.ties import tied

__all__ = [
    "CLUSTER_METHODS", "IMPORTANCES", "QUANT_MODES", "PrunableGroup", "apply_pruning",
    "cluster_weights", "kept_channels", "prunable_copy", "prunable_groups", "quantize_onnx",
    "sparsify", "spread_weights", "tied", "weight_layers",
]
