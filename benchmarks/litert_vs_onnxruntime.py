"""The same CIFAR-10 candidates deployed in onnxruntime and in LiteRT: size, accuracy, latency,
and what int8 costs in each runtime.

The candidates are the fine-tuned trials of the default pi4 study (benchmarks/pi4_study.py,
ResNet-20, budgets/pi4.yaml, onnxruntime). Each is judged against the same budget with
``runtime: litert`` as ``optimize show --budget`` judges it: its LiteRT file is made again from
the trial's fine-tuned float weights (LiteRT's own int8 with the same 256 calibration images),
without training. For the int8 trials, the float file of the same weights is made in each
runtime too, so that the int8 cost is measured against the float candidate, not the base.
Latency: both files timed on this host with one thread, one after the other (a Pi 4 would
give other figures; the ratio is what this table shows).

    uv run python benchmarks/litert_vs_onnxruntime.py

Writes benchmarks/results/litert_vs_onnxruntime.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from edgeslim._yaml import read_yaml
from edgeslim.budget import Runtime, parse_budget
from edgeslim.evaluators import onnx_accuracy
from edgeslim.evaluators.latency import measure_latency
from edgeslim.evaluators.litert import litert_accuracy, litert_latency
from edgeslim.export import write_onnx
from edgeslim.litert import onnx_to_tflite
from edgeslim.packing import restore_onnx
from edgeslim.search.config import default_storage
from edgeslim.search.retarget import Retarget, download_trial_artifact, judged_trials
from edgeslim.search.storage import load_study
from edgeslim.ship.exporter import rebuild_model

ROOT = Path(__file__).resolve().parent
BUDGET = ROOT.parent / "budgets" / "pi4.yaml"


def litert_budget():
    """budgets/pi4.yaml deployed in LiteRT: the same limits, one thread."""
    raw, _ = read_yaml(BUDGET)
    raw["runtime"] = {"name": "litert", "threads": 1}
    return parse_budget(raw, source=f"{BUDGET.name} with runtime litert", name="pi4-litert")


def ort_file(study, trial, folder: Path) -> Path:
    """The trial's stored file as onnxruntime runs it."""
    name = trial.user_attrs.get("artifact:model.eslim") and "model.eslim" or "model.onnx"
    path = download_trial_artifact(study, trial, name, folder)
    return restore_onnx(path, folder / "restored.onnx") if path.suffix == ".eslim" else path


def float_files(study, trial, retarget, folder: Path) -> tuple[Path, Path]:
    """The float ONNX and float LiteRT files of the trial's fine-tuned weights."""
    model = rebuild_model(study, trial, download_trial_artifact(study, trial, "model_state.pt",
                                                                folder))
    onnx = write_onnx(model, torch.zeros(1, *retarget.data.input_shape), folder / "float.onnx")
    return onnx, onnx_to_tflite(onnx, folder / "float.tflite")


