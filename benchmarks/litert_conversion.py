"""Converting the search's ONNX files to LiteRT: what the chosen path (onnx2tf, then
TensorFlow's TFLiteConverter; ``edgeslim.litert``) installs, how long it takes, and how far its
files agree with onnxruntime.

For the digits ResNet-20 (1x8x8, trained here for a few epochs) and the CIFAR-sized ResNet-20
(3x32x32, untrained weights, random normal input), per mode (float32, full-integer int8
calibrated on 256 images as the search does):

- conversion time (onnx2tf + converter, TensorFlow already imported; the first conversion of
  the process, which also imports TensorFlow, is reported apart), file size;
- agreement: the largest absolute logit difference from onnxruntime running the same model
  (the float ONNX file for float32, onnxruntime's own int8_static file for int8) over the
  images compared, and how often the predicted class is the same; on digits, the validation
  accuracy of each;
- LiteRT latency at one thread, and LiteRT for Microcontrollers' arena for the int8 file.

The installed size is the sum of the files of the distributions ``--extra litert`` adds to the
lock's default set (read from ``uv export``).

    uv sync --extra litert
    OMP_NUM_THREADS=1 nice -n 19 uv run python benchmarks/litert_conversion.py

Writes benchmarks/results/litert_conversion.md and .json; takes about five minutes on 2 cores.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeslim.compress.quantize import quantize_onnx
from edgeslim.data import load_dataset
from edgeslim.evaluators.litert import litert_latency, micro_arena_bytes, open_runner
from edgeslim.evaluators.staged import calibration_batches
from edgeslim.export import INPUT_NAME, ort_session, write_onnx
from edgeslim.fsutil import atomic_write_json
from edgeslim.litert import onnx_to_tflite
from edgeslim.models import build_model
from edgeslim.training import TrainRecipe, train

ROOT = Path(__file__).resolve().parent
COMPARED = 256  # images compared between the runtimes
# The paths compared, as resolved by uv; the others were not installed (the reason is given).
PATHS = [
    ("path", "installs beside torch 2.15?", "added download", "notes"),
    ("onnx2tf 1.28 + TensorFlow 2.21 (chosen)",
     "yes: numpy 2.4.6 and protobuf 7.36.2 are shared, no version of the lock changes; "
     "TensorFlow and torch run in one process, provided Triton (which torch._dynamo loads) "
     "loads before TensorFlow: both carry LLVM, and the other order aborts",
     "638 MB of wheels (TensorFlow 572 MB), installed size above",
     "reads the ONNX file the search already writes and checks; LiteRT's own int8 with "
     "`representative_dataset`"),
    ("litert-torch 0.10 (PyTorch to LiteRT directly)",
     "no: it pins torch < 2.15, and overriding that does not help: its converter "
     "(`ai-edge-litert[model-utils]`) pins `xdsl==0.28.0`, which needs typing-extensions "
     "< 4.13, while torch 2.15 needs >= 4.13",
     "2,787 MB in an environment of its own (torch 2.14.1 with its CUDA libraries, jax, "
     "transformers)",
     "would need a second PyTorch and a subprocess per conversion; not installed"),
    ("onnx2tf 2.x", "no: needs Python >= 3.12 (the project supports 3.11) and pins numpy "
     "2.2.6, onnx 1.20.1, onnxruntime 1.26.0 exactly", "-", ""),
    ("onnx2tf 1.29", "no: pins numpy 1.26.4, TensorFlow 2.19, protobuf 4.25.5", "-", ""),
]
ALTERNATIVES = """
## Why this path

