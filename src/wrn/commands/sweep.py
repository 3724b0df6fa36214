"""`wrn sweep TABLE`: run one of the paper's tables (plan, train each run x seeds, resume, skip)."""

from __future__ import annotations

import argparse
import os

HELP = "run one of the paper's tables: plan (--dry-run), train every run x seeds, resume, skip finished"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", nargs="?", help="table name (see --list), e.g. block-types")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for every run, e.g. accel.precision=bf16")
    parser.add_argument("--list", action="store_true", help="list the paper's tables and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the runs with params (next to the paper's) and estimated cost; train nothing")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per run (the paper: median of 5)")
    parser.add_argument("--out", default="runs", help="root of the run directories (default: runs)")
    parser.add_argument("--data", default=None,
                        help="dataset path or name for every run (default: each run's dataset by name)")
    parser.add_argument("--dataset", default=None,
                        help="only the runs on this dataset (cifar10, cifar100, svhn)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="REDUCED budget: train E epochs, lr milestones scaled to keep their fractions")
    parser.add_argument("--subset", type=int, default=0, help="REDUCED budget: train on K training images (data.subset)")
    parser.add_argument("--model-scale", type=float, default=1.0,
                        help="REDUCED budget: multiply each WRN's width k (0.5: k=2 -> 1)")
    parser.add_argument("--depth", type=int, default=None,
                        help="REDUCED budget: train every WRN at this depth (16: WRN-28-10 -> WRN-16-10)")
    parser.add_argument("--tflops", type=float, default=None,
                        help="sustained training TFLOP/s assumed for the CPU time estimate")
    cluster = parser.add_argument_group(
        "where the runs execute", "slurm and ray need the cluster extra (pip install -e \".[cluster]\") and "
        "--out on a filesystem every node shares; a lost run resumes from its checkpoint")
    cluster.add_argument("--launcher", default="local", choices=("local", "slurm", "ray"),
                         help="local: one run at a time here (default); slurm: one submitit job per run "
                              "(logs in <sweep dir>/slurm/); ray: one Ray task per run")
    cluster.add_argument("--address", metavar="HOST:PORT", help="ray: an existing cluster (default: a local one)")
    cluster.add_argument("--partition", help="slurm: the partition")
    cluster.add_argument("--account", help="slurm: the account to charge")
    cluster.add_argument("--cpus", type=int, help="slurm/ray: CPUs per run (default 4; ray: 4 or all the cluster has if fewer)")
    cluster.add_argument("--gpus", type=int,
                         help="slurm/ray: GPUs per run (default 1; ray: 1 when the cluster has GPUs, else 0)")
    cluster.add_argument("--max-retries", type=int, default=2,
                         help="slurm/ray: times a lost run (killed, node gone) is started again to resume")


def run(args: argparse.Namespace) -> int:
    from wrn.errors import UserError
    from wrn.experiments import dryrun, launch, launchers, paper, sweep

    if args.list:
        for t in paper.tables().values():
            print(f"{t.name:14s} {len(t.runs):2d} runs  {t.title}")
        return 0
    if not args.table:
        raise UserError("no table given: e.g. `wrn sweep block-types --dry-run` (`wrn sweep --list` lists them)")
    table = paper.get_table(args.table)
    options = dict(cpus=args.cpus, gpus=args.gpus, partition=args.partition, account=args.account,
                   address=args.address, max_retries=args.max_retries)
    launch.check_options(args.launcher, **options)
    budget = sweep.Budget(epochs=args.epochs, subset=args.subset, model_scale=args.model_scale,
                          depth=args.depth)
    planned = sweep.plan(table, out=args.out, seeds=args.seeds, budget=budget, data=args.data,
                         dataset=args.dataset, overrides=tuple(args.overrides))
    budget = planned[0].budget  # plan() adds an lr schedule override to the label
    tflops, source = dryrun.cpu_tflops(planned, args.tflops)
    print(dryrun.format_plan(table, planned, budget, tflops=tflops, tflops_source=source))
    request = launch.describe(args.launcher, planned, cpus=args.cpus, gpus=args.gpus, cpu_tflops=tflops)
    if request:
        print(request)
    if args.dry_run:
        return 0
    if args.data is not None and args.data not in paper.NUM_CLASSES and not os.path.exists(args.data):
        raise UserError(f"--data {args.data} does not exist: give a local copy or a dataset name (cifar10, ...)")
    launcher = launch.make(args.launcher, planned, cpu_tflops=tflops, **options)
    print()
    sweep.write_manifest(table, planned, budget, _command(args))
    outcome = launchers.execute(planned, launcher)
    print(f"{table.name} [{budget.label}]: " + ", ".join(f"{len(v)} {k}" for k, v in outcome.items()))
    print(f"report: wrn report {planned[0].run_dir.parent}")
    return 1 if outcome["failed"] else 0


def _command(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this sweep (saved in sweep.json); where it ran (--launcher
    and its options) does not change the results."""
    cmd = ["wrn", "sweep", args.table, "--seeds", str(args.seeds), "--out", args.out]
    for flag, value in (("--data", args.data), ("--dataset", args.dataset), ("--epochs", args.epochs),
                        ("--subset", args.subset or None),
                        ("--model-scale", None if args.model_scale == 1.0 else args.model_scale),
                        ("--depth", args.depth)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd + list(args.overrides)
