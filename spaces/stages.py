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

from edgeslim.defaults import CLUSTER_COUNTS as DEFAULT_CLUSTER_COUNTS
from edgeslim.errors import ConfigError
from edgeslim.spaces._base import Candidate
from edgeslim.spaces.pruning import PruningSpace
from edgeslim.stages import STAGES, buildable_orders, order_name, order_problem, parse_order

ORDER_PARAM = "stages/order"


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
        used = {name for order in self.orders for name in order}
        for name, stage in STAGES.items():
            if name in used:
                stage.check(self)

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
        for name, stage in STAGES.items():  # the canonical order, whatever the trial's
            if name in order:
                fields.update(stage.suggest(self, trial))
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
        for name, stage in STAGES.items():
            if name in candidate.order:
                params.update(stage.params_for(self, candidate))
        return params

    def built_as(self, candidate: Candidate) -> str:
        """What ``candidate`` builds, as a key: candidates with equal keys build the same
        model (ratios that snap to the same channel counts, a channel criterion with nothing
        pruned, settings of stages the order does not run), so one fine-tune scores both."""
        key: dict[str, Any] = {"order": list(candidate.order)}
        for name, stage in STAGES.items():
            key.update(stage.key(self, candidate, runs=name in candidate.order))
        return json.dumps(key, sort_keys=True)

    def counts_for(self, layer: WeightLayer) -> list[int]:
        """The cluster counts offered to ``layer``: those not above its number of weights."""
        return [k for k in self.cluster_counts if k <= layer.weights] or [layer.weights]

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
