"""What the CPU computes natively (wrn.train.hardware.cpu_isa / native_bf16 / auto_precision): the
ISA ladder from /proc/cpuinfo-style flags, and the precision the fast path would pick from it."""

from __future__ import annotations

import pytest
import torch

from wrn.train import hardware

CPU = torch.device("cpu")
# Flag sets as /proc/cpuinfo lists them (abridged) on the CPU families the benchmarks name.
SAPPHIRE_RAPIDS = frozenset("avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8".split())
ZEN4 = frozenset("avx2 avx512f avx512bw avx512_bf16".split())
SKYLAKE_X = frozenset("avx2 avx512f avx512bw avx512cd".split())
ZEN2 = frozenset("sse4_2 avx avx2 fma f16c".split())
GRAVITON3 = frozenset("fp asimd sve bf16 i8mm".split())


@pytest.mark.parametrize("flags, isa, bf16", [
    (SAPPHIRE_RAPIDS, "AMX", True),
    (ZEN4, "AVX-512 bf16", True),
    (SKYLAKE_X, "AVX-512", False),
    (ZEN2, "AVX2", False),
    (GRAVITON3, "Arm bf16", True),
    (frozenset("fp asimd".split()), "Arm NEON", False),
    (frozenset(), "baseline", False),
])
def test_isa_and_native_bf16_from_flags(flags, isa, bf16):
    assert hardware.cpu_isa(flags) == isa
    assert hardware.native_bf16(CPU, flags) is bf16
    assert hardware.auto_precision(CPU, flags) == ("bf16" if bf16 else "fp32")


def test_this_machine_agrees_with_torchs_own_probes():
    """The /proc/cpuinfo reading against torch's cpuinfo-based probes (x86 only)."""
    flags = hardware.cpu_flags()
    if not hasattr(torch.cpu, "_is_avx2_supported") or "asimd" in flags:
        pytest.skip("torch's x86 probes are not available here")
    assert ("avx2" in flags) == torch.cpu._is_avx2_supported()
    assert ("avx512_bf16" in flags) == torch.cpu._is_avx512_bf16_supported()
    assert ("amx_bf16" in flags) == torch.cpu._is_amx_tile_supported()
    # Control: the ladder is read from these flags, so another flag set gives another answer.
    assert hardware.cpu_isa(flags) == hardware.cpu_isa() != hardware.cpu_isa(frozenset({"sse2"}))


def test_cpu_info_records_model_isa_and_torchs_kernel_level():
    info = hardware.cpu_info()
    assert info["cpu"] and info["isa"] == hardware.cpu_isa()
    assert info["native_bf16"] is hardware.native_bf16(CPU)
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(info["isa_flags"]) <= {flag for _, flag, _ in hardware.ISAS}


def test_a_device_other_than_cpu_or_cuda_has_no_native_bf16():
    assert hardware.native_bf16(torch.device("meta"), SAPPHIRE_RAPIDS) is False
