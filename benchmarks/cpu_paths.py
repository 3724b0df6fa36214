"""Which training path is fastest on this CPU: WRN-16-4 batch 64, end to end, each path in its own
`wrn bench` process (fp32 or bf16 autocast, NCHW or channels_last, eager or torch.compile, freed
memory kept throughout), then the fastest beside the same-run fp32 reference.

Why: bf16 autocast is ~3x fp32 where the CPU multiplies bf16 natively (AMX, AVX-512 bf16) and
~15x slower where it does not (measured on an AVX2 EPYC), so the fast path's precision depends on
the CPU (accel.precision=auto, the quick preset's, picks it from the ISA). Where bf16 is not
native the bf16 rows run one timed step (each takes tens of seconds there; a 15x gap needs no
repeats).

    flock /tmp/wrn-cpu.lock python benchmarks/cpu_paths.py [--model wrn-16-4] [--batch-size 64]

Prints markdown rows for BENCHMARKS.md (CPU model and ISA in each); JSON in benchmarks/results/.
"""

from __future__ import annotations

from common import accel_overrides, bench, parser, rows

from wrn.train import accel, hardware

PATHS = [  # name, precision, channels_last, compile
    ("fp32-eager-nchw", "fp32", False, False),
    ("fp32-eager-cl", "fp32", True, False),
    ("fp32-compile-nchw", "fp32", False, True),
    ("fp32-compile-cl", "fp32", True, True),  # the quick preset's path without native bf16 (auto)
    ("bf16-eager-cl", "bf16", True, False),
    ("bf16-compile-cl", "bf16", True, True),  # the quick preset's path with native bf16 (auto)
]


def main() -> None:
    p = parser(__doc__, batch_size="64", steps="5", repeats="3")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 paths")
    p.add_argument("--no-headline", dest="headline", action="store_false",
                   help="skip the fastest path's run beside the reference")
    a = p.parse_args()
    native = hardware.native_bf16(accel.resolve_device("cpu"))
    tag = f"cpu-{hardware.cpu_isa().lower().replace(' ', '-')}-{a.model}-b{a.batch_size}"
    lines, speed = [], {}
    for name, precision, channels_last, compile in PATHS:
        if precision == "bf16" and not a.bf16:
            continue
        slow = precision == "bf16" and not native
        timing = ["--steps", "1", "--repeats", "1", "--warmup", "1"] if slow else \
            ["--steps", a.steps, "--repeats", a.repeats, "--warmup", "2"]
        r = bench([a.model, "--batch-size", a.batch_size, *timing, "--no-reference", "--no-eval",
                   *accel_overrides(precision, channels_last, compile)], f"{tag}-{name}")
        speed[name] = r["modes"][0]["train"]["img_per_s"]
        lines += rows(r, name)
    if a.headline:
        best = max(speed, key=speed.get)
        _, precision, channels_last, compile = next(path for path in PATHS if path[0] == best)
        r = bench([a.model, "--batch-size", a.batch_size, "--steps", a.steps, "--repeats", a.repeats,
                   *accel_overrides(precision, channels_last, compile)], f"{tag}-fastest-vs-reference")
        lines += rows(r, f"fastest ({best})")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
