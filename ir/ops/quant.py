"""Quantization ops (ONNX semantics, newest opset): QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv, and BitCast.

Quantization parameters are ordinary tensors (data, not attributes), so a pass can calibrate or
rewrite them like any other constant. Their layout relative to the data is one of

* **per tensor** — a scalar (or a one-element 1-D tensor);
* **per axis** — a 1-D tensor as long as the data's ``axis`` dim;
* **blocked** (``block_size`` B > 0) — the data's shape with the ``axis`` dim ``ceil(D / B)``:
  element ``i`` along ``axis`` uses parameter ``i // B``.

``qparam_layout`` decides which, once, for type inference, the interpreter and codegen alike.

The arithmetic (rounding to nearest even, saturation, the float type each step is computed in)
is that of the ONNX reference implementation, which the conformance tests were generated with;
``quantize_compute_dtype`` and ``dequantize_compute_dtype`` name those types. Where the
reference is undefined or inconsistent optc decides, the same in every backend:

* QuantizeLinear: NaN becomes the lowest value of the type (what the reference gives on x86),
  ±inf saturate.
* A float8/float4 zero point follows the spec's formula (added to ``x / y_scale`` in float32 —
  float64 for int32 data — before the one rounding to the type; subtracted before scaling). The
  reference ignores it for float8 QuantizeLinear, adds it for float4, rejects a non-zero one in
  DequantizeLinear; all agree when it is 0, the only value models use (a zero float8 zero point
  leaves -0 results -0, as the reference's ignoring it does; float4 adds it, as the reference).
* DynamicQuantizeLinear of an empty tensor has scale 1 and zero point 0 (min/max range over the
  data and 0, as the formula's ``min(0, ·)``/``max(0, ·)`` say).
* 1-D ``a`` parameters of QLinearMatMul/MatMulInteger are per row (length M), 1-D ``b``
  parameters per column (length N), as the ONNX text describes.
"""

from __future__ import annotations

import numpy as np

from ..errors import IRError, UnsupportedOpError
from ..schema import InferContext
from ..types import DType, TensorType
from ._common import DTYPE, INT, A, broadcast_shapes, norm_axis, op
from .nn import CONV_ATTRS, _conv, matmul_shape

QUANT_INT_RANGE: dict[DType, tuple[int, int]] = {
    DType.UINT8: (0, 255), DType.INT8: (-128, 127), DType.UINT16: (0, 65535), DType.INT16: (-32768, 32767),
    DType.UINT4: (0, 15), DType.INT4: (-8, 7), DType.UINT2: (0, 3), DType.INT2: (-2, 1),
}
"""Saturation range of each integer quantized type."""
QUANT_FLOATS = frozenset({DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ,
                          DType.FLOAT4E2M1})
"""Float quantized types."""
QUANT_TYPES = frozenset(QUANT_INT_RANGE) | QUANT_FLOATS
SCALE_TYPES = frozenset({DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT8E8M0})
_HIGH_FLOATS = frozenset({DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16})
_QUANT_ATTRS = {"axis": A(INT, 1), "block_size": A(INT, 0)}


