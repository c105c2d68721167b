"""Handlers of the elementwise ops: arithmetic, unary math and activations, comparison and
logic, ``where`` / ``masked_fill``.

Python scalars in the arguments become constants of the dtype torch computes in (the result
dtype in the node's metadata), and tensor inputs are cast to it where torch would promote them.
"""

from __future__ import annotations

import torch

from ...ir import DType, UnsupportedOpError, Value
from .dtypes import torch_dtype
from .importer import Importer, fake_of, out_dtype
from .registry import handles, overload


def _binary(m: Importer, node, op: str, x, y, dtype: DType | None = None) -> Value:
    dt = dtype or out_dtype(node)
    return m.emit(op, m.operand(x, dt), m.operand(y, dt))


# -- arithmetic --------------------------------------------------------------------------------
def _scaled(m: Importer, y: Value, alpha, dt: DType) -> Value:
    alpha = m.lit(alpha)
    if alpha is None or (not isinstance(alpha, torch.SymInt) and alpha == 1):
        return y
    return m.emit("Mul", y, m.operand(alpha, dt) if not isinstance(alpha, (int, float)) else m.scalar(alpha, dt))


def _with_alpha(op: str, reverse: bool = False):
    """``self op alpha * other`` (``other op alpha * self`` when ``reverse``: rsub)."""

    def h(m: Importer, node, a):
        dt = out_dtype(node)
        x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
        if reverse:
            x, y = y, x
        return m.emit(op, x, _scaled(m, y, a.get("alpha", 1), dt))

    return h


handles("add.Tensor", "add.Scalar")(_with_alpha("Add"))
handles("sub.Tensor", "sub.Scalar")(_with_alpha("Sub"))
handles("rsub.Tensor", "rsub.Scalar")(_with_alpha("Sub", reverse=True))


@handles("mul.Tensor", "mul.Scalar")
def _mul(m: Importer, node, a):
    if out_dtype(node) is DType.BOOL:
        return _binary(m, node, "And", a["self"], a["other"])
    return _binary(m, node, "Mul", a["self"], a["other"])


def _trunc(m: Importer, x: Value) -> Value:
    return m.emit("Mul", m.emit("Sign", x), m.emit("Floor", m.emit("Abs", x)))


def _floor_div(m: Importer, x: Value, y: Value) -> Value:
    if x.dtype.is_float:
        return m.emit("Floor", m.emit("Div", x, y))
    # integers: (x - python_mod(x, y)) / y is exact, so truncating division gives the floor
    return m.emit("Div", m.emit("Sub", x, m.emit("Mod", x, y, fmod=0)), y)


@handles("div.Tensor", "div.Scalar", "div.Tensor_mode", "div.Scalar_mode", "true_divide.Tensor", "floor_divide.default",
         "floor_divide.Scalar")
def _div(m: Importer, node, a):
    mode = a.get("rounding_mode")
    if node.target in (overload("floor_divide.default"), overload("floor_divide.Scalar")):
        mode = "floor"
    dt = out_dtype(node)
    x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
    if mode is None:
        return m.emit("Div", x, y)
    if mode == "trunc":
        q = m.emit("Div", x, y)
        return _trunc(m, q) if dt.is_float else q
    if mode == "floor":
        return _floor_div(m, x, y)
    raise UnsupportedOpError(f"torch frontend: div rounding mode {mode!r} ({node.name})")


@handles("remainder.Tensor", "remainder.Scalar", "fmod.Tensor", "fmod.Scalar")
def _remainder(m: Importer, node, a):
    dt = out_dtype(node)
    x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
    if node.target.__name__.startswith("fmod"):
        return m.emit("Mod", x, y, fmod=1)
    if dt.is_float:
        return m.emit("Sub", x, m.emit("Mul", m.emit("Floor", m.emit("Div", x, y)), y))
    return m.emit("Mod", x, y, fmod=0)


@handles("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar")
def _pow(m: Importer, node, a):
    dt = out_dtype(node)
    base = m.operand(a["self"], dt)
    exp = a["exponent"]
    e = m.lit(exp) if not m.is_tensor(exp) else None
    if isinstance(e, (int, float)) and not isinstance(e, bool):
        if e == 1:
            return base
        return m.emit("Pow", base, m.scalar(e, dt))
    return m.emit("Pow", base, m.operand(exp, dt))


# -- unary -------------------------------------------------------------------------------------
def _unary(op: str, float_only: bool = True):
    def h(m: Importer, node, a):
        x = m.v(a["self"])
        dt = out_dtype(node)
        return m.emit(op, m.cast(x, dt) if float_only or x.dtype != dt else x)

    return h


