"""arm64 targets: 64-bit ARM Linux boards and servers, cross-compiled here with Debian's aarch64
toolchain (``aarch64-linux-gnu-g++``; natively on an aarch64 host). Their artifacts ship the
native runner and TVM's aarch64 runtime (``optc/native``): the folder runs on a board without
Python.

Each preset is an ISA level, not a CPU: the code runs on every core that has the level's
features, which the artifact records (``/proc/cpuinfo`` spelling) and an aarch64 host checks
before it loads the library. NEON (Advanced SIMD) is 128 bits wide on every one of them.
"""

from __future__ import annotations

from .base import Target, TargetError, host_arch, register_target
from .cpu import CPUTarget

# name -> (LLVM mattr, what it assumes)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "arm64": (["+neon"], "armv8-a + NEON: any 64-bit ARM (Cortex-A53/A72, Raspberry Pi 3/4, Graviton1)"),
    "arm64-dotprod": (["+v8.2a", "+neon", "+fullfp16", "+dotprod"],
                      "armv8.2-a + fp16 + dotprod: Cortex-A76/A78, Neoverse-N1, Raspberry Pi 5, Graviton2"),
    "arm64-i8mm": (["+v8.6a", "+neon", "+fullfp16", "+dotprod", "+i8mm", "+bf16"],
                   "armv8.6-a + i8mm + bf16: Neoverse-V1/V2/N2, Graviton3/4, Cortex-X2+"),
}

# LLVM feature -> /proc/cpuinfo "Features" name, for what generated code can use.
CODEGEN_FEATURES: dict[str, str] = {
    "fp-armv8": "fp", "neon": "asimd", "fullfp16": "asimdhp", "dotprod": "asimddp", "i8mm": "i8mm",
    "bf16": "bf16", "rdm": "asimdrdm", "lse": "atomics", "sve": "sve", "sve2": "sve2",
}
TRIPLE = "aarch64-linux-gnu"
CROSS_COMPILER = "aarch64-linux-gnu-g++"
TOOLCHAIN_PACKAGE = "g++-aarch64-linux-gnu"
BOARD_CORES = 4  # what the parallel loops are split for (Raspberry Pi 5, most phone big clusters)
VECTOR_REGISTERS = 32  # v0-v31, 128 bits each: the register tiles of codegen/schedules fill them
# FMA has no memory operand: a register tile's row values are read by element from registers
# (``fmla v.4s, v.4s, v.s[i]``), one per row (codegen/schedules/common.py)
ROW_OPERAND_REGISTERS = 1


def implied_features(spec: dict) -> list[str]:
    """The code-generation features (LLVM names) a TVM target spec lets LLVM use."""
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target(spec)
    return sorted(f for f in codegen.llvm_get_cpu_features(target) if f in CODEGEN_FEATURES)


def _presets() -> list[tuple[str, str]]:
    return [(name, summary) for name, (_, summary) in VARIANTS.items()]


@register_target("arm64", "aarch64", presets=_presets)
def resolve(name: str) -> Target:
    name = "arm64" + name[len("aarch64"):] if name.startswith("aarch64") else name
    if name not in VARIANTS:
        raise TargetError(f"unknown arm64 target {name!r}; choose one of: {', '.join(VARIANTS)}")
    mattr, summary = VARIANTS[name]
    spec = {"kind": "llvm", "mtriple": TRIPLE, "mattr": list(mattr), "num-cores": BOARD_CORES}
    return _target(name, spec, summary)


def from_spec(spec: dict) -> Target:
    """An arm64 target from an expert's TVM target JSON (kind llvm, an aarch64 triple)."""
    spec = dict(spec)
    spec.setdefault("num-cores", BOARD_CORES)
    return _target("arm64-custom", spec, f"TVM target {spec}")


def _target(name: str, spec: dict, summary: str) -> Target:
    features = tuple(sorted(CODEGEN_FEATURES[f] for f in implied_features(spec)))
    native = host_arch() == "aarch64"
    return CPUTarget(name=name, kind="cpu", tvm_target=spec, vector_bits=128, vector_registers=VECTOR_REGISTERS,
                     num_cores=int(spec["num-cores"]),
                     features=features, arch="aarch64", cross_compiler=None if native else CROSS_COMPILER,
                     summary=summary, extra={"toolchain_package": TOOLCHAIN_PACKAGE,
                                                     "row_operand_registers": ROW_OPERAND_REGISTERS,
                                                     "native_runner": "aarch64"})


def host_features() -> set[str]:
    """The features the kernel reports for this (aarch64) machine."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("Features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def missing_host_features(features: list[str]) -> list[str]:
    have = host_features()
    return [f for f in features if have and f not in have]
