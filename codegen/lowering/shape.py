"""Lowerings of the data-movement and shape ops (ir/ops/shape.py).

Shape operands are read through ``ctx.operand_exprs`` (static or symbolic when the IR knows them,
read at run time otherwise). Where the IR already knows a node's whole output shape (its type
inference folded the shape chain), that shape is used directly: it is exact and keeps Relax's
shapes free of the clamps it would otherwise derive."""

from __future__ import annotations

import math

import numpy as np

from ...ir import DType
from ..lower import TVM_DTYPE
from . import lowering

_BIG = 2**62


def out_shape(ctx, node, i: int = 0):
    """The node's output shape as Relax dims, when the IR knows every dim; else None."""
    s = node.outputs[i].shape
    if s is None or any(d is None for d in s):
        return None
    return [ctx.int_or_expr(d) for d in s]


def _norm_axis(ctx, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _shape_tensor(ctx, dims):
    relax = ctx.relax
    return ctx.R.shape_to_tensor(relax.ShapeExpr([ctx.tirx.IntImm("int64", d) if isinstance(d, int) else d for d in dims]))


def _dims_of(ctx, x):
    s = ctx.shape(x)
    if s is None:
        raise ctx.fail("an input shape unknown at compile time")
    return s


@lowering("Shape")
def _shape(ctx, node, x):
    dims = _dims_of(ctx, x)
    r = len(dims)
    start, end = node.attrs["start"], node.attrs["end"]
    start = min(max(start + r if start < 0 else start, 0), r)
    end = r if end is None else min(max(end + r if end < 0 else end, 0), r)
    dims = dims[start:end]
    if not dims:
        return ctx.const(np.zeros(0, dtype=np.int64))
    if all(isinstance(d, int) for d in dims):
        return ctx.const(np.array(dims, dtype=np.int64))
    return _shape_tensor(ctx, dims)


@lowering("Size")
def _size(ctx, node, x):
    dims = _dims_of(ctx, x)
    n = 1
    for d in dims:
        n = n * d
    if isinstance(n, int):
        return ctx.const(np.array(n, dtype=np.int64))
    return ctx.R.reshape(ctx.emit(_shape_tensor(ctx, [n])), [])


@lowering("Reshape")
def _reshape(ctx, node, x, shape):
    known = out_shape(ctx, node)
    if known is not None:
        return ctx.R.reshape(x, known)
    target = ctx.known_ints(node.inputs[1])
    dims = _dims_of(ctx, x)
    allowzero = bool(node.attrs["allowzero"])
    if target is None:
        # A run-time target: reshape by the VM builtin (a view); the driver then matches the
        # result against the IR's type, binding fresh symbolic dims to the run-time extents.
        k = len(node.outputs[0].shape) if node.outputs[0].shape is not None else None
        sv = _runtime_reshape_target(ctx, node, shape, dims, allowzero)
        return ctx.relax.call_pure_packed("vm.builtin.reshape", x, sv,
                                          ty_args=ctx.relax.TensorType(dtype=ctx.dtype(x), ndim=k if k is not None else -1))
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(dims):
                raise ctx.fail("reshape target copies a dim the input does not have")
            d = dims[i]
        out.append(ctx.int_or_expr(d) if isinstance(d, str) else d)
    return ctx.R.reshape(x, out)


def _runtime_reshape_target(ctx, node, t, dims, allowzero):
    """A reshape target known only at run time: resolve 0 (copy) and -1 (infer) on the int64
    tensor, then read it as fresh symbolic dims."""
    R = ctx.R
    k = ctx.static_shape(t)
    if k is None or len(k) != 1:
        raise ctx.fail("a reshape target of unknown length")
    k = k[0]
    if ctx.dtype(t) != "int64":
        t = ctx.emit(R.astype(t, "int64"))
    zero, one, neg = (ctx.scalar(v, "int64") for v in (0, 1, -1))
    if not allowzero:
        src = list(dims[:k]) + [0] * max(0, k - len(dims))
        ins = ctx.emit(_shape_tensor(ctx, src)) if not all(isinstance(d, int) for d in src) else ctx.const(np.array(src, dtype=np.int64))
        t = ctx.emit(R.where(R.equal(t, zero), ins, t))
    total = 1
    for d in dims:
        total = total * d
    tot = ctx.const(np.array(total, dtype=np.int64)) if isinstance(total, int) else ctx.emit(R.reshape(ctx.emit(_shape_tensor(ctx, [total])), []))
    known = ctx.emit(R.prod(R.where(R.equal(t, neg), one, t)))
    t = ctx.emit(R.where(R.equal(t, neg), R.floor_divide(tot, known), t))
    return ctx.emit(R.tensor_to_shape(t))


def _pe(ctx, d):
    return ctx.tirx.IntImm("int64", d) if isinstance(d, int) else d


@lowering("Flatten")
def _flatten(ctx, node, x):
    known = out_shape(ctx, node)
    if known is not None:
        return ctx.R.reshape(x, known)
    dims = _dims_of(ctx, x)
    axis = node.attrs["axis"]
    if axis < 0:
        axis += len(dims)
    a = math.prod(dims[:axis]) if dims[:axis] else 1
    b = math.prod(dims[axis:]) if dims[axis:] else 1
    return ctx.R.reshape(x, [a, b])


@lowering("Transpose")
def _transpose(ctx, node, x):
    perm = node.attrs["perm"]
    if perm is None:
        perm = tuple(reversed(range(ctx.rank(x))))
    return ctx.R.permute_dims(x, list(perm))


@lowering("Squeeze")
def _squeeze(ctx, node, x, axes=None):
    known = out_shape(ctx, node)
    if known is not None:
        return ctx.R.reshape(x, known)
    if axes is None:
        return ctx.R.squeeze(x)
    ax = ctx.known_ints(node.inputs[1])
    if ax is None:
        raise ctx.fail("Squeeze axes known only at run time")
    return ctx.R.squeeze(x, [_norm_axis(ctx, a, ctx.rank(x)) for a in ax])


@lowering("Unsqueeze")
def _unsqueeze(ctx, node, x, axes):
    known = out_shape(ctx, node)
    if known is not None:
        return ctx.R.reshape(x, known)
    ax = ctx.known_ints(node.inputs[1])
    if ax is None:
        raise ctx.fail("Unsqueeze axes known only at run time")
    r = ctx.rank(x) + len(ax)
    return ctx.R.expand_dims(x, sorted(_norm_axis(ctx, a, r) for a in ax))


@lowering("Concat")
def _concat(ctx, node, *xs):
    axis = _norm_axis(ctx, node.attrs["axis"], ctx.rank(xs[0]))
    parts = [x for x, v in zip(xs, node.inputs) if not (v.shape is not None and v.shape[axis] == 0)]
    if not parts:
        parts = [xs[0]]
    if len(parts) == 1:
        return parts[0]
    return ctx.R.concat(parts, axis)


@lowering("Split")
def _split(ctx, node, x, split=None):
    dims = _dims_of(ctx, x)
    axis = _norm_axis(ctx, node.attrs["axis"], len(dims))
    n = len(node.outputs)
    if split is not None:
        sizes = ctx.known_ints(node.inputs[1])
        if sizes is None:
            raise ctx.fail("Split sizes known only at run time")
        sizes = [ctx.int_or_expr(s) for s in sizes]
    else:
        dim = dims[axis]
        if not isinstance(dim, int):
            return _tuple_items(ctx, ctx.emit(ctx.R.split(x, n, axis)), n)
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if n == 1:
        return (x,)
    if any(isinstance(sz, int) and sz == 0 for sz in sizes):
        # Relax's split wants strictly increasing indices: slice each part instead.
        parts, acc = [], 0
        for sz in sizes:
            parts.append(ctx.emit(ctx.R.strided_slice(x, [axis], [acc], [acc + sz], assume_inbound=True)))
            acc = acc + sz
        return tuple(parts)
    idx, acc = [], 0
    for s in sizes[:-1]:
        acc = acc + s
        idx.append(acc)
    return _tuple_items(ctx, ctx.emit(ctx.R.split(x, idx, axis)), n)


def _tuple_items(ctx, t, n):
    return tuple(ctx.emit(ctx.relax.TupleGetItem(t, i)) for i in range(n))


@lowering("Slice")
def _slice(ctx, node, x, starts, ends, axes=None, steps=None):
    dims = _dims_of(ctx, x)
    r = len(dims)
    st_ = ctx.known_ints(node.inputs[1])
    en_ = ctx.known_ints(node.inputs[2])
    ax_ = ctx.known_ints(node.inputs[3]) if axes is not None else None
    sp_ = ctx.known_ints(node.inputs[4]) if steps is not None else None
    if axes is not None and ax_ is None:
        raise ctx.fail("Slice axes known only at run time")
    if steps is not None and (sp_ is None or not all(isinstance(s, int) for s in sp_)):
        raise ctx.fail("Slice steps known only at run time")
    if st_ is None or en_ is None:
        # Bounds read at run time: let Relax clamp them.
        st_ = st_ if st_ is not None else ctx.operand_exprs(node.inputs[1], "slice starts")
        en_ = en_ if en_ is not None else ctx.operand_exprs(node.inputs[2], "slice ends")
        ax = [_norm_axis(ctx, a, r) for a in (ax_ if ax_ is not None else range(len(st_)))]
        sp = sp_ if sp_ is not None else [1] * len(st_)
        b = [ctx.int_or_expr(s) if isinstance(s, (int, str)) else s for s in st_]
        e = [ctx.int_or_expr(s) if isinstance(s, (int, str)) else s for s in en_]
        return ctx.R.strided_slice(x, ax, b, e, sp)
    ax = [_norm_axis(ctx, a, r) for a in (ax_ if ax_ is not None else range(len(st_)))]
    sp = sp_ if sp_ is not None else [1] * len(st_)
    if not len(st_) == len(en_) == len(ax) == len(sp):
        raise ctx.fail("starts, ends, axes and steps differ in length")
    out_axes, begins, endss, strides = [], [], [], []
    for s, e, a, step in zip(st_, en_, ax, sp):
        d = dims[a]
        if step == 0:
            raise ctx.fail("slice step 0")
        b, en = _slice_bounds(ctx, node, s, e, step, d)
        if b is None:
            raise ctx.fail(f"slice bounds {s}:{e}:{step} on a symbolic axis of extent {d}")
        if step == 1 and isinstance(b, int) and b == 0 and _same(ctx, en, d):
            continue  # the whole axis
        out_axes.append(a)
        begins.append(b)
        endss.append(en)
        strides.append(step)
    if not out_axes:
        return x
    pos = [i for i, st in enumerate(strides) if st > 0]
    neg = [i for i, st in enumerate(strides) if st < 0]
    y = x
    if pos:
        y = ctx.emit(ctx.R.strided_slice(y, [out_axes[i] for i in pos], [begins[i] for i in pos],
                                         [endss[i] for i in pos], [strides[i] for i in pos], assume_inbound=True))
    if neg:
        # Relax's in-bound mode miscounts negative strides; its clamping mode is exact here
        # (static extents, bounds already normalized by ONNX's rules).
        y = ctx.emit(ctx.R.strided_slice(y, [out_axes[i] for i in neg], [begins[i] for i in neg],
                                         [endss[i] for i in neg], [strides[i] for i in neg]))
    return y


def _same(ctx, a, b) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, int) or isinstance(b, int):
        return False
    return ctx.analyzer.can_prove_equal(a, b)


