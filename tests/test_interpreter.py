"""The reference interpreter: kernels of every op family against numpy / hand-computed values and
ONNX's own numpy reference (``onnx.reference``), input checking, dtype plumbing, gradients."""

from __future__ import annotations

import math
import weakref

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from optc.ir import DType, Graph, IRError, TensorType, UnsupportedOpError, all_schemas
from optc.ir.interpreter import Interpreter, registered_ops, run
from optc.ir.interpreter import engine

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Every test draws the same numbers however tests are ordered or distributed."""
    global RNG
    RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


def run_op(op, inputs, attrs=None, num_outputs=1, const_from=1):
    """Run a one-node graph. Inputs from index ``const_from`` on become constants (so type
    inference sees them, and the engine checks the inferred types); None is an absent input."""
    g = Graph()
    vals, feed = [], {}
    for i, a in enumerate(inputs):
        if a is None:
            vals.append(None)
            continue
        a = np.asarray(a)
        if i >= const_from:
            vals.append(g.add_constant(a))
        else:
            v = g.add_input(f"in{i}", TensorType.of(a))
            feed[v.name] = a
            vals.append(v)
    node = g.add_node(op, vals, attrs or {}, num_outputs=num_outputs)
    g.set_outputs(node.outputs)
    out = run(g, feed)
    res = [out[v.name] for v in node.outputs]
    for v, r in zip(node.outputs, res):
        assert r.dtype == v.dtype.numpy, (op, r.dtype, v.dtype)
    return res[0] if num_outputs == 1 else res


_ONNX_TYPE = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float64): onnx.TensorProto.DOUBLE,
              np.dtype(np.int64): onnx.TensorProto.INT64, np.dtype(np.int32): onnx.TensorProto.INT32,
              np.dtype(np.bool_): onnx.TensorProto.BOOL, np.dtype(np.uint8): onnx.TensorProto.UINT8}


def onnx_ref(op, inputs, attrs=None, num_outputs=1):
    """ONNX's numpy reference implementation of one node."""
    names = [f"i{k}" if a is not None else "" for k, a in enumerate(inputs)]
    outs = [f"o{k}" for k in range(num_outputs)]
    node = oh.make_node(op, names, outs, **(attrs or {}))
    ins = [oh.make_tensor_value_info(n, _ONNX_TYPE[np.asarray(a).dtype], None) for n, a in zip(names, inputs) if a is not None]
    graph = oh.make_graph([node], "g", ins, [oh.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outs])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 22)])
    res = ReferenceEvaluator(model).run(None, {n: a for n, a in zip(names, inputs) if a is not None})
    return res[0] if num_outputs == 1 else res


def close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=rtol, atol=atol)


# ==============================================================================================
# Coverage
# ==============================================================================================
def test_every_registered_schema_has_a_kernel():
    schemas = set(all_schemas())
    assert len(schemas) >= 132
    assert schemas - registered_ops() == set()
    assert registered_ops() - schemas == set()


# ==============================================================================================
# Elementwise
# ==============================================================================================
_erf = np.vectorize(math.erf)
FLOAT_UNARY = [
    ("Exp", np.exp, (-2, 2)), ("Log", np.log, (0.1, 3)), ("Sqrt", np.sqrt, (0, 4)),
    ("Reciprocal", lambda x: 1 / x, (0.5, 3)), ("Sin", np.sin, (-3, 3)), ("Cos", np.cos, (-3, 3)),
    ("Tan", np.tan, (-1, 1)), ("Asin", np.arcsin, (-0.9, 0.9)), ("Acos", np.arccos, (-0.9, 0.9)),
    ("Atan", np.arctan, (-3, 3)), ("Sinh", np.sinh, (-2, 2)), ("Cosh", np.cosh, (-2, 2)),
    ("Asinh", np.arcsinh, (-3, 3)), ("Acosh", np.arccosh, (1.1, 4)), ("Atanh", np.arctanh, (-0.9, 0.9)),
    ("Tanh", np.tanh, (-3, 3)), ("Sigmoid", lambda x: 1 / (1 + np.exp(-x)), (-5, 5)), ("Erf", _erf, (-2, 2)),
    ("Floor", np.floor, (-3, 3)), ("Ceil", np.ceil, (-3, 3)), ("Softplus", lambda x: np.log1p(np.exp(x)), (-5, 5)),
    ("Softsign", lambda x: x / (1 + np.abs(x)), (-5, 5)), ("Mish", lambda x: x * np.tanh(np.log1p(np.exp(x))), (-5, 5)),
    ("Silu", lambda x: x / (1 + np.exp(-x)), (-5, 5)), ("Abs", np.abs, (-3, 3)), ("Neg", np.negative, (-3, 3)),
    ("Sign", np.sign, (-3, 3)), ("Relu", lambda x: np.maximum(x, 0), (-3, 3)), ("Identity", lambda x: x, (-3, 3)),
]


@pytest.mark.parametrize("op,ref,domain", FLOAT_UNARY, ids=[c[0] for c in FLOAT_UNARY])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_unary(op, ref, domain, dtype):
    x = rand(3, 5, dtype=dtype, lo=domain[0], hi=domain[1])
    close(run_op(op, [x]), ref(x.astype(np.float64)), rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_float16_and_bfloat16_unary():
    x = rand(4, 4, lo=-3, hi=3)
    close(run_op("Tanh", [x.astype(np.float16)]), np.tanh(x), rtol=2e-3, atol=2e-3)
    xb = x.astype(ml_dtypes.bfloat16)
    out = run_op("Sigmoid", [xb])
    assert out.dtype == ml_dtypes.bfloat16
    close(out, 1 / (1 + np.exp(-x)), rtol=1e-2, atol=1e-2)


ACTIVATIONS = [
    ("LeakyRelu", {"alpha": 0.1}, lambda x: np.where(x >= 0, x, 0.1 * x)),
    ("Elu", {"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ("Celu", {"alpha": 2.0}, lambda x: np.maximum(0, x) + np.minimum(0, 2.0 * (np.exp(x / 2.0) - 1))),
    ("Selu", {"alpha": 2.0, "gamma": 3.0}, lambda x: np.where(x > 0, 3.0 * x, 3.0 * (2.0 * np.exp(x) - 2.0))),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
    ("HardSwish", {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    ("ThresholdedRelu", {"alpha": 0.5}, lambda x: np.where(x > 0.5, x, 0)),
    ("Gelu", {}, lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))),
    ("Gelu", {"approximate": "tanh"}, lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
]


@pytest.mark.parametrize("op,attrs,ref", ACTIVATIONS, ids=[f"{c[0]}-{c[1]}" for c in ACTIVATIONS])
def test_activations(op, attrs, ref):
    x = rand(4, 6, lo=-4, hi=4)
    close(run_op(op, [x], attrs), ref(x.astype(np.float64)))


def test_round_is_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, 2.6, -2.6], np.float32)
    np.testing.assert_array_equal(run_op("Round", [x]), [0, 2, 2, -0.0, -2, -2, 2, 3, -3])


def test_integer_unary():
    x = np.array([-3, 0, 5, -128], np.int8)
    np.testing.assert_array_equal(run_op("Abs", [x]), np.abs(x))
    np.testing.assert_array_equal(run_op("Relu", [x]), [0, 0, 5, 0])
    np.testing.assert_array_equal(run_op("Sign", [x]), [-1, 0, 1, -1])
    np.testing.assert_array_equal(run_op("Neg", [np.array([1, 0], np.uint8)]), [255, 0])


def test_int_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 6], np.int32)
    b = np.array([2, 2, -2, -2, 3], np.int32)
    np.testing.assert_array_equal(run_op("Div", [a, b]), [3, -3, -3, 3, 2])
    close(run_op("Div", [a.astype(np.float32), b.astype(np.float32)]), a / b)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32])
