"""Lowerings of the data-movement and shape ops (ir/ops/shape.py).

Shape operands are read through ``ctx.operand_exprs`` (static or symbolic when the IR knows them,
read at run time otherwise). Where the IR already knows a node's whole output shape (its type
inference folded the shape chain), that shape is used directly: it is exact and keeps Relax's
shapes free of the clamps it would otherwise derive."""

from __future__ import annotations

import functools
import math

import numpy as np

from ...ir import DType
from ...ir import checks
from ..lower import TVM_DTYPE
from . import dynamic, lowering

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
        sv, ns, total = _runtime_reshape_target(ctx, node, shape, dims, allowzero)
        # The builtin makes a view of any shape that fits in the buffer: check it is this one.
        x = ctx.check_once(x, lambda tot, *n: functools.reduce(lambda a, b: a & b, [d >= 0 for d in n])
                           & (functools.reduce(lambda a, b: a * b, n) == tot),
                           checks.cannot_reshape(node.inputs[0].shape), [total, *ns])
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
    tensor, then read it as fresh symbolic dims. Returns ``(shape value, its dims, the input's
    element count)``; the caller checks they fit (a second -1, a negative dim, a wrong count)."""
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
    # never divide by 0 (SIGFPE): a 0 next to a -1 leaves a shape the caller's check refuses
    known = ctx.emit(R.add(known, R.astype(R.equal(known, zero), "int64")))
    t = ctx.emit(R.where(R.equal(t, neg), R.floor_divide(tot, known), t))
    sv, ns = ctx.runtime_shape_var(t, "reshape target")
    return sv, ns, total


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
        # Bounds read at run time.
        n = len(st_) if st_ is not None else (ctx.static_shape(starts) or [None])[0]
        if n is None:
            raise ctx.fail("Slice starts of unknown length")
        ax = [_norm_axis(ctx, a, r) for a in (ax_ if ax_ is not None else range(n))]
        sp = sp_ if sp_ is not None else [1] * n
        if not n == len(ax) == len(sp):
            raise ctx.fail("starts, ends, axes and steps differ in length")
        # ONNX's clamping, on the bound tensors before they are read as shape values (Relax
        # assumes those are >= 0; its own clamping mode gives a negative extent, a failed
        # allocation or a mis-sized output when the start passes the end or a bound is negative).
        # Axes with a negative step are flipped and sliced forwards.
        if any(st == 0 for st in sp):
            raise ctx.fail("slice step 0")
        bt, et = _runtime_bounds(ctx, node, [dims[a] for a in ax], sp)
        y = x
        for a, st in zip(ax, sp):
            if st < 0:
                y = ctx.emit(ctx.R.flip(y, a))
        return ctx.R.strided_slice(y, ax, bt, et, [abs(st) for st in sp], assume_inbound=True)
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
    x = ctx.enforce_assumptions(x)
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
    if step < 0:
        return None, None
    if isinstance(s, int) and s >= 0 and isinstance(e, str) and isinstance(d, int):
        # e.g. position_ids[:, :seq] on a static table: in bounds when seq <= extent (an
        # assumption, checked at run time, keeps the shape [1, seq] instead of min(seq, 512)).
        ctx.assume(e, "<=", d, f"slice end of node {node.name}")
        en = ctx.dim(e)
        return s, (en if s == 0 else ctx.analyzer.simplify(ctx.tirx.max(en, s)))
    return _clamped_bounds(ctx, s if isinstance(s, int) else ctx.dim(s), e if isinstance(e, int) else ctx.dim(e), d)


def _bound_tensor(ctx, v, what: str):
    """A Slice starts/ends operand as an int64 tensor (its run-time value, or its known one)."""
    known = ctx.known_ints(v)
    if known is None:
        t = ctx[v]
        return t if ctx.dtype(t) == "int64" else ctx.emit(ctx.R.astype(t, "int64"))
    if all(isinstance(d, int) for d in known):
        return ctx.const(np.array(known, dtype=np.int64))
    if any(isinstance(d, int) and d < 0 for d in known):
        raise ctx.fail(f"slice {what} mixing negative and symbolic values")
    return ctx.emit(_shape_tensor(ctx, [ctx.int_or_expr(d) for d in known]))


def _runtime_bounds(ctx, node, extents, steps):
    """Begin and end of a slice with bounds known only at run time, normalized by ONNX's rules in
    int64 tensors, then read as shape values: negative bounds count from the end; with a step
    > 0 both are clamped into [0, d]; with a step < 0 the start into [0, d-1] and the end into
    [-1, d-1], then mirrored (``d-1-i``) for the flipped axis. The end never precedes the begin."""
    R = ctx.R
    d = (ctx.const(np.array(extents, dtype=np.int64)) if all(isinstance(x, int) for x in extents)
         else ctx.emit(_shape_tensor(ctx, extents)))
    neg = [st < 0 for st in steps]
    zero = ctx.scalar(0, "int64")
    m = ctx.const(np.array(neg, dtype=np.int64))  # 1 on axes sliced backwards
    mask = ctx.const(np.array(neg, dtype=bool))
    top = ctx.emit(R.subtract(d, m))  # d, or d-1 backwards

    def norm(t, lo):
        t = R.where(R.less(t, zero), R.add(t, d), t)
        t = ctx.emit(R.minimum(R.maximum(t, lo), top))
        if not any(neg):
            return t
        return ctx.emit(R.where(mask, R.subtract(R.subtract(d, ctx.scalar(1, "int64")), t), t))

    b = norm(_bound_tensor(ctx, node.inputs[1], "starts"), zero)
    e = norm(_bound_tensor(ctx, node.inputs[2], "ends"), ctx.emit(R.negative(m)))
    e = ctx.emit(R.maximum(e, b))
    return ctx.runtime_shape(b, "slice starts"), ctx.runtime_shape(e, "slice ends")


def _clamped_bounds(ctx, s, e, d):
    """ONNX's in-bound (begin, end) of a step > 0 slice as ints / PrimExprs: negative bounds count
    from the end, both are clamped into [0, d], and the end never precedes the begin (an empty
    slice, not a negative extent)."""
    tirx = ctx.tirx
    d = _pe(ctx, d)

    def norm(v):
        if isinstance(v, int):
            if v >= _BIG // 2:
                return d
            return tirx.min(_pe(ctx, v), d) if v >= 0 else tirx.max(d + v, _pe(ctx, 0))
        return tirx.Select(v < 0, tirx.max(v + d, _pe(ctx, 0)), tirx.min(v, d))

    b = ctx.analyzer.simplify(norm(s))
    en = ctx.analyzer.simplify(tirx.max(norm(e), b))
    return _int_if_const(ctx, b), _int_if_const(ctx, en)


def _int_if_const(ctx, e):
    return int(e.value) if isinstance(e, ctx.tirx.IntImm) else e


def _wrap(ctx, idx, extent):
    R = ctx.R
    dt = ctx.dtype(idx)
    if isinstance(extent, int):
        ext = ctx.scalar(extent, dt)
    else:
        ext = R.astype(R.reshape(ctx.emit(_shape_tensor(ctx, [extent])), []), dt)
    return R.where(R.less(idx, ctx.scalar(0, dt)), R.add(idx, ext), idx)


def _ir_dim(node, i: int, axis: int):
    """Dim ``axis`` of the node's input ``i`` as the IR knows it (for messages), or None."""
    s = node.inputs[i].shape
    return s[axis] if s is not None and axis < len(s) else None


