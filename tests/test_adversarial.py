"""A hostile but realistic user's cases that once got through, kept so that none comes back:
interrupts that lost a trial, models that do not fit the data or cannot be exported, models
torch-pruning mishandles, budget fields that reach ssh, and the smaller leaks (slow refusals,
kilobyte error lines, wrong help, library chatter on the terminal). Each fails one way, on
one line, and loses nothing. (Malformed budgets, pickles, corrupt data and damaged storage:
test_bad_input.py and test_untrusted.py.)"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import numpy as np
import optuna
import pytest
import torch
from optuna_dashboard import wsgi
from test_bad_input import WORKDIR, refused, search, write
from test_browse import toy_study
from torch import nn

from edgeslim import logs
from edgeslim.cli import build_parser, main
from edgeslim.errors import ModelError
from edgeslim.present.report import summary_line
from edgeslim.search.config import default_storage
from edgeslim.search.storage import load_study, open_storage
from edgeslim.search.workers import counted, run_trials
from toys import PI4, REPO

COMPLETE, FAIL, RUNNING, WAITING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                    optuna.trial.TrialState.RUNNING,
                                    optuna.trial.TrialState.WAITING)
TOYS = REPO / "tests" / "toys.py"

# ---------------------------------------------------------------------------------------------
# Ctrl+C and SIGTERM in the middle of a trial

# The command that lost a trial, on a toy model so that the base model trains in seconds;
# fine-tunes long enough for the signal to land in one.
INTERRUPTED = ["--budget", str(PI4), "--model", f"{TOYS}:plain_net", "--trials", "2",
               "--screen", "0", "--finalists", "0", "--no-references", "--sampler", "tpe",
               "--base-epochs", "2", "--finetune-steps", "50"]


def _training(storage: str) -> optuna.trial.FrozenTrial | None:
    """The running trial that has built its candidate, once there is one."""
    if not Path(storage.removeprefix("journal:")).is_file():
        return None
    try:
        trials = load_study(None, storage).trials
    except Exception:  # the study is being created
        return None
    return next((t for t in trials if t.state == RUNNING and "candidate" in t.user_attrs), None)


@pytest.mark.slow
@pytest.mark.parametrize("signum, what", [(signal.SIGINT, "Ctrl+C (SIGINT)"),
                                          (signal.SIGTERM, "SIGTERM")], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_middle_of_a_trial_loses_nothing(tmp_path, capsys, signum, what):
    workdir = tmp_path / "w"
    storage = default_storage(workdir)
    command = [*INTERRUPTED, "--workdir", str(workdir)]
    proc = subprocess.Popen([sys.executable, "-m", "edgeslim.cli", *command], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end, running = time.monotonic() + 600, None
        while running is None and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.5)
            running = _training(storage)
        assert running is not None, proc.communicate()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum
    # One line, no traceback, no Optuna warning.
    assert err == f"optimize: stopped by {what}; rerun the same command to resume\n"
    assert "Traceback" not in out and "Trial" not in out
    study = load_study(None, storage)
    stopped = study.trials[running.number]
    assert stopped.state == FAIL and stopped.user_attrs["interrupted"] is True
    assert stopped.user_attrs["fail_reason"] == (
        f"interrupted: {what} stopped worker process {proc.pid} on {socket.gethostname()} "
        "while the trial ran")
    (queued,) = [t for t in study.trials if t.state == WAITING]
    assert queued.user_attrs["retry_of"] == running.number
    assert queued.system_attrs["fixed_params"] == stopped.params
    assert not list((workdir / "trials").glob(f"trial-{running.number}-*"))

    assert main(command) == 0  # the same command again
    study = load_study(None, storage)
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == running.number]
    assert retry.state == COMPLETE and retry.params == stopped.params
    assert counted(study.trials) == 2
    assert [t.state for t in study.trials].count(FAIL) == 1
    line = summary_line(study)  # repeats of a model already built do not count, but show
    assert line.startswith(f"{len(study.trials)} trials: {len(study.trials) - 1} complete (")
    assert line.endswith(" 1 failed (1 interrupted and run again)")
    assert line in capsys.readouterr().out.splitlines()


# ---------------------------------------------------------------------------------------------
# Models that do not fit the data, cannot be trained or cannot be exported: refused at start,
# in seconds, with one line; nothing trained or written.

MODELS = '''import torch
from torch import nn
from toys import PlainNet


def sensor9(in_channels, num_classes):
    return nn.Sequential(nn.Conv1d(9, 16, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))


def rgb(in_channels, num_classes):
    return PlainNet(3, num_classes)


def frozen(in_channels, num_classes):
    return PlainNet(in_channels, num_classes).requires_grad_(False)


def five(in_channels, num_classes):
    return PlainNet(in_channels, 5)


class Spectral(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.fft.fft2(self.conv(x)).real.mean((2, 3)))
'''


def _npz(tmp: Path, shape: tuple[int, ...]) -> str:
    path = tmp / "data" / f"{'x'.join(map(str, shape))}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).normal(size=(40, *shape)).astype(np.float32)
    np.savez(path, x_train=x, y_train=np.arange(40) % 4)
    return f"npz:{path}"


def _models(tmp: Path) -> str:
    return str(write(tmp / "models" / "mine.py", MODELS))


def _images_to_a_1d_model(tmp: Path):
    data = _npz(tmp, (1, 8, 8))
    return ["--model", "cnn1d", "--dataset", data], (
        f"model 'cnn1d' does not fit {data}, whose samples are 1 x 8 x 8: it takes samples of "
        "C x L with C = 1 (its first layer features.0 is a Conv1d); pick a model for this data")


def _sequences_to_a_2d_model(tmp: Path):
    data = _npz(tmp, (3, 32))
    return ["--dataset", data], (
        f"model 'resnet20' does not fit {data}, whose samples are 3 x 32: it takes samples of "
        "C x H x W with C = 3 (its first layer conv1 is a Conv2d); pick a model for this data")


def _sequence_channels(tmp: Path):
    data, spec = _npz(tmp, (3, 32)), f"{_models(tmp)}:sensor9"
    return ["--model", spec, "--dataset", data], (
        f"model '{spec}' does not fit {data}, whose samples are 3 x 32: it takes samples of "
        "C x L with C = 9 (its first layer 0 is a Conv1d); pick a model for this data")


def _image_channels(tmp: Path):
    spec = f"{_models(tmp)}:rgb"
    return ["--model", spec], (
        f"model '{spec}' does not fit digits, whose samples are 1 x 8 x 8: it takes samples of "
        "C x H x W with C = 3 (its first layer conv1 is a Conv2d); pick a model for this data")


def _wrong_classes(tmp: Path):
    spec = f"{_models(tmp)}:five"
    return ["--model", spec], (f"model '{spec}' returns (1, 5) for one sample, not (1, 10) "
                               "scores, one per class of digits")


def _untrainable(tmp: Path):
    spec = f"{_models(tmp)}:frozen"
    return ["--model", spec], (f"model '{spec}' cannot be trained: RuntimeError: element 0 of "
                               "tensors does not require grad and does not have a grad_fn")


def _unexportable(tmp: Path):
    spec = f"{_models(tmp)}:Spectral"
    return ["--model", spec], (
        f"model '{spec}' cannot be searched: every candidate is deployed as an ONNX file, and "
        "ONNX export failed: UnsupportedOperatorError: Exporting the operator 'aten::fft_fft2' "
        "to ONNX opset version 17 is not supported")


@pytest.mark.parametrize("case", [
    _images_to_a_1d_model, _sequences_to_a_2d_model, _sequence_channels, _image_channels,
    _wrong_classes, _untrainable, _unexportable], ids=lambda c: c.__name__.strip("_"))
def test_a_model_that_cannot_be_searched_on_the_data_is_refused_at_start(tmp, capsys, case):
    extra, message = case(tmp)
    assert refused(search(tmp, *extra), tmp, capsys) == message
    assert not (tmp / WORKDIR).exists()


def test_a_training_batch_that_does_not_fit_in_memory_is_refused_at_start(tmp, capsys,
                                                                          monkeypatch):
    """The kernel's out-of-memory killer used to end such a search in its first training
    step, with nothing printed. Here the machine is made to have room for 40 samples."""
    from edgeslim.data import load_dataset
    from edgeslim.models import build_model, train_memory

    data = load_dataset("digits", tmp)
    need = train_memory.step_memory(build_model("resnet20", 1, 10), (1, 8, 8),
                                    torch.device("cpu"))
    batch = min(128, len(data.train))
    assert need.per_sample > 0 and need.at(batch) > need.at(40)
    monkeypatch.setattr(train_memory, "available_bytes", lambda device: need.at(40))
    message = refused(search(tmp), tmp, capsys)
    assert message.startswith(f"training model 'resnet20' on batches of {batch} samples of "
                              "1 x 8 x 8 needs about ")
    assert message.endswith(" is memory available on this machine: pass --batch-size 32 or "
                            "less")
    with pytest.raises(ModelError):  # 40 fit, but not 41
        train_memory.check_training_memory(build_model("resnet20", 1, 10), "m", (1, 8, 8),
                                           41, torch.device("cpu"), need.at(40))
    train_memory.check_training_memory(build_model("resnet20", 1, 10), "m", (1, 8, 8), 40,
                                       torch.device("cpu"), need.at(40))


def test_a_training_step_holds_what_its_samples_save_for_the_backward_pass():
    """Per sample, a step holds what autograd saves: four times as much at twice the side
    for a convolutional model without pooling; what does not grow with the batch (the
    weights' casts) does not grow with the input either."""
    from edgeslim.models.train_memory import step_memory

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(0))
    small, large = (step_memory(model, (3, side, side), torch.device("cpu")) for side in (16, 32))
    assert large.per_sample == 4 * small.per_sample > 0
    assert large.fixed == small.fixed > 0