def test_mod_sign(fmod, dtype):
    a = np.array([7, -7, 7, -7, 5, -4], dtype)
    b = np.array([3, 3, -3, -3, 5, 3], dtype)
    want = np.fmod(a, b) if fmod else np.mod(a, b)
    np.testing.assert_array_equal(run_op("Mod", [a, b], {"fmod": fmod}), want)


def test_float_mod_zero_takes_divisor_sign():
    out = run_op("Mod", [np.array([0.0, -0.0, 6.0], np.float32), np.array([-3.0, 3.0, -3.0], np.float32)])
    np.testing.assert_array_equal(np.signbit(out), [True, False, True])


def test_pow_mixed_types():
    x = np.array([1.5, 2.0, -3.0], np.float32)
    out = run_op("Pow", [x, np.array([2, 3, 2], np.int64)])
    assert out.dtype == np.float32
    close(out, [2.25, 8.0, 9.0])
    out = run_op("Pow", [np.array([2, 3, 4], np.int32), np.array([0.5, 2.0, 1.5], np.float32)])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [1, 9, 8])  # computed in float, truncated to the base's type
    np.testing.assert_array_equal(run_op("Pow", [np.array([3, -2], np.int64), np.array([3, 3], np.int64)]), [27, -8])


def test_binary_broadcast_and_compare():
    a, b = rand(2, 1, 4), rand(3, 1)
    close(run_op("Add", [a, b]), a + b)
    close(run_op("Sub", [a, b]), a - b)
    close(run_op("Mul", [a, b]), a * b)
    for op, fn in [("Equal", np.equal), ("Less", np.less), ("LessOrEqual", np.less_equal),
                   ("Greater", np.greater), ("GreaterOrEqual", np.greater_equal)]:
        ai = np.array([[1, 2, 3]], np.int32)
        bi = np.array([[2], [3]], np.int32)
        np.testing.assert_array_equal(run_op(op, [ai, bi]), fn(ai, bi))
    p, q = np.array([True, True, False, False]), np.array([True, False, True, False])
    np.testing.assert_array_equal(run_op("And", [p, q]), p & q)
    np.testing.assert_array_equal(run_op("Or", [p, q]), p | q)
    np.testing.assert_array_equal(run_op("Xor", [p, q]), p ^ q)
    np.testing.assert_array_equal(run_op("Not", [p]), ~p)


def test_variadic_and_where():
    a, b, c = rand(2, 3), rand(3), rand(1, 3)
    close(run_op("Sum", [a, b, c]), a + b + c)
    close(run_op("Mean", [a, b, c]), (a + b + c) / 3)
    close(run_op("Max", [a, b, c]), np.maximum(np.maximum(a, b), c))
    close(run_op("Min", [a, b]), np.minimum(a, b))
    nan = run_op("Max", [np.array([np.nan, 1.0], np.float32), np.array([0.0, np.nan], np.float32)])
    assert np.isnan(nan).all()
    cond = np.array([[True], [False]])
    close(run_op("Where", [cond, a, b]), np.where(cond, a, b))


def test_prelu_and_clip():
    x = rand(2, 3, 4)
    slope = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    close(run_op("PRelu", [x, slope]), np.where(x < 0, x * slope, x))
    close(run_op("Clip", [x, np.float32(-0.5), np.float32(0.5)]), np.clip(x, -0.5, 0.5))
    close(run_op("Clip", [x, np.float32(0.0)]), np.maximum(x, 0))
    close(run_op("Clip", [x, None, np.float32(0.25)]), np.minimum(x, 0.25))
    close(run_op("Clip", [x]), x)
    close(run_op("Clip", [x, np.float32(1.0), np.float32(-1.0)]), np.full_like(x, -1.0))  # min > max: all max
    xi = np.array([-5, 0, 5, 100], np.int8)
    np.testing.assert_array_equal(run_op("Clip", [xi, np.int8(-2), np.int8(10)]), [-2, 0, 5, 10])


def test_isinf_isnan_dropout():
    x = np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)
    np.testing.assert_array_equal(run_op("IsNaN", [x]), [False, False, True, False])
    np.testing.assert_array_equal(run_op("IsInf", [x]), [True, True, False, False])
    np.testing.assert_array_equal(run_op("IsInf", [x], {"detect_positive": 0}), [False, True, False, False])
    np.testing.assert_array_equal(run_op("IsInf", [x], {"detect_negative": 0}), [True, False, False, False])
    y = rand(3, 4)
    out, mask = run_op("Dropout", [y, np.float32(0.5)], num_outputs=2)
    np.testing.assert_array_equal(out, y)
    assert mask.dtype == np.bool_ and mask.all()


def test_cast_semantics():
    x = np.array([1.7, -1.7, 0.0, 2.5, -0.4, np.nan], np.float32)
    np.testing.assert_array_equal(run_op("Cast", [x[:5]], {"to": DType.INT32}), [1, -1, 0, 2, 0])
    np.testing.assert_array_equal(run_op("Cast", [x], {"to": DType.BOOL}), [True, True, False, True, True, True])
    np.testing.assert_array_equal(run_op("Cast", [np.array([True, False])], {"to": DType.FLOAT32}), [1.0, 0.0])
    np.testing.assert_array_equal(run_op("Cast", [np.array([3, 0, -2], np.int64)], {"to": DType.BOOL}), [True, False, True])
    np.testing.assert_array_equal(run_op("Cast", [np.array([300, -1], np.int32)], {"to": DType.UINT8}), [44, 255])
    f = rand(8)
    np.testing.assert_array_equal(run_op("Cast", [f], {"to": DType.FLOAT16}), f.astype(np.float16))
    np.testing.assert_array_equal(run_op("Cast", [f], {"to": DType.BFLOAT16}), f.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(run_op("CastLike", [f, np.zeros(1, np.float64)]), f.astype(np.float64))


def test_unsigned_wraparound():
    u16 = np.array([65535, 1], np.uint16)
    np.testing.assert_array_equal(run_op("Add", [u16, np.array([1, 2], np.uint16)]), [0, 3])
    np.testing.assert_array_equal(run_op("Sub", [np.array([0], np.uint32), np.array([1], np.uint32)]), [2**32 - 1])
    np.testing.assert_array_equal(run_op("Mul", [np.array([2**31], np.uint32), np.array([2], np.uint32)]), [0])
    np.testing.assert_array_equal(run_op("BitwiseNot", [np.array([0, 255], np.uint16)]), [65535, 65280])
    np.testing.assert_array_equal(run_op("Div", [np.array([4000000000], np.uint32), np.array([3], np.uint32)]), [1333333333])
    big = np.array([2**63 + 5, 3], np.uint64)
    small = np.array([1, 2**64 - 1], np.uint64)
    np.testing.assert_array_equal(run_op("Less", [big, small]), [False, True])
    np.testing.assert_array_equal(run_op("Max", [big, small]), [2**63 + 5, 2**64 - 1])
    np.testing.assert_array_equal(run_op("Add", [big, np.array([1, 1], np.uint64)]), [2**63 + 6, 4])
    close(run_op("Cast", [np.array([2**63], np.uint64)], {"to": DType.FLOAT64}), [2.0**63], rtol=0)
    np.testing.assert_array_equal(run_op("ReduceMax", [big], {"keepdims": 0}), np.uint64(2**63 + 5))
    np.testing.assert_array_equal(run_op("ArgMax", [np.array([1, 2**63 + 1, 7], np.uint64)]), [1])


def test_bitshift():
    x = np.array([16, 4, 255], np.uint8)
    np.testing.assert_array_equal(run_op("BitShift", [x, np.array([1, 2, 8], np.uint8)], {"direction": "RIGHT"}), [8, 1, 0])
    np.testing.assert_array_equal(run_op("BitShift", [x, np.array([1, 2, 1], np.uint8)], {"direction": "LEFT"}), [32, 16, 254])
    np.testing.assert_array_equal(
        run_op("BitShift", [np.array([0xFFFF], np.uint16), np.array([4], np.uint16)], {"direction": "LEFT"}), [0xFFF0])
    np.testing.assert_array_equal(
        run_op("BitShift", [np.array([2**64 - 1], np.uint64), np.array([60], np.uint64)], {"direction": "RIGHT"}), [15])
    xs = np.array([-8, -8, 8, -1], np.int8)
    np.testing.assert_array_equal(
        run_op("BitShift", [xs, np.array([1, 9, 9, -1], np.int8)], {"direction": "RIGHT"}), [-4, -1, 0, -1])
    for op, fn in [("BitwiseAnd", np.bitwise_and), ("BitwiseOr", np.bitwise_or), ("BitwiseXor", np.bitwise_xor)]:
        a, b = np.array([12, 10], np.int32), np.array([10, 6], np.int32)
        np.testing.assert_array_equal(run_op(op, [a, b]), fn(a, b))


# ==============================================================================================
# Reductions
# ==============================================================================================
REDUCTIONS = {
    "ReduceSum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "ReduceMean": lambda x, a, k: np.mean(x, axis=a, keepdims=k),
    "ReduceMax": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "ReduceMin": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k)),
    "ReduceLogSum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)),
    "ReduceLogSumExp": lambda x, a, k: np.log(np.sum(np.exp(x), axis=a, keepdims=k)),
    "ReduceSumSquare": lambda x, a, k: np.sum(x * x, axis=a, keepdims=k),
}


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([-1, 0], 0), (None, 1), (None, 0), ([0, 1, 2], 0)])
def test_reductions(op, axes, keepdims):
    x = rand(2, 3, 4, lo=0.5, hi=1.5)
    ins = [x] if axes is None else [x, np.array(axes, np.int64)]
    want = REDUCTIONS[op](x.astype(np.float64), None if axes is None else tuple(axes), bool(keepdims))
    close(run_op(op, ins, {"keepdims": keepdims}), want)


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
def test_reduction_noop_with_empty_axes_keeps_elementwise_steps(op):
    x = rand(2, 3, lo=0.5, hi=1.5)
    want = REDUCTIONS[op](x.astype(np.float64), (), True)  # a reduction over no axes
    close(run_op(op, [x, np.array([], np.int64)], {"noop_with_empty_axes": 1}), want)
    close(run_op(op, [x], {"noop_with_empty_axes": 1}), want)


