"""`wrn eval`: accuracy of a checkpoint on a dataset split (rebuilds the model from the checkpoint)."""

from __future__ import annotations

import argparse
import json

HELP = ("evaluate a checkpoint: wrn eval RUN_DIR|CHECKPOINT [--data PATH|NAME] [--split test|val] [--tta|--no-tta] "
        "[--weights ema|raw] [key=value ...]")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a run directory or its checkpoint/ directory")
    parser.add_argument("--data", metavar="PATH|NAME",
                        help="evaluate another dataset laid out with the run's classes (default: the run's own)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image's prediction with its mirror's (default: as the run evaluated, "
                             "train.eval_tta)")
    parser.add_argument("--weights", choices=("ema", "raw"), default=None,
                        help="a run trained with train.ema: its moving average (ema, the default) or the trained "
                             "weights (raw)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="accel.* (e.g. accel.precision=bf16 accel.device=cpu), train.eval_batch_size")


def run(args: argparse.Namespace) -> int:
    from wrn.train.engine import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, overrides=args.overrides,
                                 tta=args.tta, weights=args.weights)
    if args.json:
        print(json.dumps(result))
    else:
        tta = (", flip TTA" if result["tta"] else "") + (", moving average" if result["weights"] == "ema" else "")
        print(f"{result['model']} {result['split']} accuracy {100 * result['accuracy']:.2f}% "
              f"({result['images']} images{tta}, loss {result['loss']:.4f})")
    return 0
