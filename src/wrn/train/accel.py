"""Speed switches in one place: device, bf16 autocast, channels_last, torch.compile, CUDA graphs.

``wrn.train.step`` builds the training and evaluation steps from these switches, so the readable
path (fp32, eager) and the fast path are the same model and the same loop.

Numerics of the fast path: the parameters (master weights), the optimizer state and the loss stay
fp32; autocast runs convolutions and the linear layer in bf16 (on CPU: oneDNN's AMX / AVX-512
bf16 kernels). Measured on a 2-core Sapphire Rapids CPU (BENCHMARKS.md), WRN-16-4 batch 64:
bf16 + channels_last is ~3x fp32 eager; casting the whole model to bf16 (fp32 master copy kept
by hand) gained nothing over autocast, so autocast it is. torch.compile adds fused BN/ReLU/add
kernels on top (~15% on CPU once warm, more on GPU); its warm-up is amortised by a persistent
compile cache (``compile_cache_dir``) and skipped for short runs (``should_compile``). On CPU,
``keep_freed_memory`` stops glibc from returning activation buffers to the kernel every step
(another ~15%).
On CUDA, CUDA graphs (compile mode ``reduce-overhead``) remove the per-kernel launch cost and the
optimizer runs as one fused kernel. Every switch also runs on CPU tensors, so tests cover it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from wrn.errors import UserError
from wrn.train.hardware import auto_precision

PRECISIONS = ("fp32", "bf16")
# What accel.precision may say: "auto" = bf16 where the hardware multiplies it natively, else fp32
# (resolve_precision; the engine resolves it once and records it in the run).
CONFIG_PRECISIONS = (*PRECISIONS, "auto")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is visible: use accel.device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda") from None


def autocast(precision: str, device: torch.device):
    """bf16 autocast context on CPU or GPU; a null context for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise UserError(f"unknown precision {precision!r}: use fp32 or bf16")


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move to the device; channels_last (NHWC) lets oneDNN/cuDNN pick their fastest conv kernels."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


# -- compile warm-up: a persistent cache, and skipping runs too short to pay it back ---------------