def test_the_memory_check_counts_the_copies_of_the_weights_a_search_holds():
    """A search holds a dozen copies of the weights (base, gradients, candidate, momentum,
    casts, export): a model of large weights and small activations, which a bare training
    step fits, is refused when they do not fit, whatever its batch."""
    from edgeslim.models import train_memory

    model = nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10))
    need = train_memory.step_memory(model, (1000,), torch.device("cpu"))
    assert need.params == 4 * (1000 * 1000 + 1000 + 10 * 1000 + 10)
    assert need.at(2) > train_memory.SEARCH_COPIES * need.params + train_memory.RUNTIME_BYTES
    with pytest.raises(ModelError, match=r"and 12 copies of its 4\.0 MB of weights that a "
                                         r"search holds\), .*: not even a batch of 2 fits"):
        train_memory.check_training_memory(model, "m", (1000,), 8, torch.device("cpu"),
                                           need.at(2) - 1)
    assert need.largest_batch(need.at(2) - 1) < 2 <= need.largest_batch(need.at(2))
    # On a GPU, the export's, calibration's and packing's copies stay in host memory.
    on_gpu = train_memory.step_memory(model, (1000,), torch.device("cuda"))
    assert on_gpu.copies == train_memory.GPU_COPIES < train_memory.SEARCH_COPIES


