"""Jobs that restart themselves under torchrun (issue 35.2, 35.3): a real `kill -9` of one real worker
(mid-epoch, or rank 0 inside a checkpoint write) or a worker that stops answering (SIGSTOP), with
`torchrun --max-restarts 1`: torchrun relaunches both processes with the same command line, they
resume on their own from the last complete checkpoint (`restart.plan`) and the run ends with
weights bit-identical to an uninterrupted 2-process run. Augmentation and dropout on, gloo on the
CPU, a WRN-10-1 on 8x8 images, one thread per process.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as tdist

from wrn.train import checkpoint, dist
from wrn.train.config import load_config

from helpers import write_image_folder  # tests/helpers.py
from stopping import differing, records, resumed_from  # tests/stopping.py
from test_faults import inside_write, last_step
from test_preempt import rank_pids

SPE = 12  # 96 train images / global batch 8 (4 per process)
EPOCHS = 4
TOTAL = SPE * EPOCHS
EVERY = 5  # train.checkpoint_every
TIMEOUT = 10  # accel.dist_timeout of the hung-process test (seconds)
ARGS = ["model.name=wrn-10-1", "model.dropout=0.3", f"train.epochs={EPOCHS}", "train.batch_size=8",
        f"train.checkpoint_every={EVERY}", "train.keep_every=1", "data.val_size=0", "optim.schedule=onecycle",
        "optim.warmup_epochs=1", "optim.lr=0.05", "accel.device=cpu", "accel.precision=fp32",
        "accel.channels_last=false", "accel.compile=false", "log.every_steps=1", "train.eval_batch_size=32"]


class Torchrun:
    """`torchrun --standalone --nproc-per-node 2 --max-restarts 1 -m wrn train ARGS` with its
    output collected line by line (each line with the time it arrived)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        environ.update(OMP_NUM_THREADS="1", **(env or {}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", "--tee", "3", "-m", "wrn", "train", *args]
        self.proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    @property
    def out(self) -> str:
        return "".join(line for _, line in self.lines)

    def wait_for_step(self, run: Path, step: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while last_step(run) < step:
            assert self.proc.poll() is None, f"ended before step {step}:\n{self.out[-3000:]}"
            assert time.monotonic() < deadline, f"no step {step} within {timeout}s:\n{self.out[-3000:]}"
            time.sleep(0.005)

    def finish(self, timeout: float = 300) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"torchrun did not finish within {timeout}s:\n{self.out[-3000:]}")
        self._reader.join(timeout=10)
        if os.environ.get("WRN_TEST_TORCHRUN_LOG"):  # a folder to keep the whole output in, for debugging
            Path(os.environ["WRN_TEST_TORCHRUN_LOG"], f"{self.proc.pid}.log").write_text(self.out)
        return self.out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("restarts")
    data = write_image_folder(root / "data", 96, 32, 8, classes=3)
    load_config(overrides=ARGS)
    command = ["--quiet", "--data", str(data), *ARGS, f"data.cache_dir={root / 'cache'}"]
    ref = root / "reference"
    job = Torchrun(*command, "--out", str(ref))
    out = job.finish()
    assert job.proc.returncode == 0, out[-3000:]
    assert records(ref, "end")[0]["replicas_identical"]
    return root, command, ref


def assert_resumed_exactly(run: Path, ref: Path, out: str) -> int:
    """The restart resumed on its own (a resume record saying so, torchrun's restart 1) and ended
    bit-identical to the uninterrupted run, both processes alike; returns the step it resumed from."""
    resume = records(run, "resume")
    assert len(resume) == 1, out[-3000:]
    assert resume[0]["auto"] is True and resume[0]["restart_count"] == 1 and resume[0]["world_size"] == 2
    # A silent start-over would end with the same weights too: the step tells a resume from it.
    assert 0 < resume[0]["step"] < TOTAL
    assert differing(run, ref) == []
    end = records(run, "end")[0]
    assert end["replicas_identical"] and end["replica_checksums"] == records(ref, "end")[0]["replica_checksums"]
    assert [r["epoch"] for r in records(run, "epoch")] == list(range(EPOCHS))
    assert not list(run.glob(".checkpoint.tmp-*"))
    return resume[0]["step"]


def rank_lines(out: str, rank: int) -> list[str]:
    """What worker ``rank`` printed (torchrun's --tee prefixes each line with [default<N>]:)."""
    return [line.split("]:", 1)[1] for line in out.splitlines() if re.match(rf"\[\w*?{rank}\]:", line)]


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_is_relaunched_and_resumes_bit_identical(setup):
    """kill -9 of rank 1 mid-epoch, and at once the SIGTERM torchrun sends the survivor (sent here
    too, so that it surely arrives before the survivor is done: torchrun's own then counts as a
    second signal and ends it at once). The survivor writes no checkpoint - its graceful-stop path
    needs the all-reduced stop flag and the collectives of the save, which fail with a dead peer -
    and torchrun's relaunch resumes from the last complete checkpoint. Control for "no checkpoint":
    the same SIGTERM with the peer alive checkpoints and exits 75 (tests/test_preempt.py)."""
    root, command, ref = setup
    run = root / "killed"
    job = Torchrun(*command, "--out", str(run))
    job.wait_for_step(run, SPE + 3)  # mid-epoch 2
    pids = rank_pids(job.proc.pid)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[0], signal.SIGTERM)
    killed_at = last_step(run)
    out = job.finish()
    assert job.proc.returncode == 0, out[-3000:]
    step = assert_resumed_exactly(run, ref, out)
    assert step <= killed_at + 1 and (step % EVERY == 0 or step % SPE == 0)
    said = "".join(rank_lines(out, 0))
    assert "stopped by SIGTERM" not in said and "a checkpoint was written" not in said, out[-3000:]
    # It said which collective failed, unless torchrun's SIGTERM, a second one, ended it first.
    assert said == "" or "stops without writing a checkpoint" in said, said


@pytest.mark.slow
def test_rank_0_killed_inside_a_checkpoint_write_resumes_from_the_previous_one(setup):
    """The test hook WRN_TEST_CHECKPOINT_PAUSE holds rank 0 (the writer) inside each checkpoint write:
    it is killed with model.safetensors half way to a new checkpoint, the relaunch resumes from the
    previous complete one, and the half-written folder is gone at the end."""
    root, command, ref = setup
    run = root / "killed-writing"
    job = Torchrun(*command, "--out", str(run), env={"WRN_TEST_CHECKPOINT_PAUSE": "0.3"})
    job.wait_for_step(run, 2 * EVERY + 1)
    deadline = time.monotonic() + 60
    while not inside_write(run):
        assert time.monotonic() < deadline and job.proc.poll() is None, job.out[-3000:]
        time.sleep(0.002)
    os.kill(rank_pids(job.proc.pid)[0], signal.SIGKILL)
    previous = checkpoint.read_state(run / checkpoint.CHECKPOINT)["step"]  # the writer is dead: it stays
    assert inside_write(run)
    out = job.finish()
    assert job.proc.returncode == 0, out[-3000:]
    assert assert_resumed_exactly(run, ref, out) == previous
    # The survivor, waiting for rank 0 in a collective, failed at once and said so in one line.
    said = [line for line in rank_lines(out, 1) if line.startswith("wrn: error: rank 1:")]
    assert len(said) == 1, out[-3000:]
    assert "Connection reset by peer" in said[0] or "Connection closed" in said[0], said
    assert "stops without writing a checkpoint" in said[0]


@pytest.mark.slow
def test_a_hung_worker_fails_the_others_within_the_timeout_and_the_restart_resumes(setup):
    """SIGSTOP of rank 1: rank 0 fails within accel.dist_timeout (plus the monitored_barrier that
    names rank 1) with one line naming the collective, instead of PyTorch's 30 minutes; the
    checkpoint stays intact. The stopped worker is let go (SIGCONT: it takes torchrun's pending
    SIGTERM and its next collective fails too), torchrun relaunches both and the run resumes."""
    root, command, ref = setup
    run = root / "hung"
    job = Torchrun(*command, "--out", str(run), f"accel.dist_timeout={TIMEOUT}")
    job.wait_for_step(run, SPE + 3)
    pids = rank_pids(job.proc.pid)
    os.kill(pids[1], signal.SIGSTOP)
    stopped = time.monotonic()
    deadline = stopped + TIMEOUT + TIMEOUT / 2 + 30
    failed = []
    while not failed:
        assert time.monotonic() < deadline, job.out[-3000:]
        failed = [(t, line) for t, line in job.lines if re.match(r"\[\w*?0\]:wrn: error: rank 0:", line)]
        time.sleep(0.05)
    at, line = failed[0]
    state = checkpoint.read_state(run / checkpoint.CHECKPOINT)
    assert state is not None and state["step"] <= last_step(run)  # intact: sizes and checksums hold
    os.kill(pids[1], signal.SIGCONT)
    out = job.finish()
    # ~TIMEOUT in the collective, TIMEOUT / 2 at most in monitored_barrier; slack for a loaded machine
    assert TIMEOUT - 3 <= at - stopped <= TIMEOUT + TIMEOUT / 2 + 15, (at - stopped, line)
    assert re.search(r"rank 0: .+ failed .*\(Timed out.*\); rank 1 did not answer", line), line
    assert "stops without writing a checkpoint" in line and "run the same command again" in line
    assert job.proc.returncode == 0, out[-3000:]
    assert assert_resumed_exactly(run, ref, out) == state["step"]


@pytest.mark.slow
def test_control_resuming_from_another_step_ends_elsewhere(setup):
    """The bit-identity above can fail: the same command resuming a copy of the run whose checkpoint
    claims one step less (its data position and schedule off by one) ends with other weights."""
    root, command, ref = setup
    run = root / "wrong-step"
    run.mkdir()
    shutil.copy(ref / "config.yaml", run / "config.yaml")
    shutil.copytree(ref / checkpoint.KEPT / "epoch-0002", run / checkpoint.CHECKPOINT)
    state = json.loads((run / checkpoint.CHECKPOINT / "state.json").read_text())
    state["step"] -= 1
    (run / checkpoint.CHECKPOINT / "state.json").write_text(json.dumps(state))
    job = Torchrun(*command, "--out", str(run))
    out = job.finish()
    assert job.proc.returncode == 0, out[-3000:]
    assert resumed_from(run) == 2 * SPE - 1
    assert differing(run, ref)


@pytest.mark.slow
def test_under_torchrun_a_finished_run_exits_0_and_another_run_is_refused_by_every_process(setup):
    root, command, ref = setup
    before = (ref / "checkpoint" / "model.safetensors").read_bytes(), (ref / "log.jsonl").read_text()
    job = Torchrun(*[c for c in command if c != "--quiet"], "--out", str(ref))
    out = job.finish()
    assert job.proc.returncode == 0, out[-3000:]
    assert "".join(rank_lines(out, 0)).count("already finished") == 1 and "already finished" not in "".join(
        rank_lines(out, 1))  # rank 0 speaks for the run
    assert ((ref / "checkpoint" / "model.safetensors").read_bytes(), (ref / "log.jsonl").read_text()) == before
    job = Torchrun(*command, "--out", str(ref), "train.seed=1")
    out = job.finish()
    assert job.proc.returncode != 0
    for rank in (0, 1):
        said = [line for line in rank_lines(out, rank) if line.startswith("wrn: error:")]
        assert said and all("holds another run: its train.seed is 0, this command's is 1" in x for x in said), out[-3000:]
    assert ((ref / "checkpoint" / "model.safetensors").read_bytes(), (ref / "log.jsonl").read_text()) == before


def test_the_process_group_gets_accel_dist_timeout(monkeypatch):
    """init passes accel.dist_timeout to init_process_group (gloo's per-collective timeout, NCCL's
    watchdog). Control: PyTorch's own default, which a hung peer would otherwise cost, is 30 minutes."""
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(tdist, "new_group", lambda **kw: seen.setdefault("monitor", kw))
    monkeypatch.setattr(dist, "_monitor", None)  # init sets it: undone after the test
    import torch

    assert dist.init(torch.device("cpu"), 42.0)
    assert seen["timeout"] == datetime.timedelta(seconds=42) == seen["monitor"]["timeout"]
    assert seen["backend"] == "gloo" and seen["monitor"]["backend"] == "gloo"
    assert tdist.default_pg_timeout == datetime.timedelta(minutes=30)
    assert load_config().accel.dist_timeout == 300
    assert load_config(overrides=["accel.dist_timeout=2m"]).accel.dist_timeout == 120


def test_a_failed_collective_is_one_line_naming_it():
    cause = RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:1: "
                         "Connection reset by peer. This is typically caused by a remote worker hanging")
    with pytest.raises(dist.CollectiveFailed) as e:
        with dist.collective("the all_reduce of the stop flag after a step"):
            raise cause
    message = str(e.value)
    assert "\n" not in message and "pair.cc" not in message
    assert message.startswith("rank 0: the all_reduce of the stop flag after a step failed after 0 s "
                              "(Read error [127.0.0.1]:1: Connection reset by peer)")
    with pytest.raises(ZeroDivisionError):  # other errors pass through unchanged
        with dist.collective("x"):
            1 / 0


def test_a_restart_on_one_node_gets_process_group_keys_of_its_own(monkeypatch):
    """torchrun's agent keeps one store for all its attempts: the process group's keys go under the
    attempt's prefix, so a relaunched process never reads an address a killed one published (which
    made a relaunch fail with "Connection refused", 4 times in 5 here). Control: that old key is in
    the store for anyone reading without the prefix. Several agents keep PyTorch's default."""
    server = tdist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    for key, value in dict(TORCHELASTIC_USE_AGENT_STORE="True", GROUP_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(server.port), TORCHELASTIC_RESTART_COUNT="0").items():
        monkeypatch.setenv(key, value)
    timeout = datetime.timedelta(seconds=10)
    dist._attempt_store(timeout).set("rank_0", "the killed attempt's address")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not dist._attempt_store(timeout).check(["rank_0"])
    assert server.get("wrn/attempt-0/rank_0") == b"the killed attempt's address"
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    assert dist._attempt_store(timeout) is None
