"""Codegen: IR → Relax → built module, compared with the reference interpreter.

Each op family gets a few tiny graphs that hold many ops at once (a TVM build costs about a
second on this machine, so one build checks many ops); modules are built once per test module.
Symbolic-dim modules run at two sizes through the same build. The slow tier compiles the real
all-MiniLM-L6-v2 from ONNX and compares it with PyTorch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from optc.codegen.build import CompiledModule, build
from optc.codegen.lower import lower_to_relax
from optc.codegen.runtime import CompiledModel
from optc.ir import DType, Graph, IRError, OptcError, TensorType, UnsupportedOpError
from optc.ir.errors import InvalidValueError
from optc.ir.interpreter import run

F32 = DType.FLOAT32
RNG = np.random.default_rng(0)


def _rand(*shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape).astype(dtype)


def _const(g, a, name=None):
    return g.add_constant(np.asarray(a), name)


def _check(cm: CompiledModule, g: Graph, feed: dict, tol: float = 1e-5):
    got = cm.load().run(feed)
    ref = run(g, feed)
    assert list(got) == g.output_names()
    for name, want in ref.items():
        have = got[name]
        assert have.dtype == want.dtype, name
        assert have.shape == want.shape, (name, have.shape, want.shape)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(have, want, rtol=tol, atol=tol, err_msg=name, equal_nan=True)
        else:
            np.testing.assert_array_equal(have, want, err_msg=name)


class _Cache:
    """Builds each graph once per test module and schedule mode."""

    def __init__(self, fast: bool):
        self.fast = fast
        self.items = {}

    def get(self, key, make):
        if key not in self.items:
            g, feeds = make()
            self.items[key] = (g, build(g, fast_schedules=self.fast), feeds)
        return self.items[key]


_CACHES: dict[bool, _Cache] = {}


@pytest.fixture(scope="module", params=[True, False], ids=["fast", "fallback"])
def cache(request):
    """Every graph is built twice: with optc's fast schedules (what ships) and with the generic
    fallback only (checks the lowering independently of the kernels)."""
    return _CACHES.setdefault(request.param, _Cache(request.param))


# -- elementwise -------------------------------------------------------------------------------
def _elementwise_float():
    g = Graph("ew")
    x = g.add_input("x", TensorType(F32, (2, 3, 4)))
    y = g.add_input("y", TensorType(F32, (3, 4)))
    pos = g.op("Add", g.op("Abs", x), _const(g, np.float32(0.5)))
    outs = [
        g.op("Add", x, y), g.op("Sub", x, y), g.op("Mul", x, y), g.op("Div", x, pos),
        g.op("Pow", pos, _const(g, np.float32(1.5))), g.op("Exp", x), g.op("Log", pos), g.op("Sqrt", pos),
        g.op("Reciprocal", pos), g.op("Tanh", x), g.op("Sigmoid", x), g.op("Erf", x), g.op("Gelu", x),
        g.op("Gelu", x, approximate="tanh"), g.op("Relu", x), g.op("LeakyRelu", x, alpha=0.1), g.op("Elu", x),
        g.op("Selu", x), g.op("Celu", x), g.op("Softplus", x), g.op("Softsign", x), g.op("Mish", x),
        g.op("HardSigmoid", x), g.op("HardSwish", x), g.op("Silu", x), g.op("Neg", x), g.op("Sign", x),
        g.op("Floor", x), g.op("Ceil", x), g.op("Round", g.op("Mul", x, _const(g, np.float32(2.0)))),
        g.op("Sin", x), g.op("Cos", x), g.op("Atan", x), g.op("ThresholdedRelu", x, alpha=0.5),
        g.op("Max", x, y), g.op("Min", x, y), g.op("Sum", x, y, x), g.op("Mean", x, y),
        g.op("Clip", x, _const(g, np.float32(-0.5)), _const(g, np.float32(0.7))),
        g.op("Where", g.op("Greater", x, y), x, y), g.op("PRelu", x, _const(g, np.float32([0.1, 0.2, 0.3, 0.4]))),
        g.op("Cast", x, to=DType.INT32), g.op("Cast", x, to=DType.BOOL), g.op("Identity", x),
        g.op("IsNaN", g.op("Div", x, x)), g.op("Mod", x, y, fmod=1),
    ]
    g.set_outputs(outs)
    return g, [{"x": _rand(2, 3, 4), "y": _rand(3, 4)}]


def _elementwise_int():
    g = Graph("ew_int")
    a = g.add_input("a", TensorType(DType.INT64, (3, 4)))
    b = g.add_input("b", TensorType(DType.INT64, (4,)))
    m = g.add_input("m", TensorType(DType.BOOL, (3, 4)))
    outs = [
        g.op("Add", a, b), g.op("Mul", a, b), g.op("Div", a, b), g.op("Mod", a, b), g.op("Mod", a, b, fmod=1),
        g.op("Equal", a, b), g.op("Less", a, b), g.op("GreaterOrEqual", a, b), g.op("And", m, g.op("Less", a, b)),
        g.op("Or", m, m), g.op("Xor", m, g.op("Equal", a, b)), g.op("Not", m), g.op("Abs", a), g.op("Neg", a),
        g.op("BitwiseAnd", a, b), g.op("BitShift", g.op("Abs", a), _const(g, np.int64(2)), direction="LEFT"),
        g.op("Cast", a, to=DType.FLOAT32), g.op("Cast", m, to=DType.INT32), g.op("Where", m, a, b), g.op("Relu", a),
    ]
    g.set_outputs(outs)
    b_val = RNG.integers(1, 5, (4,)) * np.array([1, -1, 1, -1])
    return g, [{"a": RNG.integers(-9, 9, (3, 4)), "b": b_val.astype(np.int64), "m": RNG.random((3, 4)) > 0.5}]


@pytest.mark.parametrize("make", [_elementwise_float, _elementwise_int], ids=["float", "int"])
def test_elementwise(cache, make):
    g, cm, feeds = cache.get(make.__name__, make)
    for feed in feeds:
        _check(cm, g, feed, tol=1e-5)


# -- nn ------------------------------------------------------------------------------------------
def _linear_algebra():
    g = Graph("la")
    x = g.add_input("x", TensorType(F32, (2, 5, 8)))
    q = g.add_input("q", TensorType(F32, (1, 4, 5, 8)))
    k = g.add_input("k", TensorType(F32, (1, 2, 6, 8)))
    v = g.add_input("v", TensorType(F32, (1, 2, 6, 8)))
    w = _const(g, _rand(8, 12))
    outs = [
        g.op("MatMul", x, w),
        g.op("MatMul", x, g.op("Transpose", x, perm=(0, 2, 1))),
        g.op("Gemm", g.op("Reshape", x, _const(g, np.int64([10, 8]))), _const(g, _rand(12, 8)), _const(g, _rand(12)),
             transB=1, alpha=0.5, beta=2.0),
        g.op("Einsum", x, w, equation="bsk,kn->bns"),
        g.op("Attention", q, k, v),
        g.op("Attention", q, k, v, is_causal=1),
        g.op("Attention", q, k, v, _const(g, RNG.random((5, 6)) > 0.3)),
        g.op("Attention", q, k, v, _const(g, _rand(1, 1, 5, 6)), scale=0.25),
    ]
    g.set_outputs(outs)
    return g, [{"x": _rand(2, 5, 8), "q": _rand(1, 4, 5, 8), "k": _rand(1, 2, 6, 8), "v": _rand(1, 2, 6, 8)}]


def _norms():
    g = Graph("norms")
    x = g.add_input("x", TensorType(F32, (2, 3, 8)))
    img = g.add_input("img", TensorType(F32, (1, 4, 6, 6)))
    row = g.add_input("row", TensorType(F32, (1, 1, 8)))  # one row (a decode step): serial reductions
    s8, b8 = _const(g, _rand(8)), _const(g, _rand(8))
    c4 = [_const(g, _rand(4)) for _ in range(3)] + [_const(g, _rand(4, lo=0.5, hi=2.0))]
    ln = g.add_node("LayerNormalization", [x, s8, b8], {"epsilon": 1e-5}, num_outputs=3).outputs
    outs = [
        g.op("LayerNormalization", x, s8, b8), *ln, g.op("LayerNormalization", x, s8),
        g.op("RMSNormalization", x, s8), g.op("Softmax", x, axis=1), g.op("LogSoftmax", x), g.op("Hardmax", x),
        g.op("RMSNormalization", row, s8), g.op("LayerNormalization", row, s8, b8), g.op("Softmax", row),
        g.op("BatchNormalization", img, *c4), g.op("InstanceNormalization", img, c4[0], c4[1]),
        g.op("GroupNormalization", img, c4[0], c4[1], num_groups=2), g.op("LpNormalization", x, axis=-1),
        g.op("MeanVarianceNormalization", img),
        g.op("Conv", img, _const(g, _rand(3, 4, 3, 3)), _const(g, _rand(3)), pads=(1, 1, 1, 1), strides=(2, 2)),
        g.op("Conv", img, _const(g, _rand(4, 2, 3, 3)), group=2, auto_pad="SAME_UPPER"),
        g.op("MaxPool", img, kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
        g.op("AveragePool", img, kernel_shape=(2, 2), strides=(2, 2)),
        g.op("GlobalAveragePool", img), g.op("GlobalMaxPool", img),
        g.op("LpPool", img, kernel_shape=(3, 3), pads=(1, 1, 1, 1), p=2), g.op("LpPool", img, kernel_shape=(2, 2), p=1),
        g.op("ConvTranspose", img, _const(g, _rand(4, 2, 3, 3)), strides=(2, 2), pads=(1, 1, 1, 1)),
    ]
    g.set_outputs(outs)
    return g, [{"x": _rand(2, 3, 8), "img": _rand(1, 4, 6, 6), "row": _rand(1, 1, 8)}]


@pytest.mark.parametrize("make", [_linear_algebra, _norms], ids=["linear_algebra", "norms_conv_pool"])
def test_nn(cache, make):
    g, cm, feeds = cache.get(make.__name__, make)
    for feed in feeds:
        _check(cm, g, feed, tol=1e-4)


# -- reductions ----------------------------------------------------------------------------------
def _reductions():
    g = Graph("reduce")
    x = g.add_input("x", TensorType(F32, (3, 4, 5)))
    ax = _const(g, np.int64([1]))
    ax2 = _const(g, np.int64([0, -1]))
    outs = [g.op(op, x, ax) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                       "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")]
    outs += [g.add_node("ReduceSum", [x, ax2], {"keepdims": 0}).output, g.op("ReduceMean", x),
             g.op("ReduceLogSum", g.op("Abs", x), ax), g.op("ArgMax", x, axis=1), g.op("ArgMin", x, axis=-1, keepdims=0),
             g.op("ArgMax", x, axis=2, select_last_index=1), g.op("CumSum", x, _const(g, np.int64(1))),
             g.op("CumSum", x, _const(g, np.int64(2)), exclusive=1, reverse=1)]
    top = g.add_node("TopK", [x, _const(g, np.int64([2]))], {"axis": -1}, num_outputs=2).outputs
    g.set_outputs(outs + list(top))
    return g, [{"x": _rand(3, 4, 5)}]


def test_reductions(cache):
    g, cm, feeds = cache.get("reduce", _reductions)
    for feed in feeds:
        _check(cm, g, feed, tol=1e-4)


# -- data movement -------------------------------------------------------------------------------
def _shapes():
    g = Graph("shape")
    x = g.add_input("x", TensorType(F32, (2, 3, 4)))
    idx = g.add_input("idx", TensorType(DType.INT64, (2, 2)))
    i64 = lambda *v: _const(g, np.int64(v))  # noqa: E731
    split = g.add_node("Split", [x, i64(1, 2)], {"axis": 1}, num_outputs=2).outputs
    outs = [
        g.op("Reshape", x, i64(6, -1)), g.op("Reshape", x, i64(0, 12)), g.op("Flatten", x, axis=2),
        g.op("Transpose", x, perm=(2, 0, 1)), g.op("Unsqueeze", x, i64(0, 4)), g.op("Squeeze", g.op("Unsqueeze", x, i64(1)), i64(1)),
        g.op("Concat", x, x, axis=-1), *split,
        g.op("Slice", x, i64(0, 1), i64(2, 100), i64(1, 2), i64(1, 2)), g.op("Slice", x, i64(-1), i64(-100), i64(2), i64(-1)),
        g.op("Gather", x, idx, axis=1), g.op("Gather", x, i64(-1), axis=2),
        g.op("GatherElements", x, g.op("Abs", g.op("Cast", g.op("Sign", x), to=DType.INT64)), axis=2),
        g.op("Expand", g.op("Reshape", x, i64(2, 1, 3, 4)), i64(2, 5, 1, 1)), g.op("Tile", x, i64(1, 2, 1)),
        g.op("Pad", x, i64(0, 1, 0, 0, 2, 1), _const(g, np.float32(9.0))), g.op("Pad", x, i64(0, 0, 1, 0, 0, 1), mode="reflect"),
        g.op("Shape", x), g.op("Size", x), g.op("ConstantOfShape", i64(2, 2), value=np.float32([3.0])),
        g.op("Range", _const(g, np.int64(1)), _const(g, np.int64(9)), _const(g, np.int64(3))),
        g.op("Trilu", x, i64(1)), g.op("Trilu", x, upper=0), g.op("EyeLike", g.op("Reshape", x, i64(4, 6))),
        g.op("OneHot", idx, i64(4), _const(g, np.float32([0.0, 1.0]))),
        g.op("DepthToSpace", g.op("Reshape", x, i64(1, 4, 2, 3)), blocksize=2),
        g.op("ScatterElements", x, g.op("Abs", g.op("Cast", g.op("Sign", x), to=DType.INT64)), x, axis=2),
        g.op("GatherND", x, _const(g, np.int64([[0, 1], [1, 2]]))),
    ]
    g.set_outputs(outs)
    return g, [{"x": _rand(2, 3, 4), "idx": np.int64([[0, 2], [-1, 1]])}]


def test_shape_ops(cache):
    g, cm, feeds = cache.get("shapes", _shapes)
    for feed in feeds:
        _check(cm, g, feed)


# -- symbolic shapes -----------------------------------------------------------------------------
def _symbolic():
    """A transformer-ish block over [batch, seq, 16] with the exporters' shape chain
    (Shape → Gather → Concat → Reshape) and a position table sliced to seq."""
    g = Graph("sym")
    x = g.add_input("x", TensorType(F32, ("batch", "seq", 16)))
    mask = g.add_input("mask", TensorType(DType.INT64, ("batch", "seq")))
    i64 = lambda *v: _const(g, np.int64(v))  # noqa: E731
    pos = _const(g, _rand(1, 64, 16))
    shape = g.op("Shape", x)
    seq = g.op("Gather", shape, _const(g, np.int64(1)))
    h = g.op("Add", x, g.op("Slice", pos, i64(0), g.op("Unsqueeze", seq, i64(0)), i64(1)))
    h = g.op("LayerNormalization", h, _const(g, _rand(16)), _const(g, _rand(16)))
    proj = g.op("Add", g.op("MatMul", h, _const(g, _rand(16, 16))), _const(g, _rand(16)))
    heads = g.op("Transpose", g.op("Reshape", proj, g.op("Concat", g.op("Slice", shape, i64(0), i64(2)), i64(2, 8), axis=0)),
                 perm=(0, 2, 1, 3))
    m = g.op("Where", g.op("Cast", g.op("Unsqueeze", mask, i64(1, 2)), to=DType.BOOL),
             _const(g, np.float32(0.0)), _const(g, np.float32(-1e9)))
    scores = g.op("Add", g.op("Mul", g.op("MatMul", heads, g.op("Transpose", heads, perm=(0, 1, 3, 2))),
                              _const(g, np.float32(0.35))), m)
    ctx = g.op("MatMul", g.op("Softmax", scores), heads)
    flat = g.op("Reshape", g.op("Transpose", ctx, perm=(0, 2, 1, 3)), i64(-1, 16))
    g.set_outputs([g.op("Reshape", flat, g.op("Shape", x)), flat, g.op("ReduceMean", h, i64(1))])
    feeds = []
    for b, s in ((2, 5), (1, 13)):
        mk = np.ones((b, s), np.int64)
        mk[-1, s - 2:] = 0
        feeds.append({"x": _rand(b, s, 16), "mask": mk})
    return g, feeds


def test_symbolic_shapes_two_sizes(cache):
    g, cm, feeds = cache.get("symbolic", _symbolic)
    assert [i.shape for i in cm.inputs] == [("batch", "seq", 16), ("batch", "seq")]
    assert cm.outputs[1].shape == ("batch*seq", 16)
    assert [a.describe().split(" (")[0] for a in cm.assumptions] == ["seq <= 64"]
    for feed in feeds:
        _check(cm, g, feed, tol=1e-4)


def test_lowering_symbolic_vars_are_shared():
    g, _ = _symbolic()
    mod = lower_to_relax(g)
    params = mod["main"].params
    x_shape = params[0].ty.shape.values
    m_shape = params[1].ty.shape.values
    assert x_shape[0].same_as(m_shape[0]) and x_shape[1].same_as(m_shape[1])
    assert len(mod["main"].ret_ty.fields) == 3


# -- input checks and errors ---------------------------------------------------------------------
def test_input_checks(cache):
    g, cm, feeds = cache.get("symbolic", _symbolic)
    model = cm.load()
    feed = feeds[0]
    with pytest.raises(IRError, match="missing input.*'mask'"):
        model.run({"x": feed["x"]})
    with pytest.raises(IRError, match="unexpected input.*'y'"):
        model.run({**feed, "y": feed["x"]})
    with pytest.raises(IRError, match="'x': expected element type f32, got f64"):
        model.run({**feed, "x": feed["x"].astype(np.float64)})
    with pytest.raises(IRError, match="'mask': expected rank 2"):
        model.run({**feed, "mask": feed["mask"][None]})
    with pytest.raises(IRError, match="dim 2 must be 16"):
        model.run({**feed, "x": _rand(2, 5, 8)})
    with pytest.raises(IRError, match="'seq'=6, but input 'x' bound 'seq'=5"):
        model.run({**feed, "mask": np.ones((2, 6), np.int64)})
    with pytest.raises(OptcError, match="seq <= 64"):
        model.run({"x": _rand(1, 65, 16), "mask": np.ones((1, 65), np.int64)})


def test_every_catalog_op_has_a_lowering():
    from optc.codegen.lowering import lowered_ops
    from optc.ir import all_schemas

    assert set(all_schemas()) <= lowered_ops()


def test_unsupported_op_names_op_and_node(monkeypatch):
    from optc.codegen import lowering

    monkeypatch.delitem(lowering._LOWERINGS, "LpPool")
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 1, 4, 4)))
    g.set_outputs([g.add_node("LpPool", [x], {"kernel_shape": (2, 2)}, name="pool7").output])
    with pytest.raises(UnsupportedOpError, match=r"'LpPool' \(node pool7\)"):
        lower_to_relax(g)


def test_unsupported_case_is_a_clear_error():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (3, 4)))
    axes = g.add_input("axes", TensorType(DType.INT64, (1,)))
    g.set_outputs([g.op("ReduceSum", x, axes)])
    with pytest.raises(UnsupportedOpError, match="axes known only at run time.*ReduceSum"):
        build(g)


def test_export_and_load(cache, tmp_path):
    g, cm, feeds = cache.get("symbolic", _symbolic)
    lib = cm.export(tmp_path / "m.so")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.so"]  # signature embedded, no temps left
    model = CompiledModel.load(lib)
    assert model.input_names() == ["x", "mask"]
    ref = run(g, feeds[1])
    got = model.run(feeds[1])
    np.testing.assert_allclose(got["flat"] if "flat" in got else got[g.output_names()[1]], ref[g.output_names()[1]],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(OptcError, match="no such compiled library"):
        CompiledModel.load(tmp_path / "missing.so")


def test_fallback_schedule_is_reported():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("n", 8)))
    g.set_outputs([g.op("Softmax", g.op("Exp", x))])
    cm = build(g, fast_schedules=False)
    assert cm.fallback_funcs and not cm.unscheduled
    _check(cm, g, {"x": _rand(3, 8)})
    _check(cm, g, {"x": _rand(7, 8)})


# -- MiniLM (slow) -------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_onnx_matches_pytorch(tmp_path):
    import time

    import torch

    import models
    from optc import zoo
    from optc.frontend.onnx_import import import_onnx

    model, inputs = models.minilm(batch=1, seq=128)
    path = zoo.export_onnx(model, inputs, tmp_path / "minilm.onnx", dynamo=False,
                           output_names=["last_hidden_state", "pooler_output"])
    graph = import_onnx(str(path))
    t = time.perf_counter()
    cm = build(graph, "x86")
    compile_s = time.perf_counter() - t
    compiled = cm.load()
    for seq in (128, 45):
        _, feed = models.minilm(batch=1, seq=seq, seed=seq)
        with torch.no_grad():
            want = model(**feed).last_hidden_state.numpy()
        got = compiled.run({k: v.numpy() for k, v in feed.items()})["last_hidden_state"]
        assert np.abs(got - want).max() <= 1e-3, (seq, float(np.abs(got - want).max()))
    print(f"\nMiniLM compile {compile_s:.1f} s; fallback kernels: {cm.fallback_funcs}")


def test_gather_with_out_of_range_runtime_indices_is_an_error():
    """Token ids come from users: an id past the table is refused by the module's own check, as
    the interpreter refuses it (no clamping); negative ids wrap, as ONNX. (Hostile inputs for
    every indexing op, in a subprocess: tests/test_runtime_checks.py.)"""
    g = Graph()
    ids = g.add_input("ids", TensorType(DType.INT64, ("b", "s")))
    table = g.add_constant(np.arange(40, dtype=np.float32).reshape(10, 4))
    g.set_outputs([g.op("Gather", table, ids, axis=0)])
    model = build(g, "x86").load()
    got = model.run({"ids": np.array([[1, -3]], np.int64)})[g.output_names()[0]]
    np.testing.assert_array_equal(got[0, 0], [4, 5, 6, 7])
    np.testing.assert_array_equal(got[0, 1], [28, 29, 30, 31])  # -3 wraps to row 7, as ONNX
    with pytest.raises(InvalidValueError, match=r"index out of range \[-10, 10\) on axis 0"):
        model.run({"ids": np.array([[1, 10**6, -3]], np.int64)})


def test_gather_with_proven_indices_reads_directly_and_says_nothing(capfd):
    """Constant indices (checked and wrapped at build time) are read directly, through optc's own
    take (``codegen/legalize.py``): the same values as the reference, on any axis and for a
    scalar index, and no "Fast mode segfaults" warning from TVM in the compile's output."""
    g = Graph()
    x = g.add_input("x", TensorType(F32, (3, 5, 4)))
    rows = g.op("Gather", x, _const(g, np.int64([[2, -1], [0, 1]])), axis=1)
    last = g.op("Gather", x, _const(g, np.int64(-1)), axis=-1)
    g.set_outputs([rows, last])
    capfd.readouterr()
    cm = build(g, "x86")
    assert "Fast mode" not in capfd.readouterr().err
    _check(cm, g, {"x": _rand(3, 5, 4)})
