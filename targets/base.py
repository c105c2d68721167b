"""The target interface: one object per target holds everything that differs between machines.

A ``Target`` names the TVM target, the vector width and core count the schedules tile for, and —
through its methods — the Relax pipeline around optc's kernels, the schedule rules and the
fallback, the toolchain that links the library, the device the runtime runs it on and the host
check that refuses to load it on the wrong machine. Codegen asks the target; it never branches on
a target's name. A family of targets (``targets/cpu.py`` for LLVM CPUs, ``targets/cuda.py``)
subclasses ``Target``; presets register a resolver for their names (``register_target``).

The runtime side (``device_for``, ``host_problem``) works from the *description* a compiled module
carries (``Target.describe()``), needs TVM's runtime only and never the compiler.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..ir.errors import OptcError


class TargetError(OptcError):
    """An unknown target name, or a target this machine cannot build or run."""


@dataclass(frozen=True)
class Target:
    name: str                      # what the user typed, canonicalized: "x86-avx512", "arm64", ...
    kind: str                      # kernel family: "cpu" or "cuda"
    tvm_target: dict[str, Any]     # the TVM target as a dict (TVM 0.27 style)
    vector_bits: int               # SIMD width the CPU schedules vectorize for
    num_cores: int                 # threads the parallel loops are split across
    features: tuple[str, ...] = () # CPU features the code needs (checked when an artifact loads)
    arch: str = "x86_64"           # machine the code runs on ("x86_64", "aarch64"), as uname -m says
    cross_compiler: str | None = None  # e.g. "aarch64-linux-gnu-g++"; None builds natively
    host: dict[str, Any] | None = None  # host target for device code (CUDA)
    summary: str = ""              # one line for ``optc targets``: what the preset assumes
    vector_registers: int = 16     # architectural SIMD registers (x86: 16 ymm, 32 zmm; AArch64: 32 q)
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
        """What the artifact (manifest and embedded signature) records about the target: enough
        for the runtime to pick the device and refuse a machine that cannot run the code."""
        return {"name": self.name, "kind": self.kind, "arch": self.arch, "tvm": self.tvm_target,
                "vector_bits": self.vector_bits, "num_cores": self.num_cores, "features": list(self.features)}

    # -- the build: what codegen asks, in the order it asks ------------------------------------
    def check_toolchain(self) -> None:
        """Raise ``TargetError`` (one line naming what to install) when this machine cannot build
        for the target; called before any lowering work."""

    def relax_passes(self) -> list:
        """optc's Relax passes that choose kernels and weight layouts (before legalization)."""
        return []

    def legalize_passes(self, tvm_target) -> list:
        """Library dispatch, legalization and fusion: Relax ops -> fused TIR functions."""
        from tvm import relax

        from ..codegen.legalize import LEGALIZE

        return [relax.transform.LegalizeOps(LEGALIZE), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]

    def schedule_rules(self) -> list:
        """dlight-style rules, most specific first, for the fused TIR functions."""
        return []

    def fallback_rule(self):
        """The rule for every function no fast rule took; it must produce valid code for the
        target (on a GPU: every loop bound to threads)."""
        raise NotImplementedError(f"target {self.name} has no fallback schedule")

    def lower_passes(self, tvm_target) -> list:
        """Relax passes from scheduled dataflow to VM code (memory planning, VM shape lowering)."""
        raise NotImplementedError(f"target {self.name} has no Relax lowering pipeline")

    def finalize_passes(self) -> list:
        """optc's passes right before ``tvm.compile`` (after the Relax finalize passes)."""
        return []

    def check_scheduled(self, mod) -> list[str]:
        """Functions of the final module that cannot run on the target as scheduled (e.g. a GPU
        kernel with unbound loops); the build refuses to ship them."""
        return []

    def check_executable(self, executable) -> None:
        """Raise ``UnsupportedOpError`` when the built module needs something the target's
        runtime lacks (a VM builtin the shipped runtime library does not define)."""

    def quantized_kernel_problem(self, act_quant: str) -> str | None:
        """Why this target has no kernel for ``QLinear`` with activations ``act_quant`` (none =
        weight-only or bf16/fp16 weights, which every target decodes in its dense kernel), or
        None. Asked by the quantize passes before any work and by the lowering."""
        if act_quant == "none":
            return None
        return f"optc has no int8-activation kernel for {self.name}"

    def int8_activation_max(self) -> int:
        """The largest activation code the target's int8 kernels multiply exactly (``QLinear``'s
        ``act_qmax``): 255 unless the target says otherwise."""
        return 255

    def build_notes(self, graph) -> list[str]:
        """Lines for the build report about ops that did not get their dedicated kernel."""
        return []

    def attention_kernel(self):
        """The fused ``Attention`` kernel for this target, asked by the lowering: an object with
        ``plan(node, target) -> (spec or None, why not)`` and ``emit(ctx, node, spec, q, k, v,
        mask)``. The default is the CPU kernel (``codegen/schedules/attention.py``), whose
        ``plan`` takes CPU targets only; GPU targets return their own."""
        from ..codegen.schedules import attention

        return attention

    def export(self, executable, path: str) -> None:
        """Link ``executable`` into a shared library at ``path`` with this target's toolchain."""
        executable.export_library(str(path))


# -- presets --------------------------------------------------------------------------------------
_RESOLVERS: dict[str, Callable[[str], Target]] = {}
_PRESETS: dict[str, Callable[[], list[tuple[str, str]]]] = {}
_FAMILIES = ("x86", "arm64", "cuda")  # modules under targets/ that register presets


