"""Running a search: prepare the base model once, then let an Optuna study sample candidates.

Everything the export and the reports need later is stored on the study itself
(``edgeslim.search.records``), so a study can be exported, shown or resumed from its storage
alone; ``edgeslim.search.setup`` creates it, or checks that a resumed one was set up the same.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import optuna
import torch
from rich.console import Console

from edgeslim.cores import training_threads
from edgeslim.data import DataBundle
from edgeslim.errors import ConfigError
from edgeslim.evaluators import StagedEvaluator
from edgeslim.evaluators.latency import available_cores
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.evaluators.recovery import BaseGradients
from edgeslim.logs import LOG_NAME, attach
from edgeslim.models import build_model
from edgeslim.present._progress import _Progress, _progress_callback
from edgeslim.present.notes import annotate
from edgeslim.present.report import print_report
from edgeslim.search._prepare import (
    Prepared,
    build_space,
    feasible_orders,
    latency_meter,
    load_inputs,
    measure_base,
    prepare,
    resolve_caps,
)
from edgeslim.search.config import SearchConfig
from edgeslim.search.interrupted import recover_interrupted
from edgeslim.search.objective import Objective, is_feasible
from edgeslim.search.plan import Plan, make_plan, print_plan
from edgeslim.search.records import TrialRecord
from edgeslim.search.repair import StaticCheck
from edgeslim.search.samplers import make_sampler, screening_sampler
from edgeslim.search.screening import (
    ScreenObjective,
    enqueue_screened,
    run_screening,
    screen_study,
    structural_caps,
)
from edgeslim.search.setup import open_or_create_study, refuse_other_setup, setup_identity
from edgeslim.search.storage import artifact_store, check_storage_url
from edgeslim.search.warmstart import import_trials, source_study
from edgeslim.search.workers import counted, queued, run_finalists, run_trials, spawn_workers
from edgeslim.spaces import Candidate, StagedSpace
from edgeslim.timing import STOPWATCH
from edgeslim.training import TrainRecipe

__all__ = ["Prepared", "build_space", "feasible_orders", "latency_meter", "load_inputs",
           "measure_base", "open_or_create_study", "prepare", "resolve_caps",
           "run_search", "setup_identity", "worker_main"]


def make_evaluators(config: SearchConfig, prepared: Prepared, meter: LatencyMeter,
                    settled: frozenset[str] = frozenset(),
                    ) -> tuple[StagedEvaluator, StagedEvaluator, StaticCheck]:
    """The search's evaluator (short fine-tune), the finalists' (long fine-tune), and the check
    of the limits that need no training, which measures candidates' structures with the
    first; ``settled`` (``Plan.settled``) as in ``StaticCheck``."""
    # One computation of the base model's loss gradients a run, for both evaluators and
    # screening (``screen`` reads the search evaluator's).
    gradients = BaseGradients(prepared.base.model, prepared.data, config.seed,
                              min(r.batch_size for r in (config.finetune, config.final) if r))

    def evaluator(recipe: TrainRecipe) -> StagedEvaluator:
        return StagedEvaluator(prepared.base.model, prepared.data, recipe,
                               config.budget.runtime, prepared.caps, seed=config.seed,
                               meter=meter, timed=config.budget.asks_for("latency_ms"),
                               recovery=config.recovery, gradients=gradients)

    search, final = evaluator(config.finetune), evaluator(config.final or config.finetune)
    scratch = config.workdir / "trials"

    def artifact(candidate: Candidate) -> dict[str, float]:
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="static-", dir=scratch) as tmp:
            return search.static_values(candidate, Path(tmp))

    check = StaticCheck(prepared.base.model, torch.zeros(1, *prepared.data.input_shape),
                        prepared.caps.limits, artifact, settled)
    return search, final, check


def run_search(config: SearchConfig, console: Console | None = None) -> optuna.Study:
    """Runs (or resumes) the study until it holds ``config.trials`` trials that were fine-tuned
    or failed, in ``config.workers`` processes; then fine-tunes the finalists with the long
    recipe and prints the Pareto table. Candidates that fail are recorded as failed trials
    with their reason; trials whose process died are failed and run again."""
    try:
        return _run_search(config, console or Console())
    finally:
        gc.unfreeze()  # what the run kept out of collections is collectable again


def _run_search(config: SearchConfig, console: Console) -> optuna.Study:
    STOPWATCH.reset()
    check_storage_url(config.storage_url)  # a bad URL fails before any training
    inputs = load_inputs(config)
    refuse_other_setup(config, inputs[0])
    # The study to warm-start from must exist and compare, before anything is trained.
    source = source_study(config, setup_identity(config, inputs[0])) \
        if config.resume_from else None
    if config.workers == 1:
        threads, cores = training_threads(), available_cores()
        torch.set_num_threads(threads)
        if threads < cores:
            console.print(f"training with {threads} thread{'s' * (threads > 1)}: "
                          f"{cores - threads} of this machine's {cores} cores are busy")
    meter = latency_meter(config, inputs[0])
    # What the space can reach, before the base model trains: a budget no candidate meets
    # stops here.
    plan = run_plan(config, console, inputs, meter)
    if plan.unreachable:
        raise ConfigError(plan.explanation())
    attach(config.workdir / LOG_NAME)  # the input is good: the run's log has a home
    prepared = prepare(config, console, inputs, meter)
    keep_out_of_collections()
    settled = plan.settled()
    search, final, check = make_evaluators(config, prepared, meter, settled)
    study = open_or_create_study(config, prepared, check)
    recover_interrupted(study, config.workdir)
    if source is not None:
        warm_start(config, prepared, study, source, meter, console)
    objective = Objective(prepared.space, search, prepared.caps, config.budget.objectives,
                          artifact_store(config.workdir), config.workdir / "trials",
                          check=check, final_evaluator=final, repair=config.repair)
    done = counted(study.trials)
    remaining = max(0, config.trials - done)
    console.print(f"study {study.study_name!r} in {config.storage_url}: {done} finished, "
                  f"{remaining} to run" + (f" in {config.workers} processes"
                                           if config.workers > 1 and remaining else "")
                  + f"; {len(prepared.space.pruning.groups)} prunable groups, "
                  f"{len(prepared.space.layers)} weight layers, "
                  f"{len(prepared.space.orders)} stage orders")
    if remaining and config.screen:
        screen(config, prepared, check, study, remaining, console, search.gradients)
    if remaining:
        with _Progress(console) as progress:
            update = progress.task("search", config.trials, done)
            refresh = _progress_callback(update)
            with spawn_workers(config, config.workers - 1, settled):
                stopped = run_trials(study, objective, config.trials, config.workdir,
                                     [refresh])
        if stopped:
            console.print(stopped, soft_wrap=True)
    if config.finalists:
        run_finalists(study, objective, config.finalists, console)
    annotate(study, config.storage_url)  # the study's note in optuna-dashboard
    print_report(study, console)
    console.print(STOPWATCH.breakdown(), highlight=False)
    return study


def warm_start(config: SearchConfig, prepared: Prepared, study: optuna.Study,
               source: optuna.Study, meter: LatencyMeter, console: Console) -> None:
    """Imports ``source``'s trials into the new ``study`` (``edgeslim.search.warmstart``)."""
    summary = import_trials(config, prepared, study, source, meter)  # counted as measuring
    left = "; ".join(f"{why}: {n}" for why, n in summary["left_out"].items())
    fit = sum(is_feasible(t) for t in study.trials if TrialRecord.of(t).imported_from is not None)
    console.print(f"warm start: {summary['imported']} trials of {summary['study']} (searched "
                  f"for {summary['budget']}) judged against {config.budget.name} without "
                  f"training, in {summary['seconds']:.0f} s; "
                  f"{fit} of them fit" + (f"; left out: {left}" if left else ""), soft_wrap=True)


