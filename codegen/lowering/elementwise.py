"""Lowerings of the elementwise ops (ir/ops/elementwise.py): unary math and activations,
broadcasting arithmetic, comparison and logic, Where, Cast."""

from __future__ import annotations

import functools

import numpy as np

from ...ir import DType, checks
from ..lower import TVM_DTYPE
from . import lowering


def _dt(ctx, x) -> str:
    return ctx.dtype(x)


def _unsigned(node, i: int = 0) -> bool:
    dt = node.inputs[i].dtype
    return dt.is_int and not dt.is_signed


# -- unary ---------------------------------------------------------------------------------------
_DIRECT = {
    "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Sin": "sin", "Cos": "cos", "Tan": "tan",
    "Asin": "asin", "Acos": "acos", "Atan": "atan", "Asinh": "asinh",
    "Acosh": "acosh", "Atanh": "atanh", "Tanh": "tanh", "Sigmoid": "sigmoid", "Erf": "erf",
    "Floor": "floor", "Ceil": "ceil", "IsNaN": "isnan", "Not": "logical_not", "BitwiseNot": "bitwise_not",
}


def _direct(name):
    def fn(ctx, node, x):
        return getattr(ctx.R, name)(x)

    return fn


for _op, _name in _DIRECT.items():
    lowering(_op)(_direct(_name))


@lowering("Sinh", "Cosh")
def _sinh_cosh(ctx, node, x):
    # LLVM has no sinh/cosh intrinsic for TVM: (e^x -/+ e^-x) / 2.
    R = ctx.R
    dt = _dt(ctx, x)
    a, b = ctx.emit(R.exp(x)), ctx.emit(R.exp(R.negative(x)))
    s = R.subtract(a, b) if node.op == "Sinh" else R.add(a, b)
    return R.multiply(s, ctx.scalar(0.5, dt))


def _log1p(ctx, y):
    """log(1 + y) accurate for tiny y: log(u) - ((u - 1) - y) / u with u = 1 + y."""
    R = ctx.R
    one = ctx.scalar(1, _dt(ctx, y))
    u = ctx.emit(R.add(one, y))
    return R.subtract(R.log(u), R.divide(R.subtract(R.subtract(u, one), y), u))


@lowering("Round")
def _round(ctx, node, x):
    # ONNX rounds half to even; x - remainder-based: nearbyint is not a Relax op, so
    # round(x) and fix the exact halves: r = round(x); if |x - trunc(x)| == 0.5 and r is odd,
    # step back toward x.
    R = ctx.R
    dt = _dt(ctx, x)
    r = ctx.emit(R.round(x))
    half = ctx.scalar(0.5, dt)
    two = ctx.scalar(2.0, dt)
    is_half = R.equal(R.abs(R.subtract(x, R.trunc(x))), half)
    odd = R.not_equal(R.subtract(r, R.multiply(two, R.floor(R.divide(r, two)))), ctx.scalar(0.0, dt))
    fix = R.subtract(r, R.sign(R.subtract(r, x)))
    return R.where(R.logical_and(is_half, odd), fix, r)


@lowering("Reciprocal")
def _reciprocal(ctx, node, x):
    return ctx.R.divide(ctx.scalar(1, _dt(ctx, x)), x)


@lowering("Identity")
def _identity(ctx, node, x):
    return x


@lowering("Abs")
def _abs(ctx, node, x):
    if _unsigned(node) or _dt(ctx, x) == "bool":
        return x
    return ctx.R.abs(x)


@lowering("Neg")
def _neg(ctx, node, x):
    return ctx.R.negative(x)


@lowering("Sign")
def _sign(ctx, node, x):
    if _unsigned(node):
        return ctx.R.astype(ctx.R.not_equal(x, ctx.scalar(0, _dt(ctx, x))), _dt(ctx, x))
    return ctx.R.sign(x)


def keep_nan(ctx, x, y):
    """``y``, but NaN where ``x`` is NaN (floats). TVM's float max/min is ``a > b ? a : b``, which
    drops a NaN in its first operand, and a vectorized max reduction drops or keeps it depending
    on the lane count (the CPU's vector width); the interpreter propagates NaN, as ONNX."""
    if not _dt(ctx, x).startswith(("float", "bfloat")):
        return y
    return ctx.R.where(ctx.R.isnan(x), x, y)


