"""Timing for `wrn bench`: synchronized time loops, the figures a block of steps gives, a
time-bounded matmul peak, and peak memory, on CPU or CUDA."""

from __future__ import annotations

import math
import resource
import statistics
import time
from typing import Any, Callable

import torch

PEAK_SECONDS = 0.5  # the time bound of one peak measurement (see matmul_peak_gflops)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n_max: int = 2048,
                       seconds: float = PEAK_SECONDS) -> tuple[float, int]:
    """(best GFLOP/s, n) of an n x n matmul, measured in about ``seconds`` (at most ~3x that).

    n starts at 128 and doubles (up to ``n_max``) while a product of the doubled size, timed
    directly, still takes under a tenth of the time bound. So a dtype the hardware does not
    multiply natively (bf16 on an AVX2 CPU: ~1.4 GFLOP/s, where a fixed 2048^2 product took ~13 s)
    is measured on a small matrix instead of for minutes. Timing the bigger product itself, not
    predicting it from the smaller one, matters on a shared CPU: there a small product's time is
    mostly an OpenMP thread waiting for its descheduled sibling (~20 ms for a 0.05 ms product,
    measured on 2 busy cores). Then half the time warms up (the first AMX matmuls of a process
    run at less than half speed) and the rest times blocks; the best block counts.
    """
    def once(a: torch.Tensor, b: torch.Tensor) -> float:
        synchronize(device)
        t = time.perf_counter()
        a @ b
        synchronize(device)
        return time.perf_counter() - t

    def operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)

    n = min(128, n_max)
    a, b = operands(n)
    once(a, b)  # first call: kernel selection, allocation
    while n * 2 <= n_max:
        bigger = operands(n * 2)
        if min(once(*bigger), once(*bigger)) > seconds / 10:
            break
        n, (a, b) = n * 2, bigger
    end_warmup = time.perf_counter() + seconds / 2
    while time.perf_counter() < end_warmup:
        a @ b
    synchronize(device)
    per_block = max(1, int(seconds / 10 / max(once(a, b), 1e-9)))  # ~10 blocks fill the other half
    best, end = math.inf, time.perf_counter() + seconds / 2
    while True:
        t = time.perf_counter()
        for _ in range(per_block):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - t) / per_block)
        if time.perf_counter() >= end:
            return 2 * n**3 / best / 1e9, n


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets this process's peak RSS (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(peak MB, what it is): CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "peak_rss"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss"


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def time_loop(run_one: Callable[[], Any], *, steps: int, warmup: int, repeats: int,
              device: torch.device) -> tuple[float, list[float]]:
    """(warm-up seconds, seconds per timed block of ``steps`` calls)."""
    synchronize(device)
    t = time.perf_counter()
    for _ in range(warmup):
        run_one()
    synchronize(device)
    warm = time.perf_counter() - t
    blocks = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            run_one()
        synchronize(device)
        blocks.append(time.perf_counter() - t)
    return warm, blocks


def figures(blocks: list[float], steps: int, batch: int, flops_per_image: float, peak: float) -> dict:
    ips, ips_std = _mean_std([steps * batch / b for b in blocks])
    ms, ms_std = _mean_std([1e3 * b / steps for b in blocks])
    gflops = ips * flops_per_image / 1e9
    return {"img_per_s": ips, "img_per_s_std": ips_std, "ms_per_step": ms, "ms_per_step_std": ms_std,
            "gflops": gflops, "pct_of_peak": 100 * gflops / peak}
