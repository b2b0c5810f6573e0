"""Screening: many pruning allocations ranked cheaply, the best of them fine-tuned.

A fine-tune per candidate is what a search trial costs (minutes on CIFAR-10); a search of a few
dozen trials over a dozen per-layer ratios would sample them almost blind. So before the trials
are fine-tuned, a screening study (``<study>/screen``, in the same storage) samples ``--screen``
allocations, the per-group ratios and channel criterion, with the study's sampler, repairs each
to the budget's parameter and MAC limits (``edgeslim.search.repair``), prunes a copy of the base
model and scores it by ``recalibrated_accuracy``: its accuracy once its batch-norm statistics
are estimated again, with no training (a second or two; ``edgeslim.evaluators.screening``).
Every screened candidate meets the limits, so the ranking compares structures at equal cost.

The best screened allocations then become trials of the study: ``SCREENED_SHARE`` of the search
trials still to run are enqueued with those pruning parameters fixed (the sampler still picks
the stage order, cluster counts and quantization), tagged ``screened`` with the screening trial
and its score; the sampler proposes the rest, learning from every fine-tuned trial. Screening
runs only when the budget limits params or MACs: without a cost limit the best screened
structure is always the unpruned one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from edgeslim.compress import apply_pruning, prunable_copy
from edgeslim.compress.importance import criterion
from edgeslim.data import DataBundle
from edgeslim.evaluators.recovery import BaseGradients
from edgeslim.evaluators.screening import recalibrated_accuracy
from edgeslim.search.records import (
    BUILT_AS_ATTR,
    CANDIDATE_ATTR,
    INFEASIBLE_ATTR,
    SCORE_ATTR,
    SCREENED_ATTR,
    TrialRecord,
)
from edgeslim.search.repair import STRUCTURAL, StaticCheck, repair
from edgeslim.search.storage import SCREEN_SUFFIX
from edgeslim.spaces import Candidate, StagedSpace
from edgeslim.spaces.pruning import IMPORTANCE_PARAM, PARAM_PREFIX

SCREENED_SHARE = 0.75  # of the search trials to run; the sampler proposes the others
# One batch: the ranking of 24 screened CIFAR-10 allocations of ResNet-20 recalibrated on 256
# images agreed with the ranking on 1,024 at Spearman 0.996 (screening_fidelity.md).
CALIBRATION_IMAGES = 256
VAL_IMAGES = 2000


class ScreenObjective:
    """One screening trial: sample an allocation, repair it to the structural limits, prune a
    copy of the base model, and return its recalibrated accuracy. An allocation that no repair
    brings under the limits is pruned from the screening study with its reason."""

    def __init__(self, space: StagedSpace, base: nn.Module, data: DataBundle,
                 check: StaticCheck, seed: int = 0,
                 gradients: BaseGradients | None = None) -> None:
        self.space, self.base, self.data, self.seed = space, base, data, seed
        self.check = check
        self.example = torch.zeros(1, *data.input_shape)
        self._scores: dict[str, float] = {}  # by what a candidate builds (``built_as``)
        # The base's loss gradients (``taylor``), shared with the search's evaluators.
        self.gradients = gradients or BaseGradients(base, data, seed)

    def __call__(self, trial: optuna.Trial) -> float:
        ratios, importance = self.space.pruning.suggest(trial)
        sampled = Candidate(order=("prune",), prune_ratios=ratios, importance=importance,
                            round_to=self.space.pruning.round_to)
        fixed = repair(sampled, self.space, self.check)
        for key, value in fixed.attrs().items():
            trial.set_user_attr(key, value)
        if not fixed.fits:
            reason = "; ".join(self.check.violations(fixed.candidate))
            trial.set_user_attr(INFEASIBLE_ATTR, reason)
            raise optuna.TrialPruned(reason)
        candidate = fixed.candidate
        key = self.space.built_as(candidate)
        trial.set_user_attr(CANDIDATE_ATTR, candidate.to_dict())
        trial.set_user_attr(BUILT_AS_ATTR, key)
        for name, value in self.check.structure(candidate).items():
            trial.set_user_attr(name, value)
        if key not in self._scores:  # the sampler often lands on a structure it has seen
            model = prunable_copy(self.base, self.example).cpu().eval()
            crit = criterion(candidate.importance)
            batches = gradients = None
            if crit.needs_gradients and not crit.per_sample:
                # Every allocation prunes a copy of the same base model: its gradients on
                # the same images, computed once (1.8 s a CIFAR-10 ResNet-20 allocation).
                gradients = self.gradients()
            elif crit.needs_gradients:
                batches = self.gradients.batches()
            apply_pruning(model, self.example, candidate.ratios, candidate.importance,
                          candidate.round_to, batches=batches, gradients=gradients)
            self._scores[key] = recalibrated_accuracy(model, self.data, CALIBRATION_IMAGES,
                                                      VAL_IMAGES, self.seed)
        trial.set_user_attr(SCORE_ATTR, self._scores[key])
        return self._scores[key]


def structural_caps(limits: Mapping[str, float]) -> dict[str, float]:
    return {m: v for m, v in limits.items() if m in STRUCTURAL}


def screen_study(study: optuna.Study, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """The screening study beside ``study`` (created on first use)."""
    return optuna.create_study(storage=study._storage, study_name=study.study_name + SCREEN_SUFFIX,
                               direction="maximize", sampler=sampler, load_if_exists=True)


def run_screening(screen: optuna.Study, objective: ScreenObjective, n: int,
                  progress: Callable[[int], None] | None = None) -> int:
    """Runs screening trials until ``screen`` holds ``n`` scored ones (other processes may add
    to them); returns how many ran here. Stops early when most sampled allocations cannot be
    repaired to fit."""
    ran = 0
    while True:
        trials = screen.get_trials(deepcopy=False)
        scored = sum(t.state == TrialState.COMPLETE for t in trials)
        if progress is not None:
            progress(min(scored, n))
        if scored >= n or len(trials) >= 4 * n:
            return ran
        screen.optimize(objective, n_trials=1, gc_after_trial=True)
        ran += 1


def best_screened(screen: optuna.Study, k: int, taken: set[str],
                  ) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best scored screening trials, one per model they build (``built_as``), that
    build none of the models in ``taken``."""
    done = sorted(screen.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                  key=lambda t: (-t.value, t.number))
    picked: list[optuna.trial.FrozenTrial] = []
    seen = set(taken)
    for t in done:
        key = TrialRecord.of(t).built_as
        if key in seen:
            continue
        seen.add(key)
        picked.append(t)
        if len(picked) >= k:
            break
    return picked


