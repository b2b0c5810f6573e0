"""The model card: what was exported, how to feed it, every measure taken on the files written,
and pass or fail against each budget limit."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from edgeslim import __version__
from edgeslim.budget import LatencySource, Runtime
from edgeslim.data import DataBundle
from edgeslim.errors import CandidateError, StudyError
from edgeslim.evaluators import MODEL_MEASURES, UNITS, Caps, measure_onnx_file, onnx_accuracy
from edgeslim.evaluators.latency import available_cores
from edgeslim.evaluators.meters import LatencyMeter, make_meter
from edgeslim.export import INPUT_NAME, OUTPUT_NAME
from edgeslim.search.records import ACCURACY, StudyRecord, TrialRecord
from edgeslim.ship._card_checks import (
    CHECK_IMAGES,
    RUNTIME_TEXT,
    check_litert_against_torch,
    check_onnx_against_torch,
    litert_measures,
    with_base_test_accuracy,
)
from edgeslim.spaces import Candidate
from edgeslim.stages import STAGES

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"


def _compression(trial: optuna.trial.FrozenTrial, space: dict[str, Any]) -> dict[str, Any]:
    record = TrialRecord.of(trial)
    candidate = Candidate.from_dict(record.candidate)
    out: dict[str, Any] = {"stage_order": list(candidate.order), "candidate": record.candidate}
    for name, stage in STAGES.items():
        out.update(stage.card(record, candidate, space, runs=name in candidate.order))
    if space.get("untraced") or space.get("left_out"):
        # What no trial of this study could prune (``PruningSpace.untraced``, ``left_out``).
        out["not_pruned"] = {"untraced": space.get("untraced", []),
                             "left_out": space.get("left_out", {})}
    return out


@dataclass(frozen=True)
class Target:
    """The budget a card is judged against (``Budget.to_dict``), its caps resolved against
    the base model's measures, and those measures. By default the study's own."""

    budget: dict[str, Any]
    caps: dict[str, Any]
    base: dict[str, float]

    @classmethod
    def of_study(cls, study: optuna.Study) -> Target:
        record = StudyRecord.of(study)
        return cls(record.budget, record.caps, record.base)


def _measures(model: nn.Module, onnx_path: Path, deployable: Path, data: DataBundle,
              runtime: Runtime, meter: LatencyMeter, tflite: Path | None, quantize: str,
              ) -> tuple[dict[str, float], dict[str, Any]]:
    """Every measure of the exported files, and how latency was taken."""
    example = torch.zeros(1, *data.input_shape)
    values = {name: float(m(model, example).value) for name, m in MODEL_MEASURES.items()}
    if tflite is not None:
        measured, latency = litert_measures(tflite, onnx_path, data, runtime, meter, quantize)
    else:
        try:
            measured, latency = measure_onnx_file(onnx_path, data, runtime, data.val,
                                                  meter=meter)
        except CandidateError as exc:
            raise StudyError(f"cannot measure the exported file's latency: {exc}") from None
        if data.test is not None:
            measured["test_acc"] = onnx_accuracy(onnx_path, data.test, data,
                                                 threads=available_cores())
    values.update(measured)
    values["size_bytes"] = float(Path(deployable).stat().st_size)
    return values, latency


def _limits(target: Target, values: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Pass or fail per limit of the target budget, with the limit as the budget declares it."""
    budget = target.budget
    limits = Caps(**target.caps).verdicts(values)
    for measure, verdict in limits.items():
        if measure == "accuracy_drop":
            verdict["declared"] = (f"{budget['accuracy_drop_points']} percentage points below "
                                   f"the base ({100 * target.base[ACCURACY]:.2f}%)")
        else:
            rule = budget["limits"][measure]
            verdict["declared"] = f"{rule['value']:.0%} of base" if rule["relative"] \
                else rule["value"]
    return limits


def _files(onnx_path: Path, deployable: Path, tflite: Path | None) -> dict[str, str]:
    files = {"deployable": Path(deployable).name, "onnx": Path(onnx_path).name}
    if tflite is not None:
        files["tflite"] = Path(tflite).name
    if Path(deployable) not in (Path(onnx_path), Path(tflite or onnx_path)):
        files["packed"] = Path(deployable).name
        files["restore"] = (f"python -m edgeslim.packing {files['packed']} {files['onnx']} "
                            "(needs numpy and onnx only)")
    return files


