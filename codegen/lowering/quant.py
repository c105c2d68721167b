"""Lowerings of the quantization ops (ir/ops/quant.py) and of Cast to and from the
low-precision types.

Low-precision tensors are held in their storage dtype (``codegen/storage.py``): fp8/fp4/e8m0 as
uint8 bit patterns, sub-byte integers widened. Decoding a float code is a lookup in a 256-entry
float32 table (a byte cannot index past it); encoding runs ``codegen/lowp.py``'s integer
rounding in a TE kernel. QuantizeLinear and DequantizeLinear are one TE kernel each, for every
parameter layout (per tensor, per axis, blocked: the parameter index is the data index with
the axis coordinate divided by the block size), so no parameter is materialized at the data's
size. Relax's own ``quantize``/``dequantize`` are not used: they round half away from zero and
clip float16 results, where ONNX rounds half to even and lets float16 overflow to inf.

The arithmetic follows the interpreter (``ir/interpreter/kernels_quant.py``) type for type:
float16/bfloat16 quotients are computed in float32 and rounded to their type (what torch and
numpy do), integer products accumulate in int32, requantization is float64.
"""

from __future__ import annotations

import numpy as np

from ...ir import DType
from ...ir.ops.quant import (QUANT_FLOATS, QUANT_INT_RANGE, dequantize_compute_dtype, matmul_param_shape, qparam_layout,
                             quantize_compute_dtype)
from .. import lowp
from ..lower import TVM_DTYPE
from ..storage import STORAGE
from . import lowering

_QUOTIENT_BOUND = float(2**20)  # as the interpreter: beyond it every 16-bit quantization saturates


def _te():
    from tvm import te, tirx

    return te, tirx


# -- decoding / encoding -----------------------------------------------------------------------
def decode(ctx, x, dtype: DType):
    """float32 values of a low-precision float tensor (its uint8 codes): a lookup in a 256-entry
    table, which no byte can index past."""
    te, _ = _te()
    table = ctx.const(lowp.decode_table(dtype), "float32")

    def fn(t, tbl):
        return te.compute(t.shape, lambda *i: tbl[t(*i).astype("int32")], name=f"decode_{dtype.value}")

    return ctx.bb.emit_te(fn, x, table, primfunc_name_hint=f"decode_{dtype.value}")


def _encode_expr(value, src: DType, dst: DType, saturate: bool, round_mode: str):
    """TIR: the uint8 code of ``value`` (a float32 or float64 expression) in ``dst``."""
    te, tirx = _te()
    if dst is DType.FLOAT8E8M0:
        bits = tirx.reinterpret("int32", value.astype("float32") if src is not DType.FLOAT32 else value)
        return lowp.encode_e8m0(bits, saturate, round_mode, lowp.TirOps("int32")).astype("uint8")
    s = lowp.SOURCES[src]
    bits = tirx.reinterpret(s.int_dtype, value)
    return lowp.encode(bits, src, dst, saturate, lowp.TirOps(s.int_dtype)).astype("uint8")


def encode(ctx, x, src: DType, dst: DType, saturate: bool = True, round_mode: str = "up"):
    """The uint8 codes of ``x`` (float32 or float64, ``src``) in the low-precision float ``dst``."""
    te, _ = _te()

    def fn(t):
        return te.compute(t.shape, lambda *i: _encode_expr(t(*i), src, dst, saturate, round_mode),
                          name=f"encode_{dst.value}")

    return ctx.bb.emit_te(fn, x, primfunc_name_hint=f"encode_{dst.value}")


# -- Cast ------------------------------------------------------------------------------------------
_SUB_BYTE = {DType.INT4: (4, True), DType.UINT4: (4, False), DType.INT2: (2, True), DType.UINT2: (2, False)}


def _wide(dtype: DType) -> DType:
    """The ordinary type a low-precision source is read as (its decoded/storage value)."""
    if dtype.is_low_precision and dtype.is_float:
        return DType.FLOAT32
    if dtype in _SUB_BYTE:
        return DType.INT8 if _SUB_BYTE[dtype][1] else DType.UINT8
    return dtype


