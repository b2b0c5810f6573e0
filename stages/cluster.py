"""``cluster``: each layer's weights share a few values (k-means or another codebook).

Parameters: ``cluster/<layer>`` (the layer's number of shared values, among the space's
counts not above its number of weights) and ``cluster/method``. Records ``clusters/<layer>``:
the distinct values left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgeslim.compress import CLUSTER_METHODS, cluster_weights, spread_weights
from edgeslim.errors import ConfigError
from edgeslim.search.records import CLUSTERS_PREFIX
from edgeslim.stages._base import Stage, StageContext, offered

if TYPE_CHECKING:
    import optuna

    from edgeslim.search.records import TrialRecord
    from edgeslim.spaces import Candidate, StagedSpace

CLUSTER_PREFIX = "cluster/"
CLUSTER_METHOD_PARAM = "cluster/method"


class ClusterStage(Stage):
    """Clusters each layer's weights; ``clusters/<layer>`` records the distinct values left."""

    name = "cluster"
    short = "C"
    packs = True

    def check(self, space: StagedSpace) -> None:
        largest = max(space.layers, key=lambda layer: layer.weights)
        for k in space.cluster_counts:
            if not 2 <= k <= largest.weights:
                raise ConfigError(f"--cluster-counts: each count must be >= 2 and <= the "
                                  f"weights of the largest layer ({largest.name}: "
                                  f"{largest.weights}), got {k}")
        bad = [m for m in space.cluster_methods if m not in CLUSTER_METHODS]
        if bad or not space.cluster_methods:
            raise ConfigError(f"--cluster-methods: must be among "
                              f"{', '.join(CLUSTER_METHODS)}, got {', '.join(bad) or 'none'}")

    def suggest(self, space: StagedSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        counts = tuple((layer.name, int(trial.suggest_categorical(
            CLUSTER_PREFIX + layer.name, space.counts_for(layer)))) for layer in space.layers)
        method = str(trial.suggest_categorical(CLUSTER_METHOD_PARAM,
                                               list(space.cluster_methods)))
        return {"cluster_counts": counts, "cluster_method": method}

    def params_for(self, space: StagedSpace, candidate: Candidate) -> dict[str, Any]:
        params: dict[str, Any] = {}
        counts = candidate.counts
        for layer in space.layers:
            choices = space.counts_for(layer)
            k = counts.get(layer.name, max(choices))
            if k not in choices:
                raise ConfigError(f"cluster count {k} of {layer.name} is not among the "
                                  f"counts searched for it {choices}")
            params[CLUSTER_PREFIX + layer.name] = k
        params[CLUSTER_METHOD_PARAM] = offered(candidate.cluster_method,
                                               space.cluster_methods, "method")
        return params

    def key(self, space: StagedSpace, candidate: Candidate, runs: bool) -> dict[str, Any]:
        return {"clusters": dict(candidate.cluster_counts) if runs else None,
                "cluster_method": candidate.cluster_method if runs else None}

    def extreme(self, space: StagedSpace, most: bool) -> dict[str, Any]:
        """Each layer at the offered count nearest the fewest (or the most) values."""
        if not space.cluster_counts:
            return {}
        count = min(space.cluster_counts) if most else max(space.cluster_counts)
        return {"cluster_counts": tuple(
            (layer.name, min(space.counts_for(layer), key=lambda k: abs(k - count)))
            for layer in space.layers)}

    def card(self, record: TrialRecord, candidate: Candidate, space: dict[str, Any],
             runs: bool) -> dict[str, Any]:
        if not runs:
            return {}
        return {"cluster_method": candidate.cluster_method, "clusters": record.clusters}

    def apply(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
              seed: int = 0, context: StageContext | None = None) -> dict[str, Any]:
        distinct = cluster_weights(model, candidate.counts, candidate.cluster_method, seed)
        return {CLUSTERS_PREFIX + name: n for name, n in distinct.items()}

    def apply_structure(self, model: nn.Module, candidate: Candidate, example: torch.Tensor,
                        seed: int = 0) -> dict[str, Any]:
        """The cluster counts without k-means (``spread_weights``): as many distinct values
        per row as the clustered model can hold, which is what the packed file's size
        depends on."""
        distinct = spread_weights(model, candidate.counts, seed)
        return {CLUSTERS_PREFIX + name: n for name, n in distinct.items()}

    def clustered(self, model: nn.Module, candidate: Candidate) -> set[str]:
        return set(candidate.counts)
