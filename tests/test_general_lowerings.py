"""The compiled module's general paths for variants the fast Relax ops cannot say (see
``codegen/lowering/windowed.py`` and ``dynamic.py``), each against the reference interpreter:
AveragePool with dilations, MaxPool with its Indices output, ConvTranspose in 3-D / with
negative pads / output_padding >= stride, Pad with pads or constant_value known only at run time
(and negative pads), and a float Range whose bounds are known only at run time."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.interpreter import run

F32, I64 = DType.FLOAT32, DType.INT64
RNG = np.random.default_rng(5)


def _check(g: Graph, feeds: list[dict], tol: float = 1e-5):
    from optc.codegen.build import build

    cm = build(g, "x86")
    assert not cm.unscheduled
    model = cm.load()
    for feed in feeds:
        got, want = model.run(feed), run(g, feed)
        for name in g.output_names():
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], rtol=tol, atol=tol, err_msg=name)
    return model


def test_pooling_general_paths():
    g = Graph("pool")
    x2 = g.add_input("x2", TensorType(F32, (2, 3, 9, 8)))
    x3 = g.add_input("x3", TensorType(F32, (1, 2, 6, 7, 5)))
    outs = [
        g.op("AveragePool", x2, kernel_shape=(3, 2), dilations=(2, 3), pads=(1, 2, 2, 0)),
        g.op("AveragePool", x2, kernel_shape=(2, 2), dilations=(2, 2), strides=(3, 2), ceil_mode=1, count_include_pad=1,
             pads=(1, 1, 1, 1)),
        g.op("AveragePool", x3, kernel_shape=(2, 3, 2), dilations=(2, 1, 2), strides=(2, 2, 1), ceil_mode=1),
    ]
    mp = g.add_node("MaxPool", [x2], {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 0), "dilations": (1, 2)},
                    num_outputs=2)
    mp_cm = g.add_node("MaxPool", [x2], {"kernel_shape": (2, 3), "storage_order": 1, "ceil_mode": 1, "strides": (2, 2)},
                       num_outputs=2)
    mp3 = g.add_node("MaxPool", [x3], {"kernel_shape": (2, 2, 2), "strides": (2, 2, 2)}, num_outputs=2)
    outs += list(mp.outputs) + list(mp_cm.outputs) + list(mp3.outputs)
    outs.append(g.op("MaxPool", x2, kernel_shape=(2, 2), storage_order=1))
    g.set_outputs(outs)
    x2v = RNG.standard_normal((2, 3, 9, 8)).astype(np.float32)
    x2v[0, 0, :2, :2] = 7.0  # ties: the first maximal position wins in both backends
    _check(g, [{"x2": x2v, "x3": RNG.standard_normal((1, 2, 6, 7, 5)).astype(np.float32)}])


def test_conv_transpose_general_paths():
    g = Graph("convt")
    x2 = g.add_input("x2", TensorType(F32, (1, 4, 5, 6)))
    x3 = g.add_input("x3", TensorType(F32, (2, 2, 3, 4, 3)))
    w2 = g.add_constant(RNG.standard_normal((4, 3, 3, 2)).astype(np.float32))
    w3 = g.add_constant(RNG.standard_normal((2, 2, 2, 3, 2)).astype(np.float32))
    b3 = g.add_constant(RNG.standard_normal((4,)).astype(np.float32))
    outs = [
        g.op("ConvTranspose", x2, w2, pads=(-1, 1, 0, -2)),  # negative pads extend with zeros
        g.op("ConvTranspose", x2, w2, strides=(2, 2), output_padding=(2, 1)),  # output_padding >= stride
        g.op("ConvTranspose", x3, w3, b3, strides=(2, 1, 2), dilations=(1, 2, 1), pads=(1, 0, 1, 0, 2, 0), group=2),
        g.op("ConvTranspose", x3, w3, auto_pad="SAME_UPPER", strides=(2, 2, 2), group=2),
    ]
    g.set_outputs(outs)
    _check(g, [{"x2": RNG.standard_normal((1, 4, 5, 6)).astype(np.float32),
                "x3": RNG.standard_normal((2, 2, 3, 4, 3)).astype(np.float32)}], tol=1e-4)


def test_pad_with_runtime_operands():
    g = Graph("pad")
    x = g.add_input("x", TensorType(F32, (3, 4)))
    p = g.add_input("p", TensorType(I64, (4,)))
    v = g.add_input("v", TensorType(F32, ()))
    outs = [
        g.op("Pad", x, p, v),  # pads and value at run time
        g.op("Pad", x, p, None, None, mode="edge"),
        g.op("Pad", x, g.add_constant(np.array([-1, 2, 0, -2], np.int64)), v),  # negative pads crop
        g.op("Pad", x, g.add_constant(np.array([1, 1], np.int64)), v, g.add_constant(np.array([1], np.int64))),
    ]
    g.set_outputs(outs)
    feed = lambda pads: {"x": RNG.standard_normal((3, 4)).astype(np.float32),  # noqa: E731
                         "p": np.array(pads, np.int64), "v": np.array(2.5, np.float32)}
    model = _check(g, [feed([1, 0, 2, 3]), feed([0, 2, 0, 0]), feed([-2, 1, 1, -3])])
    # pads that leave a negative extent: refused by both backends, never a bad allocation
    bad = feed([-3, 0, -1, 0])
    with pytest.raises(IRError):
        run(g, bad)
    with pytest.raises(IRError, match="negative extent"):
        model.run(bad)


def test_float_range_with_runtime_bounds():
    g = Graph("range")
    s = g.add_input("s", TensorType(F32, ()))
    lim = g.add_input("lim", TensorType(F32, ()))
    d = g.add_input("d", TensorType(F32, ()))
    r = g.op("Range", s, lim, d)
    g.set_outputs([r, g.op("Mul", r, g.add_constant(np.float32(2.0)))])
    f = lambda a, b, c: {"s": np.float32(a), "lim": np.float32(b), "d": np.float32(c)}  # noqa: E731
    model = _check(g, [f(0, 5, 1), f(1.5, -2, -0.75), f(3, 3, 1), f(0, 1, 0.3), f(2, 1, 1)])
    with pytest.raises(IRError, match="delta cannot be 0"):
        model.run(f(0, 5, 0))
    with pytest.raises(IRError, match="delta cannot be 0"):
        run(g, f(0, 5, 0))
