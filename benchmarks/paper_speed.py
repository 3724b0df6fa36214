"""The paper's speed claim: WRN-40-4 trains ~8x faster than pre-act ResNet-1001 at similar
accuracy (forward + backward per minibatch). Measured here with `wrn bench` on both nets, same
batch, same device, in both the reference mode (fp32 eager, as the paper's Torch code ran) and the
fast mode; the ratio of ms per training step is the claim's figure.

    flock /tmp/wrn-cpu.lock python benchmarks/paper_speed.py [--device cpu] [--batch-size 32]
"""

from __future__ import annotations

import argparse

from common import bench, parser, rows


def main() -> None:
    p = parser(__doc__, batch_size="32", steps="3", repeats="2", model=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="compile the fast mode (a ResNet-1001 compile takes many minutes on CPU)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="more accel.* keys for wrn bench, e.g. accel.precision=fp32 on a CPU without native bf16")
    a = p.parse_args()
    results = {}
    for model in ("wrn-40-4", "preact-resnet-1001"):
        args = [model, f"accel.device={a.device}", "--batch-size", a.batch_size, "--steps", a.steps,
                "--repeats", a.repeats, "--warmup", "1", "--no-eval", f"accel.compile={str(a.compile).lower()}",
                *a.overrides]
        results[model] = bench(args, f"paper-speed-{a.device}-{model}-b{a.batch_size}")
    lines = rows(results["wrn-40-4"]) + rows(results["preact-resnet-1001"])
    print("\n".join(lines))
    for i, mode in enumerate(("fast", "reference")):
        w = results["wrn-40-4"]["modes"][i]["train"]["ms_per_step"]
        r = results["preact-resnet-1001"]["modes"][i]["train"]["ms_per_step"]
        print(f"{mode}: WRN-40-4 {w:.0f} ms/step, pre-act ResNet-1001 {r:.0f} ms/step: {r / w:.1f}x")


if __name__ == "__main__":
    main()
