"""``wrn sweep --launcher local|slurm|ray``: the launcher a sweep asks for by name, its options
checked together (also for a dry run), and the dry run's line on what each run will ask for. The
launchers themselves live in ``launchers.py`` (what they share, the local one) and ``cluster.py``
(SLURM, Ray)."""

from __future__ import annotations

from wrn.errors import UserError
from wrn.experiments import cluster
from wrn.experiments.launchers import (DEFAULT_CPUS, DEFAULT_SLURM_GPUS, MAX_JOB_MIN, TIME_FACTOR, TIME_OVERHEAD_MIN,
                                       Launcher, LocalLauncher, resources)
from wrn.experiments.sweep import DEFAULT_CPU_TFLOPS, PlannedRun
from wrn.units import format_duration

LAUNCHERS = ("local", "slurm", "ray")


def check_options(name: str, *, cpus: int | None = None, gpus: int | None = None, partition: str | None = None,
                  account: str | None = None, address: str | None = None, max_retries: int = 0) -> None:
    """The options of ``wrn sweep --launcher NAME`` make sense together (also for a dry run)."""
    if name not in LAUNCHERS:
        raise UserError(f"--launcher {name}: choose one of {', '.join(LAUNCHERS)}")
    for flag, value, only in (("--partition", partition, "slurm"), ("--account", account, "slurm"),
                              ("--address", address, "ray")):
        if value is not None and name != only:
            raise UserError(f"{flag} is for --launcher {only}: add --launcher {only}, or drop {flag}")
    if name == "local" and (cpus is not None or gpus is not None):
        raise UserError("--cpus/--gpus size cluster jobs: add --launcher slurm or ray, or drop them")
    if cpus is not None and cpus < 1:
        raise UserError(f"--cpus {cpus} must be >= 1")
    if gpus not in (None, 0, 1):
        raise UserError(f"--gpus {gpus}: a sweep's run trains on one GPU (1) or on CPUs (0); for one run on "
                        "several GPUs use torchrun with `wrn train`")
    if max_retries < 0:
        raise UserError(f"--max-retries {max_retries} must be >= 0")


def make(name: str, planned: list[PlannedRun], *, cpus: int | None = None, gpus: int | None = None,
         partition: str | None = None, account: str | None = None, address: str | None = None,
         max_retries: int, cpu_tflops: float = DEFAULT_CPU_TFLOPS) -> Launcher:
    """The launcher ``wrn sweep --launcher NAME`` asks for (a one-line error naming the extra when
    its package is missing)."""
    check_options(name, cpus=cpus, gpus=gpus, partition=partition, account=account, address=address,
                  max_retries=max_retries)
    if name == "local":
        return LocalLauncher()
    if name == "slurm":
        folder = planned[0].run_dir.parent.resolve() / "slurm"
        return cluster.SlurmLauncher(folder, cpus=cpus or DEFAULT_CPUS, gpus=DEFAULT_SLURM_GPUS if gpus is None else gpus,
                             partition=partition, account=account, max_retries=max_retries, cpu_tflops=cpu_tflops)
    ray = cluster.RayLauncher(address=address, cpus=cpus, gpus=gpus, max_retries=max_retries)
    ray.connect()  # a wrong address or an impossible request fails before the sweep writes anything
    return ray


def describe(name: str, planned: list[PlannedRun], *, cpus: int | None = None, gpus: int | None = None,
             cpu_tflops: float = DEFAULT_CPU_TFLOPS) -> str:
    """The dry run's line on what each run will ask the cluster for ("" for local)."""
    if name == "ray":
        each = (f"{cpus} CPU{'s' * (cpus > 1)}" if cpus else
                f"{DEFAULT_CPUS} CPUs or all the cluster has if fewer (--cpus to choose)")
        return (f"ray: one task per run, {each} and " + ({0: "no GPU", 1: "1 GPU"}.get(gpus) or
                "1 GPU when the cluster has GPUs (else none)") + " each")
    if name != "slurm":
        return ""
    cpus = cpus or DEFAULT_CPUS
    each = f"{cpus} CPU{'s' * (cpus > 1)}"
    gpus = DEFAULT_SLURM_GPUS if gpus is None else gpus
    rs = [resources(p, cpus=cpus, gpus=gpus, cpu_tflops=cpu_tflops) for p in planned]
    lo, hi = (format_duration(60 * f(r.minutes for r in rs)) for f in (min, max))
    return (f"slurm: one job per run, {each}, {'1 GPU' if gpus else 'no GPU'}, "
            f"up to {max(r.mem_gb for r in rs)} GB each; "
            f"time limit {lo if lo == hi else f'{lo} to {hi}'} ({TIME_FACTOR}x the {'H100' if gpus else 'CPU'} estimate + "
            f"{TIME_OVERHEAD_MIN} min, at most {MAX_JOB_MIN // 60} h: a longer run is requeued and resumes)")
