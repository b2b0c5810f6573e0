"""The table of benchmarks/torchvision_coverage.py, written from its rows (one per model)."""

from __future__ import annotations

import torch
import torchvision

# The fine-tune rate a model whose trials overflow float32 is searched again at.
SLOWER_LR = "0.0001"


def table(rows: dict[str, dict], command: str, host: str) -> str:
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row["result"]] = counts.get(row["result"], 0) + 1
    waiting = [n for n in torchvision.models.list_models(module=torchvision.models)
               if n not in rows]
    lines = [
        "# torchvision classification models: search coverage", "",
        f"Command: `{command}`", "",
        f"Host: {host}. torchvision {torchvision.__version__}, PyTorch {torch.__version__}.", "",
        "Each model: 2 trials of prune > cluster (16 values a layer) > int8 static on 120 "
        "synthetic images at the smallest input it accepts, from its random initialisation "
        "(one fine-tune step a stage, at rate 0.001: one step at the default 0.05 from a random "
        "initialisation overflows float32 in deep nets), then `optimize export` of one trial; "
        "each command stopped after the timeout in the command line. A model whose training "
        "batch is refused for memory is searched again at the batch the refusal names; one "
        f"whose trials fail because that step made its activations overflow, at rate "
        f"{SLOWER_LR}. "
        "Groups: searched "
        "/ left out; untraced: modules torch-pruning cannot analyse, left unpruned.", "",
        "Totals: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" (of "
        f"{len(rows)} measured; {len(waiting)} of torchvision's "
        f"{len(rows) + len(waiting)} not measured yet"
        + (f": {', '.join(waiting)}" if waiting else "") + ").", "",
        "| model | params | input | result | groups | untraced | trials | time | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(rows.items()):
        size = f"{r['input']}x{r['input']}" if r.get("input") else "-"
        groups = f"{r['groups']} / {r['left_out']}" if "groups" in r else "-"
        trials = (f"{r['complete']} complete, {r['pruned_trials']} pruned"
                  if "pruned_trials" in r else f"{r['complete']} complete" if "complete" in r
                  else "-")
        secs = f"{r['seconds']} s" if r.get("seconds") is not None else "-"
        note = str(r.get("note", "")).replace("|", "\\|").replace("\n", " ")
        if not note and (r.get("exit") or 0) < 0:  # killed, with nothing printed
            note = f"killed by signal {-r['exit']}, nothing printed"
        lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {size} | {r['result']} | {groups} "
                     f"| {len(r.get('untraced', []))} | {trials} | {secs} | {note} |")
    return "\n".join(lines) + "\n"


def row_note(row: dict) -> str:
    """What a row's result leaves out: modules left unpruned, groups left out."""
    parts = []
    untraced = row["untraced"]
    if untraced:
        names = ["the whole model" if n == "" else n for n in untraced]
        parts.append(f"torch-pruning cannot analyse {len(names)} module(s), left unpruned: "
                     + ", ".join(names[:4]) + (" ..." if len(names) > 4 else ""))
    if row["left_out"]:
        parts.append(f"{row['left_out']} group(s) left out")
    if not row["groups"]:
        parts.append("nothing prunable: cluster and quantize only")
    return "; ".join(parts)
