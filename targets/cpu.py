"""LLVM CPU targets (x86-64, arm64): TVM's ``cpu_generic`` Relax pipeline around optc's CPU
kernels (``codegen/schedules``), the parallel + vectorized fallback, and a native or cross
linker for the library."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from .base import Target, TargetError


@dataclass(frozen=True)
class CPUTarget(Target):
    def check_toolchain(self) -> None:
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            package = self.extra.get("toolchain_package", self.cross_compiler)
            raise TargetError(f"target {self.name} needs the cross compiler {self.cross_compiler}, which is not "
                              f"installed (apt-get install {package}, or run scripts/setup.sh)")
        runner_arch = self.extra.get("native_runner")
        if runner_arch:  # the runtime download and the runner build fail here, not after the compile
            from ..native import build_runner, runtime_libs

            runtime_libs(runner_arch)
            build_runner(runner_arch)

    def relax_passes(self) -> list:
        from ..codegen import schedules

        return schedules.relax_passes(self)

    def legalize_passes(self, tvm_target) -> list:
        from tvm.relax.backend.cpu_generic import pipeline

        return pipeline.library_dispatch_passes(tvm_target) + super().legalize_passes(tvm_target)

    def schedule_rules(self) -> list:
        from ..codegen import schedules

        return schedules.schedule_rules(self)

    def fallback_rule(self):
        from ..codegen.schedules.fallback import fallback_rule

        return fallback_rule(self)

    def lower_passes(self, tvm_target) -> list:
        from tvm.relax.backend.cpu_generic import pipeline

        return pipeline.dataflow_lower_passes(tvm_target) + pipeline.finalize_passes(tvm_target)

    def finalize_passes(self) -> list:
        from ..codegen import schedules

        return schedules.finalize_passes(self)

    def check_executable(self, executable) -> None:
        runner_arch = self.extra.get("native_runner")
        if not runner_arch:
            return  # runs in-process with the full TVM library
        import re

        from ..ir.errors import UnsupportedOpError
        from ..native import runtime_functions

        called = set(re.findall(r"call\s+([A-Za-z_]\w*(?:\.\w+)+)", executable.as_text()))
        missing = sorted(called - runtime_functions(runner_arch))
        if missing:
            raise UnsupportedOpError(f"the module calls {', '.join(missing)}, which TVM's {runner_arch} runtime library "
                                     f"does not define (only TVM's compiler does): it cannot run from a {self.name} "
                                     "artifact")

    def quantized_kernel_problem(self, act_quant: str) -> str | None:
        from ..codegen.schedules.int8 import int8_microkernel

        if act_quant == "none" or int8_microkernel(self) is not None:
            return None
        return (f"optc has no int8 dense kernel for {self.name} (x86 needs AVX2; arm64 NEON): quantize its "
                f"activations only for a target with one, or use act=none (weight-only) or bf16")

    def int8_activation_max(self) -> int:
        """What the int8 microkernel chosen from the CPU features multiplies exactly
        (``codegen/schedules/int8.py``): 127 for AVX2/AVX-512BW's ``vpmaddubsw`` (16-bit pair
        sums saturate), 255 for VNNI's ``vpdpbusd`` and elsewhere."""
        from ..codegen.schedules.int8 import activation_qmax

        return activation_qmax(self)

    def build_notes(self, graph) -> list[str]:
        from ..codegen import schedules

        return schedules.build_notes(graph, self)

    def export(self, executable, path: str) -> None:
        if self.cross_compiler:
            from tvm.support import cc

            # The triple must be given: by default TVM asks the *host* compiler, and a module with
            # no LLVM kernel of its own gets its import blob packed as an x86 object.
            triple = str(self.tvm_target.get("mtriple"))
            fcompile = cc.cross_compiler(self.cross_compiler, get_target_triple=lambda: triple)
            executable.export_library(str(path), fcompile=fcompile)
        else:
            executable.export_library(str(path))
