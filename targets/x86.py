"""x86-64 targets: the host CPU as detected, or an explicit ISA level.

The host's features come from LLVM (what TVM will generate code with) and from the kernel
(/proc/cpuinfo), so a module is built for exactly the instructions this CPU runs.
"""

from __future__ import annotations

import os

from .base import Target, TargetError, register_target

# name -> (LLVM mcpu, required features, vector bits)
VARIANTS = {
    "x86": None,  # the host
    "x86-avx2": ("haswell", ("avx2", "fma"), 256),
    "x86-avx512": ("skylake-avx512", ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"), 512),
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


@register_target("x86", "host")
def resolve(name: str) -> Target:
    name = "x86" if name == "host" else name
    if name not in VARIANTS:
        raise TargetError(f"unknown x86 target {name!r}; choose one of: {', '.join(VARIANTS)}")
    flags = host_cpu_flags()
    if VARIANTS[name] is None:
        import tvm.target.codegen as llvm

        mcpu = llvm.llvm_get_system_cpu()
        bits = 512 if "avx512f" in flags else 256 if "avx2" in flags else 128
        needed = tuple(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl") if f in flags)
    else:
        mcpu, needed, bits = VARIANTS[name]
    cores = host_cores()
    tvm_target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu, "num-cores": cores}
    return Target(name=name, kind="cpu", tvm_target=tvm_target, vector_bits=bits, num_cores=cores, features=needed)


def missing_features(target: Target) -> list[str]:
    """Features the target's code needs that this CPU lacks (empty when it can run here)."""
    flags = host_cpu_flags()
    return [f for f in target.features if f not in flags]
