"""Dense layers with constant weights: pre-packed weights, a register-blocked kernel, fused epilogues.

Two halves:

``PackDenseWeights`` (a Relax pass, before legalization) rewrites ``matmul(x, W)`` where ``W`` is a
2-D constant (also ``matmul(x, permute_dims(W))``) into a ``call_tir`` of optc's dense kernel that
reads the weight packed as ``[ceil(N/nb), K, nb]`` -- the packing happens once, here, in numpy; a
``take`` of the same constant (a tied embedding) then reads the packed copy too, so the module
holds the table once. The
kernel computes into a row/column padded buffer ``optc_dense_pad`` (rows padded to the register tile
by clamping the row index of ``x``, columns by zero weight columns), so the schedule never needs a
predicate in its inner loop, even for a symbolic number of rows; the copy block ``optc_dense_out``
writes the real ``[..., N]`` result. The PrimFunc is marked ``op_pattern = kOutEWiseFusable`` so
FuseOps fuses elementwise/broadcast epilogues (bias add, GELU, residual add) into it.

``DenseRule`` (a dlight-style rule, after FuseOps/FuseTIR) schedules any PrimFunc holding an
``optc_dense_pad`` block: register tile ``mi x nb`` (accumulators in registers), vectorized over
the ``nb`` packed lanes, K unrolled, column panels parallel over the cores, and the epilogue blocks
inlined into one block computed per tile right after the accumulation (so the output is written
once, straight from registers).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.sym.analyzer import Analyzer
from tvm import relax, s_tir, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .common import K_OUT_EWISE_FUSABLE, CPUTiles, block_name, extent, find_block, largest_divisor, vectorize_inner

DENSE_BLOCK = "optc_dense_pad"
DECODE_BLOCK = "optc_dense_decode"  # a low-precision weight decoded before the dense (dense_lowp.py)
OUT_BLOCK = "optc_dense_out"
KERNEL_ATTR = "optc.kernel"


def pack_weight(w: np.ndarray, nb: int) -> np.ndarray:
    """[K, N] -> [ceil(N/nb), K, nb], zero-padding the last panel."""
    k, n = w.shape
    npad = -(-n // nb) * nb
    if npad != n:
        w = np.concatenate([w, np.zeros((k, npad - n), w.dtype)], axis=1)
    return np.ascontiguousarray(w.reshape(k, npad // nb, nb).transpose(1, 0, 2))


def _unflatten(r, lead):
    """Indices of the leading dims for flattened row ``r`` (constant-1 dims give 0)."""
    idx = []
    nonunit = [d for d in lead if not (isinstance(d, tirx.IntImm) and int(d) == 1)]
    seen = 0
    for d in reversed(lead):
        if isinstance(d, tirx.IntImm) and int(d) == 1:
            idx.append(tirx.const(0, "int64"))
            continue
        seen += 1
        if seen == len(nonunit):          # outermost non-unit dim: no modulo needed (r < M)
            idx.append(r)
        else:
            idx.append(tirx.floormod(r, d))
            r = tirx.floordiv(r, d)
    idx.reverse()
    return idx


def static_rows(lead) -> int | None:
    """The number of rows ``x [..., K]`` holds when its leading dims are all constants."""
    m = 1
    for d in lead:
        if not isinstance(d, (int, tirx.IntImm)):
            return None
        m *= int(d)
    return m


def tile_rows(lead, mi: int) -> int:
    """Rows of the register tile: the target's ``mi``, or fewer when the product has fewer rows
    (a decode step's matrix-vector product has one: a 6-row tile would compute 5 padding rows)."""
    m = static_rows(lead)
    return max(1, min(mi, m)) if m is not None else mi


def dense_packed_te(x: te.Tensor, wp: te.Tensor, n: int, mi: int, out_dtype: str, weight_at=None):
    """TE of the packed dense: x [..., K] x wp [Nb, K, nb] -> [..., n].

    ``weight_at(jb, k, jj)`` replaces the weight read ``wp[jb, k, jj]`` (``wp`` then only gives
    the panel count and width).

    With at most one non-unit leading dim the rows are flattened into one padded row axis. With
    more (e.g. a symbolic ``[batch, seq]``) all but the last stay batch axes of the padded compute
    and only the last is padded: un-flattening a row index (``r // seq``, ``r % seq``) defeats the
    region analysis that computes the epilogue per register tile (it read rows not yet computed).
    """
    lead = [tirx.Cast("int64", d) if str(d.ty) != "int64" else d for d in x.shape[:-1]]
    nonunit = [d for d in lead if not (isinstance(d, tirx.IntImm) and int(d) == 1)]
    if len(nonunit) >= 2:
        return _dense_packed_batched_te(x, wp, lead, n, mi, out_dtype, weight_at)
    kdim = x.shape[-1]
    nblk, _, nb = wp.shape
    m = tirx.const(1, "int64")
    for d in lead:
        m = m * d
    m = Analyzer().simplify(m)
    mp = (m + (mi - 1)) // mi * mi
    k = te.reduce_axis((0, kdim), name="k")

    def row(i):
        return _unflatten(tirx.min(i, m - 1), lead)

    def body(i, j):
        xv, wv = _operands(x, tuple(row(i)) + (k,), wp, j, k, nb, out_dtype, weight_at)
        return te.sum(xv * wv, axis=k)

    c = te.compute((mp, nblk * nb), body, name=DENSE_BLOCK, attrs={"optc.dense_nb": int(nb), "optc.dense_mi": int(mi)})

    def out_body(*idx):
        flat = None
        for d, v in zip(lead, idx[:-1]):
            if isinstance(d, tirx.IntImm) and int(d) == 1:
                continue  # unit dims (batch 1) stay out of the row index: one loop per row
            v = tirx.Cast("int64", v) if str(v.ty) != "int64" else v
            flat = v if flat is None else flat * d + v
        if flat is None:
            flat = tirx.const(0, "int64")
        return c[flat, idx[-1]]

    return te.compute(tuple(lead) + (n,), out_body, name=OUT_BLOCK)


def _operands(x, x_index, wp, j, k, nb, out_dtype, weight_at):
    """The activation and weight one multiply-add of the packed dense reads."""
    xv = x[x_index]
    wv = wp[j // nb, k, j % nb] if weight_at is None else weight_at(j // nb, k, j % nb)
    if out_dtype != str(x.dtype):
        xv = xv.astype(out_dtype)
    if out_dtype != (str(wp.dtype) if weight_at is None else "float32"):  # decoders give float32
        wv = wv.astype(out_dtype)
    return xv, wv


def _dense_packed_batched_te(x, wp, lead, n, mi, out_dtype, weight_at=None):
    kdim = x.shape[-1]
    nblk, _, nb = wp.shape
    m = lead[-1]
    mp = (m + (mi - 1)) // mi * mi
    k = te.reduce_axis((0, kdim), name="k")

    def body(*idx):
        bi, i, j = tuple(idx[:-2]), idx[-2], idx[-1]
        xv, wv = _operands(x, bi + (tirx.min(i, m - 1), k), wp, j, k, nb, out_dtype, weight_at)
        return te.sum(xv * wv, axis=k)

    c = te.compute(tuple(lead[:-1]) + (mp, nblk * nb), body, name=DENSE_BLOCK,
                   attrs={"optc.dense_nb": int(nb), "optc.dense_mi": int(mi), "optc.dense_const_weight": 1})
    return te.compute(tuple(lead) + (n,), lambda *idx: c[idx], name=OUT_BLOCK)


BMM_PACK_BLOCK = "optc_bmm_pack"


def matmul_packed_te(a: te.Tensor, b: te.Tensor, mi: int, nb: int):
    """TE of a batched matmul without constant operand: a [*B, M, K] x b [*B, K, N] -> [*B, M, N].

    ``b`` is packed at run time into zero-padded panels ``[*B, ceil(N/nb), K, nb]`` (cheap: K*N
    copies for 2*M*K*N flops), then the same padded, register-tileable compute as the dense kernel.
    """
    batch = list(a.shape[:-2])
    m, kdim = a.shape[-2], a.shape[-1]
    n = b.shape[-1]
    nblk = (n + (nb - 1)) // nb
    nb_c = tirx.const(nb, str(n.ty)) if not isinstance(n, int) else nb

    def pack(*idx):
        jb, kk, jj = idx[-3:]
        col = jb * nb_c + jj
        return te.if_then_else(col < n, b[tuple(idx[:-3]) + (kk, col)], tirx.const(0, b.dtype))

    bp = te.compute(tuple(batch) + (nblk, kdim, nb), pack, name=BMM_PACK_BLOCK)
    mp = (m + (mi - 1)) // mi * mi
    k = te.reduce_axis((0, kdim), name="k")

    def body(*idx):
        i, j = idx[-2:]
        bi = tuple(idx[:-2])
        return te.sum(a[bi + (tirx.min(i, m - 1), k)] * bp[bi + (j // nb, k, j % nb)], axis=k)

    c = te.compute(tuple(batch) + (mp, nblk * nb), body, name=DENSE_BLOCK,
                   attrs={"optc.dense_nb": int(nb), "optc.dense_mi": int(mi)})
    return te.compute(tuple(batch) + (m, n), lambda *idx: c[idx], name=OUT_BLOCK)


def _same_shape_prefix(xs, ws, n: int) -> bool:
    if xs.shape is None or ws.shape is None:
        return False
    ana = Analyzer()
    for a, b in zip(list(xs.shape.values)[:n], list(ws.shape.values)[:n]):
        if not ana.can_prove_equal(a, b):
            return False
    return True


def _as_constant_weight(expr, lookup):
    """The constant [K, N] numpy weight behind ``expr`` (a Constant, or permute_dims of one), else None."""
    expr = _resolve(expr, lookup)
    if isinstance(expr, tvm.ir.expr.Constant):
        arr = expr.value.numpy()
        return arr if arr.ndim == 2 else None
    if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.permute_dims"):
        inner = _as_constant_weight(expr.args[0], lookup)
        if inner is None:
            return None
        axes = expr.attrs.axes
        if axes is None or [int(a) for a in axes] == [1, 0]:
            return np.ascontiguousarray(inner.T)
    return None


def _resolve(expr, lookup):
    """``expr`` with variable bindings followed (at most 8 deep)."""
    seen = 0
    while isinstance(expr, relax.Var) and seen < 8:
        bound = lookup(expr)
        if bound is None:
            break
        expr, seen = bound, seen + 1
    return expr


def take_packed_te(packed: te.Tensor, idx: te.Tensor, n: int, axis: int) -> te.Tensor:
    """``take(W, idx, axis)`` of a ``[K, N]`` weight read from its packed form
    ``[ceil(N/nb), K, nb]`` (``pack_weight``): ``axis=1`` gathers columns (an embedding tied to
    the dense head: ``[K, *idx]``), ``axis=0`` rows (``[*idx, N]``). Indices are clipped into
    range, as the ``clip`` take they replace (the lowering checked them before)."""
    nb = int(packed.shape[2])
    k = packed.shape[1]

    def col(i):
        c = idx[i].astype("int64")
        return tirx.max(tirx.min(c, tirx.const(n - 1, "int64")), tirx.const(0, "int64"))

    if axis == 1:
        def at(kk, *i):
            c = col(i)
            return packed[tirx.floordiv(c, nb), kk, tirx.floormod(c, nb)]

        return te.compute((k, *idx.shape), at, name="optc_take_packed")

    def at_row(*args):
        i, j = args[:-1], args[-1]
        r = tirx.max(tirx.min(idx[i].astype("int64"), k.astype("int64") - 1), tirx.const(0, "int64"))
        return packed[tirx.floordiv(j, nb), r, tirx.floormod(j, nb)]

    return te.compute((*idx.shape, n), at_row, name="optc_take_packed")


@mutator
class _TakeFromPacked(PyExprMutator):
    """``take`` of a weight constant that ``_DenseRewriter`` packed reads the packed copy, so
    the module holds one copy of a tied embedding/head table (``ir/tying.py``)."""

    def __init__(self, mod, packed: dict):
        super().__init__(mod)
        self.packed = packed  # hash of the weight Constant -> (Constant, packed Constant, N)
        self.rewritten = 0

    def visit_call_(self, call):  # noqa: N802
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or call.op != tvm.ir.Op.get("relax.take"):
            return call
        data = _resolve(call.args[0], self.lookup_binding)
        hit = self.packed.get(hash(data)) if isinstance(data, tvm.ir.expr.Constant) else None
        if hit is None or not hit[0].same_as(data) or str(call.attrs.mode) not in ("clip", "fast"):
            return call
        axis = int(call.attrs.axis) if call.attrs.axis is not None else None
        if axis is None or axis not in (0, 1, -1, -2):
            return call
        axis %= 2
        _, packed, n = hit
        self.rewritten += 1
        return self.builder_.call_te(lambda p, i: take_packed_te(p, i, n, axis), packed, call.args[1],
                                     primfunc_name_hint="optc_take_packed")


@mutator
class _DenseRewriter(PyExprMutator):
    def __init__(self, mod, tiles: CPUTiles, min_flops: int):
        super().__init__(mod)
        self.tiles = tiles
        self.min_flops = min_flops
        self.rewritten = 0
        self.packed: dict = {}  # hash of a plain weight Constant -> (Constant, packed Constant, N)

    def visit_call_(self, call):  # noqa: N802  (TVM's visitor naming)
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or call.op != tvm.ir.Op.get("relax.matmul"):
            return call
        x, w = call.args
        xs = x.ty
        if not isinstance(xs, relax.TensorType) or xs.ndim < 2 or xs.dtype != "float32" or xs.shape is None:
            return call
        weight = _as_constant_weight(w, self.lookup_binding)
        if weight is None:
            return self._batched(call, x, w, xs)
        if weight.dtype != np.float32:
            return call
        kdim, n = weight.shape
        xk = xs.shape.values[-1]
        if not (isinstance(xk, tirx.IntImm) and int(xk) == kdim):
            return call
        out_dtype = call.attrs.out_dtype or "float32"
        if str(out_dtype) not in ("float32", ""):
            return call
        nb = self.tiles.nb if n >= self.tiles.nb else max(self.tiles.lanes, 1 << (n - 1).bit_length())
        plain = _resolve(w, self.lookup_binding)
        hit = self.packed.get(hash(plain)) if isinstance(plain, tvm.ir.expr.Constant) else None
        if hit is not None and hit[0].same_as(plain) and int(hit[1].value.shape[2]) == nb:
            packed = hit[1]  # one packed copy per weight, however many layers read it
        else:
            packed = relax.const(pack_weight(weight, nb), "float32")
            if isinstance(plain, tvm.ir.expr.Constant):
                self.packed[hash(plain)] = (plain, packed, n)
        mi = tile_rows(xs.shape.values[:-1], self.tiles.mi)

        def kernel(xt, wt):
            return dense_packed_te(xt, wt, n, mi, "float32")

        self.rewritten += 1
        return self.builder_.call_te(
            kernel, x, packed, primfunc_name_hint="optc_dense_packed",
            primfunc_attrs={"op_pattern": K_OUT_EWISE_FUSABLE, KERNEL_ATTR: "dense_packed"})


    def _batched(self, call, x, w, xs):
        ws = w.ty
        if (not isinstance(ws, relax.TensorType) or ws.dtype != "float32" or ws.ndim != xs.ndim
                or xs.ndim < 2 or not _same_shape_prefix(xs, ws, xs.ndim - 2)):
            return call
        if call.attrs.out_dtype and str(call.attrs.out_dtype) not in ("float32", ""):
            return call
        n = ws.shape.values[-1]
        tiles = self.tiles
        if isinstance(n, tirx.IntImm) and int(n) < tiles.nb:
            nb = max(tiles.lanes, 1 << (int(n) - 1).bit_length())
        else:
            nb = tiles.nb
        mi = tiles.mi

        def kernel(at, bt):
            return matmul_packed_te(at, bt, mi, nb)

        self.rewritten += 1
        return self.builder_.call_te(
            kernel, x, w, primfunc_name_hint="optc_matmul_packed",
            primfunc_attrs={"op_pattern": K_OUT_EWISE_FUSABLE, KERNEL_ATTR: "matmul_packed"})


@tvm.ir.transform.module_pass(opt_level=0, name="optc.PackDenseWeights")
class PackDenseWeights:
    """Rewrite ``matmul(x, constant W)`` into optc's packed-weight dense kernel (see module doc)."""

    def __init__(self, target, min_flops: int = 0):
        self.tiles = CPUTiles.for_target(target)
        self.min_flops = min_flops

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _DenseRewriter(mod, self.tiles, self.min_flops)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                new = rw.visit_expr(func)
                rw.builder_.update_func(gv, new)
        mod = rw.builder_.get()
        if not rw.packed:
            return mod
        takes = _TakeFromPacked(mod, rw.packed)  # a gather of a packed weight reads the packed copy
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                takes.builder_.update_func(gv, takes.visit_expr(func))
        return takes.builder_.get()


class DenseRule(s_tir.dlight.ScheduleRule):
    """Schedule PrimFuncs holding an ``optc_dense_pad`` block (with any fused epilogue)."""

    def __init__(self, target):
        self.tiles = CPUTiles.for_target(target)

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        dense = find_block(sch, DENSE_BLOCK)
        if dense is None:
            return None
        schedule_dense(sch, dense, self.tiles)
        return sch


def _split_k(sch, k_loop, unroll: int):
    kext = extent(sch, k_loop)
    ku = largest_divisor(kext, [unroll, unroll // 2, 2])
    if ku > 1:
        ko, ki = sch.split(k_loop, [None, ku])
        return ko, ki
    return k_loop, None


def schedule_dense(sch: s_tir.Schedule, dense, tiles: CPUTiles, k_unroll: int = 4) -> None:
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    pos = [block_name(sch, b) for b in blocks].index(block_name(sch, dense))
    before, after = blocks[:pos], blocks[pos + 1:]

    # 1. fold the epilogue chain (copy, bias, GELU, residual, ...) into as few blocks as possible
    for blk in after:
        try:
            sch.compute_inline(blk)
        except Exception:  # noqa: BLE001  (a primitive that does not apply leaves the schedule as it was)
            pass
    epilogue = list(sch.get_child_blocks(root))[pos + 1:]

    # 2. register tile
    loops = sch.get_loops(dense)
    batch, (i, j, k) = loops[:-3], loops[-3:]
    wp_nb = _panel_width(sch, dense, tiles.nb)
    ann = sch.get(dense).annotations
    mi = int(ann["optc.dense_mi"]) if "optc.dense_mi" in ann else tiles.mi
    mo, mii = sch.split(i, [None, mi])
    no, ni = sch.split(j, [None, wp_nb])
    ko, ki = _split_k(sch, k, k_unroll)
    inner = [ko] + ([ki] if ki is not None else []) + [mii, ni]
    n_panels = extent(sch, no)
    if not batch and n_panels is not None and (n_panels >= 2 * tiles.cores or tiles.cores == 1):
        # column panels outermost: one packed weight panel stays in cache across all row tiles
        sch.reorder(no, mo, *inner)
        par, tile_loop = no, mo
    elif not batch:
        sch.reorder(mo, no, *inner)
        par = sch.fuse(mo, no)
        tile_loop = par
    elif "optc.dense_const_weight" in ann and n_panels is not None and n_panels >= 2 * tiles.cores:
        # a constant weight with batch axes ([batch, seq] rows): weight panels outermost as above
        sch.reorder(no, *batch, mo, *inner)
        par, tile_loop = no, mo
    else:
        sch.reorder(*batch, mo, no, *inner)
        par = sch.fuse(*batch, mo)
        tile_loop = no
    sch.parallel(par)
    sch.vectorize(ni)
    sch.unroll(mii)
    if ki is not None:
        sch.unroll(ki)

    # 3. epilogue computed per register tile, straight from the accumulators
    local_ok = True
    for blk in epilogue:
        try:
            sch.reverse_compute_at(blk, tile_loop, preserve_unit_loops=False)
            if _static_columns(sch, blk):
                vectorize_inner(sch, blk, tiles.lanes)
            # else: the tile's column predicate (j < n, n symbolic) would be on every vector lane
            # and TVM scalarizes a predicated vector loop into guarded scalar stores (this made the
            # attention scores matmul 2.4x ORT); the plain loop is left to LLVM (masked stores)
        except Exception:  # noqa: BLE001  (a primitive that does not apply leaves the schedule as it was)
            local_ok = False
            _schedule_standalone(sch, blk, tiles)
    init = sch.decompose_reduction(dense, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    if local_ok and epilogue:
        sch.set_scope(dense, 0, "local")
    for blk in before:
        try:
            if block_name(sch, blk) == DECODE_BLOCK:
                _decode_per_panel(sch, blk, par, tiles)
            else:
                _schedule_standalone(sch, blk, tiles)
        except Exception:  # noqa: BLE001  (a primitive that does not apply leaves the schedule as it was)
            pass


def _decode_per_panel(sch, blk, panel_loop, tiles: CPUTiles) -> None:
    """A low-precision weight's decode block (``dense_lowp.py``): computed per weight panel in
    the parallel loop, into a ``K x nb`` scratch the panel's row tiles all read."""
    sch.compute_at(blk, panel_loop, preserve_unit_loops=False)
    vectorize_inner(sch, blk, tiles.lanes)


def _static_columns(sch, blk) -> bool:
    """Whether the block writes a buffer whose last (column) dim is a constant."""
    writes = sch.get(blk).writes
    if not writes:
        return False
    buf = getattr(writes[0], "buffer", None) or writes[0].source
    return isinstance(buf.shape[-1], tirx.IntImm)


def _panel_width(sch, dense, default: int) -> int:
    """The packed panel width nb the kernel was built for (a block annotation; survives FuseTIR)."""
    ann = sch.get(dense).annotations
    return int(ann["optc.dense_nb"]) if "optc.dense_nb" in ann else default


def _schedule_standalone(sch, blk, tiles: CPUTiles) -> None:
    """Parallel outer loops + vectorized inner loop for a spatial block left on its own."""
    loops = sch.get_loops(blk)
    if len(loops) >= 2:
        sch.parallel(sch.fuse(*loops[:-1]))
    vectorize_inner(sch, blk, tiles.lanes)
