"""Convolution fusions: fuse_conv_bn (passes/fusion/conv_bn.py: BatchNormalization folded into
the Conv's constants) and fuse_conv_bias_relu (passes/fusion/conv_bias_relu.py: Conv + per-channel
bias + Relu → FusedConv). Hand-built cases, a small CNN through the three export paths, the
compiled FusedConv and its ONNX export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fusion_models import PATHS, CNN, assert_outputs_close, check, cleaned, ops
from optc.frontend.onnx_export import to_onnx
from optc.ir.graph import Graph
from optc.ir.interpreter import run
from optc.ir.types import DType, TensorType
from optc.passes.fusion import fuse_conv_bias_relu, fuse_conv_bn

F32 = DType.FLOAT32
RNG = np.random.default_rng(7)
CIN, COUT = 3, 4


def c(g, x):
    return g.add_constant(np.asarray(x, dtype=np.float32))


def graph_x(shape=(2, CIN, 6, 6)):
    g = Graph()
    return g, g.add_input("x", TensorType(F32, shape))


def bn_params(g, n=COUT):
    return [c(g, RNG.uniform(0.5, 1.5, n)), c(g, RNG.uniform(-1, 1, n)), c(g, RNG.uniform(-1, 1, n)),
            c(g, RNG.uniform(0.5, 2, n))]


def rel_check(g, fn, expected):
    """check() with the issue's 1e-5 tolerance taken relative to the output scale."""
    return check(g, fn, expected, tol=1e-5)


