"""Which torchvision classification models edgeslim can search, and how far.

For every model of ``torchvision.models.list_models(module=torchvision.models)``, at the
smallest square input it accepts from 32x32 up, this runs the commands a user runs, each in
its own process as a user would:

    optimize --budget BUDGET --model torchvision:NAME --dataset npz:DATA --checkpoint INIT \\
        --trials 2 --order prune,cluster,quantize --quantize int8_static --cluster-counts 16 \\
        --finetune-steps 1 --finetune-lr 0.001 --screen 0 --finalists 0 --no-references \\
        --sampler random
    optimize export --trial N ...

on synthetic data (120 random RGB images of that size, 10 classes) and the model's own random
initialisation saved as the base checkpoint (nothing is trained but one fine-tune step a
stage: this measures coverage, not accuracy). The fine-tune's rate is the one for a base from
another task: at the default rate, meant for a converged base, one step from a random
initialisation makes deep nets' activations overflow float32 (ResNet-50, MNASNet,
EfficientNet-B1), a failure of the starting point rather than of the model's structure.
The budget only names the host's onnxruntime on one thread. Each model ends in one of:

``end to end``  both trials pruned, clustered, quantized to int8, exported, run in onnxruntime,
                and the export of one of them wrote its files and card
``part way``    the same, but some of the model torch-pruning cannot analyse or mishandles was
                left unpruned (the card and the table name it), or nothing could be pruned
``refused``     the search stopped at start with one line (exit status 2), quoted; when the
                line says the training batch does not fit in memory, the model is searched
                again at the batch it names, and the row is that search's
``not run``     over ``--max-params`` parameters, or no input size it accepts
``timed out``   still running when the timeout in the command line stopped it: too slow for
                this host, which says nothing of its coverage
``failed``      anything else (a traceback, a trial that failed), quoted; a model whose
                trials fail because the fine-tune step from the random initialisation made
                its activations overflow float32 is searched again at a tenth of the rate
                first, and the row is that search's

    nice -n 10 uv run python benchmarks/torchvision_coverage.py

Results are kept per model in the JSON file as they come (a rerun skips the models done;
``--only`` redoes some), and the table is written from it; models not measured yet are named
under the totals. The largest models can run in a second process beside the first
(``--only ... --out OTHER.md``), its rows added with ``--merge OTHER.json``. Writes
benchmarks/results/torchvision_coverage.md and .json.
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

import numpy as np
import torch
import torchvision
from _coverage_table import SLOWER_LR, row_note, table

from edgeslim.models import build_model
from edgeslim.search.config import default_storage
from edgeslim.search.records import StudyRecord, TrialRecord
from edgeslim.search.storage import load_study

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SIZES = (32, 64, 75, 96, 128, 160, 224, 299)  # square inputs tried, smallest first
BUDGET = "device: {name: coverage host}\nruntime: {name: onnxruntime, threads: 1}\n"
SEARCH = ["--trials", "2", "--order", "prune,cluster,quantize", "--quantize", "int8_static",
          "--cluster-counts", "16", "--finetune-steps", "1", "--finetune-lr", "0.001",
          "--screen", "0", "--finalists", "0",
          "--no-references", "--sampler", "random"]
# A trial's reason when the fine-tuned float model's activations overflow float32 (from a
# random initialisation, one step is enough in the deepest nets): searched again at SLOWER_LR.
OVERFLOW = "activations overflow (inf or nan)"


def parameters(name: str) -> int:
    """Counted on the meta device: nothing is allocated, even for 600M-parameter models. A
    builder that computes its widths with tensors (RegNet) cannot run there: built on the
    CPU."""
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None, num_classes=10)
    except NotImplementedError:
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    return sum(p.numel() for p in model.parameters())


def smallest_input(name: str) -> tuple[int | None, str]:
    """The smallest of ``SIZES`` the model runs on, or None and the last error."""
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", 3, 10).eval()
    error = ""
    for size in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return size, ""
        except Exception as exc:  # a model's forward rejects a size in many ways
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
    return None, error


def write_inputs(name: str, size: int, folder: Path) -> tuple[Path, Path]:
    """Synthetic images of ``size`` and the model's random initialisation as a checkpoint."""
    rng = np.random.default_rng(0)
    data = folder / f"images{size}.npz"
    if not data.is_file():
        np.savez(data, x_train=rng.integers(0, 256, (120, 3, size, size), dtype=np.uint8),
                 y_train=np.arange(120) % 10)
    torch.manual_seed(0)
    model = build_model(f"torchvision:{name}", 3, 10)  # as the search builds it
    init = folder / f"{name}-init.pt"
    torch.save(model.state_dict(), init)
    return data, init


