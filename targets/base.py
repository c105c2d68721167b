"""The target interface: what codegen needs to know about the machine a module will run on.

A target names a TVM target (LLVM CPU, CUDA, ...), the vector width and core count the
schedules tile for, and how the built library is linked (natively, or with a cross compiler).
Codegen asks the target; it never branches on the target's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..ir.errors import OptcError


class TargetError(OptcError):
    """An unknown target name, or a target this machine cannot build or run."""


@dataclass(frozen=True)
class Target:
    name: str                      # what the user typed, canonicalized: "x86-avx512", "arm64", ...
    kind: str                      # "cpu" or "cuda": which family of default schedules applies
    tvm_target: dict[str, Any]     # the TVM target as a dict (TVM 0.27 style)
    vector_bits: int               # SIMD width the CPU schedules vectorize for
    num_cores: int                 # threads the parallel loops are split across
    features: tuple[str, ...] = () # CPU features the code needs (checked when an artifact loads)
    cross_compiler: str | None = None  # e.g. "aarch64-linux-gnu-g++"; None builds natively
    host: dict[str, Any] | None = None  # host target for device code (CUDA)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vector_lanes_f32(self) -> int:
        return self.vector_bits // 32

    def tvm(self):
        """The ``tvm.target.Target`` (imported lazily: only codegen needs TVM)."""
        import tvm

        if self.host is not None:
            return tvm.target.Target(self.tvm_target, host=self.host)
        return tvm.target.Target(self.tvm_target)

    def describe(self) -> dict[str, Any]:
        """What the artifact manifest records about the target."""
        return {"name": self.name, "kind": self.kind, "tvm": self.tvm_target, "vector_bits": self.vector_bits,
                "num_cores": self.num_cores, "features": list(self.features)}


_RESOLVERS: dict[str, Callable[[str], Target]] = {}


def register_target(*prefixes: str):
    """Register a resolver for target names starting with one of ``prefixes``."""

    def wrap(fn: Callable[[str], Target]):
        for p in prefixes:
            _RESOLVERS[p] = fn
        return fn

    return wrap


def get_target(name: str) -> Target:
    """Resolve a target name (``x86``, ``x86-avx2``, ``x86-avx512``, ``host``, ...)."""
    from . import x86  # noqa: F401  (registers the x86 family)

    key = name.strip().lower()
    for prefix in sorted(_RESOLVERS, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "-"):
            return _RESOLVERS[prefix](key)
    raise TargetError(f"unknown target {name!r}; choose one of: {', '.join(known_targets())}")


def known_targets() -> list[str]:
    from . import x86

    return list(x86.VARIANTS)


def host_problem(description: dict[str, Any]) -> str | None:
    """Why code built for a target (as ``Target.describe()`` records it) cannot run on this
    machine — another architecture, or CPU features this CPU lacks — or None when it can."""
    import platform

    tvm_target = description.get("tvm") or {}
    name = description.get("name", "?")
    triple = str(tvm_target.get("mtriple", "")) if isinstance(tvm_target, dict) else ""
    arch = triple.split("-", 1)[0]
    host = platform.machine().lower()
    if arch and host and _arch_family(arch) != _arch_family(host):
        return f"compiled for {name} ({arch}); this machine is {host}"
    features = description.get("features") or []
    if features and _arch_family(host) == "x86_64":
        from .x86 import host_cpu_flags

        flags = host_cpu_flags()
        missing = [f for f in features if flags and f not in flags]
        if missing:
            return f"compiled for {name}, which needs CPU features {', '.join(missing)} that this CPU lacks"
    return None


def _arch_family(arch: str) -> str:
    return {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
