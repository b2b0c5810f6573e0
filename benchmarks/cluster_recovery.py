"""How much accuracy weight clustering keeps on CIFAR-10 ResNet-20, how small the file gets, and
how the tied fine-tune should update a centroid.

Each run clusters every convolution and the classifier of a copy of the base model (k-means,
``k`` shared values per layer), fine-tunes it with the weights tied to their centroids, then
quantizes it (int8 static) and packs it (``edgeslim.packing``), as the search's
``cluster>quantize`` and ``prune>cluster>quantize`` candidates do. ``--allocs`` prunes first
(``none``, or an allocation of benchmarks/recovery.py: the Taylor criterion, then a fine-tune
of as many epochs). The fine-tune is the search's own (one-cycle SGD peaking at 0.05,
distilled from the base with weight 0.9); a centroid's gradient is the mean of its members'
(``mean``, the default) or their sum (``sum``, Deep Compression's rule). ``--epochs 0`` is
the clustered model before any fine-tune.

Accuracy is the packed file's (restored, run in onnxruntime) on the validation split, which
every choice reads, and on the test split (10,000 images), reported only. Sizes are the packed
file's against the base's fp32 ONNX file.

    uv run python benchmarks/cluster_recovery.py \\
        --archive ../shared/data/cifar10-train-jpeg.tar.gz \\
        --second-cycle 60 --second-lr 0.05 --average 30 --average-lr 0.05 \\
        --counts 4,8,16 --rules mean,sum --epochs 1 --seeds 0

Runs are appended to benchmarks/runs/recovery/<base>/cluster_rows.jsonl (a rerun skips what is
there); every call rewrites benchmarks/results/cluster_recovery.md and .json from all of them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from _recovery_base import ROOT, WORK, add_base_arguments, base_row, epochs_label, setup
from recovery import Config, allocations, done_keys

import edgeslim.evaluators.staged as staged
from edgeslim.budget import Runtime
from edgeslim.compress import tied, weight_layers
from edgeslim.evaluators import MODEL_MEASURES, StagedEvaluator, onnx_accuracy
from edgeslim.spaces import Candidate
from edgeslim.training import TrainRecipe


def candidate(ratios: dict[str, float] | None, layers: list[str], k: int) -> Candidate:
    if ratios is None:
        return Candidate(order=("cluster", "quantize"),
                         cluster_counts=tuple((name, k) for name in layers),
                         quantize="int8_static")
    return Config(importance="taylor", clusters=k).candidate(ratios, layers)


def run_one(data, base, ratios, k: int, rule: str, epochs: float, seed: int) -> dict:
    """Builds one candidate (see the module docstring) with centroid updates ``rule``."""
    evaluator = StagedEvaluator(base.model, data, TrainRecipe.finetune(epochs=epochs, seed=seed),
                                Runtime(threads=2), seed=seed)
    cand = candidate(ratios, list(weight_layers(base.model)), k)
    example = torch.zeros(1, *data.input_shape)
    saved = staged.tied
    staged.tied = functools.partial(tied, centroid_gradient=rule)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            built = evaluator.build(cand, Path(tmp))
            seconds = time.perf_counter() - start
            # ``runnable`` is what the packed file restores to.
            return {"val": onnx_accuracy(built.runnable, data.val, data),
                    "test": onnx_accuracy(built.runnable, data.test, data),
                    "params": MODEL_MEASURES["params"](built.model, example).value,
                    "size_bytes": built.deployable.stat().st_size,
                    "build_seconds": round(seconds, 1),
                    "finetune_seconds": round(sum(s.seconds for s in built.finetunes), 1)}
    finally:
        staged.tied = saved


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:+.2f}"
    return f"{mean:+.2f} ± {statistics.stdev(values):.2f}"


def write_table(rows: list[dict], base: dict, base_bytes: int, out: Path) -> Path:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["alloc"], row["k"], row["epochs"], row["rule"]), []).append(row)
    commands = list(dict.fromkeys(row["command"] for row in rows))  # in the order run
    lines = ["# Weight clustering on CIFAR-10 ResNet-20: accuracy, file size, centroid updates",
             "", "Commands:", ""]
    lines += [f"    uv run python benchmarks/cluster_recovery.py {c}" for c in commands]
    lines += ["", f"Host: {platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}; times are wall seconds of runs that shared the host with "
              "other training, so compare them within a column only. Data and base: those of "
              "benchmarks/results/recovery_avg.md (36,000 training, 4,000 validation and 10,000 "
              f"test images); ResNet-20, {base['epochs']} epochs, val {100 * base['val']:.2f}%, "
              f"test {100 * base['test']:.2f}%, fp32 ONNX file {base_bytes / 1000:.1f} kB.", "",
              "Every layer clustered to k values (k-means), the tied fine-tune after each stage, "
              "int8 static, packed; `pruned first`: the allocation of benchmarks/recovery.py "
              "pruned (Taylor) and fine-tuned before clustering, or none. Drops are in points "
              "against the base, mean ± standard deviation over seeds; `centroid gradient`: how "
              "a centroid's gradient combines its members' (`mean`, shipped; `sum`, Deep "
              "Compression's); `epochs`: the fine-tune after each trained stage.", "",
              "| pruned first | k | epochs | centroid gradient | seeds | val drop | test drop "
              "| packed size | smaller than fp32 | build s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (alloc, k, epochs, rule), group in sorted(groups.items()):
        size = statistics.fmean(r["size_bytes"] for r in group)
        lines.append(
            f"| {alloc} | {k} | {epochs:g} | {rule if epochs else '-'} | {len(group)} | "
            f"{_spread([100 * (r['val'] - base['val']) for r in group])} | "
            f"{_spread([100 * (r['test'] - base['test']) for r in group])} | "
            f"{size / 1000:.1f} kB | {base_bytes / size:.1f}x | "
            f"{statistics.fmean(r['build_seconds'] for r in group):.0f} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"base": base, "base_onnx_bytes": base_bytes,
                                                    "rows": rows}, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True)
    add_base_arguments(parser)
    parser.add_argument("--screen", type=int, default=48)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    parser.add_argument("--counts", type=ints, default=[4, 8, 16])
    parser.add_argument("--rules", type=lambda s: s.split(","), default=["mean", "sum"])
    parser.add_argument("--allocs", type=lambda s: s.split(","), default=["none"])
    parser.add_argument("--epochs", type=lambda s: [float(v) for v in s.split(",")],
                        default=[1.0])
    parser.add_argument("--seeds", type=ints, default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cluster_recovery.md")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data, base, info_paths = setup(args)
    run = WORK / base.weights_path.stem
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "base.json").is_file():
        (run / "base.json").write_text(json.dumps(base_row(data, base, info_paths,
                                                           epochs_label(args), run)))
    pruned = allocations(data, base, args.screen, run)
    rows_path = run / "cluster_rows.jsonl"
    have = done_keys(rows_path)
    for seed in args.seeds:
        for epochs in args.epochs:
            for alloc in args.allocs:
                for k in args.counts:
                    # Before a fine-tune the rule changes nothing: run once.
                    for rule in (args.rules if epochs else ["mean"]):
                        key = f"{alloc}|{k}|{epochs}|{rule}|{seed}"
                        if key in have:
                            continue
                        ratios = None if alloc == "none" else pruned[alloc]
                        row = {"key": key, "alloc": alloc, "k": k, "epochs": epochs,
                               "rule": rule, "seed": seed,
                               **run_one(data, base, ratios, k, rule, epochs, seed),
                               "command": shlex.join(sys.argv[1:])}
                        with rows_path.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(f"{key}: val {100 * row['val']:.2f} test {100 * row['test']:.2f}"
                              f" {row['size_bytes'] / 1000:.1f} kB ({row['build_seconds']:.0f} s)",
                              flush=True)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    base_info = json.loads((run / "base.json").read_text())
    print(f"wrote {write_table(rows, base_info, (run / 'base.onnx').stat().st_size, args.out)}")


if __name__ == "__main__":
    main()
