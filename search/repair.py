"""The static check and repair: whether a candidate meets the limits computable without
training (``StaticCheck``, the one check the search makes before a candidate is trained), and
moving a sampled candidate that breaks one to the nearest candidate that meets it.

The limits computable without training are those of ``STATIC_MEASURES``: params and MACs,
counted on the pruned structure (cheap: a pruned copy of the model, no export), and the size,
peak memory, activation memory and latency of the file the candidate's structure deploys to
(``StagedEvaluator.static_values``: its stages without k-means or fine-tunes, exported,
quantized and loaded in onnxruntime; latency timed only as closely as telling it from the
limit needs), taken only when the budget limits them and the counts fit. The candidate is then
built once, trained, and measured in full. Repairs and the references' fits try many
candidates; where every limit on the file is one the plan found every extreme candidate meets
with room to spare (``Plan.settled``), they go by the counts alone, and only the candidate a
trial builds has its untrained file checked (which also finds a structure the exporter or the
runtime refuses before it is trained).

How a candidate is moved (``ladder``): every pruning ratio ``r`` becomes
``r + t * (max_ratio - r)`` on the space's ratio grid, for ``t`` in ``0, 1/16, ..., 1``: each
layer is pruned further in proportion to the room it has left, so the layers the sampler chose
to spare stay the least pruned, and ``t = 1`` is the most compressed candidate the space can
build with that stage order. The smallest ``t`` that fits is found by bisection (the measures
fall as ``t`` grows). Every other setting (order, criterion, cluster counts, quantization) is
kept. A candidate whose order does not prune, or that breaks a limit even at ``t = 1``, cannot
be repaired; the evaluator records it as infeasible without training it.

The trial records both: ``sampled`` (the candidate as the sampler drew it, only when repaired),
``candidate`` (what was built), ``repair_step`` (``t`` in sixteenths) and ``repaired``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgeslim.compress import apply_pruning, kept_channels, prunable_copy
from edgeslim.errors import CandidateError, DeviceError
from edgeslim.evaluators import MODEL_MEASURES
from edgeslim.evaluators._base import STATIC_MEASURES
from edgeslim.search.records import TrialRecord
from edgeslim.spaces import Candidate, StagedSpace

# Measures fixed by the pruned structure alone: counted without exporting anything.
STRUCTURAL = ("params", "macs")
LADDER_STEPS = 16
GUESSES = 2  # per search of a ladder, before it halves (``first_fitting``)


def pruned_structure(model: nn.Module, example: torch.Tensor, ratios: Mapping[str, float],
                     importance: str = "l2", round_to: int = 8) -> nn.Module:
    """A copy of ``model`` pruned by ``ratios`` (the model is untouched), in eval mode."""
    pruned = prunable_copy(model, example).cpu().eval()
    if ratios:
        apply_pruning(pruned, example, ratios, importance, round_to)
    return pruned


def structure_measures(model: nn.Module, example: torch.Tensor, ratios: Mapping[str, float],
                       importance: str = "l2", round_to: int = 8) -> dict[str, float]:
    """params and MACs of a copy of ``model`` pruned by ``ratios`` (the model is untouched)."""
    pruned = pruned_structure(model, example, ratios, importance, round_to)
    return {name: float(MODEL_MEASURES[name](pruned, example).value) for name in STRUCTURAL}


@dataclass
class StaticCheck:
    """Whether a candidate meets the limits of ``caps`` that need no training.

    ``artifact`` measures the untrained artifact of a candidate (size, memory, latency; see
    ``StagedEvaluator.static_values``); without it only params and MACs are checked. Results
    are kept per candidate (and params/MACs per kept structure), so the references and the
    repairs of one run never measure the same thing twice. ``fits`` skips the artifact when
    every limit on it is in ``settled`` (see the module docstring); ``violations`` never does.
    """

    model: nn.Module
    example: torch.Tensor
    limits: Mapping[str, float]
    artifact: Callable[[Candidate], dict[str, float]] | None = None
    settled: frozenset[str] = frozenset()
    _structure: dict[Any, dict[str, float]] = field(default_factory=dict, repr=False)
    _artifact: dict[Any, dict[str, Any]] = field(default_factory=dict, repr=False)
    _pruned: tuple[Any, nn.Module] | None = field(default=None, repr=False)

    def with_limits(self, limits: Mapping[str, float]) -> StaticCheck:
        """The same check against other limits, sharing what was measured."""
        return dataclasses.replace(self, limits=limits)

    @property
    def caps(self) -> dict[str, float]:
        return {m: v for m, v in self.limits.items() if m in STATIC_MEASURES}

    def _channels(self, candidate: Candidate) -> tuple[tuple[str, int], ...]:
        """The channels each pruned group keeps: what the structure's measures depend on
        (ratios that snap to the same counts build the same shapes; the criterion only picks
        which channels)."""
        if "prune" not in candidate.order:
            return ()
        out = []
        for name, ratio in sorted(candidate.prune_ratios):
            try:
                module = self.model.get_submodule(name)
                channels = module.out_features if isinstance(module, nn.Linear) \
                    else module.out_channels
            except AttributeError:  # not a prunable layer: apply_pruning says so
                return tuple(sorted(candidate.prune_ratios))  # type: ignore[return-value]
            out.append((name, kept_channels(channels, ratio, candidate.round_to)))
        return tuple(out)

    def structure(self, candidate: Candidate) -> dict[str, float]:
        return {name: self._count(candidate, name) for name in STRUCTURAL}

    def _count(self, candidate: Candidate, name: str) -> float:
        """``name`` (one of ``STRUCTURAL``) of the candidate's pruned structure, counted once
        per structure: params and MACs depend on how many channels a group keeps, not on
        which. The last pruned copy is kept for the other count of the same structure."""
        key = self._channels(candidate)
        values = self._structure.setdefault(key, {})
        if name not in values:
            if self._pruned is None or self._pruned[0] != key:
                ratios = candidate.ratios if "prune" in candidate.order else {}
                self._pruned = key, pruned_structure(self.model, self.example, ratios, "l2",
                                                     candidate.round_to)
            values[name] = float(MODEL_MEASURES[name](self._pruned[1], self.example).value)
        return values[name]

    def _artifact_key(self, candidate: Candidate) -> tuple[Any, ...]:
        return (self._channels(candidate), dataclasses.replace(
            candidate, prune_ratios=(), importance="l2"))

    def violations(self, candidate: Candidate) -> list[str]:
        """The static limits ``candidate`` breaks (empty when it fits), as ``measure value >
        cap`` texts; the artifact is measured only when the counted structure fits."""
        caps = self.caps
        values = self.structure(candidate)
        broken = _broken(values, caps)
        if broken or self.artifact is None or not set(caps) - set(STRUCTURAL):
            return broken
        key = self._artifact_key(candidate)
        if key not in self._artifact:
            try:
                self._artifact[key] = self.artifact(candidate)
            except DeviceError:
                raise  # the measuring device failed: the trial fails, with its message
            except CandidateError as exc:
                # Not buildable (export or runtime refused it) counts as not fitting: a repair
                # or a reference's fit moves on, and a trial of it fails with the reason.
                self._artifact[key] = {"error": str(exc)}
        values = self._artifact[key]
        if "error" in values:
            return [f"cannot be built: {values['error']}"]
        return _broken(values, caps)

    def crossing(self, unfit: Candidate, fit: Candidate) -> float | None:
        """How far from ``unfit`` towards ``fit`` (0 to 1) their counted params or MACs reach
        the caps, the latest of the capped counts; None when no count of the two straddles
        its cap (an artifact limit decides), or when it is not counted yet (a guess costs no
        trace). Counts fall about as the square of the channels kept, which a ladder lowers
        in equal steps, so the square roots are interpolated."""
        counted = self._structure.get(self._channels(unfit), {}), \
            self._structure.get(self._channels(fit), {})
        shares = []
        for name, cap in self.caps.items():
            a, b = (values.get(name) for values in counted)
            if a is not None and b is not None and a > cap >= b:
                shares.append((math.sqrt(a) - math.sqrt(cap)) / (math.sqrt(a) - math.sqrt(b)))
        return max(shares, default=None)

    def fits(self, candidate: Candidate) -> bool:
        caps = self.caps
        # The cheap counts first, in ``STRUCTURAL`` order: a count that breaks its cap settles
        # it without the costlier ones (the MAC count traces the model; params need no trace).
        if any(name in caps and self._count(candidate, name) > caps[name]
               for name in STRUCTURAL):
            return False
        if not set(caps) - set(STRUCTURAL) - self.settled:
            return True
        return not self.violations(candidate)

    def failure(self, candidate: Candidate) -> str | None:
        """Why ``candidate``'s structure could not be built when it was checked (None when it
        was, or when checking it needed no build)."""
        error = self._artifact.get(self._artifact_key(candidate), {}).get("error")
        return None if error is None else str(error)


def _broken(values: Mapping[str, float], caps: Mapping[str, float]) -> list[str]:
    return [f"{m} {values[m]:.6g} > {cap:.6g}" for m, cap in caps.items()
            if m in values and values[m] > cap]


def first_fitting(ladder: Sequence[Candidate], check: StaticCheck, low: int = -1) -> int | None:
    """The index of the first candidate of ``ladder`` that fits; None when even the last one
    does not. A ladder compresses more at every step, so the answer lies between the last
    step known not to fit (``low``; -1 when none is) and the first known to fit.

    Each step tried is pruned and counted (its MACs by a trace of the model), so where the
    budget caps params or MACs the step to try is guessed from the counts of the two ends
    (``StaticCheck.crossing``), and its neighbour towards the other end is tried next: when
    the guess was right, that settles it in two tries. After ``GUESSES`` guesses, or without
    counts to guess from, the range is halved. The answer is a bisection's; a ResNet-20
    repair takes about half its tries."""
    if not ladder or not check.fits(ladder[-1]):
        return None
    high, guesses = len(ladder) - 1, GUESSES  # ladder[high] fits
    while high - low > 1:
        share = check.crossing(ladder[low], ladder[high]) if low >= 0 and guesses else None
        if share is None:
            mid = (low + high) // 2
            low, high = (low, mid) if check.fits(ladder[mid]) else (mid, high)
            continue
        guesses -= 1
        mid = min(high - 1, max(low + 1, low + round(share * (high - low))))
        if check.fits(ladder[mid]):
            high = mid
            if high - 1 > low:
                low, high = (low, high - 1) if check.fits(ladder[high - 1]) else (high - 1, high)
        else:
            low = mid
            if low + 1 < high:
                low, high = (low, low + 1) if check.fits(ladder[low + 1]) else (low + 1, high)
    return high


def ladder(candidate: Candidate, space: StagedSpace, steps: int = LADDER_STEPS,
           ) -> list[Candidate]:
    """``candidate`` and ``steps`` ever more pruned versions of it (see the module docstring);
    repeats are kept so that a step's index is its ``t``."""
    pruning = space.pruning
    out = []
    for k in range(steps + 1):
        t = k / steps
        ratios = tuple((name, pruning.on_grid(r + t * (pruning.max_ratio - r), up=True))
                       for name, r in candidate.prune_ratios)
        out.append(dataclasses.replace(candidate, prune_ratios=ratios))
    return out


