"""The Optuna objective: space -> candidate -> evaluator -> recorded trial."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.trial import TrialState
from optuna_dashboard import save_note

from edgeslim.errors import CandidateError
from edgeslim.evaluators import Caps, Evaluator, Measurement
from edgeslim.export import one_line
from edgeslim.search.picking import ACCURACY, FINALIST_ATTR, is_feasible
from edgeslim.search.references import REFERENCE_ATTR, reference_note
from edgeslim.search.repair import StaticCheck, repair
from edgeslim.spaces import Candidate, Space, StagedSpace

# A trial whose candidate builds the model an earlier trial built (``StagedSpace.built_as``)
# takes that trial's results instead of training the same model again.
DUPLICATE_ATTR = "duplicate_of"
BUILT_AS_ATTR = "built_as"
# Attributes that describe a trial itself, not the model it built: never copied to a repeat.
_OWN_ATTRS = {"candidate", "sampled", "repaired", "repair_step", BUILT_AS_ATTR, "reference",
              "same_as", "screened", "worker", "retry_of", "failed_trial", DUPLICATE_ATTR}


__all__ = ["ACCURACY", "BUILT_AS_ATTR", "DUPLICATE_ATTR", "FINALIST_ATTR", "Objective",
           "directions", "is_feasible"]


def directions(objectives: Sequence[str]) -> list[str]:
    """Accuracy is maximised; every other objective (a cost) is minimised."""
    return ["maximize"] + ["minimize"] * len(objectives)


class Objective:
    """Calls ``space`` and ``evaluator`` for one trial and records the result on it.

    Recorded per trial: every measure as a user attribute under its unit-suffixed name, one
    constraint per budget limit (``Trial.set_constraint``; feasible when <= 0), ``finetuned``,
    the repair of the sampled candidate (``edgeslim.search.repair``: ``repaired``, ``sampled``,
    ``repair_step``), ``candidate`` (what was built) and ``built_as`` (its key: ``duplicate_of``
    names an earlier trial that built the same model, whose results it takes untrained),
    ``infeasible_reason`` for candidates stopped before training, ``fail_reason`` for failures,
    and the artifact ids of the saved files (``artifact:model.onnx``). A reference trial gets
    a dashboard note naming its preset.
    """

    def __init__(self, space: Space, evaluator: Evaluator, caps: Caps,
                 objectives: Sequence[str], store: ArtifactStore, workdir: Path,
                 check: StaticCheck | None = None,
                 final_evaluator: Evaluator | None = None) -> None:
        self.space, self.evaluator, self.caps = space, evaluator, caps
        self.objectives = tuple(objectives)
        self.store, self.workdir = store, Path(workdir)
        self.check = check  # repairs sampled candidates when given (a StagedSpace's)
        self.final_evaluator = final_evaluator or evaluator  # the finalists' long fine-tune

    def __call__(self, trial: optuna.Trial) -> list[float]:
        """Any error while building, training or measuring the candidate fails the trial with
        the reason in ``fail_reason``, and the study goes on (Optuna's log, in the run's log
        file, keeps the traceback)."""
        try:
            return self._run(trial)
        except (CandidateError, optuna.TrialPruned):
            raise
        except Exception as exc:
            reason = f"unexpected {type(exc).__name__}: {one_line(exc)}"
            trial.set_user_attr("fail_reason", reason)
            raise CandidateError(reason) from exc

    def _run(self, trial: optuna.Trial) -> list[float]:
        attrs = trial.user_attrs
        if REFERENCE_ATTR in attrs:  # labelled in the dashboard
            save_note(trial, reference_note(attrs[REFERENCE_ATTR]))
        sampled = self.space(trial)
        evaluator, checked = self.evaluator, False
        if FINALIST_ATTR in attrs:
            # A finalist rebuilds the candidate its search trial built (after repair), with
            # the long fine-tune; its parameters are that trial's, for the sampler.
            candidate = Candidate.from_dict(attrs["candidate"])
            evaluator, checked = self.final_evaluator, True
        elif self.check is not None and isinstance(self.space, StagedSpace):
            try:
                repaired = repair(sampled, self.space, self.check)
            except CandidateError as exc:
                # Checking the limits builds the candidate (pruned, exported, loaded in
                # onnxruntime, untrained): one that cannot be built fails here, before the
                # evaluator sees it, and is recorded the same way.
                trial.set_user_attr("candidate", sampled.to_dict())
                trial.set_user_attr("fail_reason", str(exc))
                raise
            for key, value in repaired.attrs().items():
                trial.set_user_attr(key, value)
            candidate, checked = repaired.candidate, repaired.checked
        else:
            candidate = sampled
        trial.set_user_attr("candidate", candidate.to_dict())
        if isinstance(self.space, StagedSpace):
            trial.set_user_attr(BUILT_AS_ATTR, self.space.built_as(candidate))
            prior = None if FINALIST_ATTR in attrs else self._built_before(trial)
            if prior is not None:
                return self._repeat(trial, prior)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"trial-{trial.number}-", dir=self.workdir) as t:
            try:
                measurement = evaluator.evaluate(candidate, Path(t), checked=checked)
            except CandidateError as exc:
                trial.set_user_attr("fail_reason", str(exc))
                raise
            return self.record(trial, measurement)

    @staticmethod
    def _built_before(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
        """A complete search trial that built the same model as ``trial`` (``built_as``)."""
        key = trial.user_attrs[BUILT_AS_ATTR]
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = t.user_attrs
            if a.get(BUILT_AS_ATTR) == key and FINALIST_ATTR not in a and DUPLICATE_ATTR not in a:
                return t
        return None

    def _repeat(self, trial: optuna.Trial, prior: optuna.trial.FrozenTrial) -> list[float]:
        """Records ``trial`` as building the model ``prior`` built: its measures, constraints
        and values, without training it again (``duplicate_of``; it does not count towards
        the study's trials, and export and the tables leave it out)."""
        trial.set_user_attr(DUPLICATE_ATTR, prior.number)
        for key, value in prior.user_attrs.items():
            if key not in _OWN_ATTRS and not key.startswith("artifact:"):
                trial.set_user_attr(key, value)
        for key, value in prior.constraints.items():
            trial.set_constraint(key, value)
        return list(prior.values)

    def record(self, trial: optuna.Trial, m: Measurement) -> list[float]:
        for key, value in m.values.items():
            trial.set_user_attr(key, value)
        for key, value in m.info.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("finetuned", m.finetuned)
        if m.infeasible:
            trial.set_user_attr("infeasible_reason", "; ".join(m.infeasible))
        for key, value in self.caps.constraints(m.values).items():
            trial.set_constraint(key, value)
        for name, path in m.artifacts.items():
            artifact_id = upload_artifact(artifact_store=self.store, file_path=str(path),
                                          study_or_trial=trial)
            trial.set_user_attr(f"artifact:{name}", artifact_id)
        return [m.values[ACCURACY]] + [m.values[o] for o in self.objectives]
