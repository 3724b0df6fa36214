"""`wrn predict RUN PATH...`: classify image files, folders or archives with a trained run."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path

HELP = ("classify images with a trained run: wrn predict RUN PATH... [--top K] [--out preds.csv|preds.json] [--tta] "
        "[accel.key=value ...]")
# An override is section.key=value (e.g. accel.precision=fp32); any other word is an image path.
OVERRIDE = re.compile(r"[a-z_]+\.[a-z_]+=.*")
FORMATS = (".csv", ".json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory or its checkpoint/ directory")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="PNG/JPEG files, folders (searched recursively) or .tar/.tar.gz/.tar.xz/.zip archives; "
                             "accel.* key=value overrides among them, as for `wrn eval` (e.g. accel.device=cpu "
                             "accel.precision=fp32: default the run's own; fp32 is faster on CPUs without bf16 units)")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes shown per image (default 5)")
    parser.add_argument("--out", metavar="FILE", help="write the predictions to a .csv or .json file instead")
    parser.add_argument("--tta", action="store_true", help="average over each image and its horizontal flip")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable file instead of skipping it")
    parser.add_argument("--weights", choices=("ema", "raw"), default=None,
                        help="a run trained with train.ema: its moving average (ema, the default) or the trained "
                             "weights (raw)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="default: the run's train.eval_batch_size")


def _csv(preds, k: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file"] + [f"{what}{i}" for i in range(1, k + 1) for what in ("class", "prob")])
    for name, top in zip(preds.names, preds.top(k)):
        writer.writerow([name] + [v for c, p in top for v in (c, f"{p:.6f}")])
    return buf.getvalue()


def _json(preds, k: int, run: str) -> str:
    return json.dumps({
        "run": run, "classes": preds.classes,
        "predictions": [{"file": name, "top": [{"class": c, "prob": p} for c, p in top]}
                        for name, top in zip(preds.names, preds.top(k))],
        "skipped": [{"file": name, "error": why} for name, why in preds.skipped],
    }, indent=1) + "\n"


def run(args: argparse.Namespace) -> int:
    from wrn.errors import UserError
    from wrn.fsio import write_atomic
    from wrn.inference import predict

    if args.top < 1:
        raise UserError(f"--top {args.top} must be >= 1")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix.lower() not in FORMATS:
            raise UserError(f"--out {args.out}: the file type comes from its name: use a .csv or .json file")
        if not out.parent.is_dir():
            raise UserError(f"--out {args.out}: the folder {out.parent} does not exist: create it first")
    # An existing file named like an override is still an image.
    overrides = [p for p in args.paths if OVERRIDE.fullmatch(p) and not Path(p).exists()]
    paths = [p for p in args.paths if p not in overrides]
    if not paths:
        raise UserError("no images given: wrn predict RUN PATH... (files, folders or archives)")
    preds = predict(args.run, paths, tta=args.tta, strict=args.strict, overrides=overrides, batch_size=args.batch_size,
                    weights=args.weights, on_skip=lambda name, why: print(f"wrn: skipped {name}: {why}", file=sys.stderr))
    k = min(args.top, len(preds.classes))
    if out is not None:
        text = _csv(preds, k) if out.suffix.lower() == ".csv" else _json(preds, k, args.run)
        write_atomic(out, text.encode())
        print(f"wrote {out}: {len(preds)} images" + (f", {len(preds.skipped)} skipped" if preds.skipped else ""))
        return 0
    for name, top in zip(preds.names, preds.top(k)):
        print(f"{name}\t" + "  ".join(f"{c} {100 * p:.1f}%" for c, p in top))
    return 0
