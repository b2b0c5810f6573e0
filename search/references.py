"""Reference trials: fixed pipelines enqueued into a study so the search is compared with them.

Each reference is a preset (``edgeslim.spaces.presets``) whose uniform pruning ratio is fitted to
the budget before any training: the smallest ratio on the space's grid whose pruned structure
meets the budget's limits on parameters and MACs (both counted, not estimated). References are
real trials of the study: the sampler learns from them, and the ``reference`` user attribute
names the preset in tables, cards and the dashboard.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence

import optuna
import torch
from torch import nn

from edgeslim.compress import apply_pruning
from edgeslim.errors import ConfigError
from edgeslim.evaluators import MODEL_MEASURES
from edgeslim.spaces import Candidate, StagedSpace
from edgeslim.spaces.complexity import complexity_ratios, group_shares
from edgeslim.spaces.presets import PRESETS, Preset

REFERENCE_ATTR = "reference"
# Measures fixed by the pruned structure alone, which the fitted ratio must respect.
STRUCTURAL = ("params", "macs")


def structure_measures(model: nn.Module, example: torch.Tensor, ratios: Mapping[str, float],
                       importance: str = "l2", round_to: int = 8) -> dict[str, float]:
    """params and MACs of a copy of ``model`` pruned by ``ratios`` (the model is untouched)."""
    pruned = copy.deepcopy(model).cpu().eval()
    if ratios:
        apply_pruning(pruned, example, ratios, importance, round_to)
    return {name: float(MODEL_MEASURES[name](pruned, example).value) for name in STRUCTURAL}


def fit_uniform_ratio(model: nn.Module, example: torch.Tensor, space: StagedSpace,
                      limits: Mapping[str, float], importance: str = "l2",
                      shares: Mapping[str, float] | None = None,
                      memo: dict | None = None) -> float:
    """The smallest ratio on the space's grid that, removed from every group, meets ``limits``
    on params and MACs (absolute caps); 0 when ``limits`` caps neither.

    With ``shares`` (``edgeslim.spaces.complexity.group_shares``) the ratio fitted is the scale
    of a complexity-driven allocation: the most complex group loses it, the others less.
    ``memo`` keeps measures across calls: params and MACs depend on how many channels each
    group keeps, not on which, so presets fitted on one model share them.

    Raises:
        ConfigError: when even the space's largest ratio breaks a limit.
    """
    caps = {m: v for m, v in limits.items() if m in STRUCTURAL}
    pruning = space.pruning
    if not caps:
        return 0.0
    steps = round(pruning.max_ratio / pruning.step)
    values: dict[str, float] = {}
    for i in range(steps + 1):
        ratio = round(i * pruning.step, 10)
        ratios = {g.name: ratio for g in pruning.groups} if shares is None else \
            complexity_ratios(shares, ratio, pruning.step, pruning.max_ratio)
        memo = {} if memo is None else memo
        key = (tuple(sorted(ratios.items())), pruning.round_to)
        if key not in memo:
            memo[key] = structure_measures(model, example, ratios, importance, pruning.round_to)
        values = memo[key]
        if all(values[m] <= cap for m, cap in caps.items()):
            return ratio
    broken = ", ".join(f"{m} {values[m]:.6g} > {cap:.6g}" for m, cap in caps.items()
                       if values[m] > cap)
    kind = "uniform" if shares is None else "complexity-driven"
    raise ConfigError(f"no {kind} pruning ratio up to --max-ratio {pruning.max_ratio} meets "
                      f"the budget ({broken}); raise --max-ratio or loosen the budget")


def preset_candidate(p: Preset, model: nn.Module, example: torch.Tensor, space: StagedSpace,
                     limits: Mapping[str, float], memo: dict | None = None) -> Candidate:
    """``p`` as a candidate of ``space``, its uniform ratio (or complexity-driven allocation)
    fitted to ``limits`` and to the preset's own ``params_fraction``."""
    offered = space.pruning.importances
    importance = p.importance if p.importance in offered else offered[0]
    ratio: float | dict[str, float] = 0.0
    if "prune" in p.order:
        limits = dict(limits)
        if p.params_fraction is not None:
            base = float(sum(q.numel() for q in model.parameters()))
            limits["params"] = min(limits.get("params", base), p.params_fraction * base)
        shares = None if p.allocation == "uniform" else \
            group_shares(model, example, space.pruning.groups, p.allocation)
        ratio = fit_uniform_ratio(model, example, space, limits, importance, shares, memo)
        if shares is not None:
            ratio = complexity_ratios(shares, ratio, space.pruning.step, space.pruning.max_ratio)
    linear = frozenset(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    candidate = p.candidate(space.pruning, space.layers, ratio, linear, importance)
    if not candidate.cluster_counts:
        return candidate
    # Each count snapped to the largest the space offers that layer without exceeding it.
    offered = {layer.name: space.counts_for(layer) for layer in space.layers}
    counts = tuple((name, max((c for c in offered[name] if c <= k), default=min(offered[name])))
                   for name, k in candidate.cluster_counts)
    return dataclasses.replace(candidate, cluster_counts=counts)


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
    return (f"**Reference trial**: preset `{name}`{what}. Its pruning ratio, the same for every "
            "layer, is the smallest that meets the budget's parameter and MAC limits.\n")


def enqueue_references(study: optuna.Study, space: StagedSpace, model: nn.Module,
                       example: torch.Tensor, limits: Mapping[str, float],
                       names: Sequence[str] | None = None,
                       model_name: str | None = None) -> list[str]:
    """Enqueues the presets named (by default every registered one that applies to
    ``model_name``, see ``Preset.applies_to``) that the space can sample, each as a trial
    tagged with ``reference`` = its name. Returns the names enqueued.

    A default reference whose uniform ratio cannot meet the budget is left out (the search may
    still find a non-uniform candidate that does), and so is one whose trial would repeat an
    earlier reference's; a preset named explicitly raises instead.
    """
    enqueued = []
    seen: list[dict] = []
    memo: dict = {}
    # A study's own presets first: where one repeats a generic preset's trial, its name is kept.
    default = [n for n, p in PRESETS.items() if p.models and p.applies_to(model_name)] + \
        [n for n, p in PRESETS.items() if not p.models]
    for name in names if names is not None else default:
        try:
            candidate = preset_candidate(PRESETS[name], model, example, space, limits, memo)
        except ConfigError:
            if names is not None:
                raise
            continue
        if not fits_space(space, candidate) or space.params_for(candidate) in seen:
            continue
        seen.append(space.params_for(candidate))
        study.enqueue_trial(space.params_for(candidate), user_attrs={REFERENCE_ATTR: name},
                            skip_if_exists=True)
        enqueued.append(name)
    return enqueued
