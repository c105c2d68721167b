"""General paths of shape-op lowerings whose operands are only known at run time (``shape.py``
keeps the static paths and calls these): ``Pad`` with run-time (or negative) pads or a run-time
``constant_value``, and a float ``Range`` with run-time bounds. The output extents become
symbolic dims read from the operands (``LowerContext.operand_exprs`` / ``runtime_shape``), and
the run-time checks refuse operands the interpreter refuses, with the same message."""

from __future__ import annotations

import numpy as np

_PAD_MODES = ("constant", "edge", "wrap", "reflect")


def _pad_te(x, cv, lo, out, mode: str):
    """TE: ``out``-shaped result reading x at (i - lo), with the mode's rule outside."""
    from tvm import te, tirx

    dims = list(x.shape)

    def compute(*i):
        src, inside = [], []
        for a, d in enumerate(dims):
            s = i[a] - lo[a]
            if mode == "edge":
                s = tirx.max(tirx.min(s, d - 1), 0)
            elif mode == "wrap":
                s = tirx.floormod(s, d)
            elif mode == "reflect":
                period = tirx.max(2 * (d - 1), 1)
                m = tirx.floormod(s, period)
                s = tirx.Select(m < d, m, period - m)
            else:
                inside.append(tirx.all(s >= 0, s < d))
            src.append(tirx.max(tirx.min(s, d - 1), 0))  # every read inside x, whatever the pads
        val = x[tuple(src)]
        if mode == "constant":
            fill = cv[0] if cv is not None else tirx.const(0, x.dtype)
            return tirx.if_then_else(tirx.all(*inside) if len(inside) > 1 else inside[0], val, fill)
        return val

    return te.compute(out, compute, name="pad")


def pad_general(ctx, node, x, pads, constant_value=None):
    """Pad whose amounts may be read at run time or negative (a crop), and whose
    ``constant_value`` may be a run-time tensor: a TE kernel whose extents are the input's
    plus the pads (checked >= 0 at run time), every read clamped inside the input."""
    R, tirx = ctx.R, ctx.tirx
    mode = node.attrs["mode"]
    if mode not in _PAD_MODES:
        raise ctx.fail(f"Pad mode {mode!r}")
    dims = ctx.shape(x)
    if dims is None:
        raise ctx.fail("Pad of an input of unknown shape")
    r = len(dims)
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        ax = ctx.known_ints(node.inputs[3])
        if ax is None or not all(isinstance(a, int) for a in ax):
            raise ctx.fail("Pad axes known only at run time")
        if any(not -r <= a < r for a in ax):
            raise ctx.fail(f"Pad axes {ax} out of range for rank {r}")
        ax = [a % r for a in ax]
    else:
        ax = list(range(r))
    known = ctx.known_ints(node.inputs[1])
    anchors = []
    if known is not None:
        p = [ctx.int_or_expr(v) for v in known]
    else:
        p, anchor = runtime_ints(ctx, pads, "pads")
        anchors.append(anchor)
    if len(p) != 2 * len(ax):
        raise ctx.fail(f"pads has {len(p)} entries for {len(ax)} axes")
    lo, hi = [0] * r, [0] * r
    for i, a in enumerate(ax):
        lo[a], hi[a] = p[i], p[i + len(ax)]
    out = [d + lo[a] + hi[a] for a, d in enumerate(dims)]
    for a in range(r):
        if isinstance(out[a], int) and out[a] < 0:
            raise ctx.invalid(PADS_NEGATIVE_EXTENT)
    sym = [e for e in out if not isinstance(e, int)]
    if sym:
        x = ctx.check_once(x, lambda *es: tirx.all(*[e >= 0 for e in es]) if len(es) > 1 else es[0] >= 0,
                           PADS_NEGATIVE_EXTENT, sym)
    if mode != "constant" and any(isinstance(d, int) and d == 0 for d in dims):
        raise ctx.fail(f"Pad mode {mode!r} of an empty axis")
    cv = None
    if mode == "constant" and constant_value is not None:
        c = node.inputs[2].const
        if c is not None:
            cv = ctx.const(c.reshape(-1)[:1] if c.size else np.zeros(1, c.dtype), ctx.dtype(x))
        else:
            cv = ctx.emit(R.reshape(constant_value, [1]))
            if ctx.dtype(cv) != ctx.dtype(x):
                cv = ctx.emit(R.astype(cv, ctx.dtype(x)))
    is_bool = ctx.dtype(x) == "bool"
    src = ctx.emit(R.astype(x, "uint8")) if is_bool else x
    if cv is not None and is_bool:
        cv = ctx.emit(R.astype(cv, "uint8"))

    def fn(t, *rest):
        return _pad_te(t, rest[0] if cv is not None else None, lo, out, mode)

    args = [src] + ([cv] if cv is not None else []) + anchors
    y = ctx.bb.emit_te(fn, *args, primfunc_name_hint="pad_dynamic")
    return R.astype(y, "bool") if is_bool else y


PADS_NEGATIVE_EXTENT = "pads leave an axis with a negative extent"