def keep_out_of_collections() -> None:
    """Moves every object made so far (the imported libraries, the data, the base model: they
    live as long as the run) out of the garbage collector's reach, so that the collection
    after each trial walks only what trials made. Without it each collection walked some
    400,000 objects of PyTorch and the other imports, 0.2 s each on 2 cores: a tenth of a
    digits study's wall time. ``run_search`` undoes it when it returns."""
    gc.collect()
    gc.freeze()


def run_plan(config: SearchConfig, console: Console,
             inputs: tuple[DataBundle, StagedSpace] | None = None,
             meter: LatencyMeter | None = None) -> Plan:
    """What the search space can reach against each limit, measured on the untrained model's
    extreme candidates (``edgeslim.search.plan``), printed."""
    data, space = inputs or load_inputs(config)
    meter = meter or latency_meter(config, data)
    model = build_model(config.model, data.in_channels, data.num_classes)
    plan = make_plan(config, data, space, model, meter)
    print_plan(plan, console)
    return plan


def screen(config: SearchConfig, prepared: Prepared, check: StaticCheck, study: optuna.Study,
           remaining: int, console: Console, gradients: BaseGradients | None = None) -> None:
    """Ranks ``config.screen`` pruning allocations that meet the budget's params and MAC limits
    by their recalibrated accuracy, and enqueues the best as trials of ``study``
    (``edgeslim.search.screening``); nothing when the budget limits neither."""
    caps = structural_caps(prepared.caps.limits)
    if not caps or "prune" not in {s for o in prepared.space.orders for s in o}:
        console.print("screening skipped: the budget limits neither params nor MACs")
        return
    waiting = queued(study.trials)
    if remaining <= waiting:
        return  # the reference trials fill the count
    screening = screen_study(study, make_sampler(screening_sampler(config.sampler), config.seed))
    objective = ScreenObjective(prepared.space, prepared.base.model, prepared.data,
                                check.with_limits(caps), config.seed, gradients)
    start = time.perf_counter()
    with _Progress(console) as progress, STOPWATCH("screening"):
        update = progress.task("screening", config.screen)
        ran = run_screening(screening, objective, config.screen,
                            lambda n: update(completed=n))
    enqueued = enqueue_screened(study, screening, prepared.space, remaining - waiting)
    console.print(f"screened {ran} allocations in {time.perf_counter() - start:.0f} s; the "
                  f"best {len(enqueued)} are fine-tuned first")


def worker_main(config: SearchConfig, threads: int, settled: frozenset[str] = frozenset(),
                ) -> None:
    """One extra worker of ``run_search --workers N``: joins the study the first process set up
    and runs trials until the study holds its count, checking what the first one checks
    before training (the limits its plan did not settle). Nothing is printed but failures."""
    torch.set_num_threads(threads)
    console = Console(quiet=True)
    inputs = load_inputs(config)
    meter = latency_meter(config, inputs[0])
    prepared = prepare(config, console, inputs, meter)
    keep_out_of_collections()
    search, final, check = make_evaluators(config, prepared, meter, settled)
    study = open_or_create_study(config, prepared, check)
    objective = Objective(prepared.space, search, prepared.caps, config.budget.objectives,
                          artifact_store(config.workdir), config.workdir / "trials",
                          check=check, final_evaluator=final, repair=config.repair)
    run_trials(study, objective, config.trials, config.workdir)
