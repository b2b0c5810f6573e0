"""The ResNet-20 CIFAR-10 base the recovery benchmarks start from, trained once and cached.

Three phases, each cached beside the one before it:

1. ``--base-epochs`` of the tool's own base recipe (cached as the search caches it);
2. with ``--second-cycle E``, E more epochs of a second one-cycle schedule peaking at
   ``--second-lr``;
3. with ``--average C``, C cycles of one epoch each (the rate rising to ``--average-lr`` and
   falling to zero), the weights averaged at the end of every cycle (stochastic weight
   averaging, ``torch.optim.swa_utils.AveragedModel``), then the batch norms' statistics
   re-estimated on the whole training split for the averaged weights.

Every choice reads the validation split; the test split is only reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch
from _cifar import cifar_split  # benchmarks/_cifar.py, beside this script

from edgeslim.basemodel import obtain_base_model
from edgeslim.data import load_dataset
from edgeslim.evaluators import MODEL_MEASURES, onnx_accuracy
from edgeslim.evaluators.screening import recalibrate_batch_norm
from edgeslim.export import write_onnx
from edgeslim.fsutil import atomic_torch_save
from edgeslim.models import load_checkpoint
from edgeslim.training import TrainRecipe, accuracy, train

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "runs" / "recovery"
# The base every table starts from, unless the command line says otherwise.
BASE_EPOCHS, SECOND_CYCLE, SECOND_LR, AVERAGE, AVERAGE_LR = 120.0, 0.0, 0.05, 0, 0.05
MODEL = "resnet20"


def add_base_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name a base: each run of a benchmark starts from the base they name."""
    parser.add_argument("--base-epochs", type=float, default=BASE_EPOCHS)
    parser.add_argument("--second-cycle", type=float, default=SECOND_CYCLE,
                        help="epochs of a second one-cycle schedule after the base recipe")
    parser.add_argument("--second-lr", type=float, default=SECOND_LR)
    parser.add_argument("--average", type=int, default=AVERAGE,
                        help="one-epoch cycles whose end weights are averaged, after the rest")
    parser.add_argument("--average-lr", type=float, default=AVERAGE_LR)


def setup(args: argparse.Namespace):
    """The data, the base model (see the module docstring) and the files recording how long
    each phase trained."""
    root = cifar_split(args.archive, 4000, 1000)
    data = load_dataset(f"imagefolder:{root}", Path("."), WORK / "cache" / "data", 0)
    recipe = TrainRecipe(epochs=args.base_epochs, seed=0)
    start = time.perf_counter()
    base = obtain_base_model(MODEL, data, recipe, WORK / "cache" / "base",
                             on_step=_progress("base", start))
    info_path = base.weights_path.with_suffix(".json")
    if base.trained_here:
        info_path.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    infos = [info_path]
    if args.second_cycle:
        second = TrainRecipe(epochs=args.second_cycle, lr=args.second_lr, warmup_fraction=0.1,
                             seed=1)
        base = _phase(base, data, f"then-{args.second_cycle:g}ep-lr{args.second_lr:g}",
                      lambda: train(base.model, data, second,
                                    on_step=_progress("second cycle", time.perf_counter())))
        infos.append(base.weights_path.with_suffix(".json"))
    if args.average:
        base = _phase(base, data, f"avg{args.average}x1ep-lr{args.average_lr:g}",
                      lambda: average_cycles(base.model, data, args.average, args.average_lr))
        infos.append(base.weights_path.with_suffix(".json"))
    return data, base, infos


def _phase(base, data, suffix: str, run):
    """``base`` after ``run`` trained it further, cached as ``<weights>-<suffix>.pt`` with the
    seconds it took beside it (read from the cache when there)."""
    path = base.weights_path.with_name(f"{base.weights_path.stem}-{suffix}.pt")
    if not path.is_file():
        start = time.perf_counter()
        run()
        atomic_torch_save(base.model.cpu().eval().state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps(
            {"seconds": time.perf_counter() - start}))
    load_checkpoint(base.model, path, MODEL)
    return dataclasses.replace(base, weights_path=path)