def _indices(ctx, node, indices, extent, axis: int, i: int = 1):
    """The node's input ``i`` (indices into an axis of ``extent``) with negative entries wrapped
    and checked in range (``LowerContext.check_index``)."""
    return ctx.check_index(indices, node.inputs[i], extent, axis, _ir_dim(node, 0, axis), wrap=True)


def _check_same(ctx, x, a, b, what: str):
    """``x`` checked for the dims ``a == b`` (ints or PrimExprs; decided now when static)."""
    return ctx.check_once(x, lambda p, q: p == q, what, [a, b])


def _check_not_larger(ctx, node, x, inner, outer, skip: int, what: str, other: str):
    """``x`` checked for every dim of ``inner`` (but ``skip``) <= the same dim of ``outer``:
    the elementwise gather/scatter read ``outer`` at the positions of ``inner``."""
    for d, (a, b) in enumerate(zip(inner, outer)):
        if d != skip:
            x = ctx.check_once(x, lambda p, q: p <= q,
                               checks.too_small(what, d, _ir_dim(node, 1, d), other, _ir_dim(node, 0, d)), [a, b])
    return x


def _checked_shape(ctx, x, have, want, what: str):
    """``x`` (of shape ``have``) checked to have shape ``want`` at run time, and typed so (Relax's
    shape inference then sees the equality the check guarantees; unchecked, the module trusts
    it)."""
    if len(have) == len(want) and all(_same(ctx, a, b) for a, b in zip(have, want)):
        return x
    for a, b in zip(have, want):
        x = _check_same(ctx, x, a, b, what)
    # A view, not a match_cast: FuseTIR's CanonicalizeTIRVariables would unify the two symbolic
    # vars a match_cast equates and leave the in-place checks' types inconsistent.
    return ctx.emit(ctx.R.reshape(x, want))


