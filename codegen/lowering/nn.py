"""Lowerings of the linear-algebra and neural-network ops (ir/ops/nn.py): MatMul, Gemm, Einsum,
convolution, pooling, normalizations and the composite ``Attention``."""

from __future__ import annotations

import numpy as np

from ...ir import windows
from . import lowering, windowed

_STASH = {1: "float32", 10: "float16", 11: "float64"}


# -- linear algebra ------------------------------------------------------------------------------
@lowering("MatMul")
def _matmul(ctx, node, a, b):
    return ctx.R.matmul(a, b)


@lowering("Gemm")
def _gemm(ctx, node, a, b, c=None):
    R = ctx.R
    dt = ctx.dtype(a)
    if node.attrs["transA"]:
        a = ctx.emit(R.permute_dims(a, [1, 0]))
    if node.attrs["transB"]:
        b = ctx.emit(R.permute_dims(b, [1, 0]))
    y = ctx.emit(R.matmul(a, b))
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    if alpha != 1.0:
        y = ctx.emit(R.multiply(y, ctx.scalar(alpha, dt)))
    if c is not None and beta != 0.0:
        cc = c if beta == 1.0 else ctx.emit(R.multiply(c, ctx.scalar(beta, dt)))
        y = R.add(y, cc)
    return y


@lowering("Einsum")
def _einsum(ctx, node, *xs):
    return ctx.R.einsum(list(xs), node.attrs["equation"].replace(" ", ""))


# -- convolution and pooling ---------------------------------------------------------------------
def _spatial(ctx, node, x, w_kernel=None):
    shp = ctx.static_shape(x)
    if shp is None:
        raise ctx.fail(f"{node.op} on a symbolic input shape")
    n = len(shp) - 2
    if n not in (1, 2, 3):
        raise ctx.fail(f"{node.op} with {n} spatial dims")
    kernel, strides, dil = windows.window(node.attrs, n, w_kernel or ())
    return shp, n, kernel, strides, dil


def _pads(ctx, node, sizes, kernel, strides, dil):
    try:
        return windows.pads(node.attrs, sizes, kernel, strides, dil)
    except ValueError as e:
        raise ctx.fail(str(e)) from None


_CONV = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


@lowering("Conv")
def _conv(ctx, node, x, w, b=None):
    wshape = ctx.static_shape(w)
    if wshape is None:
        raise ctx.fail("Conv weight with a symbolic shape")
    shp, n, kernel, strides, dil = _spatial(ctx, node, x, wshape[2:])
    lo, hi = _pads(ctx, node, shp[2:], kernel, strides, dil)
    fn = getattr(ctx.R.nn, _CONV[n])
    dl, kl = _LAYOUT[n]
    y = ctx.emit(fn(x, w, strides=strides, padding=lo + hi, dilation=dil, groups=node.attrs["group"],
                    data_layout=dl, kernel_layout=kl))
    if b is not None:
        y = ctx.R.add(y, ctx.emit(ctx.R.reshape(b, [1, -1] + [1] * n)))
    return y


@lowering("ConvTranspose")
def _conv_transpose(ctx, node, x, w, b=None):
    wshape = ctx.static_shape(w)
    if wshape is None:
        raise ctx.fail("ConvTranspose weight with a symbolic shape")
    shp, n, kernel, strides, dil = _spatial(ctx, node, x, wshape[2:])
    opad = list(node.attrs["output_padding"] or [0] * n)
    try:
        lo, hi = windows.transpose_pads(node.attrs, shp[2:], kernel, strides, dil)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    if n == 3 or any(p < 0 for p in lo + hi) or (any(opad) and any(o >= s for o, s in zip(opad, strides))):
        # Relax's own pads cannot say these: crop / extend the full result explicitly.
        return windowed.conv_transpose_general(ctx, node, x, w, b, shp, kernel, strides, dil)
    # Relax's output_padding extends the end; ONNX pads crop. Fold both into asymmetric pads.
    fn = ctx.R.nn.conv1d_transpose if n == 1 else ctx.R.nn.conv2d_transpose
    dl = "NCW" if n == 1 else "NCHW"
    kl = "IOW" if n == 1 else "IOHW"
    y = ctx.emit(fn(x, w, strides=strides, padding=lo + hi, output_padding=opad, dilation=dil,
                    groups=node.attrs["group"], data_layout=dl, kernel_layout=kl))
    if b is not None:
        y = ctx.R.add(y, ctx.emit(ctx.R.reshape(b, [1, -1] + [1] * n)))
    return y


