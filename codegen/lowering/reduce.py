"""Lowerings of the reductions (ir/ops/reduce.py): Reduce*, ArgMax/ArgMin, the softmax family,
CumSum, TopK and the Lp / mean-variance normalizations."""

from __future__ import annotations

import numpy as np

from . import lowering


def _axes(ctx, node, x, axes):
    """Sorted axes to reduce; [] means reduce over nothing."""
    r = ctx.rank(x)
    ax = []
    if axes is not None:
        ax = ctx.known_ints(node.inputs[1])
        if ax is None or not all(isinstance(a, int) for a in ax):
            raise ctx.fail("reduction axes known only at run time")
    if not ax:
        return [] if node.attrs["noop_with_empty_axes"] else list(range(r))
    out = set()
    for a in ax:
        if not -r <= a < max(r, 1):
            raise ctx.fail(f"axis {a} out of range for rank {r}")
        out.add(a % r if r else 0)
    return sorted(out)


def _float(ctx, x):
    dt = ctx.dtype(x)
    return x if dt.startswith(("float", "bfloat")) else ctx.emit(ctx.R.astype(x, "float64"))


def _empty_value(op: str, dt: str):
    """The value of a reduction over an empty set (ONNX): the identity of the reduction."""
    if op in ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"):
        return 0
    if op == "ReduceProd":
        return 1
    if op in ("ReduceLogSum", "ReduceLogSumExp"):
        return -np.inf
    if op == "ReduceMean":
        return np.nan
    lowest = op == "ReduceMax"
    if dt == "bool":
        return not lowest
    if dt.startswith("float"):
        return -np.inf if lowest else np.inf
    info = np.iinfo(dt)
    return info.min if lowest else info.max


def _reduction(pre, red, post=None):
    def fn(ctx, node, x, axes=None):
        ax = _axes(ctx, node, x, axes)
        keep = bool(node.attrs["keepdims"])
        dims = ctx.shape(x)
        if ax and dims is not None and any(isinstance(dims[a], int) and dims[a] == 0 for a in ax):
            # TVM initializes a reduction inside its (empty) loop: fill with the identity instead.
            out = [1 if i in ax else d for i, d in enumerate(dims)] if keep else [d for i, d in enumerate(dims) if i not in ax]
            dt = ctx.dtype(x)
            value = _empty_value(node.op, dt)
            if all(isinstance(d, int) for d in out):
                return ctx.const(np.full(out, value, dtype=dt))
            return ctx.R.full(out, ctx.scalar(value, dt), dt)
        y = pre(ctx, x) if pre is not None else x
        if ax:
            if ctx.rank(x) == 0:
                ax = None
            y = ctx.emit(red(ctx, y, ax, keep))
        if post is not None:
            y = ctx.emit(post(ctx, y))
        return ctx.R.astype(y, ctx.dtype(x)) if ctx.dtype(y) != ctx.dtype(x) else y

    return fn


def _sq(ctx, x):
    return ctx.emit(ctx.R.multiply(x, x))


lowering("ReduceSum")(_reduction(None, lambda ctx, y, a, k: ctx.R.sum(y, a, k)))
lowering("ReduceSumSquare")(_reduction(_sq, lambda ctx, y, a, k: ctx.R.sum(y, a, k)))
lowering("ReduceL1")(_reduction(lambda ctx, x: ctx.emit(ctx.R.abs(x)), lambda ctx, y, a, k: ctx.R.sum(y, a, k)))
lowering("ReduceL2")(_reduction(lambda ctx, x: _sq(ctx, _float(ctx, x)), lambda ctx, y, a, k: ctx.R.sum(y, a, k),
                                lambda ctx, y: ctx.R.sqrt(y)))
lowering("ReduceLogSum")(_reduction(_float, lambda ctx, y, a, k: ctx.R.sum(y, a, k), lambda ctx, y: ctx.R.log(y)))
lowering("ReduceMean")(_reduction(_float, lambda ctx, y, a, k: ctx.R.mean(y, a, k)))
lowering("ReduceProd")(_reduction(None, lambda ctx, y, a, k: ctx.R.prod(y, a, k)))
def _extreme(largest: bool):
    """max/min. TVM starts a float max at the lowest finite value, not -inf, so a row of -inf
    reduces to -FLT_MAX: put the infinity back where no element reached the finite extreme."""

    def red(ctx, y, a, k):
        R = ctx.R
        dt = ctx.dtype(y)
        if dt == "bool":
            u = ctx.emit(R.astype(y, "int8"))
            return R.astype(ctx.emit((R.max if largest else R.min)(u, a, k)), "bool")
        m = ctx.emit((R.max if largest else R.min)(y, a, k))
        if not dt.startswith("float"):
            return m
        info = np.finfo(dt)
        edge = ctx.scalar(info.min if largest else info.max, dt)
        # One int8 max over the same axes: 2 where an element is NaN (the result is NaN, as the
        # interpreter's: TVM's `a > b ? a : b` drops NaN or not depending on the lane count, i.e.
        # on the CPU's vector width), 1 where one equals the edge.
        i8 = lambda v: ctx.scalar(v, "int8")  # noqa: E731
        code = R.where(R.isnan(y), i8(2), R.astype(R.equal(y, edge), "int8"))
        hit = ctx.emit(R.max(code, a, k))
        inf = ctx.scalar(-np.inf if largest else np.inf, dt)
        # hit < 1: no element equals the edge (an empty set reduces hit to int8's minimum)
        m = ctx.emit(R.where(R.logical_and(R.equal(m, edge), R.less(hit, i8(1))), inf, m))
        return R.where(R.greater_equal(hit, i8(2)), ctx.scalar(np.nan, dt), m)

    return red