# -- conv + batch norm -------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_bn_folds(bias, group):
    g, x = graph_x((2, 4, 6, 6))
    w = c(g, RNG.standard_normal((COUT, 4 // group, 3, 3)))
    ins = [x, w] + ([c(g, RNG.standard_normal(COUT))] if bias else [])
    y = g.add_node("Conv", ins, {"pads": [1, 1, 1, 1], "group": group}).output
    g.set_outputs([g.add_node("BatchNormalization", [y] + bn_params(g), {"epsilon": 1e-3}).output])
    g = rel_check(g, fuse_conv_bn, 1)
    assert ops(g) == {"Conv": 1}
    conv = g.nodes[0]
    assert conv.input(1).is_constant and conv.input(2).is_constant and conv.attrs["group"] == group
    assert conv.attrs["pads"] == (1, 1, 1, 1)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_folds(group):
    g, x = graph_x((1, 4, 5, 5))
    w = c(g, RNG.standard_normal((4, COUT // group, 3, 3)))
    y = g.add_node("ConvTranspose", [x, w, c(g, RNG.standard_normal(COUT))], {"strides": [2, 2], "group": group}).output
    g.set_outputs([g.add_node("BatchNormalization", [y] + bn_params(g)).output])
    g = rel_check(g, fuse_conv_bn, 1)
    assert ops(g) == {"ConvTranspose": 1}


def test_conv_bn_non_constant_weight_does_not_fold():
    g, x = graph_x()
    w = g.add_input("w", TensorType(F32, (COUT, CIN, 3, 3)))
    g.set_outputs([g.add_node("BatchNormalization", [g.op("Conv", x, w)] + bn_params(g)).output])
    check(g, fuse_conv_bn, 0)


def test_conv_bn_non_constant_statistics_do_not_fold():
    g, x = graph_x()
    y = g.op("Conv", x, c(g, RNG.standard_normal((COUT, CIN, 3, 3))))
    p = bn_params(g)
    p[2] = g.add_input("mean", TensorType(F32, (COUT,)))
    g.set_outputs([g.add_node("BatchNormalization", [y] + p).output])
    check(g, fuse_conv_bn, 0)


def test_conv_bn_conv_output_used_elsewhere_does_not_fold():
    g, x = graph_x()
    y = g.op("Conv", x, c(g, RNG.standard_normal((COUT, CIN, 3, 3))))
    g.set_outputs([g.add_node("BatchNormalization", [y] + bn_params(g)).output, y])
    check(g, fuse_conv_bn, 0)


# -- conv + bias + relu ------------------------------------------------------------------------
@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("add_shape", [None, (COUT, 1, 1), (1, COUT, 1, 1), (1,)])
@pytest.mark.parametrize("order", ["conv_first", "bias_first"])
def test_conv_bias_relu(conv_bias, add_shape, order):
    g, x = graph_x()
    ins = [x, c(g, RNG.standard_normal((COUT, CIN, 3, 3)))] + ([c(g, RNG.standard_normal(COUT))] if conv_bias else [])
    y = g.add_node("Conv", ins, {"strides": [2, 2]}).output
    if add_shape is not None:
        b = c(g, RNG.standard_normal(add_shape))
        y = g.op("Add", y, b) if order == "conv_first" else g.op("Add", b, y)
    g.set_outputs([g.op("Relu", y)])
    g = check(g, fuse_conv_bias_relu, 1)
    assert ops(g) == {"FusedConv": 1}
    n = g.nodes[0]
    assert n.attrs["activation"] == "relu" and n.attrs["strides"] == (2, 2)
    assert (n.input(2) is not None) == (conv_bias or add_shape is not None)


def test_bias_add_without_activation_folds_into_conv():
    g, x = graph_x()
    y = g.op("Conv", x, c(g, RNG.standard_normal((COUT, CIN, 1, 1))))
    g.set_outputs([g.op("Add", y, c(g, RNG.standard_normal((COUT, 1, 1))))])
    g = check(g, fuse_conv_bias_relu, 1)
    assert ops(g) == {"Conv": 1} and g.nodes[0].input(2).shape == (COUT,)


@pytest.mark.parametrize("add_shape", [(COUT, 6, 6), (1, 1, 1, 6), (1, 1, 6, 1)])
def test_bias_with_wrong_shape_stays_an_add(add_shape):
    """Not one value per channel (spatial, or along the width): the Add stays, so the Relu
    cannot join the Conv either."""
    g, x = graph_x((2, CIN, 6, 6))
    y = g.op("Conv", x, c(g, RNG.standard_normal((COUT, CIN, 1, 1))))
    g.set_outputs([g.op("Relu", g.op("Add", y, c(g, RNG.standard_normal(add_shape))))])
    check(g, fuse_conv_bias_relu, 0)


def test_conv_output_used_elsewhere_is_not_absorbed():
    g, x = graph_x()
    y = g.op("Conv", x, c(g, RNG.standard_normal((COUT, CIN, 3, 3))))
    g.set_outputs([g.op("Relu", y), y])
    check(g, fuse_conv_bias_relu, 0)


def test_non_constant_conv_bias_keeps_the_add():
    g, x = graph_x()
    b = g.add_input("b", TensorType(F32, (COUT,)))
    y = g.op("Conv", x, c(g, RNG.standard_normal((COUT, CIN, 3, 3))), b)
    g.set_outputs([g.op("Relu", g.op("Add", y, c(g, RNG.standard_normal((COUT, 1, 1)))))])
    check(g, fuse_conv_bias_relu, 0)


def test_conv_without_epilogue_is_left_alone():
    g, x = graph_x()
    g.set_outputs([g.op("Conv", x, c(g, RNG.standard_normal((COUT, CIN, 3, 3))))])
    check(g, fuse_conv_bias_relu, 0)


# -- a small CNN x three import paths --------------------------------------------------------------
# The ONNX exporters fold BatchNormalization into the Conv themselves; torch.export keeps it.
CNN_BN = {"torch.export": 2, "onnx-torchscript": 0, "onnx-dynamo": 0}


@pytest.mark.parametrize("path", PATHS)
def test_cnn_three_paths(path, tmp_path_factory):
    graph, feed, ref = cleaned("cnn", path, tmp_path_factory, upto="conv_bn")
    with torch.no_grad():
        want = CNN()(torch.from_numpy(feed["x"]))["y"].numpy()
    assert fuse_conv_bn(graph) == CNN_BN[path]
    assert fuse_conv_bias_relu(graph) == 3
    assert ops(graph) == {"FusedConv": 3}
    assert [n.attrs["activation"] for n in graph.nodes] == ["relu"] * 3
    assert_outputs_close(graph, feed, ref, tol=1e-5)
    got = run(graph, feed)[graph.output_names()[0]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- compiled FusedConv and ONNX export -------------------------------------------------------------
def _fused_convs():
    g, x = graph_x((1, CIN, 8, 8))
    w = c(g, RNG.standard_normal((COUT, CIN, 3, 3)))
    outs = [g.add_node("FusedConv", [x, w, c(g, RNG.standard_normal(COUT))], {"pads": [1, 1, 1, 1], "activation": a}).output
            for a in ("relu", "silu", "none")]
    outs.append(g.add_node("FusedConv", [x, w], {"strides": [2, 2], "activation": "relu"}).output)
    g.set_outputs(outs)
    return g


def test_compiled_fused_conv():
    from optc.codegen.build import build

    g = _fused_convs()
    cm = build(g, "x86")
    assert not cm.fallback_funcs and not cm.unscheduled
    feed = {"x": RNG.standard_normal((1, CIN, 8, 8)).astype(np.float32)}
    ref, got = run(g, feed), cm.load().run(feed)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


def test_onnx_export_decomposes_and_runs_in_onnxruntime():
    g = _fused_convs()
    m = to_onnx(g)
    assert sorted({n.op_type for n in m.graph.node}) == ["Conv", "Mul", "Relu", "Sigmoid"]
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": RNG.standard_normal((1, CIN, 8, 8)).astype(np.float32)}
    ref = run(g, feed)
    for arr, name in zip(sess.run(None, feed), g.output_names()):
        np.testing.assert_allclose(arr, ref[name], rtol=1e-5, atol=1e-5)
