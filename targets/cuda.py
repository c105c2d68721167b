"""CUDA targets: NVIDIA GPUs, one preset per architecture, built with ``nvcc`` (the
``nvidia-cuda-nvcc`` wheel or a CUDA toolkit, found by ``codegen/gpu/toolchain.py``) — no GPU is
needed to compile.

The build (``codegen/build.py``) asks this target for: the Relax passes around the kernels
(``codegen/gpu``: run-time checks as a device flag + host assert, pre-scheduled CPU-style kernels
bound to threads), TVM's CUDA legalization and library dispatch (sort/scan/top-k), the schedule
rules (dlight GPU rules, ``Injective``) and the ``dl.gpu.Fallback``, the fused attention kernel
(``codegen/gpu/attention.py``), and ``check_scheduled``: a kernel that touches global memory
outside any thread binding is refused (``codegen/gpu_check.py``). ``export`` compiles the device
code with nvcc into the library (SASS for the preset's architecture plus its PTX, so code built
for ``sm_80`` also runs on newer GPUs). The host code (the Relax VM) is x86-64 or aarch64 like the
machine it is built on. CUDA 13's nvcc generates sm_75 and newer (Volta, sm_70, was dropped:
``check_toolchain`` refuses an architecture the nvcc found cannot generate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .base import Target, TargetError, host_arch, register_target

# name -> (compute capability, what it assumes)
VARIANTS: dict[str, tuple[str, str]] = {
    "cuda-sm75": ("sm_75", "Turing: T4, RTX 20xx"),
    "cuda-sm80": ("sm_80", "Ampere datacenter: A100, A30"),
    "cuda-sm86": ("sm_86", "Ampere: RTX 30xx, A10, A40"),
    "cuda-sm89": ("sm_89", "Ada: L4, L40, RTX 40xx"),
    "cuda-sm90": ("sm_90", "Hopper: H100, H200, GH200"),
    "cuda-sm100": ("sm_100", "Blackwell datacenter: B200, GB200"),
    "cuda-sm120": ("sm_120", "Blackwell consumer / workstation: RTX 50xx, RTX PRO 6000"),
}
MAX_THREADS = 1024


def _presets() -> list[tuple[str, str]]:
    return [("cuda", "the GPU of this machine (detected; an error without one)")] + \
        [(name, summary) for name, (_, summary) in VARIANTS.items()]


@register_target("cuda", presets=_presets)
def resolve(name: str) -> Target:
    if name == "cuda":
        arch = _detected_arch()
        summary = f"this machine's GPU ({arch})"
    elif name in VARIANTS:
        arch, summary = VARIANTS[name]
    else:
        raise TargetError(f"unknown CUDA target {name!r}; choose one of: cuda, {', '.join(VARIANTS)}")
    return _target(name, {"kind": "cuda", "arch": arch, "max_num_threads": MAX_THREADS}, summary)


def from_spec(spec: dict) -> Target:
    spec = dict(spec)
    if "arch" not in spec:
        spec["arch"] = _detected_arch()
    return _target("cuda-custom", spec, f"TVM target {spec}")


def _host_spec() -> dict[str, Any]:
    triple = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(host_arch(), "")
    return {"kind": "llvm", "mtriple": triple} if triple else {"kind": "llvm"}


def _target(name: str, spec: dict, summary: str) -> Target:
    return CUDATarget(name=name, kind="cuda", tvm_target=spec, vector_bits=128, num_cores=1,
                      features=(str(spec["arch"]),), arch=host_arch(), host=_host_spec(), summary=summary)


def _detected_arch() -> str:
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        raise TargetError("--target cuda detects the GPU of this machine, and it has none; name an architecture "
                          f"instead ({', '.join(VARIANTS)})")
    return "sm_" + str(dev.compute_version).replace(".", "")


def gpu_problem(description: Mapping[str, Any]) -> str | None:
    """Why this process cannot run code built for the described CUDA target, or None."""
    import tvm

    name = description.get("name", "cuda")
    try:
        dev = tvm.cuda(0)
        exists = dev.exist
    except Exception:  # noqa: BLE001  (a runtime built without CUDA)
        exists = False
    if not exists:
        return f"compiled for {name} (an NVIDIA GPU); this machine has no CUDA GPU"
    want = [f for f in description.get("features") or [] if str(f).startswith("sm_")]
    have = "sm_" + str(dev.compute_version).replace(".", "")
    if want and _cc(have) < _cc(want[0]):
        return f"compiled for {name} ({want[0]}); this GPU is {have}"
    return None


def _cc(arch: str) -> int:
    digits = "".join(ch for ch in arch if ch.isdigit())
    return int(digits) if digits else 0


@dataclass(frozen=True)
class CUDATarget(Target):
    def check_toolchain(self) -> None:
        from ..codegen.gpu import toolchain

        nvcc = toolchain.find_nvcc()
        if nvcc is None:
            raise TargetError(f"target {self.name} needs nvcc (pip install nvidia-cuda-nvcc, or a CUDA toolkit; "
                              "or set CUDA_HOME), which is not installed")
        arch = str(self.tvm_target.get("arch", ""))
        archs = toolchain.nvcc_archs(nvcc)
        if archs and arch not in archs:
            raise TargetError(f"target {self.name} needs code for {arch}, which {nvcc} (CUDA "
                              f"{toolchain.nvcc_version(nvcc) or '?'}) cannot generate (it knows {', '.join(sorted(archs))})")
        toolchain.install_compiler(nvcc)

    def relax_passes(self) -> list:
        from ..codegen import gpu

        return gpu.relax_passes(self)

    def legalize_passes(self, tvm_target) -> list:
        from tvm.relax.backend.cuda import pipeline

        from ..codegen import gpu

        return (gpu.pre_legalize_passes(self) + pipeline.library_dispatch_passes(tvm_target)
                + super().legalize_passes(tvm_target) + gpu.post_fusion_passes(self))

    def schedule_rules(self) -> list:
        from ..codegen.gpu import rules

        return rules.schedule_rules(self)

    def fallback_rule(self):
        from ..codegen.gpu import rules

        return rules.fallback_rule(self)

    def lower_passes(self, tvm_target) -> list:
        from tvm.relax.backend.cuda import pipeline

        return pipeline.dataflow_lower_passes(tvm_target) + pipeline.finalize_passes(tvm_target)

    def attention_kernel(self):
        from ..codegen.gpu.attention import GPUAttention

        return GPUAttention()

    def build_notes(self, graph) -> list[str]:
        return self.attention_kernel().notes(graph, self)

    def export(self, executable, path: str) -> None:
        """The library, its device code compiled by nvcc here (``codegen/gpu/toolchain.py``)."""
        from ..codegen.gpu import toolchain

        self.check_toolchain()
        toolchain.export_library(executable, str(path), str(self.tvm_target["arch"]), toolchain.find_nvcc())

    def check_scheduled(self, mod) -> list[str]:
        from ..codegen.gpu_check import unbound_kernels

        return unbound_kernels(mod, self.tvm())
