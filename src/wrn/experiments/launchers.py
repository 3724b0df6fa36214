"""Where a sweep's runs execute: here one at a time (local), as SLURM jobs (submitit) or as Ray
tasks. Every launcher runs the same command for a run, ``wrn train`` (``train_argv``), chosen by
the run's own state when it starts: ``--preset P --out RUN_DIR OVERRIDES`` for a new run,
``--resume RUN_DIR`` for one with a checkpoint, nothing for a finished one. So a retried,
requeued or re-launched run resumes, and a finished run is never trained again. Local and SLURM
runs start ``python -m wrn.cli train ...``; a Ray task runs ``python -m wrn`` in its own process
(see ``cluster.ray_task``). ``wrn.experiments.launch`` picks a launcher by name.

    local  one run after another on this machine (the default)
    slurm  one submitit job per run; SLURM's time-limit/preemption signal checkpoints the run and
           requeues its job; a job lost otherwise (node failure, kill) is resubmitted and resumes;
           job logs in <sweep dir>/slurm/<job id>_0_log.out, where SLURM users look
    ray    one Ray task per run with the run's CPUs/GPUs, on an existing cluster (--address) or a
           local one; a task lost with its node or process is retried by Ray (max_retries) and
           resumes. The run directories must be on a filesystem every node shares.

Each run trains on one GPU (or on CPUs with --gpus 0), as the paper's CIFAR runs did.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from wrn.experiments.sweep import H100_TFLOPS, PlannedRun
from wrn.rundir import read_summary
from wrn.units import format_duration

# `wrn train`'s exit status for a bad config: the same failure every time, so never retried.
EXIT_USER_ERROR = 2
EXTRA = "pip install -e \".[cluster]\""
# Per run, unless --cpus/--gpus say otherwise: the data lives on the GPU, the CPUs decode it once.
DEFAULT_CPUS, DEFAULT_SLURM_GPUS = 4, 1


def train_argv(p: PlannedRun) -> list[str]:
    """``wrn train`` arguments for ``p``: a new run from its preset and overrides, or a lost one
    resumed from its own config.yaml (which holds the overrides; --resume takes none)."""
    if p.status() == "resumable":
        return ["train", "--resume", str(p.run_dir)]
    return ["train", "--preset", p.preset, "--out", str(p.run_dir), *p.overrides]


def train(p: PlannedRun, log: Path | None = None, started: Callable[[int], None] | None = None) -> int:
    """Train or resume ``p`` with ``python -m wrn.cli train ...``; the exit status (0 for a run
    that had finished already). Output goes to ``log`` (appended), else to this process's."""
    if p.status() == "finished":
        return 0
    cmd = [sys.executable, "-m", "wrn.cli", *train_argv(p)]
    out = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "a")
    try:
        print(f"$ {' '.join(cmd)}", file=out or sys.stdout, flush=True)
        # The child never takes SLURM's USR2 (its default action would kill training without a
        # checkpoint): the job process handles it and asks training to stop with SIGTERM.
        blocked = hasattr(signal, "pthread_sigmask") and hasattr(signal, "SIGUSR2")
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2}) if blocked else None
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if started is not None:
            started(proc.pid)
        return proc.wait()
    finally:
        if out is not None:
            out.close()


@dataclass(frozen=True)
class Resources:
    """What one run asks the cluster for."""

    cpus: int
    gpus: int
    mem_gb: int
    minutes: int  # one job's time limit
    jobs: int  # job time limits the run needs at the estimate: SLURM requeues it that often


# A run's time: the cost estimate (a lower bound for small nets on a GPU) x 3, plus start-up and
# evaluation; at most a day per job, a longer run is requeued at its limit and resumes.
TIME_FACTOR, TIME_OVERHEAD_MIN, MAX_JOB_MIN = 3, 15, 24 * 60


