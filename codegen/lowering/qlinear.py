"""Lowering of ``QLinear`` (ir/ops/qlinear.py).

* Weight-only integer and bf16/fp16 weights on a CPU: optc's packed dense kernel reading its
  weight as codes and decoding them in registers (``schedules/dense_lowp.py``), bias and
  activation fused as its epilogue — the weight stays at its stored size in the library.
* Quantized activations (``act_quant`` dynamic/static): the target's int8 kernel
  (``schedules/qdense.py``: the per-row quantization kernel, then an integer GEMM with the
  scaling in its epilogue). A target without one is a clear error (``Target.
  quantized_kernel_problem``), not a slow generic integer matmul.
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
        return _quantized_activations(ctx, node, x, _constant(ctx, node, 7, "x_smooth"))
    codes = _constant(ctx, node, 1, "weight")
    wdt = node.input(1).dtype
    scale = _constant(ctx, node, 2, "w_scale")
    zero = _constant(ctx, node, 3, "w_zero_point")
    group = int(node.attrs["group_size"])
    if _is_cpu(ctx):
        return _decoded_dense(ctx, x, codes, wdt, scale, zero, group)
    return _dequantize_then_matmul(ctx, x, codes, wdt, scale, zero, group)


def _zero_points(zero: np.ndarray) -> np.ndarray:
    """Integer zero points as int8 (4-bit ones widened), float32 ones unchanged."""
    return zero.astype(np.float32) if zero.dtype == np.float32 else zero.astype(np.int8)


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
    zp = ctx.const(pack_params(_zero_points(zero), nb)) if zero is not None else None
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
    if kind == "float":  # a half-precision GEMM accumulating in float32 (tensor cores where dlight finds them)
        wt = _FLOAT_WEIGHT[wdt]
        return R.matmul(ctx.emit(R.astype(x, wt)), ctx.relax.const(codes, wt), out_dtype="float32")
    k, n = codes.shape
    q = ctx.const(codes.astype(np.int8))
    s = ctx.const(scale.astype(np.float32).reshape(-1, n))
    z = ctx.const(_zero_points(zero).reshape(-1, n)) if zero is not None else None

    def dequantize(qt, st, zt=None):
        def at(kk, j):
            g = 0 if group == 0 else kk // group
            v = qt[kk, j].astype("int32")
            if zt is not None and zt.dtype == "float32":
                return (v.astype("float32") - zt[g, j]) * st[g, j]
            if zt is not None:
                v = v - zt[g, j].astype("int32")
            return v.astype("float32") * st[g, j]

        return te.compute((k, n), at, name="dequantize")

    wf = ctx.bb.emit_te(dequantize, *([q, s] + ([z] if z is not None else [])), primfunc_name_hint="dequantize")
    return R.matmul(x, wf)


def _quantized_activations(ctx, node, x, smooth: np.ndarray | None):
    """int8 activations: per-row (dynamic) or per-tensor (static) codes times int8 weights."""
    w = _constant(ctx, node, 1, "weight").astype(np.int8)
    ws = _constant(ctx, node, 2, "w_scale").astype(np.float32)
    qmax = int(node.attrs["act_qmax"])
    static = node.attrs["act_quant"] == "static"
    kernel = _int8_kernel(ctx, qmax)
    if static and smooth is not None:  # (the dynamic kernel multiplies while it reads)
        x = ctx.emit(ctx.R.multiply(x, ctx.const(smooth.astype(np.float32))))
    if static:
        xs = float(_constant(ctx, node, 5, "x_scale").reshape(()))
        xz = int(_constant(ctx, node, 6, "x_zero_point").reshape(()))
        xq = ctx.bb.emit_te(lambda t: _static_codes_te(t, qmax, xs, xz), x, primfunc_name_hint="quantize_static")
        lead = ctx.shape(x)[:-1]
        shape = [_product_of(lead)]  # the int8 kernel takes [M] parameters
        zp = ctx.emit(ctx.R.full(shape, ctx.scalar(xz, "int32"), "int32"))
        sc = ctx.emit(ctx.R.full(shape, ctx.scalar(xs, "float32"), "float32"))
    else:
        xq, zp, sc = kernel.quantize_rows_call(ctx.bb, x, qmax, smooth)
    return kernel.qdense_call(ctx.bb, xq, zp, sc, w, ws, None, ctx.target)


def _product_of(dims):
    out = 1
    for d in dims:
        out = out * d
    return out


def _int8_kernel(ctx, qmax: int):
    """The target's int8 kernel module (``schedules/qdense.py``); a clear error when the target
    has none or multiplies fewer bits exactly than the layer's codes have."""
    problem = ctx.target.quantized_kernel_problem("dynamic") if ctx.target is not None else "no target"
    if problem is not None:
        raise ctx.fail(problem)
    from ..schedules import qdense
    from ..schedules.int8 import int8_microkernel

    kernel = int8_microkernel(ctx.target)
    if qmax > kernel.qmax:
        raise ctx.fail(f"activation codes up to {qmax}, but {ctx.target.name}'s int8 kernel ({', '.join(kernel.mnemonics)}) "
                       f"multiplies codes up to {kernel.qmax} exactly: quantize with this target (--target) or act_qmax={kernel.qmax}")
    return qdense


def _static_codes_te(x, qmax: int, xs: float, xz: int):
    """TE of the per-tensor activation codes ``clamp(round_half_even(x / xs) + xz, 0, qmax)``
    (ir/interpreter/kernels_qlinear.py's ``static_quantize``)."""
    from tvm import te, tirx

    f32 = "float32"

    def code(*idx):
        v = tirx.nearbyint(x[idx] / tirx.const(xs, f32)) + tirx.const(float(xz), f32)
        return tirx.max(tirx.min(v, tirx.const(float(qmax), f32)), tirx.const(0, f32)).astype("uint8")

    return te.compute(x.shape, code, name="row_codes")
