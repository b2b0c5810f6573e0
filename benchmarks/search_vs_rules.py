"""Does the search beat the hand-picked rules? Per-layer pruning searched under a MACs budget
against one ratio for every layer (uniform), the complexity-driven allocations (PA, FA, MA) and
random search, on CIFAR-10.

For every model and MACs reduction (2x, 3x, 4x) this runs the command a user runs, once per
method, with the same base model (trained once, cached), the same short fine-tune per trial
and the same number of fine-tuned trials:

    optimize --budget B --model M --dataset D --stages prune --trials N [METHOD OPTIONS]

Methods: ``search``, TPE with screening (``--screen`` allocations ranked by their accuracy
after batch-norm recalibration, the best fine-tuned); ``random``, random search (``--sampler
random --screen 0``). At 3x on the first model, also the other samplers with screening
(``nsga2``, ``gp``) and TPE without screening (``tpe-no-screen``): the table that chose the
default sampler.

The budget limits MACs alone and the study maximises accuracy (no other objective), so every
method looks for the most accurate model under the limit. Every study holds the rules as its
reference trials (fitted to the budget, fine-tuned like any candidate); the table gives each
rule's mean over the studies (the fine-tune is seeded, so they differ only by thread timing).
"Searched" is the best non-reference trial by validation accuracy; every cell also gives the
test accuracy of the same artifact, on images no trial or choice has seen, and the lift is
taken on test accuracy. Times: the study's wall time (screening included), the share of it
spent screening, and the share spent outside fine-tuning and screening (sampling, repair,
export, measurement, storage).

    nice -n 10 uv run python benchmarks/search_vs_rules.py \\
        --archive ../shared/data/cifar10-train-jpeg.tar.gz

CPU-sized, stated in the output: the first --per-class training images of each class (10% of
them carved out for validation) and the next --test-per-class as the test split, base models
trained for --base-epochs, VGG-11-BN at half width (benchmarks/narrow_models.py). Writes
benchmarks/results/search_vs_rules.md and .json, and the plot docs/search_vs_rules.png;
rerunning resumes from the .json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from _cifar import cifar_split  # benchmarks/_cifar.py, beside this script
from optuna.artifacts import FileSystemArtifactStore, download_artifact

from edgeslim.cli import main as optimize
from edgeslim.data import load_dataset
from edgeslim.evaluators import onnx_accuracy
from edgeslim.fsutil import atomic_write
from edgeslim.search.config import default_storage
from edgeslim.search.objective import is_feasible
from edgeslim.search.screening import SCREEN_SUFFIX
from edgeslim.search.storage import load_study

ROOT = Path(__file__).resolve().parent
RULES = {"uniform": "uniform", "complexity-pa": "PA", "complexity-fa": "FA",
         "complexity-ma": "MA"}
MODELS = {"resnet20": "ResNet-20", "benchmarks/narrow_models.py:vgg11_bn_half":
          "VGG-11-BN (half width)"}
METHODS = {
    "search": ["--sampler", "tpe"],
    "random": ["--sampler", "random", "--screen", "0"],
    "nsga2": ["--sampler", "nsga2"],
    "gp": ["--sampler", "gp"],
    "tpe-no-screen": ["--sampler", "tpe", "--screen", "0"],
}
BUDGET = """\
# A MACs budget of 1/{r} of the base model, nothing else limited (benchmarks/search_vs_rules.py).
device:
  name: MACs budget, {r}x reduction
runtime:
  name: onnxruntime
  threads: 1
limits:
  macs: {pct:.4g}%
