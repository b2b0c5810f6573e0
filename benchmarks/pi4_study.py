"""The default pi4 study on CIFAR-10, end to end, as a user runs it, judged on a test split.

Runs the search with the defaults the tool ships (stages, fine-tune, screening, references,
finalists), on ResNet-20 trained by benchmarks/recovery.py (its base, the same data split
and cache), then ``optimize export``:

    optimize --budget budgets/pi4.yaml --model resnet20 \\
        --dataset imagefolder:/tmp/edgeslim-cifar10-4000-1000 --checkpoint BASE --trials 16 \\
        --workdir benchmarks/runs/pi4_study
    optimize export --workdir benchmarks/runs/pi4_study --out benchmarks/runs/pi4_study/export

Every fine-tuned trial's deployable artifact and the exported file are then run in onnxruntime
on the test split (10,000 images no choice reads). The search's output goes to
``<workdir>/optimize.out``, its last line the exit status and the wall time; a finished one is
reused (delete the work directory to run again).

    uv run python benchmarks/pi4_study.py --archive ../shared/data/cifar10-train-jpeg.tar.gz

Writes benchmarks/results/pi4_study.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from optuna.artifacts import download_artifact

from edgeslim.evaluators import onnx_accuracy
from edgeslim.export import write_onnx
from edgeslim.packing import restore_onnx
from edgeslim.search.config import default_storage
from edgeslim.search.picking import deployable_artifact, is_feasible
from edgeslim.search.records import FINALIST_ATTR
from edgeslim.search.storage import artifact_store, load_study

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import _recovery_base as bases  # noqa: E402  (the data split and the base model)

WALL = re.compile(r"^EXIT (\d+) wall (\d+) s$")


def search(workdir: Path, command: list[str]) -> dict:
    """Runs the search (or reads the finished one's log): exit status, wall seconds and the
    time-breakdown line it printed."""
    log = workdir / "optimize.out"
    lines = log.read_text().splitlines() if log.is_file() else []
    done = WALL.match(lines[-1]) if lines else None
    if done is None:
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with log.open("w") as out:
            status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        with log.open("a") as out:
            out.write(f"EXIT {status} wall {time.perf_counter() - start:.0f} s\n")
        lines = log.read_text().splitlines()
        done = WALL.match(lines[-1])
    # The breakdown wraps over lines on a narrow terminal: joined from "time:" to the end.
    text = " ".join(line.strip() for line in lines)
    breakdown = re.search(r"time: (\d+ s = .*?other [^)]*\))", text)
    return {"exit": int(done.group(1)), "wall_s": int(done.group(2)),
            "breakdown": breakdown.group(1) if breakdown else None}


def runnable(path: Path, tmp: Path) -> Path:
    """The ONNX file a deployable artifact runs as (a packed file restores to one)."""
    return restore_onnx(path, tmp / "restored.onnx") if path.suffix == ".eslim" else path


def base_measures(study, model, data) -> dict:
    """The study's record of the base model, with its test accuracy (the search reads no test
    image), measured on the base's own ONNX file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_onnx(model, torch.zeros(1, *data.input_shape), Path(tmp) / "base.onnx")
        return {**study.user_attrs["base"], "test_acc": onnx_accuracy(path, data.test, data)}


def trial_rows(workdir: Path, data, base: dict) -> list[dict]:
    study = load_study(None, default_storage(workdir))
    store = artifact_store(workdir)
    rows = []
    for t in study.get_trials(deepcopy=False):
        name = deployable_artifact(t) if t.state.name == "COMPLETE" else None
        if name is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            path = tmp / name
            download_artifact(artifact_store=store, artifact_id=t.user_attrs[f"artifact:{name}"],
                              file_path=str(path))
            test = onnx_accuracy(runnable(path, tmp), data.test, data)
            size = path.stat().st_size
        a = t.user_attrs
        rows.append({"trial": t.number, "finalist_of": a.get(FINALIST_ATTR),
                     "reference": a.get("reference"), "stages": a.get("stage_order"),
                     "quantize": a.get("quantize"), "params": a.get("params"),
                     "macs": a.get("macs"), "size_bytes": size,
                     "smaller": base["size_bytes"] / size, "val": a["val_acc"], "test": test,
                     "val_drop": a["val_acc"] - base["val_acc"],
                     "test_drop": test - base["test_acc"], "fits": is_feasible(t),
                     "minutes": t.duration.total_seconds() / 60 if t.duration else None})
    return rows


