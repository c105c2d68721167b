"""Lowerings of the loss ops (ir/ops/loss.py): NegativeLogLikelihoodLoss and
SoftmaxCrossEntropyLoss.

The targets are data: they pick one class per position. A target outside ``[0, C)`` that is not
``ignore_index`` fails the run-time check (the interpreter's error, word for word). The pick is
a ``gather_elements`` of the targets clamped into ``[0, C)``, so even an unchecked build never
reads out of bounds; an ignored position gets weight 0.
"""

from __future__ import annotations

from ...ir.ops.loss import target_out_of_range
from . import lowering

_ACC = {"float16": "float32", "bfloat16": "float32"}


def _nll(ctx, node, logp, target, weight):
    """The reduced NLL loss of log-probabilities ``logp`` [N, C, ...] (float32/float64)."""
    R = ctx.R
    shp = ctx.shape(logp)
    if shp is None or not isinstance(shp[1], int):
        raise ctx.fail(f"{node.op} with a class count unknown at compile time")
    c = shp[1]
    dt = ctx.dtype(logp)
    ii = node.attrs["ignore_index"]
    tv = node.inputs[1]
    what = target_out_of_range(c, ii)
    if tv.const is not None:
        bad = (tv.const < 0) | (tv.const >= c)
        if ii is not None:
            bad &= tv.const != ii
        if bad.any():
            raise ctx.invalid(what)
    else:
        tirx = ctx.tirx

        def ok(v, pos, n):
            inside = tirx.And(v >= 0, v < n)
            return inside if ii is None else tirx.Or(inside, tirx.EQ(v, tirx.IntImm("int64", ii)))

        target = ctx.check_each(target, ok, what, [c])
    t = target if ctx.dtype(target) == "int64" else ctx.emit(R.astype(target, "int64"))
    zero_i, last = ctx.scalar(0, "int64"), ctx.scalar(c - 1, "int64")
    # Clamped too, so an unchecked build (build(..., checked=False)) never reads out of bounds.
    safe = ctx.emit(R.minimum(R.maximum(t, zero_i), last))
    picked = ctx.emit(R.squeeze(ctx.emit(R.gather_elements(logp, ctx.emit(R.expand_dims(safe, [1])), 1)), [1]))
    valid = ctx.emit(R.logical_and(R.greater_equal(t, zero_i), R.less_equal(t, last)))
    if ii is not None:
        valid = ctx.emit(R.logical_and(valid, R.not_equal(t, ctx.scalar(ii, "int64"))))
    zero, one = ctx.scalar(0, dt), ctx.scalar(1, dt)
    if weight is None:
        w = ctx.emit(R.where(valid, one, zero))
    else:
        wt = weight if ctx.dtype(weight) == dt else ctx.emit(R.astype(weight, dt))
        w = ctx.emit(R.where(valid, R.take(wt, safe, 0, mode="clip"), zero))
    loss = ctx.emit(R.negative(R.multiply(picked, w)))
    red = node.attrs["reduction"]
    if red == "none":
        return loss
    if red == "sum":
        return ctx.emit(R.sum(loss))
    if red == "mean":
        return ctx.emit(R.divide(R.sum(loss), R.sum(w)))
    raise ctx.fail(f"reduction {red!r}")


def _acc(ctx, x):
    dt = ctx.dtype(x)
    return x if dt not in _ACC else ctx.emit(ctx.R.astype(x, _ACC[dt]))


def _back(ctx, y, dt):
    return y if ctx.dtype(y) == dt else ctx.emit(ctx.R.astype(y, dt))


@lowering("NegativeLogLikelihoodLoss")
def _nll_loss(ctx, node, x, target, weight=None):
    dt = ctx.dtype(x)
    xs = _acc(ctx, x)
    return _back(ctx, _nll(ctx, node, xs, target, weight), dt)


@lowering("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx, node, scores, labels, weights=None):
    dt = ctx.dtype(scores)
    logp = ctx.emit(ctx.R.nn.log_softmax(_acc(ctx, scores), 1))
    loss = _back(ctx, _nll(ctx, node, logp, labels, weights), dt)
    return loss, _back(ctx, logp, dt)
