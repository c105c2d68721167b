"""Shared pieces of optc's CPU schedules: tile choices from the target, small schedule helpers."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

# relax/TIR op pattern kinds (tvm/relax/op_attr_types.h)
K_ELEMWISE, K_BROADCAST, K_INJECTIVE, K_COMM_REDUCE, K_OUT_EWISE_FUSABLE, K_OPAQUE = 0, 1, 2, 3, 4, 8


@dataclass(frozen=True)
class CPUTiles:
    """Register / vector tiling for one CPU target.

    lanes    fp32 lanes of one vector register (16 on AVX-512, 8 on AVX2, 4 on NEON)
    nb       packed weight panel width = columns of the register tile (a multiple of lanes)
    mi       rows of the register tile (accumulators = mi * nb / lanes vector registers)
    cores    threads the parallel loops are spread over
    """

    lanes: int
    nb: int
    mi: int
    cores: int

    @staticmethod
    def for_target(target) -> "CPUTiles":
        lanes = max(int(target.vector_bits) // 32, 1)
        cores = max(int(getattr(target, "num_cores", 1) or 1), 1)
        if lanes >= 16:      # AVX-512: 32 zmm registers -> 6 x 4 accumulators
            return CPUTiles(lanes=lanes, nb=4 * lanes, mi=6, cores=cores)
        if lanes == 8:       # AVX2: 16 ymm registers -> 6 x 2 accumulators
            return CPUTiles(lanes=lanes, nb=2 * lanes, mi=6, cores=cores)
        # NEON (32 q registers of 4 lanes): 8 x 3 accumulators would fit; 6 x 4 lanes*4
        return CPUTiles(lanes=lanes, nb=4 * lanes, mi=6, cores=cores)


def extent(sch: s_tir.Schedule, loop) -> int | None:
    """A loop's extent as an int, or None when it is symbolic."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def block_name(sch: s_tir.Schedule, block) -> str:
    return sch.get(block).name_hint


def find_block(sch: s_tir.Schedule, prefix: str):
    """The first child block of the root whose name starts with ``prefix`` (FuseTIR may suffix it)."""
    root = sch.get_sblock("root")
    for blk in sch.get_child_blocks(root):
        if block_name(sch, blk).startswith(prefix):
            return blk
    return None


def largest_divisor(n: int | None, candidates) -> int:
    for c in candidates:
        if n is not None and n % c == 0:
            return c
    return 1


def vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Split the block's innermost loop into vectors of ``lanes`` and vectorize them."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    ext = extent(sch, inner)
    if ext is None:
        # a symbolic extent split into vectors needs a predicate on every vector, and TVM then
        # scalarizes the loop (LLVM re-vectorizes it as gathers/scatters): leave the plain loop to
        # LLVM's loop vectorizer (vector body + scalar remainder) instead
        return
    if ext <= lanes:
        if ext > 1:
            sch.vectorize(inner)
        return
    if ext % lanes != 0:
        # a remainder would put a predicate on every vector: use the largest power-of-two divisor
        v = largest_divisor(ext, [c for c in (lanes, lanes // 2, lanes // 4) if c >= 2])
        if v == 1:
            return
        _, vec = sch.split(inner, [None, v])
    else:
        _, vec = sch.split(inner, [None, lanes])
    sch.vectorize(vec)


def parallelize_spatial(sch: s_tir.Schedule, block, num_loops: int, cores: int, min_work: int = 1):
    """Fuse the block's first ``num_loops`` loops and parallelize them; returns the fused loop."""
    loops = sch.get_loops(block)[:num_loops]
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)
    return fused


def is_spatial_only(sch: s_tir.Schedule, block) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


@tvm.ir.transform.module_pass(opt_level=0, name="optc.MarkShapeFuncsNoAlias")
class MarkShapeFuncsNoAlias:
    """Give ``tirx.noalias`` to PrimFuncs with at most one buffer parameter that lack it (see
    ``schedules.finalize_passes``)."""

    def transform_module(self, mod, _ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.noalias", False):
                if len(func.params) <= 1:
                    updates[gv] = func.with_attr("tirx.noalias", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod
