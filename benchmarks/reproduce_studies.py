"""The four compression studies that users compare edgeslim with, each set up as its preset
and as a search under the same budget (budgets/pi4.yaml), on CPU-sized data and models.

For every study setup this runs the commands a user runs:

    optimize --budget budgets/pi4.yaml --model M --dataset D --preset P     (one trial each)
    optimize --budget budgets/pi4.yaml --model M --dataset D --trials N --no-references

with the same base model (trained once, cached), the same fine-tune (epochs per trained stage)
and the same budget, and writes one row per preset and one per search beside what the study
reported. Every accuracy is the deployable artifact's in onnxruntime; sizes are artifact bytes.

    nice -n 10 uv run python benchmarks/reproduce_studies.py \\
        --archive ../shared/data/cifar10-train-jpeg.tar.gz

CPU-sized, stated in the output: CIFAR-10 is a subset of the training images (the first
--per-class images of each class in file order, 10% carved out for validation), base models
train for --base-epochs, VGG-16 and ResNet-34 run at quarter width
(benchmarks/narrow_models.py), and the sensor study runs on synthetic UCI-HAR-shaped windows
(edgeslim.data.synthetic_har; Fashion-MNIST and UCI-HAR are not available offline).
Writes benchmarks/results/reproduce_studies.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from _cifar import extract  # benchmarks/_cifar.py, beside this script
from optuna.artifacts import FileSystemArtifactStore, download_artifact

from edgeslim.cli import main as optimize
from edgeslim.data.synthetic_har import write_npz
from edgeslim.search.config import default_storage
from edgeslim.search.objective import is_feasible
from edgeslim.search.storage import load_study

ROOT = Path(__file__).resolve().parent
BUDGET = ROOT.parent / "budgets" / "pi4.yaml"


@dataclass(frozen=True)
class Setup:
    study: str  # the study, as users name it
    reported: str  # what the study reported (blank where no figure is quoted here)
    model: str
    model_note: str
    data: str  # "cifar10" or "har"
    presets: tuple[str, ...]
    search: tuple[str, ...] = ()  # extra options of the search
    # Changes to budgets/pi4.yaml for this setup: (text, replacement) pairs.
    budget_edits: tuple[tuple[str, str], ...] = ()


SETUPS = (
    Setup("Edge AI: compression of ConvNeXt on CIFAR-10",
          "ConvNeXt, pruning + dynamic int8: 89.7% smaller, 92.5% accuracy, 20 ms on the edge "
          "device", "convnext_atto", "ConvNeXt-Atto widths, 2x2 stem (3.4M params)", "cifar10",
          ("convnext-prune-dynamic-int8",)),
    Setup("Complexity-driven CNN compression", "", "benchmarks/narrow_models.py:vgg16_bn_quarter",
          "VGG-16-BN at quarter width", "cifar10",
          ("complexity-pa", "complexity-fa", "complexity-ma"),
          # A complexity-driven allocation prunes the most complex layers hardest and the
          # others less, so it cannot meet any pair of limits: within ratios of 0.8, PA and FA
          # reach 55% of the base's MACs, MA keeps 85% of its parameters.
          budget_edits=(("params: 50%", "params: 100%"), ("macs: 50%", "macs: 60%"))),
    Setup("Optimized classification model for edge devices",
          "ResNet-34, VGG-16: k-means clustering to 80x fewer unique weights, with pruning, "
          "fine-tuning and 8-bit quantization", "benchmarks/narrow_models.py:resnet34_quarter",
          "ResNet-34 (CIFAR stem) at quarter width", "cifar10", ("prune-finetune-int8-kmeans",)),
    Setup("Empirical study on pruning and quantization", "", "cnn1d",
          "1-D CNN, 9 x 128 windows", "har", ("prune-retrain-int8",),
          ("--cluster-methods", "kmeans,density,linear")),
)


def cifar_subset(archive: Path, per_class: int) -> Path:
    """An image-folder tree of links to the first ``per_class`` images of each class."""
    full = extract(archive)
    subset = Path(tempfile.gettempdir()) / f"edgeslim-cifar10-{per_class}"
    for cls in sorted(p for p in (full / "train").iterdir() if p.is_dir()):
        target = subset / "train" / cls.name
        if target.is_dir():
            continue
        target.mkdir(parents=True)
        for image in sorted(cls.iterdir())[:per_class]:
            (target / image.name).symlink_to(image)
    return subset


def unique_reduction(study, trial) -> float | None:
    """Weights per distinct value over the conv and linear weights of a clustered trial."""
    name = "model_state.pt"
    if f"artifact:{name}" not in trial.user_attrs:
        return None
    store = FileSystemArtifactStore(study.user_attrs["paths"]["artifacts"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        download_artifact(artifact_store=store, artifact_id=trial.user_attrs[f"artifact:{name}"],
                          file_path=str(path))
        state = torch.load(path, weights_only=True)
    weights = [t for k, t in state.items() if k.endswith("weight") and t.dim() > 1]
    return sum(t.numel() for t in weights) / sum(int(torch.unique(t).numel()) for t in weights)


def trial_minutes(studies: list) -> float:
    """Minutes the presets' and the search's trials took (the base model's training excluded:
    it is cached and shared), from the trials' own timestamps, so a resumed run reports the
    same."""
    return sum((t.datetime_complete - t.datetime_start).total_seconds()
               for s in studies for t in s.trials
               if t.datetime_start and t.datetime_complete) / 60


def run(argv: list[str], log: io.StringIO) -> None:
    with contextlib.redirect_stdout(log):
        code = optimize(argv)
    if code != 0:
        sys.exit(f"optimize {' '.join(argv)} exited with {code}")


def row(label: str, study, trial, base: dict, caps: dict) -> dict:
    v = trial.user_attrs
    return {"row": label, "trial": trial.number, "stages": v["stage_order"]
            + (f" ({v['quantize']})" if v.get("quantize", "none") != "none" else ""),
            "val_acc": v["val_acc"], "delta_points": 100 * (v["val_acc"] - base["val_acc"]),
            "params": v["params"], "macs": v["macs"], "size_bytes": v["size_bytes"],
            "smaller_pct": 100 * (1 - v["size_bytes"] / base["size_bytes"]),
            "latency_ms": v["latency_ms"], "fits": is_feasible(trial),
            "unique_reduction": unique_reduction(study, trial)
            if "cluster" in v["stage_order"] else None}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archive", type=Path, default=ROOT.parent.parent / "shared/data/"
                   "cifar10-train-jpeg.tar.gz")
    p.add_argument("--per-class", type=int, default=1000, help="CIFAR-10 images per class")
    p.add_argument("--har-windows", type=int, default=3000, help="synthetic training windows")
    p.add_argument("--base-epochs", type=float, default=10)
    p.add_argument("--finetune-epochs", type=float, default=1)
    p.add_argument("--trials", type=int, default=4, help="trials of each search")
    p.add_argument("--only", help="run the setups whose model contains this text")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "studies")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reproduce_studies.md")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    datasets = {}
    if any(s.data == "cifar10" for s in SETUPS):
        datasets["cifar10"] = f"imagefolder:{cifar_subset(args.archive, args.per_class)}"
    args.workdir.mkdir(parents=True, exist_ok=True)
    har = args.workdir / "synthetic_har.npz"
    if not har.is_file():
        write_npz(har, args.har_windows, 1000)
    datasets["har"] = f"npz:{har}"
    storage = default_storage(args.workdir)
    results, log = [], io.StringIO()
    for setup in SETUPS:
        if args.only and args.only not in setup.model:
            continue
        start = time.perf_counter()
        budget = BUDGET
        if setup.budget_edits:
            text = BUDGET.read_text()
            for old, new in setup.budget_edits:
                text = text.replace(old, new)
            budget = args.workdir / f"pi4-{setup.model.rpartition(':')[2]}.yaml"
            budget.write_text(text)
        common = ["--budget", str(budget), "--model", setup.model, "--dataset",
                  datasets[setup.data], "--base-epochs", f"{args.base_epochs:g}",
                  "--finetune-epochs", f"{args.finetune_epochs:g}", "--workdir",
                  str(args.workdir)]
        rows = []
        studies = []
        for name in setup.presets:
            study_name = f"{setup.model.rpartition(':')[2]}-{name}"
            run([*common, "--preset", name, "--study-name", study_name], log)
            study = load_study(study_name, storage)
            studies.append(study)
            base, caps = study.user_attrs["base"], study.user_attrs["caps"]
            rows.append(row(f"preset {name}", study, study.trials[0], base, caps))
        study_name = f"{setup.model.rpartition(':')[2]}-search"
        run([*common, "--trials", str(args.trials), "--no-references", "--study-name",
             study_name, *setup.search], log)
        study = load_study(study_name, storage)
        studies.append(study)
        tuned = [t for t in study.trials if t.user_attrs.get("finetuned")]
        fitting = [t for t in tuned if is_feasible(t)]
        best = max(fitting or tuned, key=lambda t: t.user_attrs["val_acc"])
        label = "search, best that fits" if fitting else "search, most accurate (none fits)"
        rows.append(row(label, study, best, study.user_attrs["base"], study.user_attrs["caps"]))
        results.append({"study": setup.study, "reported": setup.reported, "model": setup.model,
                        "model_note": setup.model_note, "data": datasets[setup.data],
                        "base": study.user_attrs["base"], "rows": rows,
                        "minutes": trial_minutes(studies),
                        "wall_minutes_this_run": (time.perf_counter() - start) / 60})
        print(f"{setup.study}: {results[-1]['minutes']:.1f} min", flush=True)
    write(args, results)


def write(args: argparse.Namespace, results: list[dict]) -> None:
    cmd = "nice -n 10 uv run python benchmarks/reproduce_studies.py " + " ".join(sys.argv[1:])
    total = sum(r["minutes"] for r in results)
    lines = [
        "# The four studies' setups: preset and search under budgets/pi4.yaml", "",
        f"Command: `{cmd}`", "",
        f"Host: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; the trials took {total:.0f} min in all (base models' training "
        "not counted; the \"min\" of each setup below is its trials'). CPU-sized, so "
        "accuracies are far below "
        "the studies' and only the rows of one setup compare with each other. The "
        "complexity-driven setup's budget is pi4's with 60% of the base's MACs and no "
        "parameter limit (its allocations cannot meet pi4's pair of limits). CIFAR-10 is "
        f"{10 * args.per_class:,} training images ({args.per_class} per class, the first in "
        "file order; 10% of them carved out for validation, seed 0); base models trained "
        f"{args.base_epochs:g} epochs; {args.finetune_epochs:g} fine-tune epoch(s) after each "
        f"trained stage (distilled from the base); each search ran {args.trials} trials "
        "without the presets as references. The sensor row uses synthetic UCI-HAR-shaped "
        f"windows ({args.har_windows} for training, 9 x 128, 6 activities; "
        "`python -m edgeslim.data.synthetic_har`), not UCI-HAR or Fashion-MNIST, which are not "
        "available offline. Accuracy: the deployable artifact's in onnxruntime on the "
        "validation split; size: its bytes (the packed file where clustering ran), "
        "smaller = against the fp32 base ONNX file; latency: median, batch 1, on this host; "
        "unique: weights per distinct weight value (conv and linear layers).", "",
    ]
    for r in results:
        b = r["base"]
        lines += [f"## {r['study']}", "",
                  f"Reported by the study: {r['reported'] or 'no figure quoted here'}.  ",
                  f"Here: `{r['model']}` ({r['model_note']}), `{r['data'].split('/')[-1]}`; "
                  f"base {100 * b['val_acc']:.2f}%, {b['params'] / 1e3:.1f}K params, "
                  f"{b['macs'] / 1e6:.2f}M MACs, {b['size_bytes'] / 1e3:.1f} kB, "
                  f"{b['latency_ms']:.3f} ms; {r['minutes']:.1f} min.", "",
                  "| row | stages | val acc | vs base | params | MACs | artifact | smaller "
                  "| latency | unique | fits budget |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["rows"]:
            unique = f"{x['unique_reduction']:.0f}x" if x["unique_reduction"] else "-"
            lines.append(
                f"| {x['row']} (trial {x['trial']}) | {x['stages']} | "
                f"{100 * x['val_acc']:.2f}% | {x['delta_points']:+.2f} | "
                f"{x['params'] / 1e3:.1f}K | {x['macs'] / 1e6:.2f}M | "
                f"{x['size_bytes'] / 1e3:.1f} kB | {x['smaller_pct']:.1f}% | "
                f"{x['latency_ms']:.3f} ms | {unique} | {'yes' if x['fits'] else 'no'} |")
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": cmd, "options": {k: str(v) for k, v in vars(args).items()},
         "setups": results}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
