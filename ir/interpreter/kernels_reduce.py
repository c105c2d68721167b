"""Kernels of the reductions (ir/ops/reduce.py): Reduce*, ArgMax/ArgMin, the softmax family,
CumSum, TopK and the Lp/mean-variance normalizations.

Reductions take ``axes`` as an optional int64 input. No axes reduces over all axes, unless
``noop_with_empty_axes``: then the reduction runs over an empty set of axes, which is the
identity for the reduction step but still applies the elementwise steps of a composite
reduction (ReduceSumSquare squares, ReduceLogSum takes the log), as the ONNX definition says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..types import DType
from .engine import as_ints, input_dtype, kernel, normalize_axis

_INT64_MIN = -(2**63)


def _reduce_axes(node, x: torch.Tensor, axes: torch.Tensor | None) -> list[int]:
    """The sorted axes to reduce; empty means reduce over nothing."""
    ax = as_ints(axes) if axes is not None else []
    if not ax:
        return [] if node.attrs["noop_with_empty_axes"] else list(range(x.dim()))
    return sorted({normalize_axis(a, x.dim(), node) for a in ax})


def _reduced_shape(shape, dims, keepdim):
    if keepdim:
        return tuple(1 if i in dims else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in dims)


def _float(x: torch.Tensor) -> torch.Tensor:
    """Integers are reduced in float64 where the math needs it; the engine casts back
    (truncating, like ONNX's reference)."""
    return x if x.dtype.is_floating_point else x.to(torch.float64)


def _reduction(pre, reduce, post=None, empty_fill=None):
    """A kernel: ``post(reduce(pre(x), dims, keepdim))``. ``empty_fill(x)`` gives the value of a
    reduction over an empty set where torch would refuse it."""

    def k(node, x, axes=None):
        dims = _reduce_axes(node, x, axes)
        keep = bool(node.attrs["keepdims"])
        y = pre(x) if pre is not None else x
        if dims:
            if empty_fill is not None and any(x.shape[d] == 0 for d in dims):
                y = torch.full(_reduced_shape(x.shape, dims, keep), empty_fill(node, x), dtype=y.dtype)
            else:
                y = reduce(y, dims, keep)
        return post(y) if post is not None else y

    return k


def _sum(y, dims, keep):
    return torch.sum(y, dim=dims, keepdim=keep)


def _prod(y, dims, keep):
    # torch.prod takes a single dim: move the reduced axes last and flatten them.
    rest = [i for i in range(y.dim()) if i not in dims]
    out_shape = _reduced_shape(y.shape, dims, keep)
    n = 1
    for d in dims:
        n *= y.shape[d]
    flat = y.permute(rest + dims).reshape([y.shape[i] for i in rest] + [n])
    return torch.prod(flat, dim=-1).reshape(out_shape)


def _mean(y, dims, keep):
    return torch.mean(_float(y), dim=dims, keepdim=keep)


def _is_u64(node) -> bool:
    return input_dtype(node, 0) is DType.UINT64


def _extreme(fn, lowest: bool):
    def reduce(y, dims, keep):
        if y.dtype == torch.bool:
            return fn(y.to(torch.uint8), dim=dims, keepdim=keep).to(torch.bool)
        return fn(y, dim=dims, keepdim=keep)

    def k(node, x, axes=None):
        u64 = _is_u64(node)
        inner = _reduction(None, reduce, None, lambda n, t: _identity_value(t, lowest, u64))
        if u64:
            return inner(node, x ^ _INT64_MIN, axes) ^ _INT64_MIN
        return inner(node, x, axes)

    return k


def _identity_value(x: torch.Tensor, lowest: bool, u64: bool = False):
    """The identity of max (lowest=True) or min over an empty set, as ONNX: -inf/+inf for floats,
    the extreme values for integers, False/True for bool."""
    if x.dtype == torch.bool:
        return not lowest
    if x.dtype.is_floating_point:
        return float("-inf") if lowest else float("inf")
    info = torch.iinfo(x.dtype)
    return info.min if lowest else info.max


kernel("ReduceSum")(_reduction(None, _sum))
kernel("ReduceSumSquare")(_reduction(lambda x: x * x, _sum))
kernel("ReduceL1")(_reduction(torch.abs, _sum))
kernel("ReduceL2")(_reduction(lambda x: _float(x) * _float(x), _sum, torch.sqrt))
kernel("ReduceLogSum")(_reduction(_float, _sum, torch.log))
kernel("ReduceLogSumExp")(_reduction(_float, lambda y, d, k: torch.logsumexp(y, dim=d, keepdim=k)))
kernel("ReduceMean")(_reduction(None, _mean))
kernel("ReduceProd")(_reduction(None, _prod))
kernel("ReduceMax")(_extreme(torch.amax, lowest=True))
kernel("ReduceMin")(_extreme(torch.amin, lowest=False))


def _argreduce(largest: bool):
    def k(node, x):
        axis = normalize_axis(node.attrs["axis"], x.dim(), node)
        keep = bool(node.attrs["keepdims"])
        if x.dtype == torch.bool:
            x = x.to(torch.uint8)
        elif _is_u64(node):
            x = x ^ _INT64_MIN
        fn = torch.argmax if largest else torch.argmin
        if node.attrs["select_last_index"]:
            n = x.shape[axis]
            return (n - 1) - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)  # the first extreme index, as ONNX

    return k