def _slice_bounds(ctx, node, s, e, step, d):
    """In-bound (begin, end) for one axis, ONNX clamping applied. ``s``/``e`` are ints or
    symbolic dim strings; ``d`` an int or PrimExpr."""
    if isinstance(d, int) and isinstance(s, int) and isinstance(e, int):
        if step > 0:
            b = min(max(s + d if s < 0 else s, 0), d)
            en = min(max(e + d if e < 0 else e, 0), d)
            en = max(en, b)
        else:
            b = min(max(s + d if s < 0 else s, 0), d - 1)
            en = min(max(e + d if e < 0 else e, -1), d - 1)
            if en > b:
                en = b
            if b < 0:  # empty axis
                b, en = 0, 0
            if en == -1:
                # Relax's strided_slice with a negative stride reads end=-1 as "from the end"
                # unless in-bound; -1 - d stays before the first element.
                en = -d - 1
        return b, en
    # Symbolic dim and/or symbolic bounds.
    if step > 0 and isinstance(s, int) and s >= 0 and isinstance(e, int) and e >= _BIG // 2:
        return (s if isinstance(d, int) or s == 0 else s), d
    if step > 0 and isinstance(s, int) and s >= 0 and isinstance(e, str):
        # e.g. position_ids[:, :seq] on a static table: in bounds when seq <= extent.
        if isinstance(d, int):
            ctx.assume(e, "<=", d, f"slice end of node {node.name}")
        return s, ctx.dim(e)
    if step > 0 and isinstance(s, int) and s >= 0 and isinstance(e, int) and e >= 0 and not isinstance(d, int):
        return None, None
    if step > 0 and isinstance(s, int) and isinstance(e, int) and s < 0 and e >= _BIG // 2 and not isinstance(d, int):
        return d + s, d
    if step > 0 and isinstance(s, int) and s >= 0 and isinstance(e, int) and e < 0 and not isinstance(d, int):
        return s, d + e
    return None, None