def _preprocessing(data: dict[str, Any], litert: bool) -> dict[str, Any]:
    """What a user does to an image before the file runs it."""
    shape = data["input_shape"]
    return {
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_shape": [1, *shape], "layout": "NCHW" if len(shape) == 3 else "NCL",
        "dtype": "float32",
        "formula": "x = (pixels / 255 - mean) / std, per channel; pixels are uint8",
        "mean": data["mean"], "std": data["std"], "class_names": data["class_names"],
        # The LiteRT file takes the same values channels last, one image at a time.
        **({"tflite_input_shape": [1, *shape[1:], shape[0]]} if litert else {}),
    }


def _measured_on(files: dict[str, str], runtime: Runtime, latency: dict[str, Any],
                 source: LatencySource) -> dict[str, Any]:
    """Where and how each measure of the card was taken."""
    return {
        "files": "every measure above was taken on the exported files by this export",
        "size_bytes": f"byte length of {files['deployable']}",
        "params_macs": "counted on the float PyTorch model with the exported structure",
        "runtime": RUNTIME_TEXT.get(runtime.name,
                                    "onnxruntime CPUExecutionProvider, batch 1"),
        "latency": latency,
        "latency_source": {"host": "timed on the measuring host",
                           "profile": f"predicted from the device profile {source.profile}",
                           "ssh": f"timed on {source.host} over ssh"}[source.source],
        "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "host_cores": available_cores(),
    }


def build_card(study: optuna.Study, trial: optuna.trial.FrozenTrial, model: nn.Module,
               onnx_path: Path, deployable: Path, data: DataBundle,
               tflite: Path | None = None, target: Target | None = None) -> dict[str, Any]:
    """The card of ``trial``, measuring ``onnx_path`` (what onnxruntime runs) and
    ``deployable`` (what a user ships: the same file, or the packed file it is restored from).
    With a LiteRT runtime, ``tflite`` is the file measured, in that runtime, and
    ``onnx_path`` the float ONNX file it was converted from. ``target``: the budget the
    trial was chosen for, when it is not the one the study searched for."""
    record = StudyRecord.of(study)
    trial_record = TrialRecord.of(trial)
    target = target or Target.of_study(study)
    runtime = Runtime(**target.budget["runtime"])
    source = LatencySource(**target.budget.get("latency", {}))
    meter = make_meter(source, runtime, Path(record.path("workdir")) / "cache")
    quantize = Candidate.from_dict(trial_record.candidate).quantize
    values, latency = _measures(model, onnx_path, deployable, data, runtime, meter, tflite,
                                quantize)
    budget = target.budget
    base = with_base_test_accuracy(record, target.base, data, runtime)
    limits = _limits(target, values)
    compression = _compression(trial, record.space)
    files = _files(onnx_path, deployable, tflite)
    return {
        "edgeslim_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "study": study.study_name,
        "trial": trial.number,
        "model": record.setup["model"],
        "dataset": record.setup["dataset"],
        "files": files,
        "preprocessing": _preprocessing(record.data, tflite is not None),
        "compression": compression,
        "measures": {k: {"value": v, "unit": UNITS.get(k, "")} for k, v in values.items()},
        "measured_on": _measured_on(files, runtime, latency, source),
        "search_measures": {k: trial_record.measures[k] for k in UNITS
                            if k in trial_record.measures},
        "base": base,
        "budget": budget,
        # The budget the trial was chosen for, and the one the study searched for.
        "chosen_for": budget["name"],
        "searched_for": record.budget_name,
        "limits": limits,
        "fits_budget": all(v["pass"] for v in limits.values()),
        "onnx_vs_pytorch": check_onnx_against_torch(
            model, onnx_path, data, exact=compression["quantize"] == "none" or tflite is not None),
        **({"litert_vs_pytorch": check_litert_against_torch(
            model, tflite, runtime.name, data, CHECK_IMAGES,
            exact=compression["quantize"] == "none")} if tflite is not None else {}),
    }


