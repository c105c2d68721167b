"""Data-movement and shape ops: Shape, Reshape, Transpose, Concat, Slice, Gather, Expand, ...

Shape operands (a reshape target, slice bounds, gather indices) are inputs, as in ONNX, so a
graph can compute them at run time. Type inference reads them when they are constants or
symbolic values, which is what keeps shapes known through exporters' shape chains.
"""

from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import InvalidValueError, IRError
from ..symbolic import div_dims, mul_dims
from ..types import DType, TensorType
from ._common import DTYPE, FLOAT, INT, INTS, STRING, TENSOR, A, broadcast_shapes, const_ints, norm_axis, op, unknown_shape_of_rank


def _shape_slice(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return None
    r = len(shape)
    start, end = ctx.attr("start"), ctx.attr("end")
    start = min(max(start + r if start < 0 else start, 0), r)
    end = r if end is None else min(max(end + r if end < 0 else end, 0), r)
    return shape[start:end]


@op("Shape", ["data"], ["shape"], attrs={"start": A(INT, 0), "end": A(INT, None)},
    sym=lambda ctx: [_shape_slice(ctx)])
def _shape(ctx):
    dims = _shape_slice(ctx)
    return [TensorType(DType.INT64, (None if dims is None else len(dims),))]


@op("Size", ["data"], ["size"], sym=lambda ctx: [(mul_dims(ctx.shape(0)),)] if ctx.shape(0) is not None else [None])
def _size(ctx):
    return [TensorType(DType.INT64, ())]


def _length_of(ctx, i: int) -> int | None:
    """The static length of 1-D input ``i`` (a shape operand): the rank it describes."""
    n = ctx.shape(i)
    return n[0] if n and isinstance(n[0], int) else None


def reshape_target(in_shape, target, allowzero: bool):
    """The output shape of Reshape(in_shape -> target); target entries may be symbolic."""
    out = list(target)
    if not allowzero:
        for i, d in enumerate(out):
            if d == 0:
                if in_shape is None or i >= len(in_shape):
                    out[i] = None
                else:
                    out[i] = in_shape[i]
    if out.count(-1) > 1:
        raise IRError("reshape target has more than one -1")
    if -1 in out:
        k = out.index(-1)
        known = [d for i, d in enumerate(out) if i != k]
        total = mul_dims(in_shape) if in_shape is not None else None
        rest = mul_dims(known)
        out[k] = div_dims(total, rest) if total is not None and rest is not None else None
    elif in_shape is not None and all(isinstance(d, int) for d in in_shape) and all(isinstance(d, int) for d in out):
        if int(np.prod(in_shape)) != int(np.prod(out)):
            raise IRError(f"cannot reshape {list(in_shape)} to {list(target)}")
    return tuple(out)


@op("Reshape", ["data", "shape"], ["reshaped"], attrs={"allowzero": A(INT, 0)},
    sym=lambda ctx: [ctx.sym(0)])
def _reshape(ctx):
    t = ctx.type(0)
    target = ctx.sym(1)
    if target is None:
        c = ctx.const(1)
        target = None if c is None else [int(x) for x in c]
    if target is None:
        return [t.with_shape(unknown_shape_of_rank(_length_of(ctx, 1)))]
    return [t.with_shape(reshape_target(t.shape, target, bool(ctx.attr("allowzero"))))]


@op("Flatten", ["input"], ["output"], attrs={"axis": A(INT, 1)})
def _flatten(ctx):
    t = ctx.type(0)
    if t.shape is None:
        return [t.with_shape((None, None))]
    r = t.rank
    axis = ctx.attr("axis")
    if not -r <= axis <= r:
        raise ctx.fail(f"axis {axis} out of range for rank {r}")
    if axis < 0:
        axis += r
    return [t.with_shape((mul_dims(t.shape[:axis]), mul_dims(t.shape[axis:])))]


@op("Transpose", ["data"], ["transposed"], attrs={"perm": A(INTS, None)})
def _transpose(ctx):
    t = ctx.type(0)
    perm = ctx.attr("perm")
    if t.shape is None:
        return [t]
    if perm is None:
        perm = tuple(reversed(range(t.rank)))
    if sorted(perm) != list(range(t.rank)):
        raise ctx.fail(f"perm {list(perm)} is not a permutation of rank {t.rank}")
    return [t.with_shape(tuple(t.shape[p] for p in perm))]


def _squeeze_shape(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return None
    axes = const_ints(ctx, 1) if ctx.has(1) else None
    if ctx.has(1) and axes is None:
        return None
    if axes is None:
        if any(not isinstance(d, int) for d in shape):
            return None
        return tuple(d for d in shape if d != 1)
    axes = {norm_axis(a, len(shape)) for a in axes}
    for a in axes:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise IRError(f"cannot squeeze axis {a} of extent {shape[a]}")
    return tuple(d for i, d in enumerate(shape) if i not in axes)


@op("Squeeze", ["data", "axes?"], ["squeezed"], sym=lambda ctx: [ctx.sym(0)])
def _squeeze(ctx):
    return [ctx.type(0).with_shape(_squeeze_shape(ctx))]


def _unsqueeze_shape(ctx):
    shape = ctx.shape(0)
    axes = const_ints(ctx, 1)
    if shape is None or axes is None:
        return None
    r = len(shape) + len(axes)
    axes = {norm_axis(a, r) for a in axes}
    if len(axes) != len(const_ints(ctx, 1)):
        raise IRError("unsqueeze axes repeat")
    it = iter(shape)
    return tuple(1 if i in axes else next(it) for i in range(r))


@op("Unsqueeze", ["data", "axes"], ["expanded"], sym=lambda ctx: [ctx.sym(0)])
def _unsqueeze(ctx):
    return [ctx.type(0).with_shape(_unsqueeze_shape(ctx))]


def _concat_sym(ctx):
    parts = [ctx.sym(i) for i in range(len(ctx))]
    if any(p is None for p in parts) or ctx.attr("axis") not in (0, -1):
        return [None]
    return [tuple(d for p in parts for d in p)]


@op("Concat", ["inputs*"], ["concat_result"], attrs={"axis": A(INT)}, sym=_concat_sym)
def _concat(ctx):
    ts = [ctx.type(i) for i in range(len(ctx))]
    dts = {t.dtype for t in ts}
    if len(dts) != 1:
        raise ctx.fail("inputs must share an element type")
    shapes = [t.shape for t in ts]
    if any(s is None for s in shapes):
        known = next((s for s in shapes if s is not None), None)
        return [ts[0].with_shape(unknown_shape_of_rank(None if known is None else len(known)))]
    r = len(shapes[0])
    if any(len(s) != r for s in shapes):
        raise ctx.fail("inputs must share a rank")
    axis = norm_axis(ctx.attr("axis"), r)
    out = []
    for i in range(r):
        if i == axis:
            ds = [s[i] for s in shapes]
            total = 0
            for d in ds:
                total = None if total is None or d is None else _add(total, d)
            out.append(total)
        else:
            out.append(next((s[i] for s in shapes if s[i] is not None), None))
    return [ts[0].with_shape(tuple(out))]


def _add(a, b):
    from ..symbolic import add_dims

    return add_dims(a, b)


@op("Split", ["input", "split?"], ["outputs*"], attrs={"axis": A(INT, 0), "num_outputs": A(INT, None)})
def _split(ctx):
    t = ctx.type(0)
    n = ctx.num_outputs
    if t.shape is None:
        return [t] * n
    axis = norm_axis(ctx.attr("axis"), t.rank)
    dim = t.shape[axis]
    if ctx.has(1):
        sizes = const_ints(ctx, 1)
        if sizes is not None and len(sizes) != n:
            raise ctx.fail(f"split has {len(sizes)} sizes for {n} outputs")
    elif isinstance(dim, int):
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    else:
        q = div_dims(dim, n)
        sizes = [q] * n
    outs = []
    for i in range(n):
        shape = list(t.shape)
        shape[axis] = sizes[i] if sizes is not None else None
        outs.append(t.with_shape(shape))
    return outs


def _slice_dims(ctx):
    """Per-axis (start, end, step) when every operand is known."""
    starts, ends = const_ints(ctx, 1), const_ints(ctx, 2)
    axes = const_ints(ctx, 3) if ctx.has(3) else None
    steps = const_ints(ctx, 4) if ctx.has(4) else None
    if starts is None or ends is None or (ctx.has(3) and axes is None) or (ctx.has(4) and steps is None):
        return None
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    return starts, ends, axes, steps


def sliced_extent(dim, start, end, step):
    if step == 0:
        raise IRError("slice step cannot be 0")
    if not isinstance(dim, int):
        # Symbolic extent: only the whole-range slices are known.
        big = 2**62
        if step == 1 and start == 0 and end >= big // 2:
            return dim
        if step == -1 and start == -1 and end <= -big // 2:
            return dim
        return None
    if step > 0:
        s = min(max(start + dim if start < 0 else start, 0), dim)
        e = min(max(end + dim if end < 0 else end, 0), dim)
        return max(0, -(-(e - s) // step))
    s = min(max(start + dim if start < 0 else start, 0), dim - 1)  # ONNX clamps to [0, dim-1]
    e = min(max(end + dim if end < 0 else end, -1), dim - 1)
    return max(0, -(-(s - e) // -step))


def _slice_sym(ctx):
    data = ctx.sym(0)
    parts = _slice_dims(ctx)
    if data is None or parts is None:
        return [None]
    starts, ends, axes, steps = parts
    if len(axes) != 1 or norm_axis(axes[0], 1) != 0:
        return [None]
    idx = list(range(len(data)))[slice(starts[0], ends[0], steps[0])]
    return [tuple(data[i] for i in idx)]


@op("Slice", ["data", "starts", "ends", "axes?", "steps?"], ["output"], sym=_slice_sym)
def _slice(ctx):
    t = ctx.type(0)
    if t.shape is None:
        return [t]
    parts = _slice_dims(ctx)
    if parts is None:
        axes = const_ints(ctx, 3) if ctx.has(3) else None
        shape = list(t.shape)
        if axes is not None:
            for a in axes:
                shape[norm_axis(a, t.rank)] = None
            return [t.with_shape(shape)]
        return [t.with_shape(unknown_shape_of_rank(t.rank))]
    starts, ends, axes, steps = parts
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        raise ctx.fail("starts, ends, axes and steps must have the same length")
    shape = list(t.shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = norm_axis(a, t.rank)
        shape[a] = sliced_extent(shape[a], s, e, st)
    return [t.with_shape(shape)]


def check_const_indices(ctx, i: int, extent, axis: int, component: int | None = None) -> None:
    """A constant index input ``i`` out of ``[-extent, extent)`` is an error when the graph is
    built or verified (the message of ``ir/checks.py``, as both backends give at run time);
    ``component`` selects one entry of the last axis (GatherND/ScatterND tuples)."""
    c = ctx.const(i)
    if c is None or not isinstance(extent, int) or c.size == 0 or c.dtype.kind not in "iu":
        return
    if component is not None:
        if c.ndim == 0 or component >= c.shape[-1]:
            return
        c = c[..., component]
    if c.size and (int(c.min()) < -extent or int(c.max()) >= extent):
        raise InvalidValueError(checks.index_out_of_range(extent, axis))


def _check_nd_indices(ctx, batch_dims: int) -> None:
    t, c = ctx.type(0), ctx.const(1)
    if t.shape is None or c is None or c.ndim == 0:
        return
    for k in range(min(c.shape[-1], len(t.shape) - batch_dims)):
        check_const_indices(ctx, 1, t.shape[batch_dims + k], batch_dims + k, component=k)


def _gather_sym(ctx):
    data, idx = ctx.sym(0), const_ints(ctx, 1)
    if data is None or idx is None or ctx.attr("axis") not in (0, -1) or ctx.type(0).rank != 1:
        return [None]
    n = len(data)
    return [tuple(data[i + n if i < 0 else i] for i in idx)]


@op("Gather", ["data", "indices"], ["output"], attrs={"axis": A(INT, 0)}, sym=_gather_sym)
def _gather(ctx):
    t, it = ctx.type(0), ctx.type(1)
    if not it.dtype.is_int:
        raise ctx.fail("indices must be integers")
    if t.shape is None or it.shape is None:
        return [t.with_shape(None)]
    axis = norm_axis(ctx.attr("axis"), t.rank)
    check_const_indices(ctx, 1, t.shape[axis], axis)
    return [t.with_shape(t.shape[:axis] + it.shape + t.shape[axis + 1:])]


@op("GatherElements", ["data", "indices"], ["output"], attrs={"axis": A(INT, 0)})
def _gather_elements(ctx):
    t = ctx.type(0)
    if t.shape is not None:
        axis = norm_axis(ctx.attr("axis"), t.rank)
        check_const_indices(ctx, 1, t.shape[axis], axis)
    return [t.with_shape(ctx.shape(1))]


@op("GatherND", ["data", "indices"], ["output"], attrs={"batch_dims": A(INT, 0)})
def _gather_nd(ctx):
    t, ishape = ctx.type(0), ctx.shape(1)
    b = ctx.attr("batch_dims")
    _check_nd_indices(ctx, b)
    if t.shape is None or ishape is None or not isinstance(ishape[-1], int):
        return [t.with_shape(None)]
    k = ishape[-1]
    return [t.with_shape(tuple(ishape[:-1]) + tuple(t.shape[b + k:]))]


@op("ScatterND", ["data", "indices", "updates"], ["output"], attrs={"reduction": A(STRING, "none")})
def _scatter_nd(ctx):
    _check_nd_indices(ctx, 0)
    return [ctx.type(0)]


@op("ScatterElements", ["data", "indices", "updates"], ["output"], attrs={"axis": A(INT, 0), "reduction": A(STRING, "none")})
def _scatter_elements(ctx):
    t = ctx.type(0)
    if t.shape is not None:
        check_const_indices(ctx, 1, t.shape[norm_axis(ctx.attr("axis"), t.rank)], norm_axis(ctx.attr("axis"), t.rank))
    return [t]


@op("Expand", ["input", "shape"], ["output"])
def _expand(ctx):
    t = ctx.type(0)
    target = ctx.sym(1)
    if target is None:
        rank = _length_of(ctx, 1)
        if rank is None or t.shape is None:
            return [t.with_shape(unknown_shape_of_rank(rank))]
        return [t.with_shape(unknown_shape_of_rank(max(rank, t.rank)))]
    return [t.with_shape(broadcast_shapes(t.shape, tuple(target)))]


@op("Tile", ["input", "repeats"], ["output"])
def _tile(ctx):
    t = ctx.type(0)
    reps = const_ints(ctx, 1)
    if t.shape is None:
        return [t]
    if reps is None:
        return [t.with_shape(unknown_shape_of_rank(t.rank))]
    return [t.with_shape(tuple(mul_dims([d, r]) for d, r in zip(t.shape, reps)))]


@op("Pad", ["data", "pads", "constant_value?", "axes?"], ["output"], attrs={"mode": A(STRING, "constant")})
def _pad(ctx):
    t = ctx.type(0)
    pads = const_ints(ctx, 1)
    if t.shape is None:
        return [t]
    if pads is None:
        return [t.with_shape(unknown_shape_of_rank(t.rank))]
    axes = const_ints(ctx, 3) if ctx.has(3) else list(range(t.rank))
    if axes is None:
        return [t.with_shape(unknown_shape_of_rank(t.rank))]
    axes = [norm_axis(a, t.rank) for a in axes]
    n = len(axes)
    if len(pads) != 2 * n:
        raise ctx.fail(f"pads has {len(pads)} entries for {n} axes")
    shape = list(t.shape)
    for k, a in enumerate(axes):
        d = shape[a]
        shape[a] = d + pads[k] + pads[k + n] if isinstance(d, int) else (d if pads[k] == pads[k + n] == 0 else None)
    return [t.with_shape(shape)]


def _constant_of_shape_sym(ctx):
    target, value = ctx.sym(0), ctx.attr("value")
    if target is None or len(target) != 1 or not isinstance(target[0], int) or target[0] > 64:
        return [None]
    if value is None or value.dtype.kind not in "iub":
        return [None]
    return [(int(value.reshape(-1)[0]),) * target[0]]


@op("ConstantOfShape", ["input"], ["output"], attrs={"value": A(TENSOR, None)}, sym=_constant_of_shape_sym)
def _constant_of_shape(ctx):
    value = ctx.attr("value")
    dtype = DType.FLOAT32 if value is None else DType.from_numpy(value.dtype)
    target = ctx.sym(0)
    if target is None:
        return [TensorType(dtype, unknown_shape_of_rank(_length_of(ctx, 0)))]
    return [TensorType(dtype, tuple(target))]


@op("Range", ["start", "limit", "delta"], ["output"])
def _range(ctx):
    dt = ctx.dtype(0)
    s, l, d = (ctx.sym(i) for i in range(3))
    if s and l and d:
        s, l, d = s[0], l[0], d[0]
        if isinstance(s, int) and isinstance(l, int) and isinstance(d, int):
            return [TensorType(dt, (max(0, -(-(l - s) // d)),))]
        if s == 0 and d == 1:
            return [TensorType(dt, (l,))]
    cs, cl, cd = (ctx.const(i) for i in range(3))
    if cs is not None and cl is not None and cd is not None:
        n = int(max(np.ceil((float(cl) - float(cs)) / float(cd)), 0))
        return [TensorType(dt, (n,))]
    return [TensorType(dt, (None,))]


@op("Trilu", ["input", "k?"], ["output"], attrs={"upper": A(INT, 1)})
def _trilu(ctx):
    return [ctx.type(0)]


@op("NonZero", ["X"], ["Y"])
def _nonzero(ctx):
    return [TensorType(DType.INT64, (ctx.type(0).rank, None))]


@op("OneHot", ["indices", "depth", "values"], ["output"], attrs={"axis": A(INT, -1)})
def _onehot(ctx):
    ishape = ctx.shape(0)
    depth = const_ints(ctx, 1)
    if ishape is None:
        return [ctx.type(2).with_shape(None)]
    r = len(ishape) + 1
    axis = norm_axis(ctx.attr("axis"), r)
    shape = list(ishape)
    shape.insert(axis, depth[0] if depth else None)
    return [ctx.type(2).with_shape(shape)]


@op("EyeLike", ["input"], ["output"], attrs={"dtype": A(DTYPE, None), "k": A(INT, 0)})
def _eyelike(ctx):
    dt = ctx.attr("dtype") or ctx.dtype(0)
    return [TensorType(dt, ctx.shape(0))]


@op("DepthToSpace", ["input"], ["output"], attrs={"blocksize": A(INT), "mode": A(STRING, "DCR")})
def _depth_to_space(ctx):
    t = ctx.type(0)
    b = ctx.attr("blocksize")
    if t.shape is None:
        return [t]
    n, c, h, w = t.shape
    return [t.with_shape((n, div_dims(c, b * b), mul_dims([h, b]), mul_dims([w, b])))]


@op("SpaceToDepth", ["input"], ["output"], attrs={"blocksize": A(INT)})
def _space_to_depth(ctx):
    t = ctx.type(0)
    b = ctx.attr("blocksize")
    if t.shape is None:
        return [t]
    n, c, h, w = t.shape
    return [t.with_shape((n, mul_dims([c, b * b]), div_dims(h, b), div_dims(w, b)))]


del FLOAT
