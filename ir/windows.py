"""Sliding-window geometry shared by convolution and pooling: the kernel, strides, dilations
and begin/end pads a node's attributes describe. One definition serves type inference, the
reference interpreter and codegen, so the three can never disagree about ``auto_pad``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def window(attrs: Mapping[str, Any], n: int, default_kernel: Sequence[int] = ()) -> tuple[list, list, list]:
    """(kernel, strides, dilations) of an n-D window; the kernel defaults to the weight's."""
    kernel = [int(k) for k in (attrs.get("kernel_shape") or default_kernel)]
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    if not len(kernel) == len(strides) == len(dilations) == n:
        raise ValueError(f"kernel_shape/strides/dilations must have {n} entries")
    return kernel, strides, dilations


def pads(attrs: Mapping[str, Any], sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
         dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begin, end) pads per spatial axis from ``auto_pad`` (SAME_UPPER/SAME_LOWER/VALID) or
    ``pads``. SAME pads need static ``sizes``."""
    n = len(sizes)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        lo, hi = [], []
        for d, k, s, dl in zip(sizes, kernel, strides, dilations):
            out = -(-d // s)
            total = max(0, (out - 1) * s + (k - 1) * dl + 1 - d)
            small = total // 2
            lo.append(small if auto == "SAME_UPPER" else total - small)
            hi.append(total - lo[-1])
        return lo, hi
    if auto == "VALID":
        return [0] * n, [0] * n
    if auto != "NOTSET":
        raise ValueError(f"unknown auto_pad {auto!r}")
    p = list(attrs.get("pads") or [0] * (2 * n))
    if len(p) != 2 * n:
        raise ValueError(f"pads has {len(p)} entries for {n} spatial axes")
    return p[:n], p[n:]


def transpose_pads(attrs: Mapping[str, Any], sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                   dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begin, end) crop of a transposed convolution's full output. With ``output_shape`` or
    SAME padding the crop follows from the requested size (the odd one goes at the end for
    SAME_UPPER, at the beginning otherwise); else it is ``pads`` as for a convolution."""
    n = len(sizes)
    opad = list(attrs.get("output_padding") or [0] * n)
    auto = attrs.get("auto_pad", "NOTSET")
    out_shape = attrs.get("output_shape")
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        full = [s * (d - 1) + (k - 1) * dl + 1 for d, k, s, dl in zip(sizes, kernel, strides, dilations)]
        target = list(out_shape[-n:]) if out_shape else [d * s for d, s in zip(sizes, strides)]
        total = [f + op - t for f, op, t in zip(full, opad, target)]
        lo = [t // 2 for t in total] if auto == "SAME_UPPER" else [t - t // 2 for t in total]
        return lo, [t - l for t, l in zip(total, lo)]
    return pads(attrs, sizes, kernel, strides, dilations)


def pool_extents(attrs: Mapping[str, Any], sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> tuple[list[int], list[int]]:
    """(output extent, extra end padding) per spatial axis of a pooling window. With
    ``ceil_mode`` the last window may overhang the padded input; ``extra`` pads the end so it lies
    inside the tensor (those cells count as outside the input). A last window that would start
    past the input and its begin padding is dropped, as ONNX and PyTorch do."""
    outs, extra = [], []
    for i, (d, k, s, dl) in enumerate(zip(sizes, kernel, strides, dilations)):
        eff = dl * (k - 1) + 1
        span = d + lo[i] + hi[i] - eff
        if attrs.get("ceil_mode", 0):
            o = -(-span // s) + 1
            if (o - 1) * s >= d + lo[i]:  # the last window must start inside the input
                o -= 1
        else:
            o = span // s + 1
        if o <= 0:
            raise ValueError(f"the pooling window does not fit axis {i} of extent {d}")
        outs.append(o)
        extra.append(max(0, (o - 1) * s + eff - (d + lo[i] + hi[i])))
    return outs, extra