def relu(ctx, x):
    """max(x, 0), NaN kept (the standalone Relu and the fused ``activation="relu"`` epilogue)."""
    return keep_nan(ctx, x, ctx.R.maximum(x, ctx.scalar(0, _dt(ctx, x))))


def _extreme2(largest: bool):
    def fold(ctx, a, b):
        m = (ctx.R.maximum if largest else ctx.R.minimum)(a, b)
        if not _dt(ctx, a).startswith(("float", "bfloat")):
            return m
        # a + b: NaN when either is (keep_nan of both operands, in one select)
        return ctx.R.where(ctx.R.logical_or(ctx.R.isnan(a), ctx.R.isnan(b)), ctx.R.add(a, b), m)

    return fold


@lowering("Relu")
def _relu(ctx, node, x):
    if _unsigned(node):
        return x
    return relu(ctx, x)


@lowering("IsInf")
def _isinf(ctx, node, x):
    R = ctx.R
    neg, pos = node.attrs["detect_negative"], node.attrs["detect_positive"]
    inf = R.isinf(x)
    zero = ctx.scalar(0, _dt(ctx, x))
    if neg and pos:
        return inf
    if neg:
        return R.logical_and(inf, R.less(x, zero))
    if pos:
        return R.logical_and(inf, R.greater(x, zero))
    return R.zeros_like(x, "bool")


@lowering("LeakyRelu")
def _leaky_relu(ctx, node, x):
    return ctx.R.nn.leakyrelu(x, node.attrs["alpha"])


def _expm1(ctx, x):
    return ctx.R.subtract(ctx.R.exp(x), ctx.scalar(1, _dt(ctx, x)))


@lowering("Elu")
def _elu(ctx, node, x):
    R = ctx.R
    dt = _dt(ctx, x)
    return R.where(R.greater(x, ctx.scalar(0, dt)), x, R.multiply(ctx.scalar(node.attrs["alpha"], dt), _expm1(ctx, x)))


@lowering("Celu")
def _celu(ctx, node, x):
    R = ctx.R
    dt = _dt(ctx, x)
    a = node.attrs["alpha"]
    zero = ctx.scalar(0, dt)
    neg = R.multiply(ctx.scalar(a, dt), _expm1(ctx, R.divide(x, ctx.scalar(a, dt))))
    return R.add(R.maximum(x, zero), R.minimum(neg, zero))


@lowering("Selu")
def _selu(ctx, node, x):
    R = ctx.R
    dt = _dt(ctx, x)
    a, g = node.attrs["alpha"], node.attrs["gamma"]
    y = R.where(R.greater(x, ctx.scalar(0, dt)), x, R.multiply(ctx.scalar(a, dt), _expm1(ctx, x)))
    return R.multiply(ctx.scalar(g, dt), y)


def _clip01(ctx, y):
    dt = _dt(ctx, y)
    return ctx.R.minimum(ctx.R.maximum(y, ctx.scalar(0, dt)), ctx.scalar(1, dt))


@lowering("HardSigmoid")
def _hard_sigmoid(ctx, node, x):
    R = ctx.R
    dt = _dt(ctx, x)
    return _clip01(ctx, ctx.emit(R.add(R.multiply(x, ctx.scalar(node.attrs["alpha"], dt)), ctx.scalar(node.attrs["beta"], dt))))


@lowering("HardSwish")
def _hard_swish(ctx, node, x):
    R = ctx.R
    dt = _dt(ctx, x)
    hs = _clip01(ctx, ctx.emit(R.add(R.multiply(x, ctx.scalar(1.0 / 6.0, dt)), ctx.scalar(0.5, dt))))
    return R.multiply(x, hs)


@lowering("ThresholdedRelu")
def _thresholded_relu(ctx, node, x):
    R = ctx.R
    dt = _dt(ctx, x)
    return R.where(R.greater(x, ctx.scalar(node.attrs["alpha"], dt)), x, ctx.scalar(0, dt))


