"""Quantization ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
QLinearMatMul, ConvInteger, QLinearConv, BitCast): the interpreter against the ONNX reference
implementation and against plain numpy formulas, type-inference errors, and compiled modules
against the interpreter, bit for bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from optc.frontend.onnx_import import DTYPE_TO_ONNX, import_onnx
from optc.ir import DType, Graph, IRError, TensorType, UnsupportedOpError
from optc.ir.interpreter import run
from bits import same_bits

RNG = np.random.default_rng(11)
INT_Q = [DType.UINT8, DType.INT8, DType.UINT16, DType.INT16, DType.UINT4, DType.INT4, DType.UINT2, DType.INT2]
FLOAT_Q = [DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT4E2M1]
RANGE = {DType.UINT8: (0, 255), DType.INT8: (-128, 127), DType.UINT16: (0, 65535), DType.INT16: (-32768, 32767),
         DType.UINT4: (0, 15), DType.INT4: (-8, 7), DType.UINT2: (0, 3), DType.INT2: (-2, 1)}


def _bits(a) -> list:
    return np.ascontiguousarray(a).view(np.uint8).tolist()


def _model(op: str, inputs: dict, consts: dict, attrs: dict | None = None, n_out: int = 1, opset: int = 25):
    """A one-node ONNX model: ``inputs`` (name -> array) are graph inputs, ``consts`` initializers
    (None for an absent optional input)."""
    names = list(inputs) + list(consts)
    node = helper.make_node(op, [n if (n in inputs or consts[n] is not None) else "" for n in names],
                            [f"y{i}" for i in range(n_out)], **(attrs or {}))
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, DTYPE_TO_ONNX[DType.from_numpy(a.dtype)], a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.UNDEFINED, None) for i in range(n_out)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items() if a is not None])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _both(model, inputs: dict) -> tuple[list, list]:
    """(optc interpreter outputs, ONNX reference outputs)."""
    graph = import_onnx(model)
    with np.errstate(all="ignore"):
        ours = run(graph, inputs)
        ref = ReferenceEvaluator(model).run(None, inputs)
    return [ours[n] for n in graph.output_names()], ref


def _assert_same(ours, ref):
    for a, b in zip(ours, ref):
        b = np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        assert same_bits(a, b), (a, b)


def _x(shape, dtype=np.float32, scale=8.0):
    x = RNG.normal(0, scale, shape)
    x.flat[: min(8, x.size)] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.0, -0.0][: min(8, x.size)]  # ties: to even
    return x.astype(dtype)


LAYOUTS = {  # name: (x shape, scale shape, attrs)
    "tensor": ((3, 7), (), {}),
    "axis": ((3, 7), (3,), {"axis": 0}),
    "block": ((3, 7), (3, 3), {"axis": 1, "block_size": 3}),  # a remainder block of 1
    "block0": ((4, 2, 5), (2, 2, 5), {"axis": 0, "block_size": 2}),
}


def _zero_point(dt: DType, shape):
    if dt in FLOAT_Q:
        return np.zeros(shape, np.float32).astype(dt.numpy)
    lo, hi = RANGE[dt]
    return RNG.integers(lo, hi + 1, shape).astype(np.int64).astype(dt.numpy)


# -- QuantizeLinear --------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("out", INT_Q + FLOAT_Q)
def test_quantize_linear_matches_reference(out, layout):
    xs, ss, attrs = LAYOUTS[layout]
    scale = RNG.uniform(0.05, 2.0, ss).astype(np.float32)
    x = _x(xs, scale=60.0 if out in FLOAT_Q else 8.0)
    m = _model("QuantizeLinear", {"x": x}, {"s": scale, "z": _zero_point(out, ss)}, attrs)
    _assert_same(*_both(m, {"x": x}))


@pytest.mark.parametrize("out", [DType.FLOAT8E4M3FN, DType.FLOAT8E5M2, DType.FLOAT8E4M3FNUZ])
def test_quantize_linear_float8_saturate_flag(out):
    x = np.array([1e6, -1e6, np.inf, -np.inf, np.nan, 300.0, -0.0, 1e-9], np.float32)
    for sat in (1, 0):
        m = _model("QuantizeLinear", {"x": x}, {"s": np.float32(0.5), "z": _zero_point(out, ())}, {"saturate": sat})
        _assert_same(*_both(m, {"x": x}))


@pytest.mark.parametrize("xdt", [np.float16, ml_dtypes.bfloat16, np.int32])
@pytest.mark.parametrize("sdt", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_quantize_linear_mixed_types_compute_as_reference(xdt, sdt):
    """x / y_scale is computed in numpy's promotion of the two types (float16 stays float16)."""
    x = _x((64,), scale=300.0).astype(xdt)
    s = np.array(0.37, sdt)
    m = _model("QuantizeLinear", {"x": x}, {"s": s, "z": np.int16(3)})
    _assert_same(*_both(m, {"x": x}))


