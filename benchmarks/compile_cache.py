"""Compile warm-up, cold vs warm cache: two `wrn bench` runs in fresh processes sharing a new,
empty TORCHINDUCTOR_CACHE_DIR. The first compiles everything; the second should load the
FX-graph / AOTAutograd cache and start in a fraction of the time.

    flock /tmp/wrn-cpu.lock python benchmarks/compile_cache.py [--model wrn-16-4] [--batch-size 64] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile

from common import bench

from wrn.train import hardware


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn-16-4")
    p.add_argument("--batch-size", default="64")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="more accel.* keys for wrn bench, e.g. accel.precision=fp32 on a CPU without native bf16")
    a = p.parse_args()
    args = [a.model, "--batch-size", a.batch_size, "accel.device=cpu", "accel.compile=true", *a.overrides,
            "--no-reference", "--steps", "3", "--repeats", "2", "--warmup", "2"]
    # Named by the CPU's ISA and the precision, so one machine's figures do not overwrite another's.
    precision = next((o.split("=", 1)[1] for o in a.overrides if o.startswith("accel.precision=")), "default")
    tag = f"{hardware.cpu_isa().lower().replace(' ', '-')}-{a.model}-b{a.batch_size}-{precision}"
    with tempfile.TemporaryDirectory() as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        for run in ("cold", "warm"):
            fast = bench(args, f"compile-cache-{tag}-{run}", env)["modes"][0]
            print(f"{run} cache: train warm-up {fast['train_warmup_s']:.1f} s, eval warm-up "
                  f"{fast['eval_warmup_s']:.1f} s, then {fast['train']['img_per_s']:.0f} img/s")


if __name__ == "__main__":
    main()