objectives: []
"""


def test_accuracy(study, trial, data) -> float:
    store = FileSystemArtifactStore(study.user_attrs["paths"]["artifacts"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        download_artifact(artifact_store=store, file_path=str(path),
                          artifact_id=trial.user_attrs["artifact:model.onnx"])
        return onnx_accuracy(path, data.test, data, threads=1)


def _seconds(trials) -> float:
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
               if t.datetime_start and t.datetime_complete)


def timing(study, storage: str) -> dict[str, float]:
    """The study's wall time from its first screening or search trial to its last trial, the
    time in screening trials, and the time of the search trials in their fine-tunes, in
    measuring their artifacts (validation accuracy, latency, memory) and in the rest."""
    trials = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    try:
        screened = [t for t in load_study(study.study_name + SCREEN_SUFFIX, storage).trials
                    if t.datetime_start and t.datetime_complete]
    except Exception:  # noqa: BLE001 - a study without screening
        screened = []
    every = trials + screened
    wall = (max(t.datetime_complete for t in every)
            - min(t.datetime_start for t in every)).total_seconds()
    # A repeat (duplicate_of) carries the attributes of the trial it repeats, not its own work.
    own = [t for t in trials if "duplicate_of" not in t.user_attrs]
    training = sum(t.user_attrs.get("finetune_seconds", 0.0) for t in own)
    measuring = sum(t.user_attrs.get("measure_seconds", 0.0) for t in own)
    screening = _seconds(screened)
    return {"wall_s": round(wall, 1), "screening_s": round(screening, 1),
            "training_s": round(training, 1), "measure_s": round(measuring, 1),
            "other_s": round(_seconds(trials) - training - measuring, 1)}


def run(argv: list[str], log: io.StringIO) -> None:
    with contextlib.redirect_stdout(log):
        code = optimize(argv)
    if code != 0:
        sys.exit(f"optimize {' '.join(argv)} exited with {code}:\n{log.getvalue()[-2000:]}")


def measure(study, storage: str, data, method: str, model: str, r: int) -> dict:
    base = study.user_attrs["base"]
    tuned = [t for t in study.trials if t.user_attrs.get("finetuned")
             and t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    refs = {t.user_attrs["reference"]: t for t in tuned if "reference" in t.user_attrs}
    searched = [t for t in tuned if "reference" not in t.user_attrs and is_feasible(t)]
    best = max(searched, key=lambda t: t.user_attrs["val_acc"]) if searched else None
    row = {"model": MODELS.get(model, model), "reduction": r, "method": method,
           "trials": len(tuned), "base_val": base["val_acc"], "base_test": base["test_acc"],
           "base_macs": base["macs"], **timing(study, storage),
           "threads": torch.get_num_threads(),
           "screened": sum("screened" in t.user_attrs for t in tuned),
           "repeats": sum("duplicate_of" in t.user_attrs for t in study.trials),
           "repaired": sum(bool(t.user_attrs.get("repaired")) for t in study.trials)}
    for key, label in RULES.items():
        t = refs.get(key)
        row[label] = None if t is None else {
            "val": t.user_attrs["val_acc"], "test": test_accuracy(study, t, data),
            "macs": t.user_attrs["macs"]}
    row["searched"] = None if best is None else {
        "val": best.user_attrs["val_acc"], "test": test_accuracy(study, best, data),
        "macs": best.user_attrs["macs"], "trial": best.number,
        "ratios": best.user_attrs["candidate"]["prune_ratios"]}
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archive", type=Path, default=ROOT.parent.parent / "shared/data/"
                   "cifar10-train-jpeg.tar.gz")
    p.add_argument("--per-class", type=int, default=2500)
    p.add_argument("--test-per-class", type=int, default=1000)
    p.add_argument("--base-epochs", type=float, default=15)
    p.add_argument("--finetune-epochs", type=float, default=0.5)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--reductions", default="2,3,4")
    p.add_argument("--methods", default="search,random")
    p.add_argument("--extra-methods", default="nsga2,gp,tpe-no-screen",
                   help="also run these at 3x on the first model (the default's choice)")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "search_vs_rules")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "search_vs_rules.md")
    p.add_argument("--retime", action="store_true",
                   help="only read the timing columns again from the stored studies")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if args.retime:
        storage = default_storage(args.workdir)
        rows = _read(args.out.with_suffix(".json"))
        for row in rows:
            model = next((k for k, v in MODELS.items() if v == row["model"]), row["model"])
            name = _study_name(model, row["reduction"], row["method"])
            row.update(timing(load_study(name, storage), storage))
        # The table keeps the command that ran the studies, not this one's.
        made_by = next(line for line in args.out.read_text().splitlines()
                       if line.startswith("Command: "))
        write(rows, args, made_by.removeprefix("Command: ").strip("`"))
        return
    root = cifar_split(args.archive, args.per_class, args.test_per_class)
    dataset = f"imagefolder:{root}"
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, Path("."), args.workdir / "cache" / "data")
    storage = default_storage(args.workdir)
    models = args.models.split(",")
    reductions = [int(r) for r in args.reductions.split(",")]
    # Each method over every reduction before the next method: an interrupted run has whole
    # rows of the first methods.
    jobs = [(m, r, s) for m in models for s in args.methods.split(",") for r in reductions]
    jobs += [(models[0], 3, s) for s in args.extra_methods.split(",") if s]
    done = args.out.with_suffix(".json")
    log = io.StringIO()
    for model, r, method in jobs:
        if (MODELS.get(model, model), r, method) in {_key(x) for x in _read(done)}:
            continue
        budget = args.workdir / f"macs-{r}x.yaml"
        budget.write_text(BUDGET.format(r=r, pct=100 / r))
        name = _study_name(model, r, method)
        run(["--budget", str(budget), "--model", model, "--dataset", dataset,
             "--stages", "prune", "--trials", str(args.trials), *METHODS[method],
             "--finalists", "0", "--base-epochs", f"{args.base_epochs:g}",
             "--finetune-epochs", f"{args.finetune_epochs:g}", "--workdir", str(args.workdir),
             "--study-name", name], log)
        row = measure(load_study(name, storage), storage, data, method, model, r)
        print(json.dumps(row), flush=True)
        # Another process may run other models into the same table: merge with what it wrote.
        rows = [x for x in _read(done) if _key(x) != _key(row)] + [row]
        write(rows, args)


def _study_name(model: str, reduction: int, method: str) -> str:
    return f"{model.rpartition(':')[2]}-{reduction}x-{method}"


def _read(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def _key(row: dict) -> tuple:
    return row["model"], row["reduction"], row["method"]


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _share(row: dict, key: str) -> str:
    return f"{100 * row[key] / row['wall_s']:.1f}%"


def write(rows: list[dict], args: argparse.Namespace, command: str | None = None) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    order = {m: i for i, m in enumerate([*MODELS.values(), *METHODS])}
    rows = sorted(rows, key=lambda x: (order.get(x["model"], 99), x["reduction"],
                                       order.get(x["method"], 99)))
    atomic_write(args.out.with_suffix(".json"),
                 lambda tmp: tmp.write_text(json.dumps(rows, indent=1) + "\n"))
    command = command or ("nice -n 10 uv run python benchmarks/search_vs_rules.py --archive "
               "../shared/data/cifar10-train-jpeg.tar.gz" +
               "".join(f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                       if k in ("per_class", "test_per_class", "base_epochs", "finetune_epochs",
                                "trials", "models", "reductions", "methods",
                                "extra_methods")))
    n_val = args.per_class // 10
    lines = [
        "# Searched per-layer pruning against hand-picked rules, CIFAR-10", "",
        f"Command: `{command}`", "",
        f"Machine: {platform.machine()}, 2 CPU cores, no GPU; each study trained with "
        f"{', '.join(sorted({str(r.get('threads')) for r in rows}))} thread(s). CPU-sized: "
        f"{args.per_class - n_val} training and {n_val} validation images per class, "
        f"{args.test_per_class} test images per class (all from the 50,000 CIFAR-10 training "
        f"images), base models trained {args.base_epochs:g} epochs, every trial fine-tuned "
        f"{args.finetune_epochs:g} epoch (distilled from the base), stages: prune only, "
        f"{args.trials} fine-tuned trials per study. The budget limits MACs alone; each study "
        "maximises validation accuracy under it.", "",
        "Accuracies in percent, validation / test, of the deployable ONNX file in onnxruntime. "
        "Rules: one ratio for every layer (uniform) and the complexity-driven allocations "
        "(PA, FA, MA), each fitted to the budget and fine-tuned like any trial, as reference "
        "trials of every study (mean over the studies). Searched: the best non-reference trial "
        "by validation accuracy. Lift: searched minus the best rule, on test accuracy. "
        "Methods: search = TPE with screening (4 x trials allocations screened by recalibrated "
        "accuracy, the best fine-tuned); random = random search without screening; nsga2, gp "
        "= those samplers with screening (gp is optimize's default); tpe-no-screen = TPE "
        "alone.", "",
        "| model | MACs | method | uniform | PA | FA | MA | searched | lift (test) | wall "
        "| screening | measuring | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        def cell(label: str) -> str:
            v = row[label]
            return "-" if v is None else f"{_pts(v['val'])} / {_pts(v['test'])}"

        rules = [row[k]["test"] for k in RULES.values() if row[k] is not None]
        lift = (100 * (row["searched"]["test"] - max(rules))
                if row["searched"] and rules else None)
        lines.append(
            f"| {row['model']} | 1/{row['reduction']} | {row['method']} | "
            + " | ".join(cell(k) for k in RULES.values())
            + f" | {cell('searched')} | {'-' if lift is None else f'{lift:+.2f}'} | "
            f"{row['wall_s'] / 60:.1f} min | {_share(row, 'screening_s')} | "
            f"{_share(row, 'measure_s')} | {_share(row, 'other_s')} |")
    lines += ["", "Wall: from the first screening or search trial to the last trial. "
              "Screening: its share of the wall time. Measuring: the share spent measuring each "
              "trial's artifact (validation accuracy in onnxruntime, latency, memory). Other: "
              "the share spent in search trials outside their fine-tunes and measurements "
              "(sampling, repair, export, storage). The rest of the wall time is spent "
              "fine-tuning.", "",
              summary(rows)]
    atomic_write(args.out, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    plot(rows, ROOT.parent / "docs" / f"{args.out.stem}.png")


def _rule_means(group: list[dict]) -> dict[str, float]:
    return {k: statistics.mean(r[k]["test"] for r in group if r[k] is not None)
            for k in RULES.values() if any(r[k] is not None for r in group)}


def summary(rows: list[dict]) -> str:
    """Per model and reduction: each method's searched best against the best rule (each rule
    averaged over its runs), on test accuracy."""
    out = ["Per model and budget, test accuracy (rules averaged over their runs):", ""]
    keys = sorted({(r["model"], r["reduction"]) for r in rows})
    for model, red in keys:
        group = [r for r in rows if (r["model"], r["reduction"]) == (model, red)]
        rules = _rule_means(group)
        best_rule = max(rules, key=rules.get) if rules else None
        parts = [f"{s['method']} {_pts(s['searched']['test'])}"
                 + (f" ({100 * (s['searched']['test'] - rules[best_rule]):+.2f})"
                    if best_rule else "") for s in group if s["searched"]]
        out.append(f"- {model}, 1/{red} MACs (base {_pts(group[0]['base_test'])}): best rule "
                   f"{best_rule} {_pts(rules.get(best_rule))}; {', '.join(parts) or 'none'}")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    # One colour per rule and method across the panels.
    colours = dict(zip([*RULES.values(), *METHODS], plt.rcParams["axes.prop_cycle"].by_key()
                       ["color"] * 2, strict=False))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        group = [r for r in rows if r["model"] == model]
        reductions = sorted({r["reduction"] for r in group})
        for label in RULES.values():
            ys = [_rule_means([r for r in group if r["reduction"] == red]).get(label)
                  for red in reductions]
            ax.plot(reductions, [100 * y if y is not None else float("nan") for y in ys],
                    "--o", label=label, alpha=0.7, color=colours[label])
        for method in METHODS:
            pts = sorted((r["reduction"], 100 * r["searched"]["test"]) for r in group
                         if r["method"] == method and r["searched"])
            if pts:
                ax.plot(*zip(*pts), "-s", label=method, linewidth=2, color=colours[method])
        ax.set_title(f"{model}, CIFAR-10")
        ax.set_xlabel("MACs reduction (x)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xticks(reductions)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
