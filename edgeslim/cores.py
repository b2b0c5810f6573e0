"""How many cores the search's training can use: the idle ones when it starts.

PyTorch takes every core for its intra-op threads. When another process keeps one of them
busy, a thread that shares its core falls behind and the others wait for it at every
operator: on the 2-core host here, with one core taken by another training job, ResNet-20
fine-tuned on digits at 90 to 180 images/s with 2 threads against 1,000 to 1,500 with one.
So a search trains with as many threads as there are idle cores when it starts (at least
one), measured from the kernel's CPU counters over a quarter of a second.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgeslim.evaluators.latency import available_cores

WINDOW_S = 0.25


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where unreadable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]
    return values[3] + values[4], sum(values)  # idle + iowait


def idle_cores(window_s: float = WINDOW_S) -> float | None:
    """Cores that stayed idle over ``window_s`` seconds, of the machine's (None where the
    counters cannot be read)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    from os import cpu_count

    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (cpu_count() or 1)


def training_threads(window_s: float = WINDOW_S) -> int:
    """Intra-op threads for training: the idle cores this process may use, at least one."""
    cores = available_cores()
    idle = idle_cores(window_s)
    if idle is None:
        return cores
    return max(1, min(cores, int(idle + 0.5)))
