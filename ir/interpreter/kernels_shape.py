"""Kernels of the data-movement and shape ops (ir/ops/shape.py).

Shape operands (a reshape target, slice bounds, pads, indices) arrive as tensors, as in ONNX,
and are read with ``as_ints``. Indices may be negative (counted from the end) wherever ONNX
allows it; an index out of range is an error.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks
from ..errors import IRError
from ..types import DType
from .engine import COMPUTE_DTYPE, as_ints, input_dtype, kernel, normalize_axis, numpy_to_compute


def _wrap_index(idx: torch.Tensor, extent: int | torch.Tensor) -> torch.Tensor:
    """int64 indices with negative entries counted from the end."""
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + extent, idx)


def _ir_dim(node, i: int, axis: int):
    """Dim ``axis`` of the node's input ``i`` as the IR declares it (messages name IR dims, so
    they read the same as a compiled module's)."""
    s = node.inputs[i].shape
    return s[axis] if s is not None and axis < len(s) else None


def _checked_index(node, idx: torch.Tensor, extent: int, axis: int) -> torch.Tensor:
    """``idx`` (into ``axis`` of input 0) as int64 with negative entries wrapped, after checking
    every entry lies in ``[-extent, extent)`` (``ir/checks.py``: an index out of range is an
    error, never clamped)."""
    big = input_dtype(node, 1) is DType.UINT64  # held as int64: a "negative" one is >= 2**63
    idx = idx.to(torch.int64)
    bad = (idx < 0) | (idx >= extent) if big else (idx < -extent) | (idx >= extent)
    if bool(bad.any()):
        raise checks.invalid(node, checks.index_out_of_range(_ir_dim(node, 0, axis), axis))
    return torch.where(idx < 0, idx + extent, idx)


def _not_larger(node, inner, outer, skip: int, what: str, other: str, i_inner: int = 1) -> None:
    """Every dim of ``inner`` (but ``skip``) <= that of ``outer`` (the elementwise gather/scatter
    read ``outer`` at the positions of ``inner``)."""
    for d, (a, b) in enumerate(zip(inner, outer)):
        if d != skip and a > b:
            raise checks.invalid(node, checks.too_small(what, d, _ir_dim(node, i_inner, d), other, _ir_dim(node, 0, d)))


def _prod(dims) -> int:
    return int(math.prod(int(d) for d in dims))


@kernel("Shape")
def _shape(node, x):
    r = x.dim()
    start, end = node.attrs["start"], node.attrs["end"]
    start = min(max(start + r if start < 0 else start, 0), r)
    end = r if end is None else min(max(end + r if end < 0 else end, 0), r)
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