def row(study, trial, retarget, data, folder: Path) -> dict:
    verdict = retarget.judge(trial)
    attrs = trial.user_attrs
    out = {"trial": trial.number, "stages": attrs["stage_order"], "quantize": attrs["quantize"],
           "finalist": "finalist_of" in attrs, "reason": verdict.reason}
    if verdict.reason is not None:
        return out
    onnx = ort_file(study, trial, folder)
    tflite = verdict.files["runnable"]
    shape = tuple(data.input_shape)
    out.update(
        ort_size=attrs["size_bytes"], litert_size=verdict.values["size_bytes"],
        ort_val=attrs["val_acc"], litert_val=verdict.values["val_acc"],
        ort_test=onnx_accuracy(onnx, data.test, data, threads=1),
        litert_test=litert_accuracy(tflite, data.test, data, "litert", 1),
        ort_ms=measure_latency(onnx, None, 1).latency_ms,
        litert_ms=litert_latency(tflite, shape, "litert", 1).latency_ms)
    if attrs["quantize"] == "int8_static":
        f_onnx, f_tflite = float_files(study, trial, retarget, folder)
        out.update(
            ort_float_val=onnx_accuracy(f_onnx, data.val, data, threads=1),
            ort_float_test=onnx_accuracy(f_onnx, data.test, data, threads=1),
            litert_float_val=litert_accuracy(f_tflite, data.val, data, "litert", 1),
            litert_float_test=litert_accuracy(f_tflite, data.test, data, "litert", 1))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def write(results: dict, out: Path) -> None:
    rows = [r for r in results["rows"] if r["reason"] is None]
    lines = [
        "# The same CIFAR-10 candidates in onnxruntime and in LiteRT",
        "",
        "Command:",
        "",
        "    " + results["command"],
        "",
        f"Host: {platform.machine()}, {results['cores']} cores, torch {torch.__version__}. "
        f"Candidates: the fine-tuned trials of the study in {results['workdir']} "
        "(benchmarks/results/pi4_study.md: ResNet-20 on CIFAR-10, budgets/pi4.yaml), made "
        "again in LiteRT from each trial's float weights without training, as "
        "`optimize show --budget` does. Validation: 4,000 images; test: 10,000 images no "
        "choice reads. Latency: batch 1, one thread, this host, the two files timed one after "
        "the other. Size: the deployable file, which for a clustered candidate is the packed "
        "file in both runtimes (packed from the int8 QDQ file for onnxruntime, from the float "
        "file LiteRT converts for LiteRT, so its codebooks are float there).",
        "",
        "| trial | stages | quantize | size ORT / LiteRT | val ORT / LiteRT | test ORT / LiteRT "
        "| ms ORT / LiteRT |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trial']}{' +' if r['finalist'] else ''} | {r['stages']} | {r['quantize']} | "
            f"{r['ort_size'] / 1e3:.1f} / {r['litert_size'] / 1e3:.1f} kB | "
            f"{_pct(r['ort_val'])} / {_pct(r['litert_val'])} | "
            f"{_pct(r['ort_test'])} / {_pct(r['litert_test'])} | "
            f"{r['ort_ms']:.3f} / {r['litert_ms']:.3f} |")
    skipped = [r for r in results["rows"] if r["reason"] is not None]
    if skipped:
        lines += ["", "Not judged in LiteRT: " + "; ".join(
            f"trial {r['trial']} ({r['reason']})" for r in skipped) + "."]
    int8 = [r for r in rows if "ort_float_val" in r]
    lines += ["", "## What int8 static costs over the float file of the same weights", "",
              "| trial | stages | val ORT | val LiteRT | test ORT | test LiteRT |",
              "|---|---|---|---|---|---|"]
    for r in int8:
        lines.append(
            f"| {r['trial']} | {r['stages']} | {_pts(r['ort_val'] - r['ort_float_val'])} | "
            f"{_pts(r['litert_val'] - r['litert_float_val'])} | "
            f"{_pts(r['ort_test'] - r['ort_float_test'])} | "
            f"{_pts(r['litert_test'] - r['litert_float_test'])} |")
    if int8:
        def mean(key: str, ref: str) -> str:
            xs = [r[key] - r[ref] for r in int8]
            return f"{100 * statistics.mean(xs):+.2f} (from {100 * min(xs):+.2f} to " \
                   f"{100 * max(xs):+.2f})"
        lines += ["", f"Mean over {len(int8)} int8 trials, in points: val ORT "
                  f"{mean('ort_val', 'ort_float_val')}, val LiteRT "
                  f"{mean('litert_val', 'litert_float_val')}; test ORT "
                  f"{mean('ort_test', 'ort_float_test')}, test LiteRT "
                  f"{mean('litert_test', 'litert_float_test')}."]
    ratios = [r["litert_ms"] / r["ort_ms"] for r in rows]
    sizes = [r["litert_size"] / r["ort_size"] for r in rows]
    agree = [abs(r["litert_val"] - r["ort_val"]) for r in rows]
    lines += ["", f"Over the {len(rows)} candidates: LiteRT's latency is "
              f"{statistics.median(ratios):.2f}x onnxruntime's (median; "
              f"{min(ratios):.2f}x to {max(ratios):.2f}x), its file "
              f"{statistics.median(sizes):.2f}x the size (median), and the validation "
              f"accuracies differ by at most {100 * max(agree):.2f} points.", ""]
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "pi4_study")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "results" / "litert_vs_onnxruntime.md")
    parser.add_argument("--first", type=int, help="only the first N trials (a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = load_study(None, default_storage(args.workdir))
    budget = litert_budget()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        retarget = Retarget.open(study, budget, Path(tmp) / "judged")
        for trial in judged_trials(study)[:args.first]:
            with tempfile.TemporaryDirectory(dir=tmp) as folder:
                rows.append(row(study, trial, retarget, retarget.data, Path(folder)))
                print(json.dumps(rows[-1]), flush=True)
    write({"command": "uv run python benchmarks/litert_vs_onnxruntime.py "
                      + " ".join(sys.argv[1:]),
           "cores": os.cpu_count(), "workdir": os.path.relpath(args.workdir),
           "runtime": vars(Runtime(name="litert", threads=1)), "rows": rows}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
