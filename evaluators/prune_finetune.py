"""The default evaluator: prune a copy of the base model, fine-tune it briefly, measure the ONNX
file a user would deploy."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeslim.budget import Runtime
from edgeslim.compress import apply_pruning
from edgeslim.data import DataBundle
from edgeslim.evaluators._base import STATIC_MEASURES, Caps, Evaluator, Measurement
from edgeslim.evaluators.accuracy import onnx_accuracy
from edgeslim.evaluators.artifact import measure_onnx_file
from edgeslim.evaluators.latency import available_cores
from edgeslim.evaluators.measures import MODEL_MEASURES
from edgeslim.export import write_onnx
from edgeslim.fsutil import atomic_torch_save
from edgeslim.spaces import Candidate
from edgeslim.training import TrainRecipe, train

ARTIFACT_ONNX = "model.onnx"
ARTIFACT_STATE = "model_state.pt"


@dataclass
class PruneFinetuneEvaluator(Evaluator):
    """Prunes channels (really removed, by torch-pruning), then checks the limits that need
    no training (params, MACs, size, memory, latency); a candidate breaking one is scored by
    its accuracy without fine-tuning and reported infeasible. Otherwise it is fine-tuned with
    ``recipe`` (distilled from the base model when ``recipe.distill_alpha`` > 0) and every
    measure is taken again on the final ONNX file.

    Example:
        >>> evaluator = PruneFinetuneEvaluator(base, data, TrainRecipe(epochs=1), Runtime())
        >>> evaluator.evaluate(candidate, Path("trial-0")).values["val_acc"]  # doctest: +SKIP
    """

    base: nn.Module
    data: DataBundle
    recipe: TrainRecipe
    runtime: Runtime
    caps: Caps = Caps()

    def __post_init__(self) -> None:
        self.base = self.base.cpu().eval().to(memory_format=torch.contiguous_format)
        self.example = torch.zeros(1, *self.data.input_shape)

    def build(self, candidate: Candidate) -> tuple[nn.Module, dict[str, int]]:
        """A pruned copy of the base model (not fine-tuned) and the channels each group kept."""
        model = copy.deepcopy(self.base)
        kept = apply_pruning(model, self.example, candidate.ratios, candidate.importance,
                             candidate.round_to)
        return model.eval(), kept

    def evaluate(self, candidate: Candidate, workdir: Path) -> Measurement:
        workdir.mkdir(parents=True, exist_ok=True)
        model, kept = self.build(candidate)
        values: dict[str, float] = {}
        info: dict[str, object] = {f"channels/{name}": n for name, n in kept.items()}
        for name, measure in MODEL_MEASURES.items():
            count = measure(model, self.example)
            values[name] = float(count.value)
            if count.uncounted_ops:
                info[f"{name}_uncounted_ops"] = dict(count.uncounted_ops)
        pruned = write_onnx(model, self.example, workdir / "pruned.onnx")
        measured, _ = measure_onnx_file(pruned, self.data, self.runtime)
        values.update(measured)
        broken = self.caps.violations(values, STATIC_MEASURES)
        if broken:
            # Not worth training: record what the pruned model scores as it is.
            values["val_acc"] = onnx_accuracy(pruned, self.data.val, self.data,
                                              threads=available_cores())
            return Measurement(values, info, infeasible=tuple(broken))
        teacher = self.base if self.recipe.distill_alpha > 0 else None
        stats = train(model, self.data, self.recipe, teacher=teacher)
        info.update(finetune_steps=stats.steps, finetune_seconds=round(stats.seconds, 3),
                    finetune_images_per_s=round(stats.images_per_s, 1))
        model = model.cpu().eval()
        start = time.perf_counter()
        final = write_onnx(model, self.example, workdir / ARTIFACT_ONNX)
        measured, latency_info = measure_onnx_file(final, self.data, self.runtime,
                                                   self.data.val)
        values.update(measured)
        info.update(latency_info, measure_seconds=round(time.perf_counter() - start, 3))
        state = atomic_torch_save(model.state_dict(), workdir / ARTIFACT_STATE)
        return Measurement(values, info, artifacts={ARTIFACT_ONNX: final, ARTIFACT_STATE: state})
