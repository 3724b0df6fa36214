"""CPU training throughput for BENCHMARKS.md: WRN-16-4, batch 64, end to end (data + step).

1. The headline: the fast path (`wrn bench`'s defaults: bf16 autocast where the CPU has it
   natively, else fp32, + channels_last + torch.compile, device-resident data, batched
   augmentation, freed memory kept for reuse) beside the plain fp32 eager
   per-image-DataLoader reference, in the same `wrn bench` run; then the same with the
   reference given the fast path's allocator setting too.
2. The ladder: each switch alone (fp32 eager -> bf16 -> + channels_last -> + compile -> + keeping
   freed memory), fast pipeline throughout, so each switch's share of the speed-up shows.

    flock /tmp/wrn-cpu.lock python benchmarks/cpu_train.py [--model wrn-16-4] [--batch-size 64]

Prints markdown rows for BENCHMARKS.md; the JSON of every run lands in benchmarks/results/.
"""

from __future__ import annotations

from common import accel_overrides, bench, parser, rows

LADDER = [
    ("fp32-eager", accel_overrides("fp32", False, False, False)),
    ("bf16", accel_overrides("bf16", False, False, False)),
    ("bf16-cl", accel_overrides("bf16", True, False, False)),
    ("bf16-cl-compile", accel_overrides("bf16", True, True, False)),
    ("bf16-cl-compile-keep-memory", accel_overrides("bf16", True, True, True)),
]


def main() -> None:
    p = parser(__doc__, batch_size="64", steps="10", repeats="3")
    p.add_argument("--no-ladder", dest="ladder", action="store_false")
    a = p.parse_args()
    common = [a.model, "--batch-size", a.batch_size, "accel.device=cpu", "--steps", a.steps,
              "--repeats", a.repeats]
    lines = rows(bench(common, f"cpu-{a.model}-b{a.batch_size}-headline"))
    # The same comparison with the fast mode's allocator setting given to the reference too.
    lines += rows(bench([*common, "--reference-keep-memory", "--no-eval"],
                        f"cpu-{a.model}-b{a.batch_size}-headline-same-allocator"), "same allocator")
    if a.ladder:
        for name, flags in LADDER:
            r = bench([*common, *flags, "--no-reference", "--no-eval"], f"cpu-{a.model}-b{a.batch_size}-{name}")
            lines += rows(r, name)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