def runtime_ints(ctx, t, what: str):
    """The contents of the 1-D int tensor ``t`` (static length) read at run time, as fresh
    symbolic vars, and an *anchor*: a zero-size tensor of shape [v..., 0] to pass to every
    kernel whose shape uses the vars.

    A kernel must run after the match_cast that binds its vars (the VM allocates its output with
    them), but FuseOps orders calls by Relax data flow only and hoists one whose operands do not
    depend on the binding. The anchor (a ``vm.builtin.reshape`` view of an empty constant: no copy,
    no memory) is shaped by the match-cast value, so a kernel taking it runs after."""
    R, relax = ctx.R, ctx.relax
    shp = ctx.static_shape(t)
    if shp is None or len(shp) != 1:
        raise ctx.fail(f"{what} must be a 1-D tensor of static length to be read at run time")
    if ctx.dtype(t) != "int64":
        t = ctx.emit(R.astype(t, "int64"))
    padded = ctx.emit(R.concat([t, ctx.const(np.zeros(1, np.int64))], 0))
    sv = ctx.emit(R.tensor_to_shape(padded))
    fresh = [ctx.fresh_var(what.replace(" ", "_")) for _ in range(shp[0])] + [ctx.fresh_var("zero")]
    ctx.match_casts += 1
    sv = ctx.bb.match_cast(sv, relax.ShapeType(fresh))
    view = ctx.emit(relax.call_pure_packed("vm.builtin.reshape", ctx.const(np.zeros(0, np.int8)), sv,
                                           ty_args=relax.TensorType(dtype="int8", ndim=len(fresh))))
    view = ctx.bb.match_cast(view, relax.TensorType(fresh, "int8"))
    return fresh[:-1], view


def range_float(ctx, node, start, limit, delta):
    """A float Range whose bounds are known only at run time: n = max(ceil((limit - start) /
    delta), 0) elements start + i * delta (float64 arithmetic, as the interpreter); a zero delta
    fails the run-time check (the interpreter's "delta cannot be 0"); NaN or infinite bounds give
    no elements (the interpreter refuses NaN)."""
    R, tirx = ctx.R, ctx.tirx
    dt = ctx.dtype(start)
    s, lim, d = (ctx.emit(R.astype(R.reshape(v, []), "float64")) for v in (start, limit, delta))
    d = ctx.check_each(d, lambda v, pos: tirx.NE(v, tirx.const(0.0, "float64")), "delta cannot be 0")
    span = ctx.emit(R.ceil(R.divide(R.subtract(lim, s), d)))
    span = ctx.emit(R.maximum(span, ctx.scalar(0.0, "float64")))
    # NaN / inf bounds give no elements rather than an unbounded allocation.
    span = ctx.emit(R.where(R.logical_and(R.equal(span, span), R.less(span, ctx.scalar(2.0 ** 62, "float64"))),
                            span, ctx.scalar(0.0, "float64")))
    i = positions(ctx, ctx.emit(R.astype(span, "int64")), "range length")
    y = ctx.emit(R.add(s, R.multiply(i, d)))
    return y if dt == "float64" else R.astype(y, dt)


def positions(ctx, length, what: str):
    """[0, 1, ..., n - 1] as float64 for a 0-d int64 tensor ``length`` read at run time (its
    extent becomes a fresh symbolic dim n; see ``runtime_ints`` for the ordering anchor)."""
    from tvm import te

    (n,), anchor = runtime_ints(ctx, ctx.emit(ctx.R.reshape(length, [1])), what)

    def fn(a):
        return te.compute((a.shape[0],), lambda i: i.astype("float64"), name="positions")

    return ctx.bb.emit_te(fn, anchor, primfunc_name_hint="positions")


def range_int(ctx, node, start, limit, delta):
    """An integer Range with a bound read at run time: n = max(ceil((limit - start) / delta), 0)
    elements start + i * delta. A zero delta fails the run-time check (the interpreter's "delta
    cannot be 0"); the kernel takes the length's anchor (``runtime_ints``), so it runs after the
    binding of n."""
    from tvm import te

    R, tirx = ctx.R, ctx.tirx
    dt = ctx.dtype(start)
    s, lim, d = (ctx.emit(R.astype(R.reshape(v, []), "int64")) for v in (start, limit, delta))
    d = ctx.check_each(d, lambda v, pos: tirx.NE(v, tirx.IntImm("int64", 0)), "delta cannot be 0")
    zero, one = ctx.scalar(0, "int64"), ctx.scalar(1, "int64")
    safe = ctx.emit(R.where(R.equal(d, zero), one, d))  # an unchecked build never divides by 0
    diff = ctx.emit(R.subtract(lim, s))
    up = R.floor_divide(R.subtract(R.add(diff, safe), one), safe)  # ceil for delta > 0
    down = R.floor_divide(R.add(R.add(diff, safe), one), safe)  # ceil for delta < 0
    n = ctx.emit(R.maximum(R.where(R.greater(safe, zero), up, down), zero))
    _, anchor = runtime_ints(ctx, ctx.emit(R.reshape(n, [1])), "range length")

    def fn(a, s0, d0):
        return te.compute((a.shape[0],), lambda i: (s0[()] + i * d0[()]).astype(dt), name="range")

    return ctx.bb.emit_te(fn, anchor, s, safe, primfunc_name_hint="range")


def full(ctx, shape, value, dtype: str, what: str):
    """A tensor of ``dtype`` filled with ``value`` whose shape is the 1-D int tensor ``shape``
    read at run time (ConstantOfShape); negative dims are refused at run time. The kernel takes
    the shape's anchor (``runtime_ints``), so it runs after the binding of the dims."""
    from tvm import te, tirx

    dims, anchor = runtime_ints(ctx, shape, what)
    if dims:
        anchor = ctx.check_once(anchor, lambda *ds: tirx.all(*[d >= 0 for d in ds]) if len(ds) > 1 else ds[0] >= 0,
                                f"{what} has a negative dim", dims)
    fill = tirx.const(value.item() if hasattr(value, "item") else value, dtype)

    def fn(a):
        return te.compute(list(a.shape[:-1]), lambda *i: fill, name="full")

    return ctx.bb.emit_te(fn, anchor, primfunc_name_hint="full")
