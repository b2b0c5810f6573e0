"""Does screening rank candidates as fine-tuning does, and with how few images? For every
fine-tuned trial of the studies in a work directory (benchmarks/search_vs_rules.py's by
default), the pruned base model's recalibrated accuracy (what screening scores,
edgeslim.evaluators.screening) against the trial's accuracy after its short fine-tune, and
their rank correlation per study, for each number of batch-norm calibration images in
``--images`` (the search uses ``CALIBRATION_IMAGES``).

    uv run python benchmarks/screening_fidelity.py [--workdir DIR] [--images 256,512,1024]

Writes benchmarks/results/screening_fidelity.md and .json. Needs only CPU: about a second
per trial and calibration size.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch
from scipy.stats import spearmanr

from edgeslim.compress import apply_pruning
from edgeslim.cores import training_threads
from edgeslim.data import load_dataset
from edgeslim.evaluators.screening import recalibrated_accuracy
from edgeslim.models import build_model
from edgeslim.search.config import default_storage
from edgeslim.search.screening import CALIBRATION_IMAGES, VAL_IMAGES
from edgeslim.search.storage import SCREEN_SUFFIX, open_storage
from edgeslim.spaces import Candidate

ROOT = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "search_vs_rules")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "screening_fidelity.md")
    p.add_argument("--images", default=str(CALIBRATION_IMAGES),
                   help="calibration image counts to compare, comma-separated")
    args = p.parse_args()
    sizes = [int(n) for n in args.images.split(",")]
    torch.set_num_threads(training_threads())  # the idle cores, as a search does
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(default_storage(args.workdir))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)
             if not s.study_name.endswith(SCREEN_SUFFIX)]
    rows, bases = [], {}
    for name in sorted(names):
        study = optuna.load_study(study_name=name, storage=storage)
        attrs = study.user_attrs
        paths = attrs["paths"]
        if paths["base_weights"] not in bases:
            data = load_dataset(attrs["setup"]["dataset"], Path(paths["data_dir"]),
                                args.workdir / "cache" / "data")
            state = torch.load(paths["base_weights"], weights_only=True)
            model = build_model(attrs["setup"]["model"], data.in_channels, data.num_classes)
            model.load_state_dict(state)
            bases[paths["base_weights"]] = (model.eval(), data)
        base, data = bases[paths["base_weights"]]
        example = torch.zeros(1, *data.input_shape)
        tuned = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                 and t.user_attrs.get("finetuned") and "duplicate_of" not in t.user_attrs]
        if len(tuned) < 3:
            continue
        row = {"study": name, "trials": len(tuned), "spearman": {}, "seconds_per_trial": {},
               "points": {}}
        for images in sizes:
            points, start = [], time.perf_counter()
            for t in tuned:
                cand = Candidate.from_dict(t.user_attrs["candidate"])
                pruned = copy.deepcopy(base)
                apply_pruning(pruned, example, cand.ratios, cand.importance, cand.round_to)
                score = recalibrated_accuracy(pruned, data, images, VAL_IMAGES)
                points.append((score, t.user_attrs["val_acc"], t.number))
            rho = spearmanr([s for s, _, _ in points], [v for _, v, _ in points]).statistic
            row["spearman"][images] = float(rho)
            row["seconds_per_trial"][images] = (time.perf_counter() - start) / len(points)
            row["points"][images] = points
        # The same screening, with each number of images, over the allocations the study
        # screened: how far fewer images move the ranking screening makes.
        try:
            screen = optuna.load_study(study_name=name + SCREEN_SUFFIX, storage=storage)
        except KeyError:
            screen = None
        done = [] if screen is None else [
            t for t in screen.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) >= 3:
            scores = {}
            for images in sizes:
                scores[images] = []
                for t in done:
                    cand = Candidate.from_dict(t.user_attrs["candidate"])
                    pruned = copy.deepcopy(base)
                    apply_pruning(pruned, example, cand.ratios, cand.importance, cand.round_to)
                    scores[images].append(recalibrated_accuracy(pruned, data, images,
                                                                VAL_IMAGES))
            row["screened"] = len(done)
            row["against_most"] = {n: float(spearmanr(scores[n], scores[max(sizes)]).statistic)
                                   for n in sizes}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "points"}), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    command = "uv run python benchmarks/screening_fidelity.py " + " ".join(sys.argv[1:])
    lines = ["# Screening score against fine-tuned accuracy", "",
             f"Command: `{command.strip()}`", "",
             f"Every fine-tuned trial (references included) of the studies in {args.workdir}: "
             f"the pruned base model's accuracy on {VAL_IMAGES} validation images after "
             "batch-norm recalibration on N training images (the screening score), against "
             "its validation accuracy after the search's short fine-tune. Spearman rank "
             "correlation per study and N, and the seconds one score took (recalibration and "
             f"evaluation). The search recalibrates on {CALIBRATION_IMAGES} images.", "",
             "| study | trials | " + " | ".join(f"Spearman, {n} images" for n in sizes)
             + " | " + " | ".join(f"s / score, {n}" for n in sizes) + " |",
             "|---|---|" + "---|" * (2 * len(sizes))]
    lines += [f"| {r['study']} | {r['trials']} | "
              + " | ".join(f"{r['spearman'][n]:.2f}" for n in sizes) + " | "
              + " | ".join(f"{r['seconds_per_trial'][n]:.2f}" for n in sizes) + " |"
              for r in rows]
    lines += ["", "Median Spearman: " + ", ".join(
        f"{statistics.median(r['spearman'][n] for r in rows):.2f} with {n} images"
        for n in sizes)]
    ranked = [r for r in rows if "against_most" in r]
    if ranked:
        lines += ["", f"The allocations each study screened, scored again with each number of "
                  f"images: Spearman of those scores against the scores with {max(sizes)} "
                  "images (how far fewer images move the ranking screening makes).", "",
                  "| study | allocations | " + " | ".join(f"{n} images" for n in sizes) + " |",
                  "|---|---|" + "---|" * len(sizes)]
        lines += [f"| {r['study']} | {r['screened']} | "
                  + " | ".join(f"{r['against_most'][n]:.2f}" for n in sizes) + " |"
                  for r in ranked]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
