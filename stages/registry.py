"""The registered stages, and which orders of them can be built.

Stages (``STAGES``): ``prune`` (channels removed), ``sparsify`` (unstructured zeros),
``cluster`` (shared weight values) and ``quantize`` (int8 or fp16 storage of the exported
file). A brief fine-tune follows each trained stage; a stage that works on the exported file
(``quantize``) comes last. The rules come from the stages themselves (``Stage.trained``,
``Stage.not_after``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import permutations

from edgeslim.stages._base import Stage
from edgeslim.stages.cluster import ClusterStage
from edgeslim.stages.prune import PruneStage
from edgeslim.stages.quantize import QuantizeStage
from edgeslim.stages.sparsify import SparsifyStage

# In their canonical order: the order a trial samples their parameters in, and orders of
# equal length sort by.
STAGES: dict[str, Stage] = {s.name: s for s in (PruneStage(), SparsifyStage(), ClusterStage(),
                                                QuantizeStage())}
SEPARATOR = ">"


def stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; valid: {', '.join(STAGES)}") from None


def order_problem(order: Sequence[str]) -> str | None:
    """Why ``order`` cannot be built, or None when it can."""
    if not order:
        return "an order needs at least one stage"
    unknown = [s for s in order if s not in STAGES]
    if unknown:
        return f"unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})"
    repeated = sorted({s for s in order if order.count(s) > 1})
    if repeated:
        return f"stage {repeated[0]!r} appears more than once"
    for name in order[:-1]:
        if not STAGES[name].trained:
            return f"{name} must be the last stage (it works on the exported file)"
    for index, name in enumerate(order):
        for before, why in STAGES[name].not_after.items():
            if before in order[:index]:
                return f"{name} cannot follow {before} ({why})"
    return None


def buildable_orders(stages: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Every buildable order of a non-empty subset of ``stages``, shortest first."""
    stages = tuple(stages)
    trained = [s for s, plugin in STAGES.items() if plugin.trained and s in stages]
    tails = [(), *((s,) for s, plugin in STAGES.items() if not plugin.trained and s in stages)]
    out = []
    for n in range(0, len(trained) + 1):
        for combo in permutations(trained, n):
            for tail in tails:
                order = combo + tail
                if order and order_problem(order) is None:
                    out.append(order)
    return tuple(sorted(out, key=lambda o: (len(o), [list(STAGES).index(s) for s in o])))


def order_name(order: Sequence[str]) -> str:
    return SEPARATOR.join(order)


def parse_order(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.replace(",", SEPARATOR).split(SEPARATOR) if s.strip())