def test_reductions_over_empty_sets_and_ints():
    e = np.zeros((2, 0), np.float32)
    axes = np.array([1], np.int64)
    np.testing.assert_array_equal(run_op("ReduceMax", [e, axes]), [[-np.inf], [-np.inf]])
    np.testing.assert_array_equal(run_op("ReduceMin", [np.zeros((2, 0), np.int32), axes], {"keepdims": 0}), [2**31 - 1] * 2)
    np.testing.assert_array_equal(run_op("ReduceSum", [e, axes], {"keepdims": 0}), [0, 0])
    np.testing.assert_array_equal(run_op("ReduceProd", [e, axes], {"keepdims": 0}), [1, 1])
    np.testing.assert_array_equal(run_op("ReduceMean", [np.array([[1, 2], [-3, -4]], np.int64), axes], {"keepdims": 0}), [1, -3])
    np.testing.assert_array_equal(run_op("ReduceSum", [np.array([2**31 - 1, 1], np.int32)], {"keepdims": 0}), -(2**31))
    np.testing.assert_array_equal(run_op("ReduceMax", [np.array([[True, False], [False, False]]), axes], {"keepdims": 0}), [True, False])


def test_argmax_argmin():
    x = np.array([[1, 3, 3, 2], [5, 0, 0, 5]], np.float32)
    np.testing.assert_array_equal(run_op("ArgMax", [x], {"axis": 1}), [[1], [0]])
    np.testing.assert_array_equal(run_op("ArgMax", [x], {"axis": 1, "select_last_index": 1, "keepdims": 0}), [2, 3])
    np.testing.assert_array_equal(run_op("ArgMin", [x], {"axis": -1, "keepdims": 0}), [0, 1])
    np.testing.assert_array_equal(run_op("ArgMin", [x], {"axis": 1, "select_last_index": 1, "keepdims": 0}), [0, 2])
    np.testing.assert_array_equal(run_op("ArgMax", [x], {"axis": 0, "keepdims": 0}), [1, 0, 0, 1])


def test_topk_ties_take_the_lower_index():
    x = np.array([3, 1, 3, 2, 3, 1], np.float32)
    vals, idx = run_op("TopK", [x, np.array([2], np.int64)], num_outputs=2)
    np.testing.assert_array_equal(vals, [3, 3])
    np.testing.assert_array_equal(idx, [0, 2])
    vals, idx = run_op("TopK", [x, np.array([3], np.int64)], {"largest": 0}, num_outputs=2)
    np.testing.assert_array_equal(vals, [1, 1, 2])
    np.testing.assert_array_equal(idx, [1, 5, 3])
    m = rand(4, 5)
    vals, idx = run_op("TopK", [m, np.array([2], np.int64)], {"axis": 0}, num_outputs=2)
    order = np.argsort(-m, axis=0, kind="stable")[:2]
    np.testing.assert_array_equal(idx, order)
    close(vals, np.take_along_axis(m, order, 0))


@pytest.mark.parametrize("exclusive,reverse,want", [
    (0, 0, [1, 3, 6, 10]), (1, 0, [0, 1, 3, 6]), (0, 1, [10, 9, 7, 4]), (1, 1, [9, 7, 4, 0])])
def test_cumsum(exclusive, reverse, want):
    x = np.array([1, 2, 3, 4], np.float32)
    attrs = {"exclusive": exclusive, "reverse": reverse}
    np.testing.assert_array_equal(run_op("CumSum", [x, np.array(0, np.int32)], attrs), want)
    np.testing.assert_array_equal(run_op("CumSum", [x.astype(np.int32), np.array([-1], np.int64)], attrs), want)


def test_cumsum_2d_axis():
    x = rand(3, 4)
    close(run_op("CumSum", [x, np.array(1, np.int64)]), np.cumsum(x, 1))
    close(run_op("CumSum", [x, np.array(0, np.int64)], {"reverse": 1}), np.cumsum(x[::-1], 0)[::-1])


