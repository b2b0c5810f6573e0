"""ResNet-20 on CIFAR-10 under budgets/pi4.yaml: the searched best against a uniform ratio.

Runs the same search a user runs (`optimize --budget budgets/pi4.yaml --model resnet20
--dataset cifar10`), then fine-tunes and measures a uniform-ratio baseline whose MACs do not
exceed the searched best's, with the same evaluator and fine-tune recipe; then times the
fine-tune loop against a bare training loop over the same model. Writes a Markdown table.

    uv run python benchmarks/cifar10_resnet20.py --archive ../shared/data/cifar10-train-jpeg.tar.gz

Takes about an hour on 2 CPU cores (a 15-epoch base model, then one fine-tune epoch a trial).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from edgeslim.budget import load_budget
from edgeslim.cli import FINETUNE_DISTILL_ALPHA, FINETUNE_LR
from edgeslim.data import load_dataset
from edgeslim.evaluators import MODEL_MEASURES, PruneFinetuneEvaluator
from edgeslim.search.config import SearchConfig
from edgeslim.search.exporter import choose_trial
from edgeslim.search.study import prepare, run_search
from edgeslim.spaces import uniform_candidate
from edgeslim.training import TrainRecipe, autocast_for, train

ROOT = Path(__file__).resolve().parent


def extract(archive: Path) -> Path:
    target = Path(tempfile.gettempdir()) / "edgeslim-cifar10"
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def uniform_at_macs(prepared, evaluator, macs_cap: float, importance: str):
    """The largest-MACs uniform candidate not above ``macs_cap`` (ratio grid 0.01)."""
    example = torch.zeros(1, *prepared.data.input_shape)
    best = None
    for step in range(0, 96):
        ratio = step / 100
        cand = uniform_candidate(prepared.space.groups, ratio, importance,
                                 prepared.space.round_to)
        model, _ = evaluator.build(cand)
        macs = MODEL_MEASURES["macs"](model, example).value
        if macs <= macs_cap:
            best = (cand, macs)
            break
    return best


def throughput(model_fn, data, recipe: TrainRecipe, steps: int) -> tuple[float, float]:
    """(fine-tune loop images/s, bare loop images/s) for the same model, interleaved."""
    bare_speeds, loop_speeds = [], []
    for _ in range(2):
        model = model_fn()
        stats = train(model, data, TrainRecipe(**{**recipe.to_dict(), "steps": steps,
                                                  "distill_alpha": 0.0}))
        loop_speeds.append(stats.images_per_s)
        model = model_fn().train().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = data.normalize(data.train.x[:recipe.batch_size]).contiguous(
            memory_format=torch.channels_last)
        y = data.train.y[:recipe.batch_size]
        ctx, _ = autocast_for("auto", torch.device("cpu"))
        start = time.perf_counter()
        for _ in range(steps):
            with ctx:
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        bare_speeds.append(steps * recipe.batch_size / (time.perf_counter() - start))
    return max(loop_speeds), max(bare_speeds)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archive", type=Path, default=ROOT.parent.parent / "shared/data/"
                   "cifar10-train-jpeg.tar.gz")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--workdir", type=Path, default=ROOT / "runs")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "cifar10_resnet20.md")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    console = Console()
    data_dir = extract(args.archive)
    budget = load_budget(ROOT.parent / "budgets" / "pi4.yaml")
    finetune = TrainRecipe(epochs=1, lr=FINETUNE_LR, warmup_fraction=0.1,
                           distill_alpha=FINETUNE_DISTILL_ALPHA)
    config = SearchConfig(budget=budget, model="resnet20", dataset="cifar10", data_dir=data_dir,
                          trials=args.trials, workdir=args.workdir,
                          base_recipe=TrainRecipe(epochs=15), finetune=finetune)
    t0 = time.perf_counter()
    study = run_search(config, console)
    search_minutes = (time.perf_counter() - t0) / 60
    best = choose_trial(study)
    prepared = prepare(config, console)
    evaluator = PruneFinetuneEvaluator(prepared.base.model, prepared.data, finetune,
                                       budget.runtime, prepared.caps)
    importance = best.user_attrs["candidate"]["importance"]
    cand, macs = uniform_at_macs(prepared, evaluator, best.user_attrs["macs"], importance)
    with tempfile.TemporaryDirectory() as tmp:
        uniform = evaluator.evaluate(cand, Path(tmp))
    data = load_dataset("cifar10", data_dir, args.workdir / "cache" / "data")
    from edgeslim.models import build_model

    loop_ips, bare_ips = throughput(lambda: build_model("resnet20", 3, 10), data, finetune, 60)

    base = study.user_attrs["base"]
    rows = [
        ("base (15 epochs)", base),
        (f"searched best (trial {best.number})", best.user_attrs),
        (f"uniform ratio {cand.ratios[prepared.space.groups[0].name]:.2f}", uniform.values),
    ]
    lines = [
        "# ResNet-20, CIFAR-10, budgets/pi4.yaml",
        "",
        "Command: `uv run python benchmarks/cifar10_resnet20.py --archive "
        "../shared/data/cifar10-train-jpeg.tar.gz"
        + (f" --trials {args.trials}" if args.trials != 20 else "") + "`",
        "",
        f"Host: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}. {args.trials} trials, one fine-tune epoch each (distilled from "
        f"the base, alpha {FINETUNE_DISTILL_ALPHA}), search wall time {search_minutes:.0f} "
        "min. Validation: 5,000 images carved from the 50,000 training images (seed 0); "
        "accuracies are of the ONNX file in onnxruntime.",
        "",
        "| model | val acc | params | MACs | size | latency (ms, 2 threads) | feasible |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in rows:
        feasible = "" if name.startswith("base") else (
            "yes" if all(v.get(m, 0) <= cap for m, cap in prepared.caps.limits.items())
            and v["val_acc"] >= (prepared.caps.min_val_acc or 0) else "no")
        lines.append(f"| {name} | {100 * v['val_acc']:.2f}% | {v['params'] / 1e3:.1f}K | "
                     f"{v['macs'] / 1e6:.2f}M | {v['size_bytes'] / 1e3:.0f} kB | "
                     f"{v['latency_ms']:.3f} | {feasible} |")
    lines += [
        "",
        f"Searched best minus uniform at equal or lower MACs: "
        f"{100 * (best.user_attrs['val_acc'] - uniform.values['val_acc']):+.2f} points.",
        "",
        "Fine-tune throughput on the unpruned ResNet-20 (60 steps of 128 images, best of 2):",
        "",
        "| loop | images/s |",
        "|---|---|",
        f"| edgeslim fine-tune (augmentation, schedule, bf16 autocast, channels_last) | "
        f"{loop_ips:.0f} |",
        f"| bare loop (one fixed batch, same precision and layout) | {bare_ips:.0f} |",
        f"| ratio | {loop_ips / bare_ips:.2f} |",
        "",
        "Per-trial fine-tune throughput (images/s, with the distillation teacher's forward "
        "pass): " + ", ".join(f"{t.user_attrs['finetune_images_per_s']:.0f}"
                              for t in study.trials if "finetune_images_per_s" in t.user_attrs),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps(
        {"base": base, "best": best.user_attrs, "uniform": uniform.values,
         "uniform_candidate": cand.to_dict(), "loop_ips": loop_ips, "bare_ips": bare_ips},
        indent=1, default=str))
    console.print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
