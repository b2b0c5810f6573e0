"""Exporting a trial: the deployable files and a model card that proves they fit the budget.

Nothing is retrained: the trial's deployable artifact (the ONNX file, or the packed file when
clustering or sparsity ran) and its fine-tuned float weights come from the study's artifact
store. The pruned structure is rebuilt from the model specification and the trial's candidate,
the weights are loaded into it for the PyTorch program, and every measure is taken again on the
files written (not copied from the trial).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from edgeslim.artifacts import ARTIFACT_ONNX, ARTIFACT_PACKED, ARTIFACT_STATE, ARTIFACT_TFLITE
from edgeslim.budget import Budget
from edgeslim.compress import apply_pruning
from edgeslim.compress.importance import UNRANKED
from edgeslim.data import DataBundle
from edgeslim.errors import ConfigError, StudyError
from edgeslim.export import write_onnx, write_torch_program
from edgeslim.fsutil import atomic_write, atomic_write_json
from edgeslim.models import build_model
from edgeslim.packing import restore_onnx
from edgeslim.runtimes import runtime_info
from edgeslim.search.picking import choose_trial, deployable_artifact
from edgeslim.search.records import ACCURACY, LATENCY, StudyRecord, TrialRecord
from edgeslim.search.retarget import (
    Retarget,
    Verdict,
    download_trial_artifact,
    judged_trials,
    load_study_data,
    rank,
)
from edgeslim.ship.card import CARD_JSON, CARD_MARKDOWN, build_card, card_markdown
from edgeslim.spaces import Candidate

__all__ = ["FORMATS", "choose_fitting", "choose_trial", "deployable_artifact", "export_trial",
           "parse_formats", "rebuild_model"]

FORMATS = ("onnx", "pytorch", "json", "md")


def rebuild_model(study: optuna.Study, trial: optuna.trial.FrozenTrial, state_path: Path,
                  ) -> nn.Module:
    """The trial's fine-tuned float model as an ``nn.Module``: the base architecture, pruned
    to the trial's channel counts, with the trial's weights loaded strictly."""
    study_record, record = StudyRecord.of(study), TrialRecord.of(trial)
    data = study_record.data
    shape = tuple(data["input_shape"])
    model = build_model(study_record.setup["model"], shape[0], len(data["class_names"]))
    candidate = Candidate.from_dict(record.candidate)
    kept: dict[str, int] = {}
    if "prune" in candidate.order:
        # Only the channel counts matter here (the weights are loaded next), so the channels
        # are not ranked: a criterion that reads gradients would need training images.
        kept = apply_pruning(model, torch.zeros(1, *shape), candidate.ratios, UNRANKED,
                             candidate.round_to)
    recorded = record.channels
    if recorded and kept != recorded:
        raise StudyError(f"trial {trial.number}: the rebuilt model keeps {kept} channels but the "
                         f"trial recorded {recorded}; was the model code changed?")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format: must be among {', '.join(FORMATS)}, got {text!r}")
    return formats


def export_trial(study: optuna.Study, out: Path, number: int | None = None,
                 data_dir: Path | None = None, formats: tuple[str, ...] = FORMATS,
                 budget: Budget | None = None,
                 on_judged: Callable[[Verdict], None] | None = None) -> dict[str, Any]:
    """Writes the trial's files into ``out`` and returns its card:

    ``onnx``     ``model.onnx`` (float32, int8 or fp16 weights, as searched) and, when
                 clustering or sparsity ran, the packed ``model.eslim`` it is restored from;
                 with a LiteRT runtime, ``model.tflite`` (as searched) and the float
                 ``model.onnx`` it was converted from
    ``pytorch``  the float model as a ``torch.export`` program (``model.pt2``) or TorchScript
    ``json``     ``model_card.json``
    ``md``       ``model_card.md``, a short summary of the card

    With ``budget`` (another device's budget), the trial is ``number`` or the best of the
    study's trials that fit that budget (``edgeslim.search.retarget``; ``on_judged`` sees each
    trial judged), its files are those that budget's runtime deploys (made again from the
    trial's float weights in another runtime), and the card is judged against it.

    The measures are taken on the deployable files whatever ``formats`` asks to keep. Files are
    written atomically, so an interrupted export leaves no partial file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=out) as tmp:
        tmp = Path(tmp)
        target, made = None, {}
        if budget is None:
            trial = choose_trial(study, number)
            data = load_study_data(study, data_dir)
            runtime = StudyRecord.of(study).runtime_name
        else:
            retarget = Retarget.open(study, budget, tmp / "judged", data_dir)
            trial, verdict = choose_fitting(retarget, number, on_judged)
            data, target, runtime = retarget.data, retarget.target, budget.runtime.name
            made = {} if retarget.same_files else verdict.files
        litert = runtime_info(runtime).litert
        deployable, state = _gather(study, trial, made, litert, tmp)
        model = rebuild_model(study, trial, state)
        if deployable == ARTIFACT_PACKED:
            restore_onnx(tmp / ARTIFACT_PACKED, tmp / ARTIFACT_ONNX)
        elif litert:  # the float ONNX file the LiteRT file was converted from
            write_onnx(model, torch.zeros(1, *data.input_shape), tmp / ARTIFACT_ONNX)
        files = {"onnx": ARTIFACT_ONNX, **({"tflite": ARTIFACT_TFLITE} if litert else {}),
                 **({"packed": ARTIFACT_PACKED} if deployable == ARTIFACT_PACKED else {})}
        where = out if "onnx" in formats else tmp
        for name in files.values():
            atomic_write(where / name, lambda t, name=name: shutil.copyfile(tmp / name, t))
        card = build_card(study, trial, model, where / ARTIFACT_ONNX, where / deployable, data,
                          tflite=where / ARTIFACT_TFLITE if litert else None, target=target)
        _name_files(card, formats, model, data, out)
    if "json" in formats:
        atomic_write_json(card, out / CARD_JSON)
    if "md" in formats:
        text = card_markdown(card)
        atomic_write(out / CARD_MARKDOWN, lambda t: t.write_text(text))
    return card


