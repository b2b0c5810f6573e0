"""What a sampler costs per proposal, on the search's own spaces, against what its trials cost.

For each sampler (``optimize --sampler``, as ``make_sampler`` builds it) and study size, a study
of that many trials over ResNet-20's spaces, with nothing trained: the screening space (one
pruning ratio per group and the criterion, MACs limited) and the search space (stage order,
ratios, cluster counts, quantization mode; MACs and latency traded off, MACs limited). Each
trial's values come from a cheap stand-in (the kept-channel share of MACs, a smooth accuracy
curve of it, constraints set like the search's), so that only the sampler is timed: the
seconds of ``study.ask()`` plus ``study.tell()`` per trial, as the search's stopwatch counts
sampling. The table gives the mean over the study and the last tenth of it (a proposal grows
costlier as trials accumulate), per sampler and size.

    nice -n 5 uv run --with optunahub python benchmarks/sampler_cost.py

Writes benchmarks/results/sampler_cost.md and .json. optunahub's AutoSampler is measured when
``optunahub`` (not a dependency; ``--with`` adds it for the run) can load it: it downloads the
sampler's code from GitHub at run time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch

from edgeslim.compress import weight_layers
from edgeslim.cores import training_threads
from edgeslim.defaults import CLUSTER_COUNTS as DEFAULT_CLUSTER_COUNTS
from edgeslim.search.samplers import make_sampler
from edgeslim.spaces import PruningSpace, StagedSpace, WeightLayer

ROOT = Path(__file__).resolve().parent


def spaces() -> dict[str, StagedSpace]:
    from edgeslim.models import build_model
    from edgeslim.stages import buildable_orders

    model = build_model("resnet20", 3, 10)
    pruning = PruningSpace.from_model(model, torch.zeros(1, 3, 32, 32), 10)
    layers = tuple(WeightLayer(n, m.weight.numel()) for n, m in weight_layers(model).items())
    full = StagedSpace(pruning, layers, tuple(o for o in buildable_orders(
        ("prune", "cluster", "quantize")) if "prune" in o), cluster_counts=DEFAULT_CLUSTER_COUNTS)
    return {"screening": StagedSpace(pruning, layers, (("prune",),)), "search": full}


def stand_in(space: StagedSpace, trial: optuna.Trial) -> tuple[list[float], dict[str, float]]:
    """Values and constraints shaped like a trial's, from the kept channels alone."""
    cand = space(trial) if len(space.orders) > 1 else space.pruning(trial)
    kept = space.pruning.kept(cand)
    share = sum(k / g.channels for k, g in zip(kept, space.pruning.groups)) / len(kept)
    acc = 0.9 - 0.4 * (1 - share) ** 2
    macs = share ** 2
    return [acc, macs, 0.1 + 0.2 * share], {"macs": macs / 0.5 - 1.0}


def time_study(sampler_name: str, space_name: str, space: StagedSpace, trials: int,
               seed: int = 0) -> list[float]:
    objectives = 1 if space_name == "screening" else 3
    sampler = make_sampler(sampler_name, seed) if sampler_name != "auto" else auto_sampler(seed)
    study = optuna.create_study(directions=["maximize"] + ["minimize"] * (objectives - 1),
                                sampler=sampler)
    seconds = []
    for _ in range(trials):
        start = time.perf_counter()
        trial = study.ask()
        values, constraints = stand_in(space, trial)  # suggests: the sampler runs here too
        for name, value in constraints.items():
            trial.set_constraint(name, value)
        study.tell(trial, values[:objectives])
        seconds.append(time.perf_counter() - start)
    return seconds


def auto_sampler(seed: int) -> optuna.samplers.BaseSampler:
    import optunahub

    return optunahub.load_module("samplers/auto_sampler").AutoSampler(seed=seed)


def auto_available() -> str | None:
    """Why optunahub's AutoSampler cannot be used here (None when it can)."""
    try:
        auto_sampler(0)
    except ImportError:
        return "optunahub is not installed"
    except Exception as exc:  # noqa: BLE001 - its loader fails in many ways offline
        return f"optunahub could not load it: {str(exc).splitlines()[0][:120]}"
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samplers", default="gp,tpe,auto")
    p.add_argument("--screening-sizes", default="40,80,160")
    p.add_argument("--search-sizes", default="10,20,40")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "sampler_cost.md")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(training_threads())
    threads = torch.get_num_threads()
    sizes = {"screening": [int(n) for n in args.screening_sizes.split(",")],
             "search": [int(n) for n in args.search_sizes.split(",")]}
    missing = auto_available() if "auto" in args.samplers else None
    rows = []
    for space_name, space in spaces().items():
        for name in args.samplers.split(","):
            if name == "auto" and missing:
                continue
            for n in sizes[space_name]:
                seconds = time_study(name, space_name, space, n)
                tail = seconds[-max(1, n // 10):]
                rows.append({"space": space_name, "sampler": name, "trials": n,
                             "mean_s": statistics.mean(seconds), "last_tenth_s":
                             statistics.mean(tail), "total_s": sum(seconds)})
                print(json.dumps(rows[-1]), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    command = ("nice -n 5 uv run --with optunahub python benchmarks/sampler_cost.py "
               + " ".join(sys.argv[1:]))
    lines = ["# Seconds per proposal of each sampler on ResNet-20's spaces", "",
             f"Command: `{command.strip()}`", "",
             f"Machine: {platform.machine()}, {threads} thread(s) of a shared 2-core host "
             "(other work ran beside it: read the ratios between samplers, not the absolute "
             "seconds). Nothing trained: each trial's values come from a stand-in, so only "
             "`study.ask()` and `study.tell()` are timed. Screening space: "
             f"{len(spaces()['screening'].pruning.groups)} ratios and the criterion, one "
             "objective, MACs limited. Search space: stage order, ratios, criterion, a cluster "
             "count per layer and the quantization mode, three objectives, MACs limited.", "",
             "| space | sampler | trials | mean s / proposal | last tenth s / proposal | "
             "study total s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['space']} | {r['sampler']} | {r['trials']} | {r['mean_s']:.3f} | "
              f"{r['last_tenth_s']:.3f} | {r['total_s']:.1f} |" for r in rows]
    if missing:
        lines += ["", f"optunahub's AutoSampler: not measured; {missing}. It fetches its code "
                  "from GitHub when loaded, so it cannot run on a machine without that access."]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