def average_cycles(model: torch.nn.Module, data, cycles: int, lr: float,
                   report_every: int = 5) -> None:
    """Stochastic weight averaging in place: ``cycles`` one-epoch one-cycle trainings peaking
    at ``lr``, the weights averaged at the end of each, then the batch norms re-estimated on
    the training split. Prints the averaged weights' validation accuracy every
    ``report_every`` cycles (a record of how the average converges; nothing stops on it)."""
    average = torch.optim.swa_utils.AveragedModel(model)
    start = time.perf_counter()
    for cycle in range(1, cycles + 1):
        train(model, data, TrainRecipe(epochs=1, lr=lr, warmup_fraction=0.1, seed=100 + cycle))
        average.update_parameters(model)
        if cycle % report_every == 0 or cycle == cycles:
            snapshot = _averaged(average, data)
            print(f"average of {cycle} cycles: val {100 * accuracy(snapshot, data.val, data):.2f}"
                  f"%, {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    model.load_state_dict(_averaged(average, data).state_dict())


def _averaged(average: torch.optim.swa_utils.AveragedModel, data) -> torch.nn.Module:
    """The averaged weights as a plain model, batch norms re-estimated on every training
    image, augmented as in training."""
    model = average.module
    recalibrate_batch_norm(model, data, images=len(data.train), augment=True)
    return model


def _progress(what: str, start: float, every: int = 20):
    """An ``on_step`` for ``train`` printing how far a long training is, ``every`` times."""
    def report(step: int, total: int) -> None:
        if step == total or step % max(1, total // every) == 0:
            minutes = (time.perf_counter() - start) / 60
            print(f"{what}: step {step}/{total} ({100 * step / total:.0f}%), {minutes:.1f} min",
                  flush=True)
    return report


def epochs_label(args: argparse.Namespace) -> str:
    """The base's training, as the tables name it: ``120``, ``120 + 30 (lr 0.05)``, or with
    ``+ 40 averaged (lr 0.05)``."""
    label = f"{args.base_epochs:g}"
    if args.second_cycle:
        label += f" + {args.second_cycle:g} (lr {args.second_lr:g})"
    if args.average:
        label += f" + {args.average} averaged (lr {args.average_lr:g})"
    return label


def total_epochs(label: str) -> float:
    """The epochs a base trained in all, from its ``epochs_label``."""
    words = label.replace("+", " ").split()  # the rates follow "(lr" and end in ")"
    return sum(float(w) for w in words if w.replace(".", "", 1).isdigit())


def base_row(data, base, info_paths: list[Path], base_epochs: str, run: Path) -> dict:
    path = run / "base.onnx"
    write_onnx(base.model, torch.zeros(1, *data.input_shape), path)
    seconds = sum(json.loads(p.read_text())["seconds"] for p in info_paths) \
        if all(p.is_file() for p in info_paths) else None
    example = torch.zeros(1, *data.input_shape)
    return {"epochs": base_epochs, "weights": base.weights_path.name, "train_seconds": seconds,
            "val": onnx_accuracy(path, data.val, data),
            "test": onnx_accuracy(path, data.test, data),
            "macs": MODEL_MEASURES["macs"](base.model, example).value,
            "params": MODEL_MEASURES["params"](base.model, example).value}


def write_bases(row: dict) -> Path:
    """Adds ``row`` to the committed record of the bases trained (benchmarks/results/
    recovery_bases.json, by weights file) and writes their table beside it."""
    path = ROOT / "results" / "recovery_bases.json"
    recipe = TrainRecipe()
    bases = json.loads(path.read_text()) if path.is_file() else {}
    bases[row["weights"]] = row
    path.write_text(json.dumps(bases, indent=1))
    lines = ["# ResNet-20 bases for the CIFAR-10 benchmarks", "",
             "Command, once per base (`--base-epochs`, `--second-cycle`, `--second-lr`, "
             "`--average`, `--average-lr`):", "",
             "    uv run python benchmarks/recovery.py --archive "
             "../shared/data/cifar10-train-jpeg.tar.gz --part base --base-epochs E", "",
             f"Host: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. "
             f"The tool's base recipe (one-cycle Nesterov SGD peaking at {recipe.lr:g}, batch "
             f"{recipe.batch_size}, weight decay {recipe.weight_decay:g}, label smoothing "
             f"{recipe.label_smoothing:g}, random crops and flips) on the recovery "
             "benchmark's split: 36,000 training and 4,000 validation images, 10,000 test "
             "images no choice reads. \"Averaged\": that many one-epoch cycles after the rest, "
             "their end weights averaged (stochastic weight averaging), batch norms then "
             "re-estimated on the training split. Accuracy of the base's ONNX file in "
             "onnxruntime. Training time is wall time on a host other work shared at times "
             "(compare the seconds an epoch). The weights stay in the cache of the checkout "
             "that trained them, named as in the last column.", "",
             "| epochs | training time | s an epoch | val acc | test acc | weights |",
             "|---|---|---|---|---|---|"]
    for name, r in sorted(bases.items(), key=lambda kv: total_epochs(str(kv[1]["epochs"]))):
        seconds = r.get("train_seconds")
        total = total_epochs(str(r["epochs"]))
        timing = f"{seconds / 60:.0f} min | {seconds / total:.0f}" if seconds else "- | -"
        lines.append(f"| {r['epochs']} | {timing} | {100 * r['val']:.2f}% | "
                     f"{100 * r['test']:.2f}% | {name} |")
    md = path.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    return md
