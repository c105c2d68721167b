"""Handlers of convolution (plain and transposed) and pooling (max, average, adaptive average
where it is a plain or global average pool)."""

from __future__ import annotations

from ...ir import UnsupportedOpError
from .importer import Importer, fake_of
from .registry import handles
from .sizes import size_expr


def _ints(x, n: int) -> list[int]:
    """An int-or-list argument as ``n`` ints (one int repeats)."""
    x = list(x) if isinstance(x, (list, tuple)) else [x]
    return [int(v) for v in (x * n if len(x) == 1 else x)]


@handles("convolution", "conv1d", "conv2d", "conv3d", "conv1d.padding", "conv2d.padding", "conv3d.padding",
         "conv_transpose1d", "conv_transpose2d.input", "conv_transpose3d.input")
def _conv(m: Importer, node, a):
    x, w = m.v(a["input"]), m.v(a["weight"])
    b = m.v(a["bias"]) if a.get("bias") is not None else None
    n = x.type.rank - 2
    name = node.target.__name__
    transposed = bool(a.get("transposed", False)) or name.startswith("conv_transpose")
    attrs = {"strides": _ints(a.get("stride", 1), n), "dilations": _ints(a.get("dilation", 1), n),
             "group": int(a.get("groups", 1))}
    pad = a.get("padding", 0)
    if isinstance(pad, str):
        if pad == "valid":
            pad = [0] * n
        elif pad == "same":
            attrs["auto_pad"] = "SAME_UPPER"
            pad = None
    if pad is not None:
        p = _ints(pad, n)
        attrs["pads"] = p + p
    if transposed:
        op = _ints(a.get("output_padding", 0), n)
        if any(op):
            attrs["output_padding"] = op
    return m.emit("ConvTranspose" if transposed else "Conv", x, w, b, **attrs)


def _pool_window(a, n: int) -> dict:
    """kernel_shape, strides (the kernel when not given) and symmetric pads of a pooling op."""
    k = _ints(a["kernel_size"], n)
    pad = _ints(a.get("padding", 0), n)
    return {"kernel_shape": k, "strides": _ints(a.get("stride") or k, n), "pads": pad + pad}


@handles("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices")
def _max_pool(m: Importer, node, a):
    x = m.v(a["self"])
    n = x.type.rank - 2
    y = m.emit("MaxPool", x, **_pool_window(a, n), dilations=_ints(a.get("dilation", 1), n),
               ceil_mode=int(bool(a.get("ceil_mode", False))))
    if "with_indices" in node.target.__name__:
        return [y, None]
    return y


@handles("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(m: Importer, node, a):
    x = m.v(a["self"])
    n = x.type.rank - 2
    window = _pool_window(a, n)
    if a.get("divisor_override") is not None:
        raise UnsupportedOpError(f"torch frontend: avg_pool divisor_override ({node.name})")
    return m.emit("AveragePool", x, **window, ceil_mode=int(bool(a.get("ceil_mode", False))),
                  count_include_pad=int(bool(a.get("count_include_pad", True))))


@handles("adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool3d")
def _adaptive_avg_pool(m: Importer, node, a):
    x = m.v(a["self"])
    n = x.type.rank - 2
    out = _ints(a["output_size"], n)
    if all(o == 1 for o in out):
        return m.emit("GlobalAveragePool", x)
    spatial = list(fake_of(a["self"]).shape[2:])
    if all(size_expr(d).is_Integer and int(d) % o == 0 for d, o in zip(spatial, out)):
        k = [int(d) // o for d, o in zip(spatial, out)]
        return m.emit("AveragePool", x, kernel_shape=k, strides=k)
    raise UnsupportedOpError(f"torch frontend: adaptive_avg_pool from {spatial} to {out} ({node.name})")

