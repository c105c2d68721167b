"""Linear algebra and neural-network ops: MatMul, Gemm, Einsum, convolution, pooling,
normalizations, and the composites fusion creates: ``Attention``, ``Linear`` (dense layer with
bias/activation epilogue), ``AddLayerNorm`` (residual add + layer norm), ``FusedConv``."""

from __future__ import annotations

import re

from .. import windows
from ..errors import IRError, UnsupportedOpError
from ..schema import InferContext
from ..symbolic import add_dims, mul_dims
from ..types import DType, TensorType
from ._common import FLOAT, INT, INTS, STRING, A, broadcast_shapes, norm_axis, op, require_float, require_same_dtype, same_float_type


def matmul_shape(a, b):
    """numpy.matmul shape rule, symbolic dims allowed."""
    if a is None or b is None:
        return None
    if len(a) == 0 or len(b) == 0:
        raise IRError("matmul operands must have rank >= 1")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    k1, k2 = a2[-1], b2[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise IRError(f"matmul contraction mismatch: {list(a)} @ {list(b)}")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@op("MatMul", ["A", "B"])
def _matmul(ctx):
    dt = require_same_dtype(ctx, [0, 1])
    return [TensorType(dt, matmul_shape(ctx.shape(0), ctx.shape(1)))]


@op("Gemm", ["A", "B", "C?"], attrs={"alpha": A(FLOAT, 1.0), "beta": A(FLOAT, 1.0), "transA": A(INT, 0), "transB": A(INT, 0)})
def _gemm(ctx):
    """alpha * A' @ B' + beta * C for 2-D A and B."""
    dt = require_same_dtype(ctx, [0, 1, 2])
    a, b = ctx.shape(0), ctx.shape(1)
    if a is None or b is None:
        return [TensorType(dt, (None, None))]
    if len(a) != 2 or len(b) != 2:
        raise ctx.fail("A and B must be 2-D")
    m = a[1] if ctx.attr("transA") else a[0]
    n = b[0] if ctx.attr("transB") else b[1]
    return [TensorType(dt, (m, n))]


LINEAR_ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")
"""Epilogue activations a ``Linear`` may carry (what fusion folds in after the bias)."""


def check_bias(ctx: InferContext, i: int, n) -> None:
    """A dense layer's optional bias (input ``i``) is 1-D ``[N]``."""
    if not ctx.has(i):
        return
    b = ctx.shape(i)
    if b is not None and (len(b) != 1 or (isinstance(b[0], int) and isinstance(n, int) and b[0] != n)):
        raise ctx.fail(f"B must be 1-D [N] matching W's {n if n is not None else '?'} columns, got {list(b)}")


@op("Linear", ["X", "W", "B?"], attrs={"activation": A(STRING, "none", "one of " + ", ".join(LINEAR_ACTIVATIONS))})
def _linear(ctx):
    """act(X @ W + B): a dense layer with its bias and activation epilogue. X is [..., K], W is
    [K, N] (MatMul orientation), B is [N]. Fusion creates it so codegen sees one packed-weight
    dense kernel with the epilogue inside, and later passes (compression) see a weight."""
    dt = require_same_dtype(ctx, [0, 1, 2])
    act = ctx.attr("activation")
    if act not in LINEAR_ACTIVATIONS:
        raise ctx.fail(f"activation must be one of {', '.join(LINEAR_ACTIVATIONS)}, got {act!r}")
    if not dt.is_float:
        raise ctx.fail(f"inputs must be float tensors, got {dt.value}")
    x, w = ctx.shape(0), ctx.shape(1)
    if w is not None and len(w) != 2:
        raise ctx.fail(f"W must be 2-D [K, N], got rank {len(w)}")
    if x is not None and len(x) == 0:
        raise ctx.fail("X must have rank >= 1")
    check_bias(ctx, 2, w[1] if w is not None else None)
    if x is None or w is None:
        return [TensorType(dt, None)]
    k1, k2 = x[-1], w[0]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ctx.fail(f"contraction mismatch: X {list(x)} @ W {list(w)}")
    return [TensorType(dt, tuple(x[:-1]) + (w[1],))]


_EINSUM_TERM = re.compile(r"^[A-Za-z.]*$")


@op("Einsum", ["Inputs*"], ["Output"], attrs={"equation": A(STRING)})
def _einsum(ctx):
    eq = ctx.attr("equation").replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ctx) or not all(_EINSUM_TERM.match(t) for t in terms + [rhs]):
        raise ctx.fail(f"bad equation {eq!r} for {len(ctx)} inputs")
    dt = require_same_dtype(ctx, range(len(ctx)))
    sizes: dict[str, object] = {}
    ell = None
    for i, term in enumerate(terms):
        shape = ctx.shape(i)
        if shape is None:
            return [TensorType(dt, None)]
        letters = term.replace("...", "")
        n_ell = len(shape) - len(letters)
        if "..." in term:
            pos = term.index("...")
            e = shape[pos: pos + n_ell]
            ell = e if ell is None else broadcast_shapes(ell, e)
            shape = shape[:pos] + shape[pos + n_ell:]
        for ch, d in zip(letters, shape):
            if sizes.get(ch) in (None, 1):
                sizes[ch] = d
    if "->" not in eq:
        rhs = ("..." if ell else "") + "".join(sorted(c for c in set("".join(terms).replace(".", "")) if "".join(terms).count(c) == 1))
    out = []
    for part in re.split(r"(\.\.\.)", rhs):
        if part == "...":
            out.extend(ell or ())
        else:
            out.extend(sizes[c] for c in part)
    return [TensorType(dt, tuple(out))]


