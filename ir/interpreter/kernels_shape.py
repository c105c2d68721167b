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

from ..errors import IRError
from ..types import DType
from .engine import COMPUTE_DTYPE, as_ints, input_dtype, kernel, normalize_axis, numpy_to_compute


def _wrap_index(idx: torch.Tensor, extent: int | torch.Tensor) -> torch.Tensor:
    """int64 indices with negative entries counted from the end."""
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + extent, idx)


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
    return x.reshape(target)


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
    idx = _wrap_index(indices, x.shape[axis])
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


@kernel("GatherElements")
def _gather_elements(node, x, indices):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    return torch.gather(x, axis, _wrap_index(indices, x.shape[axis]))


def _linear_nd_index(indices: torch.Tensor, dims) -> torch.Tensor:
    """Row-major linear index into ``dims`` of k-tuples (last axis of ``indices``), negative
    entries counted from the end."""
    k = len(dims)
    idx = indices.to(torch.int64)
    if k == 0:
        return torch.zeros(idx.shape[:-1], dtype=torch.int64)
    extent = torch.tensor(dims, dtype=torch.int64)
    idx = torch.where(idx < 0, idx + extent, idx)
    if bool(((idx < 0) | (idx >= extent)).any()):
        raise IndexError(f"index out of range for dims {list(dims)}")
    strides = [1] * k
    for i in range(k - 2, -1, -1):
        strides[i] = strides[i + 1] * int(dims[i + 1])
    return (idx * torch.tensor(strides, dtype=torch.int64)).sum(-1)


@kernel("GatherND")
def _gather_nd(node, x, indices):
    b = node.attrs["batch_dims"]
    k = indices.shape[-1]
    bshape = tuple(x.shape[:b])
    if tuple(indices.shape[:b]) != bshape:
        raise ValueError(f"batch dims of data {list(bshape)} and indices {list(indices.shape[:b])} differ")
    dk, rest = tuple(x.shape[b:b + k]), tuple(x.shape[b + k:])
    ishape = tuple(indices.shape[b:-1])
    nb, ni = _prod(bshape), _prod(ishape)
    lin = _linear_nd_index(indices.reshape(nb, ni, k), dk)  # [nb, ni]
    xf = x.reshape((nb, _prod(dk)) + rest)
    out = xf[torch.arange(nb).unsqueeze(1), lin]  # [nb, ni, *rest]
    return out.reshape(bshape + ishape + rest)


_INDEX_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


@kernel("ScatterND")
def _scatter_nd(node, x, indices, updates):
    k = indices.shape[-1]
    dk, rest = tuple(x.shape[:k]), tuple(x.shape[k:])
    lin = _linear_nd_index(indices.reshape(-1, k), dk)
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
    idx = _wrap_index(indices, x.shape[axis])
    red = node.attrs["reduction"]
    if red == "none":
        return torch.scatter(x, axis, idx, updates)
    if red not in _SCATTER_REDUCE:
        raise ValueError(f"unknown reduction {red!r}")
    return torch.scatter_reduce(x, axis, idx, updates, _SCATTER_REDUCE[red], include_self=True)


@kernel("Expand")
def _expand(node, x, shape):
    # Bidirectional: a target dim of 1 keeps the input's extent.
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(as_ints(shape))))


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
