"""Activations ONNX added after the core set: ``Swish`` (opset 24), ``SwiGLU`` (opset 28) and
``Shrink``."""

from __future__ import annotations

from ..types import DType
from ._common import FLOAT, A, op, require_float, require_same_dtype


@op("Swish", ["X"], attrs={"alpha": A(FLOAT, 1.0)})
def _swish(ctx):
    """x * sigmoid(alpha * x)."""
    require_float(ctx, 0)
    return [ctx.type(0)]


@op("SwiGLU", ["A", "B"], attrs={"alpha": A(FLOAT, 1.0)})
def _swiglu(ctx):
    """Swish_alpha(A) * B: the gated activation of Llama-style feed-forward layers. A and B have
    the same shape (no broadcasting)."""
    require_float(ctx, 0)
    dt = require_same_dtype(ctx, [0, 1])
    a, b = ctx.shape(0), ctx.shape(1)
    if a is not None and b is not None:
        if len(a) != len(b) or any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b)):
            raise ctx.fail(f"A {list(a)} and B {list(b)} must have the same shape")
        return [ctx.type(0).with_shape(tuple(x if x is not None else y for x, y in zip(a, b)))]
    return [ctx.type(0) if a is not None else ctx.type(1).with_dtype(dt)]


@op("Shrink", ["input"], ["output"], attrs={"bias": A(FLOAT, 0.0), "lambd": A(FLOAT, 0.5)})
def _shrink(ctx):
    """x + bias where x < -lambd, x - bias where x > lambd, else 0 (any numeric type)."""
    if ctx.dtype(0) is DType.BOOL:
        raise ctx.fail("input must be numeric, got bool")
    return [ctx.type(0)]
