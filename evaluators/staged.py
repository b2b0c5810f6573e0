"""The default evaluator: run a candidate's stages on a copy of the base model, fine-tuning after
each, export the file a user would deploy, and measure that file.

Every measure but params and MACs comes from the deployable artifact: size is its byte length
(the packed file when clustering or sparsity ran, else the ONNX file), and accuracy, latency and
peak memory come from the ONNX model restored from it, run in onnxruntime.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeslim.artifacts import ARTIFACT_ONNX, ARTIFACT_PACKED, ARTIFACT_STATE
from edgeslim.budget import Runtime
from edgeslim.compress import quantize_onnx, tied
from edgeslim.data import DataBundle
from edgeslim.errors import CandidateError
from edgeslim.evaluators._base import STATIC_MEASURES, Caps, Evaluator, Measurement
from edgeslim.evaluators.accuracy import onnx_accuracy
from edgeslim.evaluators.artifact import measure_onnx_file
from edgeslim.evaluators.latency import available_cores
from edgeslim.evaluators.measures import MODEL_MEASURES
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.evaluators.stages import model_stage
from edgeslim.export import one_line, write_onnx
from edgeslim.fsutil import atomic_torch_save
from edgeslim.packing import restore_onnx, write_packed
from edgeslim.spaces import Candidate
from edgeslim.training import TrainRecipe, TrainStats, train


@dataclass(frozen=True)
class Built:
    """A candidate after its stages: the fine-tuned float model and its exported files."""

    model: nn.Module  # float32 PyTorch model after the last fine-tune (before quantization)
    runnable: Path  # the ONNX file onnxruntime runs (restored from ``deployable`` if packed)
    deployable: Path  # what a user ships: ``runnable`` itself, or the packed file
    info: dict[str, Any]
    finetunes: tuple[TrainStats, ...] = ()


def calibration_batches(data: DataBundle, images: int, seed: int, batch: int = 64,
                        ) -> list[np.ndarray]:
    """Normalised float32 batches of ``images`` training images drawn with ``seed``, for
    static quantization's range calibration."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train), generator=gen)[:images]
    x = data.normalize(data.train.x[idx]).numpy()
    return [x[i:i + batch] for i in range(0, len(x), batch)]


