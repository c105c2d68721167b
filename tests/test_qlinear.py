"""``QLinear`` (ir/ops/qlinear.py): type inference and its errors, the interpreter against
independent numpy formulas (round half to even, float32 steps in the documented order), and
compiled x86 modules against the interpreter for every weight kind."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.interpreter import run

RNG = np.random.default_rng(7)


def _graph(w, scale=None, zero=None, bias=None, x_shape=("b", "s", None), x_static=None, smooth=None, **attrs):
    g = Graph()
    k = w.shape[0]
    x = g.add_input("x", TensorType(DType.FLOAT32, tuple(k if d is None else d for d in x_shape)))
    c = [g.add_constant(a, n) if a is not None else None
         for a, n in ((w, "w"), (scale, "s"), (zero, "z"), (bias, "b"))]
    extra = [g.add_constant(np.float32(x_static[0]), "xs"), g.add_constant(np.uint8(x_static[1]), "xz")] if x_static else []
    if smooth is not None:
        extra = (extra or [None, None]) + [g.add_constant(smooth, "m")]
    y = g.op("QLinear", x, *c, *extra, **attrs)
    g.set_outputs([y])
    g.infer_types()
    return g


def _int8(k, n):
    return RNG.integers(-127, 128, (k, n)).astype(np.int8), (RNG.random(n) * 0.02 + 1e-3).astype(np.float32)


def _int4(k, n, group, signed=True):
    groups = -(-k // group)
    q = RNG.integers(-8, 8, (k, n)) if signed else RNG.integers(0, 16, (k, n))
    dt = ml_dtypes.int4 if signed else ml_dtypes.uint4
    return q.astype(dt), (RNG.random((groups, n)) * 0.1 + 1e-3).astype(np.float32)


# -- numpy references of the documented formulas -------------------------------------------------
def np_dynamic_rows(x: np.ndarray, qmax: int):
    x = x.astype(np.float32)
    lo = np.minimum(x.min(-1), np.float32(0))
    hi = np.maximum(x.max(-1), np.float32(0))
    scale = ((hi - lo) / np.float32(qmax)).astype(np.float32)
    scale[scale == 0] = 1
    zp = np.clip(np.round(-lo / scale), 0, qmax).astype(np.int64)
    xq = np.clip(np.round(x / scale[:, None]) + zp[:, None], 0, qmax).astype(np.int64)
    return xq, zp, scale


def np_qlinear_dynamic(x, w, ws, b, qmax):
    rows = x.reshape(-1, x.shape[-1])
    xq, zp, xs = np_dynamic_rows(rows, qmax)
    acc = (xq - zp[:, None]) @ w.astype(np.int64)
    y = acc.astype(np.float32) * (xs[:, None] * ws[None, :]).astype(np.float32)
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:-1], -1)


def np_dequantize(q, s, z, group):
    k = q.shape[0]
    qi = q.astype(np.int32)
    if group:
        idx = np.arange(k) // group
        s, z = s[idx], (z[idx] if z is not None else None)
    if z is not None:
        qi = qi - z.astype(np.int32)
    return qi.astype(np.float32) * s


# -- type inference --------------------------------------------------------------------------------
def test_shapes_and_dtype():
    w, s = _int8(16, 8)
    g = _graph(w, s, act_quant="dynamic")
    assert g.outputs[0].type == TensorType(DType.FLOAT32, ("b", "s", 8))
    q, s4 = _int4(20, 8, 8)
    assert _graph(q, s4, group_size=8).outputs[0].shape == ("b", "s", 8)


@pytest.mark.parametrize("build, msg", [
    (lambda: _graph(np.ones((4, 3), ml_dtypes.bfloat16), np.ones(3, np.float32)), "takes no w_scale"),
    (lambda: _graph(np.ones((4, 3), np.int8)), "needs w_scale"),
    (lambda: _graph(np.ones((4, 3), np.int8), np.ones(4, np.float32)), "w_scale must have shape [3]"),
    (lambda: _graph(np.ones((10, 3), ml_dtypes.int4), np.ones((2, 3), np.float32), group_size=4), "must have shape [3, 3]"),
    (lambda: _graph(np.ones((8, 3), ml_dtypes.int4), np.ones((2, 3), np.float32), group_size=4, act_quant="dynamic"),
     "needs a symmetric int8 weight"),
    (lambda: _graph(np.ones((4, 3), np.int8), np.ones(3, np.float32), act_quant="static"), "needs x_scale"),
    (lambda: _graph(np.ones((4, 3), np.int8), np.ones(3, np.float32), act_qmax=200), "act_qmax must be 127 or 255"),
    (lambda: _graph(np.ones((4, 3), np.int8), np.ones(3, np.float32), act_quant="sometimes"), "act_quant must be"),
    (lambda: _graph(np.ones((4, 3), np.float32), np.ones(3, np.float32)), "W must be int8, int4"),
    (lambda: _graph(np.ones((4, 3), np.int8), np.ones(3, np.float32), x_shape=(2, 5)), "contraction mismatch"),
])
def test_bad_qlinear_is_one_clear_error(build, msg):
    with pytest.raises(IRError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        build()


# -- interpreter -----------------------------------------------------------------------------------
@pytest.mark.parametrize("qmax", [127, 255])
def test_dynamic_rows_match_numpy_formula(qmax):
    w, s = _int8(40, 24)
    b = RNG.standard_normal(24).astype(np.float32)
    x = (RNG.standard_normal((2, 9, 40)) * 3).astype(np.float32)
    x[0, 0] = np.abs(x[0, 0])  # a row without negatives: zero point 0
    x[0, 1] = 0.0  # an all-zero row: scale 1
    got = run(_graph(w, s, bias=b, act_quant="dynamic", act_qmax=qmax), {"x": x})["qlinear"]
    np.testing.assert_array_equal(got, np_qlinear_dynamic(x, w, s, b, qmax))


def test_dynamic_quantization_rounds_ties_to_even():
    from optc.ir.interpreter.kernels_qlinear import dynamic_quantize_rows
    import torch

    # range [0, 127] -> scale 1, zero point 0: x = 0.5, 1.5, 2.5 are exact ties
    x = torch.tensor([[0.5, 1.5, 2.5, 127.0]], dtype=torch.float32)
    xq, zp, scale = dynamic_quantize_rows(x, 127)
    assert scale.tolist() == [1.0] and zp.tolist() == [0]
    assert xq.tolist() == [[0, 2, 2, 127]]


def test_weight_only_matches_dequantized_matmul():
    q, s = _int4(100, 24, 32)
    z = RNG.integers(0, 16, s.shape).astype(ml_dtypes.uint4)
    qu = RNG.integers(0, 16, q.shape).astype(ml_dtypes.uint4)
    x = RNG.standard_normal((3, 100)).astype(np.float32)
    got = run(_graph(qu, s, z, x_shape=(3, None), group_size=32), {"x": x})["qlinear"]
    np.testing.assert_allclose(got, x @ np_dequantize(qu, s, z, 32), rtol=1e-5, atol=1e-5)


def test_float_zero_point_is_subtracted_in_float32():
    """A float32 zero point (GGUF Q4_1's min/max grid): ``(float32(q) - z) * s``, two roundings."""
    q, s = _int4(70, 16, 32, signed=False)
    z = (RNG.random(s.shape) * 15).astype(np.float32)
    x = RNG.standard_normal((3, 70)).astype(np.float32)
    got = run(_graph(q, s, z, x_shape=(3, None), group_size=32), {"x": x})["qlinear"]
    idx = np.arange(70) // 32
    w = (q.astype(np.float32) - z[idx]) * s[idx]
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)
    with pytest.raises(IRError, match="float32 for a weight-only uint4 weight"):
        w8, s8 = _int8(16, 8)
        _graph(w8, s8, np.zeros(8, np.float32), act_quant="dynamic")


