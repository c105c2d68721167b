"""Elementwise ops: unary math and activations, broadcasting binary arithmetic, comparison and
logic, Where, Cast. Semantics follow the newest ONNX definition of the op of the same name."""

from __future__ import annotations

from ..schema import InferContext
from ..symbolic import add_dims, div_dims, mul_dims
from ..types import DType, TensorType
from ._common import DTYPE, FLOAT, INT, STRING, A, broadcast_shapes, op, require_float, require_same_dtype, same_float_type, same_type

# -- unary ---------------------------------------------------------------------------------
FLOAT_UNARY = [
    "Exp", "Log", "Sqrt", "Reciprocal", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
    "Asinh", "Acosh", "Atanh", "Tanh", "Sigmoid", "Erf", "Floor", "Ceil", "Round", "Softplus",
    "Softsign", "Mish",
]
ANY_UNARY = ["Abs", "Neg", "Sign", "Relu"]

for _name in FLOAT_UNARY:
    op(_name, ["X"])(same_float_type)
for _name in ANY_UNARY:
    op(_name, ["X"])(same_type)


@op("Identity", ["X"], sym=lambda ctx: [ctx.sym(0)])
def _identity(ctx):
    """Returns its input."""
    return [ctx.type(0)]


@op("Not", ["X"])
def _not(ctx):
    if ctx.dtype(0) is not DType.BOOL:
        raise ctx.fail("input must be bool")
    return [ctx.type(0)]


@op("IsNaN", ["X"])
def _isnan(ctx):
    require_float(ctx, 0)
    return [ctx.type(0).with_dtype(DType.BOOL)]


@op("IsInf", ["X"], attrs={"detect_negative": A(INT, 1), "detect_positive": A(INT, 1)})
def _isinf(ctx):
    require_float(ctx, 0)
    return [ctx.type(0).with_dtype(DType.BOOL)]


# Parameterized activations (alpha/beta defaults as in ONNX).
op("LeakyRelu", ["X"], attrs={"alpha": A(FLOAT, 0.01)})(same_float_type)
op("Elu", ["X"], attrs={"alpha": A(FLOAT, 1.0)})(same_float_type)
op("Celu", ["X"], attrs={"alpha": A(FLOAT, 1.0)})(same_float_type)
op("Selu", ["X"], attrs={"alpha": A(FLOAT, 1.6732632423543772), "gamma": A(FLOAT, 1.0507009873554805)})(same_float_type)
op("HardSigmoid", ["X"], attrs={"alpha": A(FLOAT, 0.2), "beta": A(FLOAT, 0.5)})(same_float_type)
op("HardSwish", ["X"])(same_float_type)
op("ThresholdedRelu", ["X"], attrs={"alpha": A(FLOAT, 1.0)})(same_float_type)
op("Gelu", ["X"], attrs={"approximate": A(STRING, "none", "'none' (erf) or 'tanh'")})(same_float_type)
op("Silu", ["X"], doc="x * sigmoid(x)")(same_float_type)


@op("Dropout", ["data", "ratio?", "training_mode?"], ["output", "mask?"], attrs={"seed": A(INT, 0)})
def _dropout(ctx):
    """Inference-mode dropout: identity (and an all-true mask)."""
    out = [ctx.type(0)]
    if ctx.num_outputs == 2:
        out.append(ctx.type(0).with_dtype(DType.BOOL))
    return out


@op("Clip", ["input", "min?", "max?"])
def _clip(ctx):
    require_same_dtype(ctx, [0, 1, 2])
    return [ctx.type(0)]


_CAST_ATTRS = {
    "saturate": A(INT, 1, "float8 targets: clamp out-of-range values to the largest finite value (else inf/NaN)"),
    "round_mode": A(STRING, "up", "f8e8m0 targets: 'up', 'down' or 'nearest'"),
}


def _check_cast_attrs(ctx: InferContext) -> None:
    if ctx.attr("round_mode") not in ("up", "down", "nearest"):
        raise ctx.fail(f"round_mode must be 'up', 'down' or 'nearest', got {ctx.attr('round_mode')!r}")


def _cast_sym(ctx):
    return [None if ctx.attr("to").is_low_precision else ctx.sym(0)]


@op("Cast", ["input"], attrs={"to": A(DTYPE), **_CAST_ATTRS}, sym=_cast_sym)
def _cast(ctx):
    _check_cast_attrs(ctx)
    return [ctx.type(0).with_dtype(ctx.attr("to"))]


@op("CastLike", ["input", "target_type"], attrs=dict(_CAST_ATTRS))
def _castlike(ctx):
    _check_cast_attrs(ctx)
    return [ctx.type(0).with_dtype(ctx.dtype(1))]


