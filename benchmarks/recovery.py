"""How much accuracy a pruned ResNet-20 keeps on CIFAR-10, and which cheap steps recover it.

Everything runs on fixed pruning allocations, so that only the method changes:

- ``uniform-2x``: one ratio for every group, the smallest that meets budgets/pi4.yaml's params
  and MACs limits (half of each);
- ``searched-2x``: the best of ``--screen`` allocations the search's screening samples under the
  same limits (GP sampler, ranked by accuracy after batch-norm recalibration, no training);
- ``uniform-4x`` and ``searched-4x``: the same at a quarter of the MACs (no params limit).

Each configuration prunes a copy of the base model, applies its recovery steps, fine-tunes it
(``--epochs``) and exports it; accuracy is the float ONNX file's in onnxruntime, on the
validation split (carved from the training images, used for every choice) and on the test
split (10,000 images the search never sees, reported only). int8 static variants quantize that
same float file with other calibration settings.

    uv run python benchmarks/recovery.py --archive ../shared/data/cifar10-train-jpeg.tar.gz \\
        --part base
    uv run python benchmarks/recovery.py --archive ... --part run --seeds 0,1,2 \\
        --allocs searched-2x --configs "today,taylor" --epochs 1 [--quant]
    uv run python benchmarks/recovery.py --archive ... --part table

(the runs behind the committed table are listed in it).

Every run is appended to benchmarks/runs/recovery/<base>/rows.jsonl, one folder per base
model (a rerun skips what is there); ``--part table`` writes benchmarks/results/recovery.md and
.json from the current base's rows. The base is trained once per checkout and cached under
benchmarks/runs/recovery/cache/base (``--part base`` records it in
benchmarks/results/recovery_bases.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from _recovery_base import (
    MODEL,
    ROOT,
    WORK,
    add_base_arguments,
    base_row,
    epochs_label,
    setup,
    write_bases,
)

from edgeslim.budget import Runtime, load_budget
from edgeslim.compress import quantize_onnx, weight_layers
from edgeslim.evaluators import MODEL_MEASURES, StagedEvaluator, onnx_accuracy
from edgeslim.evaluators.recovery import Recovery
from edgeslim.evaluators.staged import calibration_batches
from edgeslim.search.config import SearchConfig, SpaceOptions
from edgeslim.search.references import fit_uniform_ratio
from edgeslim.search.repair import StaticCheck
from edgeslim.search.samplers import make_sampler
from edgeslim.search.screening import ScreenObjective, run_screening
from edgeslim.search.study import build_space
from edgeslim.spaces import Candidate
from edgeslim.training import TrainRecipe

# The fine-tune the search used before this benchmark: one-cycle SGD peaking at 0.05 with a
# tenth of warm-up, distilled from the base model (alpha 0.5, temperature 4), no recovery.
TODAY = TrainRecipe(lr=0.05, warmup_fraction=0.1, distill_alpha=0.5)
NO_RECOVERY = Recovery(reconstruct=False, recalibrate_bn=False)


@dataclass(frozen=True)
class Config:
    """One way of pruning and recovering: the criterion, the steps before the fine-tune, and
    the fine-tune's recipe (fields of ``TrainRecipe`` changed from ``TODAY``)."""

    importance: str = "l2"
    recovery: Recovery = NO_RECOVERY
    recipe: dict[str, float] = field(default_factory=dict)
    clusters: int | None = None  # prune > cluster (k per layer) > int8 static, when set

    def candidate(self, ratios: dict[str, float], layers: list[str]) -> Candidate:
        if self.clusters is None:
            return Candidate(order=("prune",), prune_ratios=tuple(ratios.items()),
                             importance=self.importance)
        return Candidate(order=("prune", "cluster", "quantize"),
                         prune_ratios=tuple(ratios.items()), importance=self.importance,
                         cluster_counts=tuple((n, self.clusters) for n in layers),
                         quantize="int8_static")

    def train_recipe(self, epochs: float, seed: int) -> TrainRecipe:
        return dataclasses.replace(TODAY, epochs=epochs, seed=seed, **self.recipe)