def _pool_common(ctx, node, x):
    shp, n, kernel, strides, dil = _spatial(ctx, node, x, ())
    lo, hi = _pads(ctx, node, shp[2:], kernel, strides, dil)
    return shp, n, kernel, strides, dil, lo, hi


_LAYOUT1 = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


@lowering("MaxPool")
def _max_pool(ctx, node, x):
    shp, n, kernel, strides, dil, lo, hi = _pool_common(ctx, node, x)
    if len(node.outputs) > 1 or node.attrs["storage_order"]:
        return windowed.max_pool_taps(ctx, node, x, shp, kernel, strides, dil, lo, hi)
    fn = getattr(ctx.R.nn, f"max_pool{n}d")
    src = x
    dt = ctx.dtype(x)
    if not dt.startswith("float"):
        src = ctx.emit(ctx.R.astype(x, "float64"))
    y = fn(src, kernel, strides, lo + hi, dil, bool(node.attrs["ceil_mode"]), layout=_LAYOUT1[n])
    return ctx.R.astype(ctx.emit(y), dt) if src is not x else y


@lowering("AveragePool")
def _avg_pool(ctx, node, x):
    shp, n, kernel, strides, dil, lo, hi = _pool_common(ctx, node, x)
    if any(d != 1 for d in dil):
        return windowed.avg_pool_dilated(ctx, node, x, shp, kernel, strides, dil, lo, hi)
    fn = getattr(ctx.R.nn, f"avg_pool{n}d")
    return fn(x, kernel, strides, lo + hi, dil, bool(node.attrs["ceil_mode"]),
              bool(node.attrs["count_include_pad"]), layout=_LAYOUT1[n])


@lowering("LpPool")
def _lp_pool(ctx, node, x):
    """(sum over the window of |x|^p)^(1/p): an average pool counting pads, times the window."""
    R = ctx.R
    shp, n, kernel, strides, dil, lo, hi = _pool_common(ctx, node, x)
    p = node.attrs["p"]
    dt = ctx.dtype(x)
    ax = ctx.emit(R.abs(x))
    src = ax if p == 1 else ctx.emit(R.power(ax, ctx.scalar(float(p), dt)))
    fn = getattr(R.nn, f"avg_pool{n}d")
    mean = ctx.emit(fn(src, kernel, strides, lo + hi, dil, bool(node.attrs["ceil_mode"]), True, layout=_LAYOUT1[n]))
    total = ctx.emit(R.multiply(mean, ctx.scalar(float(np.prod(kernel)), dt)))
    return total if p == 1 else R.power(total, ctx.scalar(1.0 / p, dt))


@lowering("GlobalAveragePool")
def _gap(ctx, node, x):
    r = ctx.rank(x)
    return ctx.R.mean(x, list(range(2, r)), True) if r > 2 else x


@lowering("GlobalMaxPool")
def _gmp(ctx, node, x):
    r = ctx.rank(x)
    return ctx.R.max(x, list(range(2, r)), True) if r > 2 else x


# -- normalization -------------------------------------------------------------------------------
def _chan(ctx, t, r):
    return ctx.emit(ctx.R.reshape(t, [1, -1] + [1] * (r - 2)))


@lowering("BatchNormalization")
def _batch_norm(ctx, node, x, scale, bias, mean, var):
    R = ctx.R
    r = ctx.rank(x)
    dt = ctx.dtype(x)
    inv = ctx.emit(R.divide(scale, R.sqrt(R.add(var, ctx.scalar(node.attrs["epsilon"], ctx.dtype(var))))))
    shift = ctx.emit(R.subtract(bias, R.multiply(mean, inv)))
    if ctx.dtype(inv) != dt:
        inv, shift = ctx.emit(R.astype(inv, dt)), ctx.emit(R.astype(shift, dt))
    return R.add(R.multiply(x, _chan(ctx, inv, r)), _chan(ctx, shift, r))


def _moments(ctx, xs, dims):
    R = ctx.R
    mean = ctx.emit(R.mean(xs, dims, True))
    d = ctx.emit(R.subtract(xs, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), dims, True))
    return mean, d, var


@lowering("InstanceNormalization")
def _instance_norm(ctx, node, x, scale, bias):
    R = ctx.R
    r = ctx.rank(x)
    dt = ctx.dtype(x)
    xs = x if dt in ("float32", "float64") else ctx.emit(R.astype(x, "float32"))
    mean, d, var = _moments(ctx, xs, list(range(2, r)))
    y = ctx.emit(R.divide(d, R.sqrt(R.add(var, ctx.scalar(node.attrs["epsilon"], ctx.dtype(xs))))))
    if ctx.dtype(y) != dt:
        y = ctx.emit(R.astype(y, dt))
    return R.add(R.multiply(y, _chan(ctx, scale, r)), _chan(ctx, bias, r))