lowering("ReduceMax")(_reduction(None, _extreme(True)))
lowering("ReduceMin")(_reduction(None, _extreme(False)))


def _logsumexp(ctx, y, a, k):
    R = ctx.R
    m = ctx.emit(R.max(y, a, True))
    s = ctx.emit(R.log(R.sum(R.exp(R.subtract(y, m)), a, True)))
    out = R.add(s, m)
    if not k:
        out = R.squeeze(ctx.emit(out), a)
    return out


lowering("ReduceLogSumExp")(_reduction(_float, _logsumexp))


def _arg(largest: bool):
    def fn(ctx, node, x):
        R = ctx.R
        r = ctx.rank(x)
        axis = node.attrs["axis"] % r if r else 0
        keep = bool(node.attrs["keepdims"])
        if ctx.dtype(x) == "bool":
            x = ctx.emit(R.astype(x, "uint8"))
        f = R.argmax if largest else R.argmin
        if node.attrs["select_last_index"]:
            n = ctx.static_shape(x)
            if n is None:
                raise ctx.fail("select_last_index on a symbolic axis")
            idx = ctx.emit(f(ctx.emit(R.flip(x, axis)), axis, keep))
            return R.subtract(ctx.scalar(n[axis] - 1, "int64"), R.astype(idx, "int64"))
        return R.astype(f(x, axis, keep), "int64")

    return fn


lowering("ArgMax")(_arg(True))
lowering("ArgMin")(_arg(False))


@lowering("Softmax")
def _softmax(ctx, node, x):
    return ctx.R.nn.softmax(x, node.attrs["axis"])


@lowering("LogSoftmax")
def _log_softmax(ctx, node, x):
    return ctx.R.nn.log_softmax(x, node.attrs["axis"])


@lowering("Hardmax")
def _hardmax(ctx, node, x):
    R = ctx.R
    r = ctx.rank(x)
    axis = node.attrs["axis"] % r
    shp = ctx.static_shape(x)
    if shp is None:
        raise ctx.fail("Hardmax on a symbolic shape")
    idx = ctx.emit(R.astype(R.argmax(x, axis, True), "int64"))
    n = shp[axis]
    ar = ctx.const(np.arange(n, dtype=np.int64).reshape([1] * axis + [n] + [1] * (r - axis - 1)))
    return R.astype(R.equal(idx, ar), ctx.dtype(x))


@lowering("CumSum")
def _cumsum(ctx, node, x, axis):
    a = ctx.known_ints(node.inputs[1])
    if a is None:
        raise ctx.fail("CumSum axis known only at run time")
    a = a[0] % ctx.rank(x)
    # The scheduled scan kernel (TVM's cumsum is left as a serial loop over the whole tensor).
    from .sequence import scan

    return scan(ctx, x, a, "add", bool(node.attrs["exclusive"]), bool(node.attrs["reverse"]))


@lowering("TopK")
def _topk(ctx, node, x, k):
    kk = ctx.known_ints(node.inputs[1])
    if kk is None or not isinstance(kk[0], int):
        raise ctx.fail("TopK k known only at run time")
    if ctx.dtype(x) == "uint64":
        raise ctx.fail("TopK of uint64 (TVM's CPU sort kernels lack it)")
    t = ctx.emit(ctx.R.topk(x, kk[0], node.attrs["axis"], "both", bool(node.attrs["largest"]), "int64"))
    return ctx.emit(ctx.relax.TupleGetItem(t, 0)), ctx.emit(ctx.relax.TupleGetItem(t, 1))


@lowering("LpNormalization")
def _lp_norm(ctx, node, x):
    R = ctx.R
    axis = node.attrs["axis"] % ctx.rank(x)
    p = node.attrs["p"]
    if p == 1:
        norm = ctx.emit(R.sum(R.abs(x), [axis], True))
    elif p == 2:
        norm = ctx.emit(R.sqrt(R.sum(R.multiply(x, x), [axis], True)))
    else:
        raise ctx.fail(f"LpNormalization p={p}")
    dt = ctx.dtype(x)
    safe = R.where(R.equal(norm, ctx.scalar(0, dt)), ctx.scalar(1, dt), norm)
    return R.divide(x, safe)


@lowering("MeanVarianceNormalization")
def _mvn(ctx, node, x):
    R = ctx.R
    r = ctx.rank(x)
    dims = sorted({a % r for a in node.attrs["axes"]})
    mean = ctx.emit(R.mean(x, dims, True))
    d = ctx.emit(R.subtract(x, mean))
    std = ctx.emit(R.sqrt(R.mean(R.multiply(d, d), dims, True)))
    return R.divide(d, R.add(std, ctx.scalar(1e-9, ctx.dtype(x))))
