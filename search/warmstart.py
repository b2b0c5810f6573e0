"""Warm-starting a search for one budget from a study searched for another
(``optimize --budget OTHER.yaml --resume-from STUDY``).

The new study starts with the old study's fine-tuned search trials, judged against the new
budget as ``optimize show --budget`` judges them (``edgeslim.search.retarget``: latency timed
again for its latency source, the files made again for another runtime), with their
parameters, measures, constraints and files. Its sampler sees them as trials of its own, so
its first proposals already know which regions of the space keep accuracy and which break
the new limits; a proposal that builds a model an imported trial built takes that trial's
results instead of training it again. Imported trials do not count towards ``--trials``:
``--trials N`` is N new fine-tunes.

Only a study whose trials compare can be imported: the same model, data, seed (it draws the
validation split), base model and fine-tune recipe. A trial whose parameters the new space
does not offer (a stage order a params limit rules out, a quantization mode the new runtime
does not run) is left out, and so are the old study's finalists (their accuracy comes from
the long fine-tune, not the search's) and trials that cannot be judged.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import CategoricalDistribution
from optuna.storages._base import BaseStorage
from optuna.trial import FixedTrial, TrialState, create_trial

from edgeslim.artifacts import ARTIFACT_STATE
from edgeslim.errors import StudyError
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.search._prepare import Prepared
from edgeslim.search.config import SearchConfig
from edgeslim.search.records import (
    ACCURACY,
    ARTIFACT_PREFIX,
    FAIL_REASON_ATTR,
    WARM_START_ATTR,
    StudyRecord,
    TrialRecord,
)
from edgeslim.search.retarget import Retarget, Verdict, judged_trials
from edgeslim.search.storage import open_storage
from edgeslim.spaces import StagedSpace

# What must be equal for two studies' trials to compare (``setup_identity`` keys).
# The seed draws the validation split and seeds the recipes: another seed, other accuracies.
COMPARABLE = ("model", "dataset", "seed", "data_fingerprint", "checkpoint", "base_recipe",
              "finetune", "recovery")
# What describes how an old trial ran in its own study, not its model: not copied.
_NOT_COPIED = {"reference": None, "screened": None, "worker": None,
               "retry_of": None, "surplus": None, "interrupted": None, "fail_reason": None,
               "artifacts": {}}

__all__ = ["COMPARABLE", "WARM_START_ATTR", "import_trials", "source_study"]


def source_study(config: SearchConfig, identity: dict[str, Any]) -> optuna.Study:
    """The study ``--resume-from`` names, in the search's storage, refused (before anything
    is trained) unless its trials compare with this search's (``COMPARABLE``)."""
    name = config.resume_from
    storage = open_storage(config.storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage,
                                                                   include_best_trial=False)]
    if name not in names:
        raise StudyError(f"--resume-from: no study {name!r} in {config.storage_url} (it holds "
                         f"{', '.join(names) or 'none'}); give --storage or --workdir of the "
                         "search that made it")
    if name == config.name:
        raise StudyError(f"--resume-from {name}: that is the study this search resumes; name "
                         "a study searched for another budget")
    source = optuna.load_study(study_name=name, storage=storage)
    stored = StudyRecord.of(source).setup
    if stored is None:
        raise StudyError(f"--resume-from {name}: that study was never set up (interrupted "
                         "before its first trial); resume it first, or start cold")
    differs = [k for k in COMPARABLE if json.dumps(stored.get(k), sort_keys=True)
               != json.dumps(identity[k], sort_keys=True)]
    if differs:
        raise StudyError(f"--resume-from {name}: its trials do not compare with this search's: "
                         f"a different {', '.join(differs)}; use the options that study was "
                         "searched with (only the budget and the space may change)")
    return source


