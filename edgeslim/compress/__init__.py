"""Compression operations applied to a model copy: structured pruning (more stages plug in here)."""

from edgeslim.compress.prune import (
    IMPORTANCES,
    PrunableGroup,
    apply_pruning,
    kept_channels,
    prunable_groups,
)

__all__ = ["IMPORTANCES", "PrunableGroup", "apply_pruning", "kept_channels", "prunable_groups"]
