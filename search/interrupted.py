"""Trials whose process stopped: killed, crashed, its machine rebooted, or interrupted by
Ctrl+C or SIGTERM. Each running trial records the process that runs it (``worker``); a trial
whose process is gone is marked failed with ``interrupted`` and its reason, and queued once
more with the same parameters (``retry_of``)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from edgeslim.search.records import (
    CANDIDATE_ATTR,
    FAIL_REASON_ATTR,
    FINALIST_ATTR,
    INTERRUPTED_ATTR,
    REFERENCE_ATTR,
    RETRY_ATTR,
    SCREENED_ATTR,
    TrialRecord,
)

__all__ = ["record_interrupted", "recover_interrupted", "worker_identity"]

# A running trial with no worker yet (killed between its creation and its first attribute)
# is taken as interrupted once it is this old.
UNCLAIMED_S = 120


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def worker_identity() -> dict[str, Any]:
    """This process, as recorded on the trials it runs (``WORKER_ATTR``)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _dead(worker: dict[str, Any] | None, trial: optuna.trial.FrozenTrial) -> str | None:
    """Why ``trial``'s process is known to be gone, or None when it may still run."""
    if worker is None:
        start = trial.datetime_start
        if start is not None and time.time() - start.timestamp() > UNCLAIMED_S:
            return "its process ended before it recorded itself"
        return None
    if worker.get("host") != socket.gethostname():
        return None  # another machine: RDB heartbeats cover it
    pid = int(worker["pid"])
    if _start_time(pid) != worker.get("started"):
        return f"worker process {pid} on {worker['host']} ended while the trial ran"
    return None


def recover_interrupted(study: optuna.Study, workdir: Path | None = None) -> list[int]:
    """Marks the running trials whose process is gone (killed, crashed, machine rebooted) as
    failed, with the reason in ``fail_reason`` and ``interrupted`` set, and enqueues each once
    more with the same parameters (``retry_of`` names it). A trial its own process recorded as
    interrupted (Ctrl+C, SIGTERM: ``record_interrupted``) but stopped before queueing its
    retry gets one too. Their temporary build directories under ``<workdir>/trials`` are
    removed. Returns the numbers of the trials recovered.

    Another process may recover the same trial at the same moment: the first to mark it
    failed re-queues it, the other skips it.
    """
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    records = {t.number: TrialRecord.of(t) for t in trials}
    again = {r.retry_of for r in records.values()}
    recovered = []
    for trial in trials:
        record = records[trial.number]
        if trial.number in again:
            continue
        if trial.state == TrialState.FAIL and record.interrupted:
            # Its process recorded it and was stopped again before the retry was queued.
            _enqueue_retry(study, trial)
            recovered.append(trial.number)
            continue
        if trial.state != TrialState.RUNNING or record.imported_from is not None:
            continue  # an import cut short is imported again (``edgeslim.search.warmstart``)
        reason = _dead(record.worker, trial)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR,
                                        f"interrupted: {reason}")
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process got there first
        _enqueue_retry(study, trial)
        recovered.append(trial.number)
    if workdir is not None:
        for number in recovered:
            for leftover in (Path(workdir) / "trials").glob(f"trial-{number}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
    return recovered


def record_interrupted(trial: optuna.Trial, what: str) -> None:
    """Records that ``what`` (``Ctrl+C (SIGINT)``, ``SIGTERM``) stopped this process while it
    ran ``trial``, the way ``recover_interrupted`` records a killed one, and queues the retry
    at once; Optuna then marks the trial failed."""
    me = worker_identity()
    trial.set_user_attr(FAIL_REASON_ATTR, f"interrupted: {what} stopped worker process "
                                          f"{me['pid']} on {me['host']} while the trial ran")
    trial.set_user_attr(INTERRUPTED_ATTR, True)
    _enqueue_retry(trial.study, trial.study._storage.get_trial(trial._trial_id))


def _enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queues ``trial`` once more with its parameters and what it was enqueued as."""
    keep = {k: v for k, v in trial.user_attrs.items()
            if k in (REFERENCE_ATTR, FINALIST_ATTR, CANDIDATE_ATTR, SCREENED_ATTR) and
            (k != CANDIDATE_ATTR or FINALIST_ATTR in trial.user_attrs)}
    study.enqueue_trial(trial.params, user_attrs={**keep, RETRY_ATTR: trial.number})