def import_trials(config: SearchConfig, prepared: Prepared, study: optuna.Study,
                  source: optuna.Study, meter: LatencyMeter) -> dict[str, Any]:
    """Adds ``source``'s search trials to ``study`` (see the module docstring), once: a run
    interrupted while importing imports the rest when resumed. Returns the ``warm_start``
    summary recorded on ``study``."""
    done = StudyRecord.of(study).warm_start
    if done is not None:
        return done
    start = time.perf_counter()
    _fail_unfinished_imports(study)
    have = {TrialRecord.of(t).imported_from["trial"] for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,)) if TrialRecord.of(t).imported_from}
    judged = judged_trials(source)
    finalist = {t.number for t in judged if TrialRecord.of(t).finalist_of is not None}
    trials = [t for t in judged if t.number not in finalist and t.number not in have]
    left_out: dict[str, int] = {}
    finalists = len(finalist)
    if finalists:
        left_out["finalists (long fine-tune)"] = finalists
    store = FileSystemArtifactStore(str(config.workdir / "artifacts"))
    scratch = config.workdir / "trials"
    scratch.mkdir(parents=True, exist_ok=True)
    imported = len(have)
    with tempfile.TemporaryDirectory(prefix="warm-start-", dir=scratch) as tmp:
        retarget = Retarget(source, config.budget, prepared.data, prepared.base, meter,
                            Path(tmp), base_values=prepared.base_values)
        for verdict in retarget.judge_all(trials):
            why = verdict.reason or _outside(prepared.space, verdict.trial)
            if why is not None:
                left_out[why] = left_out.get(why, 0) + 1
                continue
            _add(study, verdict, retarget, prepared.space, config, store, Path(tmp))
            imported += 1
    summary = {"study": source.study_name, "budget": StudyRecord.of(source).budget_name,
               "imported": imported, "left_out": left_out,
               "seconds": round(time.perf_counter() - start, 1)}
    study.set_user_attr(WARM_START_ATTR, summary)
    return summary


def _outside(space: StagedSpace, trial: optuna.trial.FrozenTrial) -> str | None:
    """Why this search's space cannot propose ``trial``'s parameters, or None."""
    fixed = FixedTrial(trial.params)
    try:
        space(fixed)
    except ValueError:  # a parameter this space asks for that the trial has not
        return "parameters outside this search's space"
    for name, dist in fixed.distributions.items():
        value = fixed.params[name]
        if isinstance(dist, CategoricalDistribution) and value not in dist.choices:
            return f"{name} {value} not offered by this search's space"
        if not isinstance(dist, CategoricalDistribution) and not dist._contains(
                dist.to_internal_repr(value)):
            return f"{name} {value} outside this search's space"
    return None


def _add(study: optuna.Study, verdict: Verdict, retarget: Retarget, space: StagedSpace,
         config: SearchConfig, store: FileSystemArtifactStore, scratch: Path) -> None:
    """``verdict``'s trial as a complete trial of ``study``: its parameters as this space
    proposes them, its measures for this budget, its constraints and its files."""
    old = verdict.trial
    fixed = FixedTrial(old.params)
    space(fixed)
    record = TrialRecord.of(old)
    origin = {"study": retarget.study.study_name, "trial": old.number,
              "budget": StudyRecord.of(retarget.study).budget_name}
    kept = dataclasses.replace(
        record, **_NOT_COPIED, imported_from=origin,
        measures={k: v for k, v in record.measures.items() if not k.startswith("latency_")})
    attrs = {**kept.to_attrs(), **verdict.values, **verdict.info}
    study.add_trial(create_trial(state=TrialState.RUNNING, params=fixed.params,
                                 distributions=fixed.distributions, user_attrs=attrs))
    frozen = next(t for t in reversed(study.get_trials(deepcopy=False))
                  if TrialRecord.of(t).imported_from == origin)
    trial = optuna.Trial(study, frozen._trial_id)
    files = _files(verdict, retarget, scratch)
    for name, path in files.items():
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path),
                                      study_or_trial=trial)
        trial.set_user_attr(ARTIFACT_PREFIX + name, artifact_id)
    for key, value in retarget.caps.constraints(verdict.values).items():
        trial.set_constraint(key, value)
    study.tell(trial, [verdict.values[ACCURACY]]
               + [verdict.values[o] for o in config.budget.objectives])


def _files(verdict: Verdict, retarget: Retarget, scratch: Path) -> dict[str, Path]:
    """The files the new trial keeps, named as a trial of this budget's search names them:
    its deployable file (and the LiteRT file run beside a packed one), and its float
    weights."""
    deployable, runnable = verdict.files["deployable"], verdict.files["runnable"]
    # As a search keeps them: the ONNX file a packed file restores to is not kept.
    files = {p.name: p for p in (deployable, runnable) if p.suffix != ".onnx" or p == deployable}
    state = verdict.files.get("state")  # downloaded already when the files were made again
    if state is None:
        folder = Path(tempfile.mkdtemp(prefix=f"import-{verdict.trial.number}-", dir=scratch))
        state = retarget.download(verdict.trial, ARTIFACT_STATE, folder)
    return {**files, ARTIFACT_STATE: state}


def _fail_unfinished_imports(study: optuna.Study) -> None:
    """Imports cut short (the run was killed while adding a trial) are marked failed; their
    trials are imported again."""
    storage: BaseStorage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if TrialRecord.of(t).imported_from is not None:
            storage.set_trial_user_attr(t._trial_id, FAIL_REASON_ATTR,
                                        "interrupted while being imported")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
