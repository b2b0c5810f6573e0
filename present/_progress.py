"""The search's progress: rich bars on a terminal, plain lines elsewhere (base training,
screening and trials).

Rich draws its bars only on a terminal; with the output sent to a file (nohup, CI, a job
scheduler) it would print nothing until a task ends, which for a CIFAR-10 base model is over
half an hour. There, each task prints a plain line when it starts, then at most one line every
``PLAIN_EVERY_S`` seconds as it moves, and one when it is done: what is done of how much, the
task's status (an epoch, the best accuracy so far), the elapsed time and an ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgeslim.search.objective import is_feasible
from edgeslim.search.records import TrialRecord
from edgeslim.search.workers import counted

PLAIN_EVERY_S = 30.0  # at most one progress line per task this often when not on a terminal


def _fmt_acc(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _PlainTask:
    """One task's progress as lines of text (see the module docstring)."""

    def __init__(self, console: Console, description: str, total: int, done: int,
                 every_s: float, clock: Callable[[], float]) -> None:
        self.console, self.description, self.total = console, description, total
        self.every_s, self.clock = every_s, clock
        self.completed, self.status = done, ""
        self.start = clock()
        self.start_done = done
        self.last: float | None = None
        self.finished = False

    def update(self, **fields: Any) -> None:
        self.completed = fields.get("completed", self.completed)
        self.status = fields.get("status", self.status)
        if self.finished:
            return
        now = self.clock()
        done = self.completed >= self.total
        if done or self.last is None or now - self.last >= self.every_s:
            self.finished = done
            self.last = now
            self.console.print(self.line(now), soft_wrap=True, highlight=False)

    def line(self, now: float) -> str:
        elapsed = now - self.start
        ran = self.completed - self.start_done
        eta = elapsed / ran * (self.total - self.completed) if ran > 0 else None
        return (f"{self.description}: {self.completed}/{self.total}"
                + (f", {self.status}" if self.status else "")
                + f", {_clock(elapsed)} elapsed, ETA "
                + (_clock(eta) if eta is not None else "-"))


class _Progress:
    """Progress over a task: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.every_s, self.clock = console, every_s, clock
        self.plain = not console.is_terminal
        self.progress = None if self.plain else Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False)

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def task(self, description: str, total: int, done: int = 0) -> Callable[..., None]:
        if self.progress is None:
            plain = _PlainTask(self.console, description, total, done, self.every_s,
                               self.clock)
            plain.update()
            return plain.update
        task_id = self.progress.add_task(description, total=total, completed=done, status="")

        def update(**fields: Any) -> None:
            self.progress.update(task_id, **fields)

        return update


def _progress_callback(update: Callable[..., None]) -> Callable[..., None]:
    def refresh(study: optuna.Study, _trial: optuna.trial.FrozenTrial | None) -> None:
        trials = study.get_trials(deepcopy=False)
        feasible = [t.values[0] for t in trials if is_feasible(t)
                    and TrialRecord.of(t).finetuned]
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
        update(completed=counted(trials),
               status=f"best feasible {_fmt_acc(max(feasible) if feasible else None)}"
                      + (f", {failed} failed" if failed else ""))

    return refresh
