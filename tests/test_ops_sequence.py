"""CumProd, ReverseSequence, RotaryEmbedding, Swish, SwiGLU, Shrink and the Hann / Hamming /
Blackman windows: the reference interpreter against independent formulas (numpy, ONNX's
reference rotary embedding), the compiled module against the interpreter, and data-dependent
indices out of range as the same one-line error in both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx.reference.ops.op_rotary_embedding import rotary_embedding as onnx_rotary_embedding

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.errors import InvalidValueError
from optc.ir.interpreter import run

F32, F16, I64, I32 = DType.FLOAT32, DType.FLOAT16, DType.INT64, DType.INT32
RNG = np.random.default_rng(11)


def _one(g: Graph, feed: dict) -> np.ndarray:
    return run(g, feed)[g.output_names()[0]]


# -- CumProd -------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumprod_matches_numpy(axis, exclusive, reverse):
    x = RNG.uniform(0.5, 1.5, (3, 4, 2)).astype(np.float32)
    g = Graph("cp")
    xi = g.add_input("x", TensorType(F32, x.shape))
    g.set_outputs([g.op("CumProd", xi, g.add_constant(np.array(axis, np.int64)), exclusive=exclusive, reverse=reverse)])
    src = np.flip(x, axis) if reverse else x
    want = np.cumprod(src, axis=axis)
    if exclusive:
        want = np.concatenate([np.ones_like(np.take(want, [0], axis)), np.delete(want, -1, axis)], axis)
    want = np.flip(want, axis) if reverse else want
    np.testing.assert_allclose(_one(g, {"x": x}), want, rtol=1e-6)


def test_cumprod_int32_wraps_like_numpy():
    x = np.array([[7, -3, 100000, 5], [2, 2, 2, 2]], np.int32)
    g = Graph("cpi")
    xi = g.add_input("x", TensorType(I32, x.shape))
    g.set_outputs([g.op("CumProd", xi, g.add_constant(np.array([1], np.int32)))])
    np.testing.assert_array_equal(_one(g, {"x": x}), np.cumprod(x, axis=1, dtype=np.int32))


# -- ReverseSequence -----------------------------------------------------------------------------
def _reverse_ref(x, lens, batch_axis, time_axis):
    y = x.copy()
    for b, n in enumerate(lens):
        idx = [slice(None)] * x.ndim
        src = [slice(None)] * x.ndim
        idx[batch_axis] = src[batch_axis] = b
        idx[time_axis], src[time_axis] = slice(0, n), slice(n - 1, None, -1) if n else slice(0, 0)
        y[tuple(idx)] = x[tuple(src)]
    return y


@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence_matches_loop(batch_axis, time_axis):
    shape = [5, 4, 3] if time_axis == 0 else [4, 5, 3]
    x = RNG.standard_normal(shape).astype(np.float32)
    lens = np.array([5, 0, 3, 1], np.int64)
    g = Graph("rs")
    xi, li = g.add_input("x", TensorType(F32, tuple(shape))), g.add_input("lens", TensorType(I64, (4,)))
    g.set_outputs([g.op("ReverseSequence", xi, li, batch_axis=batch_axis, time_axis=time_axis)])
    np.testing.assert_array_equal(_one(g, {"x": x, "lens": lens}), _reverse_ref(x, lens, batch_axis, time_axis))


def test_reverse_sequence_bad_axes_are_an_error():
    g = Graph("bad")
    xi, li = g.add_input("x", TensorType(F32, (3, 4, 2))), g.add_input("lens", TensorType(I64, (4,)))
    with pytest.raises(IRError, match="batch_axis and time_axis must be 0 and 1"):
        g.op("ReverseSequence", xi, li, batch_axis=2, time_axis=0)


# -- RotaryEmbedding -----------------------------------------------------------------------------
ROPE_CASES = [
    # (x shape, num_heads, rot dim, interleaved, with position ids)
    ((2, 3, 4, 8), None, 0, 0, True),
    ((2, 3, 4, 8), None, 4, 1, True),
    ((2, 4, 12), 3, 0, 1, False),
    ((1, 5, 16), 2, 6, 0, True),
]


def _rope_inputs(shape, heads, rot, with_ids):
    head = shape[3] if len(shape) == 4 else shape[2] // heads
    half = (rot or head) // 2
    b, s = shape[0], shape[2] if len(shape) == 4 else shape[1]
    x = RNG.standard_normal(shape).astype(np.float32)
    if with_ids:
        rows = 10
        ids = RNG.integers(0, rows, (b, s)).astype(np.int64)
        cache_shape = (rows, half)
    else:
        ids, cache_shape = None, (b, s, half)
    ang = RNG.uniform(0, 2 * math.pi, cache_shape)
    return x, np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32), ids


def _rope_graph(shape, cos_shape, heads, rot, interleaved, with_ids, dtype=F32):
    g = Graph("rope")
    x = g.add_input("x", TensorType(dtype, shape))
    c, s = g.add_input("cos", TensorType(dtype, cos_shape)), g.add_input("sin", TensorType(dtype, cos_shape))
    ids = g.add_input("ids", TensorType(I64, (shape[0], shape[2] if len(shape) == 4 else shape[1]))) if with_ids else None
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rot} | ({"num_heads": heads} if heads else {})
    g.set_outputs([g.op("RotaryEmbedding", x, c, s, ids, **attrs)])
    return g


@pytest.mark.parametrize("shape,heads,rot,interleaved,with_ids", ROPE_CASES)
def test_rotary_embedding_matches_onnx_reference(shape, heads, rot, interleaved, with_ids):
    x, cos, sin, ids = _rope_inputs(shape, heads, rot, with_ids)
    g = _rope_graph(shape, cos.shape, heads, rot, interleaved, with_ids)
    feed = {"x": x, "cos": cos, "sin": sin} | ({"ids": ids} if with_ids else {})
    want = onnx_rotary_embedding(x, cos, sin, ids, interleaved=interleaved, rotary_embedding_dim=rot, num_heads=heads or 0)
    np.testing.assert_allclose(_one(g, feed), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs,match", [
    ({"rotary_embedding_dim": 5}, "must be even"),
    ({"rotary_embedding_dim": 10}, "at most the head size 8"),
])
def test_bad_rotary_embedding_is_one_line_error(attrs, match):
    g = Graph("bad")
    x = g.add_input("x", TensorType(F32, (1, 2, 3, 8)))
    c, s = g.add_input("c", TensorType(F32, (3, 4))), g.add_input("s", TensorType(F32, (3, 4)))
    with pytest.raises(IRError, match=match) as e:
        g.op("RotaryEmbedding", x, c, s, g.add_input("ids", TensorType(I64, (1, 3))), **attrs)
    assert "\n" not in str(e.value)


def test_rotary_embedding_3d_needs_num_heads():
    g = Graph("bad")
    x = g.add_input("x", TensorType(F32, (1, 3, 8)))
    c, s = g.add_input("c", TensorType(F32, (1, 3, 4))), g.add_input("s", TensorType(F32, (1, 3, 4)))
    with pytest.raises(IRError, match="a 3-D X needs num_heads"):
        g.op("RotaryEmbedding", x, c, s)


# -- activations and windows ---------------------------------------------------------------------
def test_activations_match_formulas():
    x = RNG.standard_normal((3, 5)).astype(np.float32) * 3
    b = RNG.standard_normal((3, 5)).astype(np.float32)
    g = Graph("act")
    xi, bi = g.add_input("x", TensorType(F32, x.shape)), g.add_input("b", TensorType(F32, b.shape))
    g.set_outputs([g.op("Swish", xi, alpha=1.7), g.op("SwiGLU", xi, bi, alpha=0.5), g.op("Shrink", xi, lambd=1.2, bias=0.3)])
    swish, swiglu, shrink = (run(g, {"x": x, "b": b})[n] for n in g.output_names())
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(swish, x * sig(1.7 * x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(swiglu, x * sig(0.5 * x) * b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shrink, np.where(x < -1.2, x + 0.3, np.where(x > 1.2, x - 0.3, 0)), rtol=1e-6)


def test_shrink_of_integers_truncates_like_onnx():
    x = np.array([-5, -1, 0, 1, 5], np.int8)
    g = Graph("shr")
    xi = g.add_input("x", TensorType(DType.INT8, x.shape))
    g.set_outputs([g.op("Shrink", xi, lambd=1.5, bias=1.5)])
    np.testing.assert_array_equal(_one(g, {"x": x}), np.array([-3, 0, 0, 0, 3], np.int8))


def test_swiglu_needs_equal_shapes():
    g = Graph("bad")
    a, b = g.add_input("a", TensorType(F32, (2, 4))), g.add_input("b", TensorType(F32, (2, 1)))
    with pytest.raises(IRError, match="must have the same shape"):
        g.op("SwiGLU", a, b)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows_match_formulas(op, periodic):
    n = 10
    g = Graph("win")
    g.set_outputs([g.op(op, g.add_constant(np.array(n, np.int64)), periodic=periodic)])
    got = _one(g, {})
    k = np.arange(n)
    big_n = n if periodic else n - 1
    want = {"HannWindow": 0.5 - 0.5 * np.cos(2 * np.pi * k / big_n),
            "HammingWindow": 25 / 46 - 21 / 46 * np.cos(2 * np.pi * k / big_n),
            "BlackmanWindow": 0.42 - 0.5 * np.cos(2 * np.pi * k / big_n) + 0.08 * np.cos(4 * np.pi * k / big_n)}[op]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-5, atol=1e-6)
    if op == "HannWindow":
        np.testing.assert_allclose(got, torch.hann_window(n, periodic=bool(periodic)).numpy(), atol=1e-6)


def test_window_output_datatype_and_length_one():
    g = Graph("win")
    g.set_outputs([g.op("HannWindow", g.add_constant(np.array(1, np.int64)), periodic=0, output_datatype=DType.FLOAT64)])
    got = _one(g, {})
    assert got.dtype == np.float64 and got.tolist() == [1.0]


# -- compiled ------------------------------------------------------------------------------------
def _sequence_graph() -> Graph:
    """The ops of this file in one module (one build); lengths, ids and window size are inputs."""
    g = Graph("seq")
    x = g.add_input("x", TensorType(F32, (4, 3, 5)))
    b = g.add_input("b", TensorType(F32, (4, 3, 5)))
    lens = g.add_input("lens", TensorType(I64, (3,)))
    size = g.add_input("size", TensorType(I64, ()))
    rx = g.add_input("rx", TensorType(F32, (2, 3, 4, 8)))
    cos, sin = g.add_input("cos", TensorType(F32, (10, 2))), g.add_input("sin", TensorType(F32, (10, 2)))
    ids = g.add_input("ids", TensorType(I64, (2, 4)))
    i64 = lambda v: g.add_constant(np.array(v, np.int64))  # noqa: E731
    outs = [
        g.op("CumProd", x, i64(1)),
        g.op("CumProd", x, i64(-1), exclusive=1, reverse=1),
        g.op("ReverseSequence", x, lens, batch_axis=1, time_axis=0),
        g.op("RotaryEmbedding", rx, cos, sin, ids, rotary_embedding_dim=4, interleaved=1),
        g.op("Swish", x, alpha=0.8),
        g.op("SwiGLU", x, b),
        g.op("Shrink", x, lambd=0.5, bias=0.1),
        g.op("HannWindow", size),
        g.op("BlackmanWindow", size, periodic=0),
        g.op("HammingWindow", i64(7)),
    ]
    g.set_outputs(outs)
    return g


@pytest.fixture(scope="module")
def compiled_sequence():
    from optc.codegen.build import build

    g = _sequence_graph()
    cm = build(g, "x86")
    return g, cm


def _sequence_feed(lens=(4, 0, 2), size=6, ids=None):
    rows = RNG.uniform(0, 6.3, (10, 2))
    return {"x": RNG.uniform(-1.5, 1.5, (4, 3, 5)).astype(np.float32), "b": RNG.standard_normal((4, 3, 5)).astype(np.float32),
            "lens": np.array(lens, np.int64), "size": np.array(size, np.int64),
            "rx": RNG.standard_normal((2, 3, 4, 8)).astype(np.float32),
            "cos": np.cos(rows).astype(np.float32), "sin": np.sin(rows).astype(np.float32),
            "ids": RNG.integers(0, 10, (2, 4)).astype(np.int64) if ids is None else np.asarray(ids, np.int64)}


def test_compiled_sequence_ops_equal_interpreter(compiled_sequence):
    g, cm = compiled_sequence
    assert not cm.unscheduled
    model = cm.load()
    for size in (6, 1, 0):  # the window length is read at run time
        feed = _sequence_feed(size=size, ids=[[0, 9, -1, -10], [3, 3, 3, 3]])  # negative ids count from the end
        got, want = model.run(feed), run(g, feed)
        for name in g.output_names():
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("change,match", [
    ({"lens": (4, 5, 0)}, "sequence length out of range [0, 4]"),
    ({"lens": (-1, 0, 0)}, "sequence length out of range [0, 4]"),
    ({"ids": [[0, 10, 0, 0], [0, 0, 0, 0]]}, "index out of range [-10, 10) on axis 0"),
    ({"ids": [[0, 0, 0, 0], [0, 0, -11, 0]]}, "index out of range [-10, 10) on axis 0"),
    ({"size": -2}, "window size must not be negative"),
])
def test_compiled_bad_data_raises_like_interpreter(compiled_sequence, change, match):
    g, cm = compiled_sequence
    feed = _sequence_feed(**change)
    with pytest.raises(InvalidValueError) as ref:
        run(g, feed)
    with pytest.raises(InvalidValueError) as comp:
        cm.load().run(feed)
    assert str(comp.value) == str(ref.value)
    assert match in str(comp.value) and "\n" not in str(comp.value)
