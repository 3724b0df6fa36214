"""RunLog's optional TensorBoard output (log.tensorboard=true): the log's numbers as scalars at
their optimizer step, the run's hyperparameters, and a one-line error when TensorBoard is missing."""

from __future__ import annotations

import json
import math
import sys

import pytest

from wrn.errors import UserError
from wrn.train.log import HPARAM_METRICS, RunLog, flatten

RECORDS = [
    {"kind": "start", "step": 0, "params": 1234, "device": "cpu"},
    {"kind": "step", "epoch": 0, "step": 5, "loss": 2.0, "lr": 0.1, "img_per_s": 100.0},
    {"kind": "step", "epoch": 0, "step": 10, "loss": math.nan, "lr": 0.1, "img_per_s": 100.0},
    {"kind": "epoch", "epoch": 0, "step": 10, "lr": 0.1, "train_loss": 1.5, "train_acc": 0.4, "val_acc": 0.35,
     "val_loss": None, "epoch_time_s": 3.0},
    {"kind": "epoch", "epoch": 1, "step": 20, "lr": 0.02, "train_loss": 1.0, "train_acc": 0.6, "val_acc": 0.5,
     "val_loss": None, "epoch_time_s": 3.0},
    {"kind": "end", "step": 20, "test_loss": 1.1, "test_acc": 0.55, "elapsed_s": 7.0},
]
CONFIG = {"model": {"name": "wrn-10-1", "dropout": 0.0, "block": [3, 3]}, "optim": {"lr": 0.1, "nesterov": True},
          "data": {"path": None}}


def events(log_dir):
    """{tag: [(step, value)]} and the tensor tags of the TensorBoard events under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    scalars = {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc


def test_scalars_and_hparams_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is the optional `tb` extra: pip install -e '.[tb]'")
    log = RunLog(tmp_path, quiet=True, tensorboard=True)
    log.hparams(CONFIG)
    for record in RECORDS:
        log.write(record)
    log.close()
    scalars, acc = events(tmp_path / "tensorboard")
    assert scalars["epoch/val_acc"] == [(10, 0.35), (20, 0.5)]
    assert scalars["epoch/train_loss"] == [(10, 1.5), (20, 1.0)]
    assert scalars["step/loss"] == [(5, 2.0)]  # the NaN loss is not a point (log.jsonl holds it as null)
    assert scalars["end/test_acc"] == [(20, 0.55)]
    assert not any(tag.startswith("start/") for tag in scalars)  # settings, not curves
    assert not any(tag.endswith(("/step", "/epoch")) for tag in scalars)  # the x axis, not a curve
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.name"].string_value == "wrn-10-1"
    assert start.hparams["optim.lr"].number_value == pytest.approx(0.1)
    assert start.hparams["model.block"].string_value == "[3, 3]"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    # log.jsonl is unchanged by the TensorBoard copy
    assert [json.loads(line)["kind"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == \
        [r["kind"] for r in RECORDS]


def test_resume_hides_the_events_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is the optional `tb` extra: pip install -e '.[tb]'")
    first = RunLog(tmp_path, quiet=True, tensorboard=True)
    for record in RECORDS[:5]:
        first.write(record)
    first.close()  # killed after epoch 1 (step 20), last checkpoint at step 10
    resumed = RunLog(tmp_path, quiet=True, tensorboard=True, resume_step=10)
    resumed.write({**RECORDS[4], "val_acc": 0.52})
    resumed.close()
    scalars, _ = events(tmp_path / "tensorboard")
    assert scalars["epoch/val_acc"] == [(10, 0.35), (20, 0.52)]  # not the interrupted run's 0.5 too


def test_off_by_default(tmp_path):
    log = RunLog(tmp_path, quiet=True)
    log.hparams(CONFIG)
    for record in RECORDS:
        log.write(record)
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_missing_tensorboard_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(UserError, match=r'needs TensorBoard: pip install -e "\.\[tb\]"') as err:
        RunLog(tmp_path, tensorboard=True)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    RunLog(tmp_path, enabled=False, tensorboard=True).close()  # a non-main rank writes nothing: no error


def test_flatten():
    assert flatten(CONFIG) == {"model.name": "wrn-10-1", "model.dropout": 0.0, "model.block": "[3, 3]",
                               "optim.lr": 0.1, "optim.nesterov": True, "data.path": "None"}