def register_target(*prefixes: str, presets: Callable[[], list[tuple[str, str]]] | None = None):
    """Register a resolver for target names equal to or starting with ``prefix-``; ``presets``
    lists ``(name, what it assumes)`` for ``optc targets``."""

    def wrap(fn: Callable[[str], Target]):
        for p in prefixes:
            _RESOLVERS[p] = fn
        if presets is not None:
            _PRESETS[prefixes[0]] = presets
        return fn

    return wrap


def _load_families() -> None:
    import importlib

    for family in _FAMILIES:
        importlib.import_module(f"{__package__}.{family}")


def get_target(name: "str | Target") -> Target:
    """Resolve a target: a preset name (``x86``, ``x86-avx2``, ``arm64-dotprod``, ``cuda-sm90``,
    ...), ``host``, a TVM target as JSON (``{"kind": "llvm", "mtriple": ...}``), or a ``Target``."""
    if isinstance(name, Target):
        return name
    if not isinstance(name, str):
        raise TargetError(f"a target is a name or a TVM target JSON, not {type(name).__name__}")
    _load_families()
    text = name.strip()
    if text.startswith("{"):
        return from_tvm_json(text)
    key = text.lower()
    for prefix in sorted(_RESOLVERS, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "-"):
            return _RESOLVERS[prefix](key)
    raise TargetError(f"unknown target {name!r}; choose one of: {', '.join(known_targets())} "
                      "(or a TVM target as JSON)")


def known_targets() -> list[str]:
    """Every preset name, family by family."""
    return [name for name, _ in presets()]


def presets() -> list[tuple[str, str]]:
    """``(name, what it assumes)`` for every preset."""
    _load_families()
    return [p for family in _PRESETS.values() for p in family()]


def from_tvm_json(text: str) -> Target:
    """A target from an expert's TVM target JSON: the family follows the TVM kind and, for LLVM,
    the triple's architecture; the family fills in what optc's schedules need."""
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise TargetError(f"--target: not a valid TVM target JSON ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise TargetError("--target: a TVM target JSON must be an object with a \"kind\"")
    try:
        import tvm

        tvm.target.Target(spec)
    except Exception as e:  # noqa: BLE001  (TVM says what is wrong with the target)
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise TargetError(f"--target: TVM refuses the target JSON ({lines[-1] if lines else type(e).__name__})") from None
    kind = spec["kind"]
    if kind == "cuda":
        from .cuda import from_spec
    elif kind == "llvm":
        arch = _arch_family(str(spec.get("mtriple", platform.machine())).split("-", 1)[0])
        if arch == "x86_64":
            from .x86 import from_spec
        elif arch == "aarch64":
            from .arm64 import from_spec
        else:
            raise TargetError(f"--target: optc has no schedules for LLVM architecture {arch!r} (x86_64, aarch64)")
    else:
        raise TargetError(f"--target: optc has no backend for TVM target kind {kind!r} (llvm, cuda)")
    return from_spec(spec)


# -- the runtime side: from a compiled module's target description ----------------------------
def host_arch() -> str:
    return _arch_family(platform.machine().lower())


def host_problem(description: Mapping[str, Any]) -> str | None:
    """Why code built for a target (as ``Target.describe()`` records it) cannot run in this
    process — another architecture, CPU features this CPU lacks, no GPU — or None when it can."""
    name = description.get("name", "?")
    host = host_arch()
    arch = foreign_arch(description)
    if arch:
        return f"compiled for {name} ({arch}); this machine is {host}"
    if description.get("kind") == "cuda":
        from .cuda import gpu_problem

        return gpu_problem(description)
    features = description.get("features") or []
    if features and host == "x86_64":
        from .x86 import host_cpu_flags

        flags = host_cpu_flags()
        missing = [f for f in features if flags and f not in flags]
        if missing:
            return f"compiled for {name}, which needs CPU features {', '.join(missing)} that this CPU lacks"
    if features and host == "aarch64":
        from .arm64 import missing_host_features

        missing = missing_host_features(features)
        if missing:
            return f"compiled for {name}, which needs CPU features {', '.join(missing)} that this CPU lacks"
    return None


def foreign_arch(description: Mapping[str, Any]) -> str | None:
    """The architecture code built for ``description`` needs, when it is not this machine's."""
    arch, host = _described_arch(description), host_arch()
    return arch if arch and host and arch != host else None


def device_for(description: Mapping[str, Any] | None):
    """The TVM device a module built for ``description`` runs on in this process."""
    import tvm

    if description and description.get("kind") == "cuda":
        return tvm.cuda(0)
    return tvm.cpu(0)


def _described_arch(description: Mapping[str, Any]) -> str:
    arch = description.get("arch")
    if isinstance(arch, str) and arch:
        return _arch_family(arch)
    tvm_target = description.get("tvm") or {}
    if isinstance(tvm_target, dict) and tvm_target.get("kind") == "cuda":
        host = description.get("host") or {}
        triple = str(host.get("mtriple", "")) if isinstance(host, dict) else ""
    else:
        triple = str(tvm_target.get("mtriple", "")) if isinstance(tvm_target, dict) else ""
    return _arch_family(triple.split("-", 1)[0]) if triple else ""


def _arch_family(arch: str) -> str:
    return {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
