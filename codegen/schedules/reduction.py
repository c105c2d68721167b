"""Row reductions (softmax, layer norm, RMS norm, mean/sum over the last axis) on CPU.

TVM's ``dlight.cpu.Reduction`` handles the common shape of these kernels: every block shares the
leading spatial axes (rows), the last block is injective. It parallelizes the rows, computes every
block per row, vectorizes the injective blocks and unrolls the reductions. ``ReductionRule`` uses
it, and falls back to row-parallel + vectorized injective blocks for single-reduction PrimFuncs it
declines (e.g. a lone ``sum`` / ``max``).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu import Reduction

from .common import CPUTiles, is_spatial_only


class ReductionRule(s_tir.dlight.ScheduleRule):
    def __init__(self, target):
        self.tiles = CPUTiles.for_target(target)
        self._dlight = Reduction()

    def apply(self, func, target, tunable):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        if _one_row(func):
            # one row (a decode step's norm): nothing to spread over threads, and dlight's rule
            # parallelized the output elements with the row's reduction recomputed in each
            # (576 x 576 adds, 150 us for a 2 us job). Serial loops, vectorized by LLVM.
            return s_tir.Schedule(func)
        try:
            sch = self._dlight.apply(func, target, tunable)
        except Exception:  # noqa: BLE001
            sch = None
        if sch is not None:
            return sch
        return self._single(func)

    def _single(self, func):
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = list(sch.get_child_blocks(root))
        reds = [b for b in blocks if not is_spatial_only(sch, b)]
        if len(reds) != 1 or len(blocks) > 1:
            return None
        blk = reds[0]
        ivs = sch.get(blk).iter_vars
        n_lead = 0
        for iv in ivs:
            if iv.iter_type != tirx.IterVar.DataPar:
                break
            n_lead += 1
        loops = sch.get_loops(blk)
        if n_lead == 0 or len(loops) != len(ivs):
            return None
        sch.parallel(sch.fuse(*loops[:n_lead]) if n_lead > 1 else loops[0])
        return sch


def _one_row(func) -> bool:
    """Whether every reduction block of ``func`` reduces exactly one row (all its spatial
    extents are the constant 1)."""
    sch = s_tir.Schedule(func)
    reds = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if not is_spatial_only(sch, b)]
    if not reds:
        return False
    for b in reds:
        for iv in sch.get(b).iter_vars:
            if iv.iter_type == tirx.IterVar.DataPar:
                ext = iv.dom.extent
                if not (isinstance(ext, tirx.IntImm) and int(ext) == 1):
                    return False
    return True