def _to_sub_byte(ctx, x, src: DType, dst: DType):
    """ONNX Cast of an ordinary-typed ``x`` to a sub-byte integer (its int8/uint8 storage)."""
    R = ctx.R
    bits, signed = _SUB_BYTE[dst]
    store = STORAGE[dst]
    if src is DType.BOOL:
        return R.astype(x, store)
    if src.is_float:  # truncate; out of range (or NaN) -> 0, as ml_dtypes / the interpreter
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        fdt = "float64" if src is DType.FLOAT64 else "float32"
        t = ctx.emit(R.trunc(R.astype(x, fdt)))
        ok = R.logical_and(R.greater_equal(t, ctx.scalar(lo, fdt)), R.less_equal(t, ctx.scalar(hi, fdt)))
        return R.astype(R.where(ok, t, ctx.scalar(0, fdt)), store)
    low = ctx.emit(R.astype(R.bitwise_and(x, ctx.scalar((1 << bits) - 1, TVM_DTYPE[src])), store))  # wrap
    if not signed:
        return low
    half = ctx.scalar(1 << (bits - 1), "int8")
    return R.subtract(R.bitwise_xor(low, half), half)


def lowp_cast(ctx, x, src: DType, dst: DType, saturate: bool = True, round_mode: str = "up"):
    """ONNX Cast when ``src`` or ``dst`` is a low-precision type (see ``ir/interpreter/lowp.py``
    for the semantics)."""
    from .elementwise import cast

    R = ctx.R
    if src.is_low_precision and src.is_float:
        x = decode(ctx, x, src)
    src = _wide(src)
    if not dst.is_low_precision:
        return cast(ctx, x, src, dst)
    if dst in _SUB_BYTE:
        return _to_sub_byte(ctx, x, src, dst)
    if src is DType.FLOAT64:
        fsrc = DType.FLOAT64
    elif src.is_float:
        fsrc = DType.FLOAT32  # float16/bfloat16 widen exactly
    else:
        fsrc = DType.FLOAT64  # integers and bool: exact below 2**53, as the interpreter
        if dst is DType.FLOAT8E8M0:
            x = ctx.emit(R.astype(x, "float64"))
    if ctx.dtype(x) != fsrc.long_name:
        x = ctx.emit(R.astype(x, fsrc.long_name))
    return encode(ctx, x, fsrc, dst, saturate, round_mode)


