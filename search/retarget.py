"""A study's trials judged against another budget, without training them again.

Most trials of a study searched for one device are valid candidates for another: the same
structure, the same fine-tuned float weights. What depends on the device is measured again:

- the base model, measured exactly as a search for that budget measures it, since its
  relative limits and its accuracy floor come from it;
- in the same runtime (same name, same int8 inputs and outputs), a trial's stored file is the
  file that budget deploys: its latency is measured again with that budget's latency source
  and threads, and the other measures (accuracy, size, memory, params, MACs) are properties of
  the file in that runtime, recorded by the trial;
- in another runtime, the file is made again from the trial's stored float weights (quantized
  and converted as a search for that budget makes it, with the same calibration images), and
  every measure is taken on it, validation accuracy included.

A trial that cannot be judged says why: it was not fine-tuned, its quantization mode is not
one the other runtime runs, or that runtime refuses its file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact

from edgeslim.artifacts import ARTIFACT_ONNX, ARTIFACT_PACKED, ARTIFACT_STATE, ARTIFACT_TFLITE
from edgeslim.basemodel import BaseModel
from edgeslim.budget import Budget
from edgeslim.data import DataBundle, load_dataset
from edgeslim.errors import CandidateError, StudyError
from edgeslim.evaluators import UNITS, Built, StagedEvaluator, measure_onnx_file
from edgeslim.evaluators.litert import measure_litert_file
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.export import write_onnx
from edgeslim.models import build_model, load_checkpoint
from edgeslim.packing import restore_onnx
from edgeslim.runtimes import runtime_info
from edgeslim.search._prepare import checked_meter, measure_base, resolve_caps
from edgeslim.search.config import SpaceOptions
from edgeslim.search.picking import deployable_artifact
from edgeslim.search.records import LATENCY, StudyRecord, TrialRecord
from edgeslim.ship.card import Target
from edgeslim.spaces import Candidate
from edgeslim.training import TrainRecipe

__all__ = ["Retarget", "Verdict", "download_trial_artifact", "judged_trials", "load_study_data",
           "rank"]


@dataclass(frozen=True)
class Verdict:
    """A trial against the other budget: its measures there, and pass or fail per limit
    (``limits``: measure -> limit, value, pass), or the ``reason`` it cannot be judged.
    ``files`` holds the files judged (``runnable``, ``deployable``; made again in another
    runtime, also the float ``state`` they were made from and, for LiteRT, the float ``onnx``
    file converted), while the ``Retarget``'s scratch folder lives."""

    trial: optuna.trial.FrozenTrial
    values: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.reason is None and all(v["pass"] for v in self.limits.values())

    @property
    def broken(self) -> list[str]:
        return [name for name, v in self.limits.items() if not v["pass"]]


def load_study_data(study: optuna.Study, data_dir: Path | None = None) -> DataBundle:
    """The data the study searched on (``data_dir``, or the folder the study recorded),
    refused when it is not the same data any more."""
    record = StudyRecord.of(study)
    setup = record.setup
    data = load_dataset(setup["dataset"], Path(data_dir or record.path("data_dir")),
                        Path(record.path("workdir")) / "cache" / "data", setup["seed"])
    if data.fingerprint != setup["data_fingerprint"]:
        raise StudyError(f"the dataset {setup['dataset']!r} found now differs from the one the "
                         "study searched on (its fingerprint changed); point --data-dir at the "
                         "original files")
    return data