@lowering("Gelu")
def _gelu(ctx, node, x):
    approx = node.attrs["approximate"]
    if approx == "none":
        return ctx.R.nn.gelu(x)
    if approx == "tanh":
        return ctx.R.nn.gelu_tanh(x)
    raise ctx.fail(f"Gelu approximate={approx!r}")


@lowering("Silu")
def _silu(ctx, node, x):
    return ctx.R.multiply(x, ctx.R.sigmoid(x))


def _softplus_expr(ctx, x):
    # log(1 + exp(x)), stable: max(x, 0) + log1p(exp(-|x|))
    R = ctx.R
    dt = _dt(ctx, x)
    return R.add(R.maximum(x, ctx.scalar(0, dt)), _log1p(ctx, ctx.emit(R.exp(R.negative(R.abs(x))))))


@lowering("Softplus")
def _softplus(ctx, node, x):
    return _softplus_expr(ctx, x)


@lowering("Softsign")
def _softsign(ctx, node, x):
    R = ctx.R
    return R.divide(x, R.add(ctx.scalar(1, _dt(ctx, x)), R.abs(x)))


@lowering("Mish")
def _mish(ctx, node, x):
    """x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2): no tanh (TVM's float tanh
    is an approximation with ~1e-3 relative error near 0, i.e. for very negative x)."""
    R = ctx.R
    dt = _dt(ctx, x)
    big = ctx.scalar(20.0, dt)
    t = ctx.emit(R.exp(R.minimum(x, big)))
    n = ctx.emit(R.multiply(t, R.add(t, ctx.scalar(2.0, dt))))
    y = R.multiply(x, R.divide(n, R.add(n, ctx.scalar(2.0, dt))))
    return R.where(R.greater(x, big), x, ctx.emit(y))


@lowering("Dropout")
def _dropout(ctx, node, data, ratio=None, training_mode=None):
    if training_mode is not None:
        known = ctx.known_ints(node.inputs[2])
        if known is None or any(known):
            raise ctx.fail("Dropout in training mode")
    if len(node.outputs) > 1:
        return data, ctx.R.ones_like(data, "bool")
    return (data,)


@lowering("Clip")
def _clip(ctx, node, x, lo=None, hi=None):
    R = ctx.R
    y = x
    if lo is not None:
        y = ctx.emit(R.maximum(y, lo))
    if hi is not None:
        y = ctx.emit(R.minimum(y, hi))
    return y if y is x else keep_nan(ctx, x, y)


# -- casts ---------------------------------------------------------------------------------------
def cast(ctx, x, src: DType, dst: DType, saturate: bool = True, round_mode: str = "up"):
    """ONNX Cast of ``x`` from ``src`` to ``dst`` (``saturate``/``round_mode``: low-precision
    targets, see ``lowering/quant.py``)."""
    if src.is_low_precision or dst.is_low_precision:
        from .quant import lowp_cast

        return lowp_cast(ctx, x, src, dst, saturate, round_mode)
    R = ctx.R
    if dst is DType.BOOL:
        if src is DType.BOOL:
            return x
        if src.is_float:  # NaN is true; TVM's float not_equal is ordered (NaN -> false)
            return R.logical_or(R.not_equal(x, ctx.scalar(0, TVM_DTYPE[src])), R.isnan(x))
        return R.not_equal(x, ctx.scalar(0, TVM_DTYPE[src]))
    if src is dst:
        return x
    if src.is_float and dst.is_int:
        return float_to_int(ctx, x, TVM_DTYPE[dst])
    return R.astype(x, TVM_DTYPE[dst])


def float_to_int(ctx, x, dst: str):
    """float -> integer ``dst`` as the interpreter does it: truncate toward zero; NaN and values
    outside int64's range give INT64_MIN (x86's "integer indefinite", what torch yields); then
    wrap to ``dst``. A bare ``astype`` is LLVM's ``fptosi``/``fptoui``, poison out of range: its
    result depended on the instructions the CPU has (AVX-512's ``vcvttps2udq`` and AVX2's
    emulation of float -> uint disagree on negative values)."""
    R = ctx.R
    dt = ctx.dtype(x)
    if dt not in ("float32", "float64"):
        x, dt = ctx.emit(R.astype(x, "float32")), "float32"  # exact; 2**63 overflows float16
    ok = ctx.emit(R.logical_and(R.greater_equal(x, ctx.scalar(-(2.0**63), dt)), R.less(x, ctx.scalar(2.0**63, dt))))
    v = ctx.emit(R.astype(R.where(ok, x, ctx.scalar(0, dt)), "int64"))
    v = ctx.emit(R.where(ok, v, ctx.scalar(-(2**63), "int64")))
    return v if dst == "int64" else R.astype(v, dst)


