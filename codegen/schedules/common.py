"""Shared pieces of optc's CPU schedules: tile choices from the target, small schedule helpers."""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

# relax/TIR op pattern kinds (tvm/relax/op_attr_types.h)
K_ELEMWISE, K_BROADCAST, K_INJECTIVE, K_COMM_REDUCE, K_OUT_EWISE_FUSABLE, K_OPAQUE = 0, 1, 2, 3, 4, 8


# Register tiles (dense micro-kernel, attention's score and p.V tiles) are sized from two facts of
# the target: ``Target.vector_registers`` and ``Target.extra["row_operand_registers"]``, the vector
# registers each row of a tile holds its broadcast operand in. x86 broadcasts a row's value from
# memory into one rotating register (``vbroadcastss``; 0 per row, covered by the spare ones);
# AArch64's FMA has no memory operand and reads it by element from a register
# (``fmla v.4s, v.4s, v.s[i]``), which LLVM loads per row, often two k-steps at once (1 per row).
SPARE_REGISTERS = 2  # in flight beside the tile: a rotating broadcast, a reload
# Powers of two only for the vector columns of a tile: model widths (384, 768, 1536, 32-wide
# heads) are then whole panels, with no zero-padded columns.
_VECTOR_COLUMNS = (1, 2, 4, 8)
MAX_TILE_ROWS = 8  # more rows per tile pads short sequences (and the tail tile) for little gain


def tile_registers(rows: int, vectors: int, row_registers: int = 0) -> int:
    """Vector registers a ``rows x vectors`` register tile needs: its accumulators, the ``vectors``
    column vectors streamed per step, the rows' broadcast operands and ``SPARE_REGISTERS``."""
    return rows * vectors + vectors + rows * row_registers + SPARE_REGISTERS


def register_tile(registers: int, row_registers: int = 0, max_rows: int = MAX_TILE_ROWS) -> tuple[int, int]:
    """``(rows, vector columns)`` of the dense micro-kernel: of the tiles that fit the register
    file, the one with the most multiply-adds per operand loaded (``rows * cols / (rows + cols)``;
    fewer rows on a tie). Per k-step it loads ``cols`` weight vectors (the packed panel) and
    ``rows`` broadcast inputs, and issues ``rows * cols`` FMAs into accumulators that stay in
    registers for the whole k loop.

    AVX2 (16 registers): 6 x 2 = 12 accumulators; AVX-512 (32): 6 x 4 = 24; AArch64 NEON (32,
    rows in registers): 5 x 4 = 20 -- 6 x 4 (24 + 4 + 6 operand registers) made LLVM spill
    accumulators to the stack inside the k loop."""
    best = None
    for cols in _VECTOR_COLUMNS:
        rows = next((r for r in range(max_rows, 0, -1) if tile_registers(r, cols, row_registers) <= registers), 0)
        if rows == 0:
            continue
        key = (rows * cols / (rows + cols), -rows)
        if best is None or key > best[0]:
            best = (key, rows, cols)
    if best is None:
        return 1, 1
    return best[1], best[2]


@dataclass(frozen=True)
class CPUTiles:
    """Register / vector tiling for one CPU target, derived from its vector width and register
    file (``Target.vector_bits``, ``Target.vector_registers``, ``row_operand_registers``); no
    branch on the target's name.

    lanes          fp32 lanes of one vector register (16 on AVX-512, 8 on AVX2, 4 on NEON)
    nb             packed weight panel width = columns of the register tile (a multiple of lanes)
    mi             rows of the register tile (accumulators = mi * nb / lanes vector registers)
    cores          threads the parallel loops are spread over
    registers      architectural vector registers (16 on AVX2, 32 on AVX-512 and AArch64)
    row_registers  registers per tile row for its broadcast operand (AArch64 1, x86 0)

    ============  =====  =========  =============  ==============  ============
    target        lanes  registers  row_registers  dense mi x nb   accumulators
    ============  =====  =========  =============  ==============  ============
    x86-avx2      8      16         0              6 x 16          12
    x86-avx512    16     32         0              6 x 64          24
    arm64 (NEON)  4      32         1              5 x 16          20
    ============  =====  =========  =============  ==============  ============
    """

    lanes: int
    nb: int
    mi: int
    cores: int
    registers: int = 16
    row_registers: int = 0

    @staticmethod
    def for_target(target) -> "CPUTiles":
        lanes = max(int(target.vector_bits) // 32, 1)
        cores = max(int(getattr(target, "num_cores", 1) or 1), 1)
        registers = max(int(getattr(target, "vector_registers", 16) or 16), 4)
        extra = getattr(target, "extra", None) or {}
        row_registers = max(int(extra.get("row_operand_registers", 0) or 0), 0)
        mi, cols = register_tile(registers, row_registers)
        return CPUTiles(lanes=lanes, nb=cols * lanes, mi=mi, cores=cores, registers=registers,
                        row_registers=row_registers)

    def fits(self, rows: int, vectors: int) -> bool:
        """Whether a ``rows x vectors`` register tile fits this target's register file."""
        return tile_registers(rows, vectors, self.row_registers) <= self.registers


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
