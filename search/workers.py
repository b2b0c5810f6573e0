"""Running the trials of one study from several processes and machines, and the finalists.

Every process (the first, the extra ``--workers`` it starts, and any other machine running the
same command against the same PostgreSQL URL) runs the same loop (``run_trials``): recover the
trials whose process died, count the trials that spend the budget (``counts``), and start one
more while the count plus the trials running elsewhere is below ``--trials``. Two processes
that start the last trial at the same moment both get a trial from Optuna (trial numbers are
unique: the storage assigns them); the one with the larger number sees the other ahead of it,
marks its trial PRUNED with ``surplus`` and runs nothing. So the study ends with exactly
``--trials`` counted trials and no duplicate.

Multi-fidelity: the search scores candidates with the short fine-tune; then the Pareto
finalists (``pick_finalists``) are enqueued with ``finalist_of`` = their trial and run again
with the long fine-tune, measured again, and recorded as trials of their own. Export picks from
the finalists when there are any.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from rich.console import Console

from edgeslim.errors import CandidateError, StudyError
from edgeslim.interrupts import exit_status, interruption, stop_on_signals
from edgeslim.search.interrupted import (
    record_interrupted,
    recover_interrupted,
    worker_identity,
)
from edgeslim.search.objective import Objective
from edgeslim.search.records import (
    ACCURACY,
    CANDIDATE_ATTR,
    FINALIST_ATTR,
    SURPLUS_ATTR,
    WORKER_ATTR,
    TrialRecord,
)

if TYPE_CHECKING:
    from edgeslim.search.config import SearchConfig

POLL_S = 2.0  # how often a process waiting for the last running trials looks again
# A study stops searching after this many trials per counted one, when most candidates
# cannot be repaired to fit (an order that cannot prune under a params limit, say).
MAX_ATTEMPTS_PER_TRIAL = 4


def retried(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of failed trials run again: by ``recover_interrupted`` (``retry_of``) or by
    Optuna's heartbeat callback (``failed_trial``)."""
    out = set()
    for t in trials:
        for number in (TrialRecord.of(t).retry_of, t.system_attrs.get("failed_trial")):
            if number is not None:
                out.add(int(number))
    return out


def counts(trial: optuna.trial.FrozenTrial, again: set[int] | None = None) -> bool:
    """Whether ``trial`` spends one of the ``--trials``: a search trial that was fine-tuned,
    or that failed (unless it was interrupted and ``again`` holds it: its retry counts).
    Candidates recorded untrained because no repair fits them, repeats of a model already
    built, surplus trials, finalists and trials imported from another study do not count."""
    record = TrialRecord.of(trial)
    if record.derived:
        return False
    if trial.state == TrialState.FAIL:
        return trial.number not in (again or set())
    return trial.state == TrialState.COMPLETE and bool(record.finetuned)


