"""General paths of the sliding-window lowerings (``nn.py`` keeps the fast Relax ops for the
common cases and calls these for the rest): average pooling with dilations, max pooling with an
``Indices`` output (or ``storage_order=1``), and transposed convolution of any rank with negative
pads or ``output_padding >= stride``. Each repeats the interpreter's arithmetic
(``ir/interpreter/kernels_nn.py``) with the geometry of ``ir/windows.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...ir import windows

_ACC = {"float16": "float32", "bfloat16": "float32"}
_CONV = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
_CONV_T = {1: ("conv1d_transpose", "NCW", "IOW"), 2: ("conv2d_transpose", "NCHW", "IOHW"),
           3: ("conv3d_transpose", "NCDHW", "IODHW")}
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def _extents(ctx, node, sizes, kernel, strides, dil, lo, hi):
    try:
        return windows.pool_extents(node.attrs, sizes, kernel, strides, dil, lo, hi)
    except ValueError as e:
        raise ctx.fail(str(e)) from None


def _pad_width(lo, hi, extra):
    width = [0, 0, 0, 0]
    for a, b, e in zip(lo, hi, extra):
        width += [a, b + e]
    return width


def avg_pool_dilated(ctx, node, x, shp, kernel, strides, dil, lo, hi):
    """AveragePool with dilations: a depthwise convolution with a kernel of ones over the
    explicitly padded input, divided by each window's count of cells inside the input (or
    inside input + pads with ``count_include_pad``; never the ceil_mode tail)."""
    R = ctx.R
    n = len(shp) - 2
    sizes = shp[2:]
    outs, extra = _extents(ctx, node, sizes, kernel, strides, dil, lo, hi)
    dt = ctx.dtype(x)
    acc = _ACC.get(dt, dt)
    src = x if acc == dt else ctx.emit(R.astype(x, acc))
    if any(lo) or any(hi) or any(extra):
        src = ctx.emit(R.nn.pad(src, _pad_width(lo, hi, extra), "constant", 0.0))
    padded = ctx.shape(src)
    flat = ctx.emit(R.reshape(src, [shp[0] * shp[1], 1] + list(padded[2:])))
    ones = ctx.const(np.ones([1, 1] + list(kernel), dtype=acc), acc)
    dl, kl = _LAYOUT[n]
    sums = ctx.emit(getattr(R.nn, _CONV[n])(flat, ones, strides=strides, padding=[0] * (2 * n), dilation=dil,
                                            data_layout=dl, kernel_layout=kl))
    sums = ctx.emit(R.reshape(sums, list(shp[:2]) + outs))
    include = bool(node.attrs["count_include_pad"])
    counts = np.ones([1], dtype=np.float64)
    for i in range(n):
        p = np.arange(outs[i])[:, None] * strides[i] + np.arange(kernel[i])[None, :] * dil[i] - lo[i]
        inside = (p >= -lo[i]) & (p < sizes[i] + hi[i]) if include else (p >= 0) & (p < sizes[i])
        counts = np.multiply.outer(counts, inside.sum(axis=1))
    counts = ctx.const(counts.reshape(outs).astype(acc), acc)
    y = ctx.emit(R.divide(sums, counts))
    return y if acc == dt else R.astype(y, dt)


def max_pool_taps(ctx, node, x, shp, kernel, strides, dil, lo, hi):
    """MaxPool with its Indices output: a running max over the kernel's taps (strided slices of
    the input padded with -inf), keeping the first maximal position (a later NaN wins, as
    PyTorch). Indices are flat over the whole input, row-major (column-major over the spatial
    axes with ``storage_order=1``)."""
    R = ctx.R
    n = len(shp) - 2
    sizes = shp[2:]
    outs, extra = _extents(ctx, node, sizes, kernel, strides, dil, lo, hi)
    dt = ctx.dtype(x)
    work = dt if dt.startswith("float") or dt == "bfloat16" else "float64"
    src = x if work == dt else ctx.emit(R.astype(x, work))
    if any(lo) or any(hi) or any(extra):
        src = ctx.emit(R.nn.pad(src, _pad_width(lo, hi, extra), "constant", float("-inf")))
    order = list(range(n)) if node.attrs["storage_order"] == 0 else list(reversed(range(n)))
    grids = np.meshgrid(*[np.arange(o) for o in outs], indexing="ij")
    best = bidx = None
    for taps in itertools.product(*[range(k) for k in kernel]):
        begin = [t * d for t, d in zip(taps, dil)]
        end = [b + (o - 1) * s + 1 for b, o, s in zip(begin, outs, strides)]
        v = ctx.emit(R.strided_slice(src, list(range(2, n + 2)), begin, end, strides, assume_inbound=True))
        flat = np.zeros(outs, dtype=np.int64)
        for i in order:
            flat = flat * sizes[i] + (grids[i] * strides[i] + taps[i] * dil[i] - lo[i])
        idx = ctx.const(flat)
        if best is None:
            best, bidx = v, idx
            continue
        upd = ctx.emit(R.logical_or(R.greater(v, best), R.isnan(v)))
        best = ctx.emit(R.where(upd, v, best))
        bidx = ctx.emit(R.where(upd, idx, bidx))
    plane = math.prod(sizes)
    base = np.arange(shp[0] * shp[1], dtype=np.int64).reshape([shp[0], shp[1]] + [1] * n) * plane
    indices = ctx.emit(R.add(bidx, ctx.const(base)))
    y = best if work == dt else ctx.emit(R.astype(best, dt))
    return y, indices


def conv_transpose_general(ctx, node, x, w, b, shp, kernel, strides, dil):
    """ConvTranspose of any rank: the full transposed convolution (no pads), then ONNX's pads
    crop it (negative pads extend it with zeros) and output_padding extends its end, as the
    interpreter does."""
    R = ctx.R
    n = len(shp) - 2
    try:
        lo, hi = windows.transpose_pads(node.attrs, shp[2:], kernel, strides, dil)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    opad = list(node.attrs["output_padding"] or [0] * n)
    fn, dl, kl = _CONV_T[n]
    y = ctx.emit(getattr(R.nn, fn)(x, w, strides=strides, padding=[0] * (2 * n), output_padding=[0] * n, dilation=dil,
                                   groups=node.attrs["group"], data_layout=dl, kernel_layout=kl))
    full = [s * (d - 1) + (k - 1) * dd + 1 for d, k, s, dd in zip(shp[2:], kernel, strides, dil)]
    begin = list(lo)
    end = [f - h + o for f, h, o in zip(full, hi, opad)]
    if any(e < bb for bb, e in zip(begin, end)):
        raise ctx.fail("ConvTranspose pads leave a negative output extent")
    cut_b = [max(bb, 0) for bb in begin]
    cut_e = [min(e, f) for e, f in zip(end, full)]
    if cut_b != [0] * n or cut_e != full:
        y = ctx.emit(R.strided_slice(y, list(range(2, n + 2)), cut_b, cut_e, assume_inbound=True))
    width = [0, 0, 0, 0]
    for bb, e, f in zip(begin, end, full):
        width += [max(-bb, 0), max(e - f, 0)]
    if any(width):
        y = ctx.emit(R.nn.pad(y, width, "constant", 0.0))
    if b is not None:
        y = R.add(y, ctx.emit(R.reshape(b, [1, -1] + [1] * n)))
    return y
