"""How long must one latency timing last? Repeatability of a file's latency, and of the order
of several files, against the length of a timing.

Builds ResNet-20 candidates pruned with random per-group ratios (fp32 and int8 static ONNX
files) at the digits input (1x8x8) and the CIFAR-10 input (3x32x32), then times every file
``--repeats`` times with each setting of ``time_once``'s ``min_seconds`` / ``max_seconds``
(the settings in turn for each file, so a spell of other work on the host falls on all of
them alike). For each setting it reports the wall time of one ``measure_latency`` call
(retries included), how far a file's latency moves between repeats (relative deviation from
the file's median over every timing of the longest setting), and the Spearman correlation of
each repeat's order of the files with that median order.

    uv run python benchmarks/latency_timing.py

Writes benchmarks/results/latency_timing.md and .json. Takes about 5 minutes on 2 cores; run
it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from scipy.stats import spearmanr

from edgeslim.compress.prune import apply_pruning, prunable_groups
from edgeslim.compress.quantize import quantize_onnx
from edgeslim.evaluators.latency import measure_latency
from edgeslim.export import write_onnx
from edgeslim.fsutil import atomic_write_json
from edgeslim.models import build_model

ROOT = Path(__file__).resolve().parent
SETTINGS = {"1.0-3.0 s": (1.0, 3.0), "0.3-1.0 s": (0.3, 1.0), "0.1-0.5 s": (0.1, 0.5)}
SHAPES = {"digits 1x8x8": (1, 8, 8), "cifar 3x32x32": (3, 32, 32)}


def candidate_files(tmp: Path, shape: tuple[int, ...], count: int, seed: int,
                    ) -> list[tuple[Path, tuple[int, ...]]]:
    base = build_model("resnet20", shape[0], 10).eval()
    example = torch.zeros(1, *shape)
    groups = prunable_groups(base, example, 10, 8)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        model = copy.deepcopy(base)
        if i:  # the first is the unpruned model
            ratios = {g.name: float(rng.choice(np.arange(0, 0.81, 0.1))) for g in groups}
            apply_pruning(model, example, ratios, "l1", 8)
        stem = tmp / f"{'x'.join(map(str, shape))}-{i}"
        float_path = write_onnx(model, example, stem.with_suffix(".onnx"))
        calib = [rng.standard_normal((8, *shape)).astype(np.float32)]
        int8 = quantize_onnx(float_path, stem.with_name(stem.name + "-int8.onnx"),
                             "int8_static", iter(calib))
        files += [(float_path, shape[:]), (int8, shape[:])]
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=3, help="per input shape")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "latency_timing.md")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape_name, shape in SHAPES.items():
            files = candidate_files(Path(tmp), shape, args.candidates, args.seed)
            for repeat in range(args.repeats):
                for index, (path, _) in enumerate(files):
                    for setting, (low, high) in SETTINGS.items():
                        start = time.perf_counter()
                        result = measure_latency(path, None, args.threads, min_seconds=low,
                                                 max_seconds=high)
                        rows.append({"shape": shape_name, "file": index, "repeat": repeat,
                                     "setting": setting, "latency_ms": result.latency_ms,
                                     "attempts": result.attempts,
                                     "seconds": time.perf_counter() - start})
    summary = summarise(rows)
    write_table(args, rows, summary)


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    longest = next(iter(SETTINGS))
    reference = {}
    for shape in SHAPES:
        for file in {r["file"] for r in rows if r["shape"] == shape}:
            reference[shape, file] = float(np.median(
                [r["latency_ms"] for r in rows if r["shape"] == shape and r["file"] == file
                 and r["setting"] == longest]))
    out = {}
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        deviation = [abs(r["latency_ms"] / reference[r["shape"], r["file"]] - 1) for r in mine]
        rhos = []
        for shape in SHAPES:
            for repeat in {r["repeat"] for r in mine}:
                one = sorted((r for r in mine if r["shape"] == shape and r["repeat"] == repeat),
                             key=lambda r: r["file"])
                rhos.append(spearmanr([r["latency_ms"] for r in one],
                                      [reference[shape, r["file"]] for r in one]).statistic)
        out[setting] = {
            "seconds_mean": float(np.mean([r["seconds"] for r in mine])),
            "retried": float(np.mean([r["attempts"] > 1 for r in mine])),
            "deviation_median": float(np.median(deviation)),
            "deviation_p90": float(np.percentile(deviation, 90)),
            "deviation_max": float(np.max(deviation)),
            "spearman_min": float(np.min(rhos)),
            "spearman_median": float(np.median(rhos)),
        }
    return out


def write_table(args: argparse.Namespace, rows: list[dict], summary: dict) -> None:
    files = len({(r["shape"], r["file"]) for r in rows})
    lines = [
        "# How long one latency timing must last", "",
        f"Command: `uv run python benchmarks/latency_timing.py --candidates {args.candidates} "
        f"--repeats {args.repeats} --threads {args.threads} --seed {args.seed}`", "",
        f"Host: {platform.machine()}, {platform.processor() or 'cpu'}, onnxruntime "
        f"{onnxruntime.__version__}, {args.threads} thread(s). {files} files (ResNet-20, "
        f"{args.candidates} candidates per input shape, the first unpruned, the others pruned "
        "with random per-group ratios, each as fp32 and int8 static), each timed "
        f"{args.repeats} times with every setting. Deviation: a timing's latency against the "
        "file's median over every timing of the longest setting. Spearman: one repeat's order "
        "of the files of one input shape against that median order.", "",
        "| min-max seconds | seconds per timing | retried | deviation: median | p90 | max | "
        "Spearman: min | median |", "|---|---|---|---|---|---|---|---|",
    ]
    for setting, s in summary.items():
        lines.append(
            f"| {setting} | {s['seconds_mean']:.2f} | {100 * s['retried']:.0f}% | "
            f"{100 * s['deviation_median']:.1f}% | {100 * s['deviation_p90']:.1f}% | "
            f"{100 * s['deviation_max']:.1f}% | {s['spearman_min']:.3f} | "
            f"{s['spearman_median']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    atomic_write_json({"summary": summary, "rows": rows}, args.out.with_suffix(".json"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