def test_quantize_linear_precision_and_output_dtype():
    x = _x((5, 8), scale=100.0)
    m = _model("QuantizeLinear", {"x": x}, {"s": np.float32(0.3)},
               {"output_dtype": TensorProto.INT4, "precision": TensorProto.FLOAT16})
    ours, ref = _both(m, {"x": x})
    _assert_same(ours, ref)
    q16 = (x.astype(np.float16) / np.float16(0.3)).astype(np.float16)
    assert ours[0].astype(int).tolist() == np.clip(np.rint(q16), -8, 7).astype(int).tolist()


def test_quantize_linear_blocked_formula():
    """Element i along the axis uses parameter i // block_size (numpy formula, int4)."""
    x = _x((2, 10), scale=10.0)
    s = RNG.uniform(0.5, 2.0, (2, 3)).astype(np.float32)
    z = RNG.integers(-3, 3, (2, 3)).astype(ml_dtypes.int4)
    g = Graph("q")
    xv = g.add_input("x", TensorType(DType.FLOAT32, (2, 10)))
    g.set_outputs([g.op("QuantizeLinear", xv, g.add_constant(s), g.add_constant(z), axis=1, block_size=4)])
    y = run(g, {"x": x})["quantizelinear"]
    j = np.arange(10) // 4
    want = np.clip(np.rint(x / s[:, j]) + z.astype(int)[:, j], -8, 7)
    assert y.dtype == ml_dtypes.int4 and y.astype(int).tolist() == want.astype(int).tolist()


def test_quantize_linear_saturates_infinities_and_sends_nan_low():
    g = Graph("q")
    xv = g.add_input("x", TensorType(DType.FLOAT32, (4,)))
    g.set_outputs([g.op("QuantizeLinear", xv, g.add_constant(np.float32(1.0)), g.add_constant(np.uint8(7)))])
    y = run(g, {"x": np.array([np.inf, -np.inf, np.nan, 3e9], np.float32)})["quantizelinear"]
    assert y.tolist() == [255, 0, 0, 255]


# -- DequantizeLinear ------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("xdt", INT_Q + FLOAT_Q + [DType.INT32])
def test_dequantize_linear_matches_reference(xdt, layout):
    xs, ss, attrs = LAYOUTS[layout]
    if xdt in FLOAT_Q:
        x = RNG.integers(0, 256 if xdt.bits == 8 else 16, xs).astype(np.uint8).view(xdt.numpy)
    elif xdt is DType.INT32:
        x = RNG.integers(-2**31, 2**31 - 1, xs, dtype=np.int64).astype(np.int32)
    else:
        lo, hi = RANGE[xdt]
        x = RNG.integers(lo, hi + 1, xs).astype(np.int64).astype(xdt.numpy)
    scale = RNG.uniform(0.01, 2.0, ss).astype(np.float32)
    zp = None if xdt in FLOAT_Q else (_zero_point(xdt, ss) if xdt is not DType.INT32 else
                                      RNG.integers(-1000, 1000, ss).astype(np.int32))
    m = _model("DequantizeLinear", {"x": x}, {"s": scale, "z": zp}, attrs)
    _assert_same(*_both(m, {"x": x}))


@pytest.mark.parametrize("sdt,out", [(np.float16, None), (ml_dtypes.bfloat16, None), (np.float32, TensorProto.FLOAT16),
                                     (np.float32, TensorProto.BFLOAT16), (ml_dtypes.float8_e8m0fnu, TensorProto.FLOAT)])
