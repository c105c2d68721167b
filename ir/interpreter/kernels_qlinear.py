"""Kernel of ``QLinear`` (ir/ops/qlinear.py): the arithmetic the compiled kernels perform, step
for step, so a compiled quantized model is checked against this, not against its float original.

Integer products are exact in float64 (|code products| < 2**15, sums far below 2**53), so the
integer accumulation runs as a float64 matmul and is converted to int64 afterwards: the same
integers as the kernels' int32 accumulators, at BLAS speed.
"""

from __future__ import annotations

import torch

from ..ops.qlinear import FLOAT_WEIGHTS
from .engine import input_dtype, kernel
from .kernels_nn import linear_activation

_TORCH_FLOAT = {"f16": torch.float16, "bf16": torch.bfloat16}


def dynamic_quantize_rows(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (per-token) asymmetric quantization of ``x [M, K]`` float32 to codes ``0..qmax``:

        lo = min(0, min_k x);  hi = max(0, max_k x)                    float32
        scale = (hi - lo) / qmax, or 1 where that is 0                 float32 division
        zp = clamp(round_half_even(-lo / scale), 0, qmax)              int32
        xq = clamp(round_half_even(x / scale) + zp, 0, qmax)          x / scale: float32 division

    Returns ``(xq int32 [M, K], zp int32 [M], scale float32 [M])``."""
    x = x.to(torch.float32)
    zero = torch.zeros((), dtype=torch.float32)
    if x.shape[-1] == 0:
        lo = hi = torch.zeros(x.shape[:-1], dtype=torch.float32)
    else:
        lo = torch.minimum(x.amin(dim=-1), zero)
        hi = torch.maximum(x.amax(dim=-1), zero)
    scale = (hi - lo) / torch.tensor(float(qmax), dtype=torch.float32)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = torch.round(-lo / scale).clamp(0, qmax).to(torch.int32)
    xq = (torch.round(x / scale[:, None]) + zp[:, None].to(torch.float32)).clamp(0, qmax).to(torch.int32)
    return xq, zp, scale


def static_quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmax: int) -> torch.Tensor:
    """``clamp(round_half_even(x / scale) + zp, 0, qmax)`` with one float32 scale and zero point."""
    s = scale.to(torch.float32).reshape(())
    return (torch.round(x.to(torch.float32) / s) + zp.to(torch.float32).reshape(())).clamp(0, qmax).to(torch.int32)


def expand_groups(p: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """A per-channel ``[N]`` or grouped ``[ceil(K/G), N]`` parameter as ``[K, N]`` (or ``[1, N]``)."""
    if group_size == 0:
        return p.reshape(1, -1)
    return torch.repeat_interleave(p, group_size, dim=0)[:k]


def dequantize_weight(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """``(q - z) * s``: the integer difference as float32, times the float32 scale (a float32 zero
    point: ``float32(q) - z``, rounded, times the scale)."""
    k = w.shape[0]
    q = w.to(torch.int32)
    s = expand_groups(scale.to(torch.float32), k, group_size)
    if zp is not None and zp.dtype == torch.float32:
        return (q.to(torch.float32) - expand_groups(zp, k, group_size)) * s
    if zp is not None:
        q = q - expand_groups(zp.to(torch.int32), k, group_size)
    return q.to(torch.float32) * s


def integer_product(xq: torch.Tensor, x_zp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Σ_k (xq - zx) · q`` exactly (int64), for codes ``xq [M, K]``, zero points ``[M]`` or ``[]``."""
    centered = (xq.to(torch.int32) - x_zp.to(torch.int32).reshape(-1, 1)).to(torch.float64)
    return torch.matmul(centered, w.to(torch.float64)).round().to(torch.int64)


@kernel("QLinear")
def _qlinear(node, x, w, w_scale=None, w_zp=None, b=None, x_scale=None, x_zp=None, x_smooth=None):
    attrs = node.attrs
    out_dtype = x.dtype
    lead, k = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, k)
    wdt = input_dtype(node, 1)
    if wdt in FLOAT_WEIGHTS:
        tw = _TORCH_FLOAT[wdt.value]
        y = torch.matmul(rows.to(tw).to(torch.float32), w.to(tw).to(torch.float32))
    elif attrs["act_quant"] == "none":
        y = torch.matmul(rows.to(torch.float32), dequantize_weight(w, w_scale, w_zp, attrs["group_size"]))
    else:
        qmax = attrs["act_qmax"]
        if x_smooth is not None:
            rows = rows.to(torch.float32) * x_smooth.to(torch.float32)
        if attrs["act_quant"] == "dynamic":
            xq, zp, xs = dynamic_quantize_rows(rows, qmax)
        else:
            xq, zp, xs = static_quantize(rows, x_scale, x_zp, qmax), x_zp.to(torch.int32).reshape(()), \
                x_scale.to(torch.float32).reshape(1)
        acc = integer_product(xq, zp, w)
        y = acc.to(torch.float32) * (xs.reshape(-1, 1) * w_scale.to(torch.float32).reshape(1, -1))
    if b is not None:
        y = y + b.to(torch.float32)
    y = linear_activation(node, y)
    return y.reshape(*lead, y.shape[-1]).to(out_dtype)
