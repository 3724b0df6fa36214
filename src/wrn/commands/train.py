"""`wrn train`: train a model from a preset or config file plus dotted overrides."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

HELP = "train a model: wrn train --preset quick --data cifar10 [--budget 15m] [key=value ...]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wrn.train.config import RUN_NEUTRAL_KEYS, list_presets, valid_keys
    from wrn.train.preempt import EXIT_PREEMPTED

    resume_keys = ", ".join(k + "*" if k.endswith(".") else k for k in RUN_NEUTRAL_KEYS)  # "log." = log.*
    parser.epilog = (f"presets: {', '.join(list_presets())}. keys: {', '.join(valid_keys())}. "
                     f"With --resume only these may be overridden: {resume_keys}. "
                     f"The first SIGTERM/SIGINT checkpoints after the current step and exits {EXIT_PREEMPTED}; "
                     "a second one exits at once. Run again, the same command with the same --out DIR continues "
                     "the run there from its last checkpoint (a cluster's restart or requeue; another run there "
                     "is an error naming the first differing key).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="a recipe from wrn/train/recipes (default: paper-cifar)")
    source.add_argument("--config", metavar="FILE", help="a YAML config (may start from a preset with `preset: NAME`)")
    parser.add_argument("--data", metavar="PATH|NAME",
                        help="a dataset name (cifar10, cifar100, svhn) or a local archive/folder")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-<model>-<time>; "
                        "runs/<preset>-<time> where a budget may choose the model); when DIR holds this same run, "
                        "the same command continues it (a cluster's restart or requeue)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.add_argument("--init", metavar="DIR",
                        help="fine-tune: start from the weights of a run or `wrn import` directory (train.init), with "
                             "its architecture (model.*) and input normalisation (data.*) unless key=value says "
                             "otherwise; a new classifier where the class count differs; optimizer, schedule and "
                             "step start fresh; DIR's moving average of the weights where it kept one "
                             "(train.init_weights=raw: its trained weights)")
    parser.add_argument("--budget", metavar="TIME",
                        help="wall-clock budget from the command's start, e.g. 90s, 15m, 2h (train.time_budget): the "
                             "run times its own warm-up, then fixes its steps so that training and the final "
                             "evaluation end within it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=10 model.block=3,1,3")


def default_run_name(name: str, cfg) -> str:
    """The default run directory's name before its time stamp: ``<preset>-<model>``, or ``<preset>``
    alone where a budget may train another model (``train.budget_min_epochs``): the directory is
    named before the budget decides, and must not name a model it does not hold (config.yaml and
    the run's first lines say which was trained)."""
    may_switch = cfg.train.time_budget and cfg.train.budget_min_epochs and not cfg.train.steps
    return name if may_switch else f"{name}-{cfg.model.name}"


def _resume_config(out: Path, overrides: list[str]):
    """The run's own config.yaml plus the overrides --resume allows; anything that would change
    what the run computes is refused (naming the key) before a single file is written."""
    from wrn.errors import UserError
    from wrn.train.config import RUN_NEUTRAL_KEYS, apply_overrides, load_config, validate
    from wrn.train.restart import refuse_imported

    if not (out / "config.yaml").is_file():
        raise UserError(f"--resume {str(out)!r} is not a run directory (no config.yaml): give the --out of a run")
    refuse_imported(out)
    cfg = load_config(config_file=out / "config.yaml")
    apply_overrides(cfg, overrides, RUN_NEUTRAL_KEYS, unchanged_ok=True, refuse=lambda key, saved: (
        f"--resume cannot change {key} (the run has {list(saved) if isinstance(saved, tuple) else saved!r}): it would "
        "no longer be the same run; drop the override, or start a new run with --out"))
    validate(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    import sys

    from wrn.errors import UserError
    from wrn.train.config import load_config
    from wrn.train.data import data_overrides
    from wrn.train.dist import is_main
    from wrn.train.engine import fit
    from wrn.train.finetune import with_init
    from wrn.train.preempt import Preempted
    from wrn.train.restart import plan

    overrides = list(args.overrides) + data_overrides(args.data)
    resume, auto = bool(args.resume), None
    if args.budget is not None:
        overrides.append(f"train.time_budget={args.budget}")
    if args.resume:
        if args.init:
            raise UserError("--init starts a new run from DIR's weights, --resume continues a run from its own: "
                            "drop one")
        if args.preset or args.config:
            raise UserError("--resume takes the run's own config.yaml: drop --preset/--config")
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise UserError("--resume continues in its own directory: drop --out")
        out = Path(args.resume)
        cfg = _resume_config(out, overrides)
    else:
        preset = args.preset or (None if args.config else "paper-cifar")
        # --init DIR: DIR's model and input convention first, so that the command's own keys win.
        cfg = load_config(preset=preset, config_file=args.config, overrides=with_init(overrides, args.init))
        if args.out:
            out = Path(args.out)
            cfg, resume, auto = plan(out, cfg)  # the same run there: continue it
        else:
            out = Path("runs") / f"{default_run_name(preset or Path(args.config).stem, cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"
        # Under torchrun only rank 0 checks: it may already have written config.yaml when another starts.
        if not args.out and is_main() and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"--out {str(out)!r} is not empty: continue it with --resume {out}, or choose another --out")
    if is_main() and not args.quiet:
        print(f"wrn: run directory {out}", flush=True)  # before the data loads: where to look, what to resume
    try:
        fit(cfg, out, resume=resume, quiet=args.quiet, auto=auto, command=shlex.join(args.command_line),
            started=args.started)
    except Preempted as e:
        print(f"wrn: {e}", file=sys.stderr)
        return e.exit_status
    if is_main():
        _plot_curves(out)
    return 0


def _plot_curves(out: Path) -> None:
    """curves.png beside the finished run's log (``wrn report RUN`` draws it again on demand)."""
    from wrn.experiments.plots import plot_run_curves

    plot_run_curves(out)
