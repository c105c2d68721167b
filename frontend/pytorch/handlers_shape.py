"""Handlers of the shape and data-movement ops: views and reshapes, expand / repeat, permutes,
squeeze / unsqueeze, slicing and indexing, gather / scatter, concatenation and splitting, sort
and top-k, and the functional forms of in-place writes (``slice_scatter``, ``index_put``)."""

from __future__ import annotations

import torch

from ...ir import DType, UnsupportedOpError, Value
from .importer import Importer, fake_of, norm_axis, out_dtype, out_fake, rank_of
from .registry import handles
from .sizes import same_size, size_expr

_INT64_MAX = 2**63 - 1


@handles("view", "reshape", "_unsafe_view", "view.default", "flatten.using_ints", "unflatten.int", "_reshape_alias",
         "view_copy", "reshape_as")
def _view(m: Importer, node, a):
    return m.reshape(m.v(a["self"]), fake_of(a["self"]).shape, out_fake(node).shape)


@handles("expand", "expand_copy", "broadcast_to")
def _expand(m: Importer, node, a):
    return m.expand(m.v(a["self"]), fake_of(a["self"]).shape, out_fake(node).shape)


@handles("repeat")
def _repeat(m: Importer, node, a):
    x = m.v(a["self"])
    reps = list(m.lit(a["repeats"]))
    r = x.type.rank
    if len(reps) > r:
        x = m.emit("Unsqueeze", x, m.i64(list(range(len(reps) - r))))
    return m.emit("Tile", x, m.shape_operand(reps))


# -- permutes ----------------------------------------------------------------------------------
def _transpose_arg(m: Importer, src, perm: list[int]) -> Value:
    """Transpose, folded into a new constant when the source is a parameter."""
    if m.is_param(src):
        users = [u for u in src.users if u.op == "call_function"]
        return m.derived_param(src, perm, exclusive=len(users) == 1)
    return m.transpose(m.v(src), perm)


@handles("permute", "permute_copy")
def _permute(m: Importer, node, a):
    r = rank_of(a["self"])
    perm = [norm_axis(int(d), r) for d in a["dims"]]
    if perm == list(range(r)):
        return m.v(a["self"])
    return _transpose_arg(m, a["self"], perm)


@handles("transpose.int", "transpose_copy.int", "swapaxes", "swapdims")
def _transpose(m: Importer, node, a):
    r = rank_of(a["self"])
    d0, d1 = norm_axis(int(a.get("dim0", a.get("axis0"))), r), norm_axis(int(a.get("dim1", a.get("axis1"))), r)
    if d0 == d1:
        return m.v(a["self"])
    perm = list(range(r))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _transpose_arg(m, a["self"], perm)


@handles("t", "numpy_T", "t_copy")
def _t(m: Importer, node, a):
    r = rank_of(a["self"])
    if r < 2:
        return m.v(a["self"])
    return _transpose_arg(m, a["self"], list(reversed(range(r))))


@handles("unsqueeze", "unsqueeze_copy")
def _unsqueeze(m: Importer, node, a):
    r = rank_of(a["self"]) + 1
    return m.emit("Unsqueeze", m.v(a["self"]), m.i64([norm_axis(int(a["dim"]), r)]))


@handles("squeeze", "squeeze.dim", "squeeze.dims", "squeeze_copy", "squeeze_copy.dim", "squeeze_copy.dims")
def _squeeze(m: Importer, node, a):
    fake = fake_of(a["self"])
    r = fake.dim()
    dims = a.get("dim")
    if dims is None:
        dims = list(range(r))
    elif isinstance(dims, int):
        dims = [dims]
    axes = [d for d in sorted({norm_axis(int(d), r) for d in dims}) if size_expr(fake.shape[d]).is_Integer and int(fake.shape[d]) == 1]
    if not axes:
        return m.v(a["self"])
    return m.emit("Squeeze", m.v(a["self"]), m.i64(axes))


# -- slicing and indexing ----------------------------------------------------------------------
def _bound(m: Importer, x) -> Value:
    """A slice bound as a 1-element int64 tensor (ints clamp to the int64 range)."""
    x = m.lit(x)
    if isinstance(x, int):
        return m.i64([max(min(x, _INT64_MAX), -_INT64_MAX)])
    return m.sym_vec(x)