def _conv_out(d, k, s, dil, p0, p1):
    if not isinstance(d, int):
        return None
    return (d + p0 + p1 - dil * (k - 1) - 1) // s + 1


def _window(ctx, n: int, default_kernel) -> tuple[list, list, list]:
    """Kernel extent, strides and dilations of an n-D sliding window (conv or pool)."""
    return windows.window(ctx.attrs, n, default_kernel)


def _spatial_pads(ctx, spatial, kernel, strides, dilations):
    """Begin pads followed by end pads, or None when SAME padding meets a symbolic extent."""
    if ctx.attr("auto_pad") in ("SAME_UPPER", "SAME_LOWER") and not all(isinstance(d, int) for d in spatial):
        return None
    lo, hi = windows.pads(ctx.attrs, spatial, kernel, strides, dilations)
    return lo + hi


CONV_ATTRS = {
    "auto_pad": A(STRING, "NOTSET"),
    "dilations": A(INTS, None),
    "group": A(INT, 1),
    "kernel_shape": A(INTS, None),
    "pads": A(INTS, None),
    "strides": A(INTS, None),
}


@op("Conv", ["X", "W", "B?"], attrs=CONV_ATTRS)
def _conv(ctx):
    dt = require_same_dtype(ctx, [0, 1, 2])
    x, w = ctx.shape(0), ctx.shape(1)
    if x is None or w is None:
        return [TensorType(dt, None)]
    n = len(x) - 2
    kernel, strides, dil = _window(ctx, n, w[2:])
    pads = _spatial_pads(ctx, x[2:], kernel, strides, dil)
    if pads is None:
        return [TensorType(dt, (x[0], w[0]) + (None,) * n)]
    sp = tuple(_conv_out(x[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[i + n]) for i in range(n))
    return [TensorType(dt, (x[0], w[0]) + sp)]


@op("ConvTranspose", ["X", "W", "B?"], attrs={**CONV_ATTRS, "output_padding": A(INTS, None), "output_shape": A(INTS, None)})
def _conv_transpose(ctx):
    dt = require_same_dtype(ctx, [0, 1, 2])
    x, w = ctx.shape(0), ctx.shape(1)
    if x is None or w is None:
        return [TensorType(dt, None)]
    n = len(x) - 2
    cout = mul_dims([w[1], ctx.attr("group")])
    if ctx.attr("output_shape"):
        return [TensorType(dt, (x[0], cout) + tuple(ctx.attr("output_shape")[-n:]))]
    kernel, strides, dil = _window(ctx, n, w[2:])
    opad = list(ctx.attr("output_padding") or [0] * n)
    auto = ctx.attr("auto_pad")
    sp = []
    for i in range(n):
        d = x[2 + i]
        if not isinstance(d, int):
            sp.append(None)
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            sp.append(d * strides[i])
        else:
            pads = list(ctx.attr("pads") or [0] * (2 * n)) if auto != "VALID" else [0] * (2 * n)
            sp.append(strides[i] * (d - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[i + n])
    return [TensorType(dt, (x[0], cout) + tuple(sp))]


@op("FusedConv", ["X", "W", "B?"], attrs={**CONV_ATTRS, "activation": A(STRING, "none", "one of " + ", ".join(LINEAR_ACTIVATIONS))})
def _fused_conv(ctx):
    """act(Conv(X, W, B)): a convolution with its bias and activation epilogue (as ONNX
    Runtime's com.microsoft FusedConv), so codegen emits one kernel. Same attributes as Conv."""
    if ctx.attr("activation") not in LINEAR_ACTIVATIONS:
        raise ctx.fail(f"activation must be one of {', '.join(LINEAR_ACTIVATIONS)}, got {ctx.attr('activation')!r}")
    require_float(ctx, 0)
    return _conv(ctx)


POOL_ATTRS = {
    "auto_pad": A(STRING, "NOTSET"),
    "ceil_mode": A(INT, 0),
    "dilations": A(INTS, None),
    "kernel_shape": A(INTS),
    "pads": A(INTS, None),
    "strides": A(INTS, None),
}


def _pool(ctx):
    require_float(ctx, 0) if ctx.op == "AveragePool" else None
    t = ctx.type(0)
    x = t.shape
    if x is None:
        return [t] * ctx.num_outputs
    n = len(x) - 2
    kernel, strides, dil = _window(ctx, n, ())
    pads = _spatial_pads(ctx, x[2:], kernel, strides, dil)
    sp = []
    for i in range(n):
        d = x[2 + i]
        if pads is None or not isinstance(d, int):
            sp.append(None)
            continue
        eff = dil[i] * (kernel[i] - 1) + 1
        span = d + pads[i] + pads[i + n] - eff
        if ctx.attr("ceil_mode"):
            o = -(-span // strides[i]) + 1
            if (o - 1) * strides[i] >= d + pads[i]:  # last window must start inside the input
                o -= 1
        else:
            o = span // strides[i] + 1
        sp.append(o)
    out = t.with_shape(tuple(x[:2]) + tuple(sp))
    return [out] + [out.with_dtype(DType.INT64)] * (ctx.num_outputs - 1)


op("MaxPool", ["X"], ["Y", "Indices?"], attrs={**POOL_ATTRS, "storage_order": A(INT, 0)})(_pool)
op("AveragePool", ["X"], attrs={**POOL_ATTRS, "count_include_pad": A(INT, 0)})(_pool)
op("LpPool", ["X"], attrs={**POOL_ATTRS, "p": A(INT, 2)})(_pool)


def _global_pool(ctx):
    t = ctx.type(0)
    if t.shape is None:
        return [t]
    return [t.with_shape(tuple(t.shape[:2]) + (1,) * (t.rank - 2))]


op("GlobalAveragePool", ["X"])(_global_pool)
op("GlobalMaxPool", ["X"])(_global_pool)


@op("BatchNormalization", ["X", "scale", "B", "input_mean", "input_var"], ["Y", "running_mean?", "running_var?"],
    attrs={"epsilon": A(FLOAT, 1e-5), "momentum": A(FLOAT, 0.9), "training_mode": A(INT, 0)})
def _batchnorm(ctx):
    """Inference form: (x - mean) / sqrt(var + eps) * scale + B over channel axis 1."""
    require_float(ctx, 0)
    if ctx.attr("training_mode") or ctx.num_outputs > 1:
        raise UnsupportedOpError("training-mode BatchNormalization (running statistics) is not supported (inference only)")
    return [ctx.type(0)]


op("InstanceNormalization", ["input", "scale", "B"], ["output"], attrs={"epsilon": A(FLOAT, 1e-5)})(same_float_type)


@op("LayerNormalization", ["X", "Scale", "B?"], ["Y", "Mean?", "InvStdDev?"],
    attrs={"axis": A(INT, -1), "epsilon": A(FLOAT, 1e-5), "stash_type": A(INT, 1)})
def _layernorm(ctx):
    """Normalize over axes [axis, rank), then scale and shift."""
    require_float(ctx, 0)
    t = ctx.type(0)
    outs = [t]
    if ctx.num_outputs > 1:
        # Mean and InvStdDev have the stash type (as ONNX's type inference says).
        stash = _STASH_DTYPES.get(ctx.attr("stash_type"))
        if stash is None:
            raise ctx.fail(f"unsupported stash_type {ctx.attr('stash_type')}")
        if t.shape is None:
            stat = TensorType(stash, None)
        else:
            axis = norm_axis(ctx.attr("axis"), t.rank)
            stat = TensorType(stash, tuple(t.shape[:axis]) + (1,) * (t.rank - axis))
        outs += [stat] * (ctx.num_outputs - 1)
    return outs


@op("AddLayerNorm", ["X", "R", "scale", "bias?"], ["Y", "S?"], attrs={"axis": A(INT, -1), "epsilon": A(FLOAT, 1e-5)})
def _add_layernorm(ctx):
    """S = X + R; Y = LayerNormalization(S, scale, bias) over axes [axis, rank) (statistics in
    float32, float64 for float64 inputs). The residual add fused into the normalization: one
    pass over the rows. The optional output S is the sum itself, present only when something
    else uses it (pre-LN transformers carry it on as the residual stream)."""
    require_float(ctx, 0)
    dt = require_same_dtype(ctx, [0, 1, 2, 3])
    x, r = ctx.shape(0), ctx.shape(1)
    s = TensorType(dt, broadcast_shapes(x, r))
    if s.shape is not None:
        norm_axis(ctx.attr("axis"), len(s.shape))
    return [s, s][:ctx.num_outputs]


_STASH_DTYPES = {1: DType.FLOAT32, 10: DType.FLOAT16, 11: DType.FLOAT64, 16: DType.BFLOAT16}


@op("RMSNormalization", ["X", "scale"], ["Y"], attrs={"axis": A(INT, -1), "epsilon": A(FLOAT, 1e-5), "stash_type": A(INT, 1)})
def _rmsnorm(ctx):
    """x / sqrt(mean(x^2 over [axis, rank)) + eps) * scale."""
    require_float(ctx, 0)
    return [ctx.type(0)]


@op("GroupNormalization", ["X", "scale", "bias"], ["Y"], attrs={"epsilon": A(FLOAT, 1e-5), "num_groups": A(INT), "stash_type": A(INT, 1)})
def _groupnorm(ctx):
    require_float(ctx, 0)
    return [ctx.type(0)]


@op("LRN", ["X"], attrs={"alpha": A(FLOAT, 1e-4), "beta": A(FLOAT, 0.75), "bias": A(FLOAT, 1.0), "size": A(INT)})
def _lrn(ctx):
    require_float(ctx, 0)
    return [ctx.type(0)]


@op("Attention", ["Q", "K", "V", "mask?"], ["Y"], attrs={"scale": A(FLOAT, None, "default 1/sqrt(head_dim)"), "is_causal": A(INT, 0)})
def _attention(ctx):
    """Scaled-dot-product attention on [batch, heads, seq, head_dim] tensors:
    softmax(Q Kᵀ · scale + mask) V. K and V may have fewer heads than Q (grouped-query
    attention: each KV head serves heads_q / heads_kv query heads). A bool mask keeps
    positions where it is true; a float mask is added to the scores. ``is_causal`` hides
    future positions: query i sees keys j <= i (top-left aligned, as torch's
    scaled_dot_product_attention and ONNX's Attention without a KV cache)."""
    require_float(ctx, 0)
    dt = require_same_dtype(ctx, [0, 1, 2])
    q, k, v = ctx.shape(0), ctx.shape(1), ctx.shape(2)
    if q is None or v is None:
        return [TensorType(dt, None)]
    for name, s in (("Q", q), ("K", k), ("V", v)):
        if s is not None and len(s) != 4:
            raise ctx.fail(f"{name} must be 4-D [batch, heads, seq, head_dim], got rank {len(s)}")
    hq, hk = q[1], k[1] if k is not None else None
    if isinstance(hq, int) and isinstance(hk, int) and hq % hk:
        raise ctx.fail(f"query heads {hq} are not a multiple of key/value heads {hk}")
    if ctx.has(3) and ctx.dtype(3) is not DType.BOOL and ctx.dtype(3) != dt:
        raise ctx.fail("mask must be bool or the query's float type")
    return [TensorType(dt, (q[0], q[1], q[2], v[3]))]


del add_dims