def _wrap(ctx, idx, extent):
    R = ctx.R
    dt = ctx.dtype(idx)
    if isinstance(extent, int):
        ext = ctx.scalar(extent, dt)
    else:
        ext = R.astype(R.reshape(ctx.emit(_shape_tensor(ctx, [extent])), []), dt)
    return R.where(R.less(idx, ctx.scalar(0, dt)), R.add(idx, ext), idx)


def _nonneg_const(v) -> bool:
    return v.const is not None and (v.const.size == 0 or int(v.const.min()) >= 0)


def _axis_and_indices(ctx, node, x, indices):
    """The gather axis, and the indices with negative ones wrapped (unless provably >= 0)."""
    dims = _dims_of(ctx, x)
    axis = _norm_axis(ctx, node.attrs["axis"], len(dims))
    if _nonneg_const(node.inputs[1]):
        return axis, indices
    return axis, ctx.emit(_wrap(ctx, indices, dims[axis]))


@lowering("Gather")
def _gather(ctx, node, x, indices):
    axis, idx = _axis_and_indices(ctx, node, x, indices)
    # Indices known only at run time (token ids) must never read out of bounds: an id past
    # the table is clamped instead of crashing the process ("fast" mode would segfault).
    mode = "fast" if node.inputs[1].is_constant else "clip"
    return ctx.R.take(x, idx, axis, mode=mode)