RECON = Recovery(reconstruct=True, recalibrate_bn=False)
BN = Recovery(reconstruct=False, recalibrate_bn=True)
BOTH = Recovery(reconstruct=True, recalibrate_bn=True)
# One change at a time from today's fine-tune (``today``).
ABLATION: dict[str, Config] = {
    "today": Config(),
    "+bn": Config(recovery=BN),
    "+reconstruct": Config(recovery=RECON),
    "+reconstruct+bn": Config(recovery=BOTH),
    "l1": Config(importance="l1"),
    "lamp": Config(importance="lamp"),
    "bn_scale": Config(importance="bn_scale"),
    "taylor": Config(importance="taylor"),
    "hessian": Config(importance="hessian"),
    "kd 0": Config(recipe={"distill_alpha": 0.0}),
    "kd 0.9": Config(recipe={"distill_alpha": 0.9}),
    "kd 1.0": Config(recipe={"distill_alpha": 1.0}),
    "kd 0.9 T2": Config(recipe={"distill_alpha": 0.9, "distill_temperature": 2.0}),
    "+attention 1000": Config(recipe={"distill_features": 1000.0}),
    "lr 0.02": Config(recipe={"lr": 0.02}),
    "lr 0.1": Config(recipe={"lr": 0.1}),
    "lr 0.2": Config(recipe={"lr": 0.2}),
    "lr 0.01": Config(recipe={"lr": 0.01}),
}
# Combinations of what the single changes above suggest: a reconstructed start kept by a
# gentler fine-tune, and the criterion and distillation that helped.
COMBINED: dict[str, Config] = {
    "+reconstruct lr 0.01": Config(recovery=RECON, recipe={"lr": 0.01}),
    "+reconstruct lr 0.02": Config(recovery=RECON, recipe={"lr": 0.02}),
    "taylor kd 0.9": Config(importance="taylor", recipe={"distill_alpha": 0.9}),
    # The shipped fine-tune at a higher and a lower peak rate: one epoch preferred 0.05, but a
    # longer fine-tune may afford more (learning-rate rewinding, Renda et al. 2020).
    "taylor kd 0.9 lr 0.1": Config(importance="taylor",
                                   recipe={"distill_alpha": 0.9, "lr": 0.1}),
    "taylor kd 0.9 lr 0.02": Config(importance="taylor",
                                    recipe={"distill_alpha": 0.9, "lr": 0.02}),
    "taylor kd 0.9 +reconstruct lr 0.02": Config(importance="taylor", recovery=RECON,
                                                 recipe={"distill_alpha": 0.9, "lr": 0.02}),
}
CONFIGS: dict[str, Config] = {**ABLATION, **COMBINED}
# Calibration variants of int8 static, applied to every run's float file: (method, images).
QUANT = {"minmax 256": ("minmax", 256), "minmax 1024": ("minmax", 1024),
         "percentile 1024": ("percentile", 1024), "entropy 1024": ("entropy", 1024)}


def allocations(data, base, screen: int, run: Path) -> dict[str, dict[str, float]]:
    """The fixed allocations (see the module docstring), computed once for the base and kept
    in its run directory."""
    path = run / "allocations.json"
    if path.is_file():
        return json.loads(path.read_text())
    example = torch.zeros(1, *data.input_shape)
    counted = {m: float(MODEL_MEASURES[m](base.model, example).value) for m in ("params", "macs")}
    config = SearchConfig(budget=load_budget(ROOT.parent / "budgets" / "pi4.yaml"), model=MODEL,
                          space=SpaceOptions(stages=("prune",)))
    space = build_space(config, base.model, data)
    out = {}
    for label, limits in (("2x", {"params": counted["params"] / 2, "macs": counted["macs"] / 2}),
                          ("4x", {"macs": counted["macs"] / 4})):
        ratio = fit_uniform_ratio(base.model, example, space, limits)
        out[f"uniform-{label}"] = {g.name: ratio for g in space.pruning.groups}
        study = optuna.create_study(direction="maximize", sampler=make_sampler("gp", 0))
        objective = ScreenObjective(space, base.model, data, StaticCheck(base.model, example,
                                                                         limits), seed=0)
        run_screening(study, objective, screen)
        best = Candidate.from_dict(study.best_trial.user_attrs["candidate"])
        out[f"searched-{label}"] = best.ratios
    path.write_text(json.dumps(out, indent=1))
    return out


def done_keys(rows: Path) -> set[str]:
    if not rows.is_file():
        return set()
    return {json.loads(line)["key"] for line in rows.read_text().splitlines() if line.strip()}


def run_one(data, base, alloc: str, ratios: dict[str, float], name: str, config: Config,
            epochs: float, seed: int, quant: bool) -> dict:
    """Prunes, recovers, fine-tunes and measures one configuration (see the module
    docstring)."""
    evaluator = StagedEvaluator(base.model, data, config.train_recipe(epochs, seed),
                                Runtime(threads=2), seed=seed, recovery=config.recovery)
    candidate = config.candidate(ratios, list(weight_layers(base.model)))
    example = torch.zeros(1, *data.input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        built = evaluator.build(candidate, Path(tmp))
        build_seconds = time.perf_counter() - start
        row = {"alloc": alloc, "config": name, "epochs": epochs, "seed": seed,
               "macs": MODEL_MEASURES["macs"](built.model, example).value,
               "params": MODEL_MEASURES["params"](built.model, example).value,
               "val": onnx_accuracy(built.runnable, data.val, data),
               "test": onnx_accuracy(built.runnable, data.test, data),
               "size_bytes": built.deployable.stat().st_size,
               "build_seconds": round(build_seconds, 2),
               "finetune_seconds": round(sum(s.seconds for s in built.finetunes), 2),
               **{k: v for k, v in built.info.items() if k.endswith("_seconds")}}
        if quant and candidate.quantize == "none":
            for label, (method, images) in QUANT.items():
                q = quantize_onnx(built.runnable, Path(tmp) / "int8.onnx", "int8_static",
                                  iter(calibration_batches(data, images, seed)), method)
                row[f"int8 {label}"] = {"val": onnx_accuracy(q, data.val, data),
                                        "test": onnx_accuracy(q, data.test, data)}
    return row


def run_part(args, data, base, allocs, configs: dict[str, Config], epochs: list[float],
             quant: bool, rows: Path) -> None:
    have = done_keys(rows)
    for seed in args.seeds:
        for e in epochs:
            for alloc in args.allocs:
                for name, config in configs.items():
                    key = f"{alloc}|{name}|{e}|{seed}"
                    if key in have:
                        continue
                    row = run_one(data, base, alloc, allocs[alloc], name, config, e, seed,
                                  quant)
                    row["key"] = key
                    row["command"] = shlex.join(sys.argv[1:])
                    with rows.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{key}: val {100 * row['val']:.2f} test {100 * row['test']:.2f} "
                          f"({row['build_seconds']:.0f} s)", flush=True)


