"""Kernels of ir/ops/activation.py: Swish, SwiGLU, Shrink."""

from __future__ import annotations

import torch

from .engine import kernel


def swish(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """x * sigmoid(alpha * x), half precision computed in float32."""
    xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xs * torch.sigmoid(xs * alpha)).to(x.dtype)


@kernel("Swish")
def _swish(node, x):
    return swish(x, node.attrs["alpha"])


@kernel("SwiGLU")
def _swiglu(node, a, b):
    if a.shape != b.shape:
        raise ValueError(f"A {list(a.shape)} and B {list(b.shape)} must have the same shape")
    return swish(a, node.attrs["alpha"]) * b


@kernel("Shrink")
def _shrink(node, x):
    lambd, bias = node.attrs["lambd"], node.attrs["bias"]
    xs = x.to(torch.float64) if not x.dtype.is_floating_point else x
    y = torch.where(xs < -lambd, xs + bias, torch.where(xs > lambd, xs - bias, torch.zeros((), dtype=xs.dtype)))
    return y.to(x.dtype)
