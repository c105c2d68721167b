"""Row kernels on CPU: softmax, layer norm and RMS norm over the last axis.

Two halves, as for the dense kernel:

``RowKernels`` (a Relax pass, before legalization) rewrites f32 ``nn.softmax`` / ``nn.layer_norm`` /
``nn.rms_norm`` over the last axis into optc's TE kernels. The IR's ``AddLayerNorm`` lowers
straight to ``add_layer_norm_te`` (``add_layer_norm_call``): the residual sum is formed while the
rows are read, and written only when the graph needs it (then by the output block, beside y). Each row reduction is spelled so that it
vectorizes without a predicate, for any (also symbolic) row length ``n``:

* lane partials ``p[.., l] = op_c x[.., c*L + l]`` over the ``n // L`` full vectors (``L`` = the
  target's f32 lanes),
* a horizontal tree ``L -> L/2 -> .. -> 1`` (spatial blocks of halving width: shuffles, no scalar
  chain),
* the ``n % L`` tail as a scalar reduction whose ``init`` is the tree's result,

and the exp of softmax is a vectorizable polynomial (TVM's ``fast_exp`` constants) that keeps
NaN (a fully masked row stays NaN, as in the reference, so the lowering's ``where(isnan)`` maps
it to 0). All blocks are named ``optc_row_*``; the PrimFunc is marked ``kOutEWiseFusable`` so
FuseOps attaches elementwise epilogues.

``RowRule`` (a dlight-style rule) schedules PrimFuncs holding an ``optc_row_out`` block: fused
producers (scale multiply, mask add) are inlined into the reads, elementwise epilogues inlined
into the output pass, one parallel task per row (rows fused over the leading dims), every block
computed per row; partial reductions vectorized over their lanes, elementwise passes split into a
vectorized ``n // L * L`` part and a scalar tail (``loop_partition``), never a predicated vector.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, s_tir, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .common import K_OPAQUE, K_OUT_EWISE_FUSABLE, CPUTiles, block_name, extent, find_block

ROW = "optc_row_"
OUT_BLOCK = ROW + "out"

_NEG_INF = -math.inf


# ----------------------------------------------------------------------------- TE building blocks
def fast_exp_expr(x, upper: bool = True):
    """exp(x) as plain vectorizable arithmetic (TVM's fast_exp constants); NaN stays NaN,
    -inf -> 0 and (with ``upper``) +inf -> inf. ``upper=False`` for arguments known to be <= 0
    or NaN (softmax's x - max) saves the upper clamp.

    NaN is tested as ``x != x``: TVM's vectorizer scalarizes ``isnan``."""
    f32 = "float32"
    c = lambda v: tirx.const(v, f32)  # noqa: E731
    hi, lo = c(88.3762626647949), c(-88.3762626647949)
    xc = tirx.Select(x > hi, hi, x) if upper else x
    xc = tirx.Select(xc < lo, lo, xc)
    n = tirx.floor(xc * c(1.44269504088896341) + c(0.5))
    f = xc - n * c(0.693147180559945)
    p = c(0.000198756912)
    for k in (0.00139819994, 0.00833345205, 0.0416657962, 0.166666657, 0.5):
        p = p * f + c(k)
    p = p * f * f + f + c(1.0)
    two_n = tirx.reinterpret(f32, tirx.shift_left(tirx.Cast("int32", n) + tirx.const(127, "int32"),
                                                   tirx.const(23, "int32")))
    y = two_n * p
    if upper:
        y = tirx.Select(x > hi, c(math.inf), y)
    return tirx.Select(tirx.NE(x, x), x, y)


def _static(e):
    return int(e) if isinstance(e, (int, tirx.IntImm)) else None


class _Row:
    """Shapes and index helpers for one [*lead, n] row kernel with ``L`` lanes."""

    def __init__(self, x: te.Tensor, lanes: int):
        self.x = x
        self.lead = list(x.shape[:-1])
        self.n = x.shape[-1]
        self.L = lanes
        ns = _static(self.n)
        if ns is not None:
            self.nv_s = ns // lanes
            self.nv = self.nv_s
            self.nm = self.nv_s * lanes
            self.tail_s = ns - self.nm
            self.tail = self.tail_s
        else:
            self.nv_s = None
            self.nv = tirx.floordiv(self.n, lanes)
            self.nm = self.nv * lanes
            self.tail_s = None
            self.tail = self.n - self.nm

    def reduce(self, value, combine: str, identity: float, name: str):
        """[*lead] = combine_j value(idx, j) over j < n: lane partials, a tree, a scalar tail.

        ``value(idx, j)`` gives the element for lead index tuple ``idx`` and column ``j``."""
        L = self.L
        red = te.max if combine == "max" else te.sum
        comb = tirx.max if combine == "max" else (lambda a, b: a + b)
        init = None
        if self.nv_s != 0:  # full vectors exist (or may: symbolic n)
            c = te.reduce_axis((0, self.nv), name="c")
            part = te.compute(tuple(self.lead) + (L,),
                              lambda *i: red(value(i[:-1], c * L + i[-1]), axis=c),
                              name=f"{ROW}{name}_part")
            w, cur = L, part
            while w > 1:
                w //= 2
                cur = te.compute(tuple(self.lead) + (w,), _halve(cur, w, comb), name=f"{ROW}{name}_tree{w}")
            init = cur
        if self.tail_s == 0:
            return te.compute(tuple(self.lead), lambda *i: init[i + (0,)], name=f"{ROW}{name}")
        t = te.reduce_axis((0, self.tail), name="t")
        if init is None:
            return te.compute(tuple(self.lead), lambda *i: red(value(i, self.nm + t), axis=t), name=f"{ROW}{name}")
        if self.tail_s is None:
            # symbolic n: the tail ``n % L`` may be 0. A TIR reduction block runs its ``init`` inside
            # the reduce loop (``if t == 0``), so a zero-trip tail block never writes its result and
            # the combine would read uninitialized memory. Fold the tree result in as iteration 0
            # of a reduce loop of extent ``tail + 1`` (never empty); the element index is clamped
            # and only read (if_then_else branches) for t >= 1.
            t1 = te.reduce_axis((0, self.tail + 1), name="t")

            def folded(*i):
                j = self.nm + tirx.max(t1 - 1, tirx.const(0, str(t1.var.ty)))
                return red(tirx.if_then_else(t1 == 0, init[i + (0,)], value(i, j)), axis=t1)

            return te.compute(tuple(self.lead), folded, name=f"{ROW}{name}")
        # (te's reduce ``init=`` is dropped by create_prim_func: combine in a block of its own)
        tail = te.compute(tuple(self.lead), lambda *i: red(value(i, self.nm + t), axis=t), name=f"{ROW}{name}_tail")
        return te.compute(tuple(self.lead), lambda *i: comb(init[i + (0,)], tail[i]), name=f"{ROW}{name}")


def _halve(prev, w, comb):
    def f(*i):
        return comb(prev[i[:-1] + (i[-1],)], prev[i[:-1] + (i[-1] + w,)])

    return f


def softmax_te(x: te.Tensor, lanes: int):
    r = _Row(x, lanes)
    mx = r.reduce(lambda i, j: x[i + (j,)], "max", _NEG_INF, "max")
    e = te.compute(x.shape, lambda *i: fast_exp_expr(x[i] - mx[i[:-1]], upper=False), name=f"{ROW}exp")
    s = r.reduce(lambda i, j: e[i + (j,)], "sum", 0.0, "sum")
    inv = te.compute(tuple(r.lead), lambda *i: tirx.const(1.0, "float32") / s[i], name=f"{ROW}inv")
    return te.compute(x.shape, lambda *i: e[i] * inv[i[:-1]], name=OUT_BLOCK)


def layer_norm_te(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor | None, eps: float, lanes: int):
    return _layer_norm_rows(x, lambda i, j: x[i + (j,)], gamma, beta, eps, lanes)


def add_layer_norm_te(x: te.Tensor, r: te.Tensor, gamma: te.Tensor, beta: te.Tensor | None, eps: float, lanes: int,
                      want_sum: bool):
    """LayerNorm(x + r) over the last axis, adding while it reads: the reductions read
    ``x + r`` (nothing is written in between). With ``want_sum`` the output block writes the
    sum beside the normalized value (one block, two outputs: a block of its own would be an
    output block, which cannot be computed per row)."""
    bcast = [isinstance(dr, (int, tirx.IntImm)) and int(dr) == 1 and not (isinstance(dx, (int, tirx.IntImm)) and int(dx) == 1)
             for dx, dr in zip(x.shape, r.shape)]

    def r_at(idx):  # r may broadcast along axes where it has extent 1 (a position table)
        return r[tuple(tirx.const(0, str(v.ty)) if b else v for v, b in zip(idx, bcast))]

    return _layer_norm_rows(x, lambda i, j: x[i + (j,)] + r_at(i + (j,)), gamma, beta, eps, lanes, want_sum)


def _layer_norm_rows(x: te.Tensor, value, gamma: te.Tensor, beta: te.Tensor | None, eps: float, lanes: int,
                     with_value: bool = False):
    """Layer norm of the rows of ``value(lead_idx, j)`` (shaped like ``x``); ``with_value`` also
    returns the values themselves, written by the output block."""
    r = _Row(x, lanes)
    f32 = "float32"
    inv_n = tirx.const(1.0, f32) / tirx.Cast(f32, r.n)
    s = r.reduce(value, "sum", 0.0, "sum")
    mean = te.compute(tuple(r.lead), lambda *i: s[i] * inv_n, name=f"{ROW}mean")

    def dev2(i, j):
        d = value(i, j) - mean[i]
        return d * d

    v = r.reduce(dev2, "sum", 0.0, "var")
    rstd = te.compute(tuple(r.lead), lambda *i: tirx.rsqrt(v[i] * inv_n + tirx.const(eps, f32)), name=f"{ROW}rstd")

    def out(*i):
        val = value(i[:-1], i[-1])
        y = (val - mean[i[:-1]]) * rstd[i[:-1]] * gamma[i[-1]]
        y = y + beta[i[-1]] if beta is not None else y
        return [y, val] if with_value else y

    res = te.compute(x.shape, out, name=OUT_BLOCK)
    return list(res) if with_value else res


def rms_norm_te(x: te.Tensor, gamma: te.Tensor, eps: float, lanes: int):
    r = _Row(x, lanes)
    f32 = "float32"
    inv_n = tirx.const(1.0, f32) / tirx.Cast(f32, r.n)
    ss = r.reduce(lambda i, j: x[i + (j,)] * x[i + (j,)], "sum", 0.0, "ss")
    rstd = te.compute(tuple(r.lead), lambda *i: tirx.rsqrt(ss[i] * inv_n + tirx.const(eps, f32)), name=f"{ROW}rstd")
    return te.compute(x.shape, lambda *i: x[i] * rstd[i[:-1]] * gamma[i[-1]], name=OUT_BLOCK)


def add_layer_norm_call(ctx, x, r, gamma, beta, axis: int, eps: float, want_sum: bool):
    """For the lowering of ``AddLayerNorm`` (a ``codegen.lower.LowerContext``): the row kernel
    as Relax values ``y`` or ``(y, s)``, or None when it does not apply (not all f32, not the
    last axis, x and r of different shapes, a gamma/beta that is not one vector)."""
    args = [x, r, gamma] + ([beta] if beta is not None else [])
    if any(ctx.dtype(a) != "float32" for a in args):
        return None
    rank = ctx.rank(x)
    xs, rs = ctx.shape(x), ctx.shape(r)
    if axis != rank - 1 or xs is None or rs is None or len(xs) != len(rs):
        return None
    if not all(_provably_equal(ctx, a, b) or b == 1 for a, b in zip(xs, rs)):
        if not all(_provably_equal(ctx, a, b) or a == 1 for a, b in zip(xs, rs)):
            return None
        x, r, xs, rs = r, x, rs, xs  # the sum commutes: the full-size operand leads
        args[:2] = [x, r]
    if rs[-1] == 1 and xs[-1] != 1:
        return None  # a residual broadcast along the row itself: leave it to the generic path
    n = xs[-1]
    for v in args[2:]:
        vs = ctx.shape(v)
        if vs is None or len(vs) != 1 or not _provably_equal(ctx, vs[0], n):
            return None
    L = CPUTiles.for_target(ctx.target).lanes
    # Two outputs are opaque to FuseOps (a tuple result takes no epilogue); one output takes
    # elementwise epilogues like the layer-norm kernel.
    attrs = {"op_pattern": K_OPAQUE if want_sum else K_OUT_EWISE_FUSABLE}
    if beta is None:
        fn = lambda x_, r_, g_: add_layer_norm_te(x_, r_, g_, None, eps, L, want_sum)  # noqa: E731
    else:
        fn = lambda x_, r_, g_, b_: add_layer_norm_te(x_, r_, g_, b_, eps, L, want_sum)  # noqa: E731
    call = ctx.emit(ctx.bb.call_te(fn, *args, primfunc_name_hint="optc_add_layer_norm", primfunc_attrs=attrs))
    if not want_sum:
        return call
    return ctx.emit(relax.TupleGetItem(call, 0)), ctx.emit(relax.TupleGetItem(call, 1))


def _provably_equal(ctx, a, b) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return bool(ctx.analyzer.can_prove_equal(a, b))


# ----------------------------------------------------------------------------- the Relax pass
def _last_axis(axes, ndim) -> bool:
    axes = [int(a) % ndim for a in axes]
    return axes == [ndim - 1]


@mutator
class _RowRewriter(PyExprMutator):
    def __init__(self, mod, lanes: int, ops):
        super().__init__(mod)
        self.lanes = lanes
        self.ops = {"relax.nn." + o for o in ops}

    def visit_call_(self, call):  # noqa: N802
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            return call
        name = call.op.name
        if name not in self.ops:
            return call
        ty = call.args[0].ty
        if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.ndim < 1 or ty.shape is None:
            return call
        if any(not isinstance(a.ty, relax.TensorType) or a.ty.dtype != "float32" for a in call.args):
            return call
        L = self.lanes
        attrs = {"op_pattern": K_OUT_EWISE_FUSABLE}
        if name == "relax.nn.softmax":
            if int(call.attrs.axis) % ty.ndim != ty.ndim - 1:
                return call
            return self.builder_.call_te(lambda x: softmax_te(x, L), call.args[0],
                                         primfunc_name_hint="optc_softmax", primfunc_attrs=attrs)
        if not _last_axis(call.attrs.axes, ty.ndim) or call.args[1].ty.ndim != 1:
            return call
        eps = float(call.attrs.epsilon)
        if name == "relax.nn.layer_norm":
            if not (bool(call.attrs.center) and bool(call.attrs.scale)):
                return call
            return self.builder_.call_te(lambda x, g, b: layer_norm_te(x, g, b, eps, L), *call.args[:3],
                                         primfunc_name_hint="optc_layer_norm", primfunc_attrs=attrs)
        return self.builder_.call_te(lambda x, g: rms_norm_te(x, g, eps, L), *call.args[:2],
                                     primfunc_name_hint="optc_rms_norm", primfunc_attrs=attrs)


ROW_OPS = ("softmax", "layer_norm", "rms_norm")


@tvm.ir.transform.module_pass(opt_level=0, name="optc.RowKernels")
class RowKernels:
    """Rewrite f32 last-axis softmax / layer norm / RMS norm into optc's row kernels."""

    def __init__(self, target, ops=ROW_OPS):
        self.tiles = CPUTiles.for_target(target)
        self.ops = tuple(ops)

    def transform_module(self, mod, _ctx):
        rw = _RowRewriter(mod, self.tiles.lanes, self.ops)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rw.builder_.update_func(gv, rw.visit_expr(func))
        return rw.builder_.get()


# ----------------------------------------------------------------------------- the schedule rule
class RowRule(s_tir.dlight.ScheduleRule):
    """Schedule PrimFuncs holding an ``optc_row_out`` block (see the module doc)."""

    def __init__(self, target):
        self.tiles = CPUTiles.for_target(target)

    def apply(self, func, target, _tunable):  # noqa: D102
        if not isinstance(func, tirx.PrimFunc):
            return None
        if not _has_row_block(func):
            return None
        for inline_epilogue in (True, False):
            try:
                return self._schedule(func, inline_epilogue)
            except Exception:  # noqa: BLE001  (a primitive refused: try the more conservative plan)
                if not inline_epilogue:
                    raise
        return None

    def _schedule(self, func, inline_epilogue: bool):
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        blocks = list(sch.get_child_blocks(root))
        names = [block_name(sch, b) for b in blocks]
        first = next(i for i, nm in enumerate(names) if nm.startswith(ROW))
        outpos = next(i for i, nm in enumerate(names) if nm.startswith(OUT_BLOCK))
        # A multi-output row kernel (AddLayerNorm's y and sum) has one output block per output,
        # all in the same loop nest: they are scheduled together through the first one's loops.
        last_out = max(i for i, nm in enumerate(names) if nm.startswith(OUT_BLOCK))
        producers, after = blocks[:first], blocks[last_out + 1:]
        multi_out = last_out != outpos
        if multi_out:
            inline_epilogue = False
        for blk in producers:
            try:
                sch.compute_inline(blk)
            except Exception:  # noqa: BLE001
                pass
        final = blocks[outpos]
        if inline_epilogue and after:
            for blk in [blocks[outpos]] + after[:-1]:
                sch.compute_inline(blk)
            final = after[-1]
        # the row blocks (what is left of them after inlining), in order
        row_blocks = [b for b in sch.get_child_blocks(root)
                      if block_name(sch, b).startswith(ROW) and block_name(sch, b) != block_name(sch, final)
                      and not block_name(sch, b).startswith(OUT_BLOCK)]
        lead_n = len(sch.get(final).iter_vars) - 1
        loops = sch.get_loops(final)
        if len(loops) != lead_n + 1:
            raise ValueError("unexpected loop nest")
        row = sch.fuse(*loops[:lead_n]) if lead_n > 1 else (loops[0] if lead_n == 1 else None)
        if row is not None:
            sch.parallel(row)
        for blk in reversed(row_blocks):
            if row is not None:
                sch.compute_at(blk, row, preserve_unit_loops=True)
        for blk in row_blocks + [final]:
            self._vectorize_row_block(sch, blk, lead_n, partition=not multi_out)
        if not inline_epilogue:
            for blk in after:
                _standalone(sch, blk, self.tiles.lanes)
        for blk in producers:
            try:
                sch.get(blk)
            except Exception:  # noqa: BLE001  (inlined)
                continue
            try:
                _standalone(sch, blk, self.tiles.lanes)
            except Exception:  # noqa: BLE001
                pass
        return sch

    def _vectorize_row_block(self, sch, blk, lead_n, partition: bool = True):
        L = self.tiles.lanes
        name = block_name(sch, blk)
        loops = sch.get_loops(blk)
        inner = loops[1:] if lead_n else loops
        ivs = sch.get(blk).iter_vars
        if "_part" in name:
            # loops under the row: (lane l, chunk c) -> (c, l): vector accumulators
            lane, chunk = inner[-2], inner[-1]
            sch.reorder(chunk, lane)
            sch.vectorize(lane)
            init = sch.decompose_reduction(blk, chunk)
            sch.vectorize(sch.get_loops(init)[-1])
            return
        if "_tree" in name:
            ext = extent(sch, inner[-1])
            if ext is not None and ext >= 2:
                sch.vectorize(inner[-1])
            return
        if all(iv.iter_type == tirx.IterVar.DataPar for iv in ivs) and len(inner) >= 1 and len(ivs) == lead_n + 1:
            _vector_pass(sch, inner[-1], L, partition)


def _has_row_block(func) -> bool:
    return find_block(s_tir.Schedule(func), OUT_BLOCK) is not None


def _vector_pass(sch, loop, L: int, partition: bool = True) -> None:
    """Vectorize a row pass of extent n: ``n // L`` full vectors, a scalar tail, no predicate.
    ``partition=False`` (a loop holding several blocks: TVM 0.27's loop_partition crashes on
    it) leaves a loop with a tail to LLVM's loop vectorizer, as for a symbolic n."""
    ext = sch.get(loop).extent
    ns = _static(ext)
    if ns is not None:
        if ns <= 1:
            return
        if ns <= L and ns & (ns - 1) == 0:
            sch.vectorize(loop)
            return
        main = ns // L * L
        if main == 0:
            return
        if main != ns:
            if not partition:
                return
            loop, _tail = sch.loop_partition(loop, [main, None])
        _, v = sch.split(loop, [None, L], disable_predication=True)
        sch.vectorize(v)
        return
    # symbolic n: loop_partition needs static extents and a split would predicate every vector
    # (TVM then scalarizes it); a plain loop is vectorized by LLVM's loop vectorizer instead
    # (runtime trip count, vector body + remainder), which the row passes are simple enough for.


def _standalone(sch, blk, L: int) -> None:
    loops = sch.get_loops(blk)
    if not loops:
        return
    if len(loops) >= 2:
        sch.parallel(sch.fuse(*loops[:-1]))
    _vector_pass(sch, loops[-1], L)
