"""The training-step memory check against whole training steps, per model.

For each (model, input side, batch): what ``edgeslim.models.train_memory`` predicts from the
tensors autograd saves (before and after its headroom), against the peak resident memory a
whole training step really adds (bf16 autocast where training uses it, channels_last, SGD with
momentum, a teacher's forward), each case in its own process. Linux only (``ru_maxrss``).

    uv run python benchmarks/train_memory.py

Writes benchmarks/results/train_memory.md and .json; takes a few minutes.
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


def main() -> None:
    if len(sys.argv) == 4:  # one case, in its own process
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
        return
    rows = []
    for spec, side, batch in CASES:
        out = subprocess.run([sys.executable, __file__, spec, str(side), str(batch)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    (RESULTS / "train_memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# Training-step memory: the check's figure against whole steps", "",
             "Command: `uv run python benchmarks/train_memory.py`", "",
             "Saved: what autograd saves for the backward pass on the batch, plus four copies "
             "of the parameters (``step_memory``). Checked: the figure the check compares with "
             "the memory available (saved times the headroom, plus the runtime's fixed bytes). "
             "Measured: peak resident memory two whole training steps add, in a process of "
             "their own. GB = 10^9 bytes.", "",
             "| model | input | batch | saved GB | checked GB | measured GB "
             "| checked / measured |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['side']}x{r['side']} | {r['batch']} | {r['saved'] / 1e9:.2f} "
              f"| {r['checked'] / 1e9:.2f} | {r['measured'] / 1e9:.2f} "
              f"| {r['checked'] / r['measured']:.2f} |" for r in rows]
    (RESULTS / "train_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
