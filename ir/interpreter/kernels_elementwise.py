"""Kernels of the elementwise ops (ir/ops/elementwise.py): unary math and activations,
broadcasting arithmetic, comparison and logic, Where, Cast.

Broadcasting is numpy's, which torch shares. Integer results wrap around like C (the engine
narrows and masks every output to its declared type)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import checks
from ..errors import IRError
from ..types import DType
from .engine import COMPUTE_DTYPE, input_dtype, kernel
from . import lowp

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# -- unary -------------------------------------------------------------------------------------
_FLOAT_UNARY = {
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, as ONNX
    "Softplus": F.softplus,  # log(1 + exp(x)); returns x above 20, where they agree in float
    "Softsign": F.softsign,
    "Mish": F.mish,
    "Silu": F.silu,
}


def _unary(fn):
    def k(node, x):
        return fn(x)

    return k


for _name, _fn in _FLOAT_UNARY.items():
    kernel(_name)(_unary(_fn))


def _unsigned(node, i: int = 0) -> bool:
    dt = input_dtype(node, i)
    return dt.is_int and not dt.is_signed


@kernel("Abs")
def _abs(node, x):
    return x if _unsigned(node) or x.dtype == torch.bool else torch.abs(x)


@kernel("Neg")
def _neg(node, x):
    return torch.neg(x)


@kernel("Sign")
def _sign(node, x):
    if _unsigned(node):
        return (x != 0).to(x.dtype)
    return torch.sign(x)


@kernel("Relu")
def _relu(node, x):
    if _unsigned(node):
        return x
    if x.dtype.is_floating_point:
        return torch.relu(x)
    return torch.clamp_min(x, 0)


@kernel("Identity")
def _identity(node, x):
    return x


@kernel("Not")
def _not(node, x):
    return torch.logical_not(x)


@kernel("IsNaN")
def _isnan(node, x):
    return torch.isnan(x)


@kernel("IsInf")
def _isinf(node, x):
    neg, pos = node.attrs["detect_negative"], node.attrs["detect_positive"]
    if neg and pos:
        return torch.isinf(x)
    if neg:
        return torch.isneginf(x)
    if pos:
        return torch.isposinf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@kernel("LeakyRelu")
def _leaky_relu(node, x):
    return F.leaky_relu(x, node.attrs["alpha"])


@kernel("Elu")
def _elu(node, x):
    return F.elu(x, node.attrs["alpha"])


@kernel("Celu")
def _celu(node, x):
    return F.celu(x, node.attrs["alpha"])


@kernel("Selu")
def _selu(node, x):
    alpha, gamma = node.attrs["alpha"], node.attrs["gamma"]
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@kernel("HardSigmoid")
def _hard_sigmoid(node, x):
    return torch.clamp(x * node.attrs["alpha"] + node.attrs["beta"], 0, 1)


@kernel("HardSwish")
def _hard_swish(node, x):
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0, 1)


@kernel("ThresholdedRelu")
def _thresholded_relu(node, x):
    return torch.where(x > node.attrs["alpha"], x, torch.zeros((), dtype=x.dtype))


@kernel("Gelu")
def _gelu(node, x):
    approx = node.attrs["approximate"]
    if approx not in ("none", "tanh"):
        raise IRError(f"node {node.name} (Gelu): approximate must be 'none' or 'tanh', got {approx!r}")
    return F.gelu(x, approximate=approx)


@kernel("Dropout")
def _dropout(node, data, ratio=None, training_mode=None):
    """Inference mode: identity, and an all-true mask."""
    if len(node.outputs) > 1:
        return data, torch.ones(data.shape, dtype=torch.bool)
    return data


@kernel("Clip")
def _clip(node, x, lo=None, hi=None):
    if lo is None and hi is None:
        return x
    if input_dtype(node, 0) is DType.UINT64:
        x, lo, hi = (None if t is None else _u64_order(t) for t in (x, lo, hi))
        return _u64_order(torch.clamp(x, lo, hi))
    # As ONNX (and torch): when min > max every value becomes max.
    return torch.clamp(x, lo, hi)


# -- casts -------------------------------------------------------------------------------------
def cast(x: torch.Tensor, src: DType, dst: DType, saturate: bool = True, round_mode: str = "up") -> torch.Tensor:
    """ONNX Cast between compute representations: float -> int truncates toward zero (and
    wraps when out of range), anything -> bool is ``x != 0``. Low-precision types (fp8, fp4,
    e8m0, sub-byte ints; ``saturate``/``round_mode`` apply to them) follow ``lowp``."""
    src = lowp.wide_dtype(src)  # a low-precision source is exact in its compute representation
    if dst.is_low_precision and dst is not src:
        return lowp.cast_to_lowp(x, src, dst, saturate, round_mode)
    if dst is DType.BOOL:
        return x != 0
    if src is DType.UINT64 and dst.is_float:
        f = x.to(torch.float64)
        return torch.where(x < 0, f + 2.0**64, f).to(COMPUTE_DTYPE[dst])
    if src.is_float and dst.is_int:
        # Through int64 so that out-of-range values wrap like numpy instead of hitting
        # undefined float -> narrow-int conversions; the engine narrows and masks.
        return torch.trunc(x).to(torch.int64)
    return x.to(COMPUTE_DTYPE[dst])


@kernel("Cast")
def _cast(node, x):
    return cast(x, input_dtype(node, 0), node.attrs["to"], bool(node.attrs["saturate"]), node.attrs["round_mode"])


@kernel("CastLike")
def _cast_like(node, x, target):
    return cast(x, input_dtype(node, 0), input_dtype(node, 1), bool(node.attrs["saturate"]), node.attrs["round_mode"])


# -- binary ------------------------------------------------------------------------------------
@kernel("Add")
def _add(node, a, b):
    return torch.add(a, b)


@kernel("Sub")
def _sub(node, a, b):
    return torch.sub(a, b)


@kernel("Mul")
def _mul(node, a, b):
    return torch.mul(a, b)


def _int_div(node, a, b, fn, quotient: bool):
    """``fn(a, b)`` for integers under the rules of ``ir/checks.py`` (as the compiled module):
    a zero divisor is an error naming the node; the divisor -1 becomes 1 (``INT_MIN / -1`` traps:
    SIGFPE, in torch too), a quotient then negated back (wrapping at INT_MIN)."""
    if bool((b == 0).any()):
        raise checks.invalid(node, checks.DIVISION_BY_ZERO)
    if not input_dtype(node, 1).is_signed:
        return fn(a, b)
    twice = (b == -1).to(b.dtype) * 2
    r = fn(a, b + twice)
    return r * (1 - twice) if quotient else r


@kernel("Div")
def _div(node, a, b):
    if a.dtype.is_floating_point:
        return torch.div(a, b)
    return _int_div(node, a, b, lambda x, y: torch.div(x, y, rounding_mode="trunc"), True)  # C semantics, as ONNX


@kernel("Mod")
def _mod(node, a, b):
    if not a.dtype.is_floating_point:
        return _int_div(node, a, b, torch.fmod if node.attrs["fmod"] else torch.remainder, False)
    if node.attrs["fmod"]:
        return torch.fmod(a, b)  # sign of the dividend
    r = torch.remainder(a, b)  # sign of the divisor
    if r.dtype.is_floating_point:
        # ONNX: a zero result takes the sign of the divisor (torch keeps the dividend's).
        r = torch.where(r == 0, torch.copysign(r, b), r)
    return r


@kernel("Pow")
def _pow(node, x, y):
    # torch promotes mixed types like numpy; the engine casts back to the base's type.
    return torch.pow(x, y)


@kernel("PRelu")
def _prelu(node, x, slope):
    return torch.where(x < 0, x * slope, x)


_BITS = {DType.INT8: 8, DType.INT16: 16, DType.INT32: 32, DType.INT64: 64,
         DType.UINT8: 8, DType.UINT16: 16, DType.UINT32: 32, DType.UINT64: 64}


@kernel("BitShift")
def _bitshift(node, x, y):
    dt = input_dtype(node, 0)
    if dt not in _BITS:
        raise IRError(f"node {node.name} (BitShift): integer inputs required, got {dt.value}")
    direction = node.attrs["direction"]
    bits = _BITS[dt]
    valid = (y >= 0) & (y < bits)  # a u64 amount >= 2**63 reads negative: also invalid
    ys = torch.where(valid, y, torch.zeros((), dtype=y.dtype))
    zero = torch.zeros((), dtype=x.dtype)
    if direction == "LEFT":
        return torch.where(valid, x << ys, zero)
    if direction != "RIGHT":
        raise IRError(f"node {node.name} (BitShift): direction must be LEFT or RIGHT, got {direction!r}")
    if dt is DType.UINT64:
        # Logical shift of the int64 bit pattern.
        shifted = ((x >> 1) & _INT64_MAX) >> torch.clamp_min(ys - 1, 0)
        r = torch.where(ys == 0, x, shifted)
    else:
        r = x >> ys  # arithmetic for signed types; unsigned values are non-negative here
    fill = torch.where(x < 0, torch.full((), -1, dtype=x.dtype), zero) if dt.is_signed else zero
    return torch.where(valid, r, fill)


def _direct(fn):
    """A kernel that is exactly one torch function of the node's inputs."""
    return lambda node, *xs: fn(*xs)