def qparam_layout(x_shape, p_shape, axis: int, block_size: int, what: str = "scale") -> tuple[str, int]:
    """``("tensor" | "axis" | "block", axis)`` of a quantization parameter of shape ``p_shape``
    for data of shape ``x_shape`` (see the module docstring); IRError when they do not fit."""
    if p_shape is None or x_shape is None:
        raise IRError(f"the {what} and the data need known ranks")
    numel = 1
    for d in p_shape:
        numel = numel * d if isinstance(d, int) and isinstance(numel, int) else None
    if len(p_shape) == 0 or (len(p_shape) == 1 and numel == 1):
        return "tensor", 0
    ax = norm_axis(axis, len(x_shape))
    if block_size < 0:
        raise IRError(f"block_size must be >= 0, got {block_size}")
    if block_size == 0:
        if len(p_shape) != 1:
            raise IRError(f"a per-axis {what} must be 1-D (or give block_size for blocked quantization), "
                          f"got shape {list(p_shape)}")
        d, n = x_shape[ax], p_shape[0]
        if isinstance(d, int) and isinstance(n, int) and d != n:
            raise IRError(f"the per-axis {what} has {n} elements, the data's axis {ax} has {d}")
        return "axis", ax
    if len(p_shape) != len(x_shape):
        raise IRError(f"a blocked {what} must have the data's rank {len(x_shape)}, got shape {list(p_shape)}")
    for i, (d, n) in enumerate(zip(x_shape, p_shape)):
        if not (isinstance(d, int) and isinstance(n, int)):
            continue
        want = -(-d // block_size) if i == ax else d
        if n != want:
            raise IRError(f"blocked {what} shape {list(p_shape)} does not fit data shape {list(x_shape)} with "
                          f"block_size={block_size} on axis {ax} (dim {i} should be {want})")
    return "block", ax


def _np_float(dt: DType) -> np.dtype:
    return dt.numpy


def quantize_compute_dtype(x: DType, scale: DType, precision: DType | None) -> DType:
    """The float type ``x / y_scale`` is computed in: ``precision`` if given, else numpy's
    promotion of the two types (what the ONNX reference computes in; int32 data gives float64)."""
    if precision is not None:
        return precision
    dt = DType.from_numpy(np.result_type(_np_float(x), _np_float(scale)))
    return dt if dt in (DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64) else DType.FLOAT32


def dequantize_compute_dtype(x: DType, has_zero_point: bool) -> DType:
    """The float type of ``(x - zero_point) * scale`` before the final cast: float32, except
    int32 data with a zero point, which the reference promotes to float64."""
    return DType.FLOAT64 if x is DType.INT32 and has_zero_point else DType.FLOAT32


def _per_tensor(shape) -> bool:
    return len(shape) == 0 or (len(shape) == 1 and shape[0] == 1)


def _check_same_shape(ctx: InferContext, i: int, j: int, what: str) -> None:
    a, b = ctx.shape(i), ctx.shape(j)
    if a is not None and b is not None and not (_per_tensor(a) and _per_tensor(b)):
        if len(a) != len(b) or any(isinstance(p, int) and isinstance(q, int) and p != q for p, q in zip(a, b)):
            raise ctx.fail(f"{what} shape {list(b)} must equal the scale's {list(a)}")


@op("QuantizeLinear", ["x", "y_scale", "y_zero_point?"],
    attrs={**_QUANT_ATTRS, "saturate": A(INT, 1), "output_dtype": A(DTYPE, None), "precision": A(DTYPE, None)})
def _quantize_linear(ctx):
    """y = saturate(round_half_even(x / y_scale) + y_zero_point)."""
    xdt, sdt = ctx.dtype(0), ctx.dtype(1)
    if xdt not in _HIGH_FLOATS and xdt is not DType.INT32:
        raise ctx.fail(f"x must be float, float16, bfloat16 or int32, got {xdt.value}")
    if sdt not in SCALE_TYPES:
        raise ctx.fail(f"y_scale must be float, float16, bfloat16 or f8e8m0, got {sdt.value}")
    out = ctx.attr("output_dtype")
    if ctx.has(2):
        zdt = ctx.dtype(2)
        if out is not None and out is not zdt:
            raise ctx.fail(f"output_dtype {out.value} differs from the zero point's type {zdt.value}")
        out = zdt
        _check_same_shape(ctx, 1, 2, "y_zero_point")
    out = out or DType.UINT8
    if out not in QUANT_TYPES:
        raise UnsupportedOpError(f"QuantizeLinear to {out.value} is not supported")
    prec = ctx.attr("precision")
    if prec is not None and prec not in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64):
        raise ctx.fail(f"precision must be a float type, got {prec.value}")
    if ctx.shape(0) is not None and ctx.shape(1) is not None:
        qparam_layout(ctx.shape(0), ctx.shape(1), ctx.attr("axis"), ctx.attr("block_size"))
    return [TensorType(out, ctx.shape(0))]