@dataclass(frozen=True)
class Repaired:
    """The outcome of ``repair``: the candidate to build, and what happened to the sample."""

    candidate: Candidate
    sampled: Candidate
    step: int | None  # t in sixteenths; None when no step fits
    fits: bool  # ``candidate`` meets every static limit

    @property
    def repaired(self) -> bool:
        return self.candidate != self.sampled

    def attrs(self) -> dict[str, Any]:
        """The trial's user attributes."""
        return TrialRecord(repaired=self.repaired,
                           sampled=self.sampled.to_dict() if self.repaired else None,
                           repair_step=self.step).to_attrs()


def repair(candidate: Candidate, space: StagedSpace, check: StaticCheck) -> Repaired:
    """``candidate`` when it meets the static limits, else the least compressed step of its
    ladder that does; unchanged (``fits`` False) when none does or the order cannot prune."""
    if not check.caps:
        return Repaired(candidate, candidate, None, fits=True)
    if check.fits(candidate):
        return Repaired(candidate, candidate, 0, fits=True)
    if "prune" not in candidate.order:
        return Repaired(candidate, candidate, None, fits=False)
    steps = ladder(candidate, space)
    index = first_fitting(steps, check, low=0)  # the sampled candidate does not fit
    if index is None:
        return Repaired(candidate, candidate, None, fits=False)
    return Repaired(steps[index], candidate, index, fits=True)
