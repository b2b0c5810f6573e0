"""The ``optimize`` command line's parser: its commands and their options. Imports nothing
heavy, so that ``--help`` and a mistyped option cost nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeslim.defaults import (
    CLUSTER_COUNTS,
    CLUSTER_METHODS,
    DATASET,
    FINETUNE_LR,
    MAX_RATIO,
    MODEL,
    ROUND_TO,
    SPARSITY,
    STAGES,
    TRIALS,
)
from edgeslim.runtimes import DEFAULT_QUANTIZE
from edgeslim.search.samplers import SAMPLERS

COMMANDS = ("search", "plan", "export", "show", "dashboard", "report", "profile")
DEFAULT_WORKDIR = Path("edgeslim-runs")


def _positive(kind: type, name: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind.__name__}, got {text!r}")
        if not value > 0 or value == float("inf"):  # nan and inf parse as floats
            raise argparse.ArgumentTypeError(f"{name} must be > 0 and finite, got {text!r}")
        return value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage: journal:PATH (a journal file), "
                   "sqlite:///PATH, postgresql://... or mysql://... (default: the journal file "
                   "studies.journal in --workdir)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="where studies, artifacts and caches live (default: %(default)s)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _default_recovery() -> str:
    from edgeslim.recovery import Recovery

    return Recovery().describe()


def _search_options(s: argparse.ArgumentParser) -> None:
    """The options of a search, which its plan takes too."""
    _study_options(s)
    _training_options(s)
    _space_options(s)
    _common(s)


def _study_options(s: argparse.ArgumentParser) -> None:
    """What is searched, on what, and how the study runs."""
    s.add_argument("--budget", type=Path, required=True, help="budget YAML file")
    s.add_argument("--model", default=MODEL,
                   help="registered name, torchvision:NAME, path/file.py:factory or "
                   "package.module:factory (default: %(default)s)")
    s.add_argument("--dataset", default=DATASET,
                   help="digits, cifar10, mnist, fashion-mnist, imagefolder:PATH or "
                   "npz:PATH (arrays x_train, y_train; see docs/search.md) (default: %(default)s)")
    s.add_argument("--data-dir", type=Path, default=Path("data"),
                   help="where the dataset's files are (default: %(default)s)")
    s.add_argument("--checkpoint", type=Path, help="base model weights (a state dict); "
                   "without it the base model is trained once and cached")
    s.add_argument("--trials", type=_positive(int, "--trials"), default=TRIALS,
                   help="finished trials the study should hold (default: %(default)s)")
    s.add_argument("--study-name", help="default: <model>-<dataset>-<budget>; an existing "
                   "study of that name is resumed")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume-from", metavar="STUDY",
                   help="start a new study for this budget from the trials of STUDY (same "
                   "storage), searched for another budget: they are judged against this one "
                   "without training and seed the sampler; --trials counts new trials only, "
                   "and screening is off unless --screen is given")
    s.add_argument("--sampler", choices=tuple(SAMPLERS),
                   help="gp (Gaussian process), tpe (multivariate), nsga2 or random; all "
                   "constraint-aware but random (default: per dataset, tpe on digits and gp "
                   "elsewhere; see benchmarks/results/sampler_cost.md)")
    s.add_argument("--workers", type=_positive(int, "--workers"), default=1,
                   help="processes on this machine running trials at once, sharing the cores "
                   "(default: %(default)s); other machines join with the same command and a "
                   "shared --storage postgresql://...")
    s.add_argument("--finalists", type=int, default=None,
                   help="Pareto trials fine-tuned again with --final-epochs once the search "
                   "is done; export picks from them (default: per dataset, 0 turns it off)")
    s.add_argument("--final-epochs", type=_positive(float, "--final-epochs"),
                   help="the finalists' fine-tune epochs (default: per dataset)")
    s.add_argument("--screen", type=int, default=None,
                   help="pruning allocations ranked by their accuracy after batch-norm "
                   "recalibration (a second each, no training) before the trials; the best "
                   "are fine-tuned (default: 4 x --trials, 2 x on digits; 0 turns it off)")



def _training_options(s: argparse.ArgumentParser) -> None:
    """How the base model and the candidates are trained."""
    s.add_argument("--no-repair", action="store_true",
                   help="train sampled candidates as they are, even when they break a limit "
                   "checkable before training (by default they are moved to the nearest one "
                   "that fits)")
    s.add_argument("--base-epochs", type=_positive(float, "--base-epochs"),
                   help="epochs of the base model's training (default: per dataset)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--finetune-epochs", type=_positive(float, "--finetune-epochs"),
                   help="fine-tune epochs per candidate (default: per dataset)")
    g.add_argument("--finetune-steps", type=_positive(int, "--finetune-steps"),
                   help="fine-tune optimizer steps per candidate, instead of epochs")
    s.add_argument("--batch-size", type=_positive(int, "--batch-size"), default=None,
                   help="training batch of the base model and the fine-tunes; the default "
                   "peak learning rates scale with it from batch 128 (default: 128, or fewer "
                   "when the training split is smaller)")
    s.add_argument("--finetune-subset", type=float, default=1.0,
                   help="fraction of the training images the search's fine-tunes draw from "
                   "(a fixed subset; the finalists use all) (default: %(default)s)")
    s.add_argument("--finetune-lr", type=_positive(float, "--finetune-lr"), default=None,
                   help="peak learning rate of the fine-tunes and the finalists' (default: "
                   f"{FINETUNE_LR}, for a base model trained to convergence; a smaller one "
                   "for a base from another task, such as ImageNet weights)")
    s.add_argument("--recovery", default=None,
                   help="steps between each stage and its fine-tune, comma-separated: "
                   "reconstruct (least-squares weights after pruning), recalibrate_bn "
                   "(batch-norm statistics re-estimated), or none (default: "
                   f"{_default_recovery()})")
    s.add_argument("--no-distill", action="store_true",
                   help="fine-tune on labels only, without distilling from the base model")



def _space_options(s: argparse.ArgumentParser) -> None:
    """The compression space: stages, their orders and their parameters' ranges."""
    s.add_argument("--round-to", type=_positive(int, "--round-to"), default=ROUND_TO,
                   help="kept channel counts are multiples of this (default: %(default)s)")
    s.add_argument("--max-ratio", type=float, default=MAX_RATIO,
                   help="largest fraction of a group's channels removed (default: %(default)s)")
    s.add_argument("--importance", default="taylor",  # compress.prune.IMPORTANCES
                   help="channel importance criteria the search chooses from, comma-separated; "
                   "none keeps the first channels unranked (default: %(default)s)")
    s.add_argument("--stages", default=",".join(STAGES),
                   help="compression stages the search may use, in any buildable order: "
                   "prune, sparsify, cluster, quantize (default: %(default)s)")
    s.add_argument("--order", help="one fixed stage order instead of searching it, e.g. "
                   "prune,cluster,quantize")
    s.add_argument("--cluster-counts", default=",".join(map(str, CLUSTER_COUNTS)),
                   help="shared weight values a layer may be clustered to (default: "
                   "%(default)s)")
    s.add_argument("--cluster-methods", default=",".join(CLUSTER_METHODS),
                   help="codebook methods the search chooses from: kmeans, density, linear "
                   "(default: %(default)s)")
    s.add_argument("--quantize", help="quantization modes the search chooses from when it "
                   f"quantizes (default: {DEFAULT_QUANTIZE}, those of them the budget's "
                   "runtime runs: int8_static for litert-micro)")
    s.add_argument("--preset", help="run one named pipeline instead of searching (one trial, "
                   "its own study): prune-cluster-int8, prune-dynamic-int8, uniform, "
                   "convnext-prune-dynamic-int8, complexity-pa, complexity-fa, complexity-ma, "
                   "prune-finetune-int8-kmeans, prune-retrain-int8")
    s.add_argument("--no-references", action="store_true",
                   help="do not enqueue the presets as reference trials at the study's start")
    s.add_argument("--sparsity", default=":".join(map(str, SPARSITY)),
                   help="range of unstructured sparsity searched, LOW:HIGH (default: "
                   "%(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimize", description="Search per-layer compression of a CNN under a device "
        "budget, then export the best model that fits.")
    sub = parser.add_subparsers(dest="command")

    s = sub.add_parser("search", help="run or resume a search (the default command)")
    _search_options(s)
    n = sub.add_parser("plan", help="what the search can reach against each limit of the "
                       "budget, and its time, before anything is trained")
    _search_options(n)

    e = sub.add_parser("export", help="write a trial's ONNX file, PyTorch program and card")
    e.add_argument("--study", help="study name (default: the storage's only study)")
    e.add_argument("--out", type=Path, required=True, help="output directory")
    e.add_argument("--trial", type=int, help="trial number (default: best feasible)")
    e.add_argument("--data-dir", type=Path,
                   help="dataset files, when they moved since the search")
    e.add_argument("--format", default="onnx,pytorch,json,md",
                   help="files to write: onnx (with the packed file when there is one), "
                   "pytorch, json (the card), md (its summary) (default: %(default)s)")
    e.add_argument("--budget", type=Path, help="another device's budget file: export the "
                   "best trial that fits it (or --trial), without training, with its files "
                   "for that budget's runtime and a card judged against it")
    _common(e)

    w = sub.add_parser("show", help="print a study's Pareto table, or which of its trials fit "
                       "another budget")
    w.add_argument("--study", help="study name (default: the storage's only study)")
    w.add_argument("--budget", type=Path, help="another device's budget file: judge every "
                   "fine-tuned trial against it (latency timed again for its latency source; "
                   "files made again for another runtime)")
    w.add_argument("--data-dir", type=Path,
                   help="dataset files, when they moved since the search (with --budget)")
    _common(w)

    d = sub.add_parser("dashboard", help="serve the study in optuna-dashboard, with its "
                       "trials' files downloadable")
    d.add_argument("--study", help="study whose page is printed (default: the storage's only "
                   "study); the dashboard lists every study of the storage")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "%(default)s, this machine only; the dashboard has no login)")
    d.add_argument("--port", type=int, default=8080, help="port, 0 for any free one "
                   "(default: %(default)s)")
    _common(d)

    r = sub.add_parser("report", help="write an HTML report with PNG figures of a study")
    r.add_argument("--study", help="study name (default: the storage's only study)")
    r.add_argument("--out", type=Path, required=True, help="output directory")
    r.add_argument("--trial", type=int, help="trial whose layers are drawn (default: the one "
                   "export picks)")
    _common(r)

    _profile_parser(sub)
    return parser


