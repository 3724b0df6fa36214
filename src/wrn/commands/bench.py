"""`wrn bench MODEL [key=value ...]`: training/eval throughput of the fast path beside a plain
reference path. The fast path's settings are `wrn train`'s `model.*`/`accel.*` keys (defaults:
the quick preset's: bf16 where native else fp32, channels_last, compile), and the training
augmentation takes `data.policy*`/`data.cutout` (its time alone and its share of the step are
shown); the flags are the bench's own."""

from __future__ import annotations

import argparse
import json
import shlex

HELP = "throughput (img/s), ms/step, GFLOP/s, % of matmul peak, memory: fast path vs plain fp32 reference"

# Always spelt out in the reproducing command, so that it does not depend on the preset's defaults.
CORE_KEYS = ("accel.device", "accel.precision", "accel.compile", "accel.channels_last", "accel.keep_memory")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model name, e.g. wrn-16-4 (see `wrn info --list`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="model.* and accel.* keys as for `wrn train`, e.g. accel.precision=fp32 "
                             "accel.compile=false accel.channels_last=false accel.device=cpu accel.threads=auto "
                             "model.num_classes=100; defaults: the quick preset's (precision auto: bf16 where "
                             "native, else fp32; channels_last, compile, freed memory kept); and the training "
                             "augmentation's data.policy, data.policy_ops, data.policy_magnitude, data.cutout "
                             "(default: crop + flip alone); optim.sam_rho, optim.sam_adaptive time a SAM/ASAM step")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; mean ± std over them (default 3)")
    parser.add_argument("--input", type=int, default=32, dest="input_size", help="image size (default 32)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the plain fp32 eager per-image-DataLoader reference (default on)")
    parser.add_argument("--reference-workers", type=int, default=0,
                        help="DataLoader workers of the reference pipeline (default 0)")
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="skip the eval throughput")
    parser.add_argument("--reference-keep-memory", action="store_true",
                        help="give the reference the fast path's accel.keep_memory setting (default: glibc's "
                             "allocator defaults, as a plain script has them)")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="the largest n of the n x n matmul measured as the peak (default 2048; smaller "
                             "where one product would take too long, e.g. bf16 without native support)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def command_line(s, as_json: bool = False) -> str:
    """The full command that reproduces a measurement: every bench flag, the core accel keys, and
    each other model.*/accel.* key whose value differs from the bench's defaults."""
    from wrn.bench import bench_config
    from wrn.train.config import BENCH_KEYS, allowed

    parts = ["wrn", "bench", s.model, "--batch-size", str(s.batch_size), "--steps", str(s.steps),
             "--warmup", str(s.warmup), "--repeats", str(s.repeats), "--input", str(s.input_size),
             "--reference" if s.reference else "--no-reference"]
    if s.reference_workers:
        parts += ["--reference-workers", str(s.reference_workers)]
    if not s.eval:
        parts.append("--no-eval")
    if s.reference_keep_memory:
        parts.append("--reference-keep-memory")
    if s.peak_size != 2048:
        parts += ["--peak-size", str(s.peak_size)]
    default = bench_config(s.model)
    for section in ("model", "accel", "data", "optim"):
        for name, value in vars(getattr(s.config, section)).items():
            key = f"{section}.{name}"
            if key == "model.name" or not allowed(BENCH_KEYS, key):
                continue
            if key in CORE_KEYS or value != getattr(getattr(default, section), name):
                parts.append(f"{key}={_text(value)}")
    if as_json:
        parts.append("--json")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from wrn.bench import BenchSettings, bench_config, format_result, run_bench
    from wrn.errors import UserError

    for name in ("batch_size", "steps", "repeats", "input_size", "peak_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.reference_workers < 0:
        raise UserError("--warmup and --reference-workers must be >= 0")
    config = bench_config(args.model, args.overrides)
    if args.reference_keep_memory and not config.accel.keep_memory:
        raise UserError("--reference-keep-memory with accel.keep_memory=false: the setting is process-wide and "
                        "would reach the fast mode too; drop one of them")
    settings = BenchSettings(config=config, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                             repeats=args.repeats, input_size=args.input_size, reference=args.reference,
                             reference_workers=args.reference_workers, eval=args.eval,
                             reference_keep_memory=args.reference_keep_memory, peak_size=args.peak_size)
    result = run_bench(settings)
    result["command"] = command_line(settings, args.json)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_result(result))
        print(f"command: {result['command']}")
    return 0