@lowering("Cast")
def _cast(ctx, node, x):
    return cast(ctx, x, node.inputs[0].dtype, node.attrs["to"], bool(node.attrs["saturate"]), node.attrs["round_mode"])


@lowering("CastLike")
def _cast_like(ctx, node, x, target):
    return cast(ctx, x, node.inputs[0].dtype, node.inputs[1].dtype, bool(node.attrs["saturate"]), node.attrs["round_mode"])


# -- binary --------------------------------------------------------------------------------------
def _binary(name):
    def fn(ctx, node, a, b):
        return getattr(ctx.R, name)(a, b)

    return fn


for _op, _name in {"Add": "add", "Sub": "subtract", "Mul": "multiply", "BitwiseAnd": "bitwise_and",
                   "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor", "And": "logical_and",
                   "Or": "logical_or", "Xor": "logical_xor", "Equal": "equal", "Less": "less",
                   "LessOrEqual": "less_equal", "Greater": "greater", "GreaterOrEqual": "greater_equal"}.items():
    lowering(_op)(_binary(_name))


def _int_divisor(ctx, node, b):
    """An integer divisor, checked nonzero (``ir/checks.py``: a zero divisor is an error, in both
    backends; x86 would kill the process with SIGFPE), and whether it may be -1 (``INT_MIN / -1``
    also traps: the caller computes that case without dividing)."""
    v = node.inputs[1]
    if v.const is not None:
        c = np.asarray(v.const)
        if c.size and (c == 0).any():
            raise ctx.invalid(checks.DIVISION_BY_ZERO)
        return b, bool(v.dtype.is_signed and (c == -1).any())
    r = ctx.int_range(v)
    if r is None or r[0] <= 0 <= r[1]:
        b = ctx.check_each(b, lambda e, pos: e != 0, checks.DIVISION_BY_ZERO)
    return b, bool(v.dtype.is_signed and (r is None or r[0] <= -1 <= r[1]))


def _int_div(ctx, node, a, b, fn, quotient: bool):
    """``fn(a, b)`` for integers, the divisor -1 replaced by 1 (``INT_MIN / -1`` traps on x86):
    a remainder by ±1 is 0 either way; a quotient is negated back (``-(a / 1)``, wrapping at
    INT_MIN as two's complement does). Arithmetic, not ``where``: TVM's simplifier would fold a
    ``select(b == -1, 1, b)`` divisor back to ``b`` inside the other branch of the result."""
    b, maybe_neg1 = _int_divisor(ctx, node, b)
    if not maybe_neg1:
        return fn(a, b)
    R = ctx.R
    dt = _dt(ctx, b)
    twice = ctx.emit(R.multiply(R.astype(R.equal(b, ctx.scalar(-1, dt)), dt), ctx.scalar(2, dt)))  # 2 where b == -1
    r = fn(a, ctx.emit(R.add(b, twice)))
    if not quotient:
        return r
    return R.multiply(ctx.emit(r), ctx.emit(R.subtract(ctx.scalar(1, dt), twice)))


def _int_floor_mod(ctx, a, b):
    """floor_mod from the truncated one: TVM's own floor_mod fails to vectorize when the divisor
    is an expression (``int64x4 vs. int64``)."""
    R = ctx.R
    zero = ctx.scalar(0, _dt(ctx, b))
    r = ctx.emit(R.mod(a, b))
    fix = R.logical_and(R.not_equal(r, zero), R.logical_xor(R.less(r, zero), R.less(b, zero)))
    return R.where(fix, R.add(r, b), r)


@lowering("Div")
def _div(ctx, node, a, b):
    R = ctx.R
    if node.inputs[0].dtype.is_int:  # truncates (C semantics), as ONNX
        return _int_div(ctx, node, a, b, R.divide, True)
    return R.divide(a, b)


