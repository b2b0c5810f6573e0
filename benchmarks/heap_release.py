"""Resident memory of a process that fine-tunes fresh copies of a large model, with and without
handing freed memory back after each (``edgeslim.heap.release_freed_memory``).

Each run is its own process: ViT-B/16 (86M parameters) at 224x224, four times a copy of the
model and of its teacher fine-tuned one step (batch 16, synthetic images), then both deleted;
the resident set size is read after each. Writes benchmarks/results/heap_release.md and .json.

    uv run python benchmarks/heap_release.py
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
ROUNDS = 4


def _rss_gb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 1e9


def child(release: bool, data_path: Path) -> dict:
    import edgeslim.training as training
    from edgeslim.data import load_dataset
    from edgeslim.heap import release_freed_memory
    from edgeslim.models import build_model
    from edgeslim.training import TrainRecipe, train

    if not release:  # ``train`` hands freed memory back itself: not in this run
        training.release_freed_memory = lambda: False

    data = load_dataset(f"npz:{data_path}", Path("."), None, 0)
    torch.manual_seed(0)
    model = build_model("torchvision:vit_b_16", 3, 10)
    recipe = dataclasses.replace(TrainRecipe.finetune(batch_size=16, lr=0.001), steps=1)
    start, after, trims = _rss_gb(), [], []
    for _ in range(ROUNDS):
        net, teacher = copy.deepcopy(model), copy.deepcopy(model)
        train(net, data, recipe, teacher)
        del net, teacher
        if release:
            begin = time.perf_counter()
            release_freed_memory()
            trims.append(time.perf_counter() - begin)
        after.append(_rss_gb())
    return {"start_gb": start, "after_gb": after, "trim_ms": [1000 * t for t in trims]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("keep", "release"))
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "release", args.data)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images.npz"
        rng = np.random.default_rng(0)
        np.savez(data, x_train=rng.integers(0, 256, (40, 3, 224, 224), dtype=np.uint8),
                 y_train=np.arange(40) % 10)
        runs = {}
        for mode in ("keep", "release"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--data", str(data)],
                                 capture_output=True, text=True, check=True).stdout
            runs[mode] = json.loads(out.strip().splitlines()[-1])
    lines = ["# Memory handed back between fine-tunes", "", "Command:", "",
             "    uv run python benchmarks/heap_release.py", "",
             f"Host: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. "
             f"ViT-B/16 at 224x224; {ROUNDS} times a copy and a teacher copy fine-tuned one step "
             "(batch 16), then deleted. Resident set size after each, in GB.", "",
             "| freed memory | at start | " + " | ".join(f"after {i + 1}" for i in range(ROUNDS))
             + " | malloc_trim, ms |", "|---|---|" + "---|" * ROUNDS + "---|"]
    for mode, label in (("keep", "kept by malloc"), ("release", "released after each")):
        r = runs[mode]
        trim = f"{max(r['trim_ms']):.1f} at most" if r["trim_ms"] else "-"
        lines.append(f"| {label} | {r['start_gb']:.2f} | "
                     + " | ".join(f"{v:.2f}" for v in r["after_gb"]) + f" | {trim} |")
    (ROOT / "results" / "heap_release.json").write_text(json.dumps(runs, indent=1))
    (ROOT / "results" / "heap_release.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
