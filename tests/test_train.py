"""Training end to end on tiny data: the quick preset's code path, overfitting, eval, NaN handling,
lr schedules. Datasets are image folders written by the tests (PNG), read by the real data layer."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
import torch

from wrn.cli import main
from wrn.train.config import load_config
from wrn.train.engine import NonFiniteLoss, fit
from wrn.train.optim import Schedule, param_groups, scaled

from helpers import break_at_step, write_image_folder  # tests/helpers.py


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, one_thread):
    """A short run of the quick preset (bf16, channels_last; too short to compile, so eager)."""
    root = tmp_path_factory.mktemp("quick")
    data = write_image_folder(root / "data", 288, 64, 16)
    out = root / "run"
    rc = main(["train", "--preset", "quick", "--data", str(data), "--out", str(out), "--quiet",
               "model.name=wrn-10-1", "train.epochs=3", "train.time_budget=0", "train.batch_size=32", "data.val_size=32",
               "train.checkpoint_every=5", "train.keep_every=2", "log.every_steps=2", "train.eval_batch_size=64",
               f"data.cache_dir={root / 'cache'}"])
    assert rc == 0
    return out, data


def test_quick_preset_runs_and_loss_falls(quick_run):
    out, _ = quick_run
    for name in ("config.yaml", "log.jsonl", "summary.json", "checkpoint/model.safetensors",
                 "checkpoint/state.json", "checkpoint/optimizer.safetensors", "checkpoint/optimizer.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0002"]  # train.keep_every=2
    assert (out / "curves.png").is_file()  # drawn by `wrn train` once fit returns
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert steps[-1]["loss"] < steps[0]["loss"]
    start = next(r for r in records if r["kind"] == "start")
    assert start["keep_memory"] is (platform.libc_ver()[0] == "glibc")  # accel.keep_memory default
    for r in epochs:
        assert {"lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "img_per_s", "elapsed_s"} <= r.keys()
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True and summary["epochs"] == 3 and summary["model"] == "wrn-10-1"
    assert summary["test_acc"] > 0.5  # 4 colour-cast classes: far above chance after 3 epochs
    from wrn.train import hardware

    for where in (summary["provenance"], start["provenance"]):  # which machine and code made the number
        assert where["cpu"] == hardware.cpu_model() and where["isa"] == hardware.cpu_isa()
        assert where["cpu_threads"] == 1 and where["torch"] == torch.__version__ and where["wrn"]
        assert where["command"].startswith("wrn train --preset quick") and "--out" in where["command"]
        assert where["git_commit"] is None or len(where["git_commit"]) == 40
    cfg = load_config(config_file=out / "config.yaml")  # the resolved config loads back as is
    assert cfg.accel.precision == "auto" and cfg.model.name == "wrn-10-1"
    from wrn.train.hardware import auto_precision

    # "auto" is resolved once, for this machine, and the run says what it ran.
    assert json.loads((out / "summary.json").read_text())["precision"] == auto_precision(torch.device("cpu"))


def test_eval_reproduces_summary_accuracy(quick_run, capsys):
    out, data = quick_run
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out / "checkpoint"), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == summary["test_acc"]
    assert main(["eval", str(out), "--split", "val"]) == 0  # the run's own data by default
    assert "val accuracy" in capsys.readouterr().out


def test_load_checkpoint_rebuilds_the_model(quick_run):
    import wrn

    out, _ = quick_run
    model, state = wrn.load_checkpoint(out)
    assert state["model_args"]["name"] == "wrn-10-1" and not model.training
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_nonempty_out_is_refused(quick_run, capsys):
    out, data = quick_run
    assert main(["train", "--data", str(data), "--out", str(out), "model.name=wrn-10-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]


def test_streaming_imagenet_recipe_on_a_tiny_folder(tmp_path, capsys):
    """paper-imagenet's code path (DataLoader streaming, val/ as the test split, lr scaled to the
    batch) on a tiny image folder, then `wrn eval` on the result."""
    data = write_image_folder(tmp_path / "data", 64, 32, 16)
    (data / "test").rename(data / "val")
    out = tmp_path / "run"
    assert main(["train", "--preset", "paper-imagenet", "--data", str(data), "--out", str(out), "--quiet",
                 "model.name=wrn-10-1", "data.image_size=16", "data.workers=0", "train.epochs=1",
                 "train.batch_size=16", "train.eval_batch_size=16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["lr"] == pytest.approx(0.1 * 16 / 256)  # optim.scale_with_batch
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == summary["test_acc"]
    assert main(["train", "--preset", "paper-imagenet", "--out", str(tmp_path / "r2")]) == 2
    assert "needs a local copy" in capsys.readouterr().err


def test_overfits_256_images(tmp_path):
    """A tiny WRN memorises 256 noise images with random labels (> 95% training accuracy)."""
    data = write_image_folder(tmp_path / "noise", 256, 16, 8, random_labels=True)
    cfg = load_config(overrides=[
        "model.name=wrn-10-2", "model.dropout=0", f"data.path={data}", "data.val_size=0", "data.augment=false",
        f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=15", "train.batch_size=32", "optim.lr=0.1",
        "optim.weight_decay=0", "optim.schedule=onecycle", "optim.warmup_epochs=1", "accel.device=cpu"])
    summary = fit(cfg, tmp_path / "run", quiet=True)
    assert summary["train_acc"] > 0.95


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return write_image_folder(root / "data", 128, 32, 8), root / "cache"


def _small_cfg(small_data, *extra):
    data, cache = small_data
    return load_config(overrides=["model.name=wrn-10-1", "model.dropout=0", f"data.path={data}", "data.val_size=0",
                                  f"data.cache_dir={cache}", "train.epochs=2", "train.batch_size=16",
                                  "train.checkpoint_every=2", "log.every_steps=1", "accel.device=cpu", *extra])


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, small_data, monkeypatch):
    from safetensors.torch import load_file

    break_at_step(monkeypatch, 5)
    with pytest.raises(NonFiniteLoss, match="step 5 "):
        fit(_small_cfg(small_data), tmp_path / "run", quiet=True)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "run" / "checkpoint" / "model.safetensors").values())
    assert not (tmp_path / "run" / "summary.json").exists()


def test_skip_nonfinite_skips_the_batch(tmp_path, small_data, monkeypatch):
    break_at_step(monkeypatch, 5)
    summary = fit(_small_cfg(small_data, "train.skip_nonfinite=true"), tmp_path / "run", quiet=True)
    assert summary["finished"] and np.isfinite(summary["test_loss"])
    last = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-2]
    assert last["kind"] == "epoch" and last["skipped"] == 1


def test_step_schedule_follows_the_paper():
    cfg = load_config("paper-cifar")
    sched = Schedule(cfg.optim, scaled(cfg.optim, 128, 200), steps_per_epoch=10, epochs=200)
    assert sched(0) == pytest.approx(0.1)
    assert sched(599) == pytest.approx(0.1) and sched(600) == pytest.approx(0.02)
    assert sched(1200) == pytest.approx(0.004) and sched(1999) == pytest.approx(0.0008)


def test_onecycle_and_cosine_schedules():
    cfg = load_config("quick", overrides=["train.epochs=10", "optim.warmup_epochs=2", "optim.lr=0.2"])
    sched = Schedule(cfg.optim, scaled(cfg.optim, cfg.train.batch_size, 10), steps_per_epoch=10, epochs=10)
    assert sched(0) == pytest.approx(0.01) and sched(19) == pytest.approx(0.2)
    assert sched(59) < sched(20) and 0 < sched(99) < 0.01
    cfg = load_config(overrides=["optim.schedule=cosine", "train.epochs=10"])
    cos = Schedule(cfg.optim, scaled(cfg.optim, 128, 10), steps_per_epoch=10, epochs=10)
    assert cos(0) == pytest.approx(0.1) and cos(50) == pytest.approx(0.05) and cos(99) < 1e-3


def test_lr_scales_with_batch_and_wd_is_kept():
    cfg = load_config("paper-cifar", overrides=["optim.scale_with_batch=true", "train.batch_size=512"])
    hyper = scaled(cfg.optim, 512, 200)
    assert hyper.lr == pytest.approx(0.4) and hyper.weight_decay == 5e-4 and hyper.warmup_epochs == 5
    assert scaled(load_config("paper-cifar").optim, 512, 200).lr == 0.1  # off unless asked


def test_weight_decay_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    assert len(param_groups(model, 5e-4, True)) == 1
    decay, no_decay = param_groups(model, 5e-4, False)
    assert all(p.ndim > 1 for p in decay["params"]) and len(decay["params"]) == 2
    assert no_decay["weight_decay"] == 0 and len(no_decay["params"]) == 3


def test_zca_run_saves_its_whitening_and_eval_reuses_it(tmp_path):
    data = write_image_folder(tmp_path / "data", 64, 32, 8)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--quiet", "model.name=wrn-10-1", "model.dropout=0",
            "train.epochs=1", "train.batch_size=16", "data.normalize=zca", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    assert (out / "zca.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    from wrn.train.engine import evaluate_checkpoint

    assert evaluate_checkpoint(str(out))["accuracy"] == summary["test_acc"]  # whitened as in training
    (out / "zca.safetensors").unlink()  # control: without the run's own whitening there is no evaluation
    assert main(["eval", str(out)]) == 2


def test_flip_tta_changes_the_evaluation_and_never_the_training(tmp_path, capsys):
    """train.eval_tta: every evaluation averages each image with its mirror; the weights are those of
    the same run without it, and `wrn eval` reproduces either number from the one checkpoint."""
    from wrn.train.checkpoint import load_checkpoint

    data = write_image_folder(tmp_path / "data", 96, 64, 16)
    common = ["--data", str(data), "--quiet", "model.name=wrn-10-1", "model.dropout=0", "train.epochs=2",
              "train.batch_size=32", "data.val_size=32", f"data.cache_dir={tmp_path / 'cache'}"]
    runs = {}
    for tta in (False, True):
        runs[tta] = tmp_path / f"tta-{tta}"
        assert main(["train", "--out", str(runs[tta]), *common, f"train.eval_tta={str(tta).lower()}"]) == 0
    a, b = (load_checkpoint(runs[t])[0].state_dict() for t in (False, True))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights, bit for bit
    plain, flipped = (json.loads((runs[t] / "summary.json").read_text()) for t in (False, True))
    assert (plain["eval_tta"], flipped["eval_tta"]) == (False, True)
    assert flipped["test_loss"] != plain["test_loss"]  # control: the evaluation did change
    val = lambda run: [json.loads(line)["val_loss"] for line in (run / "log.jsonl").read_text().splitlines()
                       if json.loads(line)["kind"] == "epoch"]  # noqa: E731
    assert all(x != y for x, y in zip(val(runs[False]), val(runs[True])))  # per-epoch val as well
    capsys.readouterr()
    for flag, expected in (("--tta", flipped), ("--no-tta", plain)):
        assert main(["eval", str(runs[False]), flag, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert (result["accuracy"], result["loss"], result["tta"]) == (expected["test_acc"], expected["test_loss"],
                                                                     flag == "--tta")
    assert main(["eval", str(runs[True]), "--json"]) == 0  # by default, as the run evaluated
    assert json.loads(capsys.readouterr().out)["loss"] == flipped["test_loss"]


def test_tensorboard_events_from_a_run(tmp_path):
    pytest.importorskip("tensorboard", reason="the tb extra is not installed")
    data = write_image_folder(tmp_path / "data", 64, 32, 8)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--quiet", "model.name=wrn-10-1", "model.dropout=0",
                 "train.epochs=1", "train.batch_size=16", "log.tensorboard=true", f"data.cache_dir={tmp_path / 'c'}"]) == 0
    assert list(out.rglob("events.out.tfevents.*"))
    control = tmp_path / "plain"  # control: nothing unless asked
    assert main(["train", "--data", str(data), "--out", str(control), "--quiet", "model.name=wrn-10-1",
                 "model.dropout=0", "train.epochs=1", "train.batch_size=16", f"data.cache_dir={tmp_path / 'c'}"]) == 0
    assert not list(control.rglob("events.out.tfevents.*"))


def test_the_default_run_directory_names_only_a_model_it_will_hold():
    """A budget with train.budget_min_epochs may train a narrower WRN than the preset names, and
    the directory is named before it decides: then the name is the preset's alone."""
    from wrn.commands.train import default_run_name

    assert default_run_name("quick", load_config("quick")) == "quick"
    assert default_run_name("quick", load_config("quick", overrides=["train.time_budget=0"])) == "quick-wrn-16-4"
    assert default_run_name("paper-cifar", load_config("paper-cifar")) == "paper-cifar-wrn-28-10"


def test_provenance_names_the_checkout_the_process_started_from(monkeypatch):
    """A commit made while a long run trains is not the code the run ran: the summary's provenance
    repeats the start's. Control: a new process (the cache cleared) reads the new commit."""
    from wrn.train import provenance

    state = {"rev-parse": "a" * 40, "status": " M src/x.py"}
    monkeypatch.setattr(provenance, "_git", lambda *args: state[args[0]])
    provenance.checkout.cache_clear()
    try:
        start = provenance.provenance("wrn train")
        state.update({"rev-parse": "b" * 40, "status": ""})
        end = provenance.provenance("wrn train")
        assert (start["git_commit"], start["git_dirty"]) == (end["git_commit"], end["git_dirty"]) == ("a" * 40, True)
        provenance.checkout.cache_clear()
        assert (provenance.provenance()["git_commit"], provenance.provenance()["git_dirty"]) == ("b" * 40, False)
    finally:
        provenance.checkout.cache_clear()
