"""The generic CPU fallback schedule: what a TIR function gets when no rule of
``codegen.schedules.schedule_rules(target)`` scheduled it.

It is deliberately simple — inline what can be inlined, then per remaining block: the spatial
loops fused and parallelized across the cores, the innermost spatial chunk vectorized (pure
spatial blocks) — so nothing ships as a serial scalar loop nest. It is not fast: the build logs
and returns every function that only got this schedule, so the kernels that need a real rule are
visible (``CompiledModule.fallback_funcs``).

This file belongs to codegen's build driver; the fast rules live beside it in
``codegen/schedules``.
"""

from __future__ import annotations


def fallback_rule(target):
    """A dlight ``ScheduleRule`` for ``target`` (an optc ``Target``)."""
    from tvm import s_tir
    from tvm.s_tir.dlight import ScheduleRule
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline

    lanes = max(1, target.vector_lanes_f32) if target is not None else 8

    class CPUFallback(ScheduleRule):
        def apply(self, func, tvm_target, tunable):
            try:
                return _schedule(func)
            except Exception:  # noqa: BLE001  (a schedule primitive refused: leave it unscheduled)
                return None

    def _schedule(func):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        infos = try_inline(sch, infos)
        done = False
        for info in infos:
            block = info.block_rv
            loops = sch.get_loops(block)
            if not loops:
                continue
            kinds = info.dom_kind()
            s_loops, r_loops, o_loops = [], [], []
            for loop, kind in zip(loops, kinds):
                {"S": s_loops, "R": r_loops, "O": o_loops}[kind].append(loop)
            if not s_loops:
                continue
            if r_loops or o_loops:
                # Parallel over the leading spatial loops only; reductions stay serial per thread.
                lead = []
                for loop, kind in zip(loops, kinds):
                    if kind != "S":
                        break
                    lead.append(loop)
                if not lead:
                    continue
                fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
                sch.parallel(fused)
                done = True
                continue
            fused = sch.fuse(*s_loops) if len(s_loops) > 1 else s_loops[0]
            outer, inner = sch.split(fused, factors=[None, lanes])
            sch.parallel(outer)
            sch.vectorize(inner)
            done = True
        return sch

    return CPUFallback()