@lowering("Mod")
def _mod(ctx, node, a, b):
    R = ctx.R
    if node.inputs[0].dtype.is_int:
        fn = R.mod if node.attrs["fmod"] else functools.partial(_int_floor_mod, ctx)  # sign: dividend / divisor
        return _int_div(ctx, node, a, b, fn, False)
    if node.attrs["fmod"]:
        return R.mod(a, b)  # sign of the dividend
    # Python/numpy remainder from the truncated one (exact, and right for infinities):
    # shift by b when the signs differ; a zero result takes the divisor's sign.
    dt = _dt(ctx, a)
    zero = ctx.scalar(0, dt)
    r = ctx.emit(R.mod(a, b))
    fix = R.logical_and(R.not_equal(r, zero), R.logical_xor(R.less(r, zero), R.less(b, zero)))
    r = ctx.emit(R.where(fix, R.add(r, b), r))
    signed_zero = R.where(R.less(b, zero), ctx.scalar(-0.0, dt), zero)
    return R.where(R.equal(r, zero), signed_zero, r)


@lowering("Pow")
def _pow(ctx, node, x, y):
    R = ctx.R
    dt = _dt(ctx, x)
    if node.inputs[0].dtype.is_int:
        # Integer power: compute in float64 and truncate back (the interpreter's numpy result),
        # through ``float_to_int`` so that a result out of range is defined.
        xf = R.astype(x, "float64")
        yf = R.astype(y, "float64")
        return float_to_int(ctx, ctx.emit(R.power(xf, yf)), dt)
    if _dt(ctx, y) != dt:
        y = R.astype(y, dt)
    return R.power(x, y)


@lowering("PRelu")
def _prelu(ctx, node, x, slope):
    R = ctx.R
    return R.where(R.less(x, ctx.scalar(0, _dt(ctx, x))), R.multiply(x, slope), x)


@lowering("BitShift")
def _bitshift(ctx, node, x, y):
    """A shift by a count outside [0, bits) is undefined in LLVM (x86 masks the count, so
    ``x << 9`` on int8 gave ``x << 1``; vector and scalar code differ): define it as the
    interpreter does -- 0, or the sign fill for an arithmetic right shift."""
    R = ctx.R
    direction = node.attrs["direction"]
    if direction not in ("LEFT", "RIGHT"):
        raise ctx.fail(f"BitShift direction {direction!r}")
    xt, yt = node.inputs[0].dtype, node.inputs[1].dtype
    bits = xt.itemsize * 8
    ydt = _dt(ctx, y)
    valid = R.less(y, ctx.scalar(bits, ydt))
    if yt.is_signed:
        valid = R.logical_and(R.greater_equal(y, ctx.scalar(0, ydt)), valid)
    valid = ctx.emit(valid)
    ys = ctx.emit(R.where(valid, y, ctx.scalar(0, ydt)))
    if direction == "LEFT":
        return R.where(valid, R.left_shift(x, ys), ctx.scalar(0, _dt(ctx, x)))
    if xt.is_signed:
        fill = R.right_shift(x, ctx.scalar(bits - 1, _dt(ctx, x)))  # -1 for negative x, else 0
    else:
        fill = ctx.scalar(0, _dt(ctx, x))
    return R.where(valid, R.right_shift(x, ys), fill)


def _variadic(fold):
    def fn(ctx, node, *xs):
        return functools.reduce(lambda a, b: ctx.emit(fold(ctx, a, b)), xs)

    return fn


lowering("Max")(_variadic(_extreme2(True)))
lowering("Min")(_variadic(_extreme2(False)))
lowering("Sum")(_variadic(lambda ctx, a, b: ctx.R.add(a, b)))


@lowering("Mean")
def _mean(ctx, node, *xs):
    total = functools.reduce(lambda a, b: ctx.emit(ctx.R.add(a, b)), xs)
    return ctx.R.divide(total, ctx.scalar(len(xs), _dt(ctx, total)))


@lowering("Where")
def _where(ctx, node, cond, x, y):
    return ctx.R.where(cond, x, y)
