"""Kernels of the quantization ops (ir/ops/quant.py): QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv, BitCast.

Each computes what the ONNX reference implementation computes, in the same types: the
division of QuantizeLinear in ``quantize_compute_dtype`` (float16 stays float16), rounding half
to even, integer products accumulated exactly and wrapped to int32 (int64 arithmetic, then
narrowed: the same result as int32 accumulation that overflows), requantization in float64.
Integer convolutions run torch's float64 convolution, which is exact for these operands (every
partial sum is an integer far below 2**53).
"""

from __future__ import annotations

import torch

from ..errors import IRError
from ..ops.quant import (QUANT_FLOATS, QUANT_INT_RANGE, dequantize_compute_dtype, matmul_param_shape, qparam_layout,
                         quantize_compute_dtype)
from ..types import DType
from . import lowp
from .engine import COMPUTE_DTYPE, compute_to_numpy, input_dtype, kernel, numpy_to_compute, output_dtype
from .kernels_nn import _conv as _conv_float  # Conv's kernel: auto_pad, pads, strides, dilations, groups

# Keeps any finite rounded quotient whose saturated result it could change (|zero point| < 2**16).
_QUOTIENT_BOUND = float(2**20)


def expand_qparam(node, p: torch.Tensor, x_shape, what: str = "scale") -> torch.Tensor:
    """A quantization parameter broadcastable against data of shape ``x_shape`` (see
    ``qparam_layout``): blocked parameters are repeated ``block_size`` times along the axis and
    cut to the data's extent."""
    try:
        layout, ax = qparam_layout(tuple(x_shape), tuple(p.shape), node.attrs["axis"], node.attrs["block_size"], what)
    except IRError as e:
        raise IRError(f"node {node.name} ({node.op}): {e}") from None
    if layout == "tensor":
        return p.reshape(())
    if layout == "axis":
        return p.reshape([1] * ax + [-1] + [1] * (len(x_shape) - ax - 1))
    return torch.repeat_interleave(p, node.attrs["block_size"], dim=ax).narrow(ax, 0, int(x_shape[ax]))


def _saturate_int(r: torch.Tensor, zp: torch.Tensor | None, dt: DType) -> torch.Tensor:
    """Rounded values (float) plus the zero point, saturated to ``dt``'s range; NaN gives the
    lowest value, ±inf saturate."""
    lo, hi = QUANT_INT_RANGE[dt]
    r = r.to(torch.float64)
    r = torch.where(torch.isnan(r), torch.full((), -_QUOTIENT_BOUND, dtype=r.dtype), r).clamp(-_QUOTIENT_BOUND, _QUOTIENT_BOUND)
    y = r.to(torch.int64)
    if zp is not None:
        y = y + zp.to(torch.int64)
    return y.clamp(lo, hi)


@kernel("QuantizeLinear")
def _quantize_linear(node, x, scale, zp=None):
    out = output_dtype(node)
    cdt = quantize_compute_dtype(input_dtype(node, 0), input_dtype(node, 1), node.attrs["precision"])
    tc = COMPUTE_DTYPE[cdt]
    s = expand_qparam(node, scale, x.shape)
    q = x.to(tc) / s.to(tc)
    z = None if zp is None else expand_qparam(node, zp, x.shape, "zero point")
    if out in QUANT_FLOATS:
        if z is not None:  # in float32 (float64 for int32 data)
            wide = torch.float64 if cdt is DType.FLOAT64 else torch.float32
            q = q.to(wide)
            # float4 always adds it, as the reference (-0 + 0 is +0); float8 leaves -0 alone
            q = q + z.to(wide) if out is DType.FLOAT4E2M1 else torch.where(z == 0, q, q + z.to(wide))
            cdt = DType.FLOAT64 if cdt is DType.FLOAT64 else DType.FLOAT32
        return lowp.cast_to_lowp(q, cdt, out, bool(node.attrs["saturate"]))
    return _saturate_int(torch.round(q), z, out)  # torch.round: half to even


@kernel("DequantizeLinear")
def _dequantize_linear(node, x, scale, zp=None):
    xdt = input_dtype(node, 0)
    cdt = COMPUTE_DTYPE[dequantize_compute_dtype(xdt, zp is not None)]
    dx = x.to(torch.float32).to(cdt)
    if zp is not None:
        dx = dx - expand_qparam(node, zp, x.shape, "zero point").to(cdt)
    return dx * expand_qparam(node, scale, x.shape).to(cdt)


