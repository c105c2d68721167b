"""Schedule rules of the CUDA targets.

Every fused TIR function meets, in order: ``PreBound`` (kernels TVM's legalization already wrote
for the GPU), TVM's dlight GPU rules ``Matmul``, ``GEMV``, ``Reduction``, ``GeneralReduction`` and
``Transpose``, then ``Injective`` (below); what none of them takes gets ``dl.gpu.Fallback``
(``fallback_rule``) and is listed in the build's ``fallback_funcs``. Kernels optc writes itself come already scheduled (the fused attention, the
run-time check flags) and meet no rule.

``Injective``: functions whose blocks are all spatial after inlining (elementwise ops, reshapes,
transposes, gathers, concatenations — most of a transformer's small kernels). Its schedule is
dlight's fallback mapping — the fused spatial loops split over ``blockIdx.x`` x ``threadIdx.x``,
consecutive threads on consecutive output elements (coalesced stores) — which *is* the right
schedule for such a kernel; naming it a rule of its own keeps ``fallback_funcs`` for what really
got only the generic schedule (a reduction left to one thread per output, an unusual nest).

``Recorded`` wraps each rule: it refuses a schedule that still touches global memory outside any
thread binding (``gpu_check.unbound_accesses``: dlight's ``Transpose`` binds a transpose and leaves
a pad epilogue it could not inline as host loops) so the next rule takes the function, and it
marks what it scheduled with ``optc.schedule_rule``, so ``report.py`` can say which rule
scheduled which kernel.
"""

from __future__ import annotations

import logging

from tvm import s_tir
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func

from ..gpu_check import unbound_accesses

log = logging.getLogger("optc.codegen")
RULE_ATTR = "optc.schedule_rule"


class Recorded:
    """``rule``, marking what it schedules with ``optc.schedule_rule = name``."""

    def __init__(self, rule, name: str | None = None):
        self.rule = rule
        self.name = name or type(rule).__name__

    def apply(self, func, target, tunable):
        sch = self.rule.apply(func, target, tunable)
        if sch is None:
            return None
        if isinstance(sch, list):
            if len(sch) != 1:
                return sch
            sch = sch[0]
        scheduled = sch.mod["main"]
        if unbound_accesses(scheduled):
            # e.g. dlight's Transpose on a transpose with a pad epilogue it cannot inline: it
            # binds the transpose and leaves the pad as host loops. Not this rule's function.
            log.debug("rule %s left global accesses unbound; the next rule takes the function", self.name)
            return None
        return s_tir.Schedule(scheduled.with_attr(RULE_ATTR, self.name))

    def is_target_available(self, target) -> bool:
        return self.rule.is_target_available(target)


class PreBound(dl.gpu.Fallback):
    """Functions that already launch GPU threads: TVM legalizes some ops straight to GPU kernels
    for a CUDA target (``scatter_elements_gpu``, the sort/scan/top-k kernels of
    ``DispatchSortScan``, written with ``launch_thread``). They are left as they are."""

    def apply(self, func, target, tunable):
        from .threads import has_thread_binding

        return s_tir.Schedule(func) if has_thread_binding(func) else None


class Transpose(dl.gpu.Transpose):
    """dlight's shared-memory transpose; its pattern test trips on functions that are not plain
    transposes (``==`` on index expressions of a gather, ``None`` loops): those are simply not
    its functions."""

    def apply(self, func, target, tunable):
        try:
            return super().apply(func, target, tunable)
        except (ValueError, TypeError):
            return None


class Injective(dl.gpu.Fallback):
    """Spatial-only functions (see the module doc)."""

    def apply(self, func, target, tunable):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not infos or any(not info.is_injective() for info in infos):
            return None
        return super().apply(func, target, tunable)


def _recorded(rule, name: str | None = None) -> Recorded:
    name = name or type(rule).__name__
    return type(name, (Recorded,), {})(rule, name)  # the build's warnings name the rule class


def schedule_rules(target) -> list:
    return [_recorded(PreBound(), "pre-bound"), _recorded(dl.gpu.Matmul()), _recorded(dl.gpu.GEMV()),
            _recorded(dl.gpu.Reduction()), _recorded(dl.gpu.GeneralReduction()), _recorded(Transpose()),
            _recorded(Injective())]


def fallback_rule(target):
    return _recorded(dl.gpu.Fallback(), "Fallback")