@dataclass
class StagedEvaluator(Evaluator):
    """Builds a candidate twice when the budget has limits checkable before training: first
    without fine-tuning, to measure the artifact's structure (params, MACs, size, peak memory,
    latency); a candidate that breaks one of those limits is scored by that artifact's accuracy
    and reported infeasible, with no training spent. Otherwise the stages run again, each
    followed by a fine-tune with ``recipe`` (distilled from the base model when
    ``recipe.distill_alpha`` > 0, with pruned zeros and clustered values kept), and every
    measure is taken on the final artifact.

    Example:
        >>> evaluator = StagedEvaluator(base, data, TrainRecipe(epochs=1), Runtime())
        >>> evaluator.evaluate(candidate, Path("trial-0")).values["val_acc"]  # doctest: +SKIP
    """

    base: nn.Module
    data: DataBundle
    recipe: TrainRecipe
    runtime: Runtime
    caps: Caps = field(default_factory=Caps)
    calibration_images: int = 256
    seed: int = 0
    meter: LatencyMeter | None = None  # where latency comes from; default: timed on this host

    def __post_init__(self) -> None:
        self.base = self.base.cpu().eval().to(memory_format=torch.contiguous_format)
        self.example = torch.zeros(1, *self.data.input_shape)
        self._calibration: list[np.ndarray] | None = None

    def calibration(self) -> list[np.ndarray]:
        if self._calibration is None:
            self._calibration = calibration_batches(self.data, self.calibration_images,
                                                    self.seed)
        return self._calibration

    def build(self, candidate: Candidate, workdir: Path, finetune: bool = True) -> Built:
        """Runs the candidate's stages on a copy of the base model and writes its files into
        ``workdir``."""
        workdir.mkdir(parents=True, exist_ok=True)
        model = copy.deepcopy(self.base)
        info: dict[str, Any] = {"stage_order": candidate.order_name,
                                "quantize": candidate.quantize}
        clustered: set[str] = set()
        masked: set[str] = set()
        teacher = self.base if self.recipe.distill_alpha > 0 else None
        finetunes = []
        for name in candidate.order:
            if name == "quantize":
                continue
            stage = model_stage(name)
            try:
                info.update(stage.apply(model, candidate, self.example, self.seed))
            except CandidateError:
                raise
            except Exception as exc:  # a library's error on this candidate's model
                raise CandidateError(f"{name} failed: {type(exc).__name__}: "
                                     f"{one_line(exc)}") from exc
            clustered |= stage.clustered(model, candidate)
            masked |= stage.masked(model, candidate)
            if finetune:
                with tied(model, clustered, masked):
                    finetunes.append(train(model, self.data, self.recipe, teacher=teacher))
        model = model.cpu().eval()
        # Every step of a build raises CandidateError, naming the step, for what is wrong with
        # this candidate (a stage it cannot take, a diverged fine-tune above; an operator the
        # exporter lacks, a graph the quantizer or onnxruntime refuses below and in
        # ``measure``). Anything else fails the trial too (``Objective``), with its type.
        float_onnx = write_onnx(model, self.example, workdir / "float.onnx")
        calibration = self.calibration() if candidate.quantize == "int8_static" else None
        runnable = quantize_onnx(float_onnx, workdir / ARTIFACT_ONNX, candidate.quantize,
                                 iter(calibration) if calibration else None)
        deployable = runnable
        if candidate.packed:
            # Packing is this package's own code, on a graph onnx and the quantizer have just
            # read and written: nothing in it depends on what the candidate is, so it is not
            # wrapped, and an error there surfaces as the bug it is.
            deployable = write_packed(runnable, workdir / ARTIFACT_PACKED)
            # What is measured is what the packed file restores to, not the file packed.
            restore_onnx(deployable, runnable)
        if masked:
            weights = [m.weight for m in model.modules()
                       if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
            info["weight_sparsity"] = float(sum((w == 0).sum() for w in weights)
                                            / sum(w.numel() for w in weights))
        return Built(model, runnable, deployable, info, tuple(finetunes))

    def measure(self, built: Built, with_accuracy: bool) -> tuple[dict[str, float],
                                                                  dict[str, Any]]:
        """Every measure of a built candidate (see the module docstring)."""
        values: dict[str, float] = {}
        info: dict[str, Any] = {}
        for name, measure in MODEL_MEASURES.items():
            count = measure(built.model, self.example)
            values[name] = float(count.value)
            if count.uncounted_ops:
                info[f"{name}_uncounted_ops"] = dict(count.uncounted_ops)
        measured, latency_info = measure_onnx_file(
            built.runnable, self.data, self.runtime, self.data.val if with_accuracy else None,
            meter=self.meter)
        values.update(measured)
        values["size_bytes"] = float(built.deployable.stat().st_size)
        info.update(latency_info)
        return values, info

    def static_values(self, candidate: Candidate, workdir: Path) -> dict[str, float]:
        """The measures of ``candidate``'s untrained artifact that need no accuracy (params,
        MACs, size, peak memory, latency): what the limits checkable before training see."""
        values, _ = self.measure(self.build(candidate, workdir, finetune=False),
                                 with_accuracy=False)
        return values

    def evaluate(self, candidate: Candidate, workdir: Path, checked: bool = False,
                 ) -> Measurement:
        """``checked``: the caller has already found that ``candidate`` meets every limit
        checkable before training (``edgeslim.search.repair``), so it is not built twice."""
        if not checked and any(m in self.caps.limits for m in STATIC_MEASURES):
            dry = self.build(candidate, workdir / "untrained", finetune=False)
            values, info = self.measure(dry, with_accuracy=False)
            broken = self.caps.violations(values, STATIC_MEASURES)
            if broken:
                # Not worth training: record what the untrained artifact scores as it is.
                values["val_acc"] = onnx_accuracy(dry.runnable, self.data.val, self.data,
                                                  threads=available_cores())
                return Measurement(values, {**dry.info, **info}, infeasible=tuple(broken))
        built = self.build(candidate, workdir / "final", finetune=True)
        start = time.perf_counter()
        values, info = self.measure(built, with_accuracy=True)
        seconds = sum(s.seconds for s in built.finetunes)
        images = sum(s.images for s in built.finetunes)
        info.update(built.info, measure_seconds=round(time.perf_counter() - start, 3),
                    finetune_steps=sum(s.steps for s in built.finetunes),
                    finetune_seconds=round(seconds, 3),
                    finetune_images_per_s=round(images / seconds, 1) if seconds else 0.0)
        state = atomic_torch_save(built.model.state_dict(), workdir / ARTIFACT_STATE)
        return Measurement(values, info, artifacts={built.deployable.name: built.deployable,
                                                    ARTIFACT_STATE: state})
