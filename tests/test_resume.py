"""Exact resume: a run SIGKILLed at random moments and resumed ends bit-identical to an
uninterrupted run (CPU, fixed seed), its moving average of the weights included, with SAM, EMA
and an augmentation policy on. Real `wrn train` subprocesses, a tiny WRN, tiny images."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_image_folder  # tests/helpers.py

STEPS_PER_EPOCH = 16  # 256 train images / batch 16
EPOCHS = 12
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", f"train.epochs={EPOCHS}", "train.batch_size=16",
        "train.checkpoint_every=7", "data.val_size=64", "optim.schedule=onecycle", "optim.warmup_epochs=1",
        "optim.lr=0.05", "accel.precision=fp32", "accel.channels_last=false",
        "accel.compile=false", "log.every_steps=4", "train.eval_batch_size=64",
        # The augmentation policy and cutout draw per step from (seed, step, rank) like the crop.
        "data.policy=trivialaugment", "data.cutout=4",
        # SAM's two passes and the moving average (its weights and update count are in the checkpoint).
        "optim.sam_rho=0.05", "train.ema=0.9"]


def train_cmd(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wrn", "train", "--quiet", "--data", str(data), "--out", str(out),
            *ARGS, f"data.cache_dir={cache}", *extra]


# One thread: the bit-identity needs the same thread count in every process, and a single thread
# keeps these runs fast on a shared 2-core machine (OpenMP threads spin when oversubscribed).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def last_step(run: Path) -> int:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return -1
    steps = [json.loads(line).get("step", -1) for line in lines if line.endswith("}")]
    return max(steps, default=-1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_image_folder(root / "data", 320, 64, 16)
    cache = root / "cache"
    ref = root / "reference"
    subprocess.run(train_cmd(data, ref, cache), check=True, timeout=120, env=ENV)
    return root, data, cache, ref


def test_kill_and_resume_is_bit_identical(setup):
    root, data, cache, ref = setup
    reference = load_file(ref / "checkpoint" / "model.safetensors")
    reference_ema = load_file(ref / "checkpoint" / "ema.safetensors")
    assert any(not torch.equal(reference_ema[k], reference[k]) for k in reference)  # a real average
    ref_summary = json.loads((ref / "summary.json").read_text())
    total = EPOCHS * STEPS_PER_EPOCH
    rng = random.Random(1234)
    for trial in range(3):
        run = root / f"trial{trial}"
        # Kill once the run has logged a random step, a random few ms later (inside a step, an
        # evaluation or a checkpoint write); the last trial is killed twice.
        for kill in range(1 + (trial == 2)):
            target = rng.randrange(4, total - 48)  # >= 3 epochs before the end: the kill lands mid-run
            cmd = train_cmd(data, run, cache) if kill == 0 and not run.exists() else \
                [sys.executable, "-m", "wrn", "train", "--quiet", "--resume", str(run)]
            proc = subprocess.Popen(cmd, env=ENV)
            deadline = time.monotonic() + 90
            while proc.poll() is None and last_step(run) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.02))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert not (run / "summary.json").exists()
        subprocess.run([sys.executable, "-m", "wrn", "train", "--quiet", "--resume", str(run)], check=True, timeout=120,
                       env=ENV)
        resumed = load_file(run / "checkpoint" / "model.safetensors")
        assert resumed.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(resumed[name], tensor), f"trial {trial}: {name} differs after resume"
        resumed_ema = load_file(run / "checkpoint" / "ema.safetensors")
        for name, tensor in reference_ema.items():
            assert torch.equal(resumed_ema[name], tensor), f"trial {trial}: the average's {name} differs after resume"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["ema_sha256"] == ref_summary["ema_sha256"]
        assert summary["test_acc"] == ref_summary["test_acc"]
        assert summary["test_acc_raw"] == ref_summary["test_acc_raw"]
        assert summary["train_loss"] == ref_summary["train_loss"]
        # The resumed log reads like the uninterrupted one: one line per epoch, in order.
        epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        epochs = [r for r in epochs if r["kind"] == "epoch"]
        assert [r["epoch"] for r in epochs] == list(range(EPOCHS))


def test_resume_of_a_finished_run_changes_nothing(setup):
    root, data, cache, ref = setup
    before = (ref / "checkpoint" / "model.safetensors").read_bytes()
    out = subprocess.run([sys.executable, "-m", "wrn", "train", "--quiet", "--resume", str(ref)],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0
    assert (ref / "checkpoint" / "model.safetensors").read_bytes() == before


def test_control_a_resume_that_loses_the_average_ends_elsewhere(setup):
    """Control for the EMA half of the bit-identity: a checkpoint whose average is forgotten (its
    update count reset, so the next update restarts it from the weights) resumes into the same
    trained weights but another average, which the comparison above would catch."""
    root, data, cache, ref = setup
    run = root / "forgetful"
    proc = subprocess.Popen(train_cmd(data, run, cache), env=ENV)
    deadline = time.monotonic() + 90
    while proc.poll() is None and last_step(run) < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # checkpoints after the current step, exits 75
    assert proc.wait() == 75
    state_file = run / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["ema_updates"] == state["step"] > 0
    state_file.write_text(json.dumps({**state, "ema_updates": 0}))
    subprocess.run([sys.executable, "-m", "wrn", "train", "--quiet", "--resume", str(run)], check=True, timeout=120,
                   env=ENV)
    raw, reference = load_file(run / "checkpoint" / "model.safetensors"), load_file(ref / "checkpoint" / "model.safetensors")
    assert all(torch.equal(raw[k], reference[k]) for k in reference)
    ema, reference_ema = load_file(run / "checkpoint" / "ema.safetensors"), load_file(ref / "checkpoint" / "ema.safetensors")
    assert any(not torch.equal(ema[k], reference_ema[k]) for k in reference_ema)
