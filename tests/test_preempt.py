"""Graceful preemption with real signals: the first SIGTERM/SIGINT finishes the step, checkpoints,
logs a "preempted" record and exits EXIT_PREEMPTED (75); a second one kills at once; --resume
ends bit-identical. Single process (``wrn train`` forked from this process, as in test_faults:
a fresh interpreter costs seconds of imports) and a 2-process torchrun (gloo) run, where a signal
to one rank stops every rank at the same step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wrn.train import checkpoint
from wrn.train.config import load_config
from wrn.train.preempt import EXIT_PREEMPTED

from helpers import write_image_folder  # tests/helpers.py
from stopping import differing, records, resumed_from  # tests/stopping.py
from test_faults import fork_wrn, last_step, wait  # the forked `wrn` runner

SPE = 12  # 96 train images / batch 8
EPOCHS = 4
TOTAL = SPE * EPOCHS
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", f"train.epochs={EPOCHS}", "train.batch_size=8",
        "data.val_size=0", "optim.schedule=onecycle", "optim.warmup_epochs=1", "optim.lr=0.05",
        "accel.precision=fp32", "accel.channels_last=false", "accel.compile=false", "log.every_steps=1",
        "train.eval_batch_size=32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("preempt")
    data = write_image_folder(root / "data", 96, 32, 8, classes=3)
    load_config(overrides=ARGS)  # imports what the children need once, here
    train = ["train", "--quiet", "--data", str(data), *ARGS, f"data.cache_dir={root / 'cache'}"]
    ref = root / "reference"
    log = root / "reference.log"
    assert wait(fork_wrn([*train, "--out", str(ref)], log)) == 0, log.read_text()
    return root, train, ref


def start_and_signal(root: Path, train: list[str], name: str, *signals: int, after: int = 5) -> tuple[Path, int]:
    """Start a run, send ``signals`` (back to back) once it has logged step ``after``; its exit code."""
    run, log = root / name, root / f"{name}.log"
    pid = fork_wrn([*train, "--out", str(run)], log)
    deadline = time.monotonic() + 120
    while last_step(run) < after and time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            raise AssertionError(f"the run ended before step {after}: {log.read_text()[-2000:]}")
        time.sleep(0.005)
    for s in signals:
        os.kill(pid, s)
    return run, wait(pid)


def resume(root: Path, run: Path) -> int:
    return wait(fork_wrn(["train", "--quiet", "--resume", str(run)], root / f"{run.name}-resume.log"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_first_signal_checkpoints_exits_75_and_resume_is_bit_identical(setup, signum):
    root, train, ref = setup
    name = signal.Signals(signum).name
    run, code = start_and_signal(root, train, name, signum)
    assert code == EXIT_PREEMPTED == 75, (root / f"{name}.log").read_text()[-2000:]
    stopped = records(run, "preempted")
    assert len(stopped) == 1 and stopped[0]["signal"] == name
    step = stopped[0]["step"]
    assert 5 <= step < TOTAL
    assert checkpoint.read_state(run / checkpoint.CHECKPOINT)["step"] == step  # the checkpoint is at that step
    assert not (run / "summary.json").exists()
    message = (root / f"{name}.log").read_text()
    assert f"after step {step}" in message and f"--resume {run}" in message and "Traceback" not in message
    assert resume(root, run) == 0
    assert resumed_from(run) == step
    assert differing(run, ref) == []


def test_second_signal_kills_at_once(setup):
    """SIGTERM and SIGINT back to back (two different signals: two of the same kind sent together
    may merge into one). Python runs both pending handlers in one go (in signal-number order), so
    the second always finds the first's request and the process dies by that signal at once."""
    root, train, ref = setup
    run, code = start_and_signal(root, train, "twice", signal.SIGTERM, signal.SIGINT)
    assert code in (-signal.SIGINT, -signal.SIGTERM), (root / "twice.log").read_text()[-2000:]
    assert records(run, "preempted") == []
    # control on the test itself: one signal alone would have exited 75 (the test above); and the
    # killed run is still resumable from its last epoch checkpoint (or starts over) and ends the same
    assert resume(root, run) == 0
    assert differing(run, ref) == []


# -- torchrun: every rank stops at the same step -------------------------------------------------------

def rank_pids(launcher: int) -> dict[int, int]:
    """{RANK: pid} of the torchrun worker processes under ``launcher``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher:
            for item in environ:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(proc.name)
    return found


def torchrun(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--tee", "3",
           "-m", "wrn", "train", "--quiet", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_torchrun_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """SIGTERM to rank 1 only (rank 0 writes the checkpoint and the log): both ranks agree through
    an all-reduce after every step, stop after the same step and checkpoint there; --resume
    finishes. The rank that exits first exits 75; the other too, unless torchrun, seeing the first
    gone, SIGTERMs it after it has already stopped and said so (then -15: its checkpoint and
    message are there first)."""
    data = write_image_folder(tmp_path / "data", 96, 32, 8, classes=3)
    args = ["--data", str(data), *ARGS, "accel.device=cpu", "train.epochs=4", f"data.cache_dir={tmp_path / 'cache'}"]
    run = tmp_path / "run"
    proc = torchrun("--out", str(run), *args)
    deadline = time.monotonic() + 180
    while last_step(run) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = rank_pids(proc.pid)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out[-3000:]  # torchrun reports its workers' non-zero exits
    stopped = records(run, "preempted")
    assert len(stopped) == 1, out[-3000:]
    step = stopped[0]["step"]
    assert 3 <= step < 4 * SPE
    assert checkpoint.read_state(run / checkpoint.CHECKPOINT)["step"] == step
    # Every rank printed the same stop (torchrun prefixes each rank's lines) and its exit status
    # is in torchrun's failure report.
    said = {int(r): int(s) for r, s in re.findall(r"\[\w*?(\d)\]:wrn: stopped by .*? after step (\d+)", out)}
    assert said == {0: step, 1: step}, out[-3000:]
    codes = dict(re.findall(r"rank\s*: (\d) \(local_rank.*?\n\s*exitcode\s*: (-?\d+)", out))
    # A rank that exits 75 first makes torchrun SIGTERM the other, which may still be on its way
    # out after checkpointing: that second signal ends it at once (-15). Either rank can be first.
    assert set(codes.values()) <= {str(EXIT_PREEMPTED), str(-signal.SIGTERM)}, out[-3000:]
    assert str(EXIT_PREEMPTED) in codes.values(), out[-3000:]
    proc = torchrun("--resume", str(run))
    out, _ = proc.communicate(timeout=180)
    # Whether the run got to its summary tells an abort in training from one on the way out.
    assert proc.returncode == 0, f"summary.json: {(run / 'summary.json').exists()}\n{out[-3000:]}"
    assert resumed_from(run) == step
    assert json.loads((run / "summary.json").read_text())["steps"] == 4 * SPE