@lowering("LayerNormalization")
def _layer_norm(ctx, node, x, scale, bias=None):
    R = ctx.R
    r = ctx.rank(x)
    axis = node.attrs["axis"] % r
    eps = node.attrs["epsilon"]
    stash = _STASH.get(node.attrs["stash_type"])
    if stash is None:
        raise ctx.fail(f"stash_type {node.attrs['stash_type']}")
    dt = ctx.dtype(x)
    axes = list(range(axis, r))
    xshape = ctx.shape(x)
    norm_shape = xshape[axis:] if xshape is not None else None
    sshape = ctx.shape(scale)
    fits = (norm_shape is not None and sshape is not None and len(sshape) == len(norm_shape)
            and all(_eq(ctx, a, b) for a, b in zip(sshape, norm_shape))
            and (bias is None or (ctx.shape(bias) is not None and len(ctx.shape(bias)) == len(norm_shape)
                                  and all(_eq(ctx, a, b) for a, b in zip(ctx.shape(bias), norm_shape)))))
    if len(node.outputs) == 1 and dt == stash and fits:
        beta = bias if bias is not None else ctx.emit(R.zeros_like(scale))
        return R.nn.layer_norm(x, scale, beta, axes, eps)
    xs = x if dt == stash else ctx.emit(R.astype(x, stash))
    mean, d, var = _moments(ctx, xs, axes)
    inv = ctx.emit(R.divide(ctx.scalar(1, stash), R.sqrt(R.add(var, ctx.scalar(eps, stash)))))
    y = ctx.emit(R.multiply(d, inv))
    if dt != stash:
        y = ctx.emit(R.astype(y, dt))
    y = ctx.emit(R.multiply(y, scale))
    if bias is not None:
        y = ctx.emit(R.add(y, bias))
    return y, mean, inv


def _eq(ctx, a, b):
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return ctx.analyzer.can_prove_equal(a, b)


@lowering("RMSNormalization")
def _rms_norm(ctx, node, x, scale):
    R = ctx.R
    r = ctx.rank(x)
    axes = list(range(node.attrs["axis"] % r, r))
    stash = _STASH.get(node.attrs["stash_type"])
    if stash is None:
        raise ctx.fail(f"stash_type {node.attrs['stash_type']}")
    dt = ctx.dtype(x)
    xs = x if dt == stash else ctx.emit(R.astype(x, stash))
    ms = ctx.emit(R.mean(R.multiply(xs, xs), axes, True))
    y = ctx.emit(R.divide(xs, R.sqrt(R.add(ms, ctx.scalar(node.attrs["epsilon"], stash)))))
    if dt != stash:
        y = ctx.emit(R.astype(y, dt))
    return R.multiply(y, scale)


@lowering("GroupNormalization")
def _group_norm(ctx, node, x, scale, bias):
    R = ctx.R
    shp = ctx.shape(x)
    g = node.attrs["num_groups"]
    stash = _STASH.get(node.attrs["stash_type"])
    if shp is None or not isinstance(shp[1], int) or stash is None:
        raise ctx.fail("GroupNormalization needs a static channel count")
    n, c = shp[0], shp[1]
    if g <= 0 or c % g:
        raise ctx.fail(f"num_groups {g} does not divide {c} channels")
    dt = ctx.dtype(x)
    xs = x if dt == stash else ctx.emit(R.astype(x, stash))
    xg = ctx.emit(R.reshape(xs, [n, g, -1]))
    mean, d, var = _moments(ctx, xg, [2])
    y = ctx.emit(R.divide(d, R.sqrt(R.add(var, ctx.scalar(node.attrs["epsilon"], stash)))))
    y = ctx.emit(R.reshape(y, shp))
    if dt != stash:
        y = ctx.emit(R.astype(y, dt))
    r = len(shp)
    return R.add(R.multiply(y, _chan(ctx, scale, r)), _chan(ctx, bias, r))