def judged_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials with a model to judge: complete, fine-tuned, not a repeat of another; the
    finalists first, then by validation accuracy (the order an export picks in)."""
    trials = [t for t in study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,))
              if deployable_artifact(t) is not None and TrialRecord.of(t).duplicate_of is None]
    return sorted(trials, key=rank)


def rank(trial: optuna.trial.FrozenTrial) -> tuple[bool, float, int]:
    record = TrialRecord.of(trial)
    return (record.finalist_of is None, -(record.accuracy or 0.0), trial.number)


def download_trial_artifact(study: optuna.Study, trial: optuna.trial.FrozenTrial, name: str,
                            folder: Path) -> Path:
    """The trial's stored file ``name``, downloaded into ``folder``."""
    artifacts = StudyRecord.of(study).path("artifacts")
    artifact_id = TrialRecord.of(trial).artifacts.get(name)
    path = Path(folder) / name
    try:
        download_artifact(artifact_store=FileSystemArtifactStore(artifacts),
                          artifact_id=artifact_id, file_path=str(path))
    except Exception as exc:
        raise StudyError(f"trial {trial.number}: artifact {name} ({artifact_id}) cannot "
                         f"be read from {artifacts}: {exc}") from None
    return path


class Retarget:
    """Judges the trials of ``study`` against ``budget`` (see the module docstring). Files go
    under ``scratch``. ``base_values``: the base model measured for ``budget`` already (a
    search that warm-starts has); measured here otherwise."""

    def __init__(self, study: optuna.Study, budget: Budget, data: DataBundle,
                 base: BaseModel, meter: LatencyMeter, scratch: Path,
                 base_values: dict[str, float] | None = None) -> None:
        record = StudyRecord.of(study)
        self.study, self.budget, self.data, self.scratch = study, budget, data, Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        searched = record.budget["runtime"]
        # The trials' files are what this budget deploys: same runtime, same int8 tensors.
        self.same_files = (searched["name"] == budget.runtime.name
                           and bool(searched.get("int8_io")) == budget.runtime.int8_io)
        self.stored_litert = runtime_info(searched["name"]).litert
        self.modes = runtime_info(budget.runtime.name).quant_modes
        self.evaluator = StagedEvaluator(base.model, data, TrainRecipe(), budget.runtime,
                                         seed=record.setup["seed"], meter=meter,
                                         timed=budget.asks_for("latency_ms"))
        if base_values is None:
            base_values = measure_base(base, data, budget, self.scratch / "base", meter)
        self.base_values = base_values
        self.caps = resolve_caps(budget, base_values)
        self.target = Target(budget=budget.to_dict(), base=base_values,
                             caps={"limits": self.caps.limits,
                                   "min_val_acc": self.caps.min_val_acc})

    @classmethod
    def open(cls, study: optuna.Study, budget: Budget, scratch: Path,
             data_dir: Path | None = None) -> Retarget:
        """For a stored study: its data and base model, and ``budget``'s latency source,
        checked as a search checks it (a profile made for this setup, an ssh device that
        answers)."""
        record = StudyRecord.of(study)
        setup = record.setup
        data = load_study_data(study, data_dir)
        model = build_model(setup["model"], data.in_channels, data.num_classes)
        weights = Path(record.path("base_weights"))
        if not weights.is_file():
            raise StudyError(f"the study's base model weights {weights} are gone; the base "
                             "model must be measured for the other budget")
        load_checkpoint(model, weights, setup["model"])
        base = BaseModel(model.eval(), setup["model"], weights, trained_here=False)
        meter = checked_meter(budget, setup["model"], data, SpaceOptions(**setup["space"]),
                              Path(record.path("workdir")) / "cache")
        return cls(study, budget, data, base, meter, scratch)

    def judge_all(self, trials: Iterable[optuna.trial.FrozenTrial],
                  on_judged: Callable[[Verdict], None] | None = None) -> Iterator[Verdict]:
        for trial in trials:
            verdict = self.judge(trial)
            if on_judged is not None:
                on_judged(verdict)
            yield verdict

    def judge(self, trial: optuna.trial.FrozenTrial) -> Verdict:
        """``trial`` against the budget; a reason instead when it cannot be judged."""
        record = TrialRecord.of(trial)
        if deployable_artifact(trial) is None:
            return Verdict(trial, reason=f"not fine-tuned (it broke "
                           f"{record.infeasible_reason or 'a limit'})")
        candidate = Candidate.from_dict(record.candidate)
        if self.modes is not None and candidate.quantize not in self.modes:
            return Verdict(trial, reason=f"quantized {candidate.quantize}; "
                           f"{self.budget.runtime.name} runs {', '.join(self.modes)} only")
        folder = Path(tempfile.mkdtemp(prefix=f"trial-{trial.number}-", dir=self.scratch))
        try:
            if self.same_files:
                values, info, files = self._same_files(trial, folder)
            else:
                values, info, files = self._made_again(trial, candidate, folder)
        except CandidateError as exc:
            return Verdict(trial, reason=f"{self.budget.runtime.name}: {exc}")
        return Verdict(trial, values, info, self.caps.verdicts(values), files=files)

    def download(self, trial: optuna.trial.FrozenTrial, name: str, folder: Path) -> Path:
        return download_trial_artifact(self.study, trial, name, folder)

    def _same_files(self, trial: optuna.trial.FrozenTrial, folder: Path,
                    ) -> tuple[dict[str, float], dict[str, Any], dict[str, Path]]:
        """The trial's measures, with latency timed again on its stored file for this
        budget's latency source (and left out when the budget does not ask for it)."""
        record = TrialRecord.of(trial)
        values = {k: float(record.measure(k)) for k in UNITS
                  if record.measure(k) is not None and k != LATENCY}
        deployable = self.download(trial, deployable_artifact(trial), folder)
        files = {"deployable": deployable}
        if self.stored_litert:
            files["runnable"] = self.download(trial, ARTIFACT_TFLITE, folder) \
                if deployable.name != ARTIFACT_TFLITE else deployable
        elif deployable.name == ARTIFACT_PACKED:
            files["runnable"] = restore_onnx(deployable, folder / ARTIFACT_ONNX)
        else:
            files["runnable"] = deployable
        info: dict[str, Any] = {}
        if self.budget.asks_for("latency_ms"):
            if self.stored_litert:
                # A profile predicts from the ONNX graph the file was converted from.
                graph = self._float_graph(trial, folder) \
                    if self.evaluator.meter.source == "profile" else None
                measured, info = measure_litert_file(
                    files["runnable"], graph, self.data, self.budget.runtime,
                    meter=self.evaluator.meter,
                    mode=Candidate.from_dict(record.candidate).quantize)
            else:
                measured, info = measure_onnx_file(files["runnable"], self.data,
                                                   self.budget.runtime,
                                                   meter=self.evaluator.meter)
            values["latency_ms"] = measured["latency_ms"]
        return values, info, files

    def _float_graph(self, trial: optuna.trial.FrozenTrial, folder: Path) -> Path:
        """The trial's float model as an ONNX file: the graph its LiteRT file came from."""
        from edgeslim.ship.exporter import rebuild_model

        model = rebuild_model(self.study, trial, self.download(trial, ARTIFACT_STATE, folder))
        return write_onnx(model, torch.zeros(1, *self.data.input_shape), folder / "float.onnx")

    def _made_again(self, trial: optuna.trial.FrozenTrial, candidate: Candidate, folder: Path,
                    ) -> tuple[dict[str, float], dict[str, Any], dict[str, Path]]:
        """Every measure of the file this budget's runtime deploys, made again from the
        trial's float weights."""
        from edgeslim.ship.exporter import rebuild_model

        state = self.download(trial, ARTIFACT_STATE, folder)
        model = rebuild_model(self.study, trial, state)
        runnable, deployable, onnx = self.evaluator.deploy(model, candidate, folder)
        built = Built(model, runnable, deployable, {"quantize": candidate.quantize}, onnx=onnx)
        with torch.no_grad():
            values, info = self.evaluator.measure(built, with_accuracy=True)
        files = {"runnable": runnable, "deployable": deployable, "state": state,
                 **({"onnx": onnx} if onnx is not None else {})}
        return values, info, files
