"""Lowering of ``QLinear`` (ir/ops/qlinear.py).

* Weight-only integer and bf16/fp16 weights on a CPU: optc's packed dense kernel reading its
  weight as codes and decoding them in registers (``schedules/dense_lowp.py``), bias and
  activation fused as its epilogue — the weight stays at its stored size in the library.
* Quantized activations (``act_quant`` dynamic/static): the target's int8 kernel
  (``schedules/qdense.py``: the per-row quantization kernel, then an integer GEMM with the
  scaling in its epilogue) where it has one; elsewhere an exact int32 matmul through Relax,
  which the build report names (it is correct, not fast).
* Other targets (CUDA): the weight is decoded by a ``dequantize`` kernel and multiplied by
  Relax's matmul (dlight's GEMV/GEMM rules fuse the decode into the product).
"""

from __future__ import annotations

import numpy as np

from ...ir import DType
from . import lowering
from .fused import activation

_FLOAT_WEIGHT = {DType.BFLOAT16: "bfloat16", DType.FLOAT16: "float16"}


def _constant(ctx, node, i: int, what: str) -> np.ndarray | None:
    v = node.input(i)
    if v is None:
        return None
    if not v.is_constant:
        raise ctx.fail(f"QLinear's {what} must be a constant")
    return np.asarray(v.const)


def _weight_kind(wdt: DType) -> str:
    return {DType.INT8: "int8", DType.INT4: "int4", DType.UINT4: "uint4"}.get(wdt, "float")


def _is_cpu(ctx) -> bool:
    return getattr(ctx.target, "kind", None) == "cpu"


@lowering("QLinear")
def _qlinear(ctx, node, x, w, w_scale=None, w_zp=None, b=None, x_scale=None, x_zp=None, x_smooth=None):
    R = ctx.R
    xdt = ctx.dtype(x)
    if xdt != "float32":
        x = ctx.emit(R.astype(x, "float32"))
    if ctx.rank(x) == 1:
        x = ctx.emit(R.expand_dims(x, [0]))
        y = _product(ctx, node, x)
        y = ctx.emit(R.squeeze(y, [0]))
    else:
        y = _product(ctx, node, x)
    if b is not None:
        y = R.add(ctx.emit(y), b)
    y = activation(ctx, node.attrs["activation"], y)
    if xdt != "float32":
        y = R.astype(ctx.emit(y), xdt)
    return y


def _product(ctx, node, x):
    """``x @ W`` in float32 (before bias and activation)."""
    if node.attrs["act_quant"] != "none":
        smooth = _constant(ctx, node, 7, "x_smooth")
        if smooth is not None:  # an elementwise prologue FuseOps folds into the quantization kernel
            x = ctx.emit(ctx.R.multiply(x, ctx.const(smooth.astype(np.float32))))
        return _quantized_activations(ctx, node, x)
    codes = _constant(ctx, node, 1, "weight")
    wdt = node.input(1).dtype
    scale = _constant(ctx, node, 2, "w_scale")
    zero = _constant(ctx, node, 3, "w_zero_point")
    group = int(node.attrs["group_size"])
    if _is_cpu(ctx):
        return _decoded_dense(ctx, x, codes, wdt, scale, zero, group)
    return _dequantize_then_matmul(ctx, x, codes, wdt, scale, zero, group)


def _decoded_dense(ctx, x, codes, wdt: DType, scale, zero, group: int):
    from ..schedules.common import K_OUT_EWISE_FUSABLE, CPUTiles
    from ..schedules.dense import KERNEL_ATTR, pack_weight
    from ..schedules.dense_lowp import decoded_dense_te, pack_int4, pack_params

    tiles = CPUTiles.for_target(ctx.target)
    k, n = codes.shape
    nb = tiles.nb if n >= tiles.nb else max(tiles.lanes, 1 << (n - 1).bit_length())
    kind = _weight_kind(wdt)
    if kind == "float":
        packed = ctx.relax.const(pack_weight(codes, nb), _FLOAT_WEIGHT[wdt])
    elif kind == "int8":
        packed = ctx.const(pack_weight(codes.astype(np.int8), nb))
    else:
        packed = ctx.const(pack_int4(codes.astype(np.int8), nb))
    args = [x, packed]
    sc = ctx.const(pack_params(scale.astype(np.float32), nb)) if scale is not None else None
    zp = ctx.const(pack_params(zero.astype(np.int8), nb)) if zero is not None else None
    act_round = _FLOAT_WEIGHT.get(wdt)

    def kernel(xt, ct, st=None, zt=None):
        return decoded_dense_te(xt, ct, st, zt, n, tiles.mi, kind=kind, group_size=group, act_round=act_round)

    args += [a for a in (sc, zp) if a is not None]
    if sc is None and zp is not None:
        raise ctx.fail("a zero point without a scale")
    return ctx.bb.call_te(kernel, *args, primfunc_name_hint=f"optc_dense_{kind}",
                          primfunc_attrs={"op_pattern": K_OUT_EWISE_FUSABLE, KERNEL_ATTR: f"dense_{kind}"})


