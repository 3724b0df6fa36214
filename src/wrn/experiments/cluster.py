"""The cluster launchers of ``wrn sweep``: SLURM jobs through submitit and Ray tasks (see
``wrn.experiments.launchers`` for what every launcher shares: the run's ``wrn train`` command,
resources, progress and the local launcher)."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from wrn.errors import UserError
from wrn.experiments.launchers import (DEFAULT_CPUS, DEFAULT_SLURM_GPUS, EXIT_USER_ERROR, EXTRA, Launcher, Progress,
                                       log_path, resources, shared, train, train_argv)
from wrn.experiments.sweep import DEFAULT_CPU_TFLOPS, PlannedRun
from wrn.train.preempt import EXIT_PREEMPTED

def _exited(pid: int) -> bool:
    """Whether child ``pid`` has exited, without reaping it (its Popen still collects the status)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class SlurmJob:
    """The callable a submitit job runs. On SLURM's signal before the time limit or on preemption
    submitit calls ``checkpoint``: training is asked to stop (SIGTERM: it checkpoints and exits),
    then the job is requeued and ``__call__`` resumes the run."""

    GRACE_S = 80  # submitit asks for the signal 90 s before the limit
    # SLURM's own preemption SIGTERM reached training, which checkpointed and stopped: SLURM ends or
    # requeues this job within its grace time. Returning now would let the sweep resubmit the run
    # while SLURM requeues it too (two trainings in one directory), so wait for SLURM first.
    PREEMPTED_WAIT_S = 300

    def __init__(self, p: PlannedRun):
        self.p = p
        self.pid: int | None = None

    def __call__(self) -> int:
        rc = train(self.p, started=lambda pid: setattr(self, "pid", pid))
        if rc == EXIT_PREEMPTED:
            time.sleep(self.PREEMPTED_WAIT_S)
        return rc

    def checkpoint(self):
        from submitit.helpers import DelayedSubmission

        if self.pid is not None and not _exited(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.time() + self.GRACE_S
            while not _exited(self.pid) and time.time() < deadline:
                time.sleep(0.2)
        return DelayedSubmission(SlurmJob(self.p))


def _need(module: str, launcher: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--launcher {launcher} needs {module}: {EXTRA}") from None


class SlurmLauncher(Launcher):
    """One submitit job per run; ``cluster="local"`` runs the same jobs on this machine (tests)."""

    def __init__(self, folder: Path, *, cpus: int = DEFAULT_CPUS, gpus: int = DEFAULT_SLURM_GPUS,
                 partition: str | None = None, account: str | None = None, max_retries: int = 2,
                 cpu_tflops: float = DEFAULT_CPU_TFLOPS, cluster: str = "slurm", poll_s: float = 10.0):
        self.submitit = _need("submitit", "slurm")
        if cluster == "slurm" and shutil.which("srun") is None:
            raise UserError("--launcher slurm: no SLURM on this machine (srun not found): run the sweep on the "
                            "cluster's login node")
        self.folder, self.cluster, self.poll_s = Path(folder), cluster, poll_s
        self.cpus, self.gpus, self.cpu_tflops = cpus, gpus, cpu_tflops
        self.partition, self.account, self.max_retries = partition, account, max_retries

    def _submit(self, p: PlannedRun):
        p = shared(p)
        r = resources(p, cpus=self.cpus, gpus=self.gpus, cpu_tflops=self.cpu_tflops)
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                              slurm_max_num_timeout=r.jobs + 2)
        params = dict(name=p.name, timeout_min=r.minutes, nodes=1, tasks_per_node=1, cpus_per_task=r.cpus,
                      gpus_per_node=r.gpus, mem_gb=r.mem_gb)
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.account:
            params["slurm_account"] = self.account
        executor.update_parameters(**params)
        return executor.submit(SlurmJob(p))

    def run(self, runs: list[PlannedRun], progress: Progress) -> None:
        jobs = {}
        for p in runs:
            job = self._submit(p)
            jobs[job] = (p, 0)
            progress.started(p, f": job {job.job_id}, log {job.paths.stdout}")
        while jobs:
            time.sleep(self.poll_s)
            for job in [j for j in jobs if j.done()]:
                p, retries = jobs.pop(job)
                try:
                    rc = int(job.result())
                except Exception:  # noqa: BLE001 - the job died (killed, node lost): submitit's error
                    rc = None
                # Preempted (training checkpointed and stopped on SIGTERM) is no failure: it
                # costs no retry. SLURM may have requeued the job itself; then it has resumed.
                preempted = rc == EXIT_PREEMPTED
                if p.status() != "finished" and rc != EXIT_USER_ERROR and (preempted or retries < self.max_retries):
                    new = self._submit(p)
                    jobs[new] = (p, retries + (not preempted))
                    why = "killed" if rc is None else "preempted" if preempted else f"exit {rc}"
                    progress.echo(f"{progress.head(p)}: job {job.job_id} lost ({why}), resubmitted as job "
                                  f"{new.job_id} to resume, log {new.paths.stdout}")
                    continue
                progress.ended(p, rc, str(job.paths.stdout))


# --- ray -----------------------------------------------------------------------------------------


class RunLost(Exception):
    """Training stopped before the end (preempted, or a step failed to finish): Ray retries the
    task, which resumes."""


def _listening(address: str) -> bool:
    """Whether something accepts connections at HOST:PORT (any other form: left to Ray)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit():
        return True
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return True
    except OSError:
        return False


def run_wrn(argv: list[str]) -> int:
    """``python -m wrn ARGV`` in this process; its exit status. The experiments run the program, as
    the local and SLURM launchers do in a child process, and never import the command line."""
    import runpy
    import sys

    saved = sys.argv
    sys.argv = ["wrn", *argv]
    try:
        runpy.run_module("wrn", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved
    return 0


def ray_task(p: PlannedRun) -> int:
    """One run inside a Ray worker, in-process: a worker killed (or lost with its node) takes its
    training with it (Ray does not kill a crashed worker's children), and Ray's retry resumes it."""
    from contextlib import redirect_stderr, redirect_stdout

    if p.status() == "finished":
        return 0
    log = log_path(p)
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = train_argv(p)
    with open(log, "a", buffering=1) as f, redirect_stdout(f), redirect_stderr(f):
        print(f"$ wrn {' '.join(argv)}  (Ray task, pid {os.getpid()})")
        rc = run_wrn(argv)
    if rc not in (0, EXIT_USER_ERROR):
        raise RunLost(f"{p.name}: wrn train exited with {rc}")
    return rc


class RayLauncher(Launcher):
    """One Ray task per run on the cluster at ``address`` (a local one when None); ``cpus``
    (per run) None: ``DEFAULT_CPUS``, or all the cluster has if fewer."""

    def __init__(self, *, address: str | None = None, cpus: int | None = None, gpus: int | None = None,
                 max_retries: int = 2):
        self.ray = _need("ray", "ray")
        self.address, self.cpus, self.gpus, self.max_retries = address, cpus, gpus, max_retries
        self.started_here: bool | None = None  # None: not connected yet

    def connect(self) -> None:
        """Join the cluster (or start a local one) and check that it can hold one run."""
        ray = self.ray
        if self.started_here is not None:
            return
        if not ray.is_initialized():
            if self.address and not _listening(self.address):  # Ray itself retries for minutes
                raise UserError(f"--address {self.address}: no Ray head answers there: start one with "
                                "`ray start --head --port PORT`, or drop --address for a local Ray")
            ray.init(address=self.address, include_dashboard=False)
            self.started_here = True
        else:
            self.started_here = False
        have = ray.cluster_resources()
        if self.gpus is None:
            self.gpus = int(have.get("GPU", 0) > 0)
        if self.cpus is None:  # a default the cluster cannot hold would be a trap: take what it has
            self.cpus = max(1, min(DEFAULT_CPUS, int(have.get("CPU", 0))))
            print(f"ray: {self.cpus} CPU{'s' * (self.cpus > 1)} per run (the cluster has {have.get('CPU', 0):g}; "
                  "--cpus to choose)")
        for flag, asked, name in (("--cpus", self.cpus, "CPU"), ("--gpus", self.gpus, "GPU")):
            if asked > have.get(name, 0):  # Ray would wait for it forever
                self.close()
                raise UserError(f"{flag} {asked}: the Ray cluster has {have.get(name, 0):g} {name}s in all; "
                                f"ask for fewer with {flag}")

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()
        self.started_here = None

    def run(self, runs: list[PlannedRun], progress: Progress) -> None:
        ray = self.ray
        self.connect()
        try:
            # max_calls=1: a fresh worker per run, so no run inherits another's memory.
            task = ray.remote(max_calls=1)(ray_task)
            refs = {}
            for p in map(shared, runs):
                refs[task.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries,
                                  retry_exceptions=[RunLost], name=p.name).remote(p)] = p
                progress.started(p, f": Ray task, log {log_path(p)}")
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                p = refs.pop(done[0])
                try:
                    rc = ray.get(done[0])
                except Exception:  # noqa: BLE001 - retries spent: RunLost, or the worker/node died
                    rc = None
                progress.ended(p, rc, str(log_path(p)))
        finally:
            self.close()