for _spec, _op in [
    ("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt"), ("reciprocal", "Reciprocal"), ("sin", "Sin"), ("cos", "Cos"),
    ("tan", "Tan"), ("asin", "Asin"), ("acos", "Acos"), ("atan", "Atan"), ("sinh", "Sinh"), ("cosh", "Cosh"),
    ("tanh", "Tanh"), ("sigmoid", "Sigmoid"), ("erf", "Erf"), ("silu", "Silu"), ("mish", "Mish"),
    ("hardswish", "HardSwish"), ("asinh", "Asinh"), ("acosh", "Acosh"), ("atanh", "Atanh"),
]:
    handles(_spec)(_unary(_op))
for _spec, _op in [("neg", "Neg"), ("abs", "Abs"), ("relu", "Relu"), ("sign", "Sign")]:
    handles(_spec)(_unary(_op, float_only=False))


@handles("floor", "ceil", "round", "trunc")
def _rounding(m: Importer, node, a):
    x = m.v(a["self"])
    if not x.dtype.is_float:
        return x
    name = node.target.__name__.split(".")[0]
    if name == "trunc":
        return _trunc(m, x)
    return m.emit({"floor": "Floor", "ceil": "Ceil", "round": "Round"}[name], x)


@handles("rsqrt")
def _rsqrt(m: Importer, node, a):
    return m.emit("Reciprocal", m.emit("Sqrt", m.cast(m.v(a["self"]), out_dtype(node))))


@handles("log1p")
def _log1p(m: Importer, node, a):
    x = m.cast(m.v(a["self"]), out_dtype(node))
    return m.emit("Log", m.emit("Add", x, m.scalar(1, x.dtype)))


@handles("expm1")
def _expm1(m: Importer, node, a):
    x = m.cast(m.v(a["self"]), out_dtype(node))
    return m.emit("Sub", m.emit("Exp", x), m.scalar(1, x.dtype))


@handles("square")
def _square(m: Importer, node, a):
    x = m.cast(m.v(a["self"]), out_dtype(node))
    return m.emit("Mul", x, x)


@handles("gelu")
def _gelu(m: Importer, node, a):
    return m.emit("Gelu", m.v(a["self"]), approximate=a.get("approximate") or "none")


@handles("leaky_relu")
def _leaky_relu(m: Importer, node, a):
    return m.emit("LeakyRelu", m.v(a["self"]), alpha=float(a.get("negative_slope", 0.01)))


@handles("elu", "selu", "celu")
def _elu(m: Importer, node, a):
    x = m.v(a["self"])
    name = node.target.__name__.split(".")[0]
    if name == "selu":
        return m.emit("Selu", x)
    if name == "celu":
        return m.emit("Celu", x, alpha=float(a.get("alpha", 1.0)))
    alpha, scale, in_scale = (float(a.get(k, 1.0)) for k in ("alpha", "scale", "input_scale"))
    if scale == 1 and in_scale == 1:
        return m.emit("Elu", x, alpha=alpha)
    # scale * (max(0, x) + min(0, alpha * (exp(x * input_scale) - 1)))
    dt = x.dtype
    neg = m.emit("Mul", m.emit("Sub", m.emit("Exp", m.emit("Mul", x, m.scalar(in_scale, dt))), m.scalar(1, dt)), m.scalar(alpha * scale, dt))
    return m.emit("Where", m.emit("Greater", x, m.scalar(0, dt)), m.emit("Mul", x, m.scalar(scale, dt)), neg)


@handles("hardsigmoid")
def _hardsigmoid(m: Importer, node, a):
    return m.emit("HardSigmoid", m.v(a["self"]), alpha=1 / 6, beta=0.5)


@handles("softplus")
def _softplus(m: Importer, node, a):
    x = m.v(a["self"])
    beta = float(a.get("beta", 1))
    if beta == 1:
        return m.emit("Softplus", x)
    b = m.scalar(beta, x.dtype)
    return m.emit("Div", m.emit("Softplus", m.emit("Mul", x, b)), b)


# -- clamping ----------------------------------------------------------------------------------
@handles("hardtanh", "relu6")
def _hardtanh(m: Importer, node, a):
    x = m.v(a["self"])
    lo, hi = (0.0, 6.0) if node.target.__name__.startswith("relu6") else (float(a.get("min_val", -1)), float(a.get("max_val", 1)))
    return m.emit("Clip", x, m.scalar(lo, x.dtype), m.scalar(hi, x.dtype))