def test_a_model_too_large_for_one_onnx_file_is_refused_before_its_export(tmp, capsys,
                                                                          monkeypatch):
    """ViT-H/14's 2.5 GB of weights: the exporter failed after a minute, asking for a file
    name. Here the limit is lowered below ResNet-20's 1.1 MB."""
    from edgeslim import export

    monkeypatch.setattr(export, "ONNX_FILE_LIMIT", 2**20)
    exported = []
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exported.append(a))
    message = refused(search(tmp), tmp, capsys)
    assert message.startswith("model 'resnet20' cannot be searched: every candidate is deployed "
                              "as an ONNX file, and ONNX export failed: the model's weights take ")
    assert message.endswith(" GiB one ONNX file holds (protobuf's limit)")
    assert not exported


def test_nothing_the_exporter_prints_reaches_the_terminal(tmp, capfd):
    """The TorchScript exporter's C++ code printed a 58-line graph before the one line."""
    extra, message = _unexportable(tmp)
    assert main(search(tmp, *extra)) == 2
    out, err = capfd.readouterr()
    assert (out, err) == ("", f"optimize: error: {message}\n")


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Any error while building a candidate fails that trial, and the study goes on

def test_an_unexpected_error_in_a_candidate_fails_only_its_trial(tmp_path):
    from edgeslim.evaluators import Caps, Measurement
    from edgeslim.search.objective import Objective
    from edgeslim.search.storage import artifact_store
    from edgeslim.spaces import Candidate

    class Evaluator:
        def evaluate(self, candidate, workdir):
            if candidate.sparsity == 0.5:
                raise RuntimeError("INDICES element is out of DATA bounds, id=8 axis_dim=8")
            return Measurement({"val_acc": 0.9, "macs": 1.0}, {})

    class Space:
        sparsities = [0.5, 0.6]

        def __call__(self, trial):
            return Candidate(order=("sparsify",), sparsity=self.sparsities[trial.number])

        def built_as(self, candidate):
            return str(candidate.sparsity)

    objective = Objective(Space(), Evaluator(), Caps(), ("macs",), artifact_store(tmp_path),
                          tmp_path)
    study = optuna.create_study(directions=["maximize", "minimize"])
    run_trials(study, objective, 2, tmp_path)
    assert [t.state for t in study.trials] == [FAIL, COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"] == (
        "unexpected RuntimeError: INDICES element is out of DATA bounds, id=8 axis_dim=8")


