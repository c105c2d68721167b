"""Lowerings of the image ops (ir/ops/image.py): Resize, GridSample, AffineGrid, Col2Im and
CenterCropPad.

* Resize embeds ``ir/resize.py``'s per-axis tables (the interpreter's): each resized axis is a
  sum over taps of ``take(x, index_k, axis) * coeff_k``, all constant indices inside the axis,
  which FuseOps turns into one kernel per axis. Scales, sizes and roi must be known at compile
  time (the ONNX backend specializes on them when they are graph inputs).
* GridSample is a TE kernel: its coordinates are data, so every tap index is clamped into the
  input (after a NaN check) before it is read; ``zeros`` padding masks the value instead.
* AffineGrid multiplies a constant base grid by theta; Col2Im gathers each output pixel's
  contributions through a constant table; CenterCropPad slices and pads.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...ir import resize as rz
from ...ir.geometry import base_grid, center_crop_pad_slices, col2im_geometry, col2im_positions
from ...ir.ops.image import GRID_SAMPLE_MODES
from . import lowering

_WORK = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}


def _absent(v) -> bool:
    return v is None or (v.shape is not None and len(v.shape) == 1 and v.shape[0] == 0)


def _const_floats(ctx, v, what: str) -> list[float] | None:
    if _absent(v):
        return None
    if v.const is None:
        raise ctx.fail(f"Resize {what} known only at run time")
    return [float(x) for x in np.asarray(v.const, dtype=np.float64).reshape(-1)]


# -- Resize --------------------------------------------------------------------------------------
@lowering("Resize")
def _resize(ctx, node, x, roi=None, scales=None, sizes=None):
    R = ctx.R
    attrs = node.attrs
    shp = ctx.shape(x)
    if shp is None:
        raise ctx.fail("Resize of an input of unknown shape")
    scale_v = _const_floats(ctx, node.inputs[2] if len(node.inputs) > 2 else None, "scales")
    size_v = None
    if len(node.inputs) > 3 and not _absent(node.inputs[3]):
        size_v = ctx.known_ints(node.inputs[3])
        if size_v is None or not all(isinstance(s, int) for s in size_v):
            raise ctx.fail("Resize sizes known only at run time")
    roi_v = None
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        roi_v = _const_floats(ctx, node.inputs[1], "roi")
    try:
        axes = rz.resize_axes(attrs, len(shp))
    except rz.ResizeError as e:
        raise ctx.fail(str(e)) from None
    if any(not isinstance(shp[a], int) for a in axes):
        raise ctx.fail("Resize along an axis of symbolic extent")
    static = [d if isinstance(d, int) else 1 for d in shp]
    try:
        _, plans = rz.plan(attrs, static, roi_v, scale_v, size_v)
    except rz.ResizeError as e:
        raise ctx.fail(str(e)) from None
    if not plans:
        return x
    dt = ctx.dtype(x)
    arithmetic = any(not p.is_gather or p.extrapolate is not None for p in plans)
    work = _WORK.get(dt, "float64")
    y = ctx.emit(R.astype(x, work)) if arithmetic and dt != work else x
    for p in plans:
        tail = [1] * (len(shp) - p.axis - 1)
        if p.size_out == 0 or p.size_in == 0:
            out = list(ctx.shape(y))
            out[p.axis] = p.size_out
            y = ctx.emit(R.zeros(out, ctx.dtype(y)))
            continue
        acc = None
        for k in range(p.coeffs.shape[1]):
            idx = ctx.const(np.ascontiguousarray(p.index[:, k]).astype(np.int64))
            term = ctx.emit(R.take(y, idx, p.axis))  # constant indices inside [0, size_in)
            if not p.is_gather:
                w = ctx.const(p.coeffs[:, k].reshape([p.size_out] + tail).astype(work), work)
                term = ctx.emit(R.multiply(term, w))
            acc = term if acc is None else ctx.emit(R.add(acc, term))
        y = acc
        if p.extrapolate is not None:
            mask = ctx.const(p.extrapolate.reshape([p.size_out] + tail))
            y = ctx.emit(R.where(mask, ctx.scalar(attrs["extrapolation_value"], ctx.dtype(y)), y))
    if not arithmetic or dt == work:
        return y
    if dt.startswith("float") or dt == "bfloat16":
        return R.astype(y, dt)
    info = np.iinfo(np.dtype(dt))
    y = ctx.emit(R.round(y))  # half to even, then saturate (as ONNX's reference)
    y = ctx.emit(R.minimum(R.maximum(y, ctx.scalar(float(info.min), work)), ctx.scalar(float(info.max), work)))
    return R.astype(y, dt)


# -- GridSample ----------------------------------------------------------------------------------
_CUBIC_A = -0.75
_TAPS = {"nearest": 1, "linear": 2, "cubic": 4}
_K_OPAQUE = 8


def _axis_taps_te(grid, axis: int, size, mode: str, padding: str, align: bool, work: str, what: str):
    """TE: the taps of spatial ``axis`` at every output position, [N, O..., taps]: the source
    index (int64 inside [0, size), or -1 where zeros padding masks the tap) or its weight.
    ``what`` picks which. Kept apart from the gather so the gather's indices are plain loads
    (data-dependent select chains in buffer indices make the schedule analysis explode)."""
    from tvm import te, tirx

    r = len(grid.shape) - 2

    def f(v):
        return tirx.const(v, work)

    def let(value, body):
        """``body(var)`` with ``value`` bound once: reused subexpressions stay a DAG (a tree
        of nested selects grows exponentially and stalls TVM's analyses)."""
        var = tirx.Var("t", value.ty)
        return tirx.Let(var, value, body(var))

    def reflect(v, lo, hi):
        def fold(x):
            rng = hi - lo
            safe_rng = tirx.Select(rng > f(0.0), rng, f(1.0))
            below, above = x < lo, x > hi

            def with_dx(dx):
                def with_n(n):
                    rem = dx - n * safe_rng
                    even = tirx.floor(n * f(0.5)) * f(2.0) == n
                    from_lo, from_hi = lo + rem, hi - rem
                    return tirx.Select(below, tirx.Select(even, from_lo, from_hi),
                                       tirx.Select(above, tirx.Select(even, from_hi, from_lo), x))
                return let(tirx.trunc(dx / safe_rng), with_n)

            folded = let(tirx.Select(below, lo - x, tirx.Select(above, x - hi, f(0.0))), with_dx)
            return tirx.Select(rng > f(0.0), folded, lo)
        return let(v, fold)

    def compute(*i):
        n, o, k = i[0], list(i[1:-1]), i[-1]
        coord = grid[tuple([n] + o + [r - 1 - axis])].astype(work)
        sz = size.astype(work)
        if align:
            lo, hi = f(0.0), sz - f(1.0)
            v = (coord + f(1.0)) / f(2.0) * (sz - f(1.0))
        else:
            lo, hi = f(-0.5), sz - f(0.5)
            v = ((coord + f(1.0)) * sz - f(1.0)) / f(2.0)
        if mode == "nearest":
            v = tirx.nearbyint(v)  # half to even

        def padded(v):
            outside = tirx.any(v < lo, v > hi)
            if padding == "border":
                return tirx.Select(outside, tirx.max(tirx.min(v, sz - f(1.0)), f(0.0)), v)
            if padding == "reflection":
                return tirx.Select(outside, reflect(v, lo, hi), v)
            return v

        kk = k.astype(work)

        def taps(v):
            if mode == "nearest":
                base = tirx.trunc(v)
            else:
                base = tirx.floor(v)
            if what == "weight":
                if mode == "nearest":
                    return f(1.0)
                frac = v - base
                if mode == "linear":
                    return tirx.Select(k == 0, f(1.0) - frac, frac)
                a = _CUBIC_A

                def weight(t):  # t: distance to tap k, in [0, 2]
                    near = ((f(a + 2) * t - f(a + 3)) * t) * t + f(1.0)
                    far = ((f(a) * t - f(5 * a)) * t + f(8 * a)) * t - f(4 * a)
                    return tirx.Select(t <= f(1.0), near, far)
                return let(tirx.abs(frac - (kk - f(1.0))), weight)

            def index(p):
                if padding == "reflection":
                    p = tirx.trunc(reflect(p, lo, hi))

                def clamp(p):
                    # Data-dependent coordinate: NaN and anything outside become an index inside.
                    q = tirx.max(tirx.min(tirx.Select(tirx.isnan(p), f(0.0), p), sz - f(1.0)), f(0.0)).astype("int64")
                    if padding == "zeros":
                        return tirx.Select(tirx.all(p >= f(0.0), p < sz), q, tirx.const(-1, "int64"))
                    return q
                return let(p, clamp)
            return index(base + kk - (f(1.0) if mode == "cubic" else f(0.0)))

        return let(let(v, padded), taps)

    shape = [grid.shape[0]] + list(grid.shape[1:-1]) + [_TAPS[mode]]
    return te.compute(shape, compute, name=f"grid_sample_{what}")


def _gather_taps_te(x, *tables):
    """TE: Y[n, c, o...] = sum over tap combinations of the product of the axes' weights times
    X at their indices (0 where a masked index is -1); reads are clamped inside X."""
    from tvm import te, tirx

    r = len(x.shape) - 2
    idx, wts = tables[:r], tables[r:]
    taps = [int(t.shape[-1]) for t in idx]
    out = list(x.shape[:2]) + list(idx[0].shape[1:-1])
    work = wts[0].dtype

    def compute(*i):
        n, c, o = i[0], i[1], list(i[2:])
        acc = None
        for combo in itertools.product(*[range(t) for t in taps]):
            pos = [idx[a][tuple([n] + o + [k])] for a, k in enumerate(combo)]
            read = x[tuple([n, c] + [tirx.max(p, tirx.const(0, "int64")) for p in pos])].astype(work)
            val = tirx.if_then_else(tirx.all(*[p >= 0 for p in pos]) if r > 1 else pos[0] >= 0, read,
                                    tirx.const(0.0, work))
            for a, k in enumerate(combo):
                val = val * wts[a][tuple([n] + o + [k])]
            acc = val if acc is None else acc + val
        return acc.astype(x.dtype)

    return te.compute(out, compute, name="grid_sample")


@lowering("GridSample")
def _grid_sample(ctx, node, x, grid):
    xs, gs = ctx.shape(x), ctx.shape(grid)
    if xs is None or gs is None:
        raise ctx.fail("GridSample with unknown ranks")
    r = len(xs) - 2
    if not isinstance(gs[-1], int) or gs[-1] != r:
        raise ctx.fail(f"GridSample grid's last dim must be {r}")
    mode = GRID_SAMPLE_MODES[node.attrs["mode"]]
    pad, align = node.attrs["padding_mode"], bool(node.attrs["align_corners"])
    work = "float64" if "float64" in (ctx.dtype(x), ctx.dtype(grid)) else "float32"
    dims = [ctx.tirx.IntImm("int64", d) if isinstance(d, int) else d for d in xs[2:]]
    idx, wts = [], []
    for a in range(r):
        for what, dest in (("index", idx), ("weight", wts)):
            dest.append(ctx.bb.emit_te(_axis_taps_te, grid, a, dims[a], mode, pad, align, work, what,
                                       primfunc_name_hint=f"grid_sample_{what}"))
    return ctx.bb.emit_te(_gather_taps_te, x, *idx, *wts, primfunc_name_hint="grid_sample",
                          primfunc_attrs={"op_pattern": _K_OPAQUE})


# -- AffineGrid ----------------------------------------------------------------------------------
@lowering("AffineGrid")
def _affine_grid(ctx, node, theta, size):
    R = ctx.R
    sz = ctx.known_ints(node.inputs[1])
    if sz is None:
        raise ctx.fail("AffineGrid size known only at run time")
    if not all(isinstance(d, int) for d in sz[2:]):
        raise ctx.fail("AffineGrid with a symbolic spatial size")
    sp = [int(d) for d in sz[2:]]
    r = len(sp)
    dt = ctx.dtype(theta)
    work = _WORK[dt]
    th = theta if dt == work else ctx.emit(R.astype(theta, work))
    base = ctx.const(base_grid(sp, bool(node.attrs["align_corners"])).astype(work), work)  # [P, r+1]
    g = ctx.emit(R.matmul(base, ctx.emit(R.permute_dims(th, [0, 2, 1]))))  # [N, P, r]
    n = ctx.shape(theta)[0]
    g = ctx.emit(R.reshape(g, [n] + sp + [r]))
    return g if dt == work else R.astype(g, dt)


# -- Col2Im --------------------------------------------------------------------------------------
@lowering("Col2Im")
def _col2im(ctx, node, x, image_shape, block_shape):
    R = ctx.R
    image, block = ctx.known_ints(node.inputs[1]), ctx.known_ints(node.inputs[2])
    if image is None or block is None:
        raise ctx.fail("Col2Im image_shape / block_shape known only at run time")
    if not all(isinstance(d, int) for d in image + block):
        raise ctx.fail("Col2Im with a symbolic image or block shape")
    xs = ctx.shape(x)
    k = math.prod(block)
    if xs is None or not isinstance(xs[1], int) or not isinstance(xs[2], int) or xs[1] % k:
        raise ctx.fail("Col2Im needs static channel and block counts")
    try:
        col2im_geometry(node.attrs, image, block)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    pos = col2im_positions(node.attrs, image, block)  # [K, L]: image position or -1
    length = xs[2]
    if pos.shape[1] != length:
        raise ctx.fail(f"input has {length} blocks, image_shape {image} with block_shape {block} gives {pos.shape[1]}")
    c = xs[1] // k
    s = math.prod(image)
    # For every output pixel and kernel offset, the column entry that lands there (at most one),
    # or the zero appended after each offset's L columns.
    table = np.tile((np.arange(k) * (length + 1) + length)[None, :], (s, 1))
    kk, ll = np.nonzero(pos >= 0)
    table[pos[kk, ll], kk] = kk * (length + 1) + ll
    n = xs[0]
    cols = ctx.emit(R.reshape(x, [n, c, k, length]))
    cols = ctx.emit(R.nn.pad(cols, [0, 0, 0, 0, 0, 0, 0, 1], "constant", 0.0))
    cols = ctx.emit(R.reshape(cols, [n, c, k * (length + 1)]))
    g = ctx.emit(R.take(cols, ctx.const(table.reshape(-1).astype(np.int64)), 2))  # inside by construction
    g = ctx.emit(R.sum(ctx.emit(R.reshape(g, [n, c, s, k])), [3]))
    return R.reshape(g, [n, c] + list(image))


# -- CenterCropPad -------------------------------------------------------------------------------
@lowering("CenterCropPad")
def _center_crop_pad(ctx, node, x, shape):
    R = ctx.R
    target = ctx.known_ints(node.inputs[1])
    if target is None:
        raise ctx.fail("CenterCropPad shape known only at run time")
    dims = ctx.shape(x)
    r = len(dims)
    axes = [a % r for a in (node.attrs["axes"] or range(r))]
    if len(target) != len(axes) or any(not isinstance(t, int) or t < 0 for t in target):
        raise ctx.fail(f"CenterCropPad shape {target} for axes {axes}")
    if any(not isinstance(dims[a], int) for a in axes):
        raise ctx.fail("CenterCropPad of an axis of symbolic extent")
    static = [d if isinstance(d, int) else 1 for d in dims]
    src, dst, _ = center_crop_pad_slices(static, axes, target)
    crop = [a for a in axes if src[a] != slice(0, static[a])]
    y = x
    if crop:
        y = ctx.emit(R.strided_slice(y, crop, [src[a].start for a in crop], [src[a].stop for a in crop],
                                     assume_inbound=True))
    width = []
    for a in range(r):
        t = target[axes.index(a)] if a in axes else None
        if t is not None and t > static[a]:
            width += [dst[a].start, t - dst[a].stop]
        else:
            width += [0, 0]
    if any(width):
        if ctx.dtype(y) == "bool":
            y = ctx.emit(R.astype(R.nn.pad(ctx.emit(R.astype(y, "uint8")), width, "constant", 0.0), "bool"))
        else:
            y = ctx.emit(R.nn.pad(y, width, "constant", 0.0))
    return y