def test_dequantize_linear_output_types(sdt, out):
    x = RNG.integers(-128, 128, (6, 4)).astype(np.int8)
    s = np.array([2.0**-3, 2.0**5, 0.75, 3.0], np.float32).astype(sdt)
    m = _model("DequantizeLinear", {"x": x}, {"s": s, "z": np.zeros(4, np.int8)},
               {"axis": 1, **({"output_dtype": out} if out else {})})
    _assert_same(*_both(m, {"x": x}))


# -- DynamicQuantizeLinear -------------------------------------------------------------------------
@pytest.mark.parametrize("x", [
    np.linspace(-3.0, 7.0, 37, dtype=np.float32).reshape(1, 37),
    np.abs(RNG.normal(0, 5, (4, 9))).astype(np.float32),
    -np.abs(RNG.normal(0, 5, (4, 9))).astype(np.float32),
    np.zeros((2, 3), np.float32),
], ids=["mixed", "positive", "negative", "zeros"])
def test_dynamic_quantize_linear_matches_reference(x):
    m = _model("DynamicQuantizeLinear", {"x": x}, {}, n_out=3)
    _assert_same(*_both(m, {"x": x}))


def test_dynamic_quantize_linear_of_empty_input():
    g = Graph("d")
    xv = g.add_input("x", TensorType(DType.FLOAT32, (0, 3)))
    y, s, z = g.add_node("DynamicQuantizeLinear", [xv], output_names=["y", "s", "z"]).outputs
    g.set_outputs([y, s, z])
    out = run(g, {"x": np.zeros((0, 3), np.float32)})
    assert out["y"].shape == (0, 3) and out["s"] == np.float32(1.0) / np.float32(255.0) and int(out["z"]) == 0


# -- integer matmul / conv -------------------------------------------------------------------------
def _ints(dt, shape):
    return RNG.integers(-128, 128, shape).astype(dt) if dt == np.int8 else RNG.integers(0, 256, shape).astype(dt)


@pytest.mark.parametrize("adt,bdt", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8), (np.int8, np.uint8)])
@pytest.mark.parametrize("shapes", [((4, 5), (5, 3)), ((2, 3, 4), (4, 6)), ((5,), (5, 2)), ((2, 1, 3, 4), (3, 4, 2))])
def test_matmul_integer_matches_reference(adt, bdt, shapes):
    a, b = _ints(adt, shapes[0]), _ints(bdt, shapes[1])
    m = _model("MatMulInteger", {"a": a, "b": b}, {"az": _ints(adt, ()), "bz": _ints(bdt, ())})
    _assert_same(*_both(m, {"a": a, "b": b}))


def test_matmul_integer_per_row_and_column_zero_points():
    a, b = _ints(np.uint8, (2, 4, 6)), _ints(np.int8, (6, 3))
    az, bz = _ints(np.uint8, (4,)), _ints(np.int8, (3,))
    g = Graph("mm")
    av, bv = g.add_input("a", TensorType(DType.UINT8, a.shape)), g.add_input("b", TensorType(DType.INT8, b.shape))
    g.set_outputs([g.op("MatMulInteger", av, bv, g.add_constant(az), g.add_constant(bz))])
    y = run(g, {"a": a, "b": b})["matmulinteger"]
    want = (a.astype(np.int64) - az.astype(np.int64)[:, None]) @ (b.astype(np.int64) - bz.astype(np.int64))
    assert y.dtype == np.int32 and y.tolist() == want.tolist()


