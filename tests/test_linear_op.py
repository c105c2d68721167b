"""The composite ``Linear`` op (ir/ops/nn.py): schema checks and the interpreter kernel against
numpy. The fusion that creates it is tested in tests/test_fusion_linear.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optc.ir import DType, Graph, IRError, TensorType
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
