"""Fine-tuning (`wrn train --init DIR`, train.init): from a trained run and from an imported
checkpoint; the classifier kept or new; the architecture checked tensor by tensor; everything
recorded, so that a resume is exact without DIR and a replay needs DIR's very weights."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import wrn
from helpers import break_at_step, write_image_folder  # tests/helpers.py
from reference_nets import dm_state, ssl_state  # tests/reference_nets.py
from stopping import differing, records, resumed_from, stop_at, weights  # tests/stopping.py
from wrn.cli import main
from wrn.errors import UserError
from wrn.train import preempt
from wrn.train.config import load_config
from wrn.train.engine import fit
from wrn.train.finetune import describe, with_init
from wrn.train.run import build_run

pytestmark = pytest.mark.usefixtures("one_thread")

# 48 train images / batch 8 = 6 steps per epoch; 2 epochs.
ARGS = ["train.epochs=2", "train.batch_size=8", "data.val_size=0", "optim.schedule=onecycle",
        "optim.warmup_epochs=1", "optim.lr=0.05", "accel.precision=fp32", "accel.channels_last=false",
        "accel.compile=false", "log.every_steps=4", "train.eval_batch_size=32", "train.checkpoint_every=4",
        "accel.device=cpu"]


def train(argv: list[str]) -> int:
    return main(["train", "--quiet", *argv])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """Data with 4 and with 3 classes, and a trained wrn-10-1 on the 4-class data (the source)."""
    root = tmp_path_factory.mktemp("init")
    four = write_image_folder(root / "four", 48, 16, 8, classes=4)
    three = write_image_folder(root / "three", 48, 16, 8, classes=3, seed=1)
    cache = root / "cache"
    source = root / "source"
    assert train(["--data", str(four), "--out", str(source), "model.name=wrn-10-1", "model.dropout=0",
                  f"data.cache_dir={cache}", *ARGS]) == 0
    return root, four, three, cache, source


def fine_tune_config(data: Path, cache: Path, init: Path, *extra: str):
    """The config `wrn train --init` builds (the source's model and inputs, then the command's keys)."""
    command = [f"data.path={data}", f"data.cache_dir={cache}", *ARGS, "train.seed=7", *extra]
    return load_config(overrides=with_init(command, str(init)))


def test_init_takes_the_weights_and_keeps_or_replaces_the_classifier(setup, tmp_path):
    root, four, three, cache, source = setup
    src = weights(source)
    for data, kept in ((four, True), (three, False)):
        cfg = fine_tune_config(data, cache, source)
        assert cfg.model.name == "wrn-10-1" and cfg.train.init == str(source)
        run, state = build_run(cfg, tmp_path / f"ft{kept}", False, True, time.perf_counter())
        assert state is None and run.cfg.train.init_sha256 == json.loads(
            (source / "checkpoint" / "state.json").read_text())["sha256"]["model.safetensors"]
        now = {k: v for k, v in run.model.state_dict().items()}
        body = [k for k in src if not k.startswith("fc.")]
        assert all(torch.equal(now[k], src[k]) for k in body)  # every other tensor is the source's
        if kept:
            assert torch.equal(now["fc.weight"], src["fc.weight"]) and torch.equal(now["fc.bias"], src["fc.bias"])
        else:  # control: 3 classes get the model's own fresh, seeded classifier
            assert now["fc.weight"].shape == (3, src["fc.weight"].shape[1])
            torch.manual_seed(7)
            fresh = wrn.create_model("wrn-10-1", num_classes=3)
            assert torch.equal(now["fc.weight"], fresh.fc.weight.detach())
        assert run.extra_state["init"]["classifier"] == ("kept" if kept else "new")
        assert "note" not in describe(run.extra_state["init"], run.extra_state["normalize"])
        other = {"mean": [0.5] * 3, "std": [0.25] * 3, "zca": None}  # e.g. data.normalize=dataset on new data
        assert "note: inputs are normalised with mean [0.5, 0.5, 0.5]" in describe(run.extra_state["init"], other)
        assert not run.optimizer.state  # a fresh optimizer: no momentum carried over
        # The input convention the weights were trained on: the source's mean/std, not the new data's.
        assert list(cfg.data.mean) == pytest.approx(json.loads(
            (source / "checkpoint" / "state.json").read_text())["normalize"]["mean"])


def test_fine_tune_records_itself_and_a_replay_needs_the_same_weights(setup, tmp_path, capsys):
    root, four, three, cache, source = setup
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    out = tmp_path / "ft"
    assert main(["train", "--data", str(three), "--init", str(copy), "--out", str(out), f"data.cache_dir={cache}",
                 *ARGS]) == 0
    err = capsys.readouterr().err
    assert f"fine-tuning from {copy}" in err and "new classifier: 4 classes in the source, 3 here" in err
    # The same command again (a cluster's restart) finds its own run there, sha256 recorded and all.
    assert main(["train", "--data", str(three), "--init", str(copy), "--out", str(out), f"data.cache_dir={cache}",
                 *ARGS]) == 0
    assert "already finished" in capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    digest = json.loads((copy / "checkpoint" / "state.json").read_text())["sha256"]["model.safetensors"]
    assert saved["init"] == str(copy) and saved["init_sha256"] == digest
    (init,) = records(out, "init")
    assert init["step"] == 0 and init["source"] == str(copy) and init["sha256"] == digest
    assert init["classifier"] == "new" and init["weights"] == "model.safetensors"
    assert records(out, "start")[0]["step"] == 0  # step, schedule, optimizer: fresh
    assert wrn.load_checkpoint(out)[1]["init"]["sha256"] == digest
    assert main(["runs", str(out)]) == 0
    assert f"finished (fine-tuned from {copy})" in capsys.readouterr().out

    # A replay of config.yaml from the same DIR gives the same weights; a changed DIR is refused.
    assert train(["--config", str(out / "config.yaml"), "--out", str(tmp_path / "replay")]) == 0
    assert differing(tmp_path / "replay", out) == []
    shutil.rmtree(copy)
    shutil.copytree(out, copy)  # DIR now holds other weights (the same architecture)
    assert train(["--config", str(out / "config.yaml"), "--out", str(tmp_path / "changed")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(copy) in err and "sha256" in err
    assert not (tmp_path / "changed").exists()
    shutil.rmtree(copy)
    assert train(["--config", str(out / "config.yaml"), "--out", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(copy) in err and "no such directory" in err
    assert not (tmp_path / "missing").exists()


def reference_fine_tune(setup, tmp_path):
    """A private copy of the source run (a test may delete it) and an uninterrupted fine-tune from it."""
    root, four, three, cache, source = setup
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    cfg = fine_tune_config(three, cache, copy)
    fit(cfg, tmp_path / "reference", quiet=True)
    return copy, cfg


def test_kill_and_resume_of_a_fine_tuning_run_is_bit_identical_without_its_source(setup, tmp_path, monkeypatch):
    copy, cfg = reference_fine_tune(setup, tmp_path)
    with monkeypatch.context() as m:
        stop_at(m, 5)  # mid-epoch 1, after the checkpoint at step 4
        with pytest.raises(preempt.Preempted):
            fit(cfg, tmp_path / "stopped", quiet=True)
    shutil.rmtree(copy)  # a resume restores its own checkpoint: DIR is never read again
    saved = load_config(config_file=tmp_path / "stopped" / "config.yaml")
    fit(saved, tmp_path / "stopped", resume=True, quiet=True)
    assert resumed_from(tmp_path / "stopped") == 5
    assert differing(tmp_path / "stopped", tmp_path / "reference") == []
    assert len(records(tmp_path / "stopped", "init")) == 1


def test_a_run_stopped_before_its_first_checkpoint_starts_over_from_the_same_weights(setup, tmp_path, monkeypatch):
    """With no checkpoint of its own, a resume starts over and reads DIR again, checked by sha256."""
    copy, cfg = reference_fine_tune(setup, tmp_path)
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        break_at_step(m, 2, "interrupt")  # Ctrl-C at step 2, before the first checkpoint (step 4)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, killed, quiet=True)
    assert not (killed / "checkpoint").exists()
    saved = load_config(config_file=killed / "config.yaml")
    copy.rename(tmp_path / "aside")
    shutil.copytree(tmp_path / "reference", copy)  # DIR now holds other weights
    with pytest.raises(UserError, match=f"train.init {copy}: its weights .* have sha256"):
        fit(saved, killed, resume=True, quiet=True)
    shutil.rmtree(copy)
    (tmp_path / "aside").rename(copy)
    fit(saved, killed, resume=True, quiet=True)
    assert differing(killed, tmp_path / "reference") == []


def test_mismatching_architecture_fails_naming_the_tensor_and_writes_nothing(setup, tmp_path, capsys):
    root, four, three, cache, source = setup
    out = tmp_path / "ft"
    assert train(["--data", str(four), "--init", str(source), "--out", str(out), "model.name=wrn-10-2",
                  f"data.cache_dir={cache}", *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "tensor 'conv2.0.branch.0.weight' is [16, 16, 3, 3]" in err and "[32, 16, 3, 3] in wrn-10-2" in err
    assert not out.exists()
    assert train(["--data", str(four), "--init", str(source), "--out", str(out), "model.dropout=0.3",
                  f"data.cache_dir={cache}", *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert "'conv2.0.branch.4.weight'" in err and "model.dropout=0.3 adds or removes the Dropout layer" in err
    assert not out.exists()
    # Same tensors, another function (dm-wrn normalises inside and pads otherwise): refused too.
    assert train(["--data", str(four), "--init", str(source), "--out", str(out), "model.name=dm-wrn-10-1",
                  "data.normalize=none", f"data.cache_dir={cache}", *ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds wrn-10-1, this run builds dm-wrn-10-1" in err and not out.exists()


@pytest.mark.parametrize("argv, says", [
    (["--resume", "RUN", "--init", "SRC"], "drop one"),
    (["--init", "DATA"], "is not a run directory"),
    (["--init", "NOWHERE"], "no such directory"),
    (["--init", "UNSTARTED"], "has no checkpoint yet"),
])
def test_bad_init_is_one_line(setup, tmp_path, capsys, argv, says):
    root, four, three, cache, source = setup
    unstarted = tmp_path / "unstarted"  # a run directory killed before its first checkpoint
    unstarted.mkdir()
    shutil.copy(source / "config.yaml", unstarted / "config.yaml")
    where = {"RUN": source, "SRC": source, "DATA": four, "NOWHERE": tmp_path / "nowhere", "UNSTARTED": unstarted}
    argv = [str(where.get(a, a)) for a in argv]
    if "--resume" not in argv:
        argv += ["--out", str(tmp_path / "ft"), "--data", str(four)]
    assert train(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err
    assert not (tmp_path / "ft").exists()


def test_import_then_fine_tune_then_eval_like_a_user(setup, tmp_path, capsys):
    """The point of it all: `wrn import` a foreign checkpoint, `wrn train --init` it, `wrn eval`."""
    root, four, three, cache, source = setup
    torch.save({"state_dict": {"module." + k: v for k, v in dm_state(10, 1, 10).items()}}, tmp_path / "dm.pt")
    imported = tmp_path / "runs" / "dm"
    assert main(["import", str(tmp_path / "dm.pt"), "--layout", "dm", "--out", str(imported),
                 "model.activation=silu"]) == 0
    out = tmp_path / "runs" / "ft"
    assert main(["train", "--quiet", "--data", str(four), "--init", str(imported), "--out", str(out),
                 f"data.cache_dir={cache}", *ARGS]) == 0
    capsys.readouterr()
    # The same tensors with another activation compute another function: refused, naming both.
    assert main(["train", "--quiet", "--data", str(four), "--init", str(imported), "--out", str(tmp_path / "relu"),
                 "model.activation=relu", f"data.cache_dir={cache}", *ARGS]) == 2
    assert "has activation 'silu', this run's 'relu'" in capsys.readouterr().err
    assert not (tmp_path / "relu").exists()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    # --init took the architecture (activation silu) and the [0, 1] inputs dm-wrn normalises itself.
    assert cfg["model"]["name"] == "dm-wrn-10-1" and cfg["model"]["activation"] == "silu"
    assert cfg["data"]["normalize"] == "none"
    model, state = wrn.load_checkpoint(out)
    assert model.model_args["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])  # inherited from the source
    assert state["init"]["imported"] and state["init"]["classifier"] == "new"
    src = load_file(imported / "checkpoint" / "model.safetensors")
    assert not torch.equal(weights(out)["conv1.weight"], src["conv1.weight"])  # it trained
    assert main(["eval", str(out), "--data", str(four), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert result["accuracy"] == pytest.approx(summary["test_acc"])


def test_fine_tune_from_an_imported_usb_checkpoint_inherits_its_codebase(setup, tmp_path, capsys):
    """TorchSSL's net has conv biases and no config key says so: the fine-tuned model inherits them."""
    root, four, three, cache, source = setup
    torch.save({"model": ssl_state(10, 1, 10, "torchssl")}, tmp_path / "ssl.pth")
    imported = tmp_path / "ssl"
    wrn.import_checkpoint(tmp_path / "ssl.pth", imported, layout="ssl-torchssl", log=None)
    out = tmp_path / "ft"
    assert train(["--data", str(three), "--init", str(imported), "--out", str(out), f"data.cache_dir={cache}",
                  *ARGS]) == 0
    model, state = wrn.load_checkpoint(out)
    assert model.model_args["codebase"] == "torchssl" and model.conv2[0].branch[0].bias is not None
    # The source's input constants (TorchSSL's CIFAR-10 mean/std), not the new data's.
    assert state["normalize"]["mean"] == pytest.approx([125.3 / 255, 123.0 / 255, 113.9 / 255])


def test_a_fine_tuning_config_keeps_the_sources_net_and_inputs():
    """Validation: a budget may not narrow the source's net; a dm-wrn (it normalises inside) takes [0, 1] pixels."""
    with pytest.raises(UserError, match="train.budget_min_epochs: a fine-tuning run"):
        load_config(overrides=["train.init=src", "train.time_budget=60", "train.budget_min_epochs=1"])
    load_config(overrides=["train.init=src", "train.time_budget=60", "train.budget_min_epochs=0"])
    with pytest.raises(UserError, match="data.normalize: dm-wrn-10-1 normalises inside"):
        load_config(overrides=["train.init=src", "model.name=dm-wrn-10-1"])
    load_config(overrides=["train.init=src", "model.name=dm-wrn-10-1", "data.normalize=none"])