@op("DequantizeLinear", ["x", "x_scale", "x_zero_point?"], attrs={**_QUANT_ATTRS, "output_dtype": A(DTYPE, None)})
def _dequantize_linear(ctx):
    """y = (x - x_zero_point) * x_scale, in the output type."""
    xdt, sdt = ctx.dtype(0), ctx.dtype(1)
    if xdt not in QUANT_TYPES and xdt is not DType.INT32:
        raise UnsupportedOpError(f"DequantizeLinear of {xdt.value} is not supported")
    if sdt not in SCALE_TYPES:
        raise ctx.fail(f"x_scale must be float, float16, bfloat16 or f8e8m0, got {sdt.value}")
    if ctx.has(2):
        if ctx.dtype(2) is not xdt:
            raise ctx.fail(f"x_zero_point must have x's type {xdt.value}, got {ctx.dtype(2).value}")
        _check_same_shape(ctx, 1, 2, "x_zero_point")
    out = ctx.attr("output_dtype") or sdt
    if out not in _HIGH_FLOATS:
        raise ctx.fail(f"the output type must be float, float16 or bfloat16, got {out.value}"
                       + (" (an f8e8m0 scale needs output_dtype)" if sdt is DType.FLOAT8E8M0 else ""))
    if ctx.shape(0) is not None and ctx.shape(1) is not None:
        qparam_layout(ctx.shape(0), ctx.shape(1), ctx.attr("axis"), ctx.attr("block_size"))
    return [TensorType(out, ctx.shape(0))]


@op("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zero_point"])
def _dynamic_quantize_linear(ctx):
    """uint8 quantization of x with scale and zero point from its own range (and 0)."""
    if ctx.dtype(0) is not DType.FLOAT32:
        raise ctx.fail(f"x must be float, got {ctx.dtype(0).value}")
    return [TensorType(DType.UINT8, ctx.shape(0)), TensorType(DType.FLOAT32, ()), TensorType(DType.UINT8, ())]


# -- integer matmul / conv ---------------------------------------------------------------------
_INT8 = (DType.INT8, DType.UINT8)


def _require_int8(ctx: InferContext, i: int, name: str) -> DType:
    dt = ctx.dtype(i)
    if dt not in _INT8:
        if dt.is_low_precision:
            raise UnsupportedOpError(f"{ctx.op} on {dt.value} is not supported (int8/uint8 only)")
        raise ctx.fail(f"{name} must be int8 or uint8, got {dt.value}")
    return dt


def _check_zero_point(ctx: InferContext, i: int, data: int, name: str) -> None:
    if ctx.has(i) and ctx.dtype(i) is not ctx.dtype(data):
        raise ctx.fail(f"{name} must have its data's type {ctx.dtype(data).value}, got {ctx.dtype(i).value}")


def matmul_param_shape(shape, data_shape, side: str):
    """A MatMulInteger/QLinearMatMul parameter (scale or zero point) as a shape that broadcasts
    against the data: scalars stay, 1-D ``a`` parameters become per-row ``[M, 1]``, 1-D ``b``
    parameters are per column ``[N]``, others broadcast as they are. None when the parameter
    cannot apply to the data."""
    if shape is None or data_shape is None:
        return shape
    if len(shape) == 0 or (len(shape) == 1 and shape[0] == 1):
        return ()
    if len(shape) == 1:
        if len(data_shape) < 2:
            return None
        want = data_shape[-2] if side == "a" else data_shape[-1]
        if isinstance(want, int) and isinstance(shape[0], int) and want != shape[0]:
            return None
        return (shape[0], 1) if side == "a" else (shape[0],)
    return tuple(shape)