def _profile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="time, on this machine (the device), every layer "
                       "configuration the search can produce; write a latency profile")
    p.add_argument("--runtime", default="onnxruntime", help="deployment runtime: onnxruntime "
                   "or litert (each layer converted to a LiteRT file and timed in LiteRT; "
                   "needs the litert extra) (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="profile file to write (JSON)")
    p.add_argument("--model", default=MODEL, help="model the search will compress "
                   "(default: %(default)s)")
    p.add_argument("--input-shape", default="3x32x32",
                   help="one input without the batch, e.g. 3x32x32 or 9x128 "
                   "(default: %(default)s)")
    p.add_argument("--num-classes", type=_positive(int, "--num-classes"), default=10)
    p.add_argument("--round-to", type=_positive(int, "--round-to"), default=ROUND_TO,
                   help="as the search's --round-to (default: %(default)s)")
    p.add_argument("--max-ratio", type=float, default=MAX_RATIO,
                   help="as the search's --max-ratio (default: %(default)s)")
    p.add_argument("--quantize", default="none,int8_static,int8_dynamic,fp16",
                   help="modes to time (default: %(default)s)")
    p.add_argument("--threads", type=_positive(int, "--threads"),
                   help="intra-op threads, as the budget's runtime.threads (default: all cores)")
    p.add_argument("--models", type=_positive(int, "--models"), default=24,
                   help="whole models timed per mode (default: %(default)s)")
    p.add_argument("--holdout", type=_positive(int, "--holdout"), default=8,
                   help="of which held out to measure the profile's error (default: "
                   "%(default)s)")
    p.add_argument("--layer-seconds", type=_positive(float, "--layer-seconds"), default=0.5)
    p.add_argument("--model-seconds", type=_positive(float, "--model-seconds"), default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
