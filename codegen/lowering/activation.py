"""Lowerings of ir/ops/activation.py: Swish, SwiGLU, Shrink (half precision computed in
float32, as the interpreter)."""

from __future__ import annotations

from . import lowering

_HALF = ("float16", "bfloat16")


def _swish(ctx, x, alpha: float):
    R = ctx.R
    dt = ctx.dtype(x)
    xs = ctx.emit(R.astype(x, "float32")) if dt in _HALF else x
    wt = ctx.dtype(xs)
    y = ctx.emit(R.multiply(xs, R.sigmoid(R.multiply(xs, ctx.scalar(alpha, wt)))))
    return ctx.emit(R.astype(y, dt)) if dt in _HALF else y


@lowering("Swish")
def _swish_op(ctx, node, x):
    return _swish(ctx, x, node.attrs["alpha"])


@lowering("SwiGLU")
def _swiglu(ctx, node, a, b):
    return ctx.R.multiply(_swish(ctx, a, node.attrs["alpha"]), b)


@lowering("Shrink")
def _shrink(ctx, node, x):
    R = ctx.R
    dt = ctx.dtype(x)
    wt = dt if dt.startswith("float") else "float64"
    xs = x if wt == dt else ctx.emit(R.astype(x, wt))
    lambd, bias = node.attrs["lambd"], node.attrs["bias"]
    y = R.where(R.less(xs, ctx.scalar(-lambd, wt)), R.add(xs, ctx.scalar(bias, wt)),
                R.where(R.greater(xs, ctx.scalar(lambd, wt)), R.subtract(xs, ctx.scalar(bias, wt)), ctx.scalar(0, wt)))
    return y if wt == dt else R.astype(ctx.emit(y), dt)
