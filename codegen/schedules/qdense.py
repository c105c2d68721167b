"""Int8 dense layers on CPUs (x86, arm64): dynamic per-row activation quantization and an int8
GEMM with a float epilogue, register-tiled like the fp32 dense kernel (``dense.py``).

Semantics (exact integer arithmetic: every correct kernel gives the same int32 accumulators)::

    acc[r, n] = sum_k int32(xq[r, k]) * int32(W[k, n]) - x_zp[r] * colsum[n]       (int32)
    y[r, n]   = float32(acc[r, n]) * (x_scale[r] * w_scale[n]) + B[n]               (float32)

``xq`` are uint8 codes ``0..qmax`` (``activation_qmax(target)``: 127 where the microkernel's
16-bit pair sums would saturate), ``W`` a constant int8 weight, ``colsum[n] = sum_k W[k, n]``
folded at compile time. Microkernels that multiply signed bytes (arm64 ``sdot``, NEON ``smull``)
compute ``sum (xq - 128) * W - (x_zp - 128) * colsum``: the same integers (``act_offset``).

The pieces, as for the fp32 dense:

* ``pack_qweight`` lays the weight out as ``[ceil(N/nb), Kp/g, nb, g]`` int8 (zero-padded; ``g``
  the microkernel's k-group: 4 for the dot products, 8 for ``usmmla``, 2 for ``smull``): one
  k-step of the microkernel reads ``nb * g`` contiguous bytes, ``g`` consecutive k of each of
  ``nb`` columns. Padded k and columns hold zero weights, so they add nothing (and the codes they
  meet need no masking).
* ``qdense_te``: the int32 product into a row/column padded block ``optc_qdense_pad`` (rows padded
  to the register tile by clamping the row index, as ``optc_dense_pad``), then ``optc_qdense_out``
  with the zero-point correction and the float scaling. The PrimFunc is ``kOutEWiseFusable``:
  FuseOps appends elementwise epilogues (GELU, residual add). For ``usmmla`` (two rows per
  instruction) the block is a grid of 2 x 2 int32 blocks, and it reads the codes with their rows
  padded to the tile by ``optc_qdense_rowpad`` (``rowpad_te``).
* ``QDenseRule`` schedules any PrimFunc with an ``optc_qdense_pad`` block: an ``mi x nb`` int32
  register tile, the ``lanes x g`` step (arm64: ``lanes x 16`` k, 2 x 2 x 16 for ``usmmla``)
  tensorized with the target's microkernel (``int8.py``, ``int8_intrin.py``), column panels (or
  row tiles) parallel over the cores, and the float epilogue computed per tile from the
  accumulators; and the ``optc_qdense_rowpad`` copy (parallel rows, 16-byte vectors).
* ``quantize_rows_te`` / ``QuantizeRowsRule``: the per-row (per-token) quantization, one pass for
  the row's min/max, one pass writing the codes, parallel over rows.
* ``qdense_call`` / ``quantize_rows_call``: the Relax-level builders the lowering calls.

The float epilogue keeps the stated order of operations bit for bit: TVM compiles with LLVM's
``AllowFPOpFusion=Fast``, which fuses ``acc * s + B`` (and a fused residual add) into one FMA
with a single rounding. The product is wrapped in ``llvm.arithmetic.fence`` so it is rounded on
its own, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax, s_tir, te, tirx
from tvm.sym.analyzer import Analyzer

from .common import (K_OPAQUE, K_OUT_EWISE_FUSABLE, MAX_TILE_ROWS, SPARE_REGISTERS, block_name, extent, find_block,
                     largest_divisor, register_tile, vectorize_inner)
from .dense import _static_columns, _unflatten
from .int8 import Int8Microkernel, activation_qmax, int8_microkernel
from .rows import _vector_pass

__all__ = ["QDenseRule", "QDenseTiles", "QuantizeRowsRule", "activation_qmax", "pack_qweight", "qdense_call", "qdense_te",
           "quantize_rows_call", "quantize_rows_te", "weight_colsum"]

QDENSE_BLOCK = "optc_qdense_pad"
QOUT_BLOCK = "optc_qdense_out"
KPAD_BLOCK = "optc_qdense_kpad"
ROWPAD_BLOCK = "optc_qdense_rowpad"
QROWS = "optc_qrows_"
QROWS_CODES = QROWS + "codes"
KERNEL_ATTR = "optc.kernel"
# lane partials of the row min/max: 16 floats = two AVX2 / one AVX-512 / four NEON registers
ROW_LANES = 16


# ----------------------------------------------------------------------------- tiles and packing
@dataclass(frozen=True)
class QDenseTiles:
    """The int8 register tile for a target: ``mi`` rows x ``nb`` columns of int32 accumulators
    (``nb / kernel.lanes`` vectors per row), chosen from the register file like ``CPUTiles``
    but with ``kernel.temporaries`` registers left free for the microkernel's intermediates.

    ============  ===========  =========  ======  ============
    target        microkernel  registers  mi x nb accumulators
    ============  ===========  =========  ======  ============
    x86-avx2      pmadd 256    16         5 x 16  10
    x86-avx512    pmadd 512    32         6 x 64  24
    cascadelake   vnni 512     32         6 x 64  24
    alderlake     vnni 256     16         6 x 16  12
    arm64-i8mm    usmmla       32         8 x 8   16 (2 x 2 blocks)
    arm64-dotprod sdot         32         5 x 16  20
    arm64         smull        32         4 x 16  16
    ============  ===========  =========  ======  ============

    On arm64 each tile row also holds its codes in a register (``row_operand_registers``, as
    ``CPUTiles``); ``usmmla``'s tile of 2 x 2 blocks comes from ``pair_tile``.
    """

    kernel: Int8Microkernel
    mi: int
    nb: int
    cores: int

    @staticmethod
    def for_target(target) -> QDenseTiles | None:
        kernel = int8_microkernel(target)
        if kernel is None:
            return None
        registers = max(int(getattr(target, "vector_registers", 16) or 16), 4)
        # NEON's dot products (like its fmla) take no memory operand: each tile row holds its
        # codes in a register (``Target.extra["row_operand_registers"]``, as ``CPUTiles``)
        extra = getattr(target, "extra", None) or {}
        row_registers = max(int(extra.get("row_operand_registers", 0) or 0), 0)
        cores = max(int(getattr(target, "num_cores", 1) or 1), 1)
        if kernel.rows == 2:
            mi, nb = pair_tile(registers - kernel.temporaries, kernel.k_steps)
            return QDenseTiles(kernel=kernel, mi=mi, nb=nb, cores=cores)
        mi, cols = register_tile(registers - kernel.temporaries, row_registers)
        return QDenseTiles(kernel=kernel, mi=mi, nb=cols * kernel.lanes, cores=cores)

    def panel(self, n: int) -> int:
        """Packed panel width for ``n`` columns: the tile's, or for narrow layers the smallest
        power of two (at least one vector) that holds them."""
        if n >= self.nb:
            return self.nb
        return max(self.kernel.lanes, 1 << (n - 1).bit_length())


def pair_tile(registers: int, k_steps: int, max_rows: int = MAX_TILE_ROWS) -> tuple[int, int]:
    """``(rows, columns)`` of a tile of 2 x 2 accumulator blocks (``usmmla``): ``R`` row pairs x
    ``C`` column pairs hold ``R * C`` accumulators; per call each row pair needs one operand
    register per k-step (two 8-code halves zipped) and each column pair one weight register per
    k-step, plus ``SPARE_REGISTERS`` (the rows' raw 16-code loads). Most blocks per operand
    loaded (``R * C / (R + C)``) wins, fewer rows on a tie; columns are a power of two. NEON:
    4 x 4 blocks = 8 x 8 (16 + 8 + 2 + 2 = 28 of 32 registers; 4 x 8 blocks would need 32
    accumulators)."""
    best = None
    for c in (2, 4, 8):
        for r in range(max_rows // 2, 0, -1):
            if r * c + r * k_steps + k_steps + SPARE_REGISTERS <= registers:
                key = (r * c / (r + c), -r)
                if best is None or key > best[0]:
                    best = (key, 2 * r, 2 * c)
                break
    return (2, 4) if best is None else (best[1], best[2])


def _tiles(target) -> QDenseTiles:
    tiles = QDenseTiles.for_target(target)
    if tiles is None:
        raise ValueError(f"target {getattr(target, 'name', target)} has no int8 dense kernel "
                         "(check int8.int8_microkernel(target) before calling)")
    return tiles


def pack_qweight(w_int8: np.ndarray, target) -> np.ndarray:
    """int8 ``[K, N]`` -> ``[ceil(N/nb), Kp/g, nb, g]`` (``g`` = the microkernel's k-group: 4 for
    the dot products, 2 for NEON's ``smull`` pairs), zero-padded to ``Kp``, a multiple of the k
    one tensorized call covers (``k_pad``: 4 on x86, 16 on arm64), for ``target``'s int8 dense."""
    w = np.asarray(w_int8)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ValueError(f"pack_qweight takes an int8 [K, N] weight, got {w.dtype} {list(w.shape)}")
    tiles = _tiles(target)
    g, step = tiles.kernel.k_group, tiles.kernel.k_pad
    k, n = w.shape
    nb = tiles.panel(n)
    kp, npad = -(-k // step) * step, -(-n // nb) * nb
    padded = np.zeros((kp, npad), np.int8)
    padded[:k, :n] = w
    return np.ascontiguousarray(padded.reshape(kp // g, g, npad // nb, nb).transpose(2, 0, 3, 1))


def weight_colsum(w_int8: np.ndarray) -> np.ndarray:
    """``colsum[n] = sum_k W[k, n]`` as int32: the zero-point correction ``x_zp[r] * colsum[n]``."""
    return np.asarray(w_int8, np.int64).sum(axis=0).astype(np.int32)


# ----------------------------------------------------------------------------- TE: the int8 GEMM
def _i64(d):
    return tirx.Cast("int64", d) if str(d.ty) != "int64" else d


def _is_unit(d) -> bool:
    return isinstance(d, tirx.IntImm) and int(d) == 1


def _flatten(idx, lead):
    """Flat row index of the leading indices ``idx`` (unit dims skipped)."""
    flat = None
    for d, v in zip(lead, idx):
        if _is_unit(d):
            continue
        v = _i64(v)
        flat = v if flat is None else flat * d + v
    return tirx.const(0, "int64") if flat is None else flat


def _fence(x):
    """``x`` rounded on its own: LLVM may not contract it into an FMA with what consumes it."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", x)


def qdense_te(xq: te.Tensor, x_zp: te.Tensor, x_scale: te.Tensor, wp: te.Tensor, colsum: te.Tensor,
              w_scale: te.Tensor, bias: te.Tensor | None, n: int, mi: int, act_offset: int = 0,
              xq_rows: te.Tensor | None = None) -> te.Tensor:
    """TE of the int8 dense: ``xq [..., K4]`` (K4 = wp's K padded to the microkernel's ``k_pad``)
    x ``wp`` -> float32 ``[..., n]`` (see the module doc for the arithmetic).

    As in ``dense_packed_te``, rows are flattened into one padded axis when at most one leading
    dim is not 1; otherwise all but the last leading dim stay batch axes of the padded compute (a
    per-tile epilogue cannot be placed through an un-flattened row index).

    ``xq_rows`` (the ``usmmla`` kernel, two rows per instruction): the codes with their rows
    already padded to the tile (``rowpad_te``), read instead of ``xq`` (whose shape then only
    names the leading dims); the accumulator is then a grid of 2 x 2 blocks
    ``[..., rows/2, cols/2, 2, 2]`` -- one int32x4 register per block, as the instruction
    writes it."""
    lead = [_i64(d) for d in xq.shape[:-1]]
    nonunit = [d for d in lead if not _is_unit(d)]
    nblk, kgroups, nb, g = (int(v) for v in wp.shape)
    ko = te.reduce_axis((0, kgroups), name="ko")
    kr = te.reduce_axis((0, g), name="kr")
    i32, f32 = "int32", "float32"
    attrs = {"optc.qdense_nb": nb, "optc.qdense_mi": int(mi), "optc.qdense_rows": 1 if xq_rows is None else 2}

    def product(code, w):
        code = code.astype(i32)
        if act_offset:  # the microkernel multiplies signed bytes: xq - 128 (see int8.py)
            code = code - tirx.const(act_offset, i32)
        return te.sum(code * w.astype(i32), axis=[ko, kr])

    def dot(xrow, j):
        return product(xq[tuple(xrow) + (ko * g + kr,)], wp[j // nb, ko, j % nb, kr])

    def block_dot(xrow, jb, c):  # column 2 * jb + c of padded row xrow (2 x 2 blocks)
        half = nb // 2
        return product(xq_rows[tuple(xrow) + (ko * g + kr,)], wp[jb // half, ko, jb % half * 2 + c, kr])

    batched = len(nonunit) >= 2
    if batched:
        m = lead[-1]
    else:
        m = tirx.const(1, "int64")
        for d in lead:
            m = m * d
        m = Analyzer().simplify(m)
    mp = (m + (mi - 1)) // mi * mi
    if xq_rows is not None:
        if mi % 2 or nb % 2:
            raise ValueError(f"a 2 x 2 block tile needs even rows and columns, got {mi} x {nb}")
        outer = tuple(lead[:-1]) if batched else ()
        acc = te.compute(outer + ((m + (mi - 1)) // mi * (mi // 2), nblk * nb // 2, 2, 2),
                         lambda *idx: block_dot(idx[:-4] + (idx[-4] * 2 + idx[-2],), idx[-3], idx[-1]),
                         name=QDENSE_BLOCK, attrs=attrs)

        def acc_at(idx):
            r = idx[-2] if batched else _flatten(idx[:-1], lead)
            return acc[(tuple(idx[:-2]) if batched else ()) + (r // 2, idx[-1] // 2, r % 2, idx[-1] % 2)]
    elif batched:
        acc = te.compute(tuple(lead[:-1]) + (mp, nblk * nb),
                         lambda *idx: dot(idx[:-2] + (tirx.min(idx[-2], m - 1),), idx[-1]),
                         name=QDENSE_BLOCK, attrs=attrs)

        def acc_at(idx):
            return acc[idx]
    else:
        acc = te.compute((mp, nblk * nb), lambda i, j: dot(_unflatten(tirx.min(i, m - 1), lead), j),
                         name=QDENSE_BLOCK, attrs=attrs)

        def acc_at(idx):
            return acc[_flatten(idx[:-1], lead), idx[-1]]

    def out(*idx):
        r, j = _flatten(idx[:-1], lead), idx[-1]
        zp = x_zp[r] - tirx.const(act_offset, i32) if act_offset else x_zp[r]
        a = acc_at(idx) - zp * colsum[j]
        y = _fence(a.astype(f32) * (x_scale[r] * w_scale[j]))
        return y + bias[j] if bias is not None else y

    return te.compute(tuple(lead) + (n,), out, name=QOUT_BLOCK)


def rowpad_te(xq: te.Tensor, k4: int, mi: int) -> te.Tensor:
    """The codes for a two-rows-per-instruction kernel: rows padded to a multiple of ``mi`` by
    repeating the last row (as the other kernels clamp the row index; a clamped index inside a
    2-row operand would not be one load), K padded with zero codes to ``k4``. Rows are flattened
    to ``[ceil(M/mi)*mi, k4]`` when at most one leading dim is not 1, else only the last one is
    padded (``qdense_te``'s two layouts)."""
    lead = [_i64(d) for d in xq.shape[:-1]]
    k = xq.shape[-1]

    def code(src, kk):
        if int(k) == k4:
            return xq[tuple(src) + (kk,)]
        return tirx.if_then_else(kk < k, xq[tuple(src) + (tirx.min(kk, k - 1),)], tirx.const(0, "uint8"))

    if len([d for d in lead if not _is_unit(d)]) >= 2:
        s = lead[-1]
        return te.compute(tuple(lead[:-1]) + ((s + (mi - 1)) // mi * mi, k4),
                          lambda *idx: code(idx[:-2] + (tirx.min(idx[-2], s - 1),), idx[-1]), name=ROWPAD_BLOCK)
    m = tirx.const(1, "int64")
    for d in lead:
        m = m * d
    m = Analyzer().simplify(m)
    return te.compute(((m + (mi - 1)) // mi * mi, k4), lambda i, kk: code(_unflatten(tirx.min(i, m - 1), lead), kk),
                      name=ROWPAD_BLOCK)


def kpad_te(xq: te.Tensor, k4: int) -> te.Tensor:
    """``xq [..., K]`` -> ``[..., k4]`` with zero codes after K (they meet zero weights)."""
    k = xq.shape[-1]

    def body(*idx):
        kk = idx[-1]
        return tirx.if_then_else(kk < k, xq[idx[:-1] + (tirx.min(kk, k - 1),)], tirx.const(0, "uint8"))

    return te.compute(tuple(xq.shape[:-1]) + (k4,), body, name=KPAD_BLOCK)


# ----------------------------------------------------------------------------- TE: row quantization
def quantize_rows_te(x: te.Tensor, qmax: int, multiplier: te.Tensor | None = None):
    """Per-row uint8 quantization of ``x [..., K]`` (K static) -> ``(xq [M, K], zp [M], scale [M])``
    with M the product of the leading dims, with exactly this float32 arithmetic::

        lo = min(0, min_k x[r, k]); hi = max(0, max_k x[r, k])
        scale = (hi - lo) / qmax;  scale = 1 where it is 0
        zp = clamp(round_half_even(-lo / scale), 0, qmax)                       (int32)
        xq = clamp(round_half_even(x / scale) + zp, 0, qmax)                    (uint8)

    Divisions stay divisions (no reciprocal multiply). The min/max is one pass of ``ROW_LANES``
    lane partials (min and max in one block); a row that is not a whole number of vectors ends
    with a chunk that overlaps the previous one (min and max do not mind seeing an element twice),
    so no chunk needs a predicate. ``multiplier [K]`` (SmoothQuant's ``x_smooth``) scales each
    column as it is read, in float32, before both passes."""
    lead = [_i64(d) for d in x.shape[:-1]]
    kdim = x.shape[-1]
    if not isinstance(kdim, tirx.IntImm):
        raise ValueError("quantize_rows_te needs a static row length")
    k = int(kdim)
    m = tirx.const(1, "int64")
    for d in lead:
        m = m * d
    m = Analyzer().simplify(m)
    f32 = "float32"
    L = min(ROW_LANES, k)
    zero = tirx.const(0.0, f32)

    def xv(r, col):
        v = x[tuple(_unflatten(r, lead)) + (col,)]
        return v if multiplier is None else v * multiplier[col]

    # identity 0 for both: the row range always includes 0 (lo = min(0, ..), hi = max(0, ..))
    minmax = te.comm_reducer(lambda a, b: (tirx.min(a[0], b[0]), tirx.max(a[1], b[1])),
                             lambda t0, t1: (tirx.const(0.0, t0), tirx.const(0.0, t1)), name="minmax")
    c = te.reduce_axis((0, -(-k // L)), name="c")

    def part(r, lane):
        v = xv(r, tirx.min(c * L, k - L) + lane)
        return minmax((v, v), axis=c)

    plo, phi = te.compute((m, L), part, name=QROWS + "part")
    lane = te.reduce_axis((0, L), name="l")
    lo, hi = te.compute((m,), lambda r: minmax((plo[r, lane], phi[r, lane]), axis=lane), name=QROWS + "range")
    qmax_f = tirx.const(float(qmax), f32)

    def scale_of(r):
        s = (hi[r] - lo[r]) / qmax_f
        return tirx.Select(s == zero, tirx.const(1.0, f32), s)

    scale = te.compute((m,), scale_of, name=QROWS + "scale")

    def clamp_round(v):  # TVM's round is llvm.nearbyint: ties to even (vroundps)
        return tirx.min(tirx.max(tirx.round(v), zero), qmax_f)

    zp = te.compute((m,), lambda r: clamp_round((zero - lo[r]) / scale[r]).astype("int32"), name=QROWS + "zp")
    # round(x / scale) + zp is an integer below 2^24 in magnitude for finite x: exact in float32
    codes = te.compute((m, k), lambda r, j: tirx.min(tirx.max(tirx.round(xv(r, j) / scale[r]) + zp[r].astype(f32), zero),
                                                       qmax_f).astype("uint8"), name=QROWS_CODES)
    return codes, zp, scale


# ----------------------------------------------------------------------------- Relax builders
def quantize_rows_call(bb: relax.BlockBuilder, x: relax.Expr, qmax: int, multiplier: np.ndarray | None = None
                       ) -> tuple[relax.Expr, relax.Expr, relax.Expr]:
    """Emit the per-row quantization of float32 ``x [..., K]`` (times ``multiplier [K]``, read in
    the same pass): ``(xq uint8 [..., K], x_zp int32 [M], x_scale float32 [M])``, M the product of
    the leading dims (may be symbolic)."""
    ty = x.ty
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.shape is None or ty.ndim < 1:
        raise ValueError(f"quantize_rows_call takes a float32 tensor of known rank, got {ty}")
    if not 1 <= int(qmax) <= 255:
        raise ValueError(f"qmax must be in 1..255, got {qmax}")
    q = int(qmax)
    args = [x] if multiplier is None else [x, relax.const(np.ascontiguousarray(multiplier, np.float32))]
    call = bb.emit(bb.call_te(lambda t, m=None: quantize_rows_te(t, q, m), *args, primfunc_name_hint="optc_quantize_rows",
                              primfunc_attrs={"op_pattern": K_OPAQUE, KERNEL_ATTR: "quantize_rows"}))
    xq, zp, scale = (bb.emit(relax.TupleGetItem(call, i)) for i in range(3))
    shape = list(ty.shape.values)
    if len(shape) != 2:
        xq = bb.emit(relax.op.reshape(xq, shape))  # a view after RewriteDataflowReshape
    return xq, zp, scale


def qdense_call(bb: relax.BlockBuilder, xq: relax.Expr, x_zp: relax.Expr, x_scale: relax.Expr, w_int8: np.ndarray,
                w_scale: np.ndarray, bias: np.ndarray | None, target) -> relax.Expr:
    """Emit ``y = dequantize(xq @ W) + B``: float32 ``[..., N]`` from uint8 codes ``xq [..., K]``
    with per-row ``x_zp`` (int32 [M]) and ``x_scale`` (float32 [M]), a constant int8 weight ``W
    [K, N]`` with per-column ``w_scale [N]`` and an optional bias ``[N]``. Only for targets with an
    int8 microkernel (``int8.int8_microkernel(target)``); raises ``ValueError`` otherwise."""
    tiles = _tiles(target)
    w = np.asarray(w_int8)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ValueError(f"qdense_call takes an int8 [K, N] weight, got {w.dtype} {list(w.shape)}")
    k, n = w.shape
    ty = xq.ty
    if not isinstance(ty, relax.TensorType) or ty.dtype != "uint8" or ty.shape is None:
        raise ValueError(f"xq must be a uint8 tensor of known shape, got {ty}")
    xk = ty.shape.values[-1]
    if not (isinstance(xk, tirx.IntImm) and int(xk) == k):
        raise ValueError(f"xq's rows have {xk} codes, the weight {k}")
    w_scale = np.asarray(w_scale, np.float32).reshape(-1)
    if w_scale.shape != (n,) or (bias is not None and np.asarray(bias).reshape(-1).shape != (n,)):
        raise ValueError(f"w_scale and bias must have the weight's {n} columns")
    step = tiles.kernel.k_pad
    k4 = -(-k // step) * step
    mi, offset = tiles.mi, tiles.kernel.act_offset
    rows = None
    if tiles.kernel.rows > 1:  # row pairs: the codes padded to the tile's rows (and K), once
        rows = bb.emit(bb.call_te(lambda t: rowpad_te(t, k4, mi), xq, primfunc_name_hint="optc_qdense_rowpad"))
    elif k4 != k:
        xq = bb.emit(bb.call_te(lambda t: kpad_te(t, k4), xq, primfunc_name_hint="optc_qdense_kpad"))
    consts = [relax.const(pack_qweight(w, target), "int8"), relax.const(weight_colsum(w), "int32"),
              relax.const(w_scale, "float32")]
    if bias is not None:
        consts.append(relax.const(np.asarray(bias, np.float32).reshape(-1), "float32"))

    if rows is None:
        def kernel(xq_, zp_, s_, wp_, cs_, ws_, b_=None):
            return qdense_te(xq_, zp_, s_, wp_, cs_, ws_, b_, n, mi, offset)

        args = [xq, x_zp, x_scale]
    else:  # xq only names the leading dims (binds their variables); the kernel reads the padded rows
        def kernel(xq_, rows_, zp_, s_, wp_, cs_, ws_, b_=None):
            return qdense_te(xq_, zp_, s_, wp_, cs_, ws_, b_, n, mi, offset, xq_rows=rows_)

        args = [xq, rows, x_zp, x_scale]
    return bb.emit(bb.call_te(kernel, *args, *consts, primfunc_name_hint="optc_qdense",
                              primfunc_attrs={"op_pattern": K_OUT_EWISE_FUSABLE, KERNEL_ATTR: "qdense"}))


# ----------------------------------------------------------------------------- schedule rules
class QDenseRule(s_tir.dlight.ScheduleRule):
    """Schedule PrimFuncs holding an ``optc_qdense_pad`` block (with any fused epilogue).
    Registered only for targets with an int8 microkernel."""

    def __init__(self, target, k_unroll: int = 2):
        self.tiles = _tiles(target)
        self.k_unroll = k_unroll
        from . import int8_intrin  # noqa: F401  (registers the tensor intrinsics)

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        block = find_block(sch, QDENSE_BLOCK)
        if block is not None:
            schedule_qdense(sch, block, self.tiles, self.k_unroll)
            return sch
        block = find_block(sch, ROWPAD_BLOCK)
        if block is not None and len(list(sch.get_child_blocks(sch.get_sblock("root")))) == 1:
            # the padded codes: one parallel task per row, whole 128-bit vectors of codes
            loops = sch.get_loops(block)
            sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
            vectorize_inner(sch, block, self.tiles.kernel.vector_bits // 8)
            return sch
        return None


def schedule_qdense(sch: s_tir.Schedule, acc, tiles: QDenseTiles, k_unroll: int = 2) -> None:
    """The register-tiled, tensorized schedule (see ``QDenseRule``); mirrors ``schedule_dense``."""
    kernel = tiles.kernel
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    pos = [block_name(sch, b) for b in blocks].index(block_name(sch, acc))
    before, after = blocks[:pos], blocks[pos + 1:]
    # 1. the dequantizing copy and the fused epilogue chain become one block
    for blk in after:
        try:
            sch.compute_inline(blk)
        except Exception:  # noqa: BLE001  (the last (output) block stays)
            pass
    epilogue = list(sch.get_child_blocks(root))[pos + 1:]

    # 2. register tile: [par] x tile rows x ko x (mi x vectors x (lanes x 4 tensorized))
    loops = sch.get_loops(acc)
    ann = sch.get(acc).annotations
    mi, nb = int(ann["optc.qdense_mi"]), int(ann["optc.qdense_nb"])
    blocks2x2 = int(ann.get("optc.qdense_rows", 1)) == 2
    if blocks2x2:
        # 2 x 2 accumulator blocks (usmmla): [par] x tile x ko x (column pairs x row pairs x
        # (k_steps x 2 x 2 x 8 tensorized)); per ko the column pair's weights serve every row pair
        batch, (i, j, r2, c2, ko, kr) = loops[:-6], loops[-6:]
        mo, mii = sch.split(i, [None, mi // 2])
        no, nv = sch.split(j, [None, nb // 2])
        ku = 1
        ko, ks = sch.split(ko, [None, kernel.k_steps])
        k_loops = [ko]
        inner = [ko, nv, mii, ks, r2, c2, kr]
        tensorized = ks
    else:
        batch, (i, j, ko, kr) = loops[:-4], loops[-4:]
        mo, mii = sch.split(i, [None, mi])
        no, ni = sch.split(j, [None, nb])
        nv, lane = sch.split(ni, [None, kernel.lanes])
        if kernel.k_steps > 1:
            # one call covers k_steps k-groups of a row (NEON: 16 codes in one register, each
            # step reading its operand by element); per 16 k the column vectors are the outer
            # loop, so each one's weight vectors serve every row of the tile before the next load
            ku = 1
            ko, ks = sch.split(ko, [None, kernel.k_steps])
            k_loops = [ko]
            inner = [ko, nv, mii, ks, lane, kr]
            tensorized = ks
        else:
            ku = largest_divisor(extent(sch, ko), [k_unroll, 2]) if k_unroll > 1 else 1
            k_loops = list(sch.split(ko, [None, ku])) if ku > 1 else [ko]
            inner = k_loops + [mii, nv, lane, kr]
            tensorized = lane
    n_panels = extent(sch, no)
    if not batch and n_panels is not None and (n_panels >= 2 * tiles.cores or tiles.cores == 1):
        sch.reorder(no, mo, *inner)  # column panels outermost: a weight panel stays in cache
        par, tile_loop = no, mo
    elif not batch:
        sch.reorder(mo, no, *inner)
        par = tile_loop = sch.fuse(mo, no)
    elif n_panels is not None and n_panels >= 2 * tiles.cores:
        sch.reorder(no, *batch, mo, *inner)
        par, tile_loop = no, mo
    else:
        sch.reorder(*batch, mo, no, *inner)
        par, tile_loop = sch.fuse(*batch, mo), no
    sch.parallel(par)
    sch.unroll(mii)
    sch.unroll(nv)
    if ku > 1:
        sch.unroll(k_loops[1])

    # 3. the epilogue per register tile, straight from the accumulators
    local_ok = True
    for blk in epilogue:
        try:
            sch.reverse_compute_at(blk, tile_loop, preserve_unit_loops=False)
            if _static_columns(sch, blk):  # else a lane predicate (symbolic n): left to LLVM, as in dense
                vectorize_inner(sch, blk, kernel.lanes)
                if blocks2x2:  # unrolled: each row vector is then a zip of two accumulator registers
                    loops = sch.get_loops(blk)
                    at = [sch.get(lp).same_as(sch.get(tile_loop)) for lp in loops].index(True)
                    for loop in loops[at + 1:-1]:
                        if extent(sch, loop) is not None:
                            sch.unroll(loop)
        except Exception:  # noqa: BLE001  (a primitive that does not apply leaves the schedule as it was)
            local_ok = False
            _standalone(sch, blk, kernel.lanes)
    init = sch.decompose_reduction(acc, k_loops[0])
    init_loops = sch.get_loops(init)
    sch.vectorize(sch.fuse(*init_loops[-2:]) if blocks2x2 else init_loops[-1])
    # 4. the lanes x 4 step (NEON: lanes x 16 k) is the microkernel
    sch.tensorize(tensorized, kernel.name)
    if local_ok and epilogue:
        sch.set_scope(init, 0, "local")
    for blk in before:  # fused producers (none expected: the codes come from their own kernel)
        try:
            _standalone(sch, blk, kernel.lanes)
        except Exception:  # noqa: BLE001
            pass


def _standalone(sch: s_tir.Schedule, blk, lanes: int) -> None:
    """Parallel outer loops + vectorized inner loop for a spatial block left on its own."""
    loops = sch.get_loops(blk)
    if len(loops) >= 2:
        sch.parallel(sch.fuse(*loops[:-1]))
    vectorize_inner(sch, blk, lanes)


class QuantizeRowsRule(s_tir.dlight.ScheduleRule):
    """Schedule PrimFuncs holding the ``optc_qrows_codes`` block: one parallel task per row; in
    it the min/max pass (vector lane partials), the row's scale and zero point, and the vectorized
    code pass."""

    def __init__(self, target):
        self.lanes = max(int(target.vector_bits) // 32, 1)

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        codes = find_block(sch, QROWS_CODES)
        if codes is None:
            return None

        def block(name):
            return find_block(sch, QROWS + name)

        # one parallel task per row, anchored at the row loop of the range block: the blocks
        # after it write function outputs, which TVM moves only towards their producers
        row = sch.get_loops(block("range"))[0]
        sch.parallel(row)
        sch.compute_at(block("part"), row, preserve_unit_loops=True)
        for name in ("scale", "zp", "codes"):
            sch.reverse_compute_at(block(name), row, preserve_unit_loops=True)
        part = block("part")
        lane, chunk = sch.get_loops(part)[-2:]
        sch.reorder(chunk, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(part, chunk)
        sch.vectorize(sch.get_loops(init)[-1])
        col = sch.get_loops(codes)[-1]
        _vector_pass(sch, col, self.lanes)
        return sch