@pytest.mark.slow
def test_a_model_the_pruner_mishandles_is_searched_without_the_group(tmp_path, capsys):
    """The user's mobile model (squeeze-and-excitation gates, grouped convs behind a channel
    shuffle, a concatenation): pruning its stem failed inside torch-pruning and ended the
    whole search with a traceback. Now the stem's group is found at start and left out, said
    so, and the card of an exported trial names it."""
    workdir = tmp_path / "w"
    budget = write(tmp_path / "board.yaml", "device: {name: a board}\nlimits: {flops: 80%}\n"
                                            "objectives: [flops]\n")
    assert main(["--budget", str(budget), "--model", f"{TOYS}:MobileNet", "--trials", "2",
                 "--screen", "0", "--finalists", "0", "--no-references", "--base-epochs", "1",
                 "--finetune-steps", "2", "--order", "prune,cluster,quantize",
                 "--quantize", "int8_static", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "pruning: pruning stem breaks the model, so it is not searched\n" in out
    study = load_study(None, default_storage(workdir))
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]
    assert "prune/stem" not in study.trials[0].params
    assert main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "best"),
                 "--trial", "0"]) == 0
    card = json.loads((tmp_path / "best" / "model_card.json").read_text())
    reason = ("torch-pruning failed to prune 'stem' to 8 channels: RuntimeError: INDICES element "
              "is out of DATA bounds, id=24 axis_dim=8")
    assert card["compression"]["not_pruned"] == {"untraced": [], "left_out": {"stem": reason}}
    assert (f"Groups left out of the search: stem ({reason}).\n"
            in (tmp_path / "best" / "model_card.md").read_text())


# ---------------------------------------------------------------------------------------------
# Budget fields that reach ssh's command line

