"""The training loop's recipe: steps, and the fixed subset the search's fine-tunes draw from."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from edgeslim.training import TrainRecipe, train
from toys import PlainNet


def test_a_subset_is_the_same_images_for_every_candidate_of_a_seed():
    recipe = TrainRecipe(epochs=2, batch_size=100, subset=0.25, seed=3)
    idx = recipe.subset_indices(1000)
    assert len(idx) == 250 and recipe.subset_size(1000) == 250
    assert torch.equal(idx, TrainRecipe(subset=0.25, seed=3).subset_indices(1000))
    assert not torch.equal(idx, TrainRecipe(subset=0.25, seed=4).subset_indices(1000))
    assert recipe.total_steps(1000) == 2 * (250 // 100)  # epochs are passes over the subset
    assert TrainRecipe(batch_size=128, subset=0.01).subset_size(1000) == 128  # >= one batch
    assert torch.equal(TrainRecipe().subset_indices(7), torch.arange(7))
    # The whole split is recorded as before the option existed (cached base models stay valid).
    assert "subset" not in TrainRecipe().to_dict() and recipe.to_dict()["subset"] == 0.25


def test_training_on_a_subset_sees_only_its_images(digits):
    """Labels outside the subset are poisoned with NaN-producing images: a step that drew one
    would make the loss NaN."""
    recipe = TrainRecipe(steps=30, batch_size=64, subset=0.3, precision="fp32")
    keep = recipe.subset_indices(len(digits.train))
    x = digits.train.x.to(torch.float32)
    poison = torch.ones(len(x), dtype=torch.bool)
    poison[keep] = False
    x[poison] = float("nan")
    data = dataclasses.replace(digits, train=dataclasses.replace(digits.train, x=x))
    stats = train(PlainNet(), data, recipe)
    assert stats.steps == 30 and stats.final_loss == stats.final_loss  # not NaN


def test_weights_left_infinite_fail_the_candidate(digits):
    """The loss is computed before each update, so weights the last step throws to infinity
    are seen by no loss: they are checked after training, and one is named. (Here a weight
    the forward pass does not read, so that the loss itself stays finite.)"""
    from edgeslim.errors import CandidateError

    model = PlainNet()
    model.unused = torch.nn.Parameter(torch.tensor([1.0, float("inf")]))
    with pytest.raises(CandidateError, match=r"training diverged: unused is not finite after "
                                             r"step 2/2"):
        train(model, digits, TrainRecipe(steps=2, batch_size=32, precision="fp32"))


def test_a_fine_tune_leaves_the_model_and_its_teacher_where_they_were(digits):
    """On the CPU-only machines here this checks the CPU path; where CUDA is present, training
    runs there and both models come back to the CPU for the stages and export after it."""
    model, teacher = PlainNet(), PlainNet()
    recipe = TrainRecipe(steps=2, batch_size=16, distill_alpha=0.5)
    train(model, digits, recipe, teacher=teacher)
    assert {p.device.type for p in [*model.parameters(), *teacher.parameters()]} == {"cpu"}
    assert all(p.is_contiguous() for p in teacher.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_runs_on_cuda_when_present(digits, monkeypatch):
    seen = []
    forward = PlainNet.forward

    def spy(self, x):
        seen.append(x.device.type)
        return forward(self, x)

    monkeypatch.setattr(PlainNet, "forward", spy)
    model = PlainNet()
    train(model, digits, TrainRecipe(steps=2, batch_size=16))
    assert set(seen) == {"cuda"} and next(model.parameters()).device.type == "cpu"


def test_training_takes_the_idle_cores_and_at_least_one(monkeypatch):
    from edgeslim import cores

    def counters(*samples):
        it = iter(samples)
        monkeypatch.setattr(cores, "_cpu_times", lambda: next(it))

    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    counters((0, 0), (100, 100))  # both cores idle
    assert cores.training_threads(0.0) == 2
    counters((0, 0), (50, 100))  # another process kept one core busy
    assert cores.training_threads(0.0) == 1
    counters((0, 0), (10, 100))  # both busy: one thread all the same
    assert cores.training_threads(0.0) == 1
    counters(None)  # no counters to read: every core
    assert cores.training_threads(0.0) == 2


def test_base_cache_key_reads_whole_epochs_as_the_same_recipe(digits):
    from edgeslim.basemodel import cache_key

    assert cache_key("resnet20", digits, TrainRecipe(epochs=15.0)) == \
        cache_key("resnet20", digits, TrainRecipe(epochs=15))
    assert cache_key("resnet20", digits, TrainRecipe(epochs=15.5)) != \
        cache_key("resnet20", digits, TrainRecipe(epochs=15))


def test_memory_freed_between_phases_goes_back_to_the_system():
    """glibc serves tensors below its (risen) mmap threshold from its heap and keeps them when
    freed; ``release_freed_memory`` hands those pages back (benchmarks/results/
    heap_release.md)."""
    from edgeslim.heap import _glibc, release_freed_memory

    if _glibc() is None:
        pytest.skip("not glibc: nothing to release")

    def rss() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")

    big = torch.ones(4 << 20)  # 16 MB, mmapped: freeing it raises glibc's mmap threshold
    del big
    blocks = [torch.ones(1 << 20) for _ in range(51)]  # 4 MB each, now from the heap
    pin = blocks.pop()  # the last, above the others: free() cannot shrink the heap below it
    before = rss()
    del blocks
    kept = rss()
    assert release_freed_memory()
    assert kept - rss() > 0.8 * 50 * (4 << 20)  # the 200 MB freed, handed back
    assert before - kept < 0.2 * 50 * (4 << 20)  # which free() alone had kept
    del pin
