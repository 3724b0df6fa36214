"""`wrn train`: train a model from a preset or config file plus dotted overrides."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HELP = "train a model: wrn train --preset quick --data cifar10 [key=value ...]"

def _dataset_names() -> tuple[str, ...]:
    from wrn.data import NAMES  # the names load_dataset downloads

    return tuple(NAMES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wrn.train.config import list_presets, valid_keys

    parser.epilog = (f"presets: {', '.join(list_presets())}. "
                     f"keys: {', '.join(valid_keys())}")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="a recipe from wrn/train/recipes (default: paper-cifar)")
    source.add_argument("--config", metavar="FILE", help="a YAML config (may start from a preset with `preset: NAME`)")
    parser.add_argument("--data", metavar="PATH|NAME",
                        help="a dataset name (cifar10, cifar100, svhn) or a local archive/folder")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-<model>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=10 model.block=3,1,3")


def data_overrides(data: str | None) -> list[str]:
    """--data X: a path when X exists (or looks like one), else a dataset name."""
    from wrn.errors import UserError

    if data is None:
        return []
    if os.path.exists(data) or os.sep in data or data.startswith("."):
        if not os.path.exists(data):
            raise UserError(f"--data {data!r} does not exist: check the path, or give a name ({', '.join(_dataset_names())})")
        return [f"data.path={os.path.abspath(data)}"]
    if data not in _dataset_names():
        raise UserError(f"--data {data!r} is neither a file/folder nor a dataset name: use a path or one of "
                        f"{', '.join(_dataset_names())}")
    return [f"data.name={data}", "data.path=none"]


def run(args: argparse.Namespace) -> int:
    from wrn.errors import UserError
    from wrn.train.config import load_config
    from wrn.train.dist import is_main
    from wrn.train.engine import fit

    overrides = list(args.overrides) + data_overrides(args.data)
    if args.resume:
        if args.preset or args.config:
            raise UserError("--resume takes the run's own config.yaml: drop --preset/--config")
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise UserError("--resume continues in its own directory: drop --out")
        out = Path(args.resume)
        if not (out / "config.yaml").is_file():
            raise UserError(f"--resume {str(out)!r} is not a run directory (no config.yaml): give the --out of a run")
        cfg = load_config(config_file=out / "config.yaml", overrides=overrides)
        fit(cfg, out, resume=True, quiet=args.quiet)
        return 0

    preset = args.preset or (None if args.config else "paper-cifar")
    cfg = load_config(preset=preset, config_file=args.config, overrides=overrides)
    if args.out:
        out = Path(args.out)
    else:
        name = preset or Path(args.config).stem
        out = Path("runs") / f"{name}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Under torchrun only rank 0 checks: it may already have written config.yaml when another starts.
    if is_main() and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {str(out)!r} is not empty: continue it with --resume {out}, or choose another --out")
    fit(cfg, out, resume=False, quiet=args.quiet)
    return 0
