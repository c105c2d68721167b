"""``QLinear``: a dense layer whose constant weight is stored in a lower precision.

    QLinear(X, W, w_scale?, w_zero_point?, B?, x_scale?, x_zero_point?, x_smooth?)
        {activation, group_size, act_quant, act_qmax}

``X [..., K]`` is float, ``W [K, N]`` (MatMul orientation, as ``Linear``), ``B [N]`` float. The
weight is one of

* **int8 / int4 / uint4 codes** with float32 ``w_scale`` and an optional ``w_zero_point`` of the
  code type: per output channel (``group_size`` 0: ``[N]``) or per group of ``group_size`` rows
  along K (``[ceil(K / group_size), N]``; row ``k`` uses group ``k // group_size``). The weight
  the layer multiplies by is ``(q - z) * s``, the integer difference converted to float32 and
  multiplied in float32.
  A weight-only uint4 layer (``act_quant`` none) may instead have a **float32** ``w_zero_point``: the
  weight is ``(float32(q) - z) * s``, two float32 roundings. That is a group's own min/max grid,
  ``min + s * q`` with ``z = -min / s`` — GGUF's Q4_1 blocks and MatMulNBits' float zero points —
  which an integer zero point can only approximate.
* **float16 / bfloat16** values (no scale): the kernels that run them (tensor cores, AVX-512
  BF16, NEON BF16) round the activations to the weight's type too, so the op is defined that
  way everywhere: ``X`` rounded to W's type, exact products, float32 accumulation.

``act_quant`` says what happens to the activations of an integer weight:

* ``none`` — weight-only: ``X @ dequantized(W)`` in float32 (memory-bound layers, int4 decoders);
* ``dynamic`` — each row of X (one token) is quantized to uint8 codes ``0..act_qmax`` with its own
  scale and zero point, computed from the row's range when the layer runs;
* ``static`` — one scale and zero point for the whole tensor (``x_scale``, ``x_zero_point``
  uint8 inputs), found on calibration data.

``x_smooth [K]`` (float32, with quantized activations only) multiplies each input channel before
the activations are quantized: SmoothQuant's migration of activation outliers into the weight
(the stored codes are those of ``diag(1 / x_smooth) · W``).

With quantized activations the weight must be int8, per channel, without zero point, and the
product is computed in integers (``acc = Σ_k (xq - zx) · q`` in int32) and scaled once:
``y = float32(acc) * (x_scale[row] * w_scale[n]) + B``. ``act_qmax`` is 255 where the target's
instruction multiplies full bytes without intermediate saturation (VNNI ``vpdpbusd``, ``sdot``)
and 127 on AVX2, whose ``vpmaddubsw`` saturates 16-bit pair sums unless the codes have 7 bits.
The interpreter (``ir/interpreter/kernels_qlinear.py``) computes exactly this; the arithmetic
of the dynamic quantization is spelled out in ``dynamic_quantize_rows``' docstring there.
"""

from __future__ import annotations

from ..types import DType, TensorType
from ._common import INT, STRING, A, op
from .nn import LINEAR_ACTIVATIONS, check_bias

INT_WEIGHTS = frozenset({DType.INT8, DType.INT4, DType.UINT4})
FLOAT_WEIGHTS = frozenset({DType.FLOAT16, DType.BFLOAT16})
ACT_QUANT = ("none", "dynamic", "static")
X_TYPES = frozenset({DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16})


