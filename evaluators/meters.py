"""Latency meters: where a candidate's latency comes from, as the budget's ``latency`` section
chooses (``host``, ``profile`` or ``ssh``). Each returns a ``LatencyResult`` whose ``source``
says how it was obtained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeslim.budget import LatencySource, Runtime
from edgeslim.evaluators.latency import LatencyResult, measure_latency


class LatencyMeter(Protocol):
    source: str

    def measure(self, onnx_path: Path) -> LatencyResult:
        """The latency of the ONNX file in the deployment runtime at batch 1."""


@dataclass
class HostMeter:
    """Times the artifact on this machine (``measure_latency``)."""

    threads: int
    max_spread: float = 0.25
    source: str = "host"

    def measure(self, onnx_path: Path) -> LatencyResult:
        return measure_latency(onnx_path, None, self.threads, max_spread=self.max_spread)


def make_meter(spec: LatencySource, runtime: Runtime, cache_dir: Path | None = None,
               ) -> LatencyMeter:
    """The meter a budget's ``latency`` section asks for. A profile is loaded (and must
    parse); an ssh device is not contacted here: ``SshMeter.check`` does that."""
    if spec.source == "profile":
        from edgeslim.evaluators.profile import ProfileMeter, load_profile

        return ProfileMeter(load_profile(spec.profile), runtime.threads)
    if spec.source == "ssh":
        from edgeslim.evaluators.latency_ssh import SshMeter

        cache = cache_dir / "latency-ssh.json" if cache_dir is not None else None
        return SshMeter(spec, runtime.threads, cache)
    return HostMeter(runtime.threads, spec.max_spread)
