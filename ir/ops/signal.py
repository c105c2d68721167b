"""Signal-processing window generators: ``HannWindow``, ``HammingWindow``, ``BlackmanWindow``
(ONNX opset 17). The window length is data (a 0-d integer tensor)."""

from __future__ import annotations

import math

import numpy as np

from ..types import DType, TensorType
from ._common import DTYPE, INT, A, op

WINDOWS = ("HannWindow", "HammingWindow", "BlackmanWindow")


def window_size_negative() -> str:
    """The run-time check's wording (``ir/checks.py`` style) for a negative window length."""
    return "window size must not be negative"


def window_values(op: str, length: int, periodic: bool) -> np.ndarray:
    """The float64 window of ``length`` points: the ONNX reference formulas, with a symmetric
    window of length 1 defined as [1] (the formula divides by zero there). A negative length is
    a ValueError (the interpreter raises ``window_size_negative`` first)."""
    if length < 0:
        raise ValueError(window_size_negative())
    denom = length if periodic else length - 1
    if denom <= 0:
        return np.ones(length)
    n = np.arange(length, dtype=np.float64)
    if op == "HannWindow":
        return np.sin(n * math.pi / denom) ** 2
    if op == "HammingWindow":
        alpha = 25.0 / 46.0
        return alpha - np.cos(n * (2 * math.pi) / denom) * (1 - alpha)
    return 0.42 - 0.5 * np.cos(n * (2 * math.pi) / denom) + 0.08 * np.cos(n * (4 * math.pi) / denom)


def _window(ctx):
    """w[n], n in [0, size): periodic windows divide by size, symmetric ones by size - 1 (a
    symmetric window of length 1 is [1])."""
    if not ctx.dtype(0).is_int:
        raise ctx.fail(f"size must be an integer scalar, got {ctx.dtype(0).value}")
    s = ctx.shape(0)
    if s is not None and not (len(s) == 0 or (len(s) == 1 and s[0] == 1)):
        raise ctx.fail(f"size must be a scalar, got shape {list(s)}")
    dt = ctx.attr("output_datatype")
    if dt is DType.BOOL:
        raise ctx.fail("output_datatype must be numeric, got bool")
    n = ctx.sym(0)
    if n is None and ctx.const(0) is not None:
        n = (int(ctx.const(0).reshape(-1)[0]),)
    length = n[0] if n is not None else None
    if isinstance(length, int) and length < 0:
        raise ctx.fail(f"size {length} is negative")
    return [TensorType(dt, (length,))]


for _name in WINDOWS:
    op(_name, ["size"], ["output"], attrs={"output_datatype": A(DTYPE, DType.FLOAT32), "periodic": A(INT, 1)})(_window)
