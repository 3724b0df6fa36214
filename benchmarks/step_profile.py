"""Where one fast-path training step's time goes on the CPU: torch.profiler over a few compiled
steps (bf16 autocast + channels_last + torch.compile, freed memory kept), grouped into oneDNN
convolutions, inductor's fused kernels (forward / backward) and the rest.

    flock /tmp/wrn-cpu.lock python benchmarks/step_profile.py [--model wrn-16-4] [--batch-size 64]

Profiling adds a little overhead, so the total is slightly above `wrn bench`'s ms per step.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

from wrn.models import create_model
from wrn.train import accel
from wrn.train.step import make_train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn-16-4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    # Inductor's kernels show in the profile only when compiled with profiling hooks: a private
    # compile cache keeps those kernels out of the user's.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="wrn-step-profile-")
    inductor_config.cpp.enable_kernel_profile = True
    cpu = torch.device("cpu")
    accel.keep_freed_memory(cpu)
    torch.manual_seed(0)
    model = accel.prepare_model(create_model(a.model, num_classes=10), cpu, channels_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step = make_train_step(model, optimizer, precision="bf16", device=cpu, compile=True)
    x = torch.randn(a.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,))
    for _ in range(5):
        step(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step(x, y)
    events = prof.key_averages()
    parts = {"conv backward (data + weights), oneDNN": 0.0, "conv forward, oneDNN": 0.0,
             "inductor fused kernels, forward ops": 0.0, "inductor fused kernels with backward ops": 0.0, "everything else": 0.0}
    for e in events:
        us = e.self_cpu_time_total
        if e.key == "aten::convolution_backward":
            parts["conv backward (data + weights), oneDNN"] += us
        elif e.key == "aten::mkldnn_convolution":
            parts["conv forward, oneDNN"] += us
        elif e.key.startswith("graph_") and "backward" in e.key:
            parts["inductor fused kernels with backward ops"] += us
        elif e.key.startswith("graph_"):
            parts["inductor fused kernels, forward ops"] += us
        else:
            parts["everything else"] += us
    print(f"| {a.model} b{a.batch_size}, per step | ms |")
    print("| --- | --- |")
    for name, us in parts.items():
        print(f"| {name} | {us / a.steps / 1e3:.1f} |")
    print(f"| total (profiled) | {sum(parts.values()) / a.steps / 1e3:.1f} |")


if __name__ == "__main__":
    main()