@kernel("Size")
def _size(node, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@kernel("Reshape")
def _reshape(node, x, shape):
    target = as_ints(shape)
    if not node.attrs["allowzero"]:
        for i, d in enumerate(target):
            if d == 0:
                if i >= x.dim():
                    raise ValueError(f"target dim {i} is 0 (copy the input's) but the input has rank {x.dim()}")
                target[i] = x.shape[i]
    elif 0 in target and -1 in target:
        raise ValueError("with allowzero=1 the target cannot hold both 0 and -1")
    try:
        return x.reshape(target)
    except RuntimeError:
        raise checks.invalid(node, checks.cannot_reshape(node.inputs[0].shape)) from None


@kernel("Flatten")
def _flatten(node, x):
    r = x.dim()
    axis = node.attrs["axis"]
    if not -r <= axis <= r:
        raise ValueError(f"axis {axis} is out of range for rank {r}")
    if axis < 0:
        axis += r
    return x.reshape(_prod(x.shape[:axis]), _prod(x.shape[axis:]))


@kernel("Transpose")
def _transpose(node, x):
    perm = node.attrs["perm"]
    if perm is None:
        perm = tuple(reversed(range(x.dim())))
    return x.permute(*perm)


@kernel("Squeeze")
def _squeeze(node, x, axes=None):
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    dims = {normalize_axis(a, x.dim(), node) for a in as_ints(axes)}
    for a in dims:
        if x.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of extent {x.shape[a]}")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in dims])


@kernel("Unsqueeze")
def _unsqueeze(node, x, axes):
    ax = as_ints(axes)
    r = x.dim() + len(ax)
    dims = {normalize_axis(a, r, node) for a in ax}
    if len(dims) != len(ax):
        raise ValueError(f"repeated axes {ax}")
    it = iter(x.shape)
    return x.reshape([1 if i in dims else next(it) for i in range(r)])


@kernel("Concat")
def _concat(node, *xs):
    axis = normalize_axis(node.attrs["axis"], xs[0].dim(), node)
    return torch.cat(xs, dim=axis)


@kernel("Split")
def _split(node, x, split=None):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    dim = x.shape[axis]
    n = len(node.outputs)
    if split is not None:
        sizes = as_ints(split)
    else:
        num = node.attrs["num_outputs"] or n
        if num != n:
            raise ValueError(f"num_outputs={num} but the node has {n} outputs")
        chunk = -(-dim // n)  # equal parts; the last one is smaller when uneven
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if len(sizes) != n or sum(sizes) != dim or min(sizes, default=0) < 0:
        raise ValueError(f"cannot split extent {dim} into sizes {sizes}")
    return tuple(torch.split(x, sizes, dim=axis))


@kernel("Slice")
def _slice(node, x, starts, ends, axes=None, steps=None):
    s_, e_ = as_ints(starts), as_ints(ends)
    ax = as_ints(axes) if axes is not None else list(range(len(s_)))
    st_ = as_ints(steps) if steps is not None else [1] * len(s_)
    if not len(s_) == len(e_) == len(ax) == len(st_):
        raise ValueError("starts, ends, axes and steps must have the same length")
    index: list = [slice(None)] * x.dim()
    flips = []
    seen = set()
    for s, e, a, st in zip(s_, e_, ax, st_):
        a = normalize_axis(a, x.dim(), node)
        if a in seen:
            raise ValueError(f"axis {a} is sliced twice")
        seen.add(a)
        d = x.shape[a]
        if st == 0:
            raise ValueError("slice step cannot be 0")
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            index[a] = slice(min(max(s, 0), d), min(max(e, 0), d), st)
        else:
            # ONNX clamps starts to [0, d-1] and ends to [-1, d-1] when stepping backwards.
            s = min(max(s, 0), d - 1)
            e = min(max(e, -1), d - 1)
            flips.append((a, s, e, st))
    y = x[tuple(index)]
    for a, s, e, st in flips:
        y = y.index_select(a, torch.arange(s, e, st, dtype=torch.int64)) if s > e else y.narrow(a, 0, 0)
    return y


@kernel("Gather")
def _gather(node, x, indices):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    idx = _checked_index(node, indices, x.shape[axis], axis)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


@kernel("GatherElements")
def _gather_elements(node, x, indices):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    if indices.dim() != x.dim():
        raise ValueError(f"indices of rank {indices.dim()} for data of rank {x.dim()}")
    _not_larger(node, indices.shape, x.shape, axis, "indices", "data")
    return torch.gather(x, axis, _checked_index(node, indices, x.shape[axis], axis))


def _linear_nd_index(node, indices: torch.Tensor, dims, first_axis: int = 0) -> torch.Tensor:
    """Row-major linear index into ``dims`` of k-tuples (last axis of ``indices``), negative
    entries counted from the end; component ``c`` (data axis ``first_axis + c``) is checked in
    range over all tuples before component ``c + 1``, as the compiled checks do."""
    k = len(dims)
    idx = indices.to(torch.int64)
    if k == 0:
        return torch.zeros(idx.shape[:-1], dtype=torch.int64)
    idx = torch.stack([_checked_index(node, idx[..., c], int(dims[c]), first_axis + c) for c in range(k)], -1)
    strides = [1] * k
    for i in range(k - 2, -1, -1):
        strides[i] = strides[i + 1] * int(dims[i + 1])
    return (idx * torch.tensor(strides, dtype=torch.int64)).sum(-1)


@kernel("GatherND")
def _gather_nd(node, x, indices):
    b = node.attrs["batch_dims"]
    k = indices.shape[-1]
    bshape = tuple(x.shape[:b])
    for d in range(b):
        if indices.shape[d] != x.shape[d]:
            raise checks.invalid(node, checks.dims_differ("indices", d, _ir_dim(node, 1, d), "data", _ir_dim(node, 0, d)))
    dk, rest = tuple(x.shape[b:b + k]), tuple(x.shape[b + k:])
    ishape = tuple(indices.shape[b:-1])
    nb, ni = _prod(bshape), _prod(ishape)
    lin = _linear_nd_index(node, indices.reshape(nb, ni, k), dk, b)  # [nb, ni]
    xf = x.reshape((nb, _prod(dk)) + rest)
    out = xf[torch.arange(nb).unsqueeze(1), lin]  # [nb, ni, *rest]
    return out.reshape(bshape + ishape + rest)


_INDEX_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


@kernel("ScatterND")
def _scatter_nd(node, x, indices, updates):
    k = indices.shape[-1]
    dk, rest = tuple(x.shape[:k]), tuple(x.shape[k:])
    lin = _linear_nd_index(node, indices.reshape(-1, k), dk)
    if tuple(updates.shape) != tuple(indices.shape[:-1]) + rest:
        ir = node.inputs[1].shape, node.inputs[0].shape
        want = None if None in ir else list(ir[0][:-1]) + list(ir[1][k:])
        raise checks.invalid(node, checks.updates_shape(want))
    xf = x.reshape((_prod(dk),) + rest)
    uf = updates.reshape((lin.shape[0],) + rest)
    red = node.attrs["reduction"]
    if red == "none":
        out = xf.index_put((lin,), uf)
    elif red == "add":
        out = xf.index_add(0, lin, uf)
    elif red in _INDEX_REDUCE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "index_reduce() is in beta"
            out = xf.index_reduce(0, lin, uf, _INDEX_REDUCE[red], include_self=True)
    else:
        raise ValueError(f"unknown reduction {red!r}")
    return out.reshape(x.shape)


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@kernel("ScatterElements")
def _scatter_elements(node, x, indices, updates):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    if not x.dim() == indices.dim() == updates.dim():
        raise ValueError(f"data, indices and updates of ranks {x.dim()}, {indices.dim()}, {updates.dim()}")
    _not_larger(node, indices.shape, x.shape, axis, "indices", "data")
    if tuple(updates.shape) != tuple(indices.shape):
        raise checks.invalid(node, checks.updates_shape(node.inputs[1].shape))
    idx = _checked_index(node, indices, x.shape[axis], axis)
    red = node.attrs["reduction"]
    if red == "none":
        return torch.scatter(x, axis, idx, updates)
    if red not in _SCATTER_REDUCE:
        raise ValueError(f"unknown reduction {red!r}")
    return torch.scatter_reduce(x, axis, idx, updates, _SCATTER_REDUCE[red], include_self=True)


@kernel("Expand")
def _expand(node, x, shape):
    # Bidirectional: a target dim of 1 keeps the input's extent.
    target = as_ints(shape)
    r = max(x.dim(), len(target))
    dims = [1] * (r - x.dim()) + list(x.shape)
    target = [1] * (r - len(target)) + target
    out_ir = node.outputs[0].shape
    if out_ir is not None and None in out_ir:
        out_ir = None  # as the compiled module: a target known only at run time
    for i, (d, t) in enumerate(zip(dims, target)):
        if not (d == t or d == 1 or t == 1):
            k = i - (r - x.dim())
            ir_in = _ir_dim(node, 0, k) if k >= 0 else 1
            raise checks.invalid(node, checks.cannot_broadcast(i, ir_in, out_ir[i] if out_ir is not None else None))
    return x.expand([t if d == 1 else d for d, t in zip(dims, target)])


@kernel("Tile")
def _tile(node, x, repeats):
    reps = as_ints(repeats)
    if len(reps) != x.dim():
        raise ValueError(f"repeats has {len(reps)} entries for rank {x.dim()}")
    return x.repeat(reps) if x.dim() else x.clone()


def _pad_index(mode: str, lo: int, hi: int, d: int) -> torch.Tensor:
    """Source positions of the padded axis (negative pads crop)."""
    idx = torch.arange(-lo, d + hi, dtype=torch.int64)
    if d == 0:
        raise ValueError(f"cannot pad an empty axis in {mode} mode")
    if mode == "edge":
        return idx.clamp(0, d - 1)
    if mode == "wrap":
        return torch.remainder(idx, d)
    if d == 1:
        return torch.zeros_like(idx)
    period = 2 * (d - 1)  # reflect: mirrored on the first and last values
    j = torch.remainder(idx, period)
    return torch.where(j < d, j, period - j)


@kernel("Pad")
def _pad(node, x, pads, constant_value=None, axes=None):
    r = x.dim()
    p = as_ints(pads)
    ax = [normalize_axis(a, r, node) for a in as_ints(axes)] if axes is not None else list(range(r))
    n = len(ax)
    if len(p) != 2 * n:
        raise ValueError(f"pads has {len(p)} entries for {n} axes")
    lo, hi = [0] * r, [0] * r
    for i, a in enumerate(ax):
        lo[a], hi[a] = p[i], p[i + n]
    mode = node.attrs["mode"]
    if mode == "constant":
        if not any(lo) and not any(hi):
            return x
        value = constant_value.reshape(-1)[0].item() if constant_value is not None and constant_value.numel() else 0
        flat = []
        for a in reversed(range(r)):
            flat += [lo[a], hi[a]]
        if x.dtype == torch.bool:
            return F.pad(x.to(torch.uint8), flat, value=int(bool(value))).to(torch.bool)
        return F.pad(x, flat, value=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise ValueError(f"unknown pad mode {mode!r}")
    for a in range(r):
        if lo[a] or hi[a]:
            x = x.index_select(a, _pad_index(mode, lo[a], hi[a], x.shape[a]))
    return x


@kernel("ConstantOfShape")
def _constant_of_shape(node, shape):
    dims = as_ints(shape)
    value = node.attrs["value"]
    if value is None:
        value = np.zeros(1, dtype=np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"value must hold one element, got {value.size}")
    v = numpy_to_compute(value.reshape(1).copy(), DType.from_numpy(value.dtype))
    return v.reshape([1] * len(dims)).expand(dims).contiguous() if dims else v.reshape(())


@kernel("Range")
def _range(node, start, limit, delta):
    dt = COMPUTE_DTYPE[input_dtype(node, 0)]
    if not dt.is_floating_point:
        s, lim, d = (int(t.item()) for t in (start, limit, delta))
        if d == 0:
            raise ValueError("delta cannot be 0")
        return torch.arange(s, lim, d, dtype=dt) if (lim - s) * d > 0 else torch.zeros(0, dtype=dt)
    s, lim, d = (float(t.item()) for t in (start, limit, delta))
    if d == 0:
        raise ValueError("delta cannot be 0")
    n = max(math.ceil((lim - s) / d), 0)
    # output[i] = start + i * delta, as ONNX specifies (not a running sum).
    return (s + torch.arange(n, dtype=torch.float64) * d).to(dt)


@kernel("Trilu")
def _trilu(node, x, k=None):
    kk = as_ints(k)[0] if k is not None else 0
    src = x.to(torch.uint8) if x.dtype == torch.bool else x
    out = torch.triu(src, kk) if node.attrs["upper"] else torch.tril(src, kk)
    return out.to(torch.bool) if x.dtype == torch.bool else out


@kernel("NonZero")
def _nonzero(node, x):
    return torch.nonzero(x).T.contiguous()  # [rank, count], row-major order


@kernel("OneHot")
def _one_hot(node, indices, depth, values):
    d = int(depth.reshape(-1)[0].item())
    if d < 0:
        raise ValueError(f"depth must be >= 0, got {d}")
    if indices.dtype.is_floating_point:
        indices = torch.trunc(indices)
    idx = _wrap_index(indices, d)  # out-of-range entries match nothing: all off
    r = idx.dim() + 1
    axis = normalize_axis(node.attrs["axis"], r, node)
    ar = torch.arange(d, dtype=torch.int64).reshape([1] * axis + [d] + [1] * (r - axis - 1))
    hot = idx.unsqueeze(axis) == ar
    vals = values.reshape(-1)
    return torch.where(hot, vals[1], vals[0])


@kernel("EyeLike")
def _eye_like(node, x):
    if x.dim() != 2:
        raise ValueError(f"input must be 2-D, got rank {x.dim()}")
    rows, cols = x.shape
    dt = node.attrs["dtype"] or input_dtype(node, 0)
    eye = (torch.arange(rows).unsqueeze(1) + node.attrs["k"]) == torch.arange(cols).unsqueeze(0)
    return eye.to(COMPUTE_DTYPE[dt])


@kernel("DepthToSpace")
def _depth_to_space(node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    if c % (b * b):
        raise ValueError(f"channels {c} are not divisible by blocksize^2 = {b * b}")
    mode = node.attrs["mode"]
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        raise IRError(f"node {node.name} (DepthToSpace): mode must be DCR or CRD, got {mode!r}")
    return y.reshape(n, c // (b * b), h * b, w * b)


@kernel("SpaceToDepth")
def _space_to_depth(node, x):
    b = node.attrs["blocksize"]
    n, c, h, w = x.shape
    if h % b or w % b:
        raise ValueError(f"spatial dims {h}x{w} are not divisible by blocksize {b}")
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)
