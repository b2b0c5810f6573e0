"""The peak-memory estimate against what onnxruntime really allocates, per model.

For each model: the graph estimate (`peak_memory_bytes`: weights + peak live activations) and
onnxruntime's measured allocation on this host (`runtime_memory`: heap growth while the
session is created, plus resident memory the first inference touches with the arena off, both
net of a one-node model's). Linux with glibc only.

    uv run python benchmarks/memory_check.py

Writes benchmarks/results/memory_check.md and .json; takes about a minute.
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from edgeslim.compress.quantize import quantize_onnx
from edgeslim.evaluators.memory import memory_bytes, runtime_memory
from edgeslim.export import write_onnx
from edgeslim.fsutil import atomic_write_json
from edgeslim.models import build_model

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))
from toys import DepthwiseNet, PlainNet, ResidualNet  # noqa: E402

MODELS = {
    "toy plain (tests)": lambda: PlainNet(3),
    "toy residual (tests)": lambda: ResidualNet(3),
    "toy depthwise (tests)": lambda: DepthwiseNet(3),
    "resnet20": lambda: build_model("resnet20", 3, 10),
    "resnet56": lambda: build_model("resnet56", 3, 10),
    "mobilenetv2": lambda: build_model("mobilenetv2", 3, 10),
    "vgg11_bn": lambda: build_model("vgg11_bn", 3, 10),
}
# Models also measured as the search's quantized artifacts.
QUANTIZED = ("resnet20", "mobilenetv2")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, factory in MODELS.items():
            example = torch.zeros(1, 3, 32, 32)
            float_path = write_onnx(factory().eval(), example, Path(tmp) / "m.onnx")
            calibration = [np.random.default_rng(0).standard_normal((8, 3, 32, 32))
                           .astype(np.float32)]
            modes = ("none", "int8_static", "int8_dynamic", "fp16") if name in QUANTIZED \
                else ("none",)
            for mode in modes:
                path = quantize_onnx(float_path, Path(tmp) / f"{mode}.onnx", mode,
                                     iter(calibration) if mode == "int8_static" else None)
                rows.append(_row(name if mode == "none" else f"{name} {mode}", path))
    lines = _table(rows)
    out = ROOT / "results" / "memory_check.md"
    out.write_text("\n".join(lines) + "\n")
    atomic_write_json(rows, out.with_suffix(".json"))
    print("\n".join(lines))


def _row(name: str, path: Path) -> dict:
    weights, activations = memory_bytes(path)
    measured = runtime_memory(path)
    return {"model": name, "weights": weights, "activations": activations,
            "estimate": weights + activations, "session": measured.session_bytes,
            "run": measured.run_bytes, "measured": measured.total_bytes}


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "# Peak memory: graph estimate against onnxruntime's allocation", "",
        "Command: `uv run python benchmarks/memory_check.py`", "",
        f"Host: {platform.machine()}, onnxruntime {onnxruntime.__version__}, input 1x3x32x32, "
        "fp32 unless a quantization mode is named (the search's artifacts). Estimate = "
        "weights + peak live activations (`peak_memory_bytes`); measured = "
        "heap growth at session creation + resident memory touched by the first run "
        "(`runtime_memory`), net of a one-node model's. kB = 1,000 bytes.", "",
        "| model | weights kB | activations kB | estimate kB | measured kB | measured / estimate "
        "| measured - estimate kB |", "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['weights'] / 1e3:,.1f} | {r['activations'] / 1e3:,.1f} "
                     f"| {r['estimate'] / 1e3:,.1f} | {r['measured'] / 1e3:,.1f} | "
                     f"{r['measured'] / r['estimate']:.2f} | "
                     f"{(r['measured'] - r['estimate']) / 1e3:,.1f} |")
    return lines


if __name__ == "__main__":
    main()