@lowering("Gather")
def _gather(ctx, node, x, indices):
    dims = _dims_of(ctx, x)
    axis = _norm_axis(ctx, node.attrs["axis"], len(dims))
    # Indices proven in range take the fast path; run-time ones (token ids) are checked, and
    # clipped as well, so even an unchecked module never reads out of bounds ("fast" would).
    mode = "fast" if ctx.index_proven(node.inputs[1], dims[axis]) else "clip"
    return ctx.R.take(x, _indices(ctx, node, indices, dims[axis], axis), axis, mode=mode)


@lowering("GatherElements")
def _gather_elements(ctx, node, x, indices):
    dims = _dims_of(ctx, x)
    axis = _norm_axis(ctx, node.attrs["axis"], len(dims))
    if ctx.rank(indices) != len(dims):
        raise ctx.fail(f"indices of rank {ctx.rank(indices)} for data of rank {len(dims)}")
    indices = _check_not_larger(ctx, node, indices, _dims_of(ctx, indices), dims, axis, "indices", "data")
    return ctx.R.gather_elements(x, _indices(ctx, node, indices, dims[axis], axis), axis)


def _nd_indices(ctx, node, indices, dims, b: int):
    """GatherND/ScatterND indices: negative entries wrapped, then each of the ``k`` components of
    the last axis checked against its data dim (``dims[b + c]``)."""
    R = ctx.R
    ishape = _dims_of(ctx, indices)
    k = ishape[-1]
    if not isinstance(k, int):
        raise ctx.fail("indices with a symbolic last dim")
    if b + k > len(dims):
        raise ctx.fail(f"index tuples of length {k} for data of rank {len(dims)} (batch_dims {b})")
    v = node.inputs[1]
    rng = ctx.int_range(v)
    ext = dims[b:b + k]
    if not (rng is not None and rng[0] >= 0):
        dt = ctx.dtype(indices)
        if all(isinstance(d, int) for d in ext):
            et = ctx.const(np.array(ext, dtype=dt))
        else:
            et = ctx.emit(R.astype(ctx.emit(_shape_tensor(ctx, ext)), dt))
        indices = ctx.emit(R.where(R.less(indices, ctx.scalar(0, dt)), R.add(indices, et), indices))
    for c in range(k):
        n = dims[b + c]
        what = checks.index_out_of_range(_ir_dim(node, 0, b + c), b + c)
        if v.const is not None:
            col = np.asarray(v.const)[..., c]
            if col.size:
                lo, hi = int(col.min()), int(col.max())
                indices = ctx.check_once(indices, lambda m: (m >= -lo) & (m > hi), what, [n])
            continue
        if rng is not None and isinstance(n, int) and -n <= rng[0] and rng[1] < n:
            continue
        indices = ctx.check_each(indices, lambda e, pos, m, c=c: (pos[-1] != c) | ((e >= 0) & (e < m)), what, [n])
    return indices


@lowering("GatherND")
def _gather_nd(ctx, node, x, indices):
    b = node.attrs["batch_dims"]
    dims, ishape = _dims_of(ctx, x), _dims_of(ctx, indices)
    for d in range(b):
        indices = _check_same(ctx, indices, ishape[d], dims[d],
                              checks.dims_differ("indices", d, _ir_dim(node, 1, d), "data", _ir_dim(node, 0, d)))
    return ctx.R.gather_nd(x, _nd_indices(ctx, node, indices, dims, b), b)


_SCATTER_RED = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


@lowering("ScatterND")
def _scatter_nd(ctx, node, x, indices, updates):
    red = node.attrs["reduction"]
    if red not in _SCATTER_RED:
        raise ctx.fail(f"ScatterND reduction {red!r}")
    dims, ishape, ushape = _dims_of(ctx, x), _dims_of(ctx, indices), _dims_of(ctx, updates)
    idx = _nd_indices(ctx, node, indices, dims, 0)
    k = ishape[-1]
    want = list(ishape[:-1]) + list(dims[k:])
    ir = node.inputs[1].shape, node.inputs[0].shape
    what = checks.updates_shape(None if None in ir else list(ir[0][:-1]) + list(ir[1][k:]))
    if len(ushape) != len(want):
        raise ctx.invalid(what)
    return ctx.R.scatter_nd(x, idx, _checked_shape(ctx, updates, ushape, want, what), _SCATTER_RED[red])


@lowering("ScatterElements")
def _scatter_elements(ctx, node, x, indices, updates):
    red = node.attrs["reduction"]
    if red not in _SCATTER_RED:
        raise ctx.fail(f"ScatterElements reduction {red!r}")
    dims, ishape, ushape = _dims_of(ctx, x), _dims_of(ctx, indices), _dims_of(ctx, updates)
    axis = _norm_axis(ctx, node.attrs["axis"], len(dims))
    if len(ishape) != len(dims) or len(ushape) != len(ishape):
        raise ctx.fail(f"data, indices and updates of ranks {len(dims)}, {len(ishape)}, {len(ushape)}")
    indices = _check_not_larger(ctx, node, indices, ishape, dims, axis, "indices", "data")
    updates = _checked_shape(ctx, updates, ushape, ishape, checks.updates_shape(node.inputs[1].shape))
    idx = _indices(ctx, node, indices, dims[axis], axis)
    return ctx.R.scatter_elements(x, idx, updates, axis, _SCATTER_RED[red])