@lowering("GatherElements")
def _gather_elements(ctx, node, x, indices):
    axis, idx = _axis_and_indices(ctx, node, x, indices)
    return ctx.R.gather_elements(x, idx, axis)


@lowering("GatherND")
def _gather_nd(ctx, node, x, indices):
    return ctx.R.gather_nd(x, indices, node.attrs["batch_dims"])


_SCATTER_RED = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


@lowering("ScatterND")
def _scatter_nd(ctx, node, x, indices, updates):
    red = node.attrs["reduction"]
    if red not in _SCATTER_RED:
        raise ctx.fail(f"ScatterND reduction {red!r}")
    return ctx.R.scatter_nd(x, indices, updates, _SCATTER_RED[red])


@lowering("ScatterElements")
def _scatter_elements(ctx, node, x, indices, updates):
    red = node.attrs["reduction"]
    if red not in _SCATTER_RED:
        raise ctx.fail(f"ScatterElements reduction {red!r}")
    dims = _dims_of(ctx, x)
    axis = _norm_axis(ctx, node.attrs["axis"], len(dims))
    idx = indices if _nonneg_const(node.inputs[1]) else ctx.emit(_wrap(ctx, indices, dims[axis]))
    return ctx.R.scatter_elements(x, idx, updates, axis, _SCATTER_RED[red])


