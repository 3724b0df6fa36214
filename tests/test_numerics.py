"""Numerics: a NaN/inf loss or gradient stops the run with its step number and keeps the last good
checkpoint; ``train.skip_nonfinite=true`` skips such a batch instead. In-process, tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import wrn.models
from wrn.cli import main
from wrn.data.augment import Augment
from wrn.train import checkpoint

from helpers import write_image_folder  # tests/helpers.py

ARGS = ["model.name=wrn-10-1", "model.dropout=0", "train.epochs=2", "train.batch_size=32",
        "train.checkpoint_every=2", "data.val_size=0", "optim.lr=0.05", "accel.precision=fp32",
        "accel.channels_last=false", "accel.compile=false", "log.every_steps=1", "train.eval_batch_size=64"]
STEPS_PER_EPOCH = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("numerics")
    write_image_folder(root / "images", 192, 32, 8, classes=3)
    # Options first, then every key=value together (argparse takes one run of positionals).
    return ["--quiet", "--data", str(root / "images"), f"data.cache_dir={root / 'cache'}"]


def poison_batches(monkeypatch, steps: set[int]) -> None:
    """Training batches number ``steps`` (0-based, counted from the run's start) become NaN."""
    real, seen = Augment.__call__, [0]

    def call(self, x, generator=None):
        out = real(self, x, generator)
        seen[0] += 1
        return torch.full_like(out, float("nan")) if seen[0] - 1 in steps else out

    monkeypatch.setattr(Augment, "__call__", call)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wrn: error:"), err
    return err[0]


def finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(path).values() if t.is_floating_point())


def test_nan_batch_stops_the_run_with_its_step_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    poison_batches(monkeypatch, {9})
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *data, *ARGS]) == 2
    err = one_error_line(capsys)
    assert "loss became NaN/inf at step 9 (epoch 2)" in err and f"kept in {out / 'checkpoint'}" in err
    assert "train.skip_nonfinite=true" in err
    state = checkpoint.read_state(out / "checkpoint")
    assert state["step"] == 8 and finite(out / "checkpoint" / "model.safetensors")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1] == {"kind": "error", "step": 9, "epoch": 1, "error": "non-finite loss"}
    assert not (out / "summary.json").exists()


def test_huge_lr_diverges_and_stops(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *data, *ARGS, "optim.lr=1e30"]) == 2
    err = one_error_line(capsys)
    assert "loss became NaN/inf at step 1 (epoch 1)" in err and "no checkpoint was written yet" in err
    assert "lower optim.lr" in err
    assert not (out / "checkpoint").exists()


def test_nan_gradient_with_a_finite_loss_never_reaches_a_checkpoint(data, tmp_path, capsys, monkeypatch):
    # The loss of step 9 is finite, but its gradient is NaN: the weights break after the update.
    real, backwards = wrn.models.create_model, [0]

    def create_model(name, **kwargs):
        model = real(name, **kwargs)

        def hook(grad):
            backwards[0] += 1
            return grad * float("nan") if backwards[0] - 1 == 9 else grad

        model.fc.weight.register_hook(hook)
        return model

    monkeypatch.setattr("wrn.train.run.create_model", create_model)
    out = tmp_path / "run"
    # Checked only at checkpoints here (log lines rarely): the checkpoint after step 9 is refused.
    assert main(["train", "--out", str(out), *data, *ARGS, "log.every_steps=100", "train.checkpoint_every=1"]) == 2
    err = one_error_line(capsys)
    assert "weights became NaN/inf by step 10 (epoch 2)" in err and f"kept in {out / 'checkpoint'}" in err
    assert checkpoint.read_state(out / "checkpoint")["step"] == 9
    assert finite(out / "checkpoint" / "model.safetensors")


def test_skip_nonfinite_skips_bad_batches_and_finishes(data, tmp_path, capsys, monkeypatch):
    poison_batches(monkeypatch, {3, 9})
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *data, *ARGS, "train.skip_nonfinite=true"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and np.isfinite(summary["train_loss"])
    epochs = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert [r["skipped"] for r in epochs] == [1, 2]  # running count of skipped batches
    # Neither the weights nor the BN running statistics took anything from the bad batches.
    assert finite(out / "checkpoint" / "model.safetensors")
