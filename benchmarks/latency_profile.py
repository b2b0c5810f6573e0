"""Does a device profile predict latency, and do MACs? Measured on candidates the profile has
not seen.

Builds a latency profile of this machine (`optimize profile`'s code), then draws pruned
candidates with random per-group ratios (another seed than the profile's), exports each in every
quantization mode, times them in onnxruntime (together, in turns: `time_interleaved`; in windows
before, during and after the profile is made) and compares with the profile's prediction, and
with MACs as a predictor (Spearman rank correlation only: MACs have no unit of time; and the
error of the best line through them, fitted on these very candidates, which flatters MACs).

    uv run python benchmarks/latency_profile.py                  # ResNet-20, fp32 and int8
    uv run python benchmarks/latency_profile.py --model mobilenetv2 --threads 2

Writes benchmarks/results/latency_profile_<model>_<threads>t.md and .json. Takes 5 to 15
minutes on 2 CPU cores; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from scipy.stats import spearmanr

from edgeslim.compress.prune import apply_pruning, prunable_groups
from edgeslim.compress.quantize import quantize_onnx
from edgeslim.evaluators import count_macs
from edgeslim.evaluators.latency import time_interleaved
from edgeslim.evaluators.profile import load_profile
from edgeslim.evaluators.profile_build import ROUNDS, ProfileOptions, build_profile
from edgeslim.export import write_onnx
from edgeslim.fsutil import atomic_write_json
from edgeslim.models import build_model

ROOT = Path(__file__).resolve().parent


WINDOW_SECONDS = 0.5  # per candidate file, in each of the two timing windows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--input-shape", default="3x32x32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", default="none,int8_static")
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    shape = tuple(int(v) for v in args.input_shape.split("x"))
    modes = tuple(args.modes.split(","))
    out = args.out or ROOT / "results" / f"latency_profile_{args.model}_{args.threads}t.md"

    opts = ProfileOptions(model=args.model, input_shape=shape, modes=modes,
                          threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_model(args.model, shape[0], 10).eval()
        example = torch.zeros(1, *shape)
        groups = prunable_groups(base, example, 10, opts.round_to)
        grid = np.round(np.arange(0, opts.max_ratio + 1e-9, opts.step), 10)
        rng = np.random.default_rng(args.seed)
        rows, files = [], []
        for i in range(args.candidates):
            model = copy.deepcopy(base)
            ratios = {g.name: float(rng.choice(grid)) for g in groups}
            apply_pruning(model, example, ratios, "l1", opts.round_to)
            macs = count_macs(model, example).value
            float_path = write_onnx(model, example, tmp / f"c{i}.onnx")
            for mode in modes:
                calib = [np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)]
                path = quantize_onnx(float_path, tmp / f"c{i}-{mode}.onnx", mode,
                                     iter(calib) if mode == "int8_static" else None)
                files.append((path, shape))
                rows.append({"candidate": i, "mode": mode, "macs": macs})
        # Measured latency: all candidate files timed together, in turns, in a window before
        # the profile is made, one after each of its passes over its own models and one after
        # it, each file keeping its fastest: candidates and profile are timed in the same
        # spells of other work on a shared host.
        seconds = WINDOW_SECONDS * len(files)
        windows = [time_interleaved(files, args.threads, seconds)]
        window_seconds = 0.0

        def window_after_each_model_pass(phase: str, done: int, total: int) -> None:
            nonlocal window_seconds
            if phase == "models":
                t0 = time.perf_counter()
                windows.append(time_interleaved(files, args.threads, seconds))
                window_seconds += time.perf_counter() - t0

        start = time.perf_counter()
        built = build_profile(opts, progress=window_after_each_model_pass)
        profile_seconds = time.perf_counter() - start - window_seconds  # the profile's own
        (tmp / "profile.json").write_text(json.dumps(built))
        profile = load_profile(tmp / "profile.json")
        windows.append(time_interleaved(files, args.threads, seconds))
        measured = np.min([[t.latency_ms for t in w] for w in windows], axis=0)
        for row, (path, _), ms in zip(rows, files, measured, strict=True):
            row["measured_ms"] = float(ms)
            row["predicted_ms"] = profile.predict_ms(onnx.load(str(path)))
    summary = {}
    for mode in modes:
        r = [row for row in rows if row["mode"] == mode]
        meas = np.array([row["measured_ms"] for row in r])
        pred = np.array([row["predicted_ms"] for row in r])
        macs = np.array([row["macs"] for row in r], dtype=float)
        slope, intercept = np.polyfit(macs, meas, 1)
        summary[mode] = {
            "profile_median_abs_error": float(np.median(np.abs(pred - meas) / meas)),
            "profile_max_abs_error": float(np.max(np.abs(pred - meas) / meas)),
            "profile_spearman": float(spearmanr(pred, meas).statistic),
            "macs_spearman": float(spearmanr(macs, meas).statistic),
            "macs_line_median_abs_error": float(np.median(
                np.abs(intercept + slope * macs - meas) / meas)),
            "profile_own_error": profile.error[mode]["median_abs_error"],
        }
    lines = [
        f"# Latency prediction: {args.model} {args.input_shape}, {args.threads} thread(s)", "",
        f"Command: `uv run python benchmarks/latency_profile.py --model {args.model} "
        f"--input-shape {args.input_shape} --threads {args.threads} --modes {args.modes} "
        f"--candidates {args.candidates}`", "",
        f"Host: {platform.machine()}, {profile.host.get('cpu', '')}, onnxruntime "
        f"{onnxruntime.__version__}. Profile: {len(next(iter(profile.layers.values())))} layer "
        f"configurations per mode, built in {profile_seconds / 60:.1f} min. "
        f"{args.candidates} candidates pruned with random per-group ratios (seed {args.seed}, "
        "not the profile's), predicted from the profile and timed together (in turns of one "
        f"untimed and five timed runs, {WINDOW_SECONDS:g} s per file, in a window before the "
        f"profile is made, one after each of its {ROUNDS} passes over its models and one after "
        "it, fastest kept; latency is the 10th percentile of a file's run times).",
        "", "| mode | profile: median error | max error | Spearman | MACs: Spearman | "
        "best MACs line: median error |", "|---|---|---|---|---|---|",
    ]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {100 * s['profile_median_abs_error']:.1f}% | "
                     f"{100 * s['profile_max_abs_error']:.1f}% | {s['profile_spearman']:.2f} | "
                     f"{s['macs_spearman']:.2f} | {100 * s['macs_line_median_abs_error']:.1f}% |")
    lines += ["", "| candidate | mode | MACs | measured ms | predicted ms |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['candidate']} | {r['mode']} | {r['macs'] / 1e6:.2f}M | "
              f"{r['measured_ms']:.4f} | {r['predicted_ms']:.4f} |" for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    atomic_write_json({"summary": summary, "rows": rows}, out.with_suffix(".json"))
    print("\n".join(lines[:10 + len(modes)]))


if __name__ == "__main__":
    main()