@kernel("DynamicQuantizeLinear")
def _dynamic_quantize_linear(node, x):
    flat = torch.cat([x.reshape(-1), torch.zeros(1, dtype=x.dtype)])  # the range always holds 0
    hi, lo = flat.max(), flat.min()
    one = torch.ones((), dtype=torch.float32)
    scale = torch.where(hi == lo, one, hi - lo) / 255.0
    zp0 = 0.0 - lo / scale
    zp = torch.where(zp0 < 255.0, zp0, 255.0 * one)  # Python's min(255, ·) / max(0, ·), as the reference
    zp = torch.where(zp > 0.0, zp, 0.0 * one)
    zpi = torch.round(zp)
    y = torch.round(x / scale) + zpi
    y = torch.where(torch.isnan(y), torch.zeros((), dtype=y.dtype), y).clamp(0.0, 255.0)  # NaN -> 0
    return y.to(torch.uint8), scale, zpi.to(torch.uint8)


def _matmul_param(p: torch.Tensor | None, data: torch.Tensor, side: str) -> torch.Tensor | None:
    if p is None:
        return None
    shape = matmul_param_shape(tuple(p.shape), tuple(data.shape), side)
    if shape is None:
        raise ValueError(f"a parameter of shape {list(p.shape)} does not fit operand {side} {list(data.shape)}")
    return p.reshape(shape)


def _int_matmul(a, azp, b, bzp) -> torch.Tensor:
    """(a - azp) @ (b - bzp) with int32 wrap-around (exact int64 products and sums)."""
    a64, b64 = a.to(torch.int64), b.to(torch.int64)
    if azp is not None:
        a64 = a64 - _matmul_param(azp, a, "a").to(torch.int64)
    if bzp is not None:
        b64 = b64 - _matmul_param(bzp, b, "b").to(torch.int64)
    return torch.matmul(a64, b64).to(torch.int32)


@kernel("MatMulInteger")
def _matmul_integer(node, a, b, azp=None, bzp=None):
    return _int_matmul(a, azp, b, bzp)


def _requantize(acc: torch.Tensor, multiplier: torch.Tensor, yzp: torch.Tensor, dt: DType) -> torch.Tensor:
    lo, hi = QUANT_INT_RANGE[dt]
    d = acc.to(torch.float64) * multiplier.to(torch.float64) + yzp.to(torch.float64)
    d = torch.round(d).clamp(lo, hi)
    return torch.where(torch.isnan(d), torch.full((), float(lo), dtype=d.dtype), d).to(torch.int64)


@kernel("QLinearMatMul")
def _qlinear_matmul(node, a, a_scale, azp, b, b_scale, bzp, y_scale, yzp):
    acc = _int_matmul(a, azp, b, bzp)
    # the reference computes the multiplier in the scales' own type (float16 rounds each step)
    m = _matmul_param(a_scale, a, "a") * _matmul_param(b_scale, b, "b") / y_scale
    return _requantize(acc, m, yzp, output_dtype(node))


def _per_channel(p: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A scalar or per-channel (1-D) parameter shaped to broadcast along ``axis`` of ``rank``."""
    if p.numel() == 1:
        return p.reshape(())
    return p.reshape([1] * axis + [-1] + [1] * (rank - axis - 1))


def _int_conv(node, x, xzp, w, wzp, bias=None) -> torch.Tensor:
    xf = x.to(torch.float64)
    if xzp is not None:
        xf = xf - xzp.reshape(()).to(torch.float64)
    wf = w.to(torch.float64)
    if wzp is not None:
        wf = wf - _per_channel(wzp, w.dim(), 0).to(torch.float64)
    b = None if bias is None else _per_channel(bias, 1, 0).expand(w.shape[0]).to(torch.float64)
    y = _conv_float(node, xf, wf, b)
    return torch.round(y).to(torch.int64).to(torch.int32)


@kernel("ConvInteger")
def _conv_integer(node, x, w, xzp=None, wzp=None):
    return _int_conv(node, x, xzp, w, wzp)


@kernel("QLinearConv")
def _qlinear_conv(node, x, x_scale, xzp, w, w_scale, wzp, y_scale, yzp, bias=None):
    acc = _int_conv(node, x, xzp, w, wzp, bias)
    m = x_scale.reshape(()) * _per_channel(w_scale, acc.dim(), 1) / y_scale.reshape(())
    return _requantize(acc, m, yzp.reshape(()), output_dtype(node))


@kernel("BitCast")
def _bitcast(node, x):
    src, dst = input_dtype(node, 0), node.attrs["to"]
    y = lowp.bitcast(compute_to_numpy(x.contiguous(), src), src, dst)
    return numpy_to_compute(y.copy(), dst)
