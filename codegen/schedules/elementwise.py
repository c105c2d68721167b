"""Spatial-only PrimFuncs (elementwise, broadcast, transpose/reshape copies): parallel + vectorized.

Every block is scheduled on its own: producers that can be inlined are inlined first, then the
outer loops of each remaining block are fused and parallelized and its innermost loop is split
into vectors of the target's width (a loop of extent not divisible by the lane count is left
scalar rather than predicated).
"""

from __future__ import annotations

from tvm import s_tir, tirx

from .common import CPUTiles, extent, is_spatial_only, vectorize_inner


class ElementwiseRule(s_tir.dlight.ScheduleRule):
    def __init__(self, target, min_parallel: int = 4096):
        self.tiles = CPUTiles.for_target(target)
        self.min_parallel = min_parallel

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = list(sch.get_child_blocks(root))
        if not blocks or not all(is_spatial_only(sch, b) for b in blocks):
            return None
        for blk in blocks[:-1]:
            try:
                sch.compute_inline(blk)
            except Exception:  # noqa: BLE001
                pass
        for blk in sch.get_child_blocks(root):
            loops = sch.get_loops(blk)
            if not loops:
                continue
            vectorize_inner(sch, blk, self.tiles.lanes)
            loops = sch.get_loops(blk)
            outer = [lp for lp in loops if sch.get(lp).kind != tirx.ForKind.VECTORIZED]
            if len(outer) >= 1:
                fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
                total = extent(sch, fused)
                if total is None or total * self.tiles.lanes >= self.min_parallel:
                    sch.parallel(fused)
        return sch