def _pruning_key(built_as: str) -> str:
    """The key the screening study gives the pruning part of a study trial's model."""
    key = json.loads(built_as)
    return json.dumps({"order": ["prune"], "channels": key["channels"],
                       "importance": key["importance"], "sparsity": None, "clusters": None,
                       "cluster_method": None, "quantize": "none"}, sort_keys=True)


def screened_params(space: StagedSpace, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The study parameters fixing ``trial``'s repaired allocation."""
    cand = Candidate.from_dict(TrialRecord.of(trial).candidate)
    params: dict[str, Any] = {PARAM_PREFIX + name: space.pruning.on_grid(ratio)
                              for name, ratio in cand.prune_ratios}
    params[IMPORTANCE_PARAM] = cand.importance
    return params


def enqueue_screened(study: optuna.Study, screen: optuna.Study, space: StagedSpace,
                     to_run: int) -> list[int]:
    """Enqueues the best screened allocations not yet in ``study`` as ``SCREENED_SHARE`` of the
    ``to_run`` search trials; returns the screening trials' numbers."""
    k = math.ceil(SCREENED_SHARE * to_run)
    # Allocations the study holds already, screened or not, are not enqueued again.
    records = [TrialRecord.of(t) for t in study.get_trials(deepcopy=False)]
    taken = {TrialRecord.of(screen.trials[r.screened["trial"]]).built_as
             for r in records if r.screened is not None}
    taken |= {_pruning_key(r.built_as) for r in records if r.built_as is not None}
    picked = best_screened(screen, k, taken)
    for t in picked:
        study.enqueue_trial(screened_params(space, t),
                            user_attrs={SCREENED_ATTR: {"trial": t.number, "acc": t.value}})
    return [t.number for t in picked]