def sections(rows_path: Path) -> list[tuple[str, str, list[str]]]:
    from _recovery_table import ablation_table, curve_table, quant_table

    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    base = json.loads((rows_path.parent / "base.json").read_text())
    pi4 = ["uniform-2x", "searched-2x"]
    return [
        ("One method at a time, 1 fine-tune epoch",
         "Each row changes one thing from today's fine-tune (criterion l2, no recovery step, "
         "distillation alpha 0.5 at temperature 4, peak learning rate 0.05); the columns vs "
         "today are the mean difference in points. Batch-norm recalibration (+bn) changes "
         "nothing once a fine-tune runs: training normalises with each batch's own statistics "
         "and its running averages replace the recalibrated ones, so +bn's runs end where "
         "today's do, and +reconstruct+bn's where +reconstruct's do.",
         ablation_table(rows, pi4, list(ABLATION), 1.0, "today")),
        ("Combinations, 1 fine-tune epoch",
         "Several changes at once, against today's fine-tune.",
         ablation_table(rows, pi4, ["today", *COMBINED], 1.0, "today")),
        ("The shipped fine-tune's peak rate, 9 fine-tune epochs",
         "The shipped fine-tune (Taylor, distillation 0.9, peak 0.05) against the same at "
         "other peak rates, nine epochs: the finalists' length.",
         ablation_table(rows, pi4, ["taylor kd 0.9", "taylor kd 0.9 lr 0.1",
                                    "taylor kd 0.9 lr 0.02"], 9.0, "taylor kd 0.9")),
        ("Drop against the base by fine-tune epochs",
         "Test accuracy of the float file minus the base's, in points.",
         curve_table(rows, pi4 + ["uniform-4x", "searched-4x"], list(CONFIGS), base)),
        ("What int8 static costs",
         "int8 static (QDQ, per-channel weights) of the same float file, minus the float "
         "file's accuracy, in points, by calibration method and images.",
         quant_table(rows, pi4)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--part", choices=("base", "run", "table"), required=True)
    add_base_arguments(parser)
    parser.add_argument("--screen", type=int, default=48)
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")],
                        default=[0, 1, 2])
    parser.add_argument("--allocs", type=lambda s: s.split(","),
                        default=["uniform-2x", "searched-2x"])
    parser.add_argument("--configs", type=lambda s: s.split(","), default=list(ABLATION))
    parser.add_argument("--epochs", type=lambda s: [float(v) for v in s.split(",")],
                        default=[1.0])
    parser.add_argument("--quant", action="store_true",
                        help="also measure the int8 static variants of each float file")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "recovery.md",
                        help="the table --part table writes (and its .json beside it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    WORK.mkdir(parents=True, exist_ok=True)
    data, base, info_paths = setup(args)
    run = WORK / base.weights_path.stem  # the base's own rows, allocations and record
    run.mkdir(exist_ok=True)
    if not (run / "base.json").is_file():
        (run / "base.json").write_text(json.dumps(base_row(data, base, info_paths,
                                                           epochs_label(args), run)))
    print(f"base: {(run / 'base.json').read_text()}", flush=True)
    if args.part == "base":
        print(f"wrote {write_bases(json.loads((run / 'base.json').read_text()))}")
        return
    allocs = allocations(data, base, args.screen, run)
    if args.part == "run":
        unknown = [c for c in args.configs if c not in CONFIGS]
        if unknown:
            sys.exit(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
        run_part(args, data, base, allocs, {c: CONFIGS[c] for c in args.configs},
                 args.epochs, args.quant, run / "rows.jsonl")
    else:
        from _recovery_table import write_tables

        md = write_tables(run / "rows.jsonl", run, args.out, shlex.join(sys.argv[1:]),
                          sections(run / "rows.jsonl"))
        print(f"wrote {md}")


if __name__ == "__main__":
    main()