def _check_matmul_param(ctx: InferContext, i: int, data: int, side: str, name: str) -> None:
    if not ctx.has(i):
        return
    p = matmul_param_shape(ctx.shape(i), ctx.shape(data), side)
    if p is None:
        raise ctx.fail(f"{name} of shape {list(ctx.shape(i))} fits neither per tensor nor per "
                       f"{'row' if side == 'a' else 'column'} of {list(ctx.shape(data))}")
    if ctx.shape(data) is not None:
        try:
            broadcast_shapes(ctx.shape(data), p)
        except IRError:
            raise ctx.fail(f"{name} of shape {list(ctx.shape(i))} does not broadcast with {list(ctx.shape(data))}") from None


@op("MatMulInteger", ["A", "B", "a_zero_point?", "b_zero_point?"])
def _matmul_integer(ctx):
    """(A - a_zero_point) @ (B - b_zero_point), accumulated in int32."""
    _require_int8(ctx, 0, "A")
    _require_int8(ctx, 1, "B")
    _check_zero_point(ctx, 2, 0, "a_zero_point")
    _check_zero_point(ctx, 3, 1, "b_zero_point")
    _check_matmul_param(ctx, 2, 0, "a", "a_zero_point")
    _check_matmul_param(ctx, 3, 1, "b", "b_zero_point")
    return [TensorType(DType.INT32, matmul_shape(ctx.shape(0), ctx.shape(1)))]


def _require_scale(ctx: InferContext, idx, allowed) -> DType:
    dts = {ctx.dtype(i) for i in idx}
    if len(dts) > 1:
        raise ctx.fail("the scales must share a type, got " + ", ".join(sorted(d.value for d in dts)))
    dt = dts.pop()
    if dt not in allowed:
        raise ctx.fail(f"the scales must be {' or '.join(sorted(d.value for d in allowed))}, got {dt.value}")
    return dt