def optimize(args: list[str], timeout: float) -> tuple[int | None, str, str, float]:
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "edgeslim.cli", *args], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})
        return done.returncode, done.stdout, done.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        return None, out or "", "", time.perf_counter() - start


def run_model(name: str, size: int, folder: Path, timeout: float) -> dict:
    """The model searched and exported; when its training batch does not fit in memory, once
    more at the batch the refusal names; when the fine-tune step from the random
    initialisation makes its activations overflow float32, once more at ``SLOWER_LR`` (the
    row says so, and counts the time of every try)."""
    extra: list[str] = []
    why: list[str] = []
    row = _search_and_export(name, size, folder, timeout)
    seconds = row["seconds"]
    fits = re.search(r"pass --batch-size (\d+) or less$", row.get("note", ""))
    if row["result"] == "refused" and fits is not None:
        refusal = row["note"].split(": pass --batch-size")[0]
        why.append(f"the default batch was refused in {row['seconds']} s ({refusal})")
        extra += ["--batch-size", fits[1]]
        row = _search_and_export(name, size, folder, timeout, extra)
        seconds += row["seconds"]
    if row["result"] == "failed" and any(OVERFLOW in f for f in row.get("trial_failures", [])):
        rate = SEARCH[SEARCH.index("--finetune-lr") + 1]
        why.append(f"at --finetune-lr {rate}, {len(row['trial_failures'])} of "
                   f"{len(row['trial_failures']) + row['complete']} trials failed in "
                   f"{row['seconds']} s: their float model's activations overflowed float32 "
                   "after the fine-tune step from the random initialisation")
        extra += ["--finetune-lr", SLOWER_LR]
        row = _search_and_export(name, size, folder, timeout, extra)
        seconds += row["seconds"]
    if why:
        row["note"] = "; ".join([f"at {' '.join(extra)}", *why] + ([row["note"]] if row["note"]
                                                                   else []))
        row["seconds"] = seconds
    return row


