"""Does screening rank candidates as fine-tuning does? For every fine-tuned trial of the studies
benchmarks/search_vs_rules.py ran, the pruned base model's recalibrated accuracy (what
screening scores, edgeslim.evaluators.screening) against the trial's accuracy after its
short fine-tune, and their rank correlation per study.

    uv run python benchmarks/screening_fidelity.py

Reads benchmarks/runs/search_vs_rules (run search_vs_rules.py first); writes
benchmarks/results/screening_fidelity.md and .json. Needs only CPU: about a second per trial.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import optuna
import torch
from scipy.stats import spearmanr

from edgeslim.compress import apply_pruning
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
    args = p.parse_args()
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
        points, start = [], time.perf_counter()
        for t in study.trials:
            if t.state != optuna.trial.TrialState.COMPLETE or not t.user_attrs.get("finetuned"):
                continue
            cand = Candidate.from_dict(t.user_attrs["candidate"])
            pruned = copy.deepcopy(base)
            apply_pruning(pruned, example, cand.ratios, cand.importance, cand.round_to)
            score = recalibrated_accuracy(pruned, data, CALIBRATION_IMAGES, VAL_IMAGES)
            points.append((score, t.user_attrs["val_acc"], t.number))
        rho = spearmanr([s for s, _, _ in points], [v for _, v, _ in points]).statistic
        rows.append({"study": name, "trials": len(points), "spearman": float(rho),
                     "seconds_per_trial": (time.perf_counter() - start) / len(points),
                     "points": points})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "points"}), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Screening score against fine-tuned accuracy", "",
             "Command: `uv run python benchmarks/screening_fidelity.py`", "",
             "Every fine-tuned trial (references included) of the studies in "
             "benchmarks/results/search_vs_rules.md: the pruned base model's accuracy on "
             f"{VAL_IMAGES} validation images after batch-norm recalibration on "
             f"{CALIBRATION_IMAGES} training images (the screening score), against its "
             "validation accuracy after the search's short fine-tune. Spearman rank correlation "
             "per study.", "",
             "| study | trials | Spearman | seconds per score |", "|---|---|---|---|"]
    lines += [f"| {r['study']} | {r['trials']} | {r['spearman']:.2f} | "
              f"{r['seconds_per_trial']:.2f} |" for r in rows]
    lines += ["", f"Median Spearman: {statistics.median(r['spearman'] for r in rows):.2f}"]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
