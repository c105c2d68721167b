"""The composite ops fusion creates (ir/ops/nn.py): ``Linear``, ``AddLayerNorm``, ``FusedConv`` --
schema checks, interpreter kernels against numpy / torch, and how ``ir.analysis`` counts them.
The fusions that create them are tested in tests/test_fusion_*.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

import torch

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.analysis import expanded_ops, summarize
from optc.ir.interpreter import run
from optc.ir.ops.nn import LINEAR_ACTIVATIONS

F32 = DType.FLOAT32
RNG = np.random.default_rng(1)
_erf = np.vectorize(math.erf)

ACT_REF = {
    "none": lambda y: y,
    "relu": lambda y: np.maximum(y, 0),
    "gelu": lambda y: 0.5 * y * (1 + _erf(y / math.sqrt(2))),
    "gelu_tanh": lambda y: 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3))),
    "silu": lambda y: y / (1 + np.exp(-y)),
}


def _linear_graph(x_shape, w, b=None, **attrs):
    g = Graph()
    x = g.add_input("x", TensorType(F32, x_shape))
    ins = [x, g.add_constant(w)] + ([g.add_constant(b)] if b is not None else [])
    g.set_outputs([g.add_node("Linear", ins, attrs).output])
    return g


def test_activation_list_is_the_spec():
    assert LINEAR_ACTIVATIONS == ("none", "relu", "gelu", "gelu_tanh", "silu")


@pytest.mark.parametrize("act", LINEAR_ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_matches_numpy(act, with_bias):
    w = RNG.standard_normal((6, 4)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32) if with_bias else None
    g = _linear_graph((2, 3, 6), w, b, activation=act)
    assert g.outputs[0].shape == (2, 3, 4)
    x = RNG.standard_normal((2, 3, 6)).astype(np.float32)
    want = x.astype(np.float64) @ w + (0 if b is None else b)
    got = run(g, {"x": x})[g.output_names()[0]]
    np.testing.assert_allclose(got, ACT_REF[act](want), rtol=1e-5, atol=1e-5)


def test_default_activation_is_none_and_symbolic_rows_infer():
    g = _linear_graph(("batch", "seq", 6), np.ones((6, 4), np.float32))
    node = g.nodes[0]
    assert node.attrs["activation"] == "none"
    assert node.output.shape == ("batch", "seq", 4)


@pytest.mark.parametrize("w_shape,b_shape,attrs,msg", [
    ((6, 4), None, {"activation": "tanh"}, "activation"),
    ((6, 4, 1), None, {}, "2-D"),
    ((5, 4), None, {}, "contraction"),
    ((6, 4), (3,), {}, "B must be"),
    ((6, 4), (1, 4), {}, "B must be"),
])
def test_schema_rejects(w_shape, b_shape, attrs, msg):
    b = None if b_shape is None else np.zeros(b_shape, np.float32)
    with pytest.raises(IRError, match=msg):
        _linear_graph((2, 6), np.zeros(w_shape, np.float32), b, **attrs)


# -- AddLayerNorm --------------------------------------------------------------------------------
def _add_ln(shape_x, shape_r, num_outputs=1, bias=True, dtype=np.float32):
    g = Graph()
    dt = DType.from_numpy(np.dtype(dtype))
    x = g.add_input("x", TensorType(dt, shape_x))
    r = g.add_input("r", TensorType(dt, shape_r))
    h = shape_x[-1]
    ins = [x, r, g.add_constant(RNG.standard_normal(h).astype(dtype))]
    if bias:
        ins.append(g.add_constant(RNG.standard_normal(h).astype(dtype)))
    node = g.add_node("AddLayerNorm", ins, {"epsilon": 1e-6}, num_outputs=num_outputs)
    g.set_outputs(node.outputs)
    return g, ins


@pytest.mark.parametrize("num_outputs", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_layer_norm_kernel(num_outputs, bias, dtype):
    g, ins = _add_ln((2, 3, 8), (2, 3, 8), num_outputs, bias, dtype)
    x, r = (RNG.standard_normal((2, 3, 8)).astype(dtype) for _ in range(2))
    got = run(g, {"x": x, "r": r})
    s = x.astype(np.float64) + r
    mean = s.mean(-1, keepdims=True)
    y = (s - mean) / np.sqrt(((s - mean) ** 2).mean(-1, keepdims=True) + 1e-6) * ins[2].const
    if bias:
        y = y + ins[3].const
    names = g.output_names()
    np.testing.assert_allclose(got[names[0]], y, rtol=1e-5, atol=1e-5)
    assert got[names[0]].dtype == dtype
    if num_outputs == 2:
        np.testing.assert_allclose(got[names[1]], s, rtol=1e-6)


def test_add_layer_norm_half_precision_uses_float32_statistics():
    g, ins = _add_ln((2, 8), (2, 8), dtype=np.float16)
    x, r = (RNG.standard_normal((2, 8)).astype(np.float16) for _ in range(2))
    got = run(g, {"x": x, "r": r})[g.output_names()[0]]
    s = torch.from_numpy(x) + torch.from_numpy(r)
    want = torch.nn.functional.layer_norm(s.float(), (8,), eps=1e-6).half() * torch.from_numpy(ins[2].const) + torch.from_numpy(ins[3].const)
    np.testing.assert_allclose(got.astype(np.float32), want.float().numpy(), atol=2e-3)


def test_add_layer_norm_types():
    g, _ = _add_ln(("batch", "seq", 8), (1, "seq", 8), num_outputs=2)
    assert [v.shape for v in g.outputs] == [("batch", "seq", 8)] * 2
    with pytest.raises(IRError, match="outputs"):
        _add_ln((2, 8), (2, 8), num_outputs=3)
    with pytest.raises(IRError):
        _add_ln((2, 8), (3, 8))


# -- FusedConv -----------------------------------------------------------------------------------
@pytest.mark.parametrize("act", LINEAR_ACTIVATIONS)
def test_fused_conv_kernel_is_conv_then_activation(act):
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 3, 7, 7)))
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    y = g.add_node("FusedConv", [x, g.add_constant(w), g.add_constant(b)],
                   {"activation": act, "strides": [2, 2], "pads": [1, 0, 1, 0]}).output
    g.set_outputs([y])
    assert y.shape == (1, 4, 4, 3)
    xv = RNG.standard_normal((1, 3, 7, 7)).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.from_numpy(xv), (0, 0, 1, 1)), torch.from_numpy(w),
                                      torch.from_numpy(b), stride=2).numpy()
    np.testing.assert_allclose(run(g, {"x": xv})[y.name], ACT_REF[act](want.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_fused_conv_rejects_unknown_activation():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 3, 5, 5)))
    with pytest.raises(IRError, match="activation"):
        g.add_node("FusedConv", [x, g.add_constant(np.zeros((4, 3, 3, 3), np.float32))], {"activation": "tanh"})


# -- analysis: fused nodes counted as the ops they stand for ---------------------------------------
def test_expanded_ops_and_flops():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("batch", 6)))
    h = g.add_node("Linear", [x, g.add_constant(np.ones((6, 4), np.float32)), g.add_constant(np.ones(4, np.float32))],
                   {"activation": "gelu"}).output
    h2 = g.add_node("Linear", [h, g.add_constant(np.ones((4, 4), np.float32))]).output
    y = g.add_node("AddLayerNorm", [h, h2, g.add_constant(np.ones(4, np.float32))]).output
    g.set_outputs([y])
    assert expanded_ops(g.nodes[0]) == {"MatMul": 1, "Add": 1, "Gelu": 1}
    assert expanded_ops(g.nodes[1]) == {"MatMul": 1}
    info = summarize(g).to_json({"batch": 3})
    assert info["ops"] == {"Linear": 2, "AddLayerNorm": 1}
    assert info["ops_expanded"] == {"MatMul": 2, "Add": 2, "Gelu": 1, "LayerNormalization": 1}
    # 2*K per output of each dense, + bias + GELU (8) per output of the first, 9 per AddLayerNorm output.
    assert info["flops"] == 3 * 4 * (2 * 6 + 1 + 8) + 3 * 4 * (2 * 4) + 3 * 4 * 9