@op("QLinearMatMul", ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"])
def _qlinear_matmul(ctx):
    """saturate(round((a - a_zp) @ (b - b_zp) * (a_scale * b_scale / y_scale)) + y_zp)."""
    _require_int8(ctx, 0, "a")
    _require_int8(ctx, 3, "b")
    ydt = _require_int8(ctx, 7, "y_zero_point")
    _check_zero_point(ctx, 2, 0, "a_zero_point")
    _check_zero_point(ctx, 5, 3, "b_zero_point")
    _require_scale(ctx, (1, 4, 6), _HIGH_FLOATS)
    for i, data, side, name in ((1, 0, "a", "a_scale"), (2, 0, "a", "a_zero_point"), (4, 3, "b", "b_scale"),
                                (5, 3, "b", "b_zero_point")):
        _check_matmul_param(ctx, i, data, side, name)
    shape = matmul_shape(ctx.shape(0), ctx.shape(3))
    for i, name in ((6, "y_scale"), (7, "y_zero_point")):
        if shape is not None and ctx.shape(i) is not None:
            try:
                if broadcast_shapes(shape, ctx.shape(i)) != shape:
                    raise IRError("")
            except IRError:
                raise ctx.fail(f"{name} of shape {list(ctx.shape(i))} does not broadcast to the output {list(shape)}") from None
    return [TensorType(ydt, shape)]


def _conv_shape_of(sub: InferContext):
    x, w = sub.shape(0), sub.shape(1)
    if x is None or w is None:
        return None
    if len(x) < 3:
        raise sub.fail(f"X must have rank >= 3, got {len(x)}")

    class _Same:  # Conv's type inference, blind to the element types
        def __init__(self, v):
            self.type = TensorType(DType.FLOAT32, v.shape)
            self.const = None
            self.sym = None

    shim = InferContext("Conv", [_Same(sub.inputs[0]), _Same(sub.inputs[1])], sub.attrs, 1)
    return _conv(shim)[0].shape


def _check_per_channel(ctx: InferContext, i: int, w: int, name: str) -> None:
    """A scalar, or a 1-D tensor with one entry per output channel (W's dim 0)."""
    if not ctx.has(i) or ctx.shape(i) is None:
        return
    s = ctx.shape(i)
    if len(s) == 0 or (len(s) == 1 and s[0] == 1):
        return
    m = ctx.shape(w)[0] if ctx.shape(w) is not None else None
    if len(s) != 1 or (isinstance(m, int) and isinstance(s[0], int) and s[0] != m):
        raise ctx.fail(f"{name} must be a scalar or have one entry per output channel ({m}), got shape {list(s)}")


def _check_scalar(ctx: InferContext, i: int, name: str) -> None:
    if ctx.has(i) and ctx.shape(i) is not None:
        s = ctx.shape(i)
        if not (len(s) == 0 or (len(s) == 1 and s[0] == 1)):
            raise ctx.fail(f"{name} must be a scalar (per-tensor), got shape {list(s)}")


@op("ConvInteger", ["x", "w", "x_zero_point?", "w_zero_point?"], attrs=CONV_ATTRS)
def _conv_integer(ctx):
    """Conv(x - x_zero_point, w - w_zero_point), accumulated in int32."""
    _require_int8(ctx, 0, "x")
    _require_int8(ctx, 1, "w")
    _check_zero_point(ctx, 2, 0, "x_zero_point")
    _check_zero_point(ctx, 3, 1, "w_zero_point")
    _check_scalar(ctx, 2, "x_zero_point")
    _check_per_channel(ctx, 3, 1, "w_zero_point")
    return [TensorType(DType.INT32, _conv_shape_of(InferContext("Conv", ctx.inputs[:2], ctx.attrs, 1)))]


@op("QLinearConv", ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point", "B?"],
    attrs=CONV_ATTRS)
def _qlinear_conv(ctx):
    """saturate(round((Conv(x - x_zp, w - w_zp) + B) * (x_scale * w_scale / y_scale)) + y_zp)."""
    _require_int8(ctx, 0, "x")
    _require_int8(ctx, 3, "w")
    ydt = _require_int8(ctx, 7, "y_zero_point")
    _check_zero_point(ctx, 2, 0, "x_zero_point")
    _check_zero_point(ctx, 5, 3, "w_zero_point")
    _require_scale(ctx, (1, 4, 6), {DType.FLOAT32})
    for i, name in ((1, "x_scale"), (2, "x_zero_point"), (6, "y_scale"), (7, "y_zero_point")):
        _check_scalar(ctx, i, name)
    _check_per_channel(ctx, 4, 3, "w_scale")
    _check_per_channel(ctx, 5, 3, "w_zero_point")
    if ctx.has(8):
        if ctx.dtype(8) is not DType.INT32:
            raise ctx.fail(f"B must be int32, got {ctx.dtype(8).value}")
        _check_per_channel(ctx, 8, 3, "B")
    shape = _conv_shape_of(InferContext("Conv", [ctx.inputs[0], ctx.inputs[3]], ctx.attrs, 1))
    return [TensorType(ydt, shape)]


# -- BitCast -----------------------------------------------------------------------------------
@op("BitCast", ["input"], ["output"], attrs={"to": A(DTYPE)})
def _bitcast(ctx):
    """The same bits read as another type of the same bit width."""
    src, dst = ctx.dtype(0), ctx.attr("to")
    if src.bits != dst.bits:
        raise ctx.fail(f"BitCast needs types of the same bit width, got {src.value} ({src.bits} bits) "
                       f"and {dst.value} ({dst.bits} bits)")
    return [TensorType(dst, ctx.shape(0))]


__all__ = ["QUANT_FLOATS", "QUANT_INT_RANGE", "QUANT_TYPES", "SCALE_TYPES", "dequantize_compute_dtype",
           "matmul_param_shape", "qparam_layout", "quantize_compute_dtype"]
