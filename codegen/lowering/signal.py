"""Lowerings of ir/ops/signal.py: the Hann, Hamming and Blackman windows. A length known at
compile time gives a constant; one known only at run time is computed (float64, as the
interpreter)."""

from __future__ import annotations

import math

from ...ir.ops.signal import window_size_negative, window_values
from ..lower import TVM_DTYPE
from . import dynamic, lowering


@lowering("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(ctx, node, size):
    R = ctx.R
    out_dt = TVM_DTYPE[node.attrs["output_datatype"]]
    periodic = bool(node.attrs["periodic"])
    known = ctx.known_ints(node.inputs[0])
    if known is not None and isinstance(known[0], int):
        if known[0] < 0:
            raise ctx.invalid(window_size_negative())
        return ctx.const(window_values(node.op, known[0], periodic).astype(node.attrs["output_datatype"].numpy), out_dt)
    length = ctx.emit(R.reshape(size, []))
    if ctx.dtype(length) != "int64":
        length = ctx.emit(R.astype(length, "int64"))
    length = ctx.check_each(length, lambda v, pos: v >= 0, window_size_negative())
    pos = dynamic.positions(ctx, length, "window size")
    s = ctx.emit(R.astype(length, "float64"))
    denom = s if periodic else ctx.emit(R.subtract(s, ctx.scalar(1.0, "float64")))
    two_pi = ctx.scalar(2 * math.pi, "float64")
    phase = ctx.emit(R.divide(R.multiply(pos, two_pi), denom))
    if node.op == "HannWindow":
        half = ctx.emit(R.sin(R.multiply(phase, ctx.scalar(0.5, "float64"))))
        y = ctx.emit(R.multiply(half, half))
    elif node.op == "HammingWindow":
        alpha = 25.0 / 46.0
        y = ctx.emit(R.subtract(ctx.scalar(alpha, "float64"), R.multiply(R.cos(phase), ctx.scalar(1 - alpha, "float64"))))
    else:
        y = ctx.emit(R.add(R.subtract(ctx.scalar(0.42, "float64"), R.multiply(R.cos(phase), ctx.scalar(0.5, "float64"))),
                           R.multiply(R.cos(R.multiply(phase, ctx.scalar(2.0, "float64"))), ctx.scalar(0.08, "float64"))))
    y = ctx.emit(R.where(R.greater(denom, ctx.scalar(0.0, "float64")), y, ctx.scalar(1.0, "float64")))
    return y if out_dt == "float64" else R.astype(y, out_dt)