@handles("slice.Tensor", "slice_copy.Tensor")
def _slice(m: Importer, node, a):
    fake_in, fake_out = fake_of(a["self"]), out_fake(node)
    r = fake_in.dim()
    dim = norm_axis(int(a.get("dim", 0)), r)
    start, end, step = a.get("start"), a.get("end"), int(m.lit(a.get("step", 1)) or 1)
    x = m.v(a["self"])
    if step == 1 and same_size(fake_in.shape[dim], fake_out.shape[dim]):
        return x
    start = 0 if start is None else start
    end = _INT64_MAX if end is None else end
    return m.emit("Slice", x, _bound(m, start), _bound(m, end), m.i64([dim]), m.i64([step]))


@handles("narrow")
def _narrow(m: Importer, node, a):
    fake_in = fake_of(a["self"])
    dim = norm_axis(int(a["dim"]), fake_in.dim())
    start, length = m.lit(a["start"]), m.lit(a["length"])
    end = start + length
    return m.emit("Slice", m.v(a["self"]), _bound(m, start), _bound(m, end), m.i64([dim]))


@handles("flip")
def _flip(m: Importer, node, a):
    r = rank_of(a["self"])
    dims = sorted({norm_axis(int(d), r) for d in a["dims"]})
    if not dims:
        return m.v(a["self"])
    n = len(dims)
    return m.emit("Slice", m.v(a["self"]), m.i64([-1] * n), m.i64([-_INT64_MAX] * n), m.i64(dims), m.i64([-1] * n))


@handles("select.int", "select_copy.int")
def _select(m: Importer, node, a):
    r = rank_of(a["self"])
    ind = m.sym_scalar(m.lit(a["index"]))
    return m.emit("Gather", m.v(a["self"]), ind, axis=norm_axis(int(a["dim"]), r))


@handles("index_select")
def _index_select(m: Importer, node, a):
    r = rank_of(a["self"])
    return m.emit("Gather", m.v(a["self"]), m.v(a["index"]), axis=norm_axis(int(a["dim"]), r))


@handles("gather")
def _gather(m: Importer, node, a):
    r = rank_of(a["self"])
    return m.emit("GatherElements", m.v(a["self"]), m.v(a["index"]), axis=norm_axis(int(a["dim"]), r))


def _index_list(a) -> list:
    """The ``indices`` of ``index`` / ``index_put`` without trailing ``None`` (full slices)."""
    idx = list(a["indices"])
    while idx and idx[-1] is None:
        idx.pop()
    return idx


def _is_mask(t) -> bool:
    return fake_of(t).dtype in (torch.bool, torch.uint8)


def _stack_indices(m: Importer, idx_nodes: list) -> tuple[Value, list]:
    """Broadcast integer index tensors against each other and stack them on a new last axis
    (the indices operand of GatherND / ScatterND)."""
    fakes = [fake_of(t) for t in idx_nodes]
    bshape = list(torch.broadcast_shapes(*(f.shape for f in fakes)))
    cols = []
    for t, f in zip(idx_nodes, fakes):
        c = m.emit("Unsqueeze", m.cast(m.v(t), DType.INT64), m.i64([-1]))
        cols.append(m.expand(c, list(f.shape) + [1], bshape + [1]))
    return (cols[0] if len(cols) == 1 else m.emit("Concat", *cols, axis=-1)), bshape


@handles("index.Tensor", "_unsafe_index.Tensor")
def _index(m: Importer, node, a):
    fake = fake_of(a["self"])
    idx = _index_list(a)
    pos = [i for i, t in enumerate(idx) if t is not None]
    if not pos:
        return m.v(a["self"])
    for i in pos:
        if _is_mask(idx[i]):
            raise UnsupportedOpError(f"torch frontend: boolean-mask indexing is data-dependent ({node.name})")
    x = m.v(a["self"])
    if len(pos) == 1:
        return m.emit("Gather", x, m.v(idx[pos[0]]), axis=pos[0])
    r = fake.dim()
    adjacent = pos == list(range(pos[0], pos[0] + len(pos)))
    rest = [i for i in range(r) if i not in pos]
    if pos != list(range(len(pos))):
        x = m.emit("Transpose", x, perm=pos + rest)
    ind, bshape = _stack_indices(m, [idx[i] for i in pos])
    y = m.emit("GatherND", x, ind)
    nb = len(bshape)
    if adjacent and pos[0] > 0:
        p = pos[0]
        perm = list(range(nb, nb + p)) + list(range(nb)) + list(range(nb + p, nb + len(rest)))
        y = m.emit("Transpose", y, perm=perm)
    return y


