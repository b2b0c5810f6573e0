"""A Pi 5 search warm-started from a Pi 4 study, against a cold Pi 5 search, on CIFAR-10.

For each seed, the source is a pi4 study of ``--trials`` trials (one fine-tune epoch per
stage, no finalists); a cold search under budgets/pi5.yaml runs ``--trials`` trials, and a
warm one runs half as many after importing the source's trials (a warm start needs the
source's seed: it draws the validation split):

    optimize --budget budgets/pi4.yaml ... --trials 10 --seed S --workdir <runs>/source_sS
    optimize --budget budgets/pi5.yaml ... --trials 10 --seed S --workdir <runs>/cold_sS
    optimize --budget budgets/pi5.yaml ... --trials 5 --seed S --resume-from <pi4 study> \\
        --workdir <runs>/warm_sS      (a copy of <runs>/source_sS: the same storage)

(``...``: ``--model resnet20 --dataset imagefolder:ROOT --checkpoint BASE
--finetune-epochs 1 --finalists 0``, the data split and base model of
benchmarks/recovery.py.) A one-epoch fine-tune loses 5 to 12 points, more than the Pi 5's
1.5-point floor, so what is compared is the accuracy each search reaches among the trials
that meet every other limit of budgets/pi5.yaml (params, MACs, memory, size, latency), after
each of its new trials; trials that meet the floor too are counted apart. Test accuracy (the
10,000 images no choice reads) of the trial each search ends with is reported, never used.

Each command's output goes to ``<workdir>/optimize.out``; a run whose output ends with its
closing line is reused (delete the work directory to run it again).

    uv run python benchmarks/warm_start.py --archive ../shared/data/cifar10-train-jpeg.tar.gz

Writes benchmarks/results/warm_start.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from optuna.artifacts import download_artifact

from edgeslim.evaluators import onnx_accuracy
from edgeslim.search.config import default_storage
from edgeslim.search.picking import deployable_artifact
from edgeslim.search.records import FINALIST_ATTR, IMPORTED_ATTR
from edgeslim.search.storage import artifact_store, load_study

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import _recovery_base as bases  # noqa: E402  (the data split and the base model)
from pi4_study import runnable  # noqa: E402

BUDGETS = ROOT.parent / "budgets"
CLOSING = ("export the best feasible model with", "no trial fits the budget yet")


def run(workdir: Path, command: list[str]) -> dict:
    """Runs ``command`` into ``<workdir>/optimize.out`` unless that holds a finished run;
    returns the wall time and breakdown the search printed."""
    log = workdir / "optimize.out"
    text = log.read_text() if log.is_file() else ""
    if not any(c in text for c in CLOSING):
        workdir.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        text = log.read_text()
        if status != 0:
            raise SystemExit(f"{' '.join(command)} exited {status}; see {log}")
    joined = " ".join(line.strip() for line in text.splitlines())
    breakdown = re.search(r"time: (\d+) s = (.*?other [^)]*\))", joined)
    warm = re.search(r"(warm start: .*? trials of .*? in \d+ s; \d+ of them fit)", joined)
    return {"wall_s": int(breakdown.group(1)), "breakdown": breakdown.group(0),
            "warm_start": warm.group(1) if warm else None}


def within_costs(attrs: dict, caps: dict) -> bool:
    """Meets every limit of the budget but its accuracy floor."""
    return all(attrs.get(m, float("inf")) <= cap for m, cap in caps["limits"].items())


def curve(workdir: Path, study_name: str | None, data) -> dict:
    """The search's new trials in order, the best validation accuracy within the cost limits
    after each (the imported trials' best first, for a warm start), and the test accuracy of
    the trial it ends with."""
    study = load_study(study_name, default_storage(workdir))
    caps = study.user_attrs["caps"]
    done = [t for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and deployable_artifact(t) is not None]
    imported = [t for t in done if IMPORTED_ATTR in t.user_attrs]
    new = [t for t in done if IMPORTED_ATTR not in t.user_attrs
           and "duplicate_of" not in t.user_attrs and FINALIST_ATTR not in t.user_attrs]
    best, steps = None, []
    for t in [*imported, *new]:
        if within_costs(t.user_attrs, caps) and (best is None or t.user_attrs["val_acc"]
                                                 > best.user_attrs["val_acc"]):
            best = t
        if IMPORTED_ATTR not in t.user_attrs or t is imported[-1]:
            steps.append(best.user_attrs["val_acc"] if best else None)
    if not imported:
        steps.insert(0, None)
    floor = caps["min_val_acc"]
    with tempfile.TemporaryDirectory() as tmp:
        name = deployable_artifact(best)
        path = Path(tmp) / name
        download_artifact(artifact_store=artifact_store(workdir),
                          artifact_id=best.user_attrs[f"artifact:{name}"], file_path=str(path))
        test = onnx_accuracy(runnable(path, Path(tmp)), data.test, data)
    return {"study": study.study_name, "imported": len(imported), "new": len(new),
            "steps": steps, "best_trial": best.number, "best_val": best.user_attrs["val_acc"],
            "best_test": test, "base_val": study.user_attrs["base"]["val_acc"],
            "base_test": study.user_attrs["base"]["test_acc"],
            "meet_floor": sum(t.user_attrs["val_acc"] >= floor and within_costs(t.user_attrs, caps)
                              for t in [*imported, *new]),
            "warm_start": study.user_attrs.get("warm_start")}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def write(results: dict, out: Path) -> None:
    trials = results["trials"]
    lines = [
        "# A Pi 5 search warm-started from a Pi 4 study, on CIFAR-10",
        "",
        "Commands:",
        "",
        "    " + results["command"],
        *("    " + " ".join(c) for c in results["commands"]),
        "",
        f"Host: {platform.machine()}, {results['cores']} cores, torch {torch.__version__}. Data "
        "and base model: those of benchmarks/results/recovery.md (ResNet-20, 60 epochs; "
        "36,000 training, 4,000 validation and 10,000 test images). One fine-tune epoch per "
        "stage, no finalists. Accuracies are the trials' files in onnxruntime.",
        "",
        "Sources: " + "; ".join(
            f"seed {src['seed']}, the pi4 study in {src['workdir']}, {trials} trials, "
            f"{src['breakdown']}" for src in results["sources"]) + ".",
        "",
        "## Best validation accuracy within the Pi 5's cost limits",
        "",
        "After k new trials (k = 0: before any, the imported trials alone). 'within the "
        "floor': trials that also meet the 1.5-point accuracy floor.",
        "",
        "| search | seed | new trials | imported | " + " | ".join(
            f"k={k}" for k in range(trials + 1)) + " | within the floor | wall | test acc "
        "of its best |",
        "|---|---|---|---|" + "---|" * (trials + 1) + "---|---|---|",
    ]
    for r in results["runs"]:
        steps = r["steps"] + [None] * (trials + 1 - len(r["steps"]))
        lines.append(
            f"| {r['kind']} | {r['seed']} | {r['new']} | {r['imported']} | "
            + " | ".join(_pct(s) for s in steps[:trials + 1])
            + f" | {r['meet_floor']} | {r['wall_s']} s | {_pct(r['best_test'])} |")
    lines += ["", "Base: val " + _pct(results["runs"][0]["base_val"]) + ", test "
              + _pct(results["runs"][0]["base_test"]) + ".", ""]
    for r in results["runs"]:
        lines.append(f"- {r['kind']} seed {r['seed']}: {r['breakdown']}"
                     + (f"; {r['warm_start_line']}" if r.get("warm_start_line") else ""))
    lines.append("")
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "warm_start")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "warm_start.md")
    args = parser.parse_args()
    data, base, _ = bases.setup(argparse.Namespace(archive=args.archive, base_epochs=60,
                                                   second_cycle=0, average=0))
    cli = Path(sys.executable).with_name("optimize")
    root = bases.cifar_split(args.archive, 4000, 1000)
    # Relative to the repository: a warm start requires the same --checkpoint as the source.
    common = ["--model", bases.MODEL, "--dataset", f"imagefolder:{root}", "--checkpoint",
              os.path.relpath(base.weights_path), "--finetune-epochs", "1", "--finalists", "0"]
    args.runs = Path(os.path.relpath(args.runs))
    commands, runs, sources = [], [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        source = args.runs / f"source_s{seed}"
        cold_dir, warm_dir = args.runs / f"cold_s{seed}", args.runs / f"warm_s{seed}"
        pi4 = [str(cli), "--budget", str(BUDGETS / "pi4.yaml"), *common, "--trials",
               str(args.trials), "--seed", str(seed), "--workdir", str(source)]
        found = run(source, pi4)
        name = load_study(None, default_storage(source)).study_name
        sources.append({"seed": seed, "workdir": str(source), **found})
        cold = [str(cli), "--budget", str(BUDGETS / "pi5.yaml"), *common, "--trials",
                str(args.trials), "--seed", str(seed), "--workdir", str(cold_dir)]
        if not warm_dir.exists():
            shutil.copytree(source, warm_dir, ignore=shutil.ignore_patterns("optimize.out"))
        warm = [str(cli), "--budget", str(BUDGETS / "pi5.yaml"), *common, "--trials",
                str(args.trials // 2), "--seed", str(seed), "--resume-from", name,
                "--workdir", str(warm_dir)]
        warm_name = name.removesuffix("-pi4") + "-pi5"  # <model>-<dataset>-<budget>
        commands.append(["optimize", *pi4[1:]])
        for kind, workdir, command, study in (("cold", cold_dir, cold, None),
                                              ("warm", warm_dir, warm, warm_name)):
            timing = run(workdir, command)
            r = curve(workdir, study, data)
            runs.append({"kind": kind, "seed": seed, **r, "wall_s": timing["wall_s"],
                         "breakdown": timing["breakdown"],
                         "warm_start_line": timing["warm_start"]})
            commands.append(["optimize", *command[1:]])
    results = {"command": "uv run python benchmarks/warm_start.py " + " ".join(sys.argv[1:]),
               "commands": commands, "cores": os.cpu_count(), "trials": args.trials,
               "sources": sources, "runs": runs}
    write(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
