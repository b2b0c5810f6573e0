"""Exporting a trial: the deployable files and a model card that proves they fit the budget.

Nothing is retrained: the trial's fine-tuned ONNX file and weights come from the study's
artifact store. The pruned structure is rebuilt from the model specification and the trial's
candidate, the weights are loaded into it, and every measure is taken again on the files
written (not copied from the trial).
"""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from torch import nn

from edgeslim import __version__
from edgeslim.budget import Runtime
from edgeslim.compress import apply_pruning
from edgeslim.data import DataBundle, load_dataset
from edgeslim.errors import StudyError
from edgeslim.evaluators import (
    ARTIFACT_ONNX,
    ARTIFACT_STATE,
    MODEL_MEASURES,
    UNITS,
    measure_onnx_file,
    onnx_accuracy,
)
from edgeslim.evaluators.latency import available_cores
from edgeslim.export import (
    INPUT_NAME,
    ONNX_ATOL,
    OUTPUT_NAME,
    ort_session,
    write_torch_program,
)
from edgeslim.fsutil import atomic_write, atomic_write_json
from edgeslim.models import build_model
from edgeslim.search.objective import ACCURACY, is_feasible
from edgeslim.spaces import Candidate

CARD = "model_card.json"
ONNX_FILE = "model.onnx"
# How many validation images the ONNX-against-PyTorch check runs on.
CHECK_IMAGES = 64