def _ssh_budget(tmp: Path, **fields: str) -> Path:
    latency = {"source": "ssh", "host": "pi@raspberrypi.local", **fields}
    return write(tmp / "board.yaml", "device: {name: a board}\nlatency:\n" + "".join(
        f"  {key}: {json.dumps(value)}\n" for key, value in latency.items()))


HOST_RULE = ("must be user@name, a host name or an IP address (letters, digits, '.', '-' and "
             "'_'; not starting with '-')")
ARGUMENT_RULE = "must be a path or command name (not starting with '-', no control characters)"


@pytest.mark.parametrize("key, value, rule", [
    ("host", "-oProxyCommand=touch MARKER", HOST_RULE),
    ("host", "pi@-oProxyCommand=touch MARKER", HOST_RULE),
    ("host", "-pi@raspberrypi.local", HOST_RULE),
    ("host", "pi@raspberry pi", HOST_RULE),
    ("host", "pi@host;touch MARKER", HOST_RULE),
    ("python", "-c import os; os.system('touch MARKER')", ARGUMENT_RULE),
    ("identity", "-oProxyCommand=touch MARKER", ARGUMENT_RULE),
    ("known_hosts", "/tmp/hosts\nProxyCommand touch MARKER", ARGUMENT_RULE),
])
def test_an_option_like_ssh_field_is_refused_and_runs_nothing(tmp, capsys, monkeypatch, key,
                                                              value, rule):
    ran: list[object] = []  # "touch MARKER" would write into tmp, the current directory
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: ran.append(a))
    budget = _ssh_budget(tmp, **{key: value})
    message = refused(search(tmp, budget=budget), tmp, capsys)
    assert message == f"{budget}: latency.{key}: {rule}, got {value!r}"
    assert ran == [] and not (tmp / "MARKER").exists()


@pytest.mark.parametrize("host", ["pi@raspberrypi.local", "raspberrypi", "pi@192.168.1.20",
                                  "root@::1", "build_bot.2@edge-07.lab.example.org"])
def test_ordinary_ssh_hosts_are_accepted(tmp_path, host):
    from edgeslim.budget import load_budget

    assert load_budget(_ssh_budget(tmp_path, host=host)).latency.host == host


def test_ssh_reads_the_host_after_the_end_of_its_options(monkeypatch):
    from edgeslim.budget import LatencySource
    from edgeslim.evaluators.latency_ssh import SshMeter

    calls: list[list[str]] = []

    def run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, b"", b"")

    monkeypatch.setattr(subprocess, "run", run)
    SshMeter(LatencySource(source="ssh", host="pi@raspberrypi.local"), 1)._ssh("true", 5)
    assert calls == [["ssh", "-p", "22", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "--",
                      "pi@raspberrypi.local", "true"]]


# ---------------------------------------------------------------------------------------------
# Smaller leaks