def scale_shape(k, n, group_size: int) -> tuple:
    """Shape of the scale (and zero point) of a ``[k, n]`` integer weight."""
    if group_size == 0:
        return (n,)
    groups = -(-k // group_size) if isinstance(k, int) else None
    return (groups, n)


@op("QLinear", ["X", "W", "w_scale?", "w_zero_point?", "B?", "x_scale?", "x_zero_point?", "x_smooth?"],
    attrs={"activation": A(STRING, "none", "one of " + ", ".join(LINEAR_ACTIVATIONS)),
           "group_size": A(INT, 0, "rows of W per scale; 0 = one scale per output channel"),
           "act_quant": A(STRING, "none", "none (weight-only), dynamic (per row) or static (per tensor)"),
           "act_qmax": A(INT, 255, "largest activation code: 255, or 127 where 16-bit pair sums saturate")})
def _qlinear(ctx):
    """act(X @ W + B) with W in low precision (see the module docstring)."""
    act, group, mode, qmax = (ctx.attr(a) for a in ("activation", "group_size", "act_quant", "act_qmax"))
    if act not in LINEAR_ACTIVATIONS:
        raise ctx.fail(f"activation must be one of {', '.join(LINEAR_ACTIVATIONS)}, got {act!r}")
    if mode not in ACT_QUANT:
        raise ctx.fail(f"act_quant must be one of {', '.join(ACT_QUANT)}, got {mode!r}")
    if qmax not in (127, 255):
        raise ctx.fail(f"act_qmax must be 127 or 255, got {qmax}")
    if group < 0:
        raise ctx.fail(f"group_size must be >= 0, got {group}")
    xdt, wdt = ctx.dtype(0), ctx.dtype(1)
    if xdt not in X_TYPES:
        raise ctx.fail(f"X must be float32, float16 or bfloat16, got {xdt.value}")
    x, w = ctx.shape(0), ctx.shape(1)
    if w is not None and len(w) != 2:
        raise ctx.fail(f"W must be 2-D [K, N], got rank {len(w)}")
    if x is not None and len(x) == 0:
        raise ctx.fail("X must have rank >= 1")
    k, n = (w[0], w[1]) if w is not None else (None, None)
    if wdt in FLOAT_WEIGHTS:
        for i, name in ((2, "w_scale"), (3, "w_zero_point"), (5, "x_scale"), (6, "x_zero_point"), (7, "x_smooth")):
            if ctx.has(i):
                raise ctx.fail(f"a {wdt.value} weight takes no {name}")
        if mode != "none":
            raise ctx.fail(f"act_quant={mode} needs an int8 weight, got {wdt.value}")
    elif wdt in INT_WEIGHTS:
        _check_int_weight(ctx, wdt, k, n, group, mode)
    else:
        raise ctx.fail(f"W must be int8, int4, uint4, float16 or bfloat16, got {wdt.value}")
    if ctx.has(4) and ctx.dtype(4) is not DType.FLOAT32:
        raise ctx.fail(f"B must be float32, got {ctx.dtype(4).value}")
    check_bias(ctx, 4, n)
    if x is None or w is None:
        return [TensorType(xdt, None)]
    if isinstance(x[-1], int) and isinstance(k, int) and x[-1] != k:
        raise ctx.fail(f"contraction mismatch: X {list(x)} @ W {list(w)}")
    return [TensorType(xdt, tuple(x[:-1]) + (n,))]


def _check_int_weight(ctx, wdt: DType, k, n, group: int, mode: str) -> None:
    if not ctx.has(2):
        raise ctx.fail(f"a {wdt.value} weight needs w_scale")
    if ctx.dtype(2) is not DType.FLOAT32:
        raise ctx.fail(f"w_scale must be float32, got {ctx.dtype(2).value}")
    want = scale_shape(k, n, group)
    for i, name in ((2, "w_scale"), (3, "w_zero_point")):
        if not ctx.has(i):
            continue
        got = ctx.shape(i)
        if got is not None and (len(got) != len(want) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(got, want))):
            raise ctx.fail(f"{name} must have shape {list(want)} for W [{k}, {n}] with group_size {group}, got {list(got)}")
    float_zero = ctx.has(3) and ctx.dtype(3) is DType.FLOAT32 and wdt is DType.UINT4 and mode == "none"
    if ctx.has(3) and ctx.dtype(3) is not wdt and not float_zero:
        raise ctx.fail(f"w_zero_point must have W's type {wdt.value} (or float32 for a weight-only uint4 weight), "
                       f"got {ctx.dtype(3).value}")
    if mode == "none":
        for i, name in ((5, "x_scale"), (6, "x_zero_point"), (7, "x_smooth")):
            if ctx.has(i):
                raise ctx.fail(f"{name} is only used with quantized activations")
        return
    if ctx.has(7):
        sm = ctx.shape(7)
        if ctx.dtype(7) is not DType.FLOAT32 or (sm is not None and (len(sm) != 1 or (
                isinstance(sm[0], int) and isinstance(k, int) and sm[0] != k))):
            raise ctx.fail(f"x_smooth must be float32 [{k}], got {ctx.dtype(7).value} {list(sm) if sm is not None else '?'}")
    if wdt is not DType.INT8 or group != 0 or ctx.has(3):
        raise ctx.fail(f"act_quant={mode} needs a symmetric int8 weight with one scale per output channel "
                       f"(got {wdt.value}, group_size {group}{', a zero point' if ctx.has(3) else ''})")
    static = ctx.has(5) and ctx.has(6)
    if mode == "static" and not static:
        raise ctx.fail("act_quant=static needs x_scale and x_zero_point")
    if mode == "dynamic" and (ctx.has(5) or ctx.has(6)):
        raise ctx.fail("act_quant=dynamic computes x_scale and x_zero_point itself; do not pass them")
    if mode == "static":
        if ctx.dtype(5) is not DType.FLOAT32 or ctx.dtype(6) is not DType.UINT8:
            raise ctx.fail(f"x_scale must be float32 and x_zero_point uint8, got {ctx.dtype(5).value}, {ctx.dtype(6).value}")
        for i, name in ((5, "x_scale"), (6, "x_zero_point")):
            s = ctx.shape(i)
            if s is not None and not (len(s) == 0 or (len(s) == 1 and s[0] == 1)):
                raise ctx.fail(f"{name} must be a scalar (one per tensor), got shape {list(s)}")