@lowering("Expand")
def _expand(ctx, node, x, shape):
    known = out_shape(ctx, node)
    if known is None:
        target = ctx.operand_exprs(node.inputs[1], "expand shape")
        dims = _dims_of(ctx, x)
        r = max(len(dims), len(target))
        dims = [1] * (r - len(dims)) + list(dims)
        target = [1] * (r - len(target)) + list(target)
        known = []
        for d, t in zip(dims, target):
            if isinstance(t, int) and t == 1:
                known.append(d)
            elif isinstance(d, int) and d == 1:
                known.append(t)
            else:
                known.append(d)  # equal or an error either way: keep the input's extent
    if ctx.shape(x) is not None and len(known) == len(ctx.shape(x)) and all(_same(ctx, a, b) for a, b in zip(known, ctx.shape(x))):
        return x
    return ctx.R.broadcast_to(x, known)


@lowering("Tile")
def _tile(ctx, node, x, repeats):
    reps = ctx.known_ints(node.inputs[1])
    if reps is None or not all(isinstance(r, int) for r in reps):
        raise ctx.fail("Tile repeats known only at run time")
    if ctx.rank(x) == 0:
        return x
    return ctx.R.tile(x, reps)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@lowering("Pad")
def _pad(ctx, node, x, pads, constant_value=None, axes=None):
    r = ctx.rank(x)
    p = ctx.known_ints(node.inputs[1])
    if p is None or not all(isinstance(v, int) for v in p):
        raise ctx.fail("Pad pads known only at run time")
    if axes is not None:
        ax = ctx.known_ints(node.inputs[3])
        if ax is None:
            raise ctx.fail("Pad axes known only at run time")
        ax = [_norm_axis(ctx, a, r) for a in ax]
    else:
        ax = list(range(r))
    n = len(ax)
    lo, hi = [0] * r, [0] * r
    for i, a in enumerate(ax):
        lo[a], hi[a] = p[i], p[i + n]
    if any(v < 0 for v in lo + hi):
        raise ctx.fail("negative pads")
    mode = node.attrs["mode"]
    if mode not in _PAD_MODES:
        raise ctx.fail(f"Pad mode {mode!r}")
    if not any(lo) and not any(hi):
        return x
    value = 0.0
    if constant_value is not None:
        cv = node.inputs[2].const
        if cv is None:
            raise ctx.fail("Pad constant_value known only at run time")
        value = cv.reshape(-1)[0].item() if cv.size else 0
    width = []
    for a in range(r):
        width += [lo[a], hi[a]]
    if ctx.dtype(x) == "bool":
        y = ctx.emit(ctx.R.astype(x, "uint8"))
        return ctx.R.astype(ctx.R.nn.pad(y, width, _PAD_MODES[mode], float(bool(value))), "bool")
    return ctx.R.nn.pad(x, width, _PAD_MODES[mode], float(value))


@lowering("ConstantOfShape")
def _constant_of_shape(ctx, node, shape):
    value = node.attrs["value"]
    if value is None:
        value = np.zeros(1, dtype=np.float32)
    value = np.asarray(value).reshape(-1)
    dt = TVM_DTYPE[DType.from_numpy(value.dtype)]
    known = out_shape(ctx, node)
    dims = known if known is not None else ctx.operand_exprs(node.inputs[0], "constant shape")
    fill = ctx.scalar(value[0], dt)
    if not dims:
        return fill
    if all(isinstance(d, int) for d in dims):
        return ctx.const(np.full(dims, value[0], dtype=value.dtype))
    return ctx.R.full(dims, fill, dt)


@lowering("Range")
def _range(ctx, node, start, limit, delta):
    vs = node.inputs
    dt = TVM_DTYPE[vs[0].dtype]
    consts = [v.const for v in vs]
    if all(c is not None for c in consts):
        s, lim, d = (c.reshape(-1)[0].item() for c in consts)
        if d == 0:
            raise ctx.fail("Range delta 0")
        n = max(math.ceil((lim - s) / d), 0)
        return ctx.const((s + np.arange(n, dtype=np.float64 if vs[0].dtype.is_float else np.int64) * d).astype(dt))
    if vs[0].dtype.is_float:
        raise ctx.fail("a float Range known only at run time")
    s, lim, d = (ctx.scalar_operand(v, n) for v, n in zip(vs, ("range start", "range limit", "range delta")))
    if isinstance(d, int) and d == 1 and isinstance(s, int) and s == 0:
        return ctx.R.arange(0, lim, 1, dt)
    if not isinstance(d, int):
        raise ctx.fail("a Range step known only at run time")
    return ctx.R.arange(s, lim, d, dt)