def _fmt(measure: str, value: float) -> str:
    if measure in ("val_acc", "test_acc"):
        return f"{100 * value:.2f}%"
    if measure == "latency_ms":
        return f"{value:.3f} ms"
    if measure.endswith("_bytes"):
        return f"{value / 1e3:,.1f} kB"
    return f"{value:,.0f}"


def _latency_notes(latency: dict[str, Any]) -> str:
    notes = []
    if latency.get("latency_threads_capped"):
        notes.append(f"{latency['latency_threads']} threads, capped at this host's cores")
    if latency.get("latency_unstable"):
        notes.append(f"UNSTABLE: the middle 80% of runs spread over "
                     f"{100 * latency['latency_spread']:.0f}% of the median")
    return f" ({'; '.join(notes)})" if notes else ""


def card_markdown(card: dict[str, Any]) -> str:
    """A short human-readable summary of a card."""
    m, base = card["measures"], card["base"]
    lines = [
        f"# {card['model']} on {card['dataset']}: trial {card['trial']} of {card['study']}",
        "",
        f"Fits the budget `{card['budget']['name']}` ({card['budget']['device']['name']}): "
        f"**{'yes' if card['fits_budget'] else 'NO'}**. Stages: "
        f"{' > '.join(card['compression']['stage_order'])}"
        + (f" ({card['compression']['quantize']})"
           if card["compression"]["quantize"] != "none" else "") + "."
        + (f" Chosen for `{card['chosen_for']}` from a study searched for "
           f"`{card['searched_for']}`, without training it again."
           if card.get("searched_for", card["budget"]["name"]) != card["budget"]["name"]
           else ""),
        "",
        "| measure | exported | base | limit | pass |",
        "|---|---|---|---|---|",
    ]
    limits = card["limits"]
    for key in ("val_acc", "test_acc", "params", "macs", "size_bytes", "peak_memory_bytes",
                "activation_bytes", "latency_ms"):
        if key not in m:
            continue
        lim = limits.get("accuracy_drop" if key == "val_acc" else key)
        lines.append(
            f"| {key} | {_fmt(key, m[key]['value'])} | "
            f"{_fmt(key, base[key]) if key in base else '-'} | "
            f"{_fmt(key, lim['limit']) if lim else '-'} | "
            f"{('yes' if lim['pass'] else 'NO') if lim else '-'} |")
    pre = card["preprocessing"]
    # File names only, each once (the deployable file may be the ONNX file itself).
    names = [v for k, v in card["files"].items() if k not in ("restore", "pytorch_format")]
    lines += [
        "",
        f"Files: {', '.join(f'`{v}`' for v in dict.fromkeys(names))}."
        + (f" Restore the ONNX file with `{card['files']['restore']}`."
           if "restore" in card["files"] else ""),
        "",
        f"Input `{pre['input_name']}`: float32 {pre['layout']} {pre['input_shape']}, "
        f"{pre['formula']}, mean {pre['mean']}, std {pre['std']}. Output `{pre['output_name']}`: "
        f"one score per class ({', '.join(pre['class_names'])})."
        + (f" The LiteRT file takes them channels last: {pre['tflite_input_shape']}."
           if "tflite_input_shape" in pre else ""),
        "",
        f"Measured on {card['measured_on']['host']} ({card['measured_on']['runtime']}); "
        f"size is the byte length of `{card['files'].get('deployable', 'the artifact')}`. "
        f"Latency: {card['measured_on']['latency_source']}"
        + _latency_notes(card["measured_on"]["latency"]) + ".",
    ]
    if "sparsity_note" in card["compression"]:
        lines += ["", f"Note: {card['compression']['sparsity_note']}."]
    lines += _not_pruned_lines(card["compression"].get("not_pruned"))
    return "\n".join(lines) + "\n"


def _not_pruned_lines(not_pruned: dict[str, Any] | None) -> list[str]:
    if not not_pruned:
        return []
    lines = [""]
    if not_pruned["untraced"]:
        names = [n or "the whole model" for n in not_pruned["untraced"]]
        lines.append(f"Not pruned: torch-pruning cannot analyse {', '.join(names)}; every "
                     "layer inside keeps its channels (clustering and quantization still ran).")
    if not_pruned["left_out"]:
        lines.append("Groups left out of the search: " + "; ".join(
            f"{name} ({why})" for name, why in not_pruned["left_out"].items()) + ".")
    return lines