def test_softmax_family():
    x = rand(2, 3, 4)
    for axis in (0, 1, -1):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        sm = e / e.sum(axis=axis, keepdims=True)
        close(run_op("Softmax", [x], {"axis": axis}), sm)
        close(run_op("LogSoftmax", [x], {"axis": axis}), np.log(sm), atol=1e-5)
    h = np.array([[1, 3, 3], [2, 2, 1]], np.float32)
    np.testing.assert_array_equal(run_op("Hardmax", [h]), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(run_op("Hardmax", [h], {"axis": 0}), [[0, 1, 1], [1, 0, 0]])


def test_lp_normalization_and_mvn():
    x = np.array([[1.0, -3.0], [0.0, 0.0], [3.0, 4.0]], np.float32)
    close(run_op("LpNormalization", [x], {"p": 1}), [[0.25, -0.75], [0, 0], [3 / 7, 4 / 7]])
    close(run_op("LpNormalization", [x], {"p": 2}), [[1 / np.sqrt(10), -3 / np.sqrt(10)], [0, 0], [0.6, 0.8]])
    y = rand(2, 3, 4, 5)
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    std = np.sqrt(((y - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True))
    close(run_op("MeanVarianceNormalization", [y]), (y - mean) / (std + 1e-9), atol=1e-5)
    close(run_op("MeanVarianceNormalization", [y], {"axes": [1, 3]}),
          (y - y.mean(axis=(1, 3), keepdims=True)) / (y.std(axis=(1, 3), keepdims=True) + 1e-9), atol=1e-5)


# ==============================================================================================
# Shape and data movement
# ==============================================================================================
def _i64(*v):
    return np.array(v, np.int64)


@pytest.mark.parametrize("starts,ends,axes,steps,want", [
    ([-1], [INT64_MIN], None, [-1], slice(None, None, -1)),
    ([8], [1], None, [-3], slice(8, 1, -3)),
    ([2], [INT64_MAX], None, None, slice(2, None)),
    ([-100], [100], [0], [1], slice(None)),
    ([20], [-200], None, [-2], slice(None, None, -2)),
    ([-20], [-100], None, [-1], [0]),  # ONNX clamps a backward start to [0, dim-1] (numpy would give [])
    ([5], [5], None, None, slice(5, 5)),
    ([3], [7], [-1], [2], slice(3, 7, 2)),
])
def test_slice_1d(starts, ends, axes, steps, want):
    x = np.arange(10, dtype=np.float32)
    ins = [x, _i64(*starts), _i64(*ends), None if axes is None else _i64(*axes), None if steps is None else _i64(*steps)]
    np.testing.assert_array_equal(run_op("Slice", ins), x[want])


def test_slice_2d_mixed_steps():
    x = rand(5, 6)
    out = run_op("Slice", [x, _i64(1, -1), _i64(INT64_MAX, 0), _i64(0, -1), _i64(2, -2)])
    np.testing.assert_array_equal(out, x[1::2, -1:0:-2])
    # Runtime (non-constant) slice operands.
    out = run_op("Slice", [x, _i64(-2), _i64(INT64_MIN), _i64(1), _i64(-1)], const_from=5)
    np.testing.assert_array_equal(out, x[:, -2::-1])


def test_reshape_flatten_squeeze():
    x = rand(2, 3, 4)
    assert run_op("Reshape", [x, _i64(0, -1)]).shape == (2, 12)
    assert run_op("Reshape", [x, _i64(4, 0, -1)]).shape == (4, 3, 2)
    np.testing.assert_array_equal(run_op("Reshape", [x, _i64(-1)]), x.reshape(-1))
    assert run_op("Reshape", [np.zeros((0, 3), np.float32), _i64(3, 0)], {"allowzero": 1}).shape == (3, 0)
    assert run_op("Reshape", [x, _i64(0, 4, -1)], const_from=2).shape == (2, 4, 3)
    for axis, want in [(0, (1, 24)), (1, (2, 12)), (3, (24, 1)), (-1, (6, 4)), (-3, (1, 24))]:
        np.testing.assert_array_equal(run_op("Flatten", [x], {"axis": axis}), x.reshape(want))
    y = rand(1, 3, 1, 2)
    assert run_op("Squeeze", [y]).shape == (3, 2)
    assert run_op("Squeeze", [y, _i64(-2)]).shape == (1, 3, 2)
    assert run_op("Unsqueeze", [x, _i64(0, -1)]).shape == (1, 2, 3, 4, 1)
    assert run_op("Unsqueeze", [x, _i64(3, 1)]).shape == (2, 1, 3, 1, 4)
    np.testing.assert_array_equal(run_op("Transpose", [x]), x.transpose())
    np.testing.assert_array_equal(run_op("Transpose", [x], {"perm": [1, 0, 2]}), x.transpose(1, 0, 2))


def test_shape_size_concat_tile():
    x = rand(2, 3, 4)
    np.testing.assert_array_equal(run_op("Shape", [x]), [2, 3, 4])
    np.testing.assert_array_equal(run_op("Shape", [x], {"start": -2}), [3, 4])
    np.testing.assert_array_equal(run_op("Shape", [x], {"start": 1, "end": -1}), [3])
    np.testing.assert_array_equal(run_op("Size", [x]), 24)
    y = rand(2, 5, 4)
    np.testing.assert_array_equal(run_op("Concat", [x, y], {"axis": -2}), np.concatenate([x, y], 1))
    np.testing.assert_array_equal(run_op("Tile", [x, _i64(1, 2, 3)]), np.tile(x, (1, 2, 3)))


def test_expand_is_bidirectional():
    x = rand(3, 1)
    np.testing.assert_array_equal(run_op("Expand", [x, _i64(2, 1, 4)]), np.broadcast_to(x, (2, 3, 4)))
    y = rand(1, 4)
    np.testing.assert_array_equal(run_op("Expand", [y, _i64(3, 1)]), np.broadcast_to(y, (3, 4)))
    np.testing.assert_array_equal(run_op("Expand", [x, _i64(1)]), x)


def test_split():
    x = rand(2, 7)
    parts = run_op("Split", [x, _i64(2, 5)], {"axis": 1}, num_outputs=2)
    np.testing.assert_array_equal(parts[0], x[:, :2])
    np.testing.assert_array_equal(parts[1], x[:, 2:])
    parts = run_op("Split", [x], {"axis": -1, "num_outputs": 3}, num_outputs=3)
    assert [p.shape[1] for p in parts] == [3, 3, 1]  # uneven: the last chunk is smaller
    np.testing.assert_array_equal(np.concatenate(parts, 1), x)
    parts = run_op("Split", [rand(6, 2)], num_outputs=3)
    assert [p.shape for p in parts] == [(2, 2)] * 3


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(mode):
    x = rand(3, 4)
    pads = _i64(1, 2, 2, 3)
    out = run_op("Pad", [x, pads, np.float32(1.5) if mode == "constant" else None], {"mode": mode})
    kw = {"constant_values": 1.5} if mode == "constant" else {}
    np.testing.assert_array_equal(out, np.pad(x, ((1, 2), (2, 3)), mode=mode, **kw))
    big = run_op("Pad", [x, _i64(0, 5, 0, 6)], {"mode": mode})  # pads wider than the axis
    np.testing.assert_array_equal(big, np.pad(x, ((0, 0), (5, 6)), mode=mode))


def test_pad_axes_and_negative_pads():
    x = rand(2, 3, 4)
    out = run_op("Pad", [x, _i64(1, -1), np.float32(0), _i64(-1)])
    np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 0), (1, 0)))[..., :-1])
    out = run_op("Pad", [x, _i64(-1, 2, 1, 0), None, _i64(0, 2)], {"mode": "edge"})
    np.testing.assert_array_equal(out, np.pad(x, ((0, 1), (0, 0), (2, 0)), mode="edge")[1:])
    np.testing.assert_array_equal(run_op("Pad", [np.array([[True]]), _i64(1, 0, 0, 1)]), [[False, False], [True, False]])


def test_gather_family_negative_indices():
    x = rand(3, 4, 5)
    idx = np.array([[0, -1], [-4, 2]], np.int64)
    np.testing.assert_array_equal(run_op("Gather", [x, idx], {"axis": 1}), np.take(x, idx % 4, axis=1))
    np.testing.assert_array_equal(run_op("Gather", [x, np.array(-1, np.int32)]), x[-1])
    ge = np.array([[[0, -1, 2, 1, -5]]] * 3, np.int64).repeat(2, axis=1)
    np.testing.assert_array_equal(run_op("GatherElements", [x, ge], {"axis": 2}), np.take_along_axis(x[:, :2], ge % 5, 2))
    nd = np.array([[1, -1], [0, 2]], np.int64)
    np.testing.assert_array_equal(run_op("GatherND", [x, nd]), np.stack([x[1, 3], x[0, 2]]))
    bidx = np.array([[[1], [0]], [[3], [3]], [[-1], [2]]], np.int64)  # batch_dims=1
    want = np.stack([x[b, [i % 4 for i in bidx[b, :, 0]]] for b in range(3)])
    np.testing.assert_array_equal(run_op("GatherND", [x, bidx], {"batch_dims": 1}), want)


def test_scatter_nd():
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    idx = np.array([[1], [-1]], np.int64)
    upd = np.ones((2, 4), np.float32) * 100
    want = data.copy()
    want[[1, 2]] = 100
    np.testing.assert_array_equal(run_op("ScatterND", [data, idx, upd]), want)
    dup = np.array([[0, 1], [0, 1], [2, -1]], np.int64)
    u = np.array([5, 7, 9], np.float32)
    want = data.copy()
    want[0, 1] += 12
    want[2, 3] += 9
    np.testing.assert_array_equal(run_op("ScatterND", [data, dup, u], {"reduction": "add"}), want)
    want = data.copy()
    want[0, 1] *= 35
    want[2, 3] *= 9
    np.testing.assert_array_equal(run_op("ScatterND", [data, dup, u], {"reduction": "mul"}), want)
    want = data.copy()
    want[0, 1] = 7
    want[2, 3] = 11
    np.testing.assert_array_equal(run_op("ScatterND", [data, dup, u], {"reduction": "max"}), want)


