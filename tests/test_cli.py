"""The optimize command end to end on digits, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch

from edgeslim.cli import main
from edgeslim.data import load_dataset
from edgeslim.models import build_model
from edgeslim.search.config import default_storage
from edgeslim.search.storage import load_study
from edgeslim.search.workers import counts, pick_finalists, retried
from toys import PI4, REPO, UNTIMED

FAST: list[str] = []  # the digits defaults: 30 base epochs (~10 s), 5 fine-tune epochs


def test_search_records_every_trial(searched):
    study = load_study(None, default_storage(searched))
    assert study.study_name == "resnet20-digits-pi4"
    # Three trials, all references (the first three of six), then the two finalists: the
    # best Pareto trials fine-tuned again, three times as long.
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert [t.user_attrs.get("reference") for t in study.trials[:3]] == [
        "prune-cluster-int8", "prune-dynamic-int8", "uniform"]
    finalists = study.trials[3:]
    assert sorted(t.user_attrs["finalist_of"] for t in finalists) == \
        sorted(t.number for t in pick_finalists(study, 2))
    for t in finalists:
        source = study.trials[t.user_attrs["finalist_of"]]
        assert t.params == source.params and t.user_attrs["candidate"] == \
            source.user_attrs["candidate"]
        assert t.user_attrs["finetune_steps"] == 3 * source.user_attrs["finetune_steps"]
    base = study.user_attrs["base"]
    resnet20 = build_model("resnet20", 1, 10)
    assert base["val_acc"] > 0.95
    assert base["params"] == sum(p.numel() for p in resnet20.parameters())
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        attrs = t.user_attrs
        for key in ("val_acc", "params", "macs", "size_bytes", "peak_memory_bytes",
                    "latency_ms"):
            assert attrs[key] > 0
        assert set(t.constraints) == {"params", "macs", "peak_memory_bytes", "size_bytes",
                                      "latency_ms", "val_acc"}
        assert len(t.values) == 3  # accuracy, MACs, latency (the budget's objectives)
        assert t.values[0] == attrs["val_acc"] and t.values[1] == attrs["macs"]
        if attrs["finetuned"]:
            # The deployable file is the packed one exactly when clustering or sparsity ran.
            packed = "cluster" in t.params["stages/order"] or "sparsify" in \
                t.params["stages/order"]
            deployable = "model.eslim" if packed else "model.onnx"
            assert sorted(k for k in attrs if k.startswith("artifact:")) == sorted(
                [f"artifact:{deployable}", "artifact:model_state.pt"])
        pruned = [k for k in t.params if k.startswith("prune/")]
        if "prune" in t.params["stages/order"]:
            assert sorted(pruned) == sorted(
                ["prune/importance"] + [f"prune/{g['name']}" for g in study.user_attrs["space"]
                                                                      ["groups"]])
        else:
            assert pruned == []


def test_export_writes_files_that_run_and_fit(searched, tmp_path, capsys):
    out = tmp_path / "best"
    assert main(["export", "--workdir", str(searched), "--out", str(out)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    study = load_study(None, default_storage(searched))
    feasible = [t for t in study.trials if t.user_attrs.get("finetuned")
                and all(v <= 0 for v in t.constraints.values())]
    finalists = [t for t in feasible if "finalist_of" in t.user_attrs]
    assert finalists  # export picks from the finalists when there are any
    # Highest validation accuracy; a tie goes to the lower latency, then the lower number.
    best = min(finalists, key=lambda t: (-t.user_attrs["val_acc"],
                                         t.user_attrs.get("latency_ms", 0.0), t.number))
    assert card["trial"] == best.number
    assert card["fits_budget"] is True
    check = card["onnx_vs_pytorch"]
    exact = best.user_attrs["quantize"] == "none"
    assert check["pass"] is (True if exact else None)  # quantized logits differ by design
    deployable = out / card["files"]["deployable"]
    assert card["measures"]["size_bytes"]["value"] == deployable.stat().st_size
    assert card["measures"]["val_acc"]["value"] == pytest.approx(best.user_attrs["val_acc"])
    assert set(card["limits"]) == {"params", "macs", "peak_memory_bytes", "size_bytes",
                                   "latency_ms", "accuracy_drop"}
    # The ONNX file alone, with the card's preprocessing, reproduces the card's accuracy.
    pre = card["preprocessing"]
    data = load_dataset("digits", REPO)
    x = (data.val.x.numpy() / 255.0 - np.array(pre["mean"]).reshape(1, -1, 1, 1)) / \
        np.array(pre["std"]).reshape(1, -1, 1, 1)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {pre["input_name"]: x.astype(np.float32)})[0]
    acc = float((logits.argmax(1) == data.val.y.numpy()).mean())
    assert acc == pytest.approx(card["measures"]["val_acc"]["value"])
    # The PyTorch file loads without edgeslim's model code and agrees with the ONNX file.
    program = torch.export.load(str(out / "model.pt2")).module()
    n = check["images"]
    torch_logits = program(torch.from_numpy(x[:n].astype(np.float32))).detach().numpy()
    if exact:
        assert np.abs(torch_logits - logits[:n]).max() <= check["tolerance"]
    # The card compared the in-memory model; the saved program may flip one close call.
    agree = float((torch_logits.argmax(1) == logits[:n].argmax(1)).mean())
    assert abs(check["argmax_agree"] - agree) <= 1 / n
    assert "fits the budget: yes" in capsys.readouterr().out


def test_rerun_resumes_the_study(searched, capsys):
    before = len(load_study(None, default_storage(searched)).trials)
    assert main(["--budget", str(PI4), "--trials", "4", "--workdir", str(searched), *FAST]) == 0
    study = load_study(None, default_storage(searched))
    assert "3 finished, 1 to run" in " ".join(capsys.readouterr().out.split())  # unwrapped
    again = retried(study.trials)
    assert sum(counts(t, again) for t in study.trials) == 4
    new = study.trials[before:]
    searched_now = [t for t in new if "finalist_of" not in t.user_attrs]
    # One search trial (or more when the sampler drew candidates no repair can fit, which do
    # not count), then the finalists the new Pareto front lacks.
    assert [counts(t) for t in searched_now].count(True) == 1
    have = {t.user_attrs["finalist_of"] for t in study.trials if "finalist_of" in t.user_attrs}
    assert {t.number for t in pick_finalists(study, 2)} <= have


def test_resume_with_another_setup_is_refused(searched, capsys):
    code = main(["--budget", str(PI4), "--trials", "5", "--workdir", str(searched),
                 "--finetune-epochs", "3"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("optimize: error: study 'resnet20-digits-pi4' in journal:")
    assert "different finetune" in err and len(err.strip().splitlines()) == 1


def test_show_prints_the_pareto_table(searched, capsys):
    assert main(["show", "--workdir", str(searched)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front of resnet20-digits-pi4" in out and "base" in out


@pytest.mark.parametrize("argv, message", [
    (["export", "--study", "nope", "--out", "OUT"], "no study 'nope' in journal:"),
    (["export", "--trial", "99", "--out", "OUT"], "has no trial 99 (trials 0 to "),
])
def test_export_errors(searched, tmp_path, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main([*argv, "--workdir", str(searched)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_of_a_missing_storage_creates_nothing(tmp_path, capsys):
    code = main(["export", "--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no study storage at" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--importance", "fisher"], "--importance: must be among l1, l2, bn_scale, lamp, "
                                 "taylor, hessian, none, got 'fisher'"),
    (["--max-ratio", "1.5"], "--max-ratio: must be > 0 and < 1, got 1.5"),
    (["--checkpoint", "missing.pt"], "--checkpoint: no such file missing.pt"),
    (["--cluster-counts", "1,16"], "--cluster-counts: each count must be >= 2, got '1,16'"),
    (["--cluster-counts", "16,100000"], "--cluster-counts: each count must be >= 2 and <= the "
     "weights of the largest layer (layer3.0.conv2: 36864), got 100000"),
    (["--stages", "prune,shrink"], "--stages: must be among prune, sparsify, cluster, "
     "quantize, got 'prune,shrink'"),
    (["--order", "prune,cluster,prune"], "--order prune,cluster,prune: stage 'prune' appears "
     "more than once"),
    (["--order", "quantize,prune"], "--order quantize,prune: quantize must be the last stage"),
    (["--quantize", "int4"], "--quantize: must be among int8_static, int8_dynamic, fp16, got "
     "'int4'"),
    (["--preset", "deep"], "--preset: unknown preset 'deep'; valid: prune-cluster-int8, "),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    workdir = tmp_path / "w"
    code = main(["--budget", str(PI4), "--workdir", str(workdir), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not workdir.exists()


@pytest.mark.parametrize("value", ["0", "-0.1", "nan", "inf", "fast"])
def test_a_finetune_rate_must_be_a_positive_finite_number(tmp_path, capsys, value):
    workdir = tmp_path / "w"
    with pytest.raises(SystemExit) as stop:  # argparse's usage error
        main(["--budget", str(PI4), "--workdir", str(workdir), "--finetune-lr", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert len(err.strip().splitlines()) == 1 and "--finetune-lr must be" in err
    assert not workdir.exists()


def test_the_finetune_rate_reaches_the_search_and_the_finalists():
    from edgeslim._options import search_config
    from edgeslim.cli import build_parser
    from edgeslim.defaults import FINETUNE_LR

    def recipes(*extra: str):
        args = build_parser().parse_args(["search", "--budget", str(PI4), *extra])
        config = search_config(args)
        return config.finetune.lr, config.final.lr

    assert recipes() == (FINETUNE_LR, FINETUNE_LR)
    assert recipes("--finetune-lr", "0.002") == (0.002, 0.002)


def test_a_smaller_batch_scales_the_default_rates_but_not_a_given_one():
    from edgeslim._options import search_config
    from edgeslim.cli import build_parser
    from edgeslim.defaults import FINETUNE_LR
    from edgeslim.training import TrainRecipe

    def recipes(*extra: str):
        config = search_config(build_parser().parse_args(["search", "--budget", str(PI4),
                                                          *extra]))
        return [(r.batch_size, r.lr) for r in (config.base_recipe, config.finetune,
                                               config.final)]

    default = TrainRecipe()
    assert recipes() == [(128, default.lr), (128, FINETUNE_LR), (128, FINETUNE_LR)]
    assert recipes("--batch-size", "32") == [
        (32, default.lr / 4), (32, FINETUNE_LR / 4), (32, FINETUNE_LR / 4)]
    assert recipes("--batch-size", "32", "--finetune-lr", "0.01") == [
        (32, default.lr / 4), (32, 0.01), (32, 0.01)]


def test_bad_budget_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: {name: b}\nlimits: {flops: 40Q}\n")
    proc = subprocess.run([sys.executable, "-m", "edgeslim.cli", "--budget", str(bad),
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"optimize: error: {bad}: limits.flops: unknown unit 'Q' "
                           "(accepted: K, M, G, %), got '40Q'\n")
    assert not (tmp_path / "w").exists()


def test_all_stages_export_an_int8_clustered_artifact_the_card_measures(workdir, tmp_path,
                                                                         capsys):
    """prune > cluster > int8 static on digits: the exported packed file, restored, is what the
    card's accuracy and size describe."""
    from edgeslim.packing import read_packed

    # No finalists and one fine-tune epoch per stage: the export and card are what is checked.
    assert main(["--budget", str(UNTIMED), "--trials", "2", "--workdir", str(workdir),
                 "--order", "prune,cluster,quantize", "--quantize", "int8_static",
                 "--finalists", "0", "--finetune-epochs", "1"]) == 0
    study = load_study(None, default_storage(workdir))
    assert study.trials[0].user_attrs["reference"] == "prune-cluster-int8"
    trial = max((t for t in study.trials if t.user_attrs["finetuned"]),
                key=lambda t: t.user_attrs["val_acc"])
    out = tmp_path / "out"
    assert main(["export", "--workdir", str(workdir), "--out", str(out),
                 "--trial", str(trial.number)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["files"]["deployable"] == "model.eslim"
    assert card["compression"]["stage_order"] == ["prune", "cluster", "quantize"]
    assert card["compression"]["quantize"] == "int8_static"
    counts = trial.user_attrs["candidate"]["cluster_counts"]
    assert set(card["compression"]["clusters"]) == set(counts)
    assert all(card["compression"]["clusters"][k] <= counts[k] + 1 for k in counts)
    assert card["measures"]["size_bytes"]["value"] == (out / "model.eslim").stat().st_size
    assert "Files: `model.eslim`, `model.onnx`, `model.pt2`." in \
        (out / "model_card.md").read_text()
    # The restored file is int8 and its accuracy in onnxruntime is the card's.
    restored = read_packed(out / "model.eslim")
    assert restored.SerializeToString() == onnx.load(str(out / "model.onnx")).SerializeToString()
    assert "QuantizeLinear" in {n.op_type for n in restored.graph.node}
    data = load_dataset("digits", REPO)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = data.normalize(data.val.x).numpy()
    acc = float((session.run(None, {"input": x})[0].argmax(1) == data.val.y.numpy()).mean())
    assert acc == card["measures"]["val_acc"]["value"]
    assert card["measures"]["val_acc"]["value"] == trial.user_attrs["val_acc"]


def test_sparsity_shrinks_the_file_and_the_card_says_it_does_not_save_macs(workdir, tmp_path):
    budget = tmp_path / "flash.yaml"
    budget.write_text("device: {name: a board with little flash}\nlimits: {size: 2MB}\n"
                      "objectives: [size]\n")
    out = tmp_path / "out"
    assert main(["--budget", str(budget), "--trials", "1", "--workdir", str(workdir),
                 "--order", "sparsify", "--sparsity", "0.8:0.8", "--no-references",
                 "--finalists", "0"]) == 0
    assert main(["export", "--workdir", str(workdir), "--out", str(out), "--trial", "0"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["compression"]["stage_order"] == ["sparsify"]
    assert card["compression"]["sparsity_note"] == (
        "unstructured sparsity shrinks the stored file only: the runtime computes with dense "
        "kernels, so MACs and latency are those of the dense model")
    assert card["measures"]["macs"]["value"] == card["base"]["macs"]
    # 80% zeros: the packed file keeps a bitmap plus the nonzero values
    assert card["files"]["deployable"] == "model.eslim"
    assert (out / "model.eslim").stat().st_size < 0.35 * (out / "model.onnx").stat().st_size


def test_the_command_line_defaults_are_the_search_defaults():
    """The command line spells some defaults itself, to parse without loading PyTorch."""
    from edgeslim.cli import build_parser
    from edgeslim.compress import IMPORTANCES
    from edgeslim.recovery import Recovery
    from edgeslim.search.config import SpaceOptions

    args = build_parser().parse_args(["search", "--budget", "budgets/pi4.yaml"])
    assert tuple(args.importance.split(",")) == IMPORTANCES == SpaceOptions().importances
    assert args.max_ratio == SpaceOptions().max_ratio
    assert args.recovery is None and Recovery().describe() == "none"
