"""Reference trials: fixed pipelines enqueued into a study so the search is compared with them.

Each reference is a preset (``edgeslim.spaces.presets``): one pruning ratio for every layer
(``uniform`` and the published pipelines), or a complexity-driven allocation (``complexity-pa``,
``-fa``, ``-ma``: each layer pruned in proportion to its share of the parameters, MACs or
activation memory; see ``edgeslim.spaces.complexity``). Its ratio, or the allocation's scale, is
fitted to the budget before any training: the smallest on the space's grid that meets every
limit checkable without training, so it just meets the binding one. Params and MACs are counted
on the pruned structure; size, peak memory and latency are measured on the untrained artifact
when the budget limits them (``edgeslim.search.repair.StaticCheck``).

References are real trials of the study: the sampler learns from them, the ``reference`` user
attribute names the preset in tables, cards and the dashboard, and the report gives each
Pareto point's accuracy lift over the best reference at equal or higher cost.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import torch
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.search.records import TrialRecord
from edgeslim.search.repair import STRUCTURAL, StaticCheck, first_fitting, structure_measures
from edgeslim.spaces import Candidate, StagedSpace
from edgeslim.spaces.complexity import complexity_ratios, group_shares
from edgeslim.spaces.presets import PRESETS, Preset

MAX_SCALE_STEPS = 4096  # bisection: at most 12 checks
__all__ = ["STRUCTURAL", "enqueue_references", "fit_uniform_ratio",
           "preset_candidate", "reference_note", "structure_measures"]


def fit_ratio(check: StaticCheck, space: StagedSpace, make: Callable[[Any], Candidate],
              shares: Mapping[str, float] | None = None) -> float:
    """The smallest ratio on the space's grid whose candidate ``make(ratio)`` meets the
    static limits of ``check`` (0 when it caps nothing), by bisection over the grid.

    With ``shares`` (``edgeslim.spaces.complexity.group_shares``) the ratio fitted is the scale
    of a complexity-driven allocation, and ``make`` receives the per-group ratios: the most
    complex group loses the scale, the others less.

    Raises:
        ConfigError: when even the space's largest ratio breaks a limit.
    """
    pruning = space.pruning
    top = round(pruning.max_ratio / pruning.step)
    if shares is not None and min(shares.values()) > 0:
        # The scale may grow past max_ratio: the most complex groups stay capped there while
        # the others keep growing, until every group is at max_ratio (as uniform's largest).
        top = min(MAX_SCALE_STEPS, math.ceil(top * max(shares.values()) / min(shares.values())))
    scales = [round(i * pruning.step, 10) for i in range(top + 1)]
    ladder = [make(s if shares is None else
                   complexity_ratios(shares, s, pruning.step, pruning.max_ratio))
              for s in scales]
    index = first_fitting(ladder, check)
    if index is not None:
        return scales[index]
    broken = ", ".join(check.violations(ladder[-1]))
    kind = "uniform" if shares is None else "complexity-driven"
    raise ConfigError(f"no {kind} pruning ratio up to --max-ratio {pruning.max_ratio} meets "
                      f"the budget ({broken}); raise --max-ratio or loosen the budget")


def fit_uniform_ratio(model: nn.Module, example: torch.Tensor, space: StagedSpace,
                      limits: Mapping[str, float], importance: str = "l2",
                      shares: Mapping[str, float] | None = None) -> float:
    """``fit_ratio`` for pruning alone, on params and MACs: the smallest ratio on the grid
    that, removed from every group (or allocated by ``shares``), meets ``limits``."""
    groups = [g.name for g in space.pruning.groups]

    def make(ratio: Any) -> Candidate:
        ratios = ratio if isinstance(ratio, Mapping) else dict.fromkeys(groups, ratio)
        return Candidate(order=("prune",), prune_ratios=tuple(ratios.items()),
                         importance=importance, round_to=space.pruning.round_to)

    return fit_ratio(StaticCheck(model, example, limits), space, make, shares)


def preset_candidate(p: Preset, model: nn.Module, example: torch.Tensor, space: StagedSpace,
                     limits: Mapping[str, float], check: StaticCheck | None = None) -> Candidate:
    """``p`` as a candidate of ``space``, its uniform ratio (or complexity-driven allocation)
    fitted to ``limits`` and to the preset's own ``params_fraction``: the smallest that meets
    every limit checkable without training (params and MACs; size, memory and latency of the
    untrained artifact too when ``check`` can measure one)."""
    offered = space.pruning.importances
    importance = p.importance if p.importance in offered else offered[0]
    linear = frozenset(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    counts_offered = {layer.name: space.counts_for(layer) for layer in space.layers}

    def make(ratio: Any) -> Candidate:
        candidate = p.candidate(space.pruning, space.layers, ratio, linear, importance)
        if not candidate.cluster_counts:
            return candidate
        # Each count snapped to the largest the space offers that layer without exceeding it.
        counts = tuple((name, max((c for c in counts_offered[name] if c <= k),
                                  default=min(counts_offered[name])))
                       for name, k in candidate.cluster_counts)
        return dataclasses.replace(candidate, cluster_counts=counts)

    if "prune" not in p.order:
        return make(0.0)
    limits = dict(limits)
    if p.params_fraction is not None:
        base = float(sum(q.numel() for q in model.parameters()))
        limits["params"] = min(limits.get("params", base), p.params_fraction * base)
    check = StaticCheck(model, example, limits) if check is None else check.with_limits(limits)
    shares = None if p.allocation == "uniform" else \
        group_shares(model, example, space.pruning.groups, p.allocation)
    scale = fit_ratio(check, space, make, shares)
    return make(scale if shares is None else
                complexity_ratios(shares, scale, space.pruning.step, space.pruning.max_ratio))


def fits_space(space: StagedSpace, candidate: Candidate) -> bool:
    """Whether ``space`` can sample ``candidate`` (its order, counts and modes are offered)."""
    try:
        space.params_for(candidate)
    except ConfigError:
        return False
    return True


def reference_note(name: str) -> str:
    """The dashboard note of a reference trial (Markdown): which preset it runs."""
    preset = PRESETS.get(name)
    what = f" ({preset.description})" if preset else ""
    return (f"**Reference trial**: preset `{name}`{what}. Its pruning ratio (or the scale of its "
            "allocation) is the smallest that meets the budget's limits checkable before "
            "training.\n")


def enqueue_references(study: optuna.Study, space: StagedSpace, model: nn.Module,
                       example: torch.Tensor, limits: Mapping[str, float],
                       names: Sequence[str] | None = None,
                       model_name: str | None = None,
                       check: StaticCheck | None = None,
                       limit: int | None = None) -> list[str]:
    """Enqueues the presets named (by default every registered one that applies to
    ``model_name``, see ``Preset.applies_to``) that the space can sample, each as a trial
    tagged with ``reference`` = its name. Returns the names enqueued.

    A default reference whose ratio cannot meet the budget is left out (the search may still
    find a non-uniform candidate that does); a preset named explicitly raises instead. One
    that would build the model an earlier reference builds (``StagedSpace.built_as``) is not
    run twice: it is named in that trial's ``same_as``. ``check`` (default: params
    and MACs of ``limits`` only) decides what fits. At most ``limit`` are enqueued (a search
    of fewer trials than references runs the first ones: the study's own presets, then
    ``prune-cluster-int8``, ``prune-dynamic-int8``, ``uniform``, PA, FA, MA).
    """
    enqueued: list[str] = []
    seen: list[dict] = []
    built_seen: list[str] = []
    aliases: list[list[str]] = []
    check = check or StaticCheck(model, example, limits)
    # A study's own presets first: where one repeats a generic preset's trial, its name is kept.
    default = [n for n, p in PRESETS.items() if p.models and p.applies_to(model_name)] + \
        [n for n, p in PRESETS.items() if not p.models]
    for name in names if names is not None else default:
        if not fits_space(space, preset_candidate(PRESETS[name], model, example, space, {})):
            continue
        try:
            candidate = preset_candidate(PRESETS[name], model, example, space, limits, check)
        except ConfigError:
            if names is not None:
                raise
            continue
        if not fits_space(space, candidate):
            continue
        params = space.params_for(candidate)
        built = space.built_as(candidate)
        if built in built_seen:  # the same model as an earlier reference: named on that one
            aliases[built_seen.index(built)].append(name)
            continue
        built_seen.append(built)
        seen.append(params)
        aliases.append([])
        enqueued.append(name)
    if limit is not None:
        enqueued, seen, aliases = enqueued[:limit], seen[:limit], aliases[:limit]
    for name, params, same in zip(enqueued, seen, aliases):
        attrs = TrialRecord(reference=name, same_as=same or None).to_attrs()
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
    return enqueued


def reference_names(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The presets a reference trial stands for (none for a searched trial)."""
    record = TrialRecord.of(trial)
    return [] if record.reference is None else [record.reference, *(record.same_as or [])]