def resources(p: PlannedRun, *, cpus: int, gpus: int, cpu_tflops: float) -> Resources:
    """The run's request, from its dry-run cost estimate (``p.train_flops``) and dataset size."""
    seconds = (p.train_flops or 0) / ((H100_TFLOPS if gpus else cpu_tflops) * 1e12)
    total = TIME_OVERHEAD_MIN + math.ceil(TIME_FACTOR * seconds / 60)
    # The decoded uint8 training set (32x32x3) is held a few times over while it is loaded.
    data_gb = p.train_images * 32 * 32 * 3 / 1e9
    return Resources(cpus=cpus, gpus=gpus, mem_gb=8 + math.ceil(4 * data_gb), minutes=min(MAX_JOB_MIN, total),
                     jobs=math.ceil(total / MAX_JOB_MIN))


# --- the sweep's bookkeeping ---------------------------------------------------------------------


class Progress:
    """What a launcher reports: a run started (or was resubmitted) and a run ended."""

    def __init__(self, runs: list[PlannedRun], echo: Callable[[str], None]):
        self.index = {p.name: i for i, p in enumerate(runs, 1)}
        self.total = len(runs)
        self.echo = echo
        self.resumed: dict[str, bool] = {}
        self.start: dict[str, float] = {}
        self.outcome: dict[str, list[str]] = {"skipped": [], "trained": [], "resumed": [], "failed": []}

    def head(self, p: PlannedRun) -> str:
        return f"[{self.index[p.name]}/{self.total}] {p.name}"

    def started(self, p: PlannedRun, where: str = "") -> None:
        resume = p.status() == "resumable"
        self.resumed.setdefault(p.name, resume)
        self.start.setdefault(p.name, time.time())
        what = ("training" if not resume else "resuming from its checkpoint" if p.has_checkpoint
                else "starting over in its run directory (stopped before its first checkpoint)")
        self.echo(f"{self.head(p)}: {what} ({p.model}, {p.epochs} epochs){where}")

    def ended(self, p: PlannedRun, rc: int | None, log: str) -> None:
        if p.status() != "finished":
            self.echo(f"{self.head(p)}: FAILED ({'lost' if rc is None else f'exit {rc}'}); see {log}")
            self.outcome["failed"].append(p.name)
            return
        summary = read_summary(p.run_dir)
        self.echo(f"{self.head(p)}: done in {format_duration(time.time() - self.start[p.name])}, "
                  f"final test error {100 * (1 - summary['test_acc']):.2f}%")
        self.outcome["resumed" if self.resumed[p.name] else "trained"].append(p.name)


class Launcher:
    """Runs the given (unfinished) runs, calling ``progress.started``/``ended`` for each."""

    def run(self, runs: list[PlannedRun], progress: Progress) -> None:
        raise NotImplementedError


def execute(planned: list[PlannedRun], launcher: Launcher | None = None, *,
            echo: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Train every run that is not finished (lost ones resume); returns run names by outcome."""
    progress = Progress(planned, echo)
    todo = []
    for p in planned:
        if p.status() == "finished":
            echo(f"{progress.head(p)}: finished already, skipped")
            progress.outcome["skipped"].append(p.name)
        else:
            todo.append(p)
    if todo:
        (launcher or LocalLauncher()).run(todo, progress)
    return progress.outcome


def shared(p: PlannedRun) -> PlannedRun:
    """``p`` with an absolute run directory: a job or task may start in another directory."""
    return replace(p, run_dir=p.run_dir.resolve())


def log_path(p: PlannedRun) -> Path:
    return p.run_dir.parent / "logs" / f"{p.name}.txt"


# --- local ---------------------------------------------------------------------------------------


class LocalLauncher(Launcher):
    """One run at a time here; a crash or out-of-memory in one run does not stop the sweep."""

    def __init__(self, runner: Callable[[PlannedRun], int] | None = None):
        self.runner = runner or (lambda p: train(p, log_path(p)))

    def run(self, runs: list[PlannedRun], progress: Progress) -> None:
        for p in runs:
            progress.started(p)
            progress.ended(p, self.runner(p), str(log_path(p)))