def test_scatter_elements():
    data = np.zeros((3, 3), np.float32)
    idx = np.array([[1, 0, 2], [0, 2, -2]], np.int64)
    upd = np.array([[1.0, 1.1, 1.2], [2.0, 2.1, 2.2]], np.float32)
    want = data.copy()
    for i in range(2):
        for j in range(3):
            want[idx[i, j] % 3, j] = upd[i, j]
    np.testing.assert_array_equal(run_op("ScatterElements", [data, idx, upd]), want)
    idx2 = np.array([[1, 1, -1]], np.int64)
    upd2 = np.array([[2.0, 3.0, 4.0]], np.float32)
    base = np.ones((1, 3), np.float32) * 3
    np.testing.assert_array_equal(run_op("ScatterElements", [base, idx2, upd2], {"axis": 1, "reduction": "add"}), [[3, 8, 7]])
    np.testing.assert_array_equal(run_op("ScatterElements", [base, idx2, upd2], {"axis": 1, "reduction": "max"}), [[3, 3, 4]])
    np.testing.assert_array_equal(run_op("ScatterElements", [base, idx2, upd2], {"axis": 1, "reduction": "min"}), [[3, 2, 3]])


def test_onehot():
    idx = np.array([0, -1, 2, 5, -4], np.int64)
    out = run_op("OneHot", [idx, np.array(4, np.int64), np.array([2, 5], np.float32)])
    want = np.full((5, 4), 2, np.float32)
    for r, i in enumerate(idx):
        if -4 <= i < 4:
            want[r, i % 4] = 5
    np.testing.assert_array_equal(out, want)
    out = run_op("OneHot", [idx.reshape(1, 5), np.array([4.0], np.float32), np.array([0, 1], np.int32)], {"axis": 0})
    np.testing.assert_array_equal(out, (want == 5).T.astype(np.int32)[:, None, :])


def test_nonzero_range_trilu_eyelike_constant_of_shape():
    x = np.array([[1, 0, 3], [0, 0, 2]], np.float32)
    np.testing.assert_array_equal(run_op("NonZero", [x]), np.array(np.nonzero(x)))
    np.testing.assert_array_equal(run_op("Range", [np.int64(10), np.int64(4), np.int64(-2)]), [10, 8, 6])
    np.testing.assert_array_equal(run_op("Range", [np.int32(3), np.int32(3), np.int32(1)]), np.zeros(0, np.int32))
    close(run_op("Range", [np.float32(1.0), np.float32(2.0), np.float32(0.3)]), [1.0, 1.3, 1.6, 1.9])
    m = rand(2, 4, 5)
    for k in (-1, 0, 2):
        np.testing.assert_array_equal(run_op("Trilu", [m, np.int64(k)]), np.triu(m, k))
        np.testing.assert_array_equal(run_op("Trilu", [m, np.int64(k)], {"upper": 0}), np.tril(m, k))
    np.testing.assert_array_equal(run_op("Trilu", [m]), np.triu(m))
    eye = run_op("EyeLike", [np.zeros((3, 4), np.float32)], {"k": 1, "dtype": DType.INT32})
    np.testing.assert_array_equal(eye, np.eye(3, 4, 1, dtype=np.int32))
    np.testing.assert_array_equal(run_op("ConstantOfShape", [_i64(2, 3)]), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(run_op("ConstantOfShape", [_i64(2)], {"value": np.array([7], np.int64)}), [7, 7])


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    b = 2
    x = rand(2, 8, 3, 4)
    n, c, h, w = x.shape
    if mode == "DCR":
        want = x.reshape(n, b, b, c // 4, h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // 4, h * b, w * b)
    else:
        want = x.reshape(n, c // 4, b, b, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // 4, h * b, w * b)
    out = run_op("DepthToSpace", [x], {"blocksize": b, "mode": mode})
    np.testing.assert_array_equal(out, want)
    if mode == "DCR":
        np.testing.assert_array_equal(run_op("SpaceToDepth", [out], {"blocksize": b}), x)


# ==============================================================================================
# NN: linear algebra, convolution, pooling, normalization, attention
# ==============================================================================================
def test_matmul_gemm_einsum():
    for sa, sb in [((2, 3, 4), (4, 5)), ((4,), (2, 4, 3)), ((2, 1, 3, 4), (5, 4, 2)), ((3,), (3,))]:
        a, b = rand(*sa), rand(*sb)
        close(run_op("MatMul", [a, b]), np.matmul(a, b), atol=1e-5)
    ai, bi = RNG.integers(-5, 5, (3, 4)).astype(np.int32), RNG.integers(-5, 5, (4, 2)).astype(np.int32)
    np.testing.assert_array_equal(run_op("MatMul", [ai, bi]), ai @ bi)
    a, b, c = rand(4, 3), rand(5, 4), rand(5)
    close(run_op("Gemm", [a, b, c], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}), 0.5 * a.T @ b.T + 2 * c, atol=1e-5)
    close(run_op("Gemm", [a.T.copy(), a]), a.T @ a, atol=1e-5)
    close(run_op("Gemm", [a.T.copy(), a, np.float32(3.0)]), a.T @ a + 3, atol=1e-5)
    x, y = rand(2, 3, 4), rand(2, 4, 5)
    close(run_op("Einsum", [x, y], {"equation": "bij,bjk->bik"}), np.einsum("bij,bjk->bik", x, y), atol=1e-5)
    close(run_op("Einsum", [x[0], y[0]], {"equation": "ij,jk"}), np.einsum("ij,jk", x[0], y[0]), atol=1e-5)
    sq = rand(4, 4)
    close(run_op("Einsum", [sq], {"equation": "ii->i"}), np.diag(sq))
    close(run_op("Einsum", [x], {"equation": "...ij->...ji"}), np.swapaxes(x, -1, -2))


CONV_CASES = [
    ((1, 2, 6, 7), (3, 2, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ((2, 4, 7, 7), (6, 2, 3, 2), {"group": 2, "dilations": [2, 1], "pads": [1, 1, 1, 1]}),
    ((1, 3, 8), (2, 3, 4), {"auto_pad": "SAME_UPPER", "strides": [3]}),
    ((1, 2, 5, 5), (2, 2, 2, 2), {"auto_pad": "SAME_LOWER"}),
    ((1, 1, 5, 4, 4), (2, 1, 3, 2, 2), {"auto_pad": "VALID", "strides": [1, 2, 1]}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
def test_conv_against_onnx_reference(xs, ws, attrs):
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    close(run_op("Conv", [x, w, b], attrs), onnx_ref("Conv", [x, w, b], attrs), atol=1e-5)


CONV_T_CASES = [
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 1]}),
    ((1, 1, 4), (1, 2, 3), {"strides": [2], "dilations": [2]}),
    ((2, 2, 3, 4), (2, 1, 2, 2), {"strides": [2, 3], "output_shape": [7, 11]}),
    ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_T_CASES)
def test_conv_transpose_against_onnx_reference(xs, ws, attrs):
    x, w, b = rand(*xs), rand(*ws), rand(ws[1])
    close(run_op("ConvTranspose", [x, w, b], attrs), onnx_ref("ConvTranspose", [x, w, b], attrs), atol=1e-5)


def test_conv_transpose_groups():
    x, w = rand(1, 4, 3, 3), rand(4, 3, 2, 2)
    out = run_op("ConvTranspose", [x, w], {"group": 2, "strides": [2, 2]})
    want = np.concatenate([onnx_ref("ConvTranspose", [x[:, 2 * g:2 * g + 2], w[2 * g:2 * g + 2]], {"strides": [2, 2]})
                           for g in range(2)], axis=1)
    close(out, want, atol=1e-5)


def _naive_pool(x, kernel, strides, pads, dil, fn, ceil=False, include_pad=False):
    """Direct ONNX pooling on a 4-D input: windows clipped to the input (and to input + pads when
    include_pad); returns values and row-major flat indices of the max."""
    n, c, h, w = x.shape
    outs = []
    for d, k, s, lo, hi, dl in zip((h, w), kernel, strides, pads[:2], pads[2:], dil):
        span = d + lo + hi - dl * (k - 1) - 1
        o = -(-span // s) + 1 if ceil else span // s + 1
        if ceil and (o - 1) * s >= d + lo:
            o -= 1
        outs.append(o)
    y = np.zeros((n, c, *outs))
    idx = np.zeros((n, c, *outs), np.int64)
    for i in range(outs[0]):
        for j in range(outs[1]):
            rows = [i * strides[0] - pads[0] + a * dil[0] for a in range(kernel[0])]
            cols = [j * strides[1] - pads[1] + b * dil[1] for b in range(kernel[1])]
            inside = [(r, q) for r in rows for q in cols if 0 <= r < h and 0 <= q < w]
            if include_pad:
                count = sum(1 for r in rows for q in cols if -pads[0] <= r < h + pads[2] and -pads[1] <= q < w + pads[3])
            else:
                count = len(inside)
            vals = np.stack([x[:, :, r, q] for r, q in inside], -1)
            if fn == "max":
                am = vals.argmax(-1)
                y[:, :, i, j] = vals.max(-1)
                flat = np.array([r * w + q for r, q in inside])[am]
                idx[:, :, i, j] = flat + (np.arange(n)[:, None] * c + np.arange(c)[None]) * h * w
            else:
                y[:, :, i, j] = vals.sum(-1) / count
    return y, idx


POOL_CASES = [
    ((2, 3), (2, 2), (0, 0, 0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),
    ((3, 2), (2, 1), (1, 0, 2, 1), (1, 2), False),
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), True),
    ((2, 2), (3, 2), (0, 1, 0, 1), (2, 1), True),
]


@pytest.mark.parametrize("kernel,strides,pads,dil,ceil", POOL_CASES)
def test_max_pool_with_indices(kernel, strides, pads, dil, ceil):
    x = rand(2, 3, 7, 8)
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads), "dilations": list(dil), "ceil_mode": int(ceil)}
    y, idx = run_op("MaxPool", [x], attrs, num_outputs=2)
    wy, widx = _naive_pool(x, kernel, strides, pads, dil, "max", ceil)
    close(y, wy)
    np.testing.assert_array_equal(idx, widx)
    np.testing.assert_array_equal(x.reshape(-1)[idx], y)


def test_max_pool_storage_order_and_3d():
    x = rand(1, 2, 4, 5)
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
    _, rows = run_op("MaxPool", [x], attrs, num_outputs=2)
    _, cols = run_op("MaxPool", [x], {**attrs, "storage_order": 1}, num_outputs=2)
    plane = rows % 20
    np.testing.assert_array_equal(cols, rows - plane + (plane // 5) + (plane % 5) * 4)
    x3 = rand(1, 2, 5, 4, 6)
    attrs3 = {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 0]}
    close(run_op("MaxPool", [x3], attrs3), onnx_ref("MaxPool", [x3], attrs3))
    x1 = rand(2, 3, 9)
    attrs1 = {"kernel_shape": [3], "strides": [2], "auto_pad": "SAME_UPPER"}
    close(run_op("MaxPool", [x1], attrs1), onnx_ref("MaxPool", [x1], attrs1))
    xi = RNG.integers(-100, 100, (1, 1, 4, 4)).astype(np.uint8)
    np.testing.assert_array_equal(run_op("MaxPool", [xi], attrs), xi.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5)))


