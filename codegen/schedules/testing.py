"""A reference compile path for schedule tests and kernel benchmarks.

It is the CPU pipeline the build (codegen/build.py) is expected to run, with optc's hooks in
place: BindParams'd constants -> relax_passes -> LegalizeOps, AnnotateTIROpPattern, FoldConstant,
FuseOps, FuseTIR -> ApplyDefaultSchedule(schedule_rules) -> the default lowering and finalize.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from . import finalize_passes, relax_passes, schedule_rules


def lower(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Run optc's passes and rules up to (and including) scheduling; returns the IRModule."""
    tvm_target = target.tvm()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        seq = tvm.transform.Sequential(
            list(relax_passes(target))
            + cpu_pipeline.library_dispatch_passes(tvm_target)
            + cpu_pipeline.legalize_passes(tvm_target)
            + [tvm.s_tir.dlight.ApplyDefaultSchedule(*schedule_rules(target))]
        )
        return seq(mod)


def compile_module(mod: tvm.IRModule, target, scheduled: bool = False):
    """Compile a Relax module for ``target``; returns the ``relax.Executable`` (export it to
    disassemble a target this CPU cannot run)."""
    tvm_target = target.tvm()
    if not scheduled:
        mod = lower(mod, target)
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        rest = tvm.transform.Sequential(cpu_pipeline.dataflow_lower_passes(tvm_target)
                                        + cpu_pipeline.finalize_passes(tvm_target)
                                        + finalize_passes(target))
        mod = rest(mod)
        return tvm.compile(mod, target=tvm_target, relax_pipeline=None)


def build(mod: tvm.IRModule, target, scheduled: bool = False):
    """Compile a Relax module for ``target``; returns a ``relax.VirtualMachine`` on the CPU."""
    return relax.VirtualMachine(compile_module(mod, target, scheduled), tvm.cpu())


def unscheduled(mod: tvm.IRModule) -> list[str]:
    """Names of PrimFuncs no rule scheduled (they would run as naive loops)."""
    return [gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)]