@lowering("LRN")
def _lrn(ctx, node, x):
    R = ctx.R
    shp = ctx.static_shape(x)
    if shp is None:
        raise ctx.fail("LRN on a symbolic shape")
    size = node.attrs["size"]
    alpha, beta, bias = node.attrs["alpha"], node.attrs["beta"], node.attrs["bias"]
    before = (size - 1) // 2
    after = size - 1 - before
    dt = ctx.dtype(x)
    sq = ctx.emit(R.multiply(x, x))
    width = [0, 0, before, after] + [0, 0] * (len(shp) - 2)
    padded = ctx.emit(R.nn.pad(sq, width, "constant", 0.0))
    c = shp[1]
    acc = None
    for i in range(size):
        part = ctx.emit(R.strided_slice(padded, [1], [i], [i + c], assume_inbound=True))
        acc = part if acc is None else ctx.emit(R.add(acc, part))
    denom = R.power(R.add(ctx.scalar(bias, dt), R.multiply(ctx.scalar(alpha / size, dt), acc)), ctx.scalar(beta, dt))
    return R.divide(x, ctx.emit(denom))


# -- attention -----------------------------------------------------------------------------------
@lowering("Attention")
def _attention(ctx, node, q, k, v, mask=None):
    """softmax(Q Kᵀ · scale + mask) V on [batch, heads, seq, head_dim]; a fully masked query row
    gives zeros (as the interpreter).

    CPU targets get the fused flash-style kernel (``codegen/schedules/attention.py``: no
    [seq, seq] scores in memory), CUDA targets their own (``codegen/gpu/attention.py``): the
    target names it (``Target.attention_kernel``). Variants it does not take keep the
    decomposition below, and the build lists each of them in ``CompiledModule.notes`` (same
    ``plan`` rule)."""
    from ..schedules import attention as fused

    if ctx.target is not None:
        fused = ctx.target.attention_kernel()
    spec, _why = fused.plan(node, ctx.target)
    if spec is not None:
        return fused.emit(ctx, node, spec, q, k, v, mask)
    return _attention_decomposed(ctx, node, q, k, v, mask)


def _attention_decomposed(ctx, node, q, k, v, mask=None):
    """matmul → softmax → matmul (materializes the scores); grouped-query heads are repeated."""
    R = ctx.R
    dt = ctx.dtype(q)
    work = dt if dt in ("float32", "float64") else "float32"
    if work != dt:
        q, k, v = (ctx.emit(R.astype(t, work)) for t in (q, k, v))
        if mask is not None and ctx.dtype(mask) != "bool":
            mask = ctx.emit(R.astype(mask, work))
    qs, ks = ctx.shape(q), ctx.shape(k)
    if qs is None or ks is None:
        raise ctx.fail("Attention with unknown shapes")
    hq, hk = qs[1], ks[1]
    if not (isinstance(hq, int) and isinstance(hk, int)):
        raise ctx.fail("Attention with symbolic head counts")
    if hq != hk:
        k = ctx.emit(R.repeat(k, hq // hk, 1))
        v = ctx.emit(R.repeat(v, hq // hk, 1))
    d = qs[3]
    scale = node.attrs["scale"]
    if scale is None:
        if not isinstance(d, int):
            raise ctx.fail("Attention with a symbolic head_dim and no scale")
        scale = 1.0 / float(np.sqrt(d))
    s = ctx.emit(R.matmul(q, ctx.emit(R.permute_dims(k, [0, 1, 3, 2]))))
    s = ctx.emit(R.multiply(s, ctx.scalar(scale, work)))
    keep = None  # bool [.., sq, sk] of positions attended to
    if node.attrs["is_causal"]:
        sq, sk = qs[2], ks[2]
        rows = (ctx.emit(R.reshape(ctx.emit(R.arange(0, sq, 1, "int64")), [-1, 1])) if not isinstance(sq, int)
                else ctx.const(np.arange(sq, dtype=np.int64).reshape(-1, 1)))
        cols = ctx.emit(R.arange(0, sk, 1, "int64")) if not isinstance(sk, int) else ctx.const(np.arange(sk, dtype=np.int64))
        keep = ctx.emit(R.less_equal(cols, rows))
    if mask is not None:
        if ctx.dtype(mask) == "bool":
            keep = mask if keep is None else ctx.emit(R.logical_and(mask, keep))
        else:
            s = ctx.emit(R.add(s, mask))
    if keep is not None:
        s = ctx.emit(R.where(keep, s, ctx.scalar(-np.inf, work)))
    p = ctx.emit(R.nn.softmax(s, -1))
    if keep is not None or (mask is not None and ctx.dtype(mask) != "bool"):
        p = ctx.emit(R.where(R.isnan(p), ctx.scalar(0, work), p))
    y = ctx.emit(R.matmul(p, v))
    if work != dt:
        y = ctx.emit(R.astype(y, dt))
    return y
