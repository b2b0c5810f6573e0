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
from edgeslim.search.picking import ACCURACY, FINALIST_ATTR, IMPORTED_ATTR, is_feasible
from edgeslim.search.references import REFERENCE_ATTR, reference_note
from edgeslim.search.repair import StaticCheck, repair
from edgeslim.spaces import Candidate, StagedSpace

# A trial whose candidate builds the model an earlier trial built (``StagedSpace.built_as``)
# takes that trial's results instead of training the same model again.
DUPLICATE_ATTR = "duplicate_of"
BUILT_AS_ATTR = "built_as"
# Attributes that describe a trial itself, not the model it built: never copied to a repeat.
_OWN_ATTRS = {"candidate", "sampled", "repaired", "repair_step", BUILT_AS_ATTR, "reference",
              "same_as", "screened", "worker", "retry_of", "failed_trial", DUPLICATE_ATTR,
              IMPORTED_ATTR}


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
            trial.set_user_attr("fail_reason", reason)
            raise CandidateError(reason) from exc

    def _run(self, trial: optuna.Trial) -> list[float]:
        attrs = trial.user_attrs
        if REFERENCE_ATTR in attrs:  # labelled in the dashboard
            save_note(trial, reference_note(attrs[REFERENCE_ATTR]))
        sampled = self.space(trial)
        evaluator, broken = self.evaluator, []
        if FINALIST_ATTR in attrs:
            # A finalist rebuilds the candidate its search trial built (after repair), with
            # the long fine-tune; its parameters are that trial's, for the sampler.
            candidate = Candidate.from_dict(attrs["candidate"])
            evaluator = self.final_evaluator
        else:
            candidate, broken = self._checked(trial, sampled)
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr(BUILT_AS_ATTR, self.space.built_as(candidate))
        prior = None if FINALIST_ATTR in attrs else self._built_before(trial)
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
                trial.set_user_attr("fail_reason", str(exc))
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
            trial.set_user_attr("candidate", sampled.to_dict())
            trial.set_user_attr("fail_reason", str(exc))
            raise
        error = self.check.failure(candidate)
        if error is not None:
            trial.set_user_attr("candidate", candidate.to_dict())
            trial.set_user_attr("fail_reason", error)
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