The columns: the float32 file is compared with onnxruntime running the float ONNX file, the
int8 file with onnxruntime running its own `int8_static` file (same 256 calibration images, its
QDQ quantizer against LiteRT's); "ONNX bytes" is that onnxruntime file. The CIFAR-sized model
is untrained and fed random normal images, so only its agreement and timings mean something.
"Micro ms" is LiteRT for Microcontrollers' reference kernels on this host, not a
microcontroller's time.

Paths compared (resolved with `uv lock` against this project's lock, Python 3.11):

{paths}

`tensorflow-cpu` is not used: `tf-keras` (which onnx2tf imports) depends on `tensorflow`, so both
would be installed.
"""


def added_packages() -> dict[str, float]:
    """MB installed per distribution that the litert extra adds."""
    def names(*flags: str) -> set[str]:
        text = subprocess.run(["uv", "export", "--frozen", "--no-hashes", "--no-dev",
                               "--no-emit-project", *flags], capture_output=True, text=True,
                              check=True, cwd=ROOT.parent).stdout
        return {re.split(r"[=<>; ]", line)[0].lower() for line in text.splitlines()
                if line and not line.startswith(("#", " "))}

    out = {}
    for name in sorted(names("--extra", "litert") - names()):
        files = md.distribution(name).files or []
        out[name] = sum(f.locate().stat().st_size for f in files if f.locate().is_file()) / 1e6
    return out


def digits_case():
    data = load_dataset("digits", Path("data"))
    model = build_model("resnet20", 1, 10)
    train(model, data, TrainRecipe(epochs=10, batch_size=64, lr=0.1),
          device=torch.device("cpu"))
    x = data.normalize(data.val.x).numpy()
    return model.eval(), data, x, data.val.y.numpy()


def cifar_case():
    model = build_model("resnet20", 3, 10).eval()
    x = np.random.default_rng(0).standard_normal((COMPARED, 3, 32, 32)).astype(np.float32)
    return model, None, x, None


def compare(tflite: Path, reference, x: np.ndarray, y: np.ndarray | None) -> dict:
    runner = open_runner(tflite, "litert")
    ours = np.concatenate([runner.run(x[i:i + 1]) for i in range(len(x))])
    theirs = np.concatenate([reference.run(None, {INPUT_NAME: x[i:i + 1]})[0]
                             for i in range(len(x))])
    row = {"max_abs_diff": float(np.abs(ours - theirs).max()),
           "logit_range": float(theirs.max() - theirs.min()),
           "same_class": float((ours.argmax(1) == theirs.argmax(1)).mean())}
    if y is not None:
        row["acc_litert"] = float((ours.argmax(1) == y).mean())
        row["acc_onnxruntime"] = float((theirs.argmax(1) == y).mean())
    return row


def run_case(name: str, case, tmp: Path) -> list[dict]:
    model, data, x, y = case()
    shape = x.shape[1:]
    float_onnx = write_onnx(model, torch.zeros(1, *shape), tmp / f"{name}.onnx")
    calibration = calibration_batches(data, 256, 0) if data is not None else \
        [x[i:i + 64] for i in range(0, 256, 64)]
    rows = []
    for mode in ("none", "int8_static"):
        onnx_file = quantize_onnx(float_onnx, tmp / f"{name}-{mode}.onnx", mode,
                                  iter(calibration) if mode != "none" else None)
        start, cpu = time.perf_counter(), time.process_time()
        tflite = onnx_to_tflite(float_onnx, tmp / f"{name}-{mode}.tflite", mode,
                                iter(calibration) if mode != "none" else None)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        row = {"model": name, "mode": mode, "convert_s": round(seconds, 2),
               "convert_cpu_s": round(cpu, 2),
               "tflite_bytes": tflite.stat().st_size, "onnx_bytes": onnx_file.stat().st_size,
               **compare(tflite, ort_session(onnx_file), x[:COMPARED] if y is None else x, y),
               "litert_ms_1t": litert_latency(tflite, shape, "litert").latency_ms}
        if mode == "int8_static":
            row["micro_arena_bytes"] = micro_arena_bytes(tflite, shape)
            row["micro_ms"] = litert_latency(tflite, shape, "litert-micro").latency_ms
        rows.append(row)
        print(row, flush=True)
    return rows


def write_table(rows: list[dict], first_s: float, sizes: dict[str, float],
                load: float) -> str:
    lines = ["# LiteRT conversion: onnx2tf + TFLiteConverter", "",
             f"Host: {platform.machine()}, {platform.python_version()}; tensorflow "
             f"{md.version('tensorflow')}, onnx2tf {md.version('onnx2tf')}, ai-edge-litert "
             f"{md.version('ai-edge-litert')}, tflite-micro {md.version('tflite-micro')}, "
             f"torch {torch.__version__}. Command: `OMP_NUM_THREADS=1 nice -n 19 uv run python "
             "benchmarks/litert_conversion.py` (written by it).", "",
             f"First conversion of the process, TensorFlow's import included: {first_s:.1f} s. "
             f"Load average when the run started: {load:.1f} on {os.cpu_count()} cores (other "
             "work on the host stretches wall times; CPU seconds count this process alone).",
             "", "| model | mode | convert s wall / CPU | .tflite bytes | ONNX bytes | "
             "max abs logit diff vs onnxruntime (logit range) | same class | "
             "val acc LiteRT / onnxruntime | LiteRT ms (1 thread) | Micro arena bytes | "
             "Micro ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = (f"{100 * r['acc_litert']:.2f}% / {100 * r['acc_onnxruntime']:.2f}%"
               if "acc_litert" in r else "-")
        micro = (f"{r['micro_arena_bytes']:,} | {r['micro_ms']:.2f}" if "micro_ms" in r
                 else "- | -")
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['convert_s']:.2f} / {r['convert_cpu_s']:.2f} | "
            f"{r['tflite_bytes']:,} | "
            f"{r['onnx_bytes']:,} | {r['max_abs_diff']:.3g} ({r['logit_range']:.3g}) | "
            f"{100 * r['same_class']:.1f}% | {acc} | {r['litert_ms_1t']:.3f} | {micro} |")
    total = sum(sizes.values())
    biggest = ", ".join(f"{k} {v:.0f}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])
                        if v >= 5)
    lines += ["", f"Installed by `--extra litert`: {len(sizes)} distributions, {total:.0f} MB "
              f"(MB: {biggest}).", ALTERNATIVES.format(paths=_table(PATHS))]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> str:
    lines = [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join([lines[0], "|" + "---|" * len(rows[0]), *lines[1:]])


def main() -> None:
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    sizes = added_packages()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm = write_onnx(build_model("resnet20", 1, 10).eval(), torch.zeros(1, 1, 8, 8),
                          tmp / "warm.onnx")
        start = time.perf_counter()
        onnx_to_tflite(warm, tmp / "warm.tflite")
        first_s = time.perf_counter() - start
        rows = run_case("resnet20 digits 1x8x8", digits_case, tmp)
        rows += run_case("resnet20 CIFAR 3x32x32", cifar_case, tmp)
    out = ROOT / "results" / "litert_conversion"
    atomic_write_json({"rows": rows, "first_convert_s": first_s, "installed_mb": sizes,
                       "load_average": load}, out.with_suffix(".json"))
    table = write_table(rows, first_s, sizes, load)
    out.with_suffix(".md").write_text(table)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
