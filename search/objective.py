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
from edgeslim.heap import release_freed_memory
from edgeslim.search.picking import is_feasible
from edgeslim.search.records import (
    ACCURACY,
    ARTIFACT_PREFIX,
    BUILT_AS_ATTR,
    CANDIDATE_ATTR,
    DUPLICATE_ATTR,
    FAIL_REASON_ATTR,
    FINETUNED_ATTR,
    INFEASIBLE_ATTR,
    TrialRecord,
)
from edgeslim.search.references import reference_note
from edgeslim.search.repair import StaticCheck, repair
from edgeslim.spaces import Candidate, StagedSpace

# A trial whose candidate builds the model an earlier trial built (``StagedSpace.built_as``)
# takes that trial's results (``duplicate_of``) instead of training the same model again.
# What it copies: whether the model was fine-tuned, the limits it breaks, its measures and
# the channels it kept; not what describes the trial itself (its candidate, repair, origin,
# worker) nor its files.
_MODEL_ATTRS = ("finetuned", "infeasible_reason", "channels", "measures")

__all__ = ["Objective", "directions", "is_feasible"]


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

    def __init__(self, space: StagedSpace, evaluator: Evaluator, caps: Caps,
                 objectives: Sequence[str], store: ArtifactStore, workdir: Path,
                 check: StaticCheck | None = None,
                 final_evaluator: Evaluator | None = None, repair: bool = True) -> None:
        self.space, self.evaluator, self.caps = space, evaluator, caps
        self.objectives = tuple(objectives)
        self.store, self.workdir = store, Path(workdir)
        # The limits checked before training (none without it); with ``repair``, a sampled
        # candidate that breaks one is moved to the nearest that fits.
        self.check, self.repair = check, repair
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
            trial.set_user_attr(FAIL_REASON_ATTR, reason)
            raise CandidateError(reason) from exc
        finally:
            release_freed_memory()  # the candidate's copies, files and sessions

    def _run(self, trial: optuna.Trial) -> list[float]:
        record = TrialRecord.of(trial)
        if record.reference is not None:  # labelled in the dashboard
            save_note(trial, reference_note(record.reference))
        sampled = self.space(trial)
        evaluator, broken = self.evaluator, []
        finalist = record.finalist_of is not None
        if finalist:
            # A finalist rebuilds the candidate its search trial built (after repair), with
            # the long fine-tune; its parameters are that trial's, for the sampler.
            candidate = Candidate.from_dict(record.candidate)
            evaluator = self.final_evaluator
        else:
            candidate, broken = self._checked(trial, sampled)
        trial.set_user_attr(CANDIDATE_ATTR, candidate.to_dict())
        trial.set_user_attr(BUILT_AS_ATTR, self.space.built_as(candidate))
        prior = None if finalist else self._built_before(trial)
        if prior is not None:
            return self._repeat(trial, prior)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"trial-{trial.number}-", dir=self.workdir) as t:
            try:
                if broken:
                    measurement = self._untrained(candidate, Path(t), broken)
                else:
                    measurement = evaluator.evaluate(candidate, Path(t))
            except CandidateError as exc:
                trial.set_user_attr(FAIL_REASON_ATTR, str(exc))
                raise
            return self.record(trial, measurement)

    def _checked(self, trial: optuna.Trial, sampled: Candidate) -> tuple[Candidate, list[str]]:
        """The candidate to build (``sampled``, or its repair) and the static limits it
        breaks. Checking builds the candidate's structure (pruned, exported, loaded in
        onnxruntime, untrained): one that cannot be built fails here, with its reason."""
        if self.check is None:
            return sampled, []
        candidate = sampled
        try:
            if self.repair:
                repaired = repair(sampled, self.space, self.check)
                for key, value in repaired.attrs().items():
                    trial.set_user_attr(key, value)
                candidate = repaired.candidate
            broken = self.check.violations(candidate)
        except CandidateError as exc:
            trial.set_user_attr(CANDIDATE_ATTR, sampled.to_dict())
            trial.set_user_attr(FAIL_REASON_ATTR, str(exc))
            raise
        error = self.check.failure(candidate)
        if error is not None:
            trial.set_user_attr(CANDIDATE_ATTR, candidate.to_dict())
            trial.set_user_attr(FAIL_REASON_ATTR, error)
            raise CandidateError(error)
        return candidate, broken

    def _untrained(self, candidate: Candidate, workdir: Path, broken: list[str]) -> Measurement:
        """A candidate that breaks a static limit, recorded as it is, without training: its
        counted structure and the measures of its untrained file."""
        values = {**self.check.structure(candidate),
                  **self.evaluator.static_values(candidate, workdir, accuracy=True)}
        info = {"stage_order": candidate.order_name, "quantize": candidate.quantize}
        return Measurement(values, info, infeasible=tuple(broken))

    @staticmethod
    def _built_before(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
        """A complete search trial that built the same model as ``trial`` (``built_as``)."""
        key = TrialRecord.of(trial).built_as
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            r = TrialRecord.of(t)
            if r.built_as == key and r.finalist_of is None and r.duplicate_of is None:
                return t
        return None

    def _repeat(self, trial: optuna.Trial, prior: optuna.trial.FrozenTrial) -> list[float]:
        """Records ``trial`` as building the model ``prior`` built: its measures, constraints
        and values, without training it again (``duplicate_of``; it does not count towards
        the study's trials, and export and the tables leave it out)."""
        trial.set_user_attr(DUPLICATE_ATTR, prior.number)
        source = TrialRecord.of(prior)
        model = TrialRecord(**{f: getattr(source, f) for f in _MODEL_ATTRS})
        for key, value in model.to_attrs().items():
            trial.set_user_attr(key, value)
        for key, value in prior.constraints.items():
            trial.set_constraint(key, value)
        return list(prior.values)

    def record(self, trial: optuna.Trial, m: Measurement) -> list[float]:
        for key, value in m.values.items():
            trial.set_user_attr(key, value)
        for key, value in m.info.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(FINETUNED_ATTR, m.finetuned)
        if m.infeasible:
            trial.set_user_attr(INFEASIBLE_ATTR, "; ".join(m.infeasible))
        for key, value in self.caps.constraints(m.values).items():
            trial.set_constraint(key, value)
        for name, path in m.artifacts.items():
            artifact_id = upload_artifact(artifact_store=self.store, file_path=str(path),
                                          study_or_trial=trial)
            trial.set_user_attr(ARTIFACT_PREFIX + name, artifact_id)
        return [m.values[ACCURACY]] + [m.values[o] for o in self.objectives]
