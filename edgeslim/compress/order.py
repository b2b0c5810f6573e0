"""Which orders of compression stages can be built.

Stages (``STAGES``): ``prune`` (channels removed), ``sparsify`` (unstructured zeros),
``cluster`` (shared weight values) and ``quantize`` (int8 or fp16 storage of the exported
file). A brief fine-tune follows each stage except ``quantize``, which works on the exported
file and so comes last. ``sparsify`` cannot follow ``cluster``: the zeros it adds would be one
value more than the cluster count the layer was given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import permutations

STAGES = ("prune", "sparsify", "cluster", "quantize")
TRAINED_STAGES = ("prune", "sparsify", "cluster")  # each is followed by a fine-tune
SEPARATOR = ">"


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
    if "quantize" in order and order[-1] != "quantize":
        return "quantize must be the last stage (it works on the exported file)"
    if "cluster" in order and "sparsify" in order and \
            order.index("sparsify") > order.index("cluster"):
        return "sparsify cannot follow cluster (its zeros would add a value to every codebook)"
    return None


def buildable_orders(stages: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """Every buildable order of a non-empty subset of ``stages``, shortest first."""
    stages = tuple(stages)
    trained = [s for s in TRAINED_STAGES if s in stages]
    out = []
    for n in range(0, len(trained) + 1):
        for combo in permutations(trained, n):
            for tail in ((), ("quantize",)) if "quantize" in stages else ((),):
                order = combo + tail
                if order and order_problem(order) is None:
                    out.append(order)
    return tuple(sorted(out, key=lambda o: (len(o), [STAGES.index(s) for s in o])))


def order_name(order: Sequence[str]) -> str:
    return SEPARATOR.join(order)


def parse_order(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.replace(",", SEPARATOR).split(SEPARATOR) if s.strip())
