"""The training recipe shared by the base model and every candidate's fine-tune.

One loop (airbench-style): the training split stays in memory as uint8, each step gathers a
random batch, augments it as tensors and normalises it; no DataLoader, no per-sample Python.
On CPUs where bf16 pays (AMX tiles, or AMD's AVX-512 BF16; see ``_cpu_bf16_is_fast``) the
forward pass runs under bf16 autocast, always with channels_last tensors; on CUDA it uses AMP.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeslim.data import DataBundle, Split, augment_batch
from edgeslim.defaults import FINETUNE_DISTILL_ALPHA, FINETUNE_LR
from edgeslim.distill import BlockAttention, soft_target_loss
from edgeslim.errors import CandidateError
from edgeslim.heap import release_freed_memory
from edgeslim.precision import Precision, autocast_for, default_device, uses_fp16
from edgeslim.timing import timed


@dataclass(frozen=True)
class TrainRecipe:
    """How a model is trained: the base model for many epochs, candidates briefly.

    SGD with Nesterov momentum; the learning rate rises linearly for the first
    ``warmup_fraction`` of the steps, then falls linearly to zero (a one-cycle schedule, which
    makes short runs converge). With ``distill_alpha`` > 0 and a teacher, the loss is
    ``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * cross_entropy``, plus
    ``distill_features`` times the attention-transfer loss of the block outputs.
    """

    epochs: float = 15.0  # passes over the training split; fractions allowed
    steps: int | None = None  # optimizer steps; overrides ``epochs`` when set
    batch_size: int = 128
    lr: float = 0.2  # peak learning rate for ``batch_size``
    momentum: float = 0.9
    weight_decay: float = 5e-4  # not applied to biases and norm parameters
    warmup_fraction: float = 0.15
    label_smoothing: float = 0.1
    distill_alpha: float = 0.0  # weight of the distillation term; 0 turns it off
    distill_temperature: float = 4.0
    # Weight of attention transfer on the block outputs (``edgeslim.distill``); 0 turns it off.
    distill_features: float = 0.0
    precision: Precision = "auto"
    channels_last: bool = True
    seed: int = 0
    subset: float = 1.0  # fraction of the training split drawn from (a fixed one per seed)

    @classmethod
    def finetune(cls, **changes: Any) -> TrainRecipe:
        """The search's fine-tune of a candidate, as the command line makes it by default:
        peak rate ``FINETUNE_LR``, a tenth of the steps warming up, distilled from the base
        model with weight ``FINETUNE_DISTILL_ALPHA``; ``changes`` replace any field."""
        return cls(**{"lr": FINETUNE_LR, "warmup_fraction": 0.1,
                      "distill_alpha": FINETUNE_DISTILL_ALPHA, **changes})

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps: ``steps``, or ``epochs`` passes (0 epochs: no step at all)."""
        if self.steps is not None:
            return max(1, self.steps)
        if self.epochs == 0:
            return 0
        per_epoch = max(1, self.subset_size(n_train) // self.batch_size)
        return max(1, math.ceil(self.epochs * per_epoch))

    def subset_size(self, n_train: int) -> int:
        """Training images drawn from: ``subset`` of ``n_train``, at least one batch."""
        if self.subset >= 1.0:
            return n_train
        return min(n_train, max(self.batch_size, round(self.subset * n_train)))

    def subset_indices(self, n_train: int) -> torch.Tensor:
        """The training images drawn from: all, or the same random ``subset`` of them for
        every model trained with this seed (so candidates are compared on equal data)."""
        size = self.subset_size(n_train)
        if size == n_train:
            return torch.arange(n_train)
        gen = torch.Generator().manual_seed(self.seed + 7919)
        return torch.randperm(n_train, generator=gen)[:size].sort().values

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        if self.subset >= 1.0:  # the whole split: recorded as before the option existed
            del out["subset"]
        return out


@dataclass(frozen=True)
class TrainStats:
    steps: int
    images: int
    seconds: float
    final_loss: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


@timed("training")
def train(model: nn.Module, data: DataBundle, recipe: TrainRecipe,
          teacher: nn.Module | None = None, device: torch.device | None = None,
          on_step: Callable[[int, int], None] | None = None) -> TrainStats:
    """Trains ``model`` in place on ``data.train`` following ``recipe``, on ``device`` (default:
    CUDA when present). ``model`` and ``teacher`` go back to the device they came on, also when
    training fails, so that the stages, exports and trials that follow find them on the CPU.

    Raises:
        CandidateError: when the loss becomes NaN or infinite.
    """
    homes = [(m, _device_of(m)) for m in (model, teacher) if m is not None]
    try:
        return _train_on(model, data, recipe, teacher, device, on_step)
    finally:
        for m, home in homes:
            m.to(device=home, memory_format=torch.contiguous_format)
        release_freed_memory()  # the step's activations, gradients and optimizer state


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _train_on(model: nn.Module, data: DataBundle, recipe: TrainRecipe,
              teacher: nn.Module | None, device: torch.device | None,
              on_step: Callable[[int, int], None] | None) -> TrainStats:
    device = device or default_device()
    fmt = torch.channels_last if recipe.channels_last and data.train.x.dim() == 4 \
        else torch.contiguous_format
    model.to(device=device, memory_format=fmt).train()
    if teacher is not None and recipe.distill_alpha > 0:
        teacher.to(device=device, memory_format=fmt).eval()
    else:
        teacher = None
    gen = torch.Generator().manual_seed(recipe.seed)
    pool = recipe.subset_indices(len(data.train))
    n = len(pool)
    batch = min(recipe.batch_size, n)
    total = recipe.total_steps(len(data.train))
    opt, sched = _one_cycle(model, recipe, total)
    scaler = torch.amp.GradScaler(device.type, enabled=uses_fp16(recipe.precision, device))
    ctx, _ = autocast_for(recipe.precision, device)
    features = BlockAttention(model, teacher) \
        if teacher is not None and recipe.distill_features > 0 else None
    x_all, y_all = data.train.x, data.train.y
    perm, pos, loss_value = torch.randperm(n, generator=gen), 0, float("nan")
    start = time.perf_counter()
    for step in range(total):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = pool[perm[pos:pos + batch]]
        pos += batch
        xb = augment_batch(x_all[idx], data.augment, gen).to(device, non_blocking=True)
        xb = data.normalize(xb).contiguous(memory_format=fmt)
        yb = y_all[idx].to(device, non_blocking=True)
        with ctx:
            loss = _loss(model, teacher, features, xb, yb, recipe)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise CandidateError(f"training loss became {loss_value} at step {step + 1}/{total}")
        if on_step is not None:
            on_step(step + 1, total)
    if features is not None:
        features.close()
    _check_finite(model, total)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    return TrainStats(steps=total, images=total * batch, seconds=seconds, final_loss=loss_value)


def _one_cycle(model: nn.Module, recipe: TrainRecipe, total: int,
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Nesterov SGD, its rate rising linearly over the warmup to ``recipe.lr`` and falling
    linearly to zero at step ``total``."""
    opt = torch.optim.SGD(_param_groups(model, recipe.weight_decay), lr=recipe.lr,
                          momentum=recipe.momentum, nesterov=True)
    warm = max(1, int(total * recipe.warmup_fraction))

    def lr_at(step: int) -> float:
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / (total - warm + 1))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _loss(model: nn.Module, teacher: nn.Module | None, features: BlockAttention | None,
          xb: torch.Tensor, yb: torch.Tensor, recipe: TrainRecipe) -> torch.Tensor:
    """Cross-entropy on the labels, mixed with the teacher's soft targets (and its block
    attention maps, with ``features``) when there is a teacher."""
    logits = model(xb)
    loss = F.cross_entropy(logits.float(), yb, label_smoothing=recipe.label_smoothing)
    if teacher is not None:
        with torch.no_grad():
            t_logits = teacher(xb).float()
        loss = (1 - recipe.distill_alpha) * loss + recipe.distill_alpha * \
            soft_target_loss(logits.float(), t_logits, recipe.distill_temperature)
        if features is not None:
            loss = loss + recipe.distill_features * features.loss()
    return loss


def _check_finite(model: nn.Module, total: int) -> None:
    """The last step's update is never seen by a loss: weights it made infinite or nan would
    reach the export and the quantizer's calibration instead."""
    broken = next((name for name, p in model.named_parameters()
                   if not bool(torch.isfinite(p).all())), None)
    if broken is not None:
        raise CandidateError(f"training diverged: {broken} is not finite after step "
                             f"{total}/{total}")


@torch.no_grad()
def predict(model: nn.Module, split: Split, data: DataBundle, batch_size: int = 512,
            device: torch.device | None = None) -> torch.Tensor:
    """Class predictions of ``model`` (eval mode, fp32) for every image of ``split``."""
    device = device or default_device()
    model.to(device).eval()
    out = []
    for i in range(0, len(split), batch_size):
        xb = data.normalize(split.x[i:i + batch_size].to(device))
        out.append(model(xb).argmax(1).cpu())
    return torch.cat(out)


def accuracy(model: nn.Module, split: Split, data: DataBundle,
             device: torch.device | None = None) -> float:
    """Top-1 accuracy (fraction correct) of ``model`` over ``split`` in PyTorch fp32."""
    return float((predict(model, split, data, device=device) == split.y).float().mean())
