"""Feasibility before training: what the search space can reach against each limit.

The plan builds the extreme candidates of the space from the untrained model
(``edgeslim.search.extremes``: the measures it reports depend on the structure and the stages,
not on trained weights) and measures each exactly as a trial's limits are checked before
training.

Each limit gets the base model's value, the range those candidates span, and a verdict: every
candidate meets it, some do, or none does (with what would change that). Example::

    plan = make_plan(config, data, space, model, meter)
    print_plan(plan, console)
    if plan.unreachable: ...  # stop before the base model trains
"""

from __future__ import annotations

import copy
import dataclasses
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from torch import nn

from edgeslim.budget import Budget
from edgeslim.data import DataBundle
from edgeslim.errors import CandidateError, ModelError
from edgeslim.evaluators import Caps
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.evaluators.staged import StagedEvaluator
from edgeslim.search.config import SearchConfig
from edgeslim.search.extremes import describe, extreme_candidates, like_trained, measure_candidate
from edgeslim.spaces import Candidate, StagedSpace
from edgeslim.stages import STAGES
from edgeslim.timing import STOPWATCH
from edgeslim.training import TrainRecipe, train

# Where each measure comes from, as the plan names it.
SOURCES = {
    "params": "counted in PyTorch",
    "macs": "counted in PyTorch, one multiply-accumulate = 1, batch 1",
    "size_bytes": "the exported file's length",
    "peak_memory_bytes": "estimated from the ONNX graph",
    "activation_bytes": "estimated from the ONNX graph",
}
# What the measures are in a LiteRT runtime (``edgeslim.evaluators.litert``), where they differ.
RUNTIME_SOURCES = {
    "litert-micro": {
        "peak_memory_bytes": "the tensor arena LiteRT for Microcontrollers plans, plus the file",
        "activation_bytes": "the tensor arena LiteRT for Microcontrollers plans",
        "latency_ms": "timed in LiteRT for Microcontrollers on this host",
    },
    "litert": {"latency_ms": "timed in LiteRT on this host"},
}
LATENCY_SOURCES = {
    "host": "timed on this host",
    "profile": "predicted from the device's profile",
    "ssh": "timed on the device over ssh",
}
EVERY, SOME, NONE = "every candidate", "some candidates", "unreachable"
# A limit every extreme candidate meets at no more than this share of it is settled: see
# ``Plan.settled``.
SETTLED_SHARE = 0.5


@dataclass(frozen=True)
class LimitPlan:
    """One limit against the space: ``low`` and ``high`` are the smallest and largest value
    the extreme candidates have; ``cap`` is the limit resolved against the base model."""

    measure: str
    cap: float
    base: float
    low: float
    high: float
    source: str
    verdict: str
    fixes: tuple[str, ...] = ()  # what would make an unreachable limit reachable


@dataclass(frozen=True)
class Plan:
    limits: tuple[LimitPlan, ...]
    smallest: str  # the most compressed candidate, in words
    largest: str
    host_line: str | None  # latency timed on a host of another kind than the device
    step_seconds: float | None  # one fine-tune step of the base model, timed here
    trial_seconds: float | None  # estimated fine-tune time of one trial
    trials: int

    @property
    def unreachable(self) -> tuple[LimitPlan, ...]:
        return tuple(lim for lim in self.limits if lim.verdict == NONE)

    def settled(self, share: float = SETTLED_SHARE) -> frozenset[str]:
        """The limits every extreme candidate meets with room to spare, its largest value at
        most ``share`` of the cap. Repairs and the references' fits go by the counts alone
        where every limit on the file is settled (``StaticCheck.settled``): the untrained file
        each of their tries would build (export, quantization, timing) would buy nothing. The
        candidate a trial builds is still checked before training, and measured after it."""
        return frozenset(lim.measure for lim in self.limits
                         if lim.verdict == EVERY and lim.high <= share * lim.cap)

    def explanation(self) -> str:
        """One line: why no candidate can meet the budget, and what would change that."""
        parts = [f"{lim.measure} {_show(lim.measure, lim.cap)} is below the smallest the space "
                 f"reaches ({_show(lim.measure, lim.low)}); {' or '.join(lim.fixes)} would "
                 "help" for lim in self.unreachable]
        return "no candidate can meet the budget: " + "; ".join(parts)