@pytest.mark.parametrize("xdt,ydt", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
@pytest.mark.parametrize("sdt", [np.float32, np.float16])
def test_qlinear_matmul_matches_reference(xdt, ydt, sdt):
    a, b = _ints(xdt, (2, 4, 8)), _ints(xdt, (8, 5))
    consts = {"as": np.array(0.0213, sdt), "az": _ints(xdt, ()), "b": b, "bs": np.array(0.0171, sdt),
              "bz": _ints(xdt, ()), "ys": np.array(0.193, sdt), "yz": _ints(ydt, ())}
    names = ["a", "as", "az", "b", "bs", "bz", "ys", "yz"]
    node = helper.make_node("QLinearMatMul", names, ["y0"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", DTYPE_TO_ONNX[DType.from_numpy(a.dtype)], a.shape)],
                          [helper.make_tensor_value_info("y0", TensorProto.UNDEFINED, None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    _assert_same(*_both(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), {"a": a}))


def test_qlinear_matmul_per_column_scale_formula():
    a, b = _ints(np.uint8, (3, 6)), _ints(np.int8, (6, 4))
    bs = RNG.uniform(0.01, 0.05, 4).astype(np.float32)
    g = Graph("q")
    av = g.add_input("a", TensorType(DType.UINT8, a.shape))
    k = g.add_constant
    g.set_outputs([g.op("QLinearMatMul", av, k(np.float32(0.02)), k(np.uint8(128)), k(b), k(bs), k(np.int8(0)),
                        k(np.float32(0.1)), k(np.uint8(10)))])
    y = run(g, {"a": a})["qlinearmatmul"]
    acc = (a.astype(np.int64) - 128) @ b.astype(np.int64)
    want = np.clip(np.rint(acc * (np.float32(0.02) * bs / np.float32(0.1)).astype(np.float64) + 10), 0, 255)
    assert y.tolist() == want.astype(int).tolist()


CONV_CASES = [
    ((1, 2, 5, 5), (3, 2, 3, 3), {}),
    ((1, 2, 6, 5), (4, 1, 2, 3), {"group": 2, "pads": [1, 0, 0, 2], "strides": [2, 1]}),
    ((2, 3, 7), (2, 3, 3), {"dilations": [2], "auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("xdt", [np.uint8, np.int8])
def test_conv_integer_matches_reference(case, xdt):
    xs, ws, attrs = CONV_CASES[case]
    x, w = _ints(xdt, xs), _ints(np.int8, ws)
    m = _model("ConvInteger", {"x": x}, {"w": w, "xz": _ints(xdt, ()), "wz": _ints(np.int8, ())}, attrs, opset=21)
    _assert_same(*_both(m, {"x": x}))


def test_conv_integer_per_channel_weight_zero_point():
    x, w = _ints(np.uint8, (1, 2, 4, 4)), _ints(np.int8, (3, 2, 2, 2))
    wz = _ints(np.int8, (3,))
    m = _model("ConvInteger", {"x": x}, {"w": w, "xz": np.uint8(5), "wz": wz}, opset=21)
    _assert_same(*_both(m, {"x": x}))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("xdt", [np.uint8, np.int8])
def test_qlinear_conv_matches_reference(xdt, per_channel):
    x, w = _ints(xdt, (1, 2, 6, 6)), _ints(np.int8, (3, 2, 3, 3))
    ws = RNG.uniform(0.001, 0.01, 3).astype(np.float32) if per_channel else np.float32(0.004)
    consts = {"xs": np.float32(0.05), "xz": _ints(xdt, ()), "w": w, "ws": ws, "wz": np.int8(0) if not per_channel
              else np.zeros(3, np.int8), "ys": np.float32(0.03), "yz": _ints(xdt, ()),
              "B": RNG.integers(-500, 500, 3).astype(np.int32)}
    m = _model("QLinearConv", {"x": x}, consts, {"pads": [1, 1, 1, 1]}, opset=21)
    _assert_same(*_both(m, {"x": x}))


# -- BitCast ---------------------------------------------------------------------------------------
_SAME_WIDTH = [(DType.FLOAT32, DType.INT32), (DType.INT32, DType.FLOAT32), (DType.FLOAT16, DType.UINT16),
               (DType.BFLOAT16, DType.INT16), (DType.FLOAT64, DType.UINT64), (DType.UINT8, DType.FLOAT8E4M3FN),
               (DType.FLOAT8E5M2, DType.INT8), (DType.FLOAT8E8M0, DType.FLOAT8E4M3FNUZ), (DType.INT4, DType.UINT4),
               (DType.UINT4, DType.FLOAT4E2M1), (DType.FLOAT4E2M1, DType.INT4), (DType.INT2, DType.UINT2),
               (DType.UINT2, DType.INT2), (DType.BOOL, DType.UINT8), (DType.UINT32, DType.INT32)]


def _all_codes(dt: DType, n: int = 64) -> np.ndarray:
    if dt.is_packed:
        codes = np.arange(n, dtype=np.uint8) % (1 << dt.bits)
        from optc.ir.types import from_element_codes
        return from_element_codes(codes, dt)
    if dt is DType.BOOL:
        return RNG.integers(0, 2, n).astype(bool)
    return RNG.integers(0, 256, n * dt.itemsize, dtype=np.uint8).view(dt.numpy)


@pytest.mark.parametrize("src,dst", _SAME_WIDTH, ids=[f"{a.value}-{b.value}" for a, b in _SAME_WIDTH])
def test_bitcast_keeps_the_bits(src, dst):
    x = _all_codes(src)
    g = Graph("b")
    xv = g.add_input("x", TensorType(src, x.shape))
    g.set_outputs([g.op("BitCast", xv, to=dst)])
    y = run(g, {"x": x})["bitcast"]
    assert y.dtype == dst.numpy
    if src.is_packed:
        from optc.ir.types import element_codes
        assert element_codes(y, dst).tolist() == element_codes(x, src).tolist()
    else:
        assert _bits(y) == _bits(x)


# -- type inference errors -------------------------------------------------------------------------
def _q(x_shape, s, z=None, **attrs):
    g = Graph("e")
    x = g.add_input("x", TensorType(DType.FLOAT32, x_shape))
    return g.op("QuantizeLinear", x, g.add_constant(s), None if z is None else g.add_constant(z), **attrs)


def test_quantize_linear_refuses_parameters_that_do_not_fit():
    with pytest.raises(IRError, match="blocked scale"):
        _q((4, 6), np.ones((4, 3), np.float32), axis=1, block_size=4)  # ceil(6/4) = 2, not 3
    with pytest.raises(IRError, match="per-axis scale has 5"):
        _q((4, 6), np.ones(5, np.float32), axis=1)
    with pytest.raises(IRError, match="must be 1-D"):
        _q((4, 6), np.ones((4, 6), np.float32), axis=1)
    with pytest.raises(IRError, match="y_zero_point shape"):
        _q((4, 6), np.ones(6, np.float32), np.zeros(4, np.uint8), axis=1)
    with pytest.raises(IRError, match="differs"):
        _q((4,), np.float32(1), np.int8(0), output_dtype=DType.UINT8)
    with pytest.raises(IRError, match="out of range"):
        _q((4, 6), np.ones(6, np.float32), axis=2)


def test_dequantize_linear_e8m0_scale_needs_output_dtype():
    g = Graph("e")
    x = g.add_input("x", TensorType(DType.INT8, (4,)))
    with pytest.raises(IRError, match="needs output_dtype"):
        g.op("DequantizeLinear", x, g.add_constant(np.array(1.0, np.float32).astype(ml_dtypes.float8_e8m0fnu)))


def test_bitcast_needs_equal_widths_and_qlinear_matmul_refuses_float8():
    g = Graph("e")
    x = g.add_input("x", TensorType(DType.INT4, (4,)))
    with pytest.raises(IRError, match="same bit width"):
        g.op("BitCast", x, to=DType.INT8)
    a = g.add_input("a", TensorType(DType.FLOAT8E4M3FN, (2, 2)))
    k = g.add_constant
    with pytest.raises(UnsupportedOpError, match="f8e4m3fn"):
        g.op("QLinearMatMul", a, k(np.float32(1)), k(np.zeros((), ml_dtypes.float8_e4m3fn)), a, k(np.float32(1)),
             k(np.zeros((), ml_dtypes.float8_e4m3fn)), k(np.float32(1)), k(np.zeros((), ml_dtypes.float8_e4m3fn)))


# -- compiled ----------------------------------------------------------------------------------------
def _compiled_check(g: Graph, feed: dict):
    from optc.codegen.build import build

    cm = build(g)
    assert not cm.unscheduled, cm.unscheduled
    with np.errstate(all="ignore"):
        want = run(g, feed)
        got = cm.load().run(feed)
    for name, w in want.items():
        h = got[name]
        assert h.dtype == w.dtype and h.shape == w.shape, name
        assert same_bits(h, w), (name, h, w)
    return cm


def test_compiled_quantize_dequantize_equal_the_interpreter():
    g = Graph("qdq")
    x = g.add_input("x", TensorType(DType.FLOAT32, (3, 7)))
    xh = g.add_input("xh", TensorType(DType.FLOAT16, (3, 7)))
    xi = g.add_input("xi", TensorType(DType.INT32, (3, 7)))
    k = g.add_constant
    s_axis, s_block = RNG.uniform(0.05, 1.0, 3).astype(np.float32), RNG.uniform(0.05, 1.0, (3, 3)).astype(np.float32)
    q_u8 = g.op("QuantizeLinear", x, k(np.float32(0.07)), k(np.uint8(100)))
    q_i8 = g.op("QuantizeLinear", x, k(s_axis), k(np.array([1, -2, 3], np.int8)), axis=0)
    q_i4 = g.op("QuantizeLinear", x, k(s_block), k(RNG.integers(-2, 2, (3, 3)).astype(ml_dtypes.int4)), axis=1, block_size=3)
    outs = [q_u8, q_i8, q_i4,
            g.op("QuantizeLinear", xh, k(np.float32(0.01)), k(np.uint16(30000))),
            g.op("QuantizeLinear", xh, k(np.float16(0.3)), k(np.int8(0))),
            g.op("QuantizeLinear", xi, k(np.float32(97.0)), k(np.int8(-3))),
            g.op("QuantizeLinear", x, k(np.float32(0.01)), output_dtype=DType.UINT2),
            g.op("QuantizeLinear", x, k(np.float32(0.3)), precision=DType.FLOAT16, output_dtype=DType.INT16),
            g.op("QuantizeLinear", x, k(np.float32(0.001)), k(np.zeros((), ml_dtypes.float8_e4m3fn))),
            g.op("QuantizeLinear", x, k(np.float32(1e-5)), k(np.zeros((), ml_dtypes.float8_e5m2)), saturate=0),
            g.op("QuantizeLinear", x, k(np.float32(0.5)), k(np.array(0.5, np.float32).astype(ml_dtypes.float4_e2m1fn))),
            g.op("QuantizeLinear", x, k(np.array(0.25, np.float32).astype(ml_dtypes.float8_e8m0fnu)), k(np.uint8(3))),
            g.op("DequantizeLinear", q_u8, k(np.float32(0.07)), k(np.uint8(100))),
            g.op("DequantizeLinear", q_i8, k(s_axis.astype(np.float16)), k(np.array([1, -2, 3], np.int8)), axis=0),
            g.op("DequantizeLinear", q_i4, k(s_block), axis=1, block_size=3, output_dtype=DType.BFLOAT16),
            g.op("DequantizeLinear", xi, k(np.float32(3e-3)), k(np.int32(-70000))),
            g.op("DequantizeLinear", g.op("Cast", x, to=DType.FLOAT8E4M3FN), k(np.float32(0.5)),
                 k(np.array(2.0, np.float32).astype(ml_dtypes.float8_e4m3fn))),
            g.op("DequantizeLinear", q_u8, k(np.array(2.0**-4, np.float32).astype(ml_dtypes.float8_e8m0fnu)),
                 output_dtype=DType.FLOAT16)]
    dq = g.add_node("DynamicQuantizeLinear", [x], output_names=["dy", "ds", "dz"]).outputs
    g.set_outputs(outs + list(dq))
    xv = _x((3, 7), scale=20.0)
    xv[0, :4] = [np.nan, np.inf, -np.inf, 1e30]
    feed = {"x": xv, "xh": _x((3, 7), np.float16, 30.0), "xi": RNG.integers(-30000, 30000, (3, 7)).astype(np.int32)}
    _compiled_check(g, feed)


def test_compiled_integer_matmul_conv_bitcast_equal_the_interpreter():
    g = Graph("ints")
    a = g.add_input("a", TensorType(DType.UINT8, (2, 4, 6)))
    x = g.add_input("x", TensorType(DType.INT8, (1, 2, 6, 6)))
    f = g.add_input("f", TensorType(DType.FLOAT32, (5,)))
    n4 = g.add_input("n4", TensorType(DType.INT4, (16,)))
    k = g.add_constant
    b = k(_ints(np.int8, (6, 3)))
    w = k(_ints(np.int8, (4, 1, 3, 3)))
    outs = [
        g.op("MatMulInteger", a, b, k(_ints(np.uint8, (4,))), k(_ints(np.int8, (3,)))),
        g.op("MatMulInteger", a, b),
        g.op("QLinearMatMul", a, k(np.float32(0.02)), k(np.uint8(120)), b, k(RNG.uniform(0.01, 0.05, 3).astype(np.float32)),
             k(np.int8(0)), k(np.float32(0.11)), k(np.uint8(10))),
        g.op("QLinearMatMul", a, k(np.float16(0.02)), k(np.uint8(120)), b, k(np.float16(0.03)), k(np.int8(1)),
             k(np.float16(0.07)), k(np.int8(-5))),
        g.op("ConvInteger", x, w, k(np.int8(3)), k(_ints(np.int8, (4,))), group=2, pads=(1, 0, 2, 1), strides=(2, 1)),
        g.op("QLinearConv", x, k(np.float32(0.05)), k(np.int8(-1)), w, k(RNG.uniform(0.001, 0.01, 4).astype(np.float32)),
             k(np.zeros(4, np.int8)), k(np.float32(0.02)), k(np.int8(4)), k(RNG.integers(-99, 99, 4).astype(np.int32)),
             group=2, pads=(1, 1, 1, 1)),
        g.op("BitCast", f, to=DType.INT32), g.op("BitCast", n4, to=DType.UINT4),
        g.op("BitCast", g.op("BitCast", n4, to=DType.FLOAT4E2M1), to=DType.INT4),
        g.op("BitCast", g.op("Cast", f, to=DType.FLOAT8E5M2), to=DType.INT8),
        g.op("BitCast", x, to=DType.FLOAT8E4M3FN),
    ]
    g.set_outputs(outs)
    feed = {"a": _ints(np.uint8, (2, 4, 6)), "x": _ints(np.int8, (1, 2, 6, 6)),
            "f": np.array([1.0, -0.0, np.nan, 3.5e38, -2.5], np.float32), "n4": np.arange(-8, 8).astype(ml_dtypes.int4)}
    cm = _compiled_check(g, feed)
    print("fallback-scheduled kernels:", cm.fallback_funcs)


def test_bitcast_keeps_float8e5m2_nan_payloads():
    """e5m2 is the one low-precision type with NaN payloads: the interpreter must not
    canonicalize them (ml_dtypes does) on the way to BitCast."""
    codes = np.array([0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF, 0x7C, 0x80], np.uint8)
    g = Graph("b")
    xv = g.add_input("x", TensorType(DType.FLOAT8E5M2, (8,)))
    g.set_outputs([g.op("BitCast", g.op("Transpose", xv), to=DType.UINT8), g.op("Identity", xv)])
    out = run(g, {"x": codes.view(ml_dtypes.float8_e5m2)})
    assert out["bitcast"].tolist() == codes.tolist()
    assert _bits(out["identity"]) == codes.tolist()


# -- export ----------------------------------------------------------------------------------------
def test_export_picks_the_lowest_opset_and_runs_in_onnxruntime():
    """A plain QDQ graph stays at the base opset (defaults are not written); ONNX Runtime, an
    independent implementation, computes what the interpreter does."""
    import onnx
    import onnxruntime as ort

    from optc.frontend.onnx_export import BASE_OPSET, to_onnx

    g = Graph("qdq")
    x = g.add_input("x", TensorType(DType.FLOAT32, (4, 6)))
    k = g.add_constant
    q = g.op("QuantizeLinear", x, k(np.float32(0.05)), k(np.uint8(128)))
    # uint8 weights: ORT's u8 x s8 kernels may saturate pair sums at int16 (pmaddubsw)
    w = k(_ints(np.uint8, (6, 3)))
    g.set_outputs([g.op("DequantizeLinear", q, k(np.float32(0.05)), k(np.uint8(128))),
                   g.op("MatMulInteger", q, w, k(np.uint8(128)), k(np.uint8(3))),
                   g.op("QLinearMatMul", q, k(np.float32(0.05)), k(np.uint8(128)), w, k(np.float32(0.02)), k(np.uint8(9)),
                        k(np.float32(0.3)), k(np.uint8(7)))])
    m = to_onnx(g)
    assert m.opset_import[0].version == BASE_OPSET
    onnx.checker.check_model(m, full_check=True)
    feed = {"x": _x((4, 6), scale=5.0)}
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    want = run(g, feed)
    for a, b in zip(got, want.values()):
        assert same_bits(a, b)
    g2 = Graph("blocked")
    x2 = g2.add_input("x", TensorType(DType.FLOAT32, (4, 6)))
    g2.set_outputs([g2.op("QuantizeLinear", x2, g2.add_constant(np.ones((4, 2), np.float32)), axis=1, block_size=3,
                          output_dtype=DType.INT4)])
    m2 = to_onnx(g2)
    assert m2.opset_import[0].version == 21  # block_size and int4 arrived in opset 21
    onnx.checker.check_model(m2, full_check=True)