def test_export_refuses_a_trial_without_loading_the_model_code(tmp_path):
    """It took a minute to say no: everything was loaded first."""
    workdir = tmp_path / "runs"
    toy_study(workdir, default_storage(workdir))  # trial 3 failed; there is no trial 9
    script = ("import sys; from edgeslim.cli import main; code = main(sys.argv[1:]); "
              "print(sorted(m for m in ('torch', 'edgeslim.ship.exporter') "
              "if m in sys.modules)); sys.exit(code)")
    for trial, message in (("3", "trial 3 of 'toy-digits-board' is FAIL (loss diverged); pick "
                                 "a complete trial"),
                           ("9", "study 'toy-digits-board' has no trial 9 (trials 0 to 3)")):
        done = subprocess.run([sys.executable, "-c", script, "export", "--workdir", str(workdir),
                               "--out", str(tmp_path / "out"), "--trial", trial],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert (done.returncode, done.stdout, done.stderr) == (
            2, "[]\n", f"optimize: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_an_alias_bomb_is_quoted_in_at_most_120_characters(tmp, capsys):
    lol = '["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'
    levels = ["    - &a " + lol] + [f"    - &{b} [{', '.join([f'*{a}'] * 9)}]"
                                     for a, b in zip("abcde", "bcdef")]
    budget = write(tmp / "bomb.yaml", "device:\n  name: x\n  notes:\n" + "\n".join(levels) + "\n")
    message = refused(search(tmp, budget=budget), tmp, capsys)
    shown = ("[['lol', 'lol', 'lol', 'lol', 'lol', 'lol', ...], [['lol', 'lol', 'lol', 'lol', "
             "'lol', 'lol', ...], ['lol', 'lol', 'l...")
    assert message == f"{budget}: device.notes: must be a string, got {shown}"
    assert len(shown) == 120


def _help(command: str, option: str) -> str:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    action = next(a for a in sub._actions if option in a.option_strings)
    return action.help % {"default": action.default}


def test_the_help_says_what_the_defaults_and_choices_are():
    assert _help("search", "--storage") == (
        "Optuna storage: journal:PATH (a journal file), sqlite:///PATH, postgresql://... or "
        "mysql://... (default: the journal file studies.journal in --workdir)")
    assert _help("search", "--dataset") == (
        "digits, cifar10, mnist, fashion-mnist, imagefolder:PATH or npz:PATH (arrays x_train, "
        "y_train; see docs/search.md) (default: digits)")
    assert default_storage(Path("w")) == f"journal:{Path('w/studies.journal').resolve()}"


def test_the_readme_shows_the_address_the_dashboard_serves(tmp_path):
    workdir = tmp_path / "runs"
    study = toy_study(workdir, default_storage(workdir))
    environ: dict = {"PATH_INFO": "/api/studies"}
    setup_testing_defaults(environ)
    body = b"".join(wsgi(open_storage(default_storage(workdir)))(environ, lambda *a: None))
    served = {s["study_name"]: s["study_id"] for s in json.loads(body)["study_summaries"]}
    assert served == {study.study_name: study._study_id} == {"toy-digits-board": 0}
    docs = "".join(p.read_text() for p in (REPO / "README.md", REPO / "docs" / "deployment.md"))
    assert docs.count("http://127.0.0.1:8080/dashboard/studies/") == 2
    assert docs.count("http://127.0.0.1:8080/dashboard/studies/0") == 2


def test_library_chatter_goes_to_the_log_file_not_the_terminal(tmp_path, capfd):
    logs.quiet_libraries()
    try:
        logging.warning("Axis 1 is out-of-range for weight 'norm.weight' with rank 1")
        warnings.warn("an old argument", FutureWarning)
        with logs.captured_stderr("a library"):
            os.write(2, b"graph(%input : Float(*, 1, 8, 8))\n")
        assert capfd.readouterr() == ("", "")
        logs.attach(tmp_path / "w" / logs.LOG_NAME)
        text = (tmp_path / "w" / logs.LOG_NAME).read_text()
    finally:
        logs.show_libraries()
    assert "WARNING root: Axis 1 is out-of-range for weight 'norm.weight' with rank 1\n" in text
    assert "FutureWarning: an old argument" in text
    assert "WARNING edgeslim: a library printed:\ngraph(%input : Float(*, 1, 8, 8))\n" in text


def test_measuring_a_training_step_leaves_no_copy_of_the_weights_behind():
    """Saved tensors handed back to autograd under autocast kept the weights' bf16 casts alive
    after the forward: half a copy of the weights per probe, for the whole run."""
    import gc

    from edgeslim.models.train_memory import _saved_bytes

    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).train()

    def casts() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16)

    before = casts()
    # A CUDA device selects bf16 autocast on the CPU the probe runs on, whatever this host.
    saved = _saved_bytes(model, torch.zeros(2, 512), torch.device("cuda"))
    assert saved >= 512 * 512 * 2  # the second layer's bf16 weight was saved, and counted
    assert casts() == before
