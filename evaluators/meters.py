"""Latency meters: where a candidate's latency comes from, as the budget's ``latency`` section
chooses (``host``, ``profile`` or ``ssh``). Each returns a ``LatencyResult`` whose ``source``
says how it was obtained."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeslim.budget import LatencySource, Runtime
from edgeslim.evaluators.latency import LatencyResult, measure_latency


class LatencyMeter(Protocol):
    source: str

    def measure(self, onnx_path: Path, below_ms: float | None = None) -> LatencyResult:
        """The latency of the ONNX file in the deployment runtime at batch 1. ``below_ms``: the
        caller only needs to know whether it is below that (a limit checked before training);
        a meter may then answer from a quick look when it is far below."""


# A quick look at a file's latency: enough to tell that it is far below a limit.
QUICK = {"warmup": 3, "min_runs": 20, "min_seconds": 0.0, "max_seconds": 0.2}
QUICK_MARGIN = 0.5


@dataclass
class HostMeter:
    """Times the artifact on this machine (``measure_latency``)."""

    threads: int
    max_spread: float = 0.25
    source: str = "host"

    def measure(self, onnx_path: Path, below_ms: float | None = None) -> LatencyResult:
        """With ``below_ms``, a quick look first (``QUICK``: a few dozen runs, no minimum
        time): when even that, which other work on the host can only slow down, is under
        ``QUICK_MARGIN`` of the limit, the file is below it and that look is the answer;
        otherwise, and without ``below_ms``, the full timing of ``measure_latency``."""
        if below_ms is not None:
            quick = measure_latency(onnx_path, None, self.threads, max_spread=float("inf"),
                                    **QUICK)
            if quick.latency_ms <= QUICK_MARGIN * below_ms:
                return quick
        return measure_latency(onnx_path, None, self.threads, max_spread=self.max_spread)


def _host(spec: LatencySource, runtime: Runtime, cache_dir: Path | None) -> LatencyMeter:
    return HostMeter(runtime.threads, spec.max_spread)


def _profile(spec: LatencySource, runtime: Runtime, cache_dir: Path | None) -> LatencyMeter:
    from edgeslim.evaluators.profile import ProfileMeter, load_profile

    return ProfileMeter(load_profile(spec.profile), runtime.threads)


def _ssh(spec: LatencySource, runtime: Runtime, cache_dir: Path | None) -> LatencyMeter:
    from edgeslim.evaluators.latency_ssh import SshMeter

    cache = cache_dir / "latency-ssh.json" if cache_dir is not None else None
    return SshMeter(spec, runtime.threads, cache, runtime=runtime.name)


# Latency sources by the name a budget's ``latency.source`` gives.
METERS: dict[str, Callable[[LatencySource, Runtime, Path | None], LatencyMeter]] = {
    "host": _host, "profile": _profile, "ssh": _ssh}


def make_meter(spec: LatencySource, runtime: Runtime, cache_dir: Path | None = None,
               ) -> LatencyMeter:
    """The meter a budget's ``latency`` section asks for (``METERS``). A profile is loaded
    (and must parse); an ssh device is not contacted here: ``SshMeter.check`` does that."""
    try:
        factory = METERS[spec.source]
    except KeyError:
        raise ValueError(f"unknown latency source {spec.source!r}; valid: "
                         f"{', '.join(METERS)}") from None
    return factory(spec, runtime, cache_dir)
