"""Lowerings of ir/ops/sequence.py: CumProd, ReverseSequence, RotaryEmbedding.

Sequence lengths and position ids are data: they are checked at run time (the interpreter's
error, word for word), and also clamped / wrapped before they index anything, so even an
unchecked build never reads out of bounds."""

from __future__ import annotations

import math

from ...ir.ops.sequence import sequence_length_out_of_range
from . import lowering

_HALF = ("float16", "bfloat16")


def scan_func(dims: list, dtype: str, op: str, exclusive: bool, reverse: bool):
    """A scheduled TIR scan over axis 1 of a [rows, steps, cols] tensor: ``op`` is "mul"
    (running product) or "add". Rows x cols run in parallel, each a serial loop over the steps
    reading the previous output (TVM's own scan kernel is left unscheduled: a serial scalar loop
    over the whole tensor)."""
    from tvm import s_tir, tirx

    shape = [tirx.IntImm("int64", d) if isinstance(d, int) else tirx.Var(f"n{i}", "int64") for i, d in enumerate(dims)]
    a, n, b = shape
    x = tirx.decl_buffer(shape, dtype, "x")
    y = tirx.decl_buffer(shape, dtype, "y")
    rc, t = tirx.Var("rc", "int64"), tirx.Var("t", "int64")
    row, col = tirx.floordiv(rc, b), tirx.floormod(rc, b)
    one = tirx.const(1 if op == "mul" else 0, dtype)
    step = (n - 1 - t) if reverse else t
    prev = step + 1 if reverse else step - 1

    def combine(u, v):
        return u * v if op == "mul" else u + v

    def at(buf, s):
        return tirx.BufferLoad(buf, [row, s, col])

    if exclusive:
        first, rest = one, combine(at(y, prev), at(x, prev))
    else:
        first, rest = at(x, step), combine(at(y, prev), at(x, step))
    body = tirx.IfThenElse(t == 0, tirx.BufferStore(y, first, [row, step, col]),
                           tirx.BufferStore(y, rest, [row, step, col]))
    body = tirx.For(t, tirx.IntImm("int64", 0), n, tirx.ForKind.SERIAL, body)
    body = tirx.For(rc, tirx.IntImm("int64", 0), a * b, tirx.ForKind.PARALLEL, body)
    # A root block, as TVMScript writes one: Relax's dataflow analyses expect it.
    body = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", body))
    func = tirx.PrimFunc([x, y], body)
    return func.with_attrs({"op_pattern": 8, "tirx.is_scheduled": 1, "tirx.noalias": True})


def scan(ctx, x, axis: int, op: str, exclusive: bool, reverse: bool):
    """Running product/sum of ``x`` along ``axis`` with the scheduled scan kernel."""
    R, relax = ctx.R, ctx.relax
    dims = ctx.shape(x)
    if dims is None:
        raise ctx.fail("a scan of an input of unknown shape")
    rows = math.prod(dims[:axis]) if axis else 1
    cols = math.prod(dims[axis + 1:]) if axis + 1 < len(dims) else 1
    three = [rows, dims[axis], cols]
    dt = ctx.dtype(x)
    work = "float32" if dt in _HALF else dt  # half precision accumulates in float32 (as torch)
    x3 = ctx.emit(R.reshape(x if work == dt else ctx.emit(R.astype(x, work)), three))
    static = [d if isinstance(d, int) else None for d in three]
    gv = ctx.bb.add_func(scan_func(static, work, op, exclusive, reverse), "cumprod" if op == "mul" else "cumsum")
    y3 = ctx.emit(relax.call_tir(gv, [x3], relax.TensorType(ctx.shape(x3), work)))
    y = ctx.emit(R.reshape(y3, dims))
    return y if work == dt else R.astype(y, dt)


@lowering("CumProd")
def _cumprod(ctx, node, x, axis):
    a = ctx.known_ints(node.inputs[1])
    if a is None or len(a) != 1 or not isinstance(a[0], int):
        raise ctx.fail("CumProd axis known only at run time")
    r = ctx.rank(x)
    if not -r <= a[0] < max(r, 1):
        raise ctx.fail(f"axis {a[0]} is out of range for rank {r}")
    return scan(ctx, x, a[0] % r, "mul", bool(node.attrs["exclusive"]), bool(node.attrs["reverse"]))