for _op, _fn in (("BitwiseAnd", torch.bitwise_and), ("BitwiseOr", torch.bitwise_or),
                 ("BitwiseXor", torch.bitwise_xor), ("BitwiseNot", torch.bitwise_not)):
    kernel(_op)(_direct(_fn))


# -- comparison and logic ----------------------------------------------------------------------
def _u64_order(t: torch.Tensor) -> torch.Tensor:
    """Flip the sign bit: maps the u64 bit pattern held in int64 to an int64 with the same
    order (and back: the map is its own inverse)."""
    return t ^ _INT64_MIN


def _compare(fn):
    def k(node, a, b):
        if input_dtype(node, 0) is DType.UINT64:
            a, b = _u64_order(a), _u64_order(b)
        return fn(a, b)

    return k


kernel("Equal")(_compare(torch.eq))
kernel("Less")(_compare(torch.lt))
kernel("LessOrEqual")(_compare(torch.le))
kernel("Greater")(_compare(torch.gt))
kernel("GreaterOrEqual")(_compare(torch.ge))


for _op, _fn in (("And", torch.logical_and), ("Or", torch.logical_or), ("Xor", torch.logical_xor)):
    kernel(_op)(_direct(_fn))


def _variadic_extreme(fn):
    def k(node, *xs):
        if input_dtype(node, 0) is DType.UINT64:
            return _u64_order(functools.reduce(fn, [_u64_order(x) for x in xs]))
        return functools.reduce(fn, xs)  # NaN propagates, as ONNX

    return k


kernel("Max")(_variadic_extreme(torch.maximum))
kernel("Min")(_variadic_extreme(torch.minimum))


@kernel("Sum")
def _sum(node, *xs):
    return functools.reduce(torch.add, xs)


@kernel("Mean")
def _mean(node, *xs):
    total = functools.reduce(torch.add, xs)
    if total.dtype.is_floating_point:
        return total / len(xs)
    return torch.div(total, len(xs), rounding_mode="trunc")


@kernel("Where")
def _where(node, cond, x, y):
    return torch.where(cond, x, y)

