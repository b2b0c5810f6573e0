"""Compression stages as plug-ins, and which orders of them can be built.

Each stage is one class (``Stage``) that owns everything about it: the parameters it samples
in a trial, what it does to a model, its part of a candidate's build key, and its section of
the model card. The search space, the evaluator, the card and the order logic ask the
registered stages (``STAGES``) rather than testing their names.
"""

from edgeslim.stages._base import Stage, StageContext
from edgeslim.stages.registry import (
    SEPARATOR,
    STAGES,
    buildable_orders,
    order_name,
    order_problem,
    parse_order,
    stage,
)

__all__ = ["SEPARATOR", "STAGES", "Stage", "StageContext", "buildable_orders", "order_name",
           "order_problem", "parse_order", "stage"]
