"""x86-64 targets: the host CPU as detected, or an explicit ISA level.

A target records every instruction-set feature its code may use — everything LLVM's ``mcpu``
implies that code generation can emit, in ``/proc/cpuinfo`` spelling — and an artifact refuses to
load on a CPU that lacks any of them (``targets.host_problem``). For the host, the features LLVM
infers from the CPU's *name* are cross-checked with what the kernel reports: a feature the name
implies but the machine does not expose (a VM that hides AVX-512 from a Zen 4, say) is switched
off with ``mattr``, so the code never uses it.
"""

from __future__ import annotations

import os

from .base import Target, TargetError, register_target
from .cpu import CPUTarget

# name -> (LLVM mcpu, vector bits); None is the host.
VARIANTS: dict[str, tuple[str, int] | None] = {
    "x86": None,
    "x86-avx2": ("haswell", 256),
    "x86-avx512": ("skylake-avx512", 512),
}
SUMMARIES = {
    "x86": "this machine's CPU as detected (LLVM's name for it, minus features the kernel hides)",
    "x86-avx2": "any x86-64 with AVX2 + FMA (Intel Haswell+, AMD Zen+): 256-bit vectors",
    "x86-avx512": "x86-64 with AVX-512 F/BW/DQ/VL (Intel Skylake-SP+, AMD Zen 4+): 512-bit vectors",
}

# LLVM feature -> /proc/cpuinfo flag, for the features generated code can use (tuning flags and
# system instructions such as rdrand or xsave never appear in TVM's kernels and are not required).
CODEGEN_FEATURES: dict[str, str] = {
    "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "sse4a": "sse4a",
    "popcnt": "popcnt", "lzcnt": "abm", "bmi": "bmi1", "bmi2": "bmi2", "movbe": "movbe", "adx": "adx",
    "cx16": "cx16", "f16c": "f16c", "fma": "fma", "avx": "avx", "avx2": "avx2",
    "aes": "aes", "pclmul": "pclmulqdq", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq", "gfni": "gfni",
    "sha": "sha_ni", "avxvnni": "avx_vnni",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512cd": "avx512cd", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq", "avx512fp16": "avx512_fp16",
    "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


def host_cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports for this machine."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def implied_features(mcpu: str) -> list[str]:
    """The code-generation features (LLVM names) that ``-mcpu=mcpu`` lets LLVM use."""
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    return sorted(f for f in codegen.llvm_get_cpu_features(target) if f in CODEGEN_FEATURES)


def _bits(llvm_features: set[str]) -> int:
    return 512 if "avx512f" in llvm_features else 256 if "avx2" in llvm_features else 128


def _registers(bits: int) -> int:
    """Architectural vector registers: 32 zmm with AVX-512, else 16 (ymm/xmm)."""
    return 32 if bits >= 512 else 16


def _presets() -> list[tuple[str, str]]:
    return [(name, SUMMARIES[name]) for name in VARIANTS]


@register_target("x86", "host", presets=_presets)
def resolve(name: str) -> Target:
    name = "x86" if name == "host" else name
    if name not in VARIANTS:
        raise TargetError(f"unknown x86 target {name!r}; choose one of: {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    mattr: list[str] = []
    if variant is None:
        import tvm.target.codegen as llvm

        mcpu = llvm.llvm_get_system_cpu()
        implied = set(implied_features(mcpu))
        flags = host_cpu_flags()
        if flags:  # features the CPU's name implies but this machine does not expose: off
            hidden = sorted(f for f in implied if CODEGEN_FEATURES[f] not in flags)
            mattr = ["-" + f for f in hidden]
            implied -= set(hidden)
        bits = _bits(implied)
    else:
        mcpu, bits = variant
        implied = set(implied_features(mcpu))
    cores = host_cores()
    tvm_target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": cores}
    if mattr:
        tvm_target["mattr"] = mattr
    features = tuple(sorted(CODEGEN_FEATURES[f] for f in implied))
    return CPUTarget(name=name, kind="cpu", tvm_target=tvm_target, vector_bits=bits, vector_registers=_registers(bits),
                     num_cores=cores,
                     features=features, arch="x86_64", summary=SUMMARIES[name])


def from_spec(spec: dict) -> Target:
    """An x86 target from an expert's TVM target JSON (kind llvm, an x86-64 triple)."""
    spec = dict(spec)
    spec.setdefault("mtriple", "x86_64-linux-gnu")
    mcpu = str(spec.get("mcpu") or "x86-64")
    mattr = [str(a) for a in spec.get("mattr") or []]
    implied = set(implied_features(mcpu)) | {a[1:] for a in mattr if a.startswith("+") and a[1:] in CODEGEN_FEATURES}
    implied -= {a[1:] for a in mattr if a.startswith("-")}
    cores = int(spec.get("num-cores") or host_cores())
    spec["num-cores"] = cores
    return CPUTarget(name="x86-custom", kind="cpu", tvm_target=spec, vector_bits=_bits(implied),
                     vector_registers=_registers(_bits(implied)), num_cores=cores,
                     features=tuple(sorted(CODEGEN_FEATURES[f] for f in implied)), arch="x86_64",
                     summary=f"TVM target {spec}")


def missing_features(target: Target) -> list[str]:
    """Features the target's code needs that this CPU lacks (empty when it can run here)."""
    flags = host_cpu_flags()
    return [f for f in target.features if f not in flags]