def exported(workdir: Path, data, cli: Path) -> dict:
    out = workdir / "export"
    done = subprocess.run([str(cli), "export", "--workdir", str(workdir), "--out", str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"exit": done.returncode, "message": (done.stdout + done.stderr).strip()}
    card = json.loads((out / "model_card.json").read_text())
    deployable = out / card["files"]["deployable"]
    with tempfile.TemporaryDirectory() as tmp:
        test = onnx_accuracy(runnable(deployable, Path(tmp)), data.test, data)
    return {"exit": 0, "trial": card["trial"], "fits_budget": card["fits_budget"],
            "file": deployable.name, "size_bytes": deployable.stat().st_size,
            "val": card["measures"]["val_acc"]["value"], "test": test,
            "message": done.stdout.strip()}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def write(results: dict, out: Path) -> None:
    base, s, e = results["base"], results["search"], results["export"]
    lines = [
        "# The default pi4 study on CIFAR-10, end to end",
        "",
        "Commands:",
        "",
        "    " + results["command"],
        "    " + " ".join(results["search_command"]),
        "",
        f"Host: {platform.machine()}, {results['cores']} cores, torch {torch.__version__}. Data "
        f"and base model: those of benchmarks/results/recovery.md (ResNet-20, "
        f"{results['base_epochs']} epochs; 36,000 training, 4,000 validation and 10,000 test "
        "images). Every accuracy is the deployable file's in onnxruntime; the search and the "
        "export read the validation split only, the test column is reported, never used.",
        "",
        f"Base: val {_pct(base['val_acc'])}, test {_pct(base['test_acc'])}, fp32 ONNX file "
        f"{base['size_bytes'] / 1000:.1f} kB.",
        "",
        f"Search: exit {s['exit']}, wall time {s['wall_s'] / 60:.0f} min; "
        f"{s['breakdown'] or '(no time breakdown printed)'}.",
        "",
        "## What was exported",
        "",
    ]
    if e["exit"] == 0:
        lines += [
            "| trial | file | size | smaller than fp32 | val acc | val drop | test acc | test "
            "drop | fits the budget |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {e['trial']} | {e['file']} | {e['size_bytes'] / 1000:.1f} kB | "
            f"{base['size_bytes'] / e['size_bytes']:.1f}x | {_pct(e['val'])} | "
            f"{_pts(e['val'] - base['val_acc'])} | {_pct(e['test'])} | "
            f"{_pts(e['test'] - base['test_acc'])} | {'yes' if e['fits_budget'] else 'no'} |",
        ]
    else:
        lines.append(f"`optimize export` exited {e['exit']}: {e['message']}")
    lines += ["", "## Every fine-tuned trial", "",
              "`+N`: finalist of trial N (the long fine-tune); `*`: a reference preset; "
              "`minutes`: the trial's wall time (building, fine-tuning, measuring).", "",
              "| trial | stages | quantize | params | MACs | size | smaller | val acc | val drop "
              "| test acc | test drop | fits | minutes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["trials"]:
        label = f"{r['trial']}" + (f" +{r['finalist_of']}" if r["finalist_of"] is not None
                                   else "") + (" *" if r["reference"] else "")
        lines.append(
            f"| {label} | {r['stages']} | {r['quantize']} | {r['params'] / 1e3:.1f}K | "
            f"{r['macs'] / 1e6:.2f}M | {r['size_bytes'] / 1000:.1f} kB | {r['smaller']:.1f}x | "
            f"{_pct(r['val'])} | {_pts(r['val_drop'])} | {_pct(r['test'])} | "
            f"{_pts(r['test_drop'])} | {'yes' if r['fits'] else 'no'} | "
            f"{'-' if r.get('minutes') is None else format(r['minutes'], '.1f')} |")
    within = [r for r in results["trials"] if r["test_drop"] >= -0.01]
    best = max(within, key=lambda r: r["smaller"], default=None)
    lines += ["", "Smallest artifact within 1.0 point of the base on the test split: "
              + (f"trial {best['trial']}, {best['smaller']:.1f}x smaller than the fp32 file "
                 f"({_pts(best['test_drop'])} points)." if best else "none."), ""]
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


def shown(arg: str) -> str:
    """A command-line argument as the table quotes it: paths inside the repository relative
    to its root (where the commands run)."""
    repo = str(ROOT.parent) + os.sep
    return arg.replace(repo, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--final-epochs", type=float, default=None,
                        help="the finalists' fine-tune, passed to optimize (default: the tool's)")
    bases.add_base_arguments(parser)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "pi4_study")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "pi4_study.md")
    args = parser.parse_args()
    data, base, _ = bases.setup(args)
    cli = Path(sys.executable).with_name("optimize")
    root = bases.cifar_split(args.archive, 4000, 1000)
    command = [str(cli), "--budget", str(ROOT.parent / "budgets" / "pi4.yaml"), "--model",
               bases.MODEL, "--dataset", f"imagefolder:{root}", "--checkpoint",
               str(base.weights_path), "--trials", str(args.trials), "--workdir",
               str(args.workdir)]
    if args.final_epochs is not None:
        command += ["--final-epochs", f"{args.final_epochs:g}"]
    found = search(args.workdir, command)
    study = load_study(None, default_storage(args.workdir))
    results = {"command": "uv run python benchmarks/pi4_study.py " + " ".join(sys.argv[1:]),
               "search_command": ["optimize", *map(shown, command[1:])],
               "cores": os.cpu_count(),
               "base_epochs": bases.epochs_label(args),
               "base": base_measures(study, base.model, data), "search": found,
               "export": exported(args.workdir, data, cli)}
    results["trials"] = trial_rows(args.workdir, data, results["base"])
    write(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