# -- writes (functional) -----------------------------------------------------------------------
@handles("constant_pad_nd")
def _constant_pad(m: Importer, node, a):
    x = m.v(a["self"])
    r = rank_of(a["self"])
    pad = [int(p) for p in m.lit(a["pad"])]
    k = len(pad) // 2
    axes = [r - 1 - i for i in range(k)]
    pads = pad[0::2] + pad[1::2]
    value = m.lit(a.get("value", 0))
    return m.emit("Pad", x, m.i64(pads), m.scalar(value, x.dtype), m.i64(axes))


@handles("scatter.src", "scatter.value", "scatter_add", "scatter.reduce", "scatter.value_reduce")
def _scatter(m: Importer, node, a):
    x = m.v(a["self"])
    r = rank_of(a["self"])
    idx = m.v(a["index"])
    src = a.get("src", a.get("value"))
    if m.is_tensor(src):
        upd = m.cast(m.v(src), x.dtype)
    else:
        upd = m.expand(m.scalar(m.lit(src), x.dtype), [], list(fake_of(a["index"]).shape))
    reduction = "add" if node.target.__name__.startswith("scatter_add") else {None: "none", "add": "add", "multiply": "mul", "sum": "add", "prod": "mul"}.get(a.get("reduce"), a.get("reduce"))
    return m.emit("ScatterElements", x, idx, upd, axis=norm_axis(int(a["dim"]), r), reduction=reduction)


@handles("copy")
def _copy(m: Importer, node, a):
    src = a["src"]
    return m.expand(m.cast(m.v(src), out_dtype(node)), list(fake_of(src).shape), list(out_fake(node).shape))


@handles("slice_scatter")
def _slice_scatter(m: Importer, node, a):
    fx, fs = fake_of(a["self"]), fake_of(a["src"])
    r = fx.dim()
    dim = norm_axis(int(a.get("dim", 0)), r)
    x = m.v(a["self"])
    src = m.cast(m.v(a["src"]), x.dtype)
    n = fs.shape[dim]
    step = int(m.lit(a.get("step", 1)) or 1)
    start = m.lit(a.get("start"))
    start = 0 if start is None else start
    if isinstance(start, int) and start < 0:
        start = size_expr(fx.shape[dim]) + start
    if same_size(start, 0) and step == 1 and all(same_size(p, q) for p, q in zip(fx.shape, fs.shape)):
        return src
    if size_expr(n).is_Integer and int(size_expr(n)) == 0:
        return x
    s0 = size_expr(start)
    lim = s0 + size_expr(n) * step
    idx = m.emit("Range", m.sym_scalar(s0), m.sym_scalar(lim), m.scalar(step, DType.INT64))
    others = [i for i in range(r) if i != dim]
    if others:
        idx = m.emit("Unsqueeze", idx, m.i64(others))
    idx = m.expand(idx, [1] * dim + [n] + [1] * (r - dim - 1), list(fs.shape))
    return m.emit("ScatterElements", x, idx, src, axis=dim)


@handles("select_scatter")
def _select_scatter(m: Importer, node, a):
    fx = fake_of(a["self"])
    r = fx.dim()
    dim = norm_axis(int(a["dim"]), r)
    x = m.v(a["self"])
    index = m.lit(a["index"])
    if isinstance(index, int) and index < 0:
        index = size_expr(fx.shape[dim]) + index
    upd = m.emit("Unsqueeze", m.cast(m.v(a["src"]), x.dtype), m.i64([dim]))
    ushape = list(fx.shape)
    ushape[dim] = 1
    iv = m.emit("Reshape", m.sym_vec(index), m.i64([1] * r))
    idx = m.expand(iv, [1] * r, ushape)
    return m.emit("ScatterElements", x, idx, upd, axis=dim)


@handles("index_put", "_unsafe_index_put")
def _index_put(m: Importer, node, a):
    fx = fake_of(a["self"])
    x = m.v(a["self"])
    idx = _index_list(a)
    acc = bool(a.get("accumulate", False))
    vals = a["values"]
    fv = fake_of(vals)
    v = m.cast(m.v(vals), x.dtype)
    if len(idx) == 1 and idx[0] is not None and _is_mask(idx[0]):
        mfake = fake_of(idx[0])
        numel = fv.numel() if isinstance(fv, torch.Tensor) else 1
        if not (isinstance(numel, int) and numel == 1):
            raise UnsupportedOpError(f"torch frontend: masked assignment of a non-scalar tensor is data-dependent ({node.name})")
        cond = m.cast(m.v(idx[0]), DType.BOOL)
        extra = fx.dim() - mfake.dim()
        if extra:
            cond = m.emit("Unsqueeze", cond, m.i64(list(range(mfake.dim(), fx.dim()))))
        if v.type.rank:
            v = m.emit("Reshape", v, m.i64([]))
        if acc:
            return m.emit("Add", x, m.emit("Where", cond, v, m.scalar(0, x.dtype)))
        return m.emit("Where", cond, v, x)
    if any(t is None for t in idx) or any(_is_mask(t) for t in idx):
        raise UnsupportedOpError(f"torch frontend: index_put with these indices ({node.name})")
    ind, bshape = _stack_indices(m, idx)
    target = bshape + list(fx.shape[len(idx):])
    v = m.expand(v, list(fv.shape) if isinstance(fv, torch.Tensor) else [], target)
    return m.emit("ScatterND", x, ind, v, reduction="add" if acc else "none")


