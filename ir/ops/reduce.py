"""Reductions, arg-reductions, softmax family, cumulative sum and top-k."""

from __future__ import annotations

from ..types import DType, TensorType
from ._common import INT, INTS, A, const_ints, norm_axis, op, require_float, same_float_type, unknown_shape_of_rank

REDUCTIONS = [
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
]


def reduced_shape(shape, axes, keepdims: bool):
    if shape is None:
        return None
    axes = sorted({norm_axis(a, len(shape), "reduction axis") for a in axes})
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce(ctx):
    """Reduce over ``axes`` (an optional int64 input); no axes means all axes unless
    ``noop_with_empty_axes``."""
    t = ctx.type(0)
    keep = bool(ctx.attr("keepdims"))
    if ctx.has(1):
        axes = const_ints(ctx, 1)
        if axes is None:  # axes only known at run time
            rank = t.rank if keep else None
            return [t.with_shape(unknown_shape_of_rank(rank))]
    else:
        axes = []
    if not axes:
        if ctx.attr("noop_with_empty_axes"):
            return [t]
        axes = list(range(t.rank)) if t.rank is not None else None
        if axes is None:
            return [t.with_shape(None)]
    return [t.with_shape(reduced_shape(t.shape, axes, keep))]


for _name in REDUCTIONS:
    op(_name, ["data", "axes?"], ["reduced"], attrs={"keepdims": A(INT, 1), "noop_with_empty_axes": A(INT, 0)})(_reduce)


def _argreduce(ctx):
    t = ctx.type(0)
    shape = reduced_shape(t.shape, [ctx.attr("axis")], bool(ctx.attr("keepdims")))
    return [TensorType(DType.INT64, shape)]


for _name in ("ArgMax", "ArgMin"):
    op(_name, ["data"], ["reduced"], attrs={"axis": A(INT, 0), "keepdims": A(INT, 1), "select_last_index": A(INT, 0)})(_argreduce)


def _softmax(ctx):
    require_float(ctx, 0)
    if ctx.type(0).rank is not None:
        norm_axis(ctx.attr("axis"), ctx.type(0).rank)
    return [ctx.type(0)]


for _name in ("Softmax", "LogSoftmax", "Hardmax"):
    op(_name, ["input"], ["output"], attrs={"axis": A(INT, -1)})(_softmax)


@op("CumSum", ["x", "axis"], attrs={"exclusive": A(INT, 0), "reverse": A(INT, 0)})
def _cumsum(ctx):
    return [ctx.type(0)]


@op("TopK", ["X", "K"], ["Values", "Indices"], attrs={"axis": A(INT, -1), "largest": A(INT, 1), "sorted": A(INT, 1)})
def _topk(ctx):
    t = ctx.type(0)
    k = const_ints(ctx, 1)
    shape = None
    if t.shape is not None:
        axis = norm_axis(ctx.attr("axis"), t.rank)
        shape = list(t.shape)
        shape[axis] = k[0] if k else None
    return [t.with_shape(shape), TensorType(DType.INT64, shape)]


op("LpNormalization", ["input"], ["output"], attrs={"axis": A(INT, -1), "p": A(INT, 2)})(same_float_type)
op("MeanVarianceNormalization", ["X"], attrs={"axes": A(INTS, (0, 2, 3))})(same_float_type)
