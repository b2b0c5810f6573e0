"""The default evaluator: run a candidate's stages on a copy of the base model, fine-tuning after
each, export the file a user would deploy, and measure that file.

Every measure but params and MACs comes from the deployable artifact: size is its byte length
(the packed file when clustering or sparsity ran, else the ONNX file), and accuracy, latency and
peak memory come from the ONNX model restored from it, run in onnxruntime. With a LiteRT
runtime (``litert``, ``litert-micro``) the artifact is a ``.tflite`` file converted from the
float ONNX file (restored from its packed file when one is kept, which then gives the size),
quantized by LiteRT's converter and measured in that runtime
(``edgeslim.evaluators.litert``).
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

from edgeslim.artifacts import ARTIFACT_ONNX, ARTIFACT_PACKED, ARTIFACT_STATE, ARTIFACT_TFLITE
from edgeslim.budget import Runtime
from edgeslim.compress import prunable_copy, quantize_onnx, tied
from edgeslim.data import DataBundle, Split
from edgeslim.errors import CandidateError
from edgeslim.evaluators._base import Caps, Evaluator, Measurement
from edgeslim.evaluators.artifact import measure_onnx_file
from edgeslim.evaluators.litert import measure_litert_file
from edgeslim.evaluators.measures import MODEL_MEASURES
from edgeslim.evaluators.meters import LatencyMeter
from edgeslim.evaluators.recovery import BaseGradients, Recovery, recover
from edgeslim.export import one_line, write_onnx
from edgeslim.fsutil import atomic_torch_save
from edgeslim.litert import onnx_to_tflite
from edgeslim.packing import restore_onnx, write_packed
from edgeslim.runtimes import runtime_info
from edgeslim.spaces import Candidate
from edgeslim.stages import StageContext
from edgeslim.stages import stage as stage_named
from edgeslim.training import TrainRecipe, TrainStats, train


@dataclass(frozen=True)
class Built:
    """A candidate after its stages: the fine-tuned float model and its exported files."""

    model: nn.Module  # float32 PyTorch model after the last fine-tune (before quantization)
    runnable: Path  # the file the runtime runs (ONNX restored from ``deployable`` if packed)
    deployable: Path  # what a user ships: ``runnable`` itself, or the packed file
    info: dict[str, Any]
    finetunes: tuple[TrainStats, ...] = ()
    onnx: Path | None = None  # the float ONNX file a LiteRT ``runnable`` was converted from


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
    """Builds a candidate once: its stages run on a copy of the base model, each followed by
    a fine-tune with ``recipe`` (distilled from the base model when ``recipe.distill_alpha``
    > 0, with pruned zeros and clustered values kept), and every measure is taken on the final
    artifact (latency only when ``timed``).

    The limits checkable before training are checked by the search's one static check
    (``edgeslim.search.repair.StaticCheck``), on what ``static_values`` measures: the
    candidate's structure as the file it deploys to, built without k-means or fine-tunes.

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
    # Whether each candidate's latency is timed: the budget limits it or trades it off
    # (``Budget.asks_for``). Otherwise it is timed once, for the card, at export.
    timed: bool = True
    recovery: Recovery = field(default_factory=Recovery)  # between each stage and its fine-tune
    # The base model's loss gradients, shared with the run's other evaluators and screening.
    gradients: BaseGradients | None = None

    def __post_init__(self) -> None:
        self.base = self.base.cpu().eval().to(memory_format=torch.contiguous_format)
        self.example = torch.zeros(1, *self.data.input_shape)
        self._calibration: list[np.ndarray] | None = None
        if self.gradients is None:
            self.gradients = BaseGradients(self.base, self.data, self.seed,
                                           self.recipe.batch_size)

    def calibration(self) -> list[np.ndarray]:
        if self._calibration is None:
            self._calibration = calibration_batches(self.data, self.calibration_images,
                                                    self.seed)
        return self._calibration

    def build(self, candidate: Candidate, workdir: Path, finetune: bool = True) -> Built:
        """Runs the candidate's stages on a copy of the base model and writes its files into
        ``workdir``. ``finetune`` False builds the candidate's structure alone, for the limits
        checked before training: each stage's ``apply_structure`` (clustering without
        k-means), no fine-tune, and int8 static calibrated on one batch (the file's size,
        memory and latency do not depend on the ranges)."""
        workdir.mkdir(parents=True, exist_ok=True)
        model = prunable_copy(self.base, self.example)  # its graph traced once per study
        info: dict[str, Any] = {"stage_order": candidate.order_name,
                                "quantize": candidate.quantize}
        clustered: set[str] = set()
        masked: set[str] = set()
        teacher = self.base if self.recipe.distill_alpha > 0 else None
        finetunes = []
        for index, name in enumerate(candidate.order):
            stage = stage_named(name)
            if not stage.trained:  # it runs on the exported file, in ``deploy``
                continue
            # The first stage receives the base model itself: its loss gradients are the
            # base's, computed once per evaluator.
            context = StageContext(self.seed, batches=self.gradients.batches,
                                   gradients=self.gradients if index == 0 else None)
            before = copy.deepcopy(model) if finetune and self.recovery.reconstruct else None
            start = time.perf_counter()
            try:
                if finetune:
                    info.update(stage.apply(model, candidate, self.example, self.seed, context))
                else:
                    info.update(stage.apply_structure(model, candidate, self.example,
                                                      self.seed))
            except CandidateError:
                raise
            except Exception as exc:  # a library's error on this candidate's model
                raise CandidateError(f"{name} failed: {type(exc).__name__}: "
                                     f"{one_line(exc)}") from exc
            info[f"{name}_seconds"] = round(time.perf_counter() - start, 3)
            clustered |= stage.clustered(model, candidate)
            masked |= stage.masked(model, candidate)
            if finetune:
                # Layers already clustered or sparsified keep their values: not refitted.
                kept = {k: v for k, v in context.kept.items() if k not in clustered | masked}
                info.update(recover(model, before, kept, self.recovery, self.data, self.seed))
                with tied(model, clustered, masked):
                    finetunes.append(train(model, self.data, self.recipe, teacher=teacher))
        model = model.cpu().eval()
        # Every step of a build raises CandidateError, naming the step, for what is wrong with
        # this candidate (a stage it cannot take, a diverged fine-tune above; an operator the
        # exporter lacks, a graph the quantizer or onnxruntime refuses in ``deploy`` and
        # ``measure``). Anything else fails the trial too (``Objective``), with its type.
        runnable, deployable, float_onnx = self.deploy(model, candidate, workdir, finetune)
        return Built(model, runnable, deployable, self._sparsity(model, masked, info),
                     tuple(finetunes), onnx=float_onnx)

    def deploy(self, model: nn.Module, candidate: Candidate, workdir: Path,
               finetune: bool = True) -> tuple[Path, Path, Path | None]:
        """Writes the files ``model`` (a candidate's float model after its stages) deploys to
        in the evaluator's runtime: ``(runnable, deployable, float_onnx)``, where
        ``float_onnx`` is the float ONNX file a LiteRT ``runnable`` was converted from (None
        for onnxruntime). The candidate's quantization runs here, calibrated on
        ``calibration_images`` training images (one batch for a structure, ``finetune``
        False)."""
        float_onnx = write_onnx(model, self.example, workdir / "float.onnx")
        calibration = self.calibration() if candidate.quantize == "int8_static" else None
        if calibration and not finetune:
            calibration = calibration[:1]
        if runtime_info(self.runtime.name).litert:
            runnable, deployable = self._litert_files(float_onnx, candidate, workdir,
                                                      calibration)
            return runnable, deployable, float_onnx
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
        return runnable, deployable, None

    @staticmethod
    def _sparsity(model: nn.Module, masked: set[str], info: dict[str, Any]) -> dict[str, Any]:
        if masked:
            weights = [m.weight for m in model.modules()
                       if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
            info["weight_sparsity"] = float(sum((w == 0).sum() for w in weights)
                                            / sum(w.numel() for w in weights))
        return info

    def _litert_files(self, float_onnx: Path, candidate: Candidate, workdir: Path,
                      calibration: list[np.ndarray] | None) -> tuple[Path, Path]:
        """The LiteRT file and what a user ships (it, or the packed file kept for the size of
        clustered or sparse weights, from whose restored ONNX file it is converted)."""
        source, deployable = float_onnx, None
        if candidate.packed:
            deployable = write_packed(float_onnx, workdir / ARTIFACT_PACKED)
            source = restore_onnx(deployable, workdir / "restored.onnx")
        tflite = onnx_to_tflite(source, workdir / ARTIFACT_TFLITE, candidate.quantize,
                                iter(calibration) if calibration else None,
                                int8_io=self.runtime.int8_io)
        return tflite, deployable or tflite

    def measure_built(self, built: Built, split: Split | None, latency: bool,
                      latency_below_ms: float | None = None,
                      ) -> tuple[dict[str, float], dict[str, Any]]:
        """The artifact's measures in the budget's runtime (size from the runnable file)."""
        if built.onnx is not None:
            return measure_litert_file(built.runnable, built.onnx, self.data, self.runtime,
                                       split, latency=latency, meter=self.meter,
                                       mode=built.info.get("quantize", "none"))
        return measure_onnx_file(built.runnable, self.data, self.runtime, split,
                                 meter=self.meter, latency=latency,
                                 latency_below_ms=latency_below_ms)

    def measure(self, built: Built, with_accuracy: bool) -> tuple[dict[str, float],
                                                                  dict[str, Any]]:
        """Every measure of a built candidate (see the module docstring); latency when
        ``timed``."""
        values: dict[str, float] = {}
        info: dict[str, Any] = {}
        for name, measure in MODEL_MEASURES.items():
            count = measure(built.model, self.example)
            values[name] = float(count.value)
            if count.uncounted_ops:
                info[f"{name}_uncounted_ops"] = dict(count.uncounted_ops)
        measured, latency_info = self.measure_built(
            built, self.data.val if with_accuracy else None, latency=self.timed)
        values.update(measured)
        values["size_bytes"] = float(built.deployable.stat().st_size)
        info.update(latency_info)
        return values, info

    def static_values(self, candidate: Candidate, workdir: Path, accuracy: bool = False,
                      ) -> dict[str, float]:
        """Size, peak memory and activation memory of the file ``candidate``'s structure
        deploys to (``build`` with ``finetune`` False), and its latency when the budget
        limits it, timed only as closely as telling it from the limit needs; with
        ``accuracy``, that file's validation accuracy too (what a candidate that breaks a
        limit is recorded with, untrained)."""
        built = self.build(candidate, workdir, finetune=False)
        cap = self.caps.limits.get("latency_ms")
        # Recorded (``accuracy``): timed in full when the budget asks for latency at all.
        values, _ = self.measure_built(built, self.data.val if accuracy else None,
                                       latency=cap is not None or (accuracy and self.timed),
                                       latency_below_ms=None if accuracy else cap)
        values["size_bytes"] = float(built.deployable.stat().st_size)
        return values

    def evaluate(self, candidate: Candidate, workdir: Path) -> Measurement:
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
        # A LiteRT file is kept beside the packed file its size was measured on.
        files = {path.name: path for path in dict.fromkeys((built.deployable, built.runnable))
                 if path.suffix != ".onnx" or path == built.deployable}
        return Measurement(values, info, artifacts={**files, ARTIFACT_STATE: state})
