"""Where a run's time goes (the stopwatch) and how its progress reads in a log file."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from edgeslim.present._progress import _Progress
from edgeslim.timing import Stopwatch


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_counts_to_the_innermost_kind(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("edgeslim.timing.time.perf_counter", clock)
    watch = Stopwatch()
    with watch("training"):
        clock.now += 3.0
        with watch("measuring"):
            clock.now += 2.0
        clock.now += 1.0
    clock.now += 4.0  # other
    assert watch.seconds == {"training": 4.0, "screening": 0.0, "measuring": 2.0,
                             "sampling": 0.0}
    assert watch.breakdown() == ("time: 10 s = training 4 s (40%), screening 0 s (0%), "
                                 "measuring 2 s (20%), sampling 0 s (0%), other 4 s (40%)")


def test_screening_keeps_its_measuring_but_not_its_sampling(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("edgeslim.timing.time.perf_counter", clock)
    watch = Stopwatch()
    with watch("screening"):
        with watch("sampling"):
            clock.now += 1.0
        with watch("measuring"):  # the MACs of a screened structure
            clock.now += 2.0
        clock.now += 3.0
    assert watch.seconds == {"training": 0.0, "screening": 5.0, "measuring": 0.0,
                             "sampling": 1.0}


def test_training_steps_timed_for_the_plan_count_as_measuring(monkeypatch):
    """The plan times a few fine-tune steps on copies: measuring, not a candidate's training."""
    clock = FakeClock()
    monkeypatch.setattr("edgeslim.timing.time.perf_counter", clock)
    watch = Stopwatch()
    with watch("measuring"), watch("training"):
        clock.now += 2.0
    with watch("training"):
        clock.now += 5.0
    assert watch.seconds == {"training": 5.0, "screening": 0.0, "measuring": 2.0,
                             "sampling": 0.0}


def test_an_unknown_kind_lists_the_valid_ones():
    with pytest.raises(KeyError, match="unknown kind of work 'eating'; valid: training, "
                                       "screening, measuring, sampling"):
        with Stopwatch()("eating"):  # type: ignore[arg-type]
            pass


def test_progress_in_a_file_is_plain_lines_at_most_every_interval():
    out = io.StringIO()
    console = Console(file=out, width=200)  # not a terminal
    clock = FakeClock()
    with _Progress(console, every_s=30.0, clock=clock) as progress:
        update = progress.task("training the base model", 100)
        for step in range(1, 101):
            clock.now += 1.0
            update(completed=step, status=f"epoch {(step + 9) // 10}/10")
    assert out.getvalue().splitlines() == [
        "training the base model: 0/100, 0:00:00 elapsed, ETA -",
        "training the base model: 30/100, epoch 3/10, 0:00:30 elapsed, ETA 0:01:10",
        "training the base model: 60/100, epoch 6/10, 0:01:00 elapsed, ETA 0:00:40",
        "training the base model: 90/100, epoch 9/10, 0:01:30 elapsed, ETA 0:00:10",
        "training the base model: 100/100, epoch 10/10, 0:01:40 elapsed, ETA 0:00:00",
    ]
