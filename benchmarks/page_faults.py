"""Why `accel.keep_freed_memory` exists: a compiled CPU training step with glibc's default
allocator hands its large buffers back to the kernel and page-faults them in again every step.
Measures ms per step and minor page faults per step with glibc's defaults and with freed memory
kept, each in its own process (the setting cannot be undone).

    flock /tmp/wrn-cpu.lock python benchmarks/page_faults.py [--model wrn-16-4] [--batch-size 64] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(model_name: str, batch: int, keep: bool, compile: bool, steps: int = 10, repeats: int = 3) -> dict:
    import torch

    from wrn.models import create_model
    from wrn.train import accel
    from wrn.train.step import make_train_step

    cpu = torch.device("cpu")
    kept = keep and accel.keep_freed_memory(cpu)
    torch.manual_seed(0)
    model = accel.prepare_model(create_model(model_name, num_classes=10), cpu, channels_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step = make_train_step(model, optimizer, precision="bf16", device=cpu, compile=compile)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for _ in range(4):
        step(x, y)
    ms, faults = [], []
    for _ in range(repeats):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        for _ in range(steps):
            step(x, y)
        ms.append((time.perf_counter() - t0) / steps * 1e3)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps)
    return {"keep_memory": kept, "ms_per_step": ms, "minor_faults_per_step": faults}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn-16-4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--child", choices=["default", "keep"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.model, a.batch_size, a.child == "keep", a.compile)))
        return
    print("| allocator | ms per step (3 blocks of 10) | minor page faults per step |")
    print("| --- | --- | --- |")
    for mode in ("default", "keep"):
        cmd = [sys.executable, __file__, "--model", a.model, "--batch-size", str(a.batch_size), "--child", mode,
               "--compile" if a.compile else "--no-compile"]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        label = "freed memory kept (accel.keep_memory)" if r["keep_memory"] else "glibc defaults"
        print(f"| {label} | {' / '.join(f'{m:.1f}' for m in r['ms_per_step'])} "
              f"| {' / '.join(f'{f:,.0f}' for f in r['minor_faults_per_step'])} |")


if __name__ == "__main__":
    main()
