"""What a study and each of its trials record in Optuna's user attributes.

These attributes are the one link between the search and everything that reads it later:
export, the card, the report, figures, notes, the dashboard, screening, workers and warm
starts, in this process or another, today or after an upgrade. This module owns every key.
Writers take the key constants below or build a record and write its ``to_attrs()``; readers
take a typed view, ``TrialRecord.of(trial)`` or ``StudyRecord.of(study)``, and never index
``user_attrs`` by a literal name.

A trial's record holds what was built (``candidate``, ``built_as``; ``sampled``,
``repaired`` and ``repair_step`` when repair moved it), how it ended
(``fail_reason``, ``infeasible_reason``, ``interrupted``), where it came from (``retry_of``,
``finalist_of``, ``duplicate_of``, ``reference``, ``imported_from``, ``screened``), who ran
it (``worker``), its files in the artifact store (``artifact:NAME``), the channels it kept per
group (``channels/GROUP``), the weight values left per clustered layer (``clusters/LAYER``),
and the measurements of its evaluator (``measures``: ``val_acc``,
``params``, ``macs``, ``size_bytes``, ``latency_ms``, timings...), which ``evaluators``
defines. Light on imports (Optuna only), like every reader of a stored study.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import optuna

# A trial's keys. The field names of ``TrialRecord`` are the keys themselves.
ACCURACY = "val_acc"  # validation accuracy of the deployed file: the first objective
LATENCY = "latency_ms"
CANDIDATE_ATTR = "candidate"  # Candidate.to_dict() of what was built
BUILT_AS_ATTR = "built_as"  # the build key: trials with the same one are the same model
FINETUNED_ATTR = "finetuned"  # whether it was fine-tuned (False: a limit failed before)
FAIL_REASON_ATTR = "fail_reason"
INFEASIBLE_ATTR = "infeasible_reason"  # the limits it breaks, in words
INTERRUPTED_ATTR = "interrupted"  # its worker died or was stopped; it is run again
RETRY_ATTR = "retry_of"  # the interrupted trial this one runs again
# A finalist trial re-runs the candidate of the search trial it names with the long fine-tune.
FINALIST_ATTR = "finalist_of"
DUPLICATE_ATTR = "duplicate_of"  # a trial that built the same model: its results copied
REFERENCE_ATTR = "reference"  # the rule-based preset this trial runs
# A trial imported from a study searched for another budget (``edgeslim.search.warmstart``):
# the study and trial it came from.
IMPORTED_ATTR = "imported_from"
SCREENED_ATTR = "screened"  # on a study trial: {"trial": n, "acc": score} of its screening
SCORE_ATTR = "screen_acc"  # on a screening trial: its accuracy after recalibration
WORKER_ATTR = "worker"  # host, pid and start of the process that runs the trial
SURPLUS_ATTR = "surplus"  # a concurrent worker's extra copy of an enqueued trial, not run
ARTIFACT_PREFIX = "artifact:"  # artifact:NAME -> the file's id in the artifact store
CHANNELS_PREFIX = "channels/"  # channels/GROUP -> channels the trial kept in that group
CLUSTERS_PREFIX = "clusters/"  # clusters/LAYER -> distinct weight values left in that layer

# A study's keys. The field names of ``StudyRecord`` are the keys themselves.
SETUP_ATTR = "setup"  # written last: a study without it was interrupted while set up
WARM_START_ATTR = "warm_start"  # where a warm start came from, what it imported and left out


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial's user attributes, typed. Absent keys are None (or empty)."""

    candidate: dict[str, Any] | None = None
    sampled: dict[str, Any] | None = None  # the candidate sampled, when repair moved it
    repaired: bool | None = None
    repair_step: int | None = None  # which step of the repair ladder it took
    built_as: str | None = None
    finetuned: bool | None = None
    fail_reason: str | None = None
    infeasible_reason: str | None = None
    interrupted: bool | None = None
    retry_of: int | None = None
    finalist_of: int | None = None
    duplicate_of: int | None = None
    reference: str | None = None
    same_as: list[str] | None = None  # presets whose fitted trial is the reference's own
    imported_from: dict[str, Any] | None = None
    screened: dict[str, Any] | None = None
    screen_acc: float | None = None
    worker: dict[str, Any] | None = None
    surplus: bool | None = None
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    channels: dict[str, int] = dataclasses.field(default_factory=dict)
    clusters: dict[str, int] = dataclasses.field(default_factory=dict)
    measures: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        named: dict[str, Any] = {}
        keyed: dict[str, dict[str, Any]] = {field: {} for field in (*_PREFIXES, "measures")}
        for key, value in attrs.items():
            if key in _TRIAL_FIELDS:
                named[key] = value
                continue
            field = next((f for f, p in _PREFIXES.items() if key.startswith(p)), "measures")
            keyed[field][key.removeprefix(_PREFIXES.get(field, ""))] = value
        return cls(**named, **keyed)

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        return cls.from_attrs(trial.user_attrs)

    def to_attrs(self) -> dict[str, Any]:
        attrs = {k: getattr(self, k) for k in _TRIAL_FIELDS if getattr(self, k) is not None}
        for field, prefix in _PREFIXES.items():
            attrs.update({prefix + k: v for k, v in getattr(self, field).items()})
        return {**attrs, **self.measures}

    @property
    def accuracy(self) -> float | None:
        return self.measures.get(ACCURACY)

    def measure(self, name: str, default: Any = None) -> Any:
        return self.measures.get(name, default)

    @property
    def derived(self) -> bool:
        """A finalist, a duplicate or an imported trial: not one the search itself proposed
        and trained."""
        return any(v is not None for v in (self.finalist_of, self.duplicate_of,
                                           self.imported_from))


