"""The whole compression space: the order of the stages, and each stage's own settings.

Parameters (names as they appear in the study and the dashboard):

``stages/order``      one of the buildable orders of the enabled stages, ``prune>cluster>quantize``
``prune/<layer>``     pruning ratio of a dependency group, and ``prune/importance`` (see
                      ``PruningSpace``); only when the order prunes
``sparsify/ratio``    fraction of each layer's weights set to zero; only when the order sparsifies
``cluster/<layer>``   number of shared values of a layer's weights, and ``cluster/method``; only
                      when the order clusters
``quantize/mode``     ``int8_static``, ``int8_dynamic`` or ``fp16``; only when the order quantizes

Parameters a stage does not use are not sampled (Optuna's define-by-run conditional space), so
the sampler learns each stage's settings from the trials that ran it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna

from edgeslim.compress import (
    CLUSTER_METHODS,
    QUANT_MODES,
    buildable_orders,
    order_name,
    order_problem,
    parse_order,
)
from edgeslim.errors import ConfigError
from edgeslim.spaces._base import Candidate
from edgeslim.spaces.pruning import PruningSpace

ORDER_PARAM = "stages/order"
SPARSITY_PARAM = "sparsify/ratio"
CLUSTER_PREFIX = "cluster/"
CLUSTER_METHOD_PARAM = "cluster/method"
QUANT_PARAM = "quantize/mode"
DEFAULT_CLUSTER_COUNTS = (8, 16, 32, 64, 256)


@dataclass(frozen=True)
class WeightLayer:
    """A layer whose weights can be clustered: its qualified name and number of weights."""

    name: str
    weights: int


@dataclass(frozen=True)
class StagedSpace:
    """Searches the order of the enabled stages and every enabled stage's settings.

    Example:
        >>> space = StagedSpace(pruning, layers, orders=(("prune", "cluster", "quantize"),))
        >>> space(optuna.trial.FixedTrial({...})).order  # doctest: +SKIP
        ('prune', 'cluster', 'quantize')
    """

    pruning: PruningSpace
    layers: tuple[WeightLayer, ...]
    orders: tuple[tuple[str, ...], ...]
    cluster_counts: tuple[int, ...] = DEFAULT_CLUSTER_COUNTS
    cluster_methods: tuple[str, ...] = ("kmeans",)
    quant_modes: tuple[str, ...] = ("int8_static", "int8_dynamic", "fp16")
    sparsity_low: float = 0.3
    sparsity_high: float = 0.9
    sparsity_step: float = 0.05

    def __post_init__(self) -> None:
        if not self.orders:
            raise ConfigError("--stages: no buildable order of the given stages")
        for order in self.orders:
            problem = order_problem(order)
            if problem:
                raise ConfigError(f"--order {order_name(order)}: {problem}")
        if any(o for o in self.orders if "cluster" in o):
            largest = max(self.layers, key=lambda layer: layer.weights)
            for k in self.cluster_counts:
                if not 2 <= k <= largest.weights:
                    raise ConfigError(f"--cluster-counts: each count must be >= 2 and <= the "
                                      f"weights of the largest layer ({largest.name}: "
                                      f"{largest.weights}), got {k}")
            bad = [m for m in self.cluster_methods if m not in CLUSTER_METHODS]
            if bad or not self.cluster_methods:
                raise ConfigError(f"--cluster-methods: must be among "
                                  f"{', '.join(CLUSTER_METHODS)}, got {', '.join(bad) or 'none'}")
        modes = [m for m in self.quant_modes if m not in QUANT_MODES or m == "none"]
        if modes or not self.quant_modes:
            raise ConfigError(f"--quantize: must be among "
                              f"{', '.join(m for m in QUANT_MODES if m != 'none')}, "
                              f"got {', '.join(modes) or 'none'}")
        if not 0.0 < self.sparsity_low <= self.sparsity_high < 1.0:
            raise ConfigError(f"--sparsity: must be a range within (0, 1), got "
                              f"{self.sparsity_low}..{self.sparsity_high}")

    @classmethod
    def for_stages(cls, pruning: PruningSpace, layers: tuple[WeightLayer, ...],
                   stages: tuple[str, ...] | None = None, order: str | None = None,
                   **options: Any) -> StagedSpace:
        """The space over every buildable order of ``stages``, or the one fixed ``order``."""
        if order is not None:
            orders: tuple[tuple[str, ...], ...] = (parse_order(order),)
        else:
            orders = buildable_orders(stages or ("prune",))
        return cls(pruning=pruning, layers=layers, orders=orders, **options)

    def __call__(self, trial: optuna.trial.BaseTrial) -> Candidate:
        names = [order_name(o) for o in self.orders]
        order = parse_order(str(trial.suggest_categorical(ORDER_PARAM, names)))
        fields: dict[str, Any] = {"order": order, "round_to": self.pruning.round_to}
        if "prune" in order:
            fields["prune_ratios"], fields["importance"] = self.pruning.suggest(trial)
        if "sparsify" in order:
            fields["sparsity"] = round(trial.suggest_float(
                SPARSITY_PARAM, self.sparsity_low, self.sparsity_high, step=self.sparsity_step),
                10)
        if "cluster" in order:
            fields["cluster_counts"] = tuple(
                (layer.name, int(trial.suggest_categorical(CLUSTER_PREFIX + layer.name,
                                                           self.counts_for(layer))))
                for layer in self.layers)
            fields["cluster_method"] = str(trial.suggest_categorical(
                CLUSTER_METHOD_PARAM, list(self.cluster_methods)))
        if "quantize" in order:
            fields["quantize"] = str(trial.suggest_categorical(QUANT_PARAM,
                                                               list(self.quant_modes)))
        return Candidate(**fields)

    def params_for(self, candidate: Candidate) -> dict[str, Any]:
        """The trial parameters that make this space return ``candidate`` (for enqueueing).

        Raises:
            ConfigError: when the candidate uses an order, cluster count, method or mode the
                space does not offer.
        """
        if candidate.order not in self.orders:
            raise ConfigError(f"order {candidate.order_name} is not in the searched orders "
                              f"({', '.join(order_name(o) for o in self.orders)})")
        params: dict[str, Any] = {ORDER_PARAM: candidate.order_name}
        if "prune" in candidate.order:
            params.update(self.pruning.params_for(candidate))
        if "sparsify" in candidate.order:
            steps = round((candidate.sparsity - self.sparsity_low) / self.sparsity_step)
            params[SPARSITY_PARAM] = round(min(max(
                self.sparsity_low + steps * self.sparsity_step, self.sparsity_low),
                self.sparsity_high), 10)
        if "cluster" in candidate.order:
            counts = candidate.counts
            for layer in self.layers:
                offered = self.counts_for(layer)
                k = counts.get(layer.name, max(offered))
                if k not in offered:
                    raise ConfigError(f"cluster count {k} of {layer.name} is not among the "
                                      f"counts searched for it {offered}")
                params[CLUSTER_PREFIX + layer.name] = k
            params[CLUSTER_METHOD_PARAM] = self._offered(candidate.cluster_method,
                                                         self.cluster_methods, "method")
        if "quantize" in candidate.order:
            params[QUANT_PARAM] = self._offered(candidate.quantize, self.quant_modes,
                                                "quantization mode")
        return params

    def built_as(self, candidate: Candidate) -> str:
        """What ``candidate`` builds, as a key: candidates with equal keys build the same
        model (ratios that snap to the same channel counts, a channel criterion with nothing
        pruned, settings of stages the order does not run), so one fine-tune scores both."""
        order = candidate.order
        kept = self.pruning.kept(candidate) if "prune" in order else ()
        pruned = any(k < g.channels for k, g in zip(kept, self.pruning.groups))
        return json.dumps({
            "order": list(order), "channels": list(kept),
            "importance": candidate.importance if pruned else None,
            "sparsity": candidate.sparsity if "sparsify" in order else None,
            "clusters": dict(candidate.cluster_counts) if "cluster" in order else None,
            "cluster_method": candidate.cluster_method if "cluster" in order else None,
            "quantize": candidate.quantize}, sort_keys=True)

    def counts_for(self, layer: WeightLayer) -> list[int]:
        """The cluster counts offered to ``layer``: those not above its number of weights."""
        return [k for k in self.cluster_counts if k <= layer.weights] or [layer.weights]

    @staticmethod
    def _offered(value: str, offered: tuple[str, ...], what: str) -> str:
        if value not in offered:
            raise ConfigError(f"{what} {value!r} is not among the searched ones "
                              f"({', '.join(offered)})")
        return value

    def describe(self) -> dict[str, Any]:
        return {
            **self.pruning.describe(),
            "kind": "staged",
            "orders": [order_name(o) for o in self.orders],
            "layers": [{"name": layer.name, "weights": layer.weights} for layer in self.layers],
            "cluster_counts": list(self.cluster_counts),
            "cluster_methods": list(self.cluster_methods),
            "quant_modes": list(self.quant_modes),
            "sparsity": [self.sparsity_low, self.sparsity_high, self.sparsity_step],
        }