def counted(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """How many of ``trials`` spend the budget (``counts``)."""
    again = retried(trials)
    return sum(counts(t, again) for t in trials)


def queued(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """How many WAITING trials of ``trials`` will run: one per reference or screened
    allocation (two processes that set the study up at once both enqueue them; the second
    copy is pruned as surplus), none whose tag already ran or runs."""
    again = retried(trials)
    started = {_enqueued_as(t) for t in trials
               if t.state in (TrialState.RUNNING, TrialState.COMPLETE)
               or (t.state == TrialState.FAIL and t.number not in again)}
    tags = [_enqueued_as(t) for t in trials if t.state == TrialState.WAITING]
    untagged = sum(tag is None for tag in tags)
    return untagged + len({tag for tag in tags if tag is not None} - started)


def _enqueued_as(trial: optuna.trial.FrozenTrial) -> tuple[str, object] | None:
    """What a trial was enqueued as, where the study must run it once: a reference (by its
    preset) or a screened allocation (by its screening trial)."""
    record = TrialRecord.of(trial)
    if record.reference is not None:
        return ("reference", record.reference)
    if record.screened is not None:
        return ("screened allocation", record.screened["trial"])
    if record.retry_of is not None:
        return ("retry of trial", record.retry_of)
    return None


class _Claimed:
    """The objective, behind a check that the study still needs this trial (see the module
    docstring). Each trial records the process that runs it (``worker``)."""

    def __init__(self, objective: Objective, target: int,
                 needed: Callable[[optuna.trial.FrozenTrial], bool]) -> None:
        self.objective, self.target, self.needed = objective, target, needed

    def __call__(self, trial: optuna.Trial) -> list[float]:
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        trials = trial.study.get_trials(deepcopy=False)
        again = retried(trials)
        finalist = TrialRecord.of(trial).finalist_of
        if finalist is None:
            ahead = [t for t in trials if t.number < trial.number and self.needed(t)
                     and (t.state == TrialState.RUNNING or counts(t, again))]
        else:  # the same finalist, run or running in another process
            ahead = [t for t in trials if t.number < trial.number
                     and TrialRecord.of(t).finalist_of == finalist
                     and t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL)
                     and t.number not in again]
        tag = _enqueued_as(trial)
        if tag is not None and any(
                t.number < trial.number and _enqueued_as(t) == tag
                and t.number not in again and t.state != TrialState.PRUNED for t in trials):
            # Two processes set the study up at once and both enqueued the references, or
            # both enqueued the same screened allocation.
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise optuna.TrialPruned(f"{tag[0]} {tag[1]} is already in the study")
        if len(ahead) >= self.target:
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise optuna.TrialPruned("the study already had its trials when this one started")
        try:
            return self.objective(trial)
        except KeyboardInterrupt as exc:  # Ctrl+C or SIGTERM: recorded like a killed trial
            record_interrupted(trial, interruption(exc))
            raise


def _is_search(trial: optuna.trial.FrozenTrial) -> bool:
    record = TrialRecord.of(trial)
    return record.finalist_of is None and record.surplus is None


def _trained_here(trial: optuna.trial.FrozenTrial) -> bool:
    return _is_search(trial) and TrialRecord.of(trial).duplicate_of is None


def run_trials(study: optuna.Study, objective: Objective, target: int, workdir: Path,
               callbacks: Sequence[Callable[..., None]] = ()) -> str | None:
    """Runs trials in this process until the study holds ``target`` counted trials; returns
    None then, or why the search stopped short of them: the space holds no model the study
    has not built (most of its trials sampled a model already built).

    Raises:
        StudyError: when most candidates could not be made to fit the budget.
    """
    claimed = _Claimed(objective, target, _is_search)
    while True:
        recover_interrupted(study, workdir)
        trials = study.get_trials(deepcopy=False)
        done = counted(trials)
        if done >= target:
            return None
        searched = sum(_is_search(t) for t in trials)
        if searched >= MAX_ATTEMPTS_PER_TRIAL * target + 20:
            repeats = sum(_is_search(t) and TrialRecord.of(t).duplicate_of is not None
                          for t in trials)
            if 2 * repeats >= searched - done:
                return (f"search stopped at {done} of {target} trials: {repeats} of the "
                        f"{searched} trials sampled a model already built, so the space holds "
                        "few others (--stages, --cluster-counts and --quantize widen it)")
            raise StudyError(f"{searched} trials ran but only {done} candidates could be made "
                             "to fit the budget; loosen it or narrow --stages")
        running = sum(t.state == TrialState.RUNNING and _is_search(t) for t in trials)
        if done + running >= target:
            time.sleep(POLL_S)  # the last trials run in other processes
            continue
        study.optimize(claimed, n_trials=1, catch=(CandidateError,), callbacks=list(callbacks),
                       gc_after_trial=True)


def _worker(config: SearchConfig, threads: int, settled: frozenset[str]) -> None:
    import sys

    from edgeslim.logs import LOG_NAME, attach, quiet_libraries
    from edgeslim.search.study import worker_main

    quiet_libraries()
    attach(config.workdir / LOG_NAME)
    stop_on_signals()
    try:
        worker_main(config, threads, settled)
    except KeyboardInterrupt as exc:  # its trial is recorded; the first process says so
        sys.exit(exit_status(exc))


@contextlib.contextmanager
def spawn_workers(config: SearchConfig, extra: int, settled: frozenset[str] = frozenset(),
                  ) -> Iterator[None]:
    """Starts ``extra`` processes running ``worker_main`` on the study while the body runs in
    this one (with the limits the plan ``settled``); waits for them at the end. The machine's
    cores are shared out: each process trains with ``cores // (extra + 1)`` threads."""
    if extra <= 0:
        yield
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // (extra + 1))
    torch.set_num_threads(threads)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(config, threads, settled),
                         name=f"edgeslim-worker-{i}") for i in range(extra)]
    for p in procs:
        p.start()
    try:
        yield
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    failed = [p.name for p in procs if p.exitcode]
    if failed:
        raise StudyError(f"{', '.join(failed)} stopped with an error; rerun the same command "
                         "to resume (--debug shows the traceback)")


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere (the first
    value is maximised, the others minimised)."""
    sa, sb = [-a[0], *a[1:]], [-b[0], *b[1:]]
    return all(x <= y for x, y in zip(sa, sb)) and any(x < y for x, y in zip(sa, sb))


def pick_finalists(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """Up to ``k`` fine-tuned search trials for the long fine-tune: the non-dominated ones
    first (accuracy against the budget's objectives), then the next layer, and so on; within a
    layer by accuracy. Trials that break a limit other than accuracy are left out (a longer
    fine-tune changes accuracy only)."""
    pool = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if _trained_here(t) and TrialRecord.of(t).finetuned
            and all(v <= 0 for name, v in t.constraints.items() if name != ACCURACY)]
    picked: list[optuna.trial.FrozenTrial] = []
    while pool and len(picked) < k:
        front = [t for t in pool if not any(_dominates(o.values, t.values) for o in pool)]
        front.sort(key=lambda t: -t.values[0])
        picked += front[:k - len(picked)]
        pool = [t for t in pool if t not in front]
    return picked


def run_finalists(study: optuna.Study, objective: Objective, k: int,
                  console: Console) -> list[int]:
    """Enqueues the finalists that have no finalist trial yet and runs them in this process
    with the long fine-tune. Returns the numbers of the search trials they re-run."""
    finalists = pick_finalists(study, k)
    have = {TrialRecord.of(t).finalist_of for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.PRUNED} - {None}
    todo = [t for t in finalists if t.number not in have]
    for t in todo:
        study.enqueue_trial(t.params, user_attrs={
            FINALIST_ATTR: t.number, CANDIDATE_ATTR: TrialRecord.of(t).candidate})
    if todo:
        console.print(f"finalists: trials {', '.join(str(t.number) for t in todo)} fine-tuned "
                      "again with the long recipe")

    def waiting() -> bool:
        return any(t.state == TrialState.WAITING and TrialRecord.of(t).finalist_of is not None
                   for t in study.get_trials(deepcopy=False))

    claimed = _Claimed(objective, 1, lambda t: True)
    while waiting():
        study.optimize(claimed, n_trials=1, catch=(CandidateError,), gc_after_trial=True)
    return [t.number for t in finalists]
