"""Which trial an export or a report takes. Light on imports (Optuna, no PyTorch), so that
``optimize export --trial N`` refuses a trial it cannot export in seconds, before the model
code loads."""

from __future__ import annotations

import optuna

from edgeslim.artifacts import DEPLOYABLE
from edgeslim.errors import StudyError
from edgeslim.search.records import ARTIFACT_PREFIX, LATENCY, TrialRecord


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == optuna.trial.TrialState.COMPLETE and \
        all(v <= 0 for v in trial.constraints.values())


def deployable_artifact(trial: optuna.trial.FrozenTrial) -> str | None:
    """The name of the trial's deployable artifact, or None when it was not fine-tuned."""
    return next((name for name in DEPLOYABLE if ARTIFACT_PREFIX + name in trial.user_attrs),
                None)


def choose_trial(study: optuna.Study, number: int | None = None) -> optuna.trial.FrozenTrial:
    """``number``, or the best feasible fine-tuned trial: highest validation accuracy, ties to
    the lower latency; among the finalists (``--finalists``) when any is feasible."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        found = [t for t in trials if t.number == number]
        if not found:
            raise StudyError(f"study {study.study_name!r} has no trial {number} "
                             f"(trials 0 to {len(trials) - 1})")
        trial = found[0]
        record = TrialRecord.of(trial)
        if trial.state != optuna.trial.TrialState.COMPLETE:
            reason = record.fail_reason or ""
            raise StudyError(f"trial {number} of {study.study_name!r} is {trial.state.name}"
                             + (f" ({reason})" if reason else "") + "; pick a complete trial")
        if deployable_artifact(trial) is None:
            raise StudyError(f"trial {number} was not fine-tuned (it broke "
                             f"{record.infeasible_reason or 'a limit'}), so it "
                             "has no model to export; pick a fine-tuned trial")
        return trial
    feasible = [t for t in trials if is_feasible(t) and deployable_artifact(t) is not None]
    if not feasible:
        raise StudyError(f"study {study.study_name!r} has no feasible trial yet "
                         f"({len(trials)} trials); run more trials, loosen the budget, or pick "
                         "one with --trial N")
    # The finalists were fine-tuned with the long recipe and measured again: their
    # accuracies are the ones to pick by (the search's short fine-tunes only ranked them).
    records = {t.number: TrialRecord.of(t) for t in feasible}
    finalists = [t for t in feasible if records[t.number].finalist_of is not None]
    return min(finalists or feasible, key=lambda t: (-records[t.number].accuracy,
                                                     records[t.number].measure(LATENCY, 0.0),
                                                     t.number))
