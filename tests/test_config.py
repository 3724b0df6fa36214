"""Configs: presets load, overrides are typed, and every bad input is one line on stderr, exit 2,
before any work (no run directory appears)."""

from __future__ import annotations

import pytest

from wrn.cli import main
from wrn.errors import UserError
from wrn.train.config import Config, config_from_dict, list_presets, load_config, valid_keys


def test_presets_load_with_the_papers_recipes():
    assert {"paper-cifar", "paper-svhn", "paper-imagenet", "quick"} <= set(list_presets())
    c = load_config("paper-cifar")
    assert (c.model.name, c.model.dropout, c.train.epochs, c.train.batch_size) == ("wrn-28-10", 0.3, 200, 128)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.momentum, c.optim.nesterov) == (0.1, 5e-4, 0.9, True)
    assert (c.optim.milestones, c.optim.gamma, c.optim.wd_on_bn_bias) == ((60, 120, 160), 0.2, True)
    s = load_config("paper-svhn")
    assert (s.model.name, s.model.dropout, s.optim.lr, s.train.epochs) == ("wrn-16-8", 0.4, 0.01, 160)
    assert (s.data.use_extra, s.data.augment, s.data.normalize, s.optim.milestones) == (True, False, "none", (80, 120))
    i = load_config("paper-imagenet")
    assert (i.model.name, i.optim.weight_decay, i.train.epochs, i.train.batch_size) == ("wide_resnet50_2", 1e-4, 90, 256)
    q = load_config("quick")
    assert (q.accel.precision, q.accel.channels_last, q.accel.compile) == ("auto", True, True)
    assert q.train.time_budget == 900  # "the best WRN in 15 minutes"
    assert load_config().to_dict() == c.to_dict()  # the defaults are the paper's CIFAR recipe
    assert q.data.val_size == 5000  # quick is tuned, so it keeps a validation split


@pytest.mark.parametrize("preset", ["paper-cifar", "paper-svhn"])
def test_paper_presets_train_on_the_whole_training_set(preset):
    # The paper holds nothing out (it tunes nothing and reports the final epoch's test error).
    assert load_config(preset).data.val_size == 0


def test_overrides_are_typed():
    c = load_config("paper-cifar", overrides=[
        "train.epochs=3", "optim.lr=0.05", "optim.nesterov=false", "model.block=3,1,3", "model.name=wrn-22-2",
        "model.blocks_per_group=none", "optim.milestones=2,4", "data.path=none", "accel.channels_last=yes"])
    assert c.train.epochs == 3 and isinstance(c.train.epochs, int)
    assert c.optim.lr == 0.05 and c.optim.nesterov is False and c.accel.channels_last is True
    assert c.model.block == (3, 1, 3) and c.model.blocks_per_group is None and c.data.path is None
    assert c.optim.milestones == (2, 4)
    assert load_config(overrides=["model.name=wrn-40-2", "model.block=3,3,3", "model.blocks_per_group=4"]).model.block == (3, 3, 3)


def test_config_round_trips_through_yaml(tmp_path):
    c = load_config("quick", overrides=["model.block=1,3,1", "model.name=wrn-40-2"])
    (tmp_path / "c.yaml").write_text(c.to_yaml())
    assert load_config(config_file=tmp_path / "c.yaml") == c
    assert config_from_dict(c.to_dict()) == c
    (tmp_path / "d.yaml").write_text("preset: quick\ntrain:\n  epochs: 2\n")
    d = load_config(config_file=tmp_path / "d.yaml")
    assert d.train.epochs == 2 and d.model.name == load_config("quick").model.name


def test_every_documented_key_exists():
    keys = set(valid_keys())
    for key in ("model.name", "model.dropout", "model.block", "model.blocks_per_group", "model.num_classes",
                "data.path", "data.name", "data.val_size", "data.subset", "data.use_extra", "data.augment",
                "data.cutout", "data.normalize", "data.cache_dir", "train.epochs", "train.batch_size",
                "train.seed", "train.checkpoint_every", "train.keep_every", "train.skip_nonfinite", "optim.lr",
                "optim.momentum", "optim.nesterov", "optim.weight_decay", "optim.wd_on_bn_bias", "optim.schedule",
                "optim.milestones", "optim.gamma", "optim.warmup_epochs", "optim.label_smoothing",
                "optim.scale_with_batch", "optim.base_batch_size", "accel.device", "accel.precision",
                "accel.compile", "accel.channels_last", "log.every_steps", "log.test_every_epoch", "log.quiet",
                "train.init"):
        assert key in keys, key


REJECTED = [
    # (arguments, words the one-line message must contain)
    (["train.epoch=3"], ["train.epoch", "train.epochs"]),  # unknown key, closest valid one
    (["optim.learning_rate=0.1"], ["optim.learning_rate"]),
    (["trian.epochs=3"], ["trian.epochs", "train.epochs"]),
    (["model.name=wrn-27-4"], ["model.name", "27"]),  # depth that does not fit B(3,3)
    (["model.name=wrn-16-4", "model.block=3,1,3", "model.blocks_per_group=0"], ["model.blocks_per_group"]),
    (["model.name=wrn-99x"], ["model.name", "unknown model"]),
    (["model.name=wrn-1000000-1"], ["model.name", "too large"]),  # instant, not a million modules
    (["optim.lr=-0.1"], ["optim.lr"]),
    (["train.batch_size=0"], ["train.batch_size"]),
    (["accel.precision=fp16"], ["accel.precision", "fp16"]),
    (["optim.schedule=linear"], ["optim.schedule"]),
    (["train.epochs"], ["train.epochs", "key=value"]),  # override syntax
    (["epochs=3"], ["epochs=3", "key=value"]),
    (["train.epochs=three"], ["train.epochs", "integer"]),
    (["optim.nesterov=maybe"], ["optim.nesterov", "boolean"]),
    (["model.block=3,x"], ["model.block"]),
    (["model.dropout=1.5"], ["model.dropout"]),
    (["data.normalize=whiten"], ["data.normalize"]),
    (["accel.device=tpu"], ["accel.device"]),
    (["optim.milestones=120,60"], ["optim.milestones"]),
    (["train.init_sha256=abc"], ["train.init_sha256", "sha256"]),
    (["train.init_sha256=" + "0" * 64], ["train.init_sha256", "without train.init"]),
]


@pytest.mark.parametrize("overrides,words", REJECTED, ids=[" ".join(a) for a, _ in REJECTED])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, overrides, words):
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--data", "cifar10", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("wrn: error:"), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert not out.exists()  # rejected before any work


def test_bad_preset_and_config_file(tmp_path, capsys):
    assert main(["train", "--preset", "paper-cifr", "--out", str(tmp_path / "r")]) == 2
    assert "paper-cifar" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("trainn:\n  epochs: 2\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'train'" in err[0]
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    assert main(["train", "--config", str(tmp_path / "broken.yaml")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_library_callers_get_user_error():
    with pytest.raises(UserError, match="did you mean 'optim.weight_decay'"):
        load_config(overrides=["optim.weight_decy=0"])
    with pytest.raises(ValueError):  # UserError is a ValueError
        load_config(overrides=["train.batch_size=-1"])
    assert isinstance(Config().to_dict()["optim"]["milestones"], list)