@pytest.mark.parametrize("kernel,strides,pads,dil,ceil", [c for c in POOL_CASES if c[3] == (1, 1)])
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool(kernel, strides, pads, dil, ceil, include_pad):
    x = rand(2, 3, 7, 8)
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads), "ceil_mode": int(ceil),
             "count_include_pad": include_pad}
    wy, _ = _naive_pool(x, kernel, strides, pads, dil, "avg", ceil, bool(include_pad))
    close(run_op("AveragePool", [x], attrs), wy)


def test_average_pool_dilated_same_and_lp_pool():
    x = rand(1, 2, 7, 6)
    attrs = {"kernel_shape": [2, 3], "dilations": [2, 1], "pads": [1, 1, 0, 1], "count_include_pad": 1}
    wy, _ = _naive_pool(x, (2, 3), (1, 1), (1, 1, 0, 1), (2, 1), "avg", include_pad=True)
    close(run_op("AveragePool", [x], attrs), wy)
    same = {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}
    close(run_op("AveragePool", [x], same), onnx_ref("AveragePool", [x], same))
    lp = {"kernel_shape": [2, 2], "strides": [1, 2], "pads": [0, 1, 1, 0], "p": 3}
    close(run_op("LpPool", [x], lp), onnx_ref("LpPool", [x], lp), atol=1e-5)
    close(run_op("LpPool", [x], {"kernel_shape": [3, 3]}), onnx_ref("LpPool", [x], {"kernel_shape": [3, 3]}), atol=1e-5)
    close(run_op("GlobalAveragePool", [x]), x.mean(axis=(2, 3), keepdims=True))
    close(run_op("GlobalMaxPool", [x]), x.max(axis=(2, 3), keepdims=True))


@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [2, 1]}),
    ((1, 2, 5, 6, 4), {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2], "pads": [1, 0, 1, 0, 2, 1]}),
    ((1, 2, 5, 6, 4), {"kernel_shape": [3, 2, 2], "auto_pad": "SAME_LOWER"}),
])
def test_average_pool_1d_3d(shape, attrs):
    x = rand(*shape)
    close(run_op("AveragePool", [x], attrs), onnx_ref("AveragePool", [x], attrs))
    close(run_op("AveragePool", [x], {**attrs, "count_include_pad": 1}), onnx_ref("AveragePool", [x], {**attrs, "count_include_pad": 1}))


def test_batch_and_instance_norm():
    x = rand(2, 3, 4, 5)
    s, b, m, v = rand(3), rand(3), rand(3), rand(3, lo=0.5, hi=2)
    sh = (1, 3, 1, 1)
    want = (x - m.reshape(sh)) / np.sqrt(v.reshape(sh) + 1e-3) * s.reshape(sh) + b.reshape(sh)
    close(run_op("BatchNormalization", [x, s, b, m, v], {"epsilon": 1e-3}), want, atol=1e-5)
    close(run_op("BatchNormalization", [x[:, :, 0, 0], s, b, m, v]), (x[:, :, 0, 0] - m) / np.sqrt(v + 1e-5) * s + b, atol=1e-5)
    mean, var = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
    close(run_op("InstanceNormalization", [x, s, b]), (x - mean) / np.sqrt(var + 1e-5) * s.reshape(sh) + b.reshape(sh), atol=1e-5)