# -- sort, concatenation and splitting ---------------------------------------------------------
@handles("topk")
def _topk(m: Importer, node, a):
    x = m.v(a["self"])
    r = rank_of(a["self"])
    kv = m.sym_vec(m.lit(a["k"]))
    vals, idx = m.emit("TopK", x, kv, axis=norm_axis(int(a.get("dim", -1)), r), largest=int(bool(a.get("largest", True))),
                       sorted=1, num_outputs=2)
    return [vals, idx]


@handles("sort", "sort.stable")
def _sort(m: Importer, node, a):
    x = m.v(a["self"])
    fake = fake_of(a["self"])
    r = fake.dim()
    if r == 0:
        return [x, m.scalar(0, DType.INT64)]
    axis = norm_axis(int(a.get("dim", -1)), r)
    kv = m.shape_operand([fake.shape[axis]])
    vals, idx = m.emit("TopK", x, kv, axis=axis, largest=int(bool(a.get("descending", False))), sorted=1, num_outputs=2)
    return [vals, idx]


@handles("cat", "concat", "concatenate")
def _cat(m: Importer, node, a):
    dt = out_dtype(node)
    r = out_fake(node).dim()
    parts = [t for t in a["tensors"] if not (fake_of(t).dim() == 1 and r != 1 and fake_of(t).shape[0] == 0)]
    vals = [m.cast(m.v(t), dt) for t in parts]
    if len(vals) == 1:
        return vals[0]
    return m.emit("Concat", *vals, axis=norm_axis(int(a.get("dim", 0)), r))


@handles("stack")
def _stack(m: Importer, node, a):
    dt = out_dtype(node)
    r = out_fake(node).dim()
    dim = norm_axis(int(a.get("dim", 0)), r)
    vals = [m.emit("Unsqueeze", m.cast(m.v(t), dt), m.i64([dim])) for t in a["tensors"]]
    return vals[0] if len(vals) == 1 else m.emit("Concat", *vals, axis=dim)


@handles("split.Tensor", "split_with_sizes", "chunk", "tensor_split.sections", "split.sizes", "unsafe_split.Tensor",
         "split_with_sizes_copy", "split_copy.Tensor", "unbind.int", "unbind_copy.int")
def _split(m: Importer, node, a):
    fake_in = fake_of(a["self"])
    outs = list(out_fake(node))
    dim = norm_axis(int(a.get("dim", 0)), fake_in.dim())
    x = m.v(a["self"])
    unbind = node.target.__name__.startswith("unbind")
    if len(outs) == 1:
        return [m.emit("Squeeze", x, m.i64([dim])) if unbind else x]
    sizes = [o.shape[dim] for o in outs] if not unbind else [1] * len(outs)
    parts = m.emit("Split", x, m.shape_operand(sizes), axis=dim, num_outputs=len(outs))
    if unbind:
        parts = [m.emit("Squeeze", p, m.i64([dim])) for p in parts]
    return parts


@handles("_local_scalar_dense", "item")
def _item(m: Importer, node, a):
    """A data-dependent scalar: its (unbacked) symbol is materialized from the tensor itself."""
    val = out_fake(node)
    v = m.v(a["self"])
    if isinstance(val, torch.SymInt) and val.node.expr.is_Symbol:
        m.define_int_symbol(val.node.expr, m.emit("Reshape", m.cast(v, DType.INT64), m.i64([1])))
    elif isinstance(val, torch.SymFloat) and val.node.expr.is_Symbol:
        m.define_float_symbol(val.node.expr, m.emit("Reshape", m.cast(v, DType.FLOAT64), m.i64([])))
    elif isinstance(val, (torch.SymInt, torch.SymFloat)):
        raise UnsupportedOpError(f"torch frontend: data-dependent scalar {val} ({node.name})")
    return val