def _stretch_limit(i: int, ir_dim) -> str:
    return (f"dim {i} (extent {checks.dim_text(ir_dim)}) is 1 only at run time: the compiled Expand stretches "
            f"only dims that are 1 at compile time (make that dim a static 1)")


@lowering("Expand")
def _expand(ctx, node, x, shape):
    """broadcast_to. TVM's kernel stretches a dim only when it is 1 at compile time and reads out
    of bounds otherwise, so every pair of dims not provably compatible is checked at run time:
    a real mismatch raises the shared ``cannot_broadcast`` (as the interpreter); an input dim
    that is 1 only at run time raises ``_stretch_limit`` (a limit of the compiled module)."""
    dims = _dims_of(ctx, x)
    known = out_shape(ctx, node)
    target = known if known is not None else ctx.operand_exprs(node.inputs[1], "expand shape")
    r = max(len(dims), len(target))
    xd = [1] * (r - len(dims)) + list(dims)
    td = [1] * (r - len(target)) + list(target)
    out_ir = node.outputs[0].shape if known is not None else None
    in_ir = [1] * (r - len(dims)) + [_ir_dim(node, 0, k) for k in range(len(dims))]
    out = []
    for i, (d, t) in enumerate(zip(xd, td)):
        if isinstance(d, int) and d == 1:
            out.append(t)
            continue
        if _same(ctx, d, t) or (known is None and isinstance(t, int) and t == 1):
            out.append(d)
            continue
        bad = checks.cannot_broadcast(i, in_ir[i], out_ir[i] if out_ir is not None else None)
        if known is None:  # a run-time target dim of 1 keeps the input's extent
            x = ctx.check_once(x, lambda p, q: (p == q) | (p == 1) | (q == 1), bad, [d, t])
            x = ctx.check_once(x, lambda p, q: (p == q) | (q == 1), _stretch_limit(i, in_ir[i]), [d, t])
            out.append(d)
        else:
            x = ctx.check_once(x, lambda p, q: (p == q) | (p == 1), bad, [d, t])
            x = ctx.check_once(x, lambda p, q: p == q, _stretch_limit(i, in_ir[i]), [d, t])
            out.append(t)
    if len(out) == len(dims) and all(_same(ctx, a, b) for a, b in zip(out, dims)):
        return x
    return ctx.R.broadcast_to(x, out)


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
    if p is None or not all(isinstance(v, int) for v in p):  # pads read at run time (or symbolic)
        return dynamic.pad_general(ctx, node, x, pads, constant_value)
    if axes is not None:
        ax = ctx.known_ints(node.inputs[3])
        if ax is None:
            raise ctx.fail("Pad axes known only at run time")
        ax = [_norm_axis(ctx, a, r) for a in ax]
    else:
        ax = list(range(r))
    n = len(ax)
    lo, hi = [0] * r, [0] * r
    if len(p) != 2 * n:
        raise ctx.fail(f"pads has {len(p)} entries for {n} axes")
    for i, a in enumerate(ax):
        lo[a], hi[a] = p[i], p[i + n]
    runtime_value = constant_value is not None and node.inputs[2].const is None and node.attrs["mode"] == "constant"
    if runtime_value or any(v < 0 for v in lo + hi):
        return dynamic.pad_general(ctx, node, x, pads, constant_value)
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
    if known is None and ctx.known_ints(node.inputs[0]) is None:  # the shape is read at run time
        return dynamic.full(ctx, shape, value[0], dt, "constant shape")
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
        return dynamic.range_float(ctx, node, start, limit, delta)
    if any(ctx.known_ints(v) is None for v in vs):  # a bound read at run time
        return dynamic.range_int(ctx, node, start, limit, delta)
    s, lim, d = (ctx.scalar_operand(v, n) for v, n in zip(vs, ("range start", "range limit", "range delta")))
    if not isinstance(d, int):
        raise ctx.fail("a Range step known only at run time")
    if d == 0:
        raise ctx.fail("Range delta 0")
    # A limit before the start gives an empty range (ONNX), not a negative extent.
    tirx = ctx.tirx
    lim = _int_if_const(ctx, ctx.analyzer.simplify((tirx.max if d > 0 else tirx.min)(_pe(ctx, lim), _pe(ctx, s))))
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
        from .elementwise import float_to_int  # NaN / out-of-range indices: defined, never hot

        idx = ctx.emit(float_to_int(ctx, idx, "int64"))
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