def host_line(budget: Budget) -> str | None:
    """A plain line when latency will be timed on a host of another kind than the device."""
    if budget.latency.source != "host" or not budget.asks_for("latency_ms"):
        return None
    text = f"{budget.device.name} {budget.device.cpu}".lower()
    device_arm = any(w in text for w in ("arm", "cortex", "aarch64", "raspberry", "jetson"))
    here = platform.machine().lower()
    host_arm = here.startswith(("arm", "aarch64"))
    if device_arm == host_arm:
        return None
    kind = "an Arm" if device_arm else "another kind of"
    start = (f"latency is timed on this {here} host, not on {budget.device.name} ({kind} "
             "device): its figures are this host's; for the device's, ")
    if budget.runtime.name == "litert-micro":  # no Python on a microcontroller
        return start + "a microcontroller runs no Python to time on, so take it as a relative " \
            "figure (LiteRT for Microcontrollers' reference kernels on this host)"
    return start + ("make a profile on the board (optimize profile, then latency: {source: "
                    "profile}) or time on it over ssh (latency: {source: ssh})")


def finetune_step_seconds(model: nn.Module, data: DataBundle, recipe: TrainRecipe,
                          steps: int = 3) -> float | None:
    """Seconds of one fine-tune step of ``model``: ``steps`` steps of the search's own trainer
    (its precision, memory layout, augmentation and distillation from ``model``), after one
    warm-up step, on a copy: ``model``'s weights are untouched (it is the teacher, as the base
    is a trial's, so the steps hold as many copies of the weights as a trial's do). None when
    the steps fail."""

    net = copy.deepcopy(model)
    teacher = model if recipe.distill_alpha > 0 else None
    try:
        train(net, data, dataclasses.replace(recipe, steps=1), teacher)
        stats = train(net, data, dataclasses.replace(recipe, steps=steps), teacher)
    except CandidateError:  # a loss that is not finite: no estimate
        return None
    return stats.seconds / stats.steps


def trial_steps(config: SearchConfig, data: DataBundle) -> int:
    """Fine-tune steps of one trial with every stage (one fine-tune per trainable stage)."""
    per_stage = config.finetune.total_steps(len(data.train))
    trainable = len([s for s in config.space.stages if STAGES[s].trained])
    return per_stage * max(1, trainable)