@handles("clamp", "clamp.Tensor", "clamp_min", "clamp_max", "clamp_min.Tensor", "clamp_max.Tensor")
def _clamp(m: Importer, node, a):
    dt = out_dtype(node)
    x = m.operand(a["self"], dt)
    name = node.target.__name__
    lo = a.get("min") if not name.startswith("clamp_max") else None
    hi = a.get("max") if not name.startswith("clamp_min") else None
    lo = m.operand(lo, dt) if lo is not None else None
    hi = m.operand(hi, dt) if hi is not None else None
    if lo is not None and lo.type.rank != 0 or hi is not None and hi.type.rank != 0:  # tensor bounds broadcast
        if lo is not None:
            x = m.emit("Max", x, lo)
        if hi is not None:
            x = m.emit("Min", x, hi)
        return x
    return m.emit("Clip", x, lo, hi)


@handles("maximum", "max.other", "fmax")
def _maximum(m: Importer, node, a):
    return _binary(m, node, "Max", a["self"], a["other"])


@handles("minimum", "min.other", "fmin")
def _minimum(m: Importer, node, a):
    return _binary(m, node, "Min", a["self"], a["other"])


# -- comparison and logic ----------------------------------------------------------------------
def _promoted(a, b) -> DType:
    """The dtype torch compares ``a`` and ``b`` in (its type promotion of the two)."""

    def proxy(x):
        v = fake_of(x)
        if isinstance(v, torch.Tensor):
            return torch.empty((0,) if v.dim() else (), dtype=v.dtype)
        if isinstance(v, torch.SymInt):
            return 1
        if isinstance(v, torch.SymFloat):
            return 1.0
        if isinstance(v, torch.SymBool):
            return True
        return v

    pa, pb = proxy(a), proxy(b)
    if not isinstance(pa, torch.Tensor) and not isinstance(pb, torch.Tensor):
        pa = torch.tensor(pa)
    return torch_dtype(torch.result_type(pa, pb))


_COMPARE = {"eq": "Equal", "ne": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


@handles(*(f"{k}.{o}" for k in _COMPARE for o in ("Tensor", "Scalar")))
def _compare(m: Importer, node, a):
    name = node.target.__name__.split(".")[0]
    dt = _promoted(a["self"], a["other"])
    y = _binary(m, node, _COMPARE[name], a["self"], a["other"], dt)
    return m.emit("Not", y) if name == "ne" else y


def _logical(op_bool: str, op_int: str | None):
    """``op_bool`` on bools; ``op_int`` (bitwise) on integers when given."""

    def h(m: Importer, node, a):
        dt = out_dtype(node)
        if dt is DType.BOOL or op_int is None:
            return m.emit(op_bool, m.operand(a["self"], DType.BOOL), m.operand(a["other"], DType.BOOL))
        return _binary(m, node, op_int, a["self"], a["other"])

    return h


handles("__and__.Tensor", "__and__.Scalar", "bitwise_and.Tensor", "bitwise_and.Scalar")(_logical("And", "BitwiseAnd"))
handles("__or__.Tensor", "__or__.Scalar", "bitwise_or.Tensor", "bitwise_or.Scalar")(_logical("Or", "BitwiseOr"))
handles("__xor__.Tensor", "__xor__.Scalar", "bitwise_xor.Tensor", "bitwise_xor.Scalar")(_logical("Xor", "BitwiseXor"))
handles("logical_and")(_logical("And", None))
handles("logical_or")(_logical("Or", None))
handles("logical_xor")(_logical("Xor", None))


@handles("logical_not", "bitwise_not")
def _not(m: Importer, node, a):
    x = m.v(a["self"])
    if node.target.__name__.startswith("bitwise") and x.dtype is not DType.BOOL:
        return m.emit("BitwiseNot", x)
    return m.emit("Not", m.cast(x, DType.BOOL))


@handles("isnan")
def _isnan(m: Importer, node, a):
    return m.emit("IsNaN", m.v(a["self"]))


@handles("isinf")
def _isinf(m: Importer, node, a):
    return m.emit("IsInf", m.v(a["self"]))


@handles("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(m: Importer, node, a):
    dt = out_dtype(node)
    cond = m.cast(m.v(a["condition"]), DType.BOOL)
    return m.emit("Where", cond, m.operand(a["self"], dt), m.operand(a["other"], dt))


@handles("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(m: Importer, node, a):
    dt = out_dtype(node)
    x = m.operand(a["self"], dt)
    mask = m.cast(m.v(a["mask"]), DType.BOOL)
    return m.emit("Where", mask, m.operand(a["value"], dt), x)
