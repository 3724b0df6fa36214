"""`wrn train`: train a model from a preset or config file plus dotted overrides."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "train a model: wrn train --preset quick --data cifar10 [key=value ...]"

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


def run(args: argparse.Namespace) -> int:
    from wrn.errors import UserError
    from wrn.train.config import data_overrides, load_config
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