def make_plan(config: SearchConfig, data: DataBundle, space: StagedSpace, model: nn.Module,
              meter: LatencyMeter | None, base: dict[str, float] | None = None) -> Plan:
    """The plan of a search for ``model`` (untrained weights do: see the module docstring)."""
    budget = config.budget
    latency_limit = budget.limit("latency_ms")
    timed = latency_limit is not None
    model = like_trained(model)
    evaluator = StagedEvaluator(model, data, dataclasses.replace(config.finetune, epochs=0.0),
                                budget.runtime, Caps(), seed=config.seed, meter=meter,
                                timed=timed, recovery=config.recovery)
    least, most = extreme_candidates(space)
    values = []
    with tempfile.TemporaryDirectory(prefix="edgeslim-plan-") as tmp:
        if base is None:
            try:
                base = measure_candidate(evaluator, Candidate(order=("prune",)), Path(tmp),
                                         timed)
            except CandidateError as exc:  # every candidate would fail the same way
                raise ModelError(f"the base model cannot be deployed: {exc}; every candidate "
                                 f"is measured in {evaluator.runtime.name}") from None
        # The verdict only compares the candidates' latency with the limit: each is timed
        # only as closely as that needs (the base, which a relative limit scales, in full).
        below = (latency_limit.resolve(base["latency_ms"])
                 if timed and "latency_ms" in base else None)
        for candidate in least + most:
            try:
                values.append(measure_candidate(evaluator, candidate, Path(tmp), timed, below))
            except CandidateError:  # a trial of it fails with the reason; the others count
                continue
    values = values or [base]
    limits = []
    for lim in budget.limits:
        m = lim.measure
        cap = lim.resolve(base[m])
        low, high = min(v[m] for v in values), max(v[m] for v in values)
        verdict = EVERY if high <= cap else SOME if low <= cap else NONE
        on_device = m == "latency_ms" and budget.latency.source != "host"
        source = (None if on_device else RUNTIME_SOURCES.get(budget.runtime.name, {}).get(m)) \
            or SOURCES.get(m) or LATENCY_SOURCES[budget.latency.source]
        limits.append(LimitPlan(m, cap, base[m], low, high, source, verdict,
                                _fixes(m, config, space) if verdict == NONE else ()))
    step = trial = None
    if config.trials:
        with STOPWATCH("measuring"):  # timing steps on copies: no candidate is fine-tuned
            step = finetune_step_seconds(model, data, config.finetune)
        trial = None if step is None else step * trial_steps(config, data)
    return Plan(tuple(limits), describe(most[0]), describe(least[0]), host_line(budget),
                step, trial, config.trials)


def _fixes(measure: str, config: SearchConfig, space: StagedSpace) -> tuple[str, ...]:
    uses = {stage for order in space.orders for stage in order}
    out = []
    if "prune" in uses and space.pruning.max_ratio < 0.95:
        out.append(f"a higher --max-ratio (now {space.pruning.max_ratio:g})")
    elif "prune" not in uses and measure in ("params", "macs", "latency_ms"):
        out.append("adding prune to --stages")
    missing = [s for s in ("cluster", "quantize") if s not in uses]
    if missing and measure in ("size_bytes", "peak_memory_bytes", "activation_bytes",
                               "latency_ms"):
        out.append(f"adding {' or '.join(missing)} to --stages")
    out.append(f"a smaller model than {config.model}")
    return tuple(out)


def _show(measure: str, value: float) -> str:
    if measure == "latency_ms":
        return f"{value:.3g} ms"
    if measure.endswith("bytes"):
        return f"{value / 1e3:.1f} kB" if value < 1e6 else f"{value / 1e6:.2f} MB"
    return f"{value / 1e3:.1f}K" if value < 1e6 else f"{value / 1e6:.2f}M"


def print_plan(plan: Plan, console: Console) -> None:
    console.print(f"plan: the space reaches from {plan.smallest} (most compressed) to "
                  f"{plan.largest} (least compressed)", soft_wrap=True)
    for lim in plan.limits:
        line = (f"  {lim.measure}: limit {_show(lim.measure, lim.cap)}, base "
                f"{_show(lim.measure, lim.base)}, space {_show(lim.measure, lim.low)} to "
                f"{_show(lim.measure, lim.high)} ({lim.source}): {lim.verdict}")
        if lim.fixes:
            line += f"; reachable with {' or '.join(lim.fixes)}"
        console.print(line, soft_wrap=True, highlight=False)
    if not plan.limits:
        console.print("  the budget limits nothing that can be checked before training")
    if plan.host_line:
        console.print(plan.host_line, soft_wrap=True, highlight=False)
    if plan.trial_seconds is not None:
        console.print(f"time: about {plan.trial_seconds:.0f} s of fine-tuning per trial "
                      f"({plan.step_seconds * 1e3:.0f} ms per step, timed here), "
                      f"{plan.trials * plan.trial_seconds / 60:.1f} min for {plan.trials} trials "
                      "(without the base model's training and the measurements)",
                      soft_wrap=True, highlight=False)


__all__ = ["EVERY", "NONE", "SOME", "LimitPlan", "Plan", "extreme_candidates", "host_line",
           "make_plan", "print_plan"]
