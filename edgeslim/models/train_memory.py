"""Whether a search's training fits the memory it runs in, checked before anything is trained.

A model whose training batch does not fit is otherwise found out by the kernel's out-of-memory
killer, part way into the base model's training or a fine-tune, with nothing printed. What a
step holds is measured on the model itself: the tensors autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``) on batches of 2 and 4 samples, in the precision
training runs at. Their difference is exact per sample for a feed-forward model, so a step on
``batch`` samples saves ``batch`` times that, plus the saved tensors' fixed part.

A step holds more than that at its peak: the backward pass's gradient buffers, the kernels'
scratch and the allocator's slack. benchmarks/results/train_memory.md sets whole training steps
(bf16 autocast, channels_last, SGD with momentum, a teacher's forward), their peak resident
memory measured on a 2-core x86 host, against this figure: MobileNetV2 and MaxViT-T at
224x224 added 2.74 and 3.97 GB where the saved tensors alone predict 2.54 and 3.19.
``HEADROOM`` times the saved tensors covers each.

A search holds more copies of the weights than a step: the base model (the teacher) and its
loss gradients, the candidate, its gradients and momentum, autocast's half-precision casts,
and, between fine-tunes, the copies a candidate's export, int8 calibration and packing make.
The same file's second table measures whole searches (the plan, one trial, batch 64) against
the check: VGG-16 at 32x32 (134M weights, most in one layer) peaked at 9.06 GB and ViT-B/32 at
224x224 (87M) at 8.15 GB. With ``SEARCH_COPIES`` copies of the weights, what the process held
when it checked plus the check's figure came to 1.05 and 1.02 times those peaks (with the
four copies a step holds, the figure fell 3 to 5 GB short), so a refused batch would not have
fitted; a batch that just fits may be refused, with the numbers to decide on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeslim.compress.untraced import one_thread
from edgeslim.errors import ModelError
from edgeslim.precision import autocast_for

# Copies of the weights a search holds at its peak (see the module docstring). On a GPU only
# the training's: the weights, gradients, momentum and the teacher, with the headroom (not
# measured on a GPU); the export, calibration and packing copies stay in host memory.
SEARCH_COPIES = 12
GPU_COPIES = 5
HEADROOM = 1.25
RUNTIME_BYTES = 500_000_000
_PROBES = (2, 4)  # batch norm in training mode needs two samples


@dataclass(frozen=True)
class StepMemory:
    """What a training step saves for its backward pass: ``per_sample`` bytes times the batch,
    plus ``fixed`` bytes; and ``params``, the bytes of one copy of the weights, of which a
    search holds ``copies``."""

    per_sample: int
    fixed: int
    params: int = 0
    copies: int = SEARCH_COPIES

    def at(self, batch: int) -> int:
        """Bytes a search training on ``batch`` samples needs at its peak (see the module
        docstring)."""
        return math.ceil(HEADROOM * (self.per_sample * batch + self.fixed)) \
            + self.copies * self.params + RUNTIME_BYTES

    def largest_batch(self, available: int) -> int:
        """The largest batch whose search fits in ``available`` bytes (0: none does)."""
        room = (available - RUNTIME_BYTES - self.copies * self.params) / HEADROOM - self.fixed
        if self.per_sample <= 0:
            return 0 if room < 0 else 1 << 30
        return max(0, math.floor(room / self.per_sample))


def step_memory(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> StepMemory:
    """The memory of one training step of ``model`` on samples of ``shape`` on ``device`` (see
    the module docstring). The forwards run in training mode: pass a copy whose batch-norm
    statistics may change."""
    model.train()
    saved = {}
    with one_thread():
        for batch in _PROBES:
            saved[batch] = _saved_bytes(model, torch.zeros(batch, *shape), device)
    low, high = _PROBES
    per_sample = max(0, (saved[high] - saved[low]) // (high - low))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    fixed = max(0, saved[low] - per_sample * low)
    return StepMemory(per_sample=per_sample, fixed=fixed, params=params,
                      copies=GPU_COPIES if device.type == "cuda" else SEARCH_COPIES)


def _saved_bytes(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Bytes of the distinct storages autograd saves for the backward of ``model(x)``."""
    storages: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # until the forward ends: no storage is reused meanwhile

    def pack(t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        alive.append(t)
        # Nothing handed back: no backward runs, and a weight's autocast cast handed back
        # outlives the forward (a half-precision copy of the weights per probe, for the run).

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(device):
        model(x)
    alive.clear()
    return sum(storages.values())


def _autocast(device: torch.device):
    """Training's precision, on the CPU the probe runs on: on CUDA, training's mixed precision
    saves half-precision tensors, as bf16 autocast does here."""
    if device.type == "cuda":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return autocast_for("auto", device)[0]


def available_bytes(device: torch.device) -> int | None:
    """Memory a training step can take on ``device``: free GPU memory on CUDA; on Linux, the
    kernel's estimate of what can be allocated without swapping (``MemAvailable``), capped by
    this process's cgroup limit. None where neither can be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def check_training_memory(model: nn.Module, spec: str, shape: tuple[int, ...], batch: int,
                          device: torch.device, available: int | None = None,
                          processes: int = 1) -> StepMemory:
    """Raises ``ModelError`` when ``processes`` training steps of ``model`` at once (one per
    worker), each on ``batch`` samples of ``shape``, need more memory than ``available`` bytes
    (default: ``available_bytes``), naming what they need and the largest batch that fits.
    ``model``: a copy (``step_memory``)."""
    need = step_memory(model, shape, device)
    available = available_bytes(device) if available is None else available
    if available is None or processes * need.at(batch) <= available:
        return need
    sample = " x ".join(str(d) for d in shape)
    where = "GPU memory free" if device.type == "cuda" else "memory available on this machine"
    workers = f" in each of {processes} workers" if processes > 1 else ""
    head = (f"training model {spec!r} on batches of {batch} samples of {sample}{workers} needs "
            f"about {_size(processes * need.at(batch))} ({_size(need.per_sample)} per sample "
            f"saved for the backward pass, measured on batches of {_PROBES[0]} and "
            f"{_PROBES[1]}, and {need.copies} copies of its {_size(need.params)} of weights "
            f"that a search holds), and {_size(available)} is {where}")
    fits = need.largest_batch(available // processes)
    if fits >= _PROBES[0]:
        raise ModelError(f"{head}: pass --batch-size {_round_down(fits)} or less")
    raise ModelError(f"{head}: not even a batch of {_PROBES[0]} fits; train it on a machine "
                     "with more memory" + (" or with fewer workers" if processes > 1 else ""))


def _round_down(n: int) -> int:
    """``n`` rounded down to a power of two (at least 2), a batch size users recognise."""
    return max(2, 1 << int(math.log2(n)))


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
