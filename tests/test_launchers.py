"""Sweeps on a cluster engine, for real: a tiny two-run table through submitit's local executor
and through a local Ray head, each surviving a killed run (its training resumes from the
checkpoint and finishes). Skipped where the cluster extra (submitit, ray) is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from wrn.cli import main
from wrn.errors import UserError
from wrn.experiments import cluster, launch, launchers, paper, sweep
from wrn.train import checkpoint

from helpers import write_image_folder  # tests/helpers.py

TINY = paper.Table("tiny", "two tiny nets", "none", runs=(
    paper.Run("B(3,3)", "wrn-10-1", "cifar10"),
    paper.Run("B(3,1,3)", "wrn-10-1", "cifar10", {"block": (3, 1, 3)}),
))
EPOCHS = 4  # 40 images / batch 20: 8 steps, a checkpoint after each


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny table planned into tmp_path; every training process runs on one thread, and
    pauses inside each checkpoint write so that a run is still training when it is killed."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WRN_TEST_CHECKPOINT_PAUSE", "0.2")
    data = write_image_folder(tmp_path / "data", 40, 20, 32, classes=10)
    return sweep.plan(TINY, out=tmp_path / "runs", data=str(data), budget=sweep.Budget(epochs=EPOCHS), count=False,
                      overrides=("data.val_size=0", "train.batch_size=20", "train.eval_batch_size=20",
                                 "train.checkpoint_every=1", f"data.cache_dir={tmp_path / 'cache'}", "log.quiet=true",
                                 "accel.precision=fp32", "accel.compile=false", "accel.channels_last=false"))


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def training_pid(run_dir: Path) -> int | None:
    """The `python -m wrn.cli train ... --out RUN_DIR` process (Linux /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        cmd = _cmdline(pid)
        if "wrn.cli" in cmd and str(run_dir.resolve()) in cmd:
            return int(pid)
    return None


def job_pid(run_dir: Path) -> int | None:
    """The submitit job process running the run: the training process's parent."""
    pid = training_pid(run_dir)
    return None if pid is None else int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill_once_checkpointed(run_dir: Path, target, sig: int) -> list[int]:
    """In the background: once the run has a checkpoint, send ``sig`` to ``target(run_dir)``."""
    killed: list[int] = []

    def watch():
        deadline = time.time() + 60
        while time.time() < deadline and not (run_dir / "summary.json").exists():
            try:
                checkpoint.find_checkpoint(run_dir)
                pid = target(run_dir)
            except (UserError, OSError, ValueError):
                pid = None
            if pid:
                os.kill(pid, sig)
                killed.append(pid)
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def assert_all_finished(planned, outcome):
    assert not outcome["failed"], outcome
    for p in planned:
        summary = json.loads((p.run_dir / "summary.json").read_text())
        assert summary["finished"] and summary["epochs"] == EPOCHS


linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the run's process in /proc")


@linux
def test_submitit_resubmits_a_killed_run_and_requeues_a_preempted_one(tiny, tmp_path):
    pytest.importorskip("submitit", reason="the cluster extra is not installed: pip install -e '.[cluster]'")
    killed, preempted = tiny
    folder = killed.run_dir.parent / "slurm"
    slurm = cluster.SlurmLauncher(folder, cpus=1, gpus=0, max_retries=1, cluster="local", poll_s=0.3)
    # A node lost or an OOM kill: the job fails, the sweep submits it again and the run resumes.
    kills = kill_once_checkpointed(killed.run_dir, training_pid, signal.SIGKILL)
    # SLURM's signal before the time limit (or on preemption) goes to the job process: submitit
    # asks training to checkpoint and stop, requeues the job, and the same job resumes the run.
    usr2 = kill_once_checkpointed(preempted.run_dir, job_pid, signal.SIGUSR2)
    messages: list[str] = []
    outcome = launchers.execute(tiny, slurm, echo=messages.append)
    assert kills and usr2, "the control: both runs were interrupted while training"
    assert_all_finished(tiny, outcome)
    assert any(killed.name in m and "lost" in m and "resubmitted" in m for m in messages), messages
    assert not any(preempted.name in m and "resubmitted" in m for m in messages), "requeued, not resubmitted"
    for p in tiny:
        assert "resume" in [r["kind"] for r in records(p.run_dir)], f"{p.name} did not resume"
    # The job logs, where SLURM users look: the resumed command and submitit's requeue.
    logs = "".join(f.read_text() for f in folder.glob("*_log.out"))
    for p in tiny:
        assert f"train --resume {p.run_dir.resolve()}" in logs
    assert "Requeued job" in logs


@linux
def test_ray_retries_a_run_lost_with_its_worker(tiny):
    ray = pytest.importorskip("ray", reason="the cluster extra is not installed: pip install -e '.[cluster]'")
    lost = tiny[0]

    def worker_pid(run_dir: Path) -> int | None:  # the Ray worker training the run (first attempt)
        log = launchers.log_path(lost)
        lines = [line for line in log.read_text().splitlines() if "(Ray task, pid" in line] if log.exists() else []
        return int(lines[0].rsplit("pid ", 1)[1].rstrip(")")) if lines else None

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # the test's own local head
    try:
        with pytest.raises(UserError, match="--cpus 3: the Ray cluster has 2 CPUs in all"):
            cluster.RayLauncher(cpus=3, gpus=0).connect()  # Ray would wait for it forever
        default = cluster.RayLauncher(gpus=0)  # no --cpus on a 2-CPU cluster: 2 per run, not the 4 of a big one
        default.connect()
        assert default.cpus == 2
        default.close()
        kills = kill_once_checkpointed(lost.run_dir, worker_pid, signal.SIGKILL)
        outcome = launchers.execute(tiny, cluster.RayLauncher(cpus=1, gpus=0, max_retries=2),
                                    echo=lambda m: None)
    finally:
        ray.shutdown()
    assert kills, "the control: the run's worker was killed while training"
    assert_all_finished(tiny, outcome)
    starts = [r["kind"] for r in records(lost.run_dir) if r["kind"] in ("start", "resume")]
    assert starts[0] == "start" and "resume" in starts[1:]
    commands = [line for line in launchers.log_path(lost).read_text().splitlines() if line.startswith("$ wrn")]
    assert commands[0].startswith("$ wrn train --preset") and commands[-1].startswith("$ wrn train --resume")


def test_a_missing_cluster_package_or_slurm_is_one_line_with_the_fix(monkeypatch, tmp_path):
    planned = sweep.plan(paper.get_table("deepening"), out=tmp_path, count=False)
    for module, name in (("submitit", "slurm"), ("ray", "ray")):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        with pytest.raises(UserError, match=r"needs .*pip install -e \"\.\[cluster\]\""):
            launch.make(name, planned, max_retries=1)
    monkeypatch.delitem(sys.modules, "submitit")
    if importlib.util.find_spec("submitit"):
        monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
        with pytest.raises(UserError, match="no SLURM on this machine"):
            launch.make("slurm", planned, max_retries=1)
    assert not any(tmp_path.iterdir()), "nothing left behind"


def test_a_ray_address_where_nothing_listens_is_one_line():
    pytest.importorskip("ray", reason="the cluster extra is not installed: pip install -e '.[cluster]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    with pytest.raises(UserError, match=f"--address 127.0.0.1:{port}: no Ray head answers there"):
        cluster.RayLauncher(address=f"127.0.0.1:{port}").connect()


def test_options_are_checked_against_the_launcher():
    with pytest.raises(UserError, match="--partition is for --launcher slurm"):
        launch.check_options("ray", partition="gpu")
    with pytest.raises(UserError, match="--address is for --launcher ray"):
        launch.check_options("slurm", address="10.0.0.1:6379")
    with pytest.raises(UserError, match="--cpus/--gpus size cluster jobs"):
        launch.check_options("local", gpus=1)
    with pytest.raises(UserError, match="one GPU"):
        launch.check_options("slurm", gpus=2)
    launch.check_options("slurm", partition="gpu", account="lab", cpus=8, gpus=1, max_retries=0)


def test_resources_come_from_the_cost_estimate(capsys):
    planned = sweep.plan(paper.get_table("dropout"), out="runs", dataset="cifar10")
    by_model = {p.model: p for p in planned}
    small, big = by_model["wrn-16-4"], by_model["wrn-28-10"]
    r_small, r_big = (launchers.resources(p, cpus=4, gpus=1, cpu_tflops=0.07) for p in (small, big))
    assert r_small.gpus == 1 and r_small.cpus == 4 and r_small.mem_gb >= 8
    assert r_small.minutes < r_big.minutes <= launchers.MAX_JOB_MIN  # bigger net, longer limit
    # On a CPU the paper's WRN-28-10 needs more than a day: requeued at each limit, it resumes.
    cpu = launchers.resources(big, cpus=32, gpus=0, cpu_tflops=0.07)
    assert cpu.minutes == launchers.MAX_JOB_MIN and cpu.jobs > 1 and r_big.jobs == 1
    # The dry run says what each job will ask for.
    assert main(["sweep", "dropout", "--dry-run", "--dataset", "cifar10", "--launcher", "slurm", "--cpus", "8"]) == 0
    assert "slurm: one job per run, 8 CPUs, 1 GPU, up to 9 GB each; time limit 17 min to " in capsys.readouterr().out