@lowering("ReverseSequence")
def _reverse_sequence(ctx, node, x, lens):
    R = ctx.R
    dims = ctx.shape(x)
    r = len(dims)
    b, ta = node.attrs["batch_axis"] % r, node.attrs["time_axis"] % r
    steps = dims[ta]
    what = sequence_length_out_of_range(node.inputs[0].shape[ta] if node.inputs[0].shape is not None else None)
    lv = node.inputs[1]
    if lv.const is not None:
        if isinstance(steps, int) and ((lv.const < 0) | (lv.const > steps)).any():
            raise ctx.invalid(what)
    else:
        lens = ctx.check_each(lens, lambda v, pos, n: ctx.tirx.And(v >= 0, v <= n), what, [steps])
    ls = lens if ctx.dtype(lens) == "int64" else ctx.emit(R.astype(lens, "int64"))
    # Clamped too, so an unchecked build never reads out of bounds.
    t_max = ctx.scalar(steps, "int64") if isinstance(steps, int) else R.astype(
        R.reshape(ctx.emit(R.shape_to_tensor(ctx.relax.ShapeExpr([steps]))), []), "int64")
    ls = ctx.emit(R.minimum(R.maximum(ls, ctx.scalar(0, "int64")), t_max))
    t = ctx.emit(R.arange(0, steps, 1, "int64"))
    tt = ctx.emit(R.reshape(t, [-1, 1] if ta == 0 else [1, -1]))
    ll = ctx.emit(R.reshape(ls, [-1, 1] if b == 0 else [1, -1]))
    src = ctx.emit(R.where(R.less(tt, ll), R.subtract(R.subtract(ll, ctx.scalar(1, "int64")), tt), tt))
    src = ctx.emit(R.reshape(src, [dims[0], dims[1]] + [1] * (r - 2)))
    idx = ctx.emit(R.broadcast_to(src, dims))  # inside [0, T) since every length is in [0, T]
    return R.gather_elements(x, idx, ta)


@lowering("RotaryEmbedding")
def _rotary_embedding(ctx, node, x, cos, sin, position_ids=None):
    R = ctx.R
    dims = ctx.shape(x)
    dt = ctx.dtype(x)
    work = "float32" if dt in _HALF else dt
    if len(dims) == 4:  # rotated in place, [B, H, S, D]: no transposes, so FuseOps puts the head
        xs = x          # split's reshape/transpose before it and the rotation in one kernel
    else:
        heads = node.attrs["num_heads"]
        if not isinstance(dims[2], int):
            raise ctx.fail("a 3-D RotaryEmbedding input with a symbolic hidden size")
        xs = ctx.emit(R.reshape(x, [dims[0], dims[1], heads, dims[2] // heads]))
    head = ctx.shape(xs)[3]
    if not isinstance(head, int):
        raise ctx.fail("RotaryEmbedding with a symbolic head size")
    rot = node.attrs["rotary_embedding_dim"] or head
    half = rot // 2
    if position_ids is not None:
        rows = ctx.shape(cos)[0]
        ids = ctx.check_index(position_ids, node.inputs[3], rows, 0, node.inputs[1].shape[0] if node.inputs[1].shape else None)
        # In [-rows, rows) once checked; "wrap" counts negative ids from the end and keeps even an
        # unchecked build in bounds.
        cos = ctx.emit(R.take(cos, ids, 0, mode="wrap"))
        sin = ctx.emit(R.take(sin, ids, 0, mode="wrap"))
    head_axis = 1 if len(dims) == 4 else 2  # the caches [B, S, half] broadcast over the heads
    c = ctx.emit(R.expand_dims(cos if work == dt else ctx.emit(R.astype(cos, work)), [head_axis]))
    s = ctx.emit(R.expand_dims(sin if work == dt else ctx.emit(R.astype(sin, work)), [head_axis]))
    xr = ctx.emit(R.strided_slice(xs, [3], [0], [rot], assume_inbound=True)) if rot < head else xs
    if work != dt:
        xr = ctx.emit(R.astype(xr, work))
    if node.attrs["interleaved"]:
        x1 = ctx.emit(R.strided_slice(xr, [3], [0], [rot], [2], assume_inbound=True))
        x2 = ctx.emit(R.strided_slice(xr, [3], [1], [rot], [2], assume_inbound=True))
    else:
        x1 = ctx.emit(R.strided_slice(xr, [3], [0], [half], assume_inbound=True))
        x2 = ctx.emit(R.strided_slice(xr, [3], [half], [rot], assume_inbound=True))
    real = ctx.emit(R.subtract(R.multiply(c, x1), R.multiply(s, x2)))
    imag = ctx.emit(R.add(R.multiply(s, x1), R.multiply(c, x2)))
    if node.attrs["interleaved"]:
        pair = ctx.emit(R.concat([ctx.emit(R.expand_dims(real, [4])), ctx.emit(R.expand_dims(imag, [4]))], 4))
        rotated = ctx.emit(R.reshape(pair, ctx.shape(xr)))
    else:
        rotated = ctx.emit(R.concat([real, imag], 3))
    if work != dt:
        rotated = ctx.emit(R.astype(rotated, dt))
    if rot < head:
        rest = ctx.emit(R.strided_slice(xs, [3], [rot], [head], assume_inbound=True))
        rotated = ctx.emit(R.concat([rotated, rest], 3))
    if len(dims) == 4:
        return rotated
    return R.reshape(rotated, dims)
