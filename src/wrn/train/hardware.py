"""What the machine computes natively: the CPU's model, its best instruction set (AMX, AVX-512
bf16, AVX2, ...) and whether it multiplies bf16 in hardware, which decides ``accel.precision=auto``
and what every benchmark records beside its figures."""

from __future__ import annotations

import torch

# The instruction sets that decide CPU training speed, best first: (label, the /proc/cpuinfo flag,
# whether it multiplies bf16 natively). Without native bf16, oneDNN widens bf16 to fp32 and back
# around every product: measured on an AVX2-only AMD EPYC (BENCHMARKS.md), a bf16 matmul runs at
# ~1/80 of fp32 and a bf16-autocast WRN-16-4 step ~15x slower than fp32, where AMX makes it ~3x faster.
ISAS = (("AMX", "amx_bf16", True), ("AVX-512 bf16", "avx512_bf16", True), ("AVX-512", "avx512f", False),
        ("AVX2", "avx2", False), ("Arm bf16", "bf16", True), ("Arm SVE", "sve", False),
        ("Arm NEON", "asimd", False))


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo's ``flags`` (x86) or ``Features`` (Arm) line, else
    (no /proc: macOS, Windows) the x86 flags torch's own CPU probes report."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "avx512f": "_is_avx512_supported", "avx2": "_is_avx2_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def cpu_isa(flags: frozenset[str] | None = None) -> str:
    """The best of ISAS this CPU has ("AMX", "AVX-512 bf16", "AVX-512", "AVX2", ...), or "baseline"."""
    flags = cpu_flags() if flags is None else flags
    return next((label for label, flag, _ in ISAS if flag in flags), "baseline")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether the device multiplies bf16 in hardware (CPU: AMX, AVX-512 bf16 or Arm bf16; CUDA:
    compute capability 8.0+). Where it does not, bf16 autocast is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    flags = cpu_flags() if flags is None else flags
    return any(native and flag in flags for _, flag, native in ISAS)


def auto_precision(device: torch.device, flags: frozenset[str] | None = None) -> str:
    """The fast precision for this device: bf16 where it is native, else fp32."""
    return "bf16" if native_bf16(device, flags) else "fp32"


def cpu_info() -> dict:
    """The CPU as a benchmark records it: model, best ISA, native bf16, torch's kernel level."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "isa": cpu_isa(flags), "native_bf16": native_bf16(torch.device("cpu"), flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_flags": [flag for _, flag, _ in ISAS if flag in flags]}