# -- binary --------------------------------------------------------------------------------
def _binary_same(ctx: InferContext) -> list[TensorType]:
    dt = require_same_dtype(ctx, [0, 1])
    return [TensorType(dt, broadcast_shapes(ctx.shape(0), ctx.shape(1)))]


def _elementwise_sym(fn):
    def sym(ctx):
        a, b = ctx.sym(0), ctx.sym(1)
        if a is None or b is None:
            return [None]
        if len(a) == 1:
            a = a * len(b)
        if len(b) == 1:
            b = b * len(a)
        if len(a) != len(b):
            return [None]
        return [tuple(fn(x, y) for x, y in zip(a, b))]

    return sym


def _floordiv(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a // b if (a >= 0) == (b > 0) or a % b == 0 else -(-a // b)  # C truncation, as ONNX
    return div_dims(a, b)


def _sub(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return a if b == 0 else None


op("Add", ["A", "B"], sym=_elementwise_sym(add_dims))(_binary_same)
op("Sub", ["A", "B"], sym=_elementwise_sym(_sub))(_binary_same)
op("Mul", ["A", "B"], sym=_elementwise_sym(lambda a, b: mul_dims([a, b])))(_binary_same)
op("Div", ["A", "B"], sym=_elementwise_sym(_floordiv))(_binary_same)
op("Mod", ["A", "B"], attrs={"fmod": A(INT, 0)})(_binary_same)
op("BitShift", ["X", "Y"], attrs={"direction": A(STRING)})(_binary_same)
for _name in ("BitwiseAnd", "BitwiseOr", "BitwiseXor"):
    op(_name, ["A", "B"])(_binary_same)
op("BitwiseNot", ["X"])(same_type)


@op("Pow", ["X", "Y"])
def _pow(ctx):
    """The result has the base's element type; the exponent may differ."""
    return [TensorType(ctx.dtype(0), broadcast_shapes(ctx.shape(0), ctx.shape(1)))]


@op("PRelu", ["X", "slope"])
def _prelu(ctx):
    require_same_dtype(ctx, [0, 1])
    return [TensorType(ctx.dtype(0), broadcast_shapes(ctx.shape(0), ctx.shape(1)))]


def _compare(ctx):
    require_same_dtype(ctx, [0, 1])
    return [TensorType(DType.BOOL, broadcast_shapes(ctx.shape(0), ctx.shape(1)))]


def _equal_dims(a, b):
    """1/0 when the comparison is decided: symbolic dims are never negative."""
    if a == b and a is not None:
        return 1
    if isinstance(a, int) and isinstance(b, int):
        return 0
    if (isinstance(a, str) and isinstance(b, int) and b < 0) or (isinstance(b, str) and isinstance(a, int) and a < 0):
        return 0
    return None


op("Equal", ["A", "B"], sym=_elementwise_sym(_equal_dims))(_compare)
for _name in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
    op(_name, ["A", "B"])(_compare)


def _logical(ctx):
    for i in (0, 1):
        if ctx.dtype(i) is not DType.BOOL:
            raise ctx.fail("inputs must be bool")
    return [TensorType(DType.BOOL, broadcast_shapes(ctx.shape(0), ctx.shape(1)))]


for _name in ("And", "Or", "Xor"):
    op(_name, ["A", "B"])(_logical)


def _variadic(ctx):
    dt = require_same_dtype(ctx, range(len(ctx)))
    return [TensorType(dt, broadcast_shapes(*(ctx.shape(i) for i in range(len(ctx)))))]


for _name in ("Max", "Min", "Sum", "Mean"):
    op(_name, ["data_0*"])(_variadic)


def _where_sym(ctx):
    c, x, y = ctx.sym(0), ctx.sym(1), ctx.sym(2)
    if c is None or x is None or y is None or any(not isinstance(v, int) for v in c):
        return [None]
    n = max(len(c), len(x), len(y))
    c, x, y = (t * n if len(t) == 1 else t for t in (c, x, y))
    if not len(c) == len(x) == len(y) == n:
        return [None]
    return [tuple(a if k else b for k, a, b in zip(c, x, y))]


@op("Where", ["condition", "X", "Y"], sym=_where_sym)
def _where(ctx):
    if ctx.dtype(0) is not DType.BOOL:
        raise ctx.fail("condition must be bool")
    dt = require_same_dtype(ctx, [1, 2])
    return [TensorType(dt, broadcast_shapes(ctx.shape(0), ctx.shape(1), ctx.shape(2)))]