kernel("ArgMax")(_argreduce(True))
kernel("ArgMin")(_argreduce(False))


@kernel("Softmax")
def _softmax(node, x):
    return F.softmax(x, dim=normalize_axis(node.attrs["axis"], x.dim(), node))


@kernel("LogSoftmax")
def _log_softmax(node, x):
    return F.log_softmax(x, dim=normalize_axis(node.attrs["axis"], x.dim(), node))


@kernel("Hardmax")
def _hardmax(node, x):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    if x.numel() == 0:
        return torch.zeros_like(x)
    idx = torch.argmax(x, dim=axis, keepdim=True)  # the first maximum wins ties
    return torch.zeros_like(x).scatter(axis, idx, 1.0)


@kernel("CumSum")
def _cumsum(node, x, axis):
    (a,) = as_ints(axis)
    a = normalize_axis(a, x.dim(), node)
    reverse, exclusive = node.attrs["reverse"], node.attrs["exclusive"]
    if reverse:
        x = x.flip(a)
    c = torch.cumsum(x, dim=a)
    n = x.shape[a]
    if exclusive and n:
        # Shift by one (exact, unlike cumsum - x for floats).
        c = torch.cat([torch.zeros_like(c.narrow(a, 0, 1)), c.narrow(a, 0, n - 1)], dim=a)
    if reverse:
        c = c.flip(a)
    return c


@kernel("TopK")
def _topk(node, x, k):
    (kk,) = as_ints(k)
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    if not 0 <= kk <= x.shape[axis]:
        raise ValueError(f"k={kk} is out of range for axis {axis} of extent {x.shape[axis]}")
    largest = bool(node.attrs["largest"])
    key = x
    if x.dtype == torch.bool:
        key = x.to(torch.uint8)
    elif _is_u64(node):
        key = x ^ _INT64_MIN
    # A stable sort keeps equal values in index order: the lower index comes first, as ONNX.
    _, idx = torch.sort(key, dim=axis, descending=largest, stable=True)
    idx = idx.narrow(axis, 0, kk)
    return torch.gather(x, axis, idx), idx


@kernel("LpNormalization")
def _lp_normalization(node, x):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    p = node.attrs["p"]
    if p == 1:
        norm = x.abs().sum(dim=axis, keepdim=True)
    elif p == 2:
        norm = torch.sqrt((x * x).sum(dim=axis, keepdim=True))
    else:
        raise ValueError(f"p must be 1 or 2, got {p}")
    # A zero norm (all zeros along the axis) gives zeros, as ONNX.
    return x / torch.where(norm == 0, torch.ones((), dtype=norm.dtype), norm)


@kernel("MeanVarianceNormalization")
def _mvn(node, x):
    """(X - E[X]) / (sqrt(E[(X - E[X])^2]) + 1e-9) over ``axes``: the ONNX function body, with
    the variance computed as the mean squared deviation (equal in exact arithmetic to its
    E[X^2] - E[X]^2, and never negative from rounding)."""
    dims = sorted({normalize_axis(a, x.dim(), node) for a in node.attrs["axes"]})
    mean = x.mean(dim=dims, keepdim=True)
    d = x - mean
    std = torch.sqrt((d * d).mean(dim=dims, keepdim=True))
    return d / (std + 1e-9)