def _search_and_export(name: str, size: int, folder: Path, timeout: float,
                       extra: tuple[str, ...] | list[str] = ()) -> dict:
    data, init = write_inputs(name, size, folder)
    budget = folder / "coverage.yaml"
    budget.write_text(BUDGET)
    workdir = folder / (name if not extra else f"{name}-{'-'.join(extra).strip('-')}")
    common = ["--workdir", str(workdir)]
    code, out, err, seconds = optimize(
        ["--budget", str(budget), "--model", f"torchvision:{name}", "--dataset", f"npz:{data}",
         "--checkpoint", str(init), *SEARCH, *extra, *common], timeout)
    row: dict = {"seconds": round(seconds), "exit": code}
    if "Traceback" in out + err:
        return {**row, "result": "failed", "note": "traceback: " + (out + err)[-300:]}
    if code is None:
        return {**row, "result": "timed out",
                "note": f"not finished in {timeout / 60:.0f} min on this host"}
    if code == 2:
        return {**row, "result": "refused", "note": err.strip().removeprefix("optimize: error: ")}
    if code < 0:  # killed (SIGKILL: on Linux, most often the kernel's out-of-memory killer)
        reached = re.findall(r"search: \d+/\d+", out)
        return {**row, "result": "failed", "note": f"killed by signal {-code} after "
                f"{round(seconds)} s" + (f", at {reached[-1]} trials" if reached else "")}
    if code != 0:
        return {**row, "result": "failed", "note": (err or out).strip()[-300:]}
    study = load_study(None, default_storage(workdir))
    space = StudyRecord.of(study).space or {}
    failed = [t for t in study.trials if t.state.name != "COMPLETE"]
    row.update(groups=len(space["groups"]), left_out=len(space.get("left_out", {})),
               untraced=space.get("untraced", []),
               complete=sum(t.state.name == "COMPLETE" for t in study.trials),
               trial_failures=[TrialRecord.of(t).fail_reason or t.state.name for t in failed])
    width = {g["name"]: g["channels"] for g in space["groups"]}
    pruned = [t for t in study.trials if t.state.name == "COMPLETE"
              and any(kept < width.get(group, kept)
                      for group, kept in TrialRecord.of(t).channels.items())]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if failed or not done:
        return {**row, "result": "failed", "note": "; ".join(row["trial_failures"])[:300]}
    code, out, err, more = optimize(["export", *common, "--out", str(workdir / "best"),
                                     "--trial", str(done[0].number), "--format", "onnx,json"],
                                    timeout)
    row["seconds"] = round(seconds + more)
    if code != 0 or "Traceback" in out + err:
        return {**row, "result": "failed", "note": "export: " + (err or out).strip()[-300:]}
    card = json.loads((workdir / "best" / "model_card.json").read_text())
    row["pruned_trials"] = len(pruned)
    row["quantize"] = card["compression"]["quantize"]
    row["not_pruned"] = card["compression"].get("not_pruned")
    partial = bool(row["untraced"] or row["left_out"] or not row["groups"])
    return {**row, "result": "part way" if partial else "end to end", "note": row_note(row)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-params", type=float, default=1e9,
                        help="models with more parameters are listed, not run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    parser.add_argument("--only", help="comma-separated models to (re)run")
    parser.add_argument("--out", type=Path, default=RESULTS / "torchvision_coverage.md")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="another run's JSON store (a second process run with --only "
                        "and its own --out): its rows are added, then the table is written")
    args = parser.parse_args()
    store = args.out.with_suffix(".json")
    rows: dict[str, dict] = json.loads(store.read_text()) if store.is_file() else {}
    host = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    if args.merge:
        for other in args.merge:
            rows.update(json.loads(other.read_text()))
        store.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
        args.out.write_text(table(rows, "nice -n 10 uv run python "
                                  "benchmarks/torchvision_coverage.py --timeout 1200, the "
                                  "models measured later with --timeout 1200 to 3000 --only "
                                  "NAMES (ViT-L/16: --timeout 2400) "
                                  "--out OTHER.md, merged with --merge OTHER.json", host))
        return
    only = set(args.only.split(",")) if args.only else None
    command = "nice -n 10 uv run python benchmarks/torchvision_coverage.py" + (
        f" --max-params {args.max_params:g}" if args.max_params != 1e9 else "") + (
        f" --timeout {args.timeout:g}" if args.timeout != 1800 else "")
    with tempfile.TemporaryDirectory(prefix="coverage-") as tmp:
        names = torchvision.models.list_models(module=torchvision.models)
        todo = [n for n in names if (n in only if only is not None else n not in rows)]
        for params, name in sorted((parameters(n), n) for n in todo):  # smallest first
            row: dict = {"params": params}
            if params > args.max_params:
                row.update(result="not run", note=f"{params / 1e6:.1f}M parameters: over the "
                           f"{args.max_params / 1e6:.0f}M this host runs")
            else:
                size, error = smallest_input(name)
                row["input"] = size
                if size is None:
                    row.update(result="not run", note=f"runs on none of {SIZES}: {error}")
                else:
                    row.update(run_model(name, size, Path(tmp), args.timeout))
            rows[name] = row
            print(f"{name}: {row['result']} {row.get('seconds', '')} {row.get('note', '')}",
                  flush=True)
            store.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
            args.out.write_text(table(rows, command, host))


if __name__ == "__main__":
    main()
