"""The search's progress bars (rich): base training, screening and trials."""

from __future__ import annotations

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
from edgeslim.search.workers import counted


def _fmt_acc(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


class _Progress:
    """A rich progress bar over the trials, showing the best feasible accuracy so far."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False)

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def task(self, description: str, total: int, done: int = 0) -> Callable[..., None]:
        task_id = self.progress.add_task(description, total=total, completed=done, status="")

        def update(**fields: Any) -> None:
            self.progress.update(task_id, **fields)

        return update


def _progress_callback(update: Callable[..., None]) -> Callable[..., None]:
    def refresh(study: optuna.Study, _trial: optuna.trial.FrozenTrial | None) -> None:
        trials = study.get_trials(deepcopy=False)
        feasible = [t.values[0] for t in trials if is_feasible(t)
                    and t.user_attrs.get("finetuned")]
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
        update(completed=counted(trials),
               status=f"best feasible {_fmt_acc(max(feasible) if feasible else None)}"
                      + (f", {failed} failed" if failed else ""))

    return refresh
