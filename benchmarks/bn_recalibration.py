"""Batch-norm statistics re-estimated on plain or on augmented training images.

Screening scores each pruned allocation by its accuracy once every batch norm's statistics are
estimated again on training images (edgeslim.evaluators.screening). This measures what the
images those statistics come from do, on the ResNet-20 CIFAR-10 bases of
benchmarks/recovery.py (those in its cache) and on the fine-tuned trials of a pi4 study
(benchmarks/pi4_study.py's work directory):

- each base's validation accuracy with the statistics training left, then re-estimated on
  plain training images, then on training images augmented as in training (zero-padded random
  crops, flips), with the search's number of images and with more;
- the study's fine-tuned trials: the screening score of each trial's pruned allocation (the
  base pruned, statistics re-estimated) both ways, its mean, and its Spearman rank
  correlation with the trial's validation accuracy after its fine-tune.

Validation split only: the test split is not read.

    uv run python benchmarks/bn_recalibration.py --archive ../shared/data/cifar10-train-jpeg.tar.gz

Writes benchmarks/results/bn_recalibration.md and .json. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import optuna
import torch
from _cifar import cifar_split  # benchmarks/_cifar.py, beside this script
from _recovery_base import MODEL, ROOT, WORK
from scipy.stats import spearmanr

from edgeslim.compress import apply_pruning, prunable_copy
from edgeslim.compress.importance import criterion
from edgeslim.data import load_dataset
from edgeslim.evaluators.recovery import BaseGradients
from edgeslim.evaluators.screening import recalibrate_batch_norm, recalibrated_accuracy
from edgeslim.models import build_model
from edgeslim.search.config import default_storage
from edgeslim.search.screening import CALIBRATION_IMAGES, VAL_IMAGES
from edgeslim.search.storage import SCREEN_SUFFIX, open_storage
from edgeslim.spaces import Candidate
from edgeslim.training import accuracy


def base_rows(data, sizes: list[int]) -> list[dict]:
    """Validation accuracy of every cached base: as trained, then re-estimated both ways."""
    bases = json.loads((ROOT / "results" / "recovery_bases.json").read_text())
    rows = []
    for name, record in bases.items():
        path = WORK / "cache" / "base" / name
        if not path.is_file():
            continue
        model = build_model(MODEL, data.in_channels, data.num_classes)
        model.load_state_dict(torch.load(path, weights_only=True))
        row = {"base": record["epochs"], "as trained": accuracy(model, data.val, data)}
        for images in sizes:
            for augment in (False, True):
                again = copy.deepcopy(model)
                recalibrate_batch_norm(again, data, images, augment=augment)
                row[f"{'augmented' if augment else 'plain'} {images}"] = \
                    accuracy(again, data.val, data)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def study_rows(workdir: Path, data) -> list[dict]:
    """Screening scores of each fine-tuned trial of the studies in ``workdir``, both ways,
    against the trial's fine-tuned validation accuracy."""
    storage = open_storage(default_storage(workdir))
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.endswith(SCREEN_SUFFIX):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        base = build_model(MODEL, data.in_channels, data.num_classes)
        base.load_state_dict(torch.load(study.user_attrs["paths"]["base_weights"],
                                        weights_only=True))
        example = torch.zeros(1, *data.input_shape)
        tuned = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                 and t.user_attrs.get("finetuned") and "duplicate_of" not in t.user_attrs
                 and t.user_attrs.get("finalist_of") is None]
        grads = BaseGradients(base.eval(), data, 0)  # as screening prunes
        scores = {False: [], True: []}
        for t in tuned:
            cand = Candidate.from_dict(t.user_attrs["candidate"])
            crit = criterion(cand.importance)
            pruned = prunable_copy(base, example).eval()
            apply_pruning(pruned, example, cand.ratios, cand.importance, cand.round_to,
                          batches=grads.batches() if crit.per_sample else None,
                          gradients=grads() if crit.needs_gradients and not crit.per_sample
                          else None)
            for augment in (False, True):
                scores[augment].append(recalibrated_accuracy(
                    copy.deepcopy(pruned), data, CALIBRATION_IMAGES, VAL_IMAGES,
                    augment=augment))
        tuned_acc = [t.user_attrs["val_acc"] for t in tuned]
        row = {"study": summary.study_name, "trials": len(tuned)}
        for augment, name in ((False, "plain"), (True, "augmented")):
            row[f"{name} mean score"] = statistics.mean(scores[augment])
            row[f"{name} spearman"] = float(spearmanr(scores[augment], tuned_acc).statistic)
        row["points"] = list(zip(scores[False], scores[True], tuned_acc))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "points"}), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive", type=Path, required=True)
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "pi4_study_180")
    p.add_argument("--images", default=f"{CALIBRATION_IMAGES},4096",
                   help="calibration image counts for the bases, comma-separated")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bn_recalibration.md")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sizes = [int(n) for n in args.images.split(",")]
    root = cifar_split(args.archive, 4000, 1000)
    data = load_dataset(f"imagefolder:{root}", Path("."), WORK / "cache" / "data", 0)
    bases, studies = base_rows(data, sizes), study_rows(args.workdir, data)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"bases": bases, "studies": studies}, indent=1) + "\n")
    cols = ["as trained", *(f"{w} {n}" for n in sizes for w in ("plain", "augmented"))]
    lines = ["# Batch-norm statistics from plain or augmented training images", "",
             "Command: `uv run python benchmarks/bn_recalibration.py "
             + " ".join(sys.argv[1:]) + "`", "",
             f"Host: {torch.get_num_threads()} threads, torch {torch.__version__}. Data: "
             "benchmarks/recovery.py's split (36,000 training, 4,000 validation images). "
             "Validation accuracy in PyTorch, in percent, of each ResNet-20 base: with the "
             "running statistics its training left, then with every batch norm's statistics "
             "re-estimated on N plain training images, or on N training images augmented as "
             "in training (random crops of the zero-padded image, flips).", "",
             "| base (epochs) | " + " | ".join(c.replace("plain", "plain,").replace(
                 "augmented", "augmented,") for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    lines += [f"| {r['base']} | " + " | ".join(f"{100 * r[c]:.2f}" for c in cols) + " |"
              for r in bases]
    lines += ["", f"Screening of the fine-tuned search trials of {args.workdir.name} (finalists "
              f"left out): each trial's allocation pruned from the base, statistics "
              f"re-estimated on {CALIBRATION_IMAGES} images, accuracy on {VAL_IMAGES} "
              "validation images (the screening score); its mean, and the Spearman rank "
              "correlation of the scores with the trials' validation accuracy after their "
              "short fine-tune.", "",
              "| study | trials | mean score, plain | mean score, augmented | Spearman, plain "
              "| Spearman, augmented |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['study']} | {r['trials']} | {100 * r['plain mean score']:.2f} | "
              f"{100 * r['augmented mean score']:.2f} | {r['plain spearman']:.2f} | "
              f"{r['augmented spearman']:.2f} |" for r in studies]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
