"""Compression operations applied to a model copy or to its exported file: structured pruning,
unstructured sparsity, weight clustering, quantization, and which orders of them can be built."""

from edgeslim.compress.cluster import (
    CLUSTER_METHODS,
    cluster_weights,
    spread_weights,
    weight_layers,
)
from edgeslim.compress.importance import IMPORTANCES
from edgeslim.compress.order import (
    STAGES,
    TRAINED_STAGES,
    buildable_orders,
    order_name,
    order_problem,
    parse_order,
)
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
    "CLUSTER_METHODS", "IMPORTANCES", "QUANT_MODES", "STAGES", "TRAINED_STAGES", "PrunableGroup",
    "apply_pruning", "buildable_orders", "cluster_weights", "kept_channels", "order_name",
    "order_problem", "parse_order", "prunable_copy", "prunable_groups", "quantize_onnx",
    "sparsify", "spread_weights", "tied", "weight_layers",
]
