"""`wrn bench MODEL`: training/eval throughput of the fast path beside a plain reference path."""

from __future__ import annotations

import argparse
import json
import shlex

HELP = "throughput (img/s), ms/step, GFLOP/s, % of matmul peak, memory: fast path vs plain fp32 reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model name, e.g. wrn-16-4 (see `wrn info --list`)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="precision of the fast mode (default bf16 autocast, fp32 weights)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile the fast mode's steps (default on; warm-up is reported)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory format in the fast mode (default on)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; mean ± std over them (default 3)")
    parser.add_argument("--input", type=int, default=32, dest="input_size", help="image size (default 32)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the plain fp32 eager per-image-DataLoader reference (default on)")
    parser.add_argument("--reference-workers", type=int, default=0,
                        help="DataLoader workers of the reference pipeline (default 0)")
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="skip the eval throughput")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    parser.add_argument("--threads", default="0",
                        help="fast mode's CPU threads: 0 = torch's default, N, or auto (probe and keep the fastest)")
    parser.add_argument("--keep-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="CPU, fast mode: keep freed memory for reuse instead of page-faulting it back "
                             "every step (default on)")
    parser.add_argument("--reference-keep-memory", action="store_true",
                        help="give the reference the same allocator setting (default: glibc's, as a plain script)")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="n of the n x n matmul measured as the peak (default 2048)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def command_line(s, as_json: bool = False) -> str:
    """The full command that reproduces a measurement (every setting spelled out)."""
    flag = lambda on, name: f"--{'' if on else 'no-'}{name}"  # noqa: E731
    parts = ["wrn", "bench", s.model, "--batch-size", str(s.batch_size), "--device", s.device,
             "--precision", s.precision, flag(s.compile, "compile"), flag(s.channels_last, "channels-last"),
             "--steps", str(s.steps), "--warmup", str(s.warmup), "--repeats", str(s.repeats),
             "--input", str(s.input_size), flag(s.reference, "reference")]
    if s.reference_workers:
        parts += ["--reference-workers", str(s.reference_workers)]
    if not s.eval:
        parts.append("--no-eval")
    if s.threads not in ("0", ""):
        parts += ["--threads", s.threads]
    if not s.keep_memory:
        parts.append("--no-keep-memory")
    if s.reference_keep_memory:
        parts.append("--reference-keep-memory")
    if s.peak_size != 2048:
        parts += ["--peak-size", str(s.peak_size)]
    if s.num_classes != 10:
        parts += ["--num-classes", str(s.num_classes)]
    if as_json:
        parts.append("--json")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from wrn.bench import BenchSettings, format_result, run_bench
    from wrn.errors import UserError

    for name in ("batch_size", "steps", "repeats", "input_size", "num_classes", "peak_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.reference_workers < 0:
        raise UserError("--warmup and --reference-workers must be >= 0")
    if args.reference_keep_memory and not args.keep_memory:
        raise UserError("--reference-keep-memory with --no-keep-memory: the setting is process-wide and would "
                        "reach the fast mode too; drop one of them")
    settings = BenchSettings(model=args.model, batch_size=args.batch_size, device=args.device,
                             precision=args.precision, compile=args.compile, channels_last=args.channels_last,
                             steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                             input_size=args.input_size, reference=args.reference,
                             num_classes=args.num_classes, reference_workers=args.reference_workers,
                             eval=args.eval, threads=str(args.threads), keep_memory=args.keep_memory,
                             reference_keep_memory=args.reference_keep_memory,
                             peak_size=args.peak_size)
    result = run_bench(settings)
    result["command"] = command_line(settings, args.json)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_result(result))
        print(f"command: {result['command']}")
    return 0
