"""The tables of benchmarks/recovery.py, written from its rows (one JSON object per run)."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path

import torch


def _pts(values: list[float]) -> str:
    """mean ± standard deviation in percentage points (n runs)."""
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f} (1)"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f} ({len(values)})"


def _delta(values: list[float], ref: list[float]) -> str:
    if not values or not ref:
        return "-"
    return f"{100 * (statistics.mean(values) - statistics.mean(ref)):+.2f}"


def _seconds(rows: list[dict], keys: tuple[str, ...]) -> str:
    if not rows:
        return "-"
    return f"{statistics.mean(sum(r.get(k, 0.0) for k in keys) for r in rows):.1f}"


def grouped(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["alloc"], r["config"], r["epochs"])].append(r)
    return out


def ablation_table(rows: list[dict], allocs: list[str], configs: list[str], epochs: float,
                   reference: str) -> list[str]:
    """Validation and test accuracy per configuration and allocation, with the difference to
    ``reference`` and the seconds each step took."""
    groups = grouped(rows)
    lines = ["| configuration | allocation | val acc | vs " + reference + " | test acc | vs "
             + reference + " | prune + recovery s | fine-tune s |",
             "|---|---|---|---|---|---|---|---|"]
    for config in configs:
        for alloc in allocs:
            runs = groups.get((alloc, config, epochs), [])
            if not runs:
                continue
            ref = groups.get((alloc, reference, epochs), [])
            val = [r["val"] for r in runs]
            test = [r["test"] for r in runs]
            lines.append(
                f"| {config} | {alloc} | {_pts(val)} | {_delta(val, [r['val'] for r in ref])} "
                f"| {_pts(test)} | {_delta(test, [r['test'] for r in ref])} "
                f"| {_seconds(runs, ('prune_seconds', 'reconstruct_seconds', 'recalibrate_bn_seconds'))} "  # noqa: E501
                f"| {_seconds(runs, ('finetune_seconds',))} |")
    return lines


def curve_table(rows: list[dict], allocs: list[str], configs: list[str], base: dict,
                ) -> list[str]:
    """Test accuracy drop against the base by fine-tune epochs."""
    groups = grouped(rows)
    epochs = sorted({r["epochs"] for r in rows if r["config"] in configs})
    lines = ["| configuration | allocation | " + " | ".join(f"{e:g} epochs" for e in epochs)
             + " |", "|---|---|" + "---|" * len(epochs)]
    for config in configs:
        for alloc in allocs:
            cells = []
            for e in epochs:
                runs = groups.get((alloc, config, e), [])
                drops = [r["test"] - base["test"] for r in runs]
                cells.append(_pts(drops) if runs else "-")
            if any(c != "-" for c in cells):
                lines.append(f"| {config} | {alloc} | " + " | ".join(cells) + " |")
    return lines


def quant_table(rows: list[dict], allocs: list[str]) -> list[str]:
    """What int8 static costs over the float file, per calibration, in points."""
    variants = sorted({k for r in rows for k in r if k.startswith("int8 ")})
    lines = ["| configuration | allocation | calibration | int8 - float, val | int8 - float, "
             "test |", "|---|---|---|---|---|"]
    for (alloc, config, epochs), runs in sorted(grouped(rows).items()):
        if alloc not in allocs:
            continue
        for v in variants:
            have = [r for r in runs if v in r]
            if not have:
                continue
            val = [r[v]["val"] - r["val"] for r in have]
            test = [r[v]["test"] - r["test"] for r in have]
            lines.append(f"| {config}, {epochs:g} ep | {alloc} | {v.removeprefix('int8 ')} | "
                         f"{_pts(val)} | {_pts(test)} |")
    return lines


def write_tables(rows_path: Path, work: Path, md: Path, command: str,
                 sections: list[tuple[str, str, list[str]]]) -> Path:
    """Writes ``md`` and the .json beside it: the base, the allocations and ``sections`` (title,
    text, table lines)."""
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    base = json.loads((work / "base.json").read_text())
    allocs = json.loads((work / "allocations.json").read_text())
    minutes = f"{base['train_seconds'] / 60:.0f} min" if base.get("train_seconds") else "-"
    commands = list(dict.fromkeys(r["command"] for r in rows if "command" in r))
    lines = [
        "# Recovering accuracy after pruning: ResNet-20, CIFAR-10", "",
        "Commands (the runs, in the order they were made, then this table):", "",
        *[f"    uv run python benchmarks/recovery.py {c}" for c in commands],
        f"    uv run python benchmarks/recovery.py {command}", "",
        f"Host: {platform.machine()}, {os.cpu_count()} cores (the threads each run used are "
        f"in its command), torch {torch.__version__}. Times are wall seconds of runs that "
        "shared the machine with other work, so compare them within a row's method only. "
        "Data: the 50,000 CIFAR-10 training images, 4,000 per class for "
        "training (of which 10% carved out for validation with seed 0: 36,000 train, 4,000 "
        "validation) and the next 1,000 per class as the test split (10,000 images), which no "
        "choice here reads. Accuracy is the exported file's in onnxruntime; mean ± standard "
        "deviation over seeds (n).", "",
        "| base | epochs | training time | MACs | params | val acc | test acc |",
        "|---|---|---|---|---|---|---|",
        f"| resnet20 | {base['epochs']} | {minutes} | {base['macs'] / 1e6:.2f}M | "
        f"{base['params'] / 1e3:.1f}K | {100 * base['val']:.2f}% | {100 * base['test']:.2f}% |",
        "", "Allocations (fraction of channels removed per group):", "",
        "| allocation | " + " | ".join(next(iter(allocs.values()))) + " |",
        "|---|" + "---|" * len(next(iter(allocs.values()))),
        *[f"| {name} | " + " | ".join(f"{r:.2f}" for r in ratios.values()) + " |"
          for name, ratios in allocs.items()], ""]
    for title, text, table in sections:
        lines += [f"## {title}", "", text, "", *table, ""]
    md.write_text("\n".join(lines))
    md.with_suffix(".json").write_text(json.dumps({"base": base, "allocations": allocs,
                                                       "rows": rows}, indent=1))
    return md