def _cache_root() -> Path:
    """$TORCHINDUCTOR_CACHE_DIR when the user set it, else ~/.cache/wrn/inductor.

    Importing torch._inductor writes torch's default (/tmp/torchinductor_<user>) into the
    variable, so that value counts as unset.
    """
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if path:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.path.abspath(path) != os.path.abspath(default_cache_dir()):
            return Path(path)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wrn" / "inductor"


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled graphs between runs: $TORCHINDUCTOR_CACHE_DIR when set,
    else ~/.cache/wrn/inductor (torch's own default lives in /tmp, which a reboot empties).

    Sets the variable for this process (inductor reads it whenever it looks up the cache) and
    switches on the FX-graph and AOTAutograd caches, so a second run of the same
    model/batch/precision loads its kernels instead of generating and compiling C++/Triton again
    (measured: ~37 s -> ~5 s on 2 CPU cores).
    """
    path = _cache_root()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    path.mkdir(parents=True, exist_ok=True)
    return path


# Steps a compiled run needs before its warm-up pays back, from measurements on the 2-core CPU
# (BENCHMARKS.md, WRN-16-4 batch 64, bf16 + channels_last, freed memory kept): compile saves
# ~33 ms of ~205 ms per step and its warm-up is ~31 s with a cold compile cache (break-even
# ~950 steps). On GPU, compile + CUDA graphs save far more per step.
MIN_STEPS_TO_COMPILE = {"cpu": 1000, "cuda": 500}


def should_compile(requested: bool, total_steps: int, device_type: str, precision: str) -> tuple[bool, str]:
    """Whether to compile this run, and why (the engine logs the reason).

    Compiled and eager steps round differently, so this decision shapes the weights: it is a
    function of the config alone (the run's total steps, device type and precision), never of
    the steps left after a resume or of whether the compile cache happens to be warm today, and
    the engine records it in the run and reuses it on resume.

    fp32 on a CPU runs eager: its steps are oneDNN convolutions at 85-95% of the fp32 peak, and
    inductor's fused BN/ReLU kernels win nothing measurable there (2-core AVX2 EPYC, batch 64:
    WRN-16-1 643 img/s compiled against 666 eager, WRN-16-4 equal within noise; BENCHMARKS.md),
    while a cold compile costs ~40 s per net. bf16 on a CPU (where the CPU has it natively) gains
    ~15% from compiling, as do GPUs.
    """
    if not requested:
        return False, "accel.compile=false"
    if device_type == "cpu" and precision == "fp32":
        return False, "fp32 on a CPU gains nothing from compiling: running eager"
    need = MIN_STEPS_TO_COMPILE.get(device_type, MIN_STEPS_TO_COMPILE["cuda"])
    if total_steps < need:
        return False, f"run too short to pay back the compile warm-up ({total_steps} < {need} steps): running eager"
    return True, "compiling (accel.compile=true)"


# -- optimizer -------------------------------------------------------------------------------------

def fast_optimizer(optimizer, device: torch.device):
    """Switch an SGD/Adam(W) to its multi-tensor implementation: one fused kernel per step on CUDA
    (``fused=True``), ``foreach`` (a few big vector ops instead of one small op per tensor) on CPU.

    The update is the same arithmetic; only how it is batched changes. ``optimizer`` may be a
    wrapper that exposes ``param_groups`` (the engine's SkipNonFinite). Returns it unchanged.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)):
        return optimizer
    fused = device.type == "cuda"
    for group in inner.param_groups:
        if "fused" in group:
            group["fused"] = fused
        if "foreach" in group:
            group["foreach"] = not fused
    return optimizer


# -- CPU memory ------------------------------------------------------------------------------------

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(device: torch.device) -> bool:
    """CPU: keep freed memory in the process's heap instead of handing it back to the kernel.

    With glibc's defaults a training step gives its large activation buffers back to the kernel
    (munmap, heap trim) and page-faults them in again, zeroed, on the next step: ~22,000-26,000
    faults (~100 MB) per WRN-16-4 batch-64 step, 11-15% of the step (eager / compiled) on the
    2-core machine (BENCHMARKS.md). Raising the mmap and trim thresholds lets malloc reuse that memory; the
    process keeps its peak size until it exits. Process-wide; a no-op off glibc, and on GPU.
    Returns whether the setting is in force.
    """
    if device.type != "cpu":
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: no mallopt (macOS), no CDLL(None) (Windows)
        return False
    # Older glibc caps the mmap threshold at HEAP_MAX_SIZE / 2 (32 MiB) and rejects more (returns 0).
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    trim_ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return bool(mmap_ok and trim_ok)


# -- CPU threads on a shared machine ---------------------------------------------------------------

class ThreadTuner:
    """``accel.threads=auto`` on CPU: every ``period`` steps, time a few steps at each candidate
    thread count and keep the fastest.

    Why: torch's OpenMP splits every kernel evenly over all cores, so when another process holds
    one core of a 2-core machine, each kernel waits for the descheduled half and a step gets ~3x
    slower than with one thread (measured: WRN-16-4 bf16 batch 64, 30 vs 92 img/s). On a quiet
    machine all cores win again. Off by default: a thread count change may change the rounding
    of some reductions, and a bit-exact resume needs the same count throughout.
    """

    def __init__(self, candidates: tuple[int, ...] | None = None, *, period: int = 200, probe: int = 3,
                 skip: int = 5, clock: Callable[[], float] | None = None,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        cores = os.cpu_count() or 1
        self.candidates = candidates or tuple(sorted({cores, max(1, cores - 1), max(1, cores // 2)}, reverse=True))
        self.period, self.probe, self.skip = period, probe, skip
        self.clock = clock or time.perf_counter
        self.set_threads = set_threads
        self.best = self.candidates[0]
        self._step = 0
        self._times: dict[int, list[float]] = {}
        self._start = 0.0
        self._current = self.best

    def _plan(self, step: int) -> int | None:
        """The candidate this step probes, or None outside a probe window."""
        if len(self.candidates) < 2 or step < self.skip:
            return None
        offset = (step - self.skip) % self.period
        index = offset // self.probe
        return self.candidates[index] if index < len(self.candidates) else None

    def before_step(self) -> None:
        n = self._plan(self._step)
        want = n if n is not None else self.best
        if want != self._current:
            self.set_threads(want)
            self._current = want
        self._start = self.clock()

    def after_step(self) -> None:
        n = self._plan(self._step)
        if n is not None:
            self._times.setdefault(n, []).append(self.clock() - self._start)
            offset = (self._step - self.skip) % self.period
            if offset == self.probe * len(self.candidates) - 1:  # window done: keep the fastest
                # The median ignores a step disturbed by a one-off event (a checkpoint, an eval).
                medians = {k: sorted(v)[len(v) // 2] for k, v in self._times.items()}
                self.best = min(medians, key=medians.get)
                self._times = {}
        self._step += 1


def make_thread_tuner(threads: int | str | None, device: torch.device) -> ThreadTuner | None:
    """``threads``: None/0 = torch's default, N = fixed, ``auto`` = ThreadTuner (CPU only)."""
    if threads in (None, 0, "0", ""):
        return None
    if device.type != "cpu":
        return None
    if threads == "auto":
        return ThreadTuner()
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise UserError(f"accel.threads={threads!r}: use auto, 0 (torch's default) or a number of threads") from None
    if n < 0:
        raise UserError(f"accel.threads={n}: use auto, 0 (torch's default) or a positive number of threads")
    torch.set_num_threads(n)
    return None


def resolve_precision(precision: str, device: torch.device, recorded: str | None = None) -> str:
    """accel.precision as run: "auto" becomes the precision a trained run recorded (``recorded``,
    its decisions), else this device's fast precision; fp32 and bf16 stay."""
    if precision != "auto":
        return precision
    return recorded if recorded in PRECISIONS else auto_precision(device)