@lowering("Trilu")
def _trilu(ctx, node, x, k=None):
    kk = 0
    if k is not None:
        kv = ctx.known_ints(node.inputs[1])
        if kv is None:
            raise ctx.fail("Trilu k known only at run time")
        kk = kv[0]
    fn = ctx.R.triu if node.attrs["upper"] else ctx.R.tril
    if ctx.dtype(x) == "bool":
        return ctx.R.astype(fn(ctx.emit(ctx.R.astype(x, "uint8")), kk), "bool")
    return fn(x, kk)


@lowering("NonZero")
def _nonzero(ctx, node, x):
    return ctx.R.nonzero(x)


@lowering("OneHot")
def _one_hot(ctx, node, indices, depth, values):
    R = ctx.R
    d = ctx.known_ints(node.inputs[1]) if node.inputs[1].const is None or node.inputs[1].dtype.is_int else None
    if d is None and node.inputs[1].const is not None:
        d = [int(node.inputs[1].const.reshape(-1)[0])]
    if d is None or not isinstance(d[0], int):
        raise ctx.fail("OneHot depth known only at run time")
    depth_n = d[0]
    idx = indices
    if node.inputs[0].dtype.is_float:
        idx = ctx.emit(R.astype(R.trunc(idx), "int64"))
    elif ctx.dtype(idx) != "int64":
        idx = ctx.emit(R.astype(idx, "int64"))
    idx = ctx.emit(_wrap(ctx, idx, depth_n))
    r = ctx.rank(idx) + 1
    axis = _norm_axis(ctx, node.attrs["axis"], r)
    ar = ctx.const(np.arange(depth_n, dtype=np.int64).reshape([1] * axis + [depth_n] + [1] * (r - axis - 1)))
    hot = ctx.emit(R.equal(R.expand_dims(idx, [axis]), ar))
    off = ctx.emit(R.take(values, ctx.const(np.array(0, dtype=np.int64)), 0))
    on = ctx.emit(R.take(values, ctx.const(np.array(1, dtype=np.int64)), 0))
    return R.where(hot, on, off)


@lowering("EyeLike")
def _eye_like(ctx, node, x):
    dt = node.attrs["dtype"] or node.inputs[0].dtype
    shp = ctx.static_shape(x)
    if shp is None or len(shp) != 2:
        raise ctx.fail("EyeLike needs a static 2-D input")
    rows, cols = shp
    eye = (np.arange(rows)[:, None] + node.attrs["k"]) == np.arange(cols)[None, :]
    return ctx.const(eye.astype(dt.numpy))


@lowering("DepthToSpace")
def _depth_to_space(ctx, node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = _dims_of(ctx, x)
    R = ctx.R
    mode = node.attrs["mode"]
    if mode == "DCR":
        y = ctx.emit(R.permute_dims(ctx.emit(R.reshape(x, [n, b, b, c // b // b, h, w])), [0, 3, 4, 1, 5, 2]))
    elif mode == "CRD":
        y = ctx.emit(R.permute_dims(ctx.emit(R.reshape(x, [n, c // b // b, b, b, h, w])), [0, 1, 4, 2, 5, 3]))
    else:
        raise ctx.fail(f"DepthToSpace mode {mode!r}")
    return R.reshape(y, [n, c // b // b, h * b, w * b])


@lowering("SpaceToDepth")
def _space_to_depth(ctx, node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = _dims_of(ctx, x)
    R = ctx.R
    y = ctx.emit(R.permute_dims(ctx.emit(R.reshape(x, [n, c, h // b, b, w // b, b])), [0, 3, 5, 1, 2, 4]))
    return R.reshape(y, [n, c * b * b, h // b, w // b])
