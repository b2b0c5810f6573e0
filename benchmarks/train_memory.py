"""The training-memory check against whole training steps and whole searches, per model.

Steps: for each (model, input side, batch), what ``edgeslim.models.train_memory`` predicts
from the tensors autograd saves (before and after its headroom), against the peak resident
memory a whole training step really adds (bf16 autocast where training uses it,
channels_last, SGD with momentum, a teacher's forward), each case in its own process.

Searches: for each (torchvision model, input side, batch), one search of one trial with every
stage (the torchvision coverage benchmark's command, on its synthetic data), in its own
process: its peak resident memory against what the check counts (its figure, plus what the
process already held when it checked). Linux only (``ru_maxrss``).

    uv run python benchmarks/train_memory.py

Writes benchmarks/results/train_memory.md and .json; takes about 15 minutes.
"""

from __future__ import annotations

import copy
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [("resnet20", 32, 128), ("torchvision:resnet18", 64, 128),
         ("torchvision:mobilenet_v2", 224, 64), ("torchvision:maxvit_t", 224, 16)]
# Weights in one large layer, and in many middle-sized ones.
SEARCHES = [("vgg16", 32, 64), ("vit_b_32", 224, 64)]


def measure(spec: str, side: int, batch: int) -> dict:
    from edgeslim.models import build_model
    from edgeslim.models.train_memory import step_memory
    from edgeslim.precision import autocast_for

    torch.set_num_threads(2)
    model = build_model(spec, 3, 10)
    need = step_memory(copy.deepcopy(model), (3, side, side), torch.device("cpu"))
    saved = need.per_sample * batch + need.fixed
    before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    teacher = copy.deepcopy(model).eval()
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for _ in range(2):
        with autocast_for("auto", torch.device("cpu"))[0]:
            with torch.no_grad():
                teacher(x)
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": spec, "side": side, "batch": batch, "saved": saved,
            "checked": need.at(batch), "measured": peak - before}


def search(name: str, side: int, batch: int) -> dict:
    """One search of ``name`` in this process: the check's figure, what the process held when
    it checked, and the search's peak resident memory."""
    import tempfile

    from torchvision_coverage import BUDGET, SEARCH, write_inputs

    import edgeslim.models.check as check
    from edgeslim.cli import main as optimize

    seen = {}
    real = check.check_training_memory

    def recording(model, spec, shape, train_batch, *args, **kwargs):
        statm = Path("/proc/self/statm").read_text().split()
        seen["resident"] = int(statm[1]) * resource.getpagesize()
        need = real(model, spec, shape, train_batch, *args, **kwargs)
        seen["checked"], seen["params"] = need.at(train_batch), need.params
        return need

    check.check_training_memory = recording
    with tempfile.TemporaryDirectory() as tmp:
        data, init = write_inputs(name, side, Path(tmp))
        (Path(tmp) / "budget.yaml").write_text(BUDGET)
        args = ["--budget", f"{tmp}/budget.yaml", "--model", f"torchvision:{name}",
                "--dataset", f"npz:{data}", "--checkpoint", str(init), *SEARCH,
                "--batch-size", str(batch), "--workdir", f"{tmp}/run"]
        args[args.index("--trials") + 1] = "1"
        sys.argv = ["optimize", *args]
        try:
            optimize()
        except SystemExit as exc:
            assert not exc.code, f"the search of {name} ended with {exc.code}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": name, "side": side, "batch": batch, **seen, "measured": peak}


def main() -> None:
    if len(sys.argv) == 4:  # one case, in its own process
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
        return
    if len(sys.argv) == 5:  # one search, in its own process
        print(json.dumps(search(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    rows = []
    for spec, side, batch in CASES:
        out = subprocess.run([sys.executable, __file__, spec, str(side), str(batch)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    searches = []
    for name, side, batch in SEARCHES:
        out = subprocess.run([sys.executable, __file__, "search", name, str(side), str(batch)],
                             capture_output=True, text=True, check=True).stdout
        searches.append(json.loads(out.strip().splitlines()[-1]))
        print(searches[-1], flush=True)
    (RESULTS / "train_memory.json").write_text(
        json.dumps({"steps": rows, "searches": searches}, indent=1) + "\n")
    lines = ["# Training memory: the check's figure against whole steps and whole searches", "",
             "Command: `uv run python benchmarks/train_memory.py`", "",
             "## Training steps", "",
             "Saved: what autograd saves for the backward pass on the batch (``step_memory``). "
             "Checked: the figure the check compares with the memory available (saved times "
             "the headroom, plus the copies of the weights a search holds and the runtime's "
             "fixed bytes). "
             "Measured: peak resident memory two whole training steps add, in a process of "
             "their own. GB = 10^9 bytes.", "",
             "| model | input | batch | saved GB | checked GB | measured GB "
             "| checked / measured |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['side']}x{r['side']} | {r['batch']} | {r['saved'] / 1e9:.2f} "
              f"| {r['checked'] / 1e9:.2f} | {r['measured'] / 1e9:.2f} "
              f"| {r['checked'] / r['measured']:.2f} |" for r in rows]
    lines += ["", "## Whole searches", "",
              "One search of one trial with every stage (prune, cluster, int8 static, packed "
              "file), the torchvision coverage benchmark's command on its synthetic data, at "
              "the batch shown. Held: the process's resident memory when the check ran (the "
              "check compares its figure with the memory then available). Measured: the "
              "search's peak resident memory.", "",
              "| model | weights GB | input | batch | held GB | checked GB | held + checked GB "
              "| measured GB | (held + checked) / measured |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params'] / 1e9:.2f} | {r['side']}x{r['side']} | "
              f"{r['batch']} | {r['resident'] / 1e9:.2f} | {r['checked'] / 1e9:.2f} | "
              f"{(r['resident'] + r['checked']) / 1e9:.2f} | {r['measured'] / 1e9:.2f} | "
              f"{(r['resident'] + r['checked']) / r['measured']:.2f} |" for r in searches]
    (RESULTS / "train_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