@pytest.mark.parametrize("wt", [ml_dtypes.bfloat16, np.float16])
def test_float_weights_round_the_activations(wt):
    w = RNG.standard_normal((32, 8)).astype(wt)
    x = RNG.standard_normal((4, 32)).astype(np.float32)
    got = run(_graph(w, x_shape=(4, None)), {"x": x})["qlinear"]
    want = x.astype(wt).astype(np.float32) @ w.astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    assert np.abs(got - x @ w.astype(np.float32)).max() > 1e-4  # the rounding is really there


def test_static_activations():
    w, s = _int8(16, 8)
    x = RNG.standard_normal((5, 16)).astype(np.float32)
    got = run(_graph(w, s, x_shape=(5, None), x_static=(0.05, 64), act_quant="static", act_qmax=127), {"x": x})["qlinear"]
    xq = np.clip(np.round(x / np.float32(0.05)) + 64, 0, 127).astype(np.int64)
    want = ((xq - 64) @ w.astype(np.int64)).astype(np.float32) * (np.float32(0.05) * s)
    np.testing.assert_array_equal(got, want)


# -- compiled (x86) against the interpreter -----------------------------------------------------------
CASES = {
    "bf16": lambda k, n: (RNG.standard_normal((k, n)).astype(ml_dtypes.bfloat16), None, None, {}),
    "fp16": lambda k, n: (RNG.standard_normal((k, n)).astype(np.float16), None, None, {}),
    "int8-weight-only": lambda k, n: (*_int8(k, n), None, {}),
    "int4-g32": lambda k, n: (*_int4(k, n, 32), None, {"group_size": 32}),
    "uint4-g64-zero-point": lambda k, n: (*_int4(k, n, 64, signed=False),
                                          RNG.integers(0, 16, (-(-k // 64), n)).astype(ml_dtypes.uint4), {"group_size": 64}),
    "uint4-g32-float-zero-point": lambda k, n: (*_int4(k, n, 32, signed=False),
                                                (RNG.random((-(-k // 32), n)) * 15).astype(np.float32), {"group_size": 32}),
    "int8-dynamic-127": lambda k, n: (*_int8(k, n), None, {"act_quant": "dynamic", "act_qmax": 127}),
    "int8-static": lambda k, n: (*_int8(k, n), None, {"act_quant": "static", "act_qmax": 127}),
    "int8-dynamic-smooth": lambda k, n: (*_int8(k, n), None, {"act_quant": "dynamic", "act_qmax": 127,
                                                              "smooth": (RNG.random(k) + 0.2).astype(np.float32)}),
    "int8-static-smooth": lambda k, n: (*_int8(k, n), None, {"act_quant": "static", "act_qmax": 127,
                                                             "smooth": (RNG.random(k) + 0.2).astype(np.float32)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_matches_interpreter(case):
    from optc.codegen.build import build

    k, n = 100, 70  # K not a multiple of the group or of 4, N not a multiple of the panel
    w, s, z, attrs = CASES[case](k, n)
    b = RNG.standard_normal(n).astype(np.float32)
    static = (0.03, 70) if attrs.get("act_quant") == "static" else None
    g = _graph(w, s, z, b, x_static=static, activation="gelu", **attrs)
    cm = build(g, "x86")
    assert not cm.unscheduled
    x = (RNG.standard_normal((2, 5, k)) * 2).astype(np.float32)
    x[1, 2, :4] = [0.5, 1.5, -2.5, 3.5]  # exact ties for the bf16/fp16 rounding
    ref = run(g, {"x": x})["qlinear"]
    got = cm.load().run({"x": x})["qlinear"]
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= 2e-6 * scale, case


@pytest.mark.parametrize("case", ["bf16", "int8-weight-only", "int4-g32", "uint4-g64-zero-point",
                                  "uint4-g32-float-zero-point"])
@pytest.mark.parametrize("rows", [(1, 1), (2, 1)])
def test_compiled_gemv_matches_interpreter(case, rows):
    """A static row count of 1 or 2 (a decode step): the weight decoded inside the product
    loop, a register tile of just those rows (schedules/dense_lowp.py GEMV_ROWS)."""
    from optc.codegen.build import build

    k, n = 100, 70
    w, s, z, attrs = CASES[case](k, n)
    b = RNG.standard_normal(n).astype(np.float32)
    g = _graph(w, s, z, b, x_shape=(*rows, None), activation="silu", **attrs)
    cm = build(g, "x86")
    assert not cm.unscheduled and not cm.fallback_funcs
    x = (RNG.standard_normal((*rows, k)) * 2).astype(np.float32)
    ref = run(g, {"x": x})["qlinear"]
    got = cm.load().run({"x": x})["qlinear"]
    assert float(np.abs(got - ref).max()) <= 2e-6 * float(np.abs(ref).max()), case


def test_codes_wider_than_the_target_kernel_multiplies_are_a_clear_error():
    from optc.codegen.build import build
    from optc.ir import UnsupportedOpError

    w, s = _int8(64, 32)
    g = _graph(w, s, act_quant="dynamic", act_qmax=255)
    with pytest.raises(UnsupportedOpError, match=r"x86-avx2's int8 kernel \(vpmaddubsw, vpmaddwd\) multiplies codes up to 127"):
        build(g, "x86-avx2")
    with pytest.raises(UnsupportedOpError, match="no int8-activation kernel for cuda-sm90"):
        build(_graph(w, s, act_quant="dynamic"), "cuda-sm90")


VNNI_JSON = '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}'


@pytest.mark.parametrize("target", [
    "x86-avx512", VNNI_JSON,  # CPUs CI may land on: built (this CPU cannot run them)
    pytest.param("arm64-dotprod", marks=pytest.mark.arm64), pytest.param("arm64-i8mm", marks=pytest.mark.arm64),
])
def test_every_kind_builds_for_other_presets(target):
    """Every QLinear kind compiles for the other x86 presets and (arm64 tier) runs under qemu
    matching the interpreter — at [b, s] rows and, for weight-only kinds, as a one-row GEMV
    (the decode step's form: the weight decoded inside the product)."""
    from optc.codegen.build import build

    shapes = [("b", "s", None), (1, 1, None)]
    for (case, make), x_shape in [(c, x) for c in CASES.items() for x in shapes]:
        w, s, z, attrs = make(100, 70)
        if x_shape[0] == 1 and attrs.get("act_quant", "none") != "none":
            continue
        static = (0.03, 70) if attrs.get("act_quant") == "static" else None
        g = _graph(w, s, z, RNG.standard_normal(70).astype(np.float32), x_shape=x_shape, x_static=static,
                   activation="gelu", **attrs)
        cm = build(g, target)
        assert not cm.unscheduled, case
        if target.startswith("arm64"):
            x = RNG.standard_normal((2, 5, 100) if x_shape[0] == "b" else (1, 1, 100)).astype(np.float32)
            ref = run(g, {"x": x})["qlinear"]
            got = cm.load().run({"x": x})["qlinear"]
            assert float(np.abs(got - ref).max()) <= 2e-6 * float(np.abs(ref).max()), case