def choose_trial(study: optuna.Study, number: int | None = None) -> optuna.trial.FrozenTrial:
    """``number``, or the best feasible fine-tuned trial: highest validation accuracy, ties to
    the lower latency."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        found = [t for t in trials if t.number == number]
        if not found:
            raise StudyError(f"study {study.study_name!r} has no trial {number} "
                             f"(trials 0 to {len(trials) - 1})")
        trial = found[0]
        if trial.state != optuna.trial.TrialState.COMPLETE:
            reason = trial.user_attrs.get("fail_reason", "")
            raise StudyError(f"trial {number} of {study.study_name!r} is {trial.state.name}"
                             + (f" ({reason})" if reason else "") + "; pick a complete trial")
        if f"artifact:{ARTIFACT_ONNX}" not in trial.user_attrs:
            raise StudyError(f"trial {number} was not fine-tuned (it broke "
                             f"{trial.user_attrs.get('infeasible_reason', 'a limit')}), so it "
                             "has no model to export; pick a fine-tuned trial")
        return trial
    feasible = [t for t in trials if is_feasible(t) and f"artifact:{ARTIFACT_ONNX}" in t.user_attrs]
    if not feasible:
        raise StudyError(f"study {study.study_name!r} has no feasible trial yet "
                         f"({len(trials)} trials); run more trials, loosen the budget, or pick "
                         "one with --trial N")
    return min(feasible, key=lambda t: (-t.user_attrs[ACCURACY],
                                        t.user_attrs.get("latency_ms", 0.0), t.number))


def rebuild_model(study: optuna.Study, trial: optuna.trial.FrozenTrial, state_path: Path,
                  ) -> nn.Module:
    """The trial's fine-tuned model as an ``nn.Module``: the base architecture, pruned to the
    trial's channel counts, with the trial's weights loaded strictly."""
    setup, data = study.user_attrs["setup"], study.user_attrs["data"]
    shape = tuple(data["input_shape"])
    model = build_model(setup["model"], shape[0], len(data["class_names"]))
    candidate = Candidate.from_dict(trial.user_attrs["candidate"])
    kept = apply_pruning(model, torch.zeros(1, *shape), candidate.ratios, candidate.importance,
                         candidate.round_to)
    recorded = {k.removeprefix("channels/"): v for k, v in trial.user_attrs.items()
                if k.startswith("channels/")}
    if recorded and kept != recorded:
        raise StudyError(f"trial {trial.number}: the rebuilt model keeps {kept} channels but the "
                         f"trial recorded {recorded}; was the model code changed?")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_trial(study: optuna.Study, out: Path, number: int | None = None,
                 data_dir: Path | None = None) -> dict[str, Any]:
    """Writes ``model.onnx``, ``model.pt2`` (see ``write_torch_program``) and
    ``model_card.json`` into ``out``; returns the
    card. Files are written atomically, so an interrupted export leaves no partial file."""
    trial = choose_trial(study, number)
    attrs = study.user_attrs
    store = FileSystemArtifactStore(attrs["paths"]["artifacts"])
    setup = attrs["setup"]
    data = load_dataset(setup["dataset"], Path(data_dir or attrs["paths"]["data_dir"]),
                        Path(attrs["paths"]["workdir"]) / "cache" / "data",
                        setup["seed"])
    if data.fingerprint != setup["data_fingerprint"]:
        raise StudyError(f"the dataset {setup['dataset']!r} found now differs from the one the "
                         "study searched on (its fingerprint changed); point --data-dir at the "
                         "original files")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=out) as tmp:
        tmp_onnx, tmp_state = Path(tmp) / ARTIFACT_ONNX, Path(tmp) / ARTIFACT_STATE
        for name, path in ((ARTIFACT_ONNX, tmp_onnx), (ARTIFACT_STATE, tmp_state)):
            artifact_id = trial.user_attrs.get(f"artifact:{name}")
            try:
                download_artifact(artifact_store=store, artifact_id=artifact_id,
                                  file_path=str(path))
            except Exception as exc:
                raise StudyError(f"trial {trial.number}: artifact {name} ({artifact_id}) cannot "
                                 f"be read from {attrs['paths']['artifacts']}: {exc}") from None
        model = rebuild_model(study, trial, tmp_state)
        onnx_path = atomic_write(out / ONNX_FILE, lambda t: shutil.copyfile(tmp_onnx, t))
    example = torch.zeros(1, *data.input_shape)
    torch_path, torch_format = write_torch_program(model, example, out)
    card = build_card(study, trial, model, onnx_path, torch_path, torch_format, data)
    atomic_write_json(card, out / CARD)
    return card


def check_onnx_against_torch(model: nn.Module, onnx_path: Path, data: DataBundle) -> dict:
    """Runs the first ``CHECK_IMAGES`` validation images through both and compares logits."""
    x = data.normalize(data.val.x[:CHECK_IMAGES])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = ort_session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    diff = float(np.max(np.abs(expected - got)))
    return {"max_abs_diff": diff, "tolerance": ONNX_ATOL, "images": int(x.shape[0]),
            "argmax_agree": float((expected.argmax(1) == got.argmax(1)).mean()),
            "pass": diff <= ONNX_ATOL}


def build_card(study: optuna.Study, trial: optuna.trial.FrozenTrial, model: nn.Module,
               onnx_path: Path, torch_path: Path, torch_format: str, data: DataBundle,
               ) -> dict[str, Any]:
    attrs = study.user_attrs
    runtime = Runtime(**attrs["budget"]["runtime"])
    example = torch.zeros(1, *data.input_shape)
    values = {name: float(m(model, example).value) for name, m in MODEL_MEASURES.items()}
    measured, latency = measure_onnx_file(onnx_path, data, runtime, data.val)
    values.update(measured)
    if data.test is not None:
        values["test_acc"] = onnx_accuracy(onnx_path, data.test, data, threads=available_cores())
    caps = attrs["caps"]
    budget = attrs["budget"]
    limits: dict[str, Any] = {}
    for measure, cap in caps["limits"].items():
        rule = budget["limits"][measure]
        limits[measure] = {
            "limit": cap, "value": values[measure], "pass": values[measure] <= cap,
            "declared": f"{rule['value']:.0%} of base" if rule["relative"] else rule["value"],
        }
    if caps["min_val_acc"] is not None:
        limits["accuracy_drop"] = {
            "limit": caps["min_val_acc"], "value": values[ACCURACY],
            "pass": values[ACCURACY] >= caps["min_val_acc"],
            "declared": f"{budget['accuracy_drop_points']} percentage points below the base "
                        f"({100 * attrs['base'][ACCURACY]:.2f}%)",
        }
    shape = attrs["data"]["input_shape"]
    return {
        "edgeslim_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "study": study.study_name,
        "trial": trial.number,
        "model": attrs["setup"]["model"],
        "dataset": attrs["setup"]["dataset"],
        "files": {"onnx": ONNX_FILE, "pytorch": torch_path.name, "pytorch_format": torch_format},
        "preprocessing": {
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
            "input_shape": [1, *shape], "layout": "NCHW" if len(shape) == 3 else "NCL",
            "dtype": "float32",
            "formula": "x = (pixels / 255 - mean) / std, per channel; pixels are uint8",
            "mean": attrs["data"]["mean"], "std": attrs["data"]["std"],
            "class_names": attrs["data"]["class_names"],
        },
        "compression": {
            "candidate": trial.user_attrs["candidate"],
            "channels": {k.removeprefix("channels/"): v for k, v in trial.user_attrs.items()
                         if k.startswith("channels/")},
            "base_channels": {g["name"]: g["channels"] for g in attrs["space"]["groups"]},
        },
        "measures": {k: {"value": v, "unit": UNITS.get(k, "")} for k, v in values.items()},
        "measured_on": {
            "files": "every measure above was taken on the exported files by this export",
            "runtime": "onnxruntime CPUExecutionProvider, batch 1",
            "latency": latency,
            "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "host_cores": available_cores(),
        },
        "search_measures": {k: trial.user_attrs[k] for k in UNITS if k in trial.user_attrs},
        "base": attrs["base"],
        "budget": budget,
        "limits": limits,
        "fits_budget": all(v["pass"] for v in limits.values()),
        "onnx_vs_pytorch": check_onnx_against_torch(model, onnx_path, data),
    }