def _name_files(card: dict[str, Any], formats: tuple[str, ...], model: nn.Module,
                data: DataBundle, out: Path) -> None:
    """Writes the PyTorch program when ``formats`` asks for it, and names in the card the
    files that ``formats`` keeps."""
    if "pytorch" in formats:
        example = torch.zeros(1, *data.input_shape)
        torch_path, torch_format = write_torch_program(model, example, out)
        card["files"].update(pytorch=torch_path.name, pytorch_format=torch_format)
    if "onnx" not in formats:
        card["files"] = {k: v for k, v in card["files"].items()
                         if k not in ("onnx", "packed", "deployable", "tflite")}


def _gather(study: optuna.Study, trial: optuna.trial.FrozenTrial, made: dict[str, Path],
            litert: bool, tmp: Path) -> tuple[str, Path]:
    """The trial's deployable file (and LiteRT file) in ``tmp``: ``made`` again for another
    budget's runtime from the weights judged, or the stored ones. Returns the deployable
    file's name and the path of the float weights."""
    if made:
        for name in ("runnable", "deployable"):
            shutil.copyfile(made[name], tmp / made[name].name)
        return made["deployable"].name, made["state"]
    deployable = deployable_artifact(trial)
    for name in dict.fromkeys((deployable, *((ARTIFACT_TFLITE,) if litert else ()))):
        download_trial_artifact(study, trial, name, tmp)
    return deployable, download_trial_artifact(study, trial, ARTIFACT_STATE, tmp)


def choose_fitting(retarget: Retarget, number: int | None = None,
                   on_judged: Callable[[Verdict], None] | None = None,
                   ) -> tuple[optuna.trial.FrozenTrial, Verdict]:
    """``number`` judged against the retarget's budget, or the best trial that fits it, by the
    rule of ``choose_trial``: the finalists first when one fits, then the highest validation
    accuracy, ties to the lower latency. In the same runtime the trials' accuracies do not
    change, so judging stops once no trial left can rank higher."""
    study = retarget.study
    if number is not None:
        verdict = retarget.judge(choose_trial(study, number))
        if on_judged is not None:
            on_judged(verdict)
        if verdict.reason is not None:
            raise StudyError(f"trial {number} cannot be judged against "
                             f"{retarget.budget.source}: {verdict.reason}")
        return verdict.trial, verdict
    fits: list[Verdict] = []
    judged = []
    for trial in judged_trials(study):
        if retarget.same_files and fits and rank(trial)[:2] > rank(fits[0].trial)[:2]:
            break
        verdict = retarget.judge(trial)
        if on_judged is not None:
            on_judged(verdict)
        judged.append(verdict)
        if verdict.fits:
            fits.append(verdict)
    if not fits:
        raise StudyError(f"no trial of {study.study_name!r} fits {retarget.budget.source} "
                         f"({len(judged)} judged: {_why_not(judged)}); run a search for it, "
                         "warm-started from this one with --resume-from")
    finalists = [v for v in fits if TrialRecord.of(v.trial).finalist_of is not None]
    best = min(finalists or fits, key=lambda v: (-v.values[ACCURACY],
                                                 v.values.get(LATENCY, 0.0),
                                                 v.trial.number))
    return best.trial, best


def _why_not(judged: list[Verdict]) -> str:
    """What kept the judged trials out, most frequent first."""
    counts: dict[str, int] = {}
    for v in judged:
        for why in ([v.reason] if v.reason else v.broken):
            counts[why] = counts.get(why, 0) + 1
    return ", ".join(f"{why} ({n})" for why, n in sorted(counts.items(), key=lambda i: -i[1]))