def _dequantize_then_matmul(ctx, x, codes, wdt: DType, scale, zero, group: int):
    """Non-CPU targets: a ``dequantize`` kernel over the stored weight, then Relax's matmul."""
    from tvm import te

    R = ctx.R
    kind = _weight_kind(wdt)
    if kind == "float":
        wt = _FLOAT_WEIGHT[wdt]
        xr = ctx.emit(R.astype(R.astype(x, wt), "float32"))
        return R.matmul(xr, R.astype(ctx.relax.const(codes, wt), "float32"))
    k, n = codes.shape
    q = ctx.const(codes.astype(np.int8))
    s = ctx.const(scale.astype(np.float32).reshape(-1, n))
    z = ctx.const(zero.astype(np.int8).reshape(-1, n)) if zero is not None else None

    def dequantize(qt, st, zt=None):
        def at(kk, j):
            g = 0 if group == 0 else kk // group
            v = qt[kk, j].astype("int32")
            if zt is not None:
                v = v - zt[g, j].astype("int32")
            return v.astype("float32") * st[g, j]

        return te.compute((k, n), at, name="dequantize")

    wf = ctx.bb.emit_te(dequantize, *([q, s] + ([z] if z is not None else [])), primfunc_name_hint="dequantize")
    return R.matmul(x, wf)


def _quantized_activations(ctx, node, x):
    """int8 activations: per-row (dynamic) or per-tensor (static) codes times int8 weights."""
    w = _constant(ctx, node, 1, "weight").astype(np.int8)
    ws = _constant(ctx, node, 2, "w_scale").astype(np.float32)
    qmax = int(node.attrs["act_qmax"])
    static = node.attrs["act_quant"] == "static"
    kernel = _int8_kernel(ctx, qmax)
    if static:
        xs = float(_constant(ctx, node, 5, "x_scale").reshape(()))
        xz = int(_constant(ctx, node, 6, "x_zero_point").reshape(()))
        xq = ctx.bb.emit_te(lambda t: _rows_te(t, qmax, False, xs, xz), x, primfunc_name_hint="quantize_static")
        lead = ctx.shape(x)[:-1]
        shape = [_product_of(lead)] if kernel is not None else lead  # the int8 kernel takes [M] parameters
        zp = ctx.emit(ctx.R.full(shape, ctx.scalar(xz, "int32"), "int32"))
        sc = ctx.emit(ctx.R.full(shape, ctx.scalar(xs, "float32"), "float32"))
    elif kernel is not None:
        xq, zp, sc = kernel.quantize_rows_call(ctx.bb, x, qmax)
    else:
        out = ctx.bb.emit_te(lambda t: list(_rows_te(t, qmax, True)), x, primfunc_name_hint="quantize_rows")
        xq, zp, sc = (ctx.emit(ctx.relax.TupleGetItem(out, i)) for i in range(3))
    if kernel is not None:
        return kernel.qdense_call(ctx.bb, xq, zp, sc, w, ws, None, ctx.target)
    return _int32_matmul(ctx, xq, zp, sc, w, ws)


def _product_of(dims):
    out = 1
    for d in dims:
        out = out * d
    return out


def _int8_kernel(ctx, qmax: int):
    """The target's int8 kernel module when it multiplies codes up to ``qmax`` exactly, else None."""
    if not _is_cpu(ctx):
        return None
    from ..schedules import qdense
    from ..schedules.int8 import int8_microkernel

    kernel = int8_microkernel(ctx.target)
    return qdense if kernel is not None and qmax <= kernel.qmax else None


def _rows_te(x, qmax: int, dynamic: bool, xs: float = 1.0, xz: int = 0):
    """Generic TE of the activation quantization (ir/interpreter/kernels_qlinear.py's formulas)."""
    from tvm import te, tirx

    lead, kdim = list(x.shape[:-1]), x.shape[-1]
    f32 = "float32"
    if dynamic:
        k1 = te.reduce_axis((0, kdim), name="k")
        k2 = te.reduce_axis((0, kdim), name="k")
        zero = tirx.const(0, f32)
        lo = te.compute(lead, lambda *i: te.min(x[i + (k1,)], axis=k1), name="row_min")
        hi = te.compute(lead, lambda *i: te.max(x[i + (k2,)], axis=k2), name="row_max")

        def scale_at(*i):
            s = (tirx.max(hi[i], zero) - tirx.min(lo[i], zero)) / tirx.const(float(qmax), f32)
            return tirx.Select(s == tirx.const(0, f32), tirx.const(1, f32), s)

        scale = te.compute(lead, scale_at, name="row_scale")
        zp = te.compute(lead, lambda *i: tirx.max(tirx.min(tirx.nearbyint(-tirx.min(lo[i], zero) / scale[i]), tirx.const(float(qmax), f32)),
                                                  tirx.const(0, f32)).astype("int32"), name="row_zero_point")
        s_at, z_at = (lambda i: scale[i]), (lambda i: zp[i])
    else:
        s_at, z_at = (lambda i: tirx.const(xs, f32)), (lambda i: tirx.const(xz, "int32"))

    def code(*idx):
        i = idx[:-1]
        v = tirx.nearbyint(x[idx] / s_at(i)) + z_at(i).astype(f32)
        return tirx.max(tirx.min(v, tirx.const(float(qmax), f32)), tirx.const(0, f32)).astype("uint8")

    xq = te.compute(x.shape, code, name="row_codes")
    if dynamic:
        return xq, zp, scale
    return xq


def _int32_matmul(ctx, xq, zp, sc, w: np.ndarray, ws: np.ndarray):
    """Exact generic path: ``(xq - zp) @ W`` in int32, then ``float32(acc) * (xs * ws)``."""
    R = ctx.R
    centered = ctx.emit(R.subtract(R.astype(xq, "int32"), R.expand_dims(zp, [-1])))
    acc = ctx.emit(R.matmul(centered, ctx.const(w.astype(np.int32)), out_dtype="int32"))
    scale = ctx.emit(R.multiply(R.expand_dims(sc, [-1]), ctx.const(ws)))
    return R.multiply(R.astype(acc, "float32"), scale)