# Fields held under several keys: a prefix and a name (a file, a group, a layer).
_PREFIXES = {"artifacts": ARTIFACT_PREFIX, "channels": CHANNELS_PREFIX,
             "clusters": CLUSTERS_PREFIX}
_TRIAL_FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord)
                      if f.name not in (*_PREFIXES, "measures"))


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    """A study's user attributes, typed: written once when the study is set up (and
    ``warm_start`` when one ends), read by everything that opens the study later."""

    setup: dict[str, Any] | None = None  # what must match to resume (search.study)
    budget: dict[str, Any] | None = None  # Budget.to_dict()
    caps: dict[str, Any] | None = None  # {"limits": {measure: cap}, "min_val_acc": float}
    base: dict[str, Any] | None = None  # the base model's measures
    data: dict[str, Any] | None = None  # name, input_shape, mean, std, class_names
    space: dict[str, Any] | None = None  # the space's describe()
    objectives: list[str] | None = None  # [ACCURACY, *the budget's objectives]
    paths: dict[str, str] | None = None  # workdir, artifacts, data_dir, base_weights
    edgeslim_version: str | None = None
    references: list[Any] | None = None  # reference presets enqueued
    warm_start: dict[str, Any] | None = None
    other: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys of other versions

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StudyRecord:
        named = {k: v for k, v in attrs.items() if k in _STUDY_FIELDS}
        return cls(**named, other={k: v for k, v in attrs.items() if k not in _STUDY_FIELDS})

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        return cls.from_attrs(study.user_attrs)

    def to_attrs(self) -> dict[str, Any]:
        attrs = {k: getattr(self, k) for k in _STUDY_FIELDS if getattr(self, k) is not None}
        return {**attrs, **self.other}

    @property
    def limits(self) -> dict[str, float]:
        return (self.caps or {}).get("limits", {})

    @property
    def budget_name(self) -> str:
        return (self.budget or {})["name"]

    @property
    def runtime_name(self) -> str:
        return (self.budget or {})["runtime"]["name"]

    def path(self, name: str) -> str | None:
        """One of ``paths``: workdir, artifacts, data_dir, base_weights."""
        return (self.paths or {}).get(name)


_STUDY_FIELDS = tuple(f.name for f in dataclasses.fields(StudyRecord) if f.name != "other")
