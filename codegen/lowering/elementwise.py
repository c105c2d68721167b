"""Lowerings of the elementwise ops (ir/ops/elementwise.py): unary math and activations,
broadcasting arithmetic, comparison and logic, Where, Cast."""

from __future__ import annotations

import functools

from ...ir import DType
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


@lowering("Relu")
def _relu(ctx, node, x):
    if _unsigned(node):
        return x
    return ctx.R.maximum(x, ctx.scalar(0, _dt(ctx, x)))


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
    return y


# -- casts ---------------------------------------------------------------------------------------
def cast(ctx, x, src: DType, dst: DType):
    R = ctx.R
    if dst is DType.BOOL:
        if src is DType.BOOL:
            return x
        return R.not_equal(x, ctx.scalar(0, TVM_DTYPE[src]))
    if src is dst:
        return x
    if src.is_float and dst.is_int and dst.itemsize < 8:
        # ONNX (and the interpreter): truncate, then wrap through int64 for out-of-range values.
        return R.astype(R.astype(x, "int64"), TVM_DTYPE[dst])
    return R.astype(x, TVM_DTYPE[dst])


@lowering("Cast")
def _cast(ctx, node, x):
    return cast(ctx, x, node.inputs[0].dtype, node.attrs["to"])


@lowering("CastLike")
def _cast_like(ctx, node, x, target):
    return cast(ctx, x, node.inputs[0].dtype, node.inputs[1].dtype)


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


@lowering("Div")
def _div(ctx, node, a, b):
    return ctx.R.divide(a, b)  # integer division truncates (C semantics), as ONNX


@lowering("Mod")
def _mod(ctx, node, a, b):
    R = ctx.R
    if node.attrs["fmod"]:
        return R.mod(a, b)  # sign of the dividend
    if node.inputs[0].dtype.is_float:
        # Python/numpy remainder from the truncated one (exact, and right for infinities):
        # shift by b when the signs differ; a zero result takes the divisor's sign.
        dt = _dt(ctx, a)
        zero = ctx.scalar(0, dt)
        r = ctx.emit(R.mod(a, b))
        fix = R.logical_and(R.not_equal(r, zero), R.logical_xor(R.less(r, zero), R.less(b, zero)))
        r = ctx.emit(R.where(fix, R.add(r, b), r))
        signed_zero = R.where(R.less(b, zero), ctx.scalar(-0.0, dt), zero)
        return R.where(R.equal(r, zero), signed_zero, r)
    return R.floor_mod(a, b)


@lowering("Pow")
def _pow(ctx, node, x, y):
    R = ctx.R
    dt = _dt(ctx, x)
    if node.inputs[0].dtype.is_int:
        # Integer power: compute in float64 and truncate back (the interpreter's numpy result).
        xf = R.astype(x, "float64")
        yf = R.astype(y, "float64")
        return R.astype(R.power(xf, yf), dt)
    if _dt(ctx, y) != dt:
        y = R.astype(y, dt)
    return R.power(x, y)


@lowering("PRelu")
def _prelu(ctx, node, x, slope):
    R = ctx.R
    return R.where(R.less(x, ctx.scalar(0, _dt(ctx, x))), R.multiply(x, slope), x)


@lowering("BitShift")
def _bitshift(ctx, node, x, y):
    R = ctx.R
    direction = node.attrs["direction"]
    if direction == "LEFT":
        return R.left_shift(x, y)
    if direction == "RIGHT":
        return R.right_shift(x, y)
    raise ctx.fail(f"BitShift direction {direction!r}")


def _variadic(fold):
    def fn(ctx, node, *xs):
        return functools.reduce(lambda a, b: ctx.emit(fold(ctx, a, b)), xs)

    return fn


lowering("Max")(_variadic(lambda ctx, a, b: ctx.R.maximum(a, b)))
lowering("Min")(_variadic(lambda ctx, a, b: ctx.R.minimum(a, b)))
lowering("Sum")(_variadic(lambda ctx, a, b: ctx.R.add(a, b)))


@lowering("Mean")
def _mean(ctx, node, *xs):
    total = functools.reduce(lambda a, b: ctx.emit(ctx.R.add(a, b)), xs)
    return ctx.R.divide(total, ctx.scalar(len(xs), _dt(ctx, total)))


@lowering("Where")
def _where(ctx, node, cond, x, y):
    return ctx.R.where(cond, x, y)
