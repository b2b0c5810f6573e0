"""Figures of a study, drawn with matplotlib (object API, no display needed).

``pareto_figure``  accuracy against one measure for every complete trial: the Pareto trials,
                   the reference trials and the base model marked, the budget's limits as lines
``layers_figure``  a trial's channels kept per pruned group beside the base model's, and its
                   cluster count per layer when clustering ran
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from matplotlib.figure import Figure

from edgeslim.fsutil import atomic_write
from edgeslim.search.picking import is_feasible
from edgeslim.search.records import ACCURACY, StudyRecord, TrialRecord

# measure -> (axis label, divisor to the axis unit)
AXES = {
    "params": ("parameters (thousands)", 1e3),
    "macs": ("MACs at batch 1 (millions)", 1e6),
    "size_bytes": ("artifact size (kB)", 1e3),
    "peak_memory_bytes": ("peak memory (MB)", 1e6),
    "activation_bytes": ("live activations at batch 1 (kB)", 1e3),
    "latency_ms": ("latency at batch 1 (ms)", 1.0),
}
# Past this ratio between the largest and smallest value drawn, an axis is logarithmic.
LOG_SPAN = 30.0


def save_png(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Writes ``fig`` as a PNG atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def pareto_figure(study: optuna.Study, measure: str, front: list[optuna.trial.FrozenTrial],
                  chosen: optuna.trial.FrozenTrial | None = None) -> Figure:
    """Validation accuracy against ``measure`` for the study's complete trials."""
    label, unit = AXES[measure]
    record = StudyRecord.of(study)
    base, caps = record.base or {}, record.caps or {}
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    records = {t.number: TrialRecord.of(t) for t in complete}
    done = [t for t in complete if measure in records[t.number].measures
            and ACCURACY in records[t.number].measures]
    on_front = {t.number for t in front}

    def xy(trials: list[optuna.trial.FrozenTrial]) -> tuple[list[float], list[float]]:
        measures = [TrialRecord.of(t).measures for t in trials]
        return ([m[measure] / unit for m in measures], [100 * m[ACCURACY] for m in measures])

    fig = Figure(figsize=(8.6, 4.6), layout="constrained")
    ax = fig.add_subplot()
    feasible = [t for t in done if is_feasible(t) and t.number not in on_front]
    others = [t for t in done if not is_feasible(t) and t.number not in on_front]
    ax.scatter(*xy(others), s=28, facecolors="none", edgecolors="0.55", label="infeasible")
    ax.scatter(*xy(feasible), s=28, color="tab:blue", alpha=0.7, label="feasible")
    pareto = [t for t in done if t.number in on_front]
    ax.scatter(*xy(pareto), s=60, color="tab:orange", edgecolors="black", zorder=3,
               label="Pareto front")
    for t, x, y in zip(pareto, *xy(pareto)):
        ax.annotate(str(t.number), (x, y), xytext=(4, 4), textcoords="offset points",
                    fontsize=8)
    refs = [t for t in done if records[t.number].reference is not None]
    ax.scatter(*xy(refs), s=110, marker="D", facecolors="none", edgecolors="tab:purple",
               linewidths=1.5, zorder=4, label="reference (preset)")
    if chosen is not None and chosen.number in {t.number for t in done}:
        ax.scatter(*xy([chosen]), s=240, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=5, label=f"trial {chosen.number}, detailed below")
    xs = xy(done)[0]
    if measure in base and ACCURACY in base:
        ax.scatter([base[measure] / unit], [100 * base[ACCURACY]], s=160, marker="*",
                   color="black", zorder=5, label="base model")
        xs.append(base[measure] / unit)
    cap = caps.get("limits", {}).get(measure)
    if cap is not None:
        ax.axvline(cap / unit, color="tab:red", linestyle="--", label=f"limit on {measure}")
        xs.append(cap / unit)
    if caps.get("min_val_acc") is not None:
        ax.axhline(100 * caps["min_val_acc"], color="tab:red", linestyle=":",
                   label="accuracy floor")
    if xs and min(xs) > 0 and max(xs) / min(xs) > LOG_SPAN:
        ax.set_xscale("log")
    ax.set_xlabel(label + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{study.study_name}: accuracy against {measure}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _label_references(ax, refs, *xy(refs))
    return fig


def _label_references(ax, refs: list[optuna.trial.FrozenTrial], xs: list[float],
                      ys: list[float], apart_px: float = 14.0) -> None:
    """Names each reference trial beside its marker; references closer than ``apart_px`` on
    the figure share one label, so that their names do not print over each other."""
    ax.autoscale_view()
    spots: list[tuple[float, float, tuple[float, float], list[str]]] = []
    for t, x, y in sorted(zip(refs, xs, ys), key=lambda r: (r[1], r[2])):
        px, py = ax.transData.transform((x, y))
        near = next((s for s in spots if math.hypot(s[2][0] - px, s[2][1] - py) < apart_px),
                    None)
        if near:
            near[3].append(TrialRecord.of(t).reference)
        else:
            spots.append((x, y, (px, py), [TrialRecord.of(t).reference]))
    for x, y, _, names in spots:
        ax.annotate(", ".join(names), (x, y), xytext=(6, -12), textcoords="offset points",
                    fontsize=8, color="tab:purple")


def layers_figure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Figure:
    """Channels kept per pruned group against the base model's channels, with the fraction
    removed; beside it, when the trial clustered, each layer's cluster count (bits per weight
    index) and the base layer's number of weights."""
    space, record = StudyRecord.of(study).space, TrialRecord.of(trial)
    groups = space["groups"]
    clusters = record.clusters
    weights = {layer["name"]: layer["weights"] for layer in space.get("layers", [])}
    rows = max(len(groups), len(clusters))
    fig = Figure(figsize=(12.0 if clusters else 7.0, round(1.6 + 0.3 * rows, 2)),
                 layout="constrained")
    ax = fig.add_subplot(1, 2 if clusters else 1, 1)
    names = [g["name"] for g in groups]
    base = [g["channels"] for g in groups]
    kept = [record.channels.get(n, c) for n, c in zip(names, base)]
    ax.barh(names, base, color="0.85", label="base model")
    ax.barh(names, kept, color="tab:blue", height=0.5, label=f"trial {trial.number}")
    for i, (b, k) in enumerate(zip(base, kept)):
        ax.text(b, i, f" {k}/{b}, {1 - k / b:.0%} removed", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.45 * max(base))
    ax.set_xlabel("output channels per pruned group")
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, frameon=False)
    if clusters:
        cx = fig.add_subplot(1, 2, 2)
        layers = list(clusters)
        counts = [clusters[n] for n in layers]
        cx.barh(layers, counts, color="tab:green")
        for i, (n, k) in enumerate(zip(layers, counts)):
            text = f" {k} ({math.ceil(math.log2(max(k, 2)))} bits)"
            if n in weights:
                text += f", {weights[n]:,} weights in the base"
            cx.text(k, i, text, va="center", fontsize=7)
        cx.set_xscale("log", base=2)
        cx.set_xlim(1, 2 ** 14)
        cx.invert_yaxis()
        cx.set_xlabel("shared values (clusters) per layer, log scale")
        cx.set_title(f"cluster counts ({(record.candidate or {}).get('cluster_method', '')})",
                     fontsize=9, loc="left")
    fig.suptitle(f"{study.study_name}, trial {trial.number}: {record.measure('stage_order', '')}",
                 fontsize=11)
    return fig