def test_layer_norm_with_stats():
    x = rand(2, 3, 4)
    scale, bias = rand(3, 4), rand(3, 4)
    y, mean, inv = run_op("LayerNormalization", [x, scale, bias], {"axis": 1, "epsilon": 1e-3}, num_outputs=3)
    m = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    close(y, (x - m) / np.sqrt(var + 1e-3) * scale + bias, atol=1e-5)
    close(mean, m)
    close(inv, 1 / np.sqrt(var + 1e-3), rtol=1e-4)
    assert mean.shape == (2, 1, 1)
    close(run_op("LayerNormalization", [x, scale[-1]]), (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * scale[-1], atol=1e-5)
    # Half input: statistics in the stash type (float32 by default), as ONNX says.
    y16, m16, _ = run_op("LayerNormalization", [x.astype(np.float16), scale[-1].astype(np.float16)], num_outputs=3)
    assert y16.dtype == np.float16 and m16.dtype == np.float32
    y64, m64, _ = run_op("LayerNormalization", [x.astype(np.float64), scale[-1].astype(np.float64)], {"stash_type": 11}, num_outputs=3)
    assert m64.dtype == np.float64


def test_rms_and_group_norm():
    x = rand(2, 6, 3, 2)
    scale = rand(2)
    ms = (x * x).mean(axis=-1, keepdims=True)
    close(run_op("RMSNormalization", [x, scale]), x / np.sqrt(ms + 1e-5) * scale, atol=1e-5)
    ms = (x * x).mean(axis=(1, 2, 3), keepdims=True)
    s3 = rand(6, 3, 2)
    close(run_op("RMSNormalization", [x, s3], {"axis": 1, "epsilon": 1e-2}), x / np.sqrt(ms + 1e-2) * s3, atol=1e-5)
    s, b = rand(6), rand(6)
    g = x.reshape(2, 3, -1)
    norm = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    close(run_op("GroupNormalization", [x, s, b], {"num_groups": 3}), norm * s.reshape(1, 6, 1, 1) + b.reshape(1, 6, 1, 1), atol=1e-5)


@pytest.mark.parametrize("size", [3, 4])
def test_lrn(size):
    x = rand(2, 5, 3, 2)
    alpha, beta, bias = 0.3, 0.6, 1.5
    sq = np.zeros_like(x)
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    for c in range(5):
        sq[:, c] = (x[:, max(0, c - lo):min(5, c + hi + 1)] ** 2).sum(1)
    want = x / (bias + alpha / size * sq) ** beta
    close(run_op("LRN", [x], {"size": size, "alpha": alpha, "beta": beta, "bias": bias}), want, atol=1e-6)


def _attention_ref(q, k, v, mask=None, scale=None, causal=False):
    hq, hk = q.shape[1], k.shape[1]
    k = np.repeat(k, hq // hk, axis=1)
    v = np.repeat(v, hq // hk, axis=1)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2) * scale
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + mask
    if causal:
        sq, sk = q.shape[2], k.shape[2]
        s = np.where(np.tril(np.ones((sq, sk), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("hk,sq,sk,mask_kind,causal,scale", [
    (4, 5, 5, None, 0, None),
    (2, 3, 6, "float", 0, 0.3),
    (1, 3, 6, "bool", 1, None),
    (4, 4, 7, None, 1, None),
    (2, 6, 6, "float", 1, None),
])
def test_attention(hk, sq, sk, mask_kind, causal, scale):
    q, k, v = rand(2, 4, sq, 8), rand(2, hk, sk, 8), rand(2, hk, sk, 3)
    mask = None
    if mask_kind == "float":
        mask = rand(1, 1, sq, sk)
    elif mask_kind == "bool":
        mask = RNG.random((2, 1, 1, sk)) > 0.3
        mask[..., 0] = True  # every query row keeps at least one key (key 0 is never causally hidden)
    attrs = {"is_causal": causal} | ({} if scale is None else {"scale": scale})
    out = run_op("Attention", [q, k, v, mask], attrs, const_from=4)
    close(out, _attention_ref(q, k, v, mask, scale, bool(causal)), atol=1e-5)


# ==============================================================================================
# Engine: input checking, dtypes, memory, gradients
# ==============================================================================================
def _bert_like_graph():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", "seq", 8)))
    m = g.add_input("mask", TensorType(DType.INT64, ("batch", "seq")))
    w = g.add_constant(rand(8, 8), name="w")
    h = g.op("MatMul", x, w)
    mf = g.op("Cast", m, to=DType.FLOAT32)
    y = g.op("Mul", h, g.op("Unsqueeze", mf, g.add_constant(_i64(-1))))
    g.set_outputs([y])
    return g


def test_run_checks_inputs():
    g = _bert_like_graph()
    x = rand(2, 3, 8)
    m = np.ones((2, 3), np.int64)
    run(g, {"x": x, "mask": m})
    with pytest.raises(IRError, match=r"missing input\(s\) 'mask'.*unexpected input\(s\) 'masc'"):
        run(g, {"x": x, "masc": m})
    with pytest.raises(IRError, match="'x'.*element type f32, got f64"):
        run(g, {"x": x.astype(np.float64), "mask": m})
    with pytest.raises(IRError, match="'x'.*rank 3"):
        run(g, {"x": x[0], "mask": m})
    with pytest.raises(IRError, match="'x'.*dim 2 must be 8"):
        run(g, {"x": rand(2, 3, 7), "mask": m})
    with pytest.raises(IRError, match="'mask'.*'seq'=4.*'seq'=3"):
        run(g, {"x": x, "mask": np.ones((2, 4), np.int64)})


def test_composite_symbolic_dims_are_checked():
    g = Graph()
    a = g.add_input("a", TensorType(DType.FLOAT32, ("b", "s")))
    f = g.add_input("f", TensorType(DType.FLOAT32, ("b*s",)))
    g.set_outputs([g.op("Add", g.op("Reshape", a, g.add_constant(_i64(-1))), f)])
    out = run(g, {"a": rand(2, 3), "f": rand(6)})
    assert out[g.outputs[0].name].shape == (6,)
    with pytest.raises(IRError, match="'f'.*'b\\*s'=6.*got 5"):
        run(g, {"a": rand(2, 3), "f": rand(5)})


def test_unsupported_op_is_named(monkeypatch):
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (2,)))
    g.set_outputs([g.add_node("Relu", [x], name="my_relu").output])
    monkeypatch.delitem(engine._KERNELS, "Relu")
    with pytest.raises(UnsupportedOpError, match="'Relu'.*my_relu"):
        Interpreter(g)


def test_declared_type_mismatch_is_caught():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (2, 3)))
    s = g.add_input("s", TensorType(DType.INT64, (2,)))
    node = g.add_node("Reshape", [x, s], output_types=[TensorType(DType.FLOAT32, (2, 3))])
    g.set_outputs(node.outputs)
    run(g, {"x": rand(2, 3), "s": _i64(2, 3)})
    with pytest.raises(IRError, match=r"shape \[3, 2\].*f32\[2, 3\]"):
        run(g, {"x": rand(2, 3), "s": _i64(3, 2)})


def test_outputs_never_alias_constants_or_inputs():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (3,)))
    c = g.add_constant(np.arange(3, dtype=np.float32))
    g.set_outputs([g.op("Identity", c), g.op("Identity", x), c])
    xs = rand(3)
    out = run(g, {"x": xs})
    for arr in out.values():
        arr[...] = 42
    np.testing.assert_array_equal(c.const, [0, 1, 2])
    assert (xs != 42).all()


def test_graph_with_no_nodes_and_unsigned_outputs():
    g = Graph()
    x = g.add_input("x", TensorType(DType.UINT16, (2,)))
    b = g.add_input("b", TensorType(DType.BFLOAT16, (2,)))
    g.set_outputs([x, g.op("Add", x, x), b])
    out = run(g, {"x": np.array([40000, 7], np.uint16), "b": np.array([1.5, -2], ml_dtypes.bfloat16)})
    assert out["x"].dtype == np.uint16 and out["b"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out[g.outputs[1].name], [14464, 14])
    tout = Interpreter(g).run_torch({"x": torch.tensor([40000, 7], dtype=torch.int32).to(torch.uint16),
                                     "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)})
    assert tout[g.outputs[1].name].dtype == torch.uint16
    assert tout[g.outputs[1].name].to(torch.int32).tolist() == [14464, 14]


def test_intermediates_are_freed_after_last_use(monkeypatch):
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (4,)))
    g.set_outputs([g.op("Exp", g.op("Neg", g.op("Relu", x)))])
    refs = {}
    relu, exp = engine._KERNELS["Relu"], engine._KERNELS["Exp"]

    def spy_relu(node, t):
        out = relu(node, t) + 0  # a fresh tensor
        refs["relu"] = weakref.ref(out)
        return out

    def spy_exp(node, t):
        refs["alive_at_exp"] = refs["relu"]() is not None
        return exp(node, t)

    monkeypatch.setitem(engine._KERNELS, "Relu", spy_relu)
    monkeypatch.setitem(engine._KERNELS, "Exp", spy_exp)
    Interpreter(g).run_torch({"x": torch.randn(4)})
    assert refs["alive_at_exp"] is False