# -- parameters ----------------------------------------------------------------------------------
def _param_index(layout: str, ax: int, block: int, p_rank: int):
    """Maps a data index to the parameter's index for the given layout."""
    if layout == "tensor":
        return lambda idx: (0,) * p_rank
    if layout == "axis":
        return lambda idx: (idx[ax],)
    return lambda idx: tuple(d // block if i == ax else d for i, d in enumerate(idx))


def _layout(ctx, node, x_shape, p_shape, what: str):
    if x_shape is None or p_shape is None:
        raise ctx.fail(f"{node.op} needs known ranks")
    try:
        return qparam_layout(x_shape, p_shape, node.attrs["axis"], node.attrs["block_size"], what)
    except Exception as e:  # IRError: a shape the verifier let through (symbolic dims)
        raise ctx.fail(str(e)) from None


def _float_param(ctx, node, i: int, p):
    """A parameter with its low-precision float codes decoded (an f8e8m0 scale, an fp8 zero
    point); others as they are."""
    dt = node.inputs[i].dtype
    return decode(ctx, p, dt) if dt.is_low_precision and dt.is_float else p


# -- QuantizeLinear / DequantizeLinear -----------------------------------------------------------
@lowering("QuantizeLinear")
def _quantize_linear(ctx, node, x, scale, zp=None):
    te, tirx = _te()
    xv, sv = node.inputs[0], node.inputs[1]
    out = node.outputs[0].dtype
    cdt = quantize_compute_dtype(xv.dtype, sv.dtype, node.attrs["precision"])
    layout, ax = _layout(ctx, node, xv.shape, sv.shape, "scale")
    pidx = _param_index(layout, ax, node.attrs["block_size"], len(sv.shape))
    zidx = _param_index(layout, ax, node.attrs["block_size"], len(node.inputs[2].shape)) if zp is not None else None
    scale = _float_param(ctx, node, 1, scale)
    wide = "float64" if cdt is DType.FLOAT64 else "float32"
    sat = bool(node.attrs["saturate"])
    if zp is not None:
        zp = _float_param(ctx, node, 2, zp)

    half = cdt in (DType.FLOAT16, DType.BFLOAT16)

    def quotient(t, s, idx):
        a, b = t(*idx), s(*pidx(idx))
        if half:  # operands and quotient rounded to the type (precision=f16 rounds x first), as torch / numpy
            a, b = a.astype(cdt.long_name), b.astype(cdt.long_name)
            return (a.astype("float32") / b.astype("float32")).astype(cdt.long_name).astype("float32")
        return a.astype(wide) / b.astype(wide)

    args = [x, scale] + ([zp] if zp is not None else [])
    if out in QUANT_FLOATS:
        fsrc = DType.FLOAT64 if wide == "float64" else DType.FLOAT32

        def fn(t, s, *z):
            def body(*i):
                q = quotient(t, s, i).astype(wide)
                if z:  # the spec's + zero point (float8: a zero one leaves -0 alone), as the interpreter
                    zv = z[0](*zidx(i)).astype(wide)
                    q = q + zv if out is DType.FLOAT4E2M1 else tirx.Select(zv == tirx.const(0.0, wide), q, q + zv)
                return _encode_expr(q, fsrc, out, sat, "up")

            return te.compute(t.shape, body, name="quantize")

        return ctx.bb.emit_te(fn, *args, primfunc_name_hint="quantize")

    lo, hi = QUANT_INT_RANGE[out]
    store = TVM_DTYPE[out]

    def fn(t, s, *z):
        def body(*i):
            r = tirx.nearbyint(quotient(t, s, i))  # round half to even
            bound = tirx.const(_QUOTIENT_BOUND, wide)
            # clamp with NaN -> -bound, reading r once: LLVM's max(a, b) is ``a > b ? a : b``, so
            # max(NaN, -bound) is -bound. (A Select on isnan(r) reads r twice, and a QDQ model's
            # chain of quantizations inlined into one kernel then doubles in size at every one.)
            r = tirx.min(tirx.max(r, -bound), bound)
            y = r.astype("int32")
            if z:
                y = y + z[0](*zidx(i)).astype("int32")
            return tirx.max(tirx.min(y, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype(store)

        return te.compute(t.shape, body, name="quantize")

    return ctx.bb.emit_te(fn, *args, primfunc_name_hint="quantize")


@lowering("DequantizeLinear")
def _dequantize_linear(ctx, node, x, scale, zp=None):
    te, tirx = _te()
    xv, sv = node.inputs[0], node.inputs[1]
    xdt, out = xv.dtype, node.outputs[0].dtype
    float_data = xdt in QUANT_FLOATS
    cdt = dequantize_compute_dtype(xdt, zp is not None).long_name
    layout, ax = _layout(ctx, node, xv.shape, sv.shape, "scale")
    pidx = _param_index(layout, ax, node.attrs["block_size"], len(sv.shape))
    zidx = _param_index(layout, ax, node.attrs["block_size"], len(node.inputs[2].shape)) if zp is not None else None
    scale = _float_param(ctx, node, 1, scale)
    if float_data:
        x = decode(ctx, x, xdt)
        if zp is not None:
            zp = decode(ctx, zp, xdt)

    def fn(t, s, *z):
        def body(*i):
            dx = t(*i).astype("float32").astype(cdt)
            if z:
                dx = dx - z[0](*zidx(i)).astype(cdt)
            return (dx * s(*pidx(i)).astype(cdt)).astype(out.long_name)

        return te.compute(t.shape, body, name="dequantize")  # dlight's GEMV rules look for this name

    args = [x, scale] + ([zp] if zp is not None else [])
    return ctx.bb.emit_te(fn, *args, primfunc_name_hint="dequantize")


def round_half_even(ctx, x):
    """Round to nearest, ties to even (``nearbyint``), elementwise."""
    te, tirx = _te()
    return ctx.bb.emit_te(lambda t: te.compute(t.shape, lambda *i: tirx.nearbyint(t(*i)), name="round_even"), x,
                          primfunc_name_hint="round_even")


@lowering("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx, node, x):
    R = ctx.R
    f = "float32"
    flat = ctx.emit(R.reshape(x, [-1]))
    ext = ctx.emit(R.concat([flat, ctx.const(np.zeros(1, np.float32))], axis=0))  # never empty; holds 0
    # NaN propagates through min/max, as numpy's (TVM's max/min reductions would skip it)
    nan = ctx.emit(R.greater(R.sum(R.astype(R.isnan(ext), "float32")), ctx.scalar(0.0, f)))
    hi = ctx.emit(R.where(nan, ctx.scalar(float("nan"), f), R.max(ext)))
    lo = ctx.emit(R.where(nan, ctx.scalar(float("nan"), f), R.min(ext)))
    one = ctx.scalar(1.0, f)
    scale = ctx.emit(R.divide(R.where(R.equal(hi, lo), one, R.subtract(hi, lo)), ctx.scalar(255.0, f)))
    zp0 = ctx.emit(R.subtract(ctx.scalar(0.0, f), R.divide(lo, scale)))
    zp = ctx.emit(R.where(R.less(zp0, ctx.scalar(255.0, f)), zp0, ctx.scalar(255.0, f)))  # Python min/max
    zp = ctx.emit(R.where(R.greater(zp, ctx.scalar(0.0, f)), zp, ctx.scalar(0.0, f)))
    zpi = round_half_even(ctx, zp)
    y = ctx.emit(R.add(round_half_even(ctx, ctx.emit(R.divide(x, scale))), zpi))
    y = ctx.emit(R.where(R.isnan(y), ctx.scalar(0.0, f), y))  # before clip: TVM's clip turns NaN into a bound
    y = ctx.emit(R.clip(y, 0.0, 255.0))
    return R.astype(y, "uint8"), scale, R.astype(zpi, "uint8")


# -- integer matmul / conv -----------------------------------------------------------------------
def _matmul_param(ctx, node, i: int, p, data: int, side: str, dtype: str):
    shape = matmul_param_shape(node.inputs[i].shape, node.inputs[data].shape, side)
    if shape is None or any(not isinstance(d, int) for d in shape):
        raise ctx.fail(f"input {i} of shape {node.inputs[i].type} as a per-{'row' if side == 'a' else 'column'} parameter")
    p = ctx.emit(ctx.R.astype(p, dtype))
    return ctx.emit(ctx.R.reshape(p, list(shape)))


def _int_matmul(ctx, node, a, azp, b, bzp, ia: int = 0, iazp: int = 2, ib: int = 1, ibzp: int = 3):
    R = ctx.R
    a32 = ctx.emit(R.astype(a, "int32"))
    if azp is not None:
        a32 = ctx.emit(R.subtract(a32, _matmul_param(ctx, node, iazp, azp, ia, "a", "int32")))
    b32 = ctx.emit(R.astype(b, "int32"))
    if bzp is not None:
        b32 = ctx.emit(R.subtract(b32, _matmul_param(ctx, node, ibzp, bzp, ib, "b", "int32")))
    return ctx.emit(R.matmul(a32, b32, out_dtype="int32"))


@lowering("MatMulInteger")
def _matmul_integer(ctx, node, a, b, azp=None, bzp=None):
    return _int_matmul(ctx, node, a, azp, b, bzp)


def _requantize(ctx, acc, multiplier, yzp, out: DType):
    R = ctx.R
    lo, hi = QUANT_INT_RANGE[out]
    d = ctx.emit(R.multiply(R.astype(acc, "float64"), R.astype(multiplier, "float64")))
    d = ctx.emit(R.add(d, R.astype(yzp, "float64")))
    d = round_half_even(ctx, d)
    d = ctx.emit(R.where(R.isnan(d), ctx.scalar(float(lo), "float64"), d))  # before clip (it eats NaN)
    d = ctx.emit(R.clip(d, float(lo), float(hi)))
    return R.astype(d, TVM_DTYPE[out])


@lowering("QLinearMatMul")
def _qlinear_matmul(ctx, node, a, a_scale, azp, b, b_scale, bzp, y_scale, yzp):
    R = ctx.R
    acc = _int_matmul(ctx, node, a, azp, b, bzp, 0, 2, 3, 5)
    sdt = node.inputs[1].dtype.long_name
    m = ctx.emit(R.multiply(_matmul_param(ctx, node, 1, a_scale, 0, "a", sdt), _matmul_param(ctx, node, 4, b_scale, 3, "b", sdt)))
    m = ctx.emit(R.divide(m, y_scale))  # in the scales' type, as the reference
    return _requantize(ctx, acc, m, yzp, node.outputs[0].dtype)


def _per_channel(ctx, p, rank: int, axis: int, dtype: str):
    shape = ctx.static_shape(p)
    p = ctx.emit(ctx.R.astype(p, dtype))
    if shape is None:
        raise ctx.fail("a per-channel parameter of symbolic shape")
    if int(np.prod(shape)) == 1:
        return ctx.emit(ctx.R.reshape(p, []))
    return ctx.emit(ctx.R.reshape(p, [1] * axis + [-1] + [1] * (rank - axis - 1)))


def _int_conv(ctx, node, x, xzp, w, wzp, bias=None):
    from .nn import _conv

    R = ctx.R
    x32 = ctx.emit(R.astype(x, "int32"))
    if xzp is not None:
        x32 = ctx.emit(R.subtract(x32, _per_channel(ctx, xzp, 0, 0, "int32")))
    w32 = ctx.emit(R.astype(w, "int32"))
    wrank = ctx.rank(w)
    if wzp is not None:
        w32 = ctx.emit(R.subtract(w32, _per_channel(ctx, wzp, wrank, 0, "int32")))
    y = ctx.emit(_conv(ctx, node, x32, w32))
    if bias is not None:
        y = ctx.emit(R.add(y, _per_channel(ctx, bias, wrank, 1, "int32")))
    return y


@lowering("ConvInteger")
def _conv_integer(ctx, node, x, w, xzp=None, wzp=None):
    return _int_conv(ctx, node, x, xzp, w, wzp)


@lowering("QLinearConv")
def _qlinear_conv(ctx, node, x, x_scale, xzp, w, w_scale, wzp, y_scale, yzp, bias=None):
    R = ctx.R
    acc = _int_conv(ctx, node, x, xzp, w, wzp, bias)
    rank = ctx.rank(acc)
    m = ctx.emit(R.multiply(_per_channel(ctx, x_scale, rank, 1, "float32"), _per_channel(ctx, w_scale, rank, 1, "float32")))
    m = ctx.emit(R.divide(m, _per_channel(ctx, y_scale, rank, 1, "float32")))
    return _requantize(ctx, acc, m, _per_channel(ctx, yzp, rank, 1, "int32"), node.outputs[0].dtype)


# -- BitCast -------------------------------------------------------------------------------------
@lowering("BitCast")
def _bitcast(ctx, node, x):
    te, tirx = _te()
    R = ctx.R
    src, dst = node.inputs[0].dtype, node.attrs["to"]
    if src.is_packed:  # the element's low bits, read back as dst
        bits = dst.bits
        code = ctx.emit(R.bitwise_and(R.astype(x, "uint8"), ctx.scalar((1 << bits) - 1, "uint8")))
        if not (dst.is_int and dst.is_signed):
            return code
        half = ctx.scalar(1 << (bits - 1), "int8")
        return R.subtract(R.bitwise_xor(R.astype(code, "int8"), half), half)
    if dst is DType.BOOL:
        return R.not_equal(x, ctx.scalar(0, TVM_DTYPE[src]))
    if src is DType.BOOL:
        return R.astype(x, TVM_DTYPE[dst])
    s, d = TVM_DTYPE[src], TVM_DTYPE[dst]
    if s == d:
        return x
    return ctx.bb.emit_te(lambda t: te.compute(t.shape, lambda *i: tirx.reinterpret(d, t(*i)), name="bitcast"), x,
                          primfunc_name_hint="bitcast")