def test_run_torch_gradients_reach_constant_overrides():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, ("n", 3)))
    w = g.add_constant(rand(3, 2), name="w")
    b = g.add_constant(rand(2), name="b")
    h = g.op("Gelu", g.op("Add", g.op("MatMul", x, w), b))
    g.set_outputs([g.op("ReduceSum", g.op("Mul", h, h), keepdims=0)])
    interp = Interpreter(g)
    xt = torch.randn(4, 3, requires_grad=True)
    wt = torch.from_numpy(w.const.copy()).requires_grad_()
    out = interp.run_torch({"x": xt}, constants={"w": wt})[g.outputs[0].name]
    out.backward()
    xr, wr = xt.detach().clone().requires_grad_(), wt.detach().clone().requires_grad_()
    hr = torch.nn.functional.gelu(xr @ wr + torch.from_numpy(b.const))
    (hr * hr).sum().backward()
    torch.testing.assert_close(wt.grad, wr.grad)
    torch.testing.assert_close(xt.grad, xr.grad)
    close(out.detach().numpy(), run(g, {"x": xt.detach().numpy()})[g.outputs[0].name], rtol=1e-6)
    with pytest.raises(IRError, match="no such constant"):
        interp.run_torch({"x": xt}, constants={"nope": wt})
    with pytest.raises(IRError, match="constant override 'w'"):
        interp.run_torch({"x": xt}, constants={"w": torch.zeros(2, 3)})


def test_runtime_errors_name_the_node():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (3,)))
    i = g.add_input("i", TensorType(DType.INT64, (1,)))
    g.set_outputs([g.add_node("Gather", [x, i], name="lookup").output])
    with pytest.raises(IRError, match="lookup"):
        run(g, {"x": rand(3), "i": _i64(7)})


def test_transformer_block_matches_torch():
    """An exporter-style encoder layer (unfused ops) against the same math written in torch."""
    b, s, d, h = 2, 5, 16, 4
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", "seq", d)))
    mask = g.add_input("mask", TensorType(DType.INT64, ("batch", "seq")))
    W = {k: rand(d, d) * 0.3 for k in "qkvo"}
    consts = {k: g.add_constant(v, name=f"w{k}") for k, v in W.items()}
    ln_s, ln_b = g.add_constant(rand(d)), g.add_constant(rand(d))
    shape4 = g.add_constant(_i64(0, 0, h, d // h))

    def heads(t):
        return g.op("Transpose", g.op("Reshape", t, shape4), perm=[0, 2, 1, 3])

    q, k, v = (heads(g.op("MatMul", x, consts[n])) for n in "qkv")
    scores = g.op("Div", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.add_constant(np.float32(np.sqrt(d // h))))
    mf = g.op("Cast", g.op("Unsqueeze", mask, g.add_constant(_i64(1, 2))), to=DType.FLOAT32)
    bias = g.op("Mul", g.op("Sub", g.add_constant(np.float32(1)), mf), g.add_constant(np.float32(-1e4)))
    probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
    ctx = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", ctx, g.add_constant(_i64(0, 0, -1)))
    y = g.op("LayerNormalization", g.op("Add", g.op("MatMul", ctx, consts["o"]), x), ln_s, ln_b, axis=-1)
    g.set_outputs([g.op("Gelu", y)])
    xs, ms = rand(b, s, d), np.ones((b, s), np.int64)
    ms[1, 3:] = 0
    out = run(g, {"x": xs, "mask": ms})[g.outputs[0].name]

    t = {k: torch.from_numpy(v) for k, v in W.items()}
    xt = torch.from_numpy(xs)
    split = lambda z: z.reshape(b, s, h, d // h).transpose(1, 2)  # noqa: E731
    att = split(xt @ t["q"]) @ split(xt @ t["k"]).transpose(-1, -2) / math.sqrt(d // h)
    att = att + (1 - torch.from_numpy(ms).float()[:, None, None, :]) * -1e4
    ctx_t = (att.softmax(-1) @ split(xt @ t["v"])).transpose(1, 2).reshape(b, s, d)
    ref = torch.nn.functional.layer_norm(ctx_t @ t["o"] + xt, (d,), torch.from_numpy(ln_s.const), torch.from_numpy(ln_b.const))
    close(out, torch.nn.functional.gelu(ref).numpy(), atol=1e-5)


def test_bert_sized_graph_runs():
    """6 encoder layers, hidden 384, 12 heads, batch 2, sequence 128 (all-MiniLM-L6-v2's shape)
    in exporter-style unfused ops, run repeatedly through one interpreter. (Its speed is
    reported by bench/minilm.py, not asserted here: the machines are shared and noisy.)"""
    b, s, d, h, ff, layers = 2, 128, 384, 12, 1536, 6
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", "seq", d)))
    to_heads = g.add_constant(_i64(0, 0, h, d // h))
    merge = g.add_constant(_i64(0, 0, d))
    scale = g.add_constant(np.float32(1 / np.sqrt(d // h)))
    for _ in range(layers):
        def dense(t, n_in, n_out):
            return g.op("Add", g.op("MatMul", t, g.add_constant(rand(n_in, n_out) * 0.05)), g.add_constant(rand(n_out) * 0.05))

        q, k, v = (g.op("Transpose", g.op("Reshape", dense(x, d, d), to_heads), perm=[0, 2, 1, 3]) for _ in range(3))
        att = g.op("Softmax", g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), scale), axis=-1)
        ctx = g.op("Reshape", g.op("Transpose", g.op("MatMul", att, v), perm=[0, 2, 1, 3]), merge)
        x = g.op("LayerNormalization", g.op("Add", dense(ctx, d, d), x), g.add_constant(np.ones(d, np.float32)),
                 g.add_constant(np.zeros(d, np.float32)))
        hidden = g.op("Gelu", dense(x, d, ff))
        x = g.op("LayerNormalization", g.op("Add", dense(hidden, ff, d), x), g.add_constant(np.ones(d, np.float32)),
                 g.add_constant(np.zeros(d, np.float32)))
    g.set_outputs([x])
    interp = Interpreter(g)
    feed = {"x": rand(b, s, d)}
    first = interp.run(feed)[x.name]
    again = interp.run(feed)[x.name]
    assert first.shape == (b, s, d) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)


def test_outputs_are_contiguous_and_interpreter_is_reusable():
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (3, 1)))
    e = g.op("Expand", x, g.add_constant(_i64(3, 4)))
    g.set_outputs([e, g.op("Transpose", e)])
    interp = Interpreter(g)
    for _ in range(2):
        xs = rand(3, 1)
        out = interp(dict(x=xs))
        for arr in out.values():
            assert arr.flags.c_contiguous
        np.testing.assert_array_equal(out[g.outputs[1].name], np.broadcast_to(xs, (3, 4)).T)


def test_evaluate_node_runs_one_node_on_numpy():
    from optc.ir.interpreter import evaluate_node

    g = Graph()
    x = g.add_input("x", TensorType(DType.UINT16, (2, 3)))
    node = g.add_node("Split", [x], {"axis": 1, "num_outputs": 2}, num_outputs=2)
    a = np.array([[1, 2, 3], [4, 5, 65535]], np.uint16)
    left, right = evaluate_node(node, [a])
    assert left.dtype == np.uint16 and left.shape == (2, 2) and right.shape == (2, 1)
    np.testing.assert_array_equal(right, [[3], [65535]])
    with pytest.raises(IRError, match="shape"):
        evaluate_node(node, [np.zeros((2, 5), np.uint16)])
