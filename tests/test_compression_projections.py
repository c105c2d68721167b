"""The projection view (Linear / MatMul+Add / Gemm) and calibration activations that the
compression passes rewrite through."""

import numpy as np
import pytest

from optc.ir import Graph
from optc.ir.interpreter import Interpreter
from optc.ir.types import DType, TensorType
from optc.passes.compression.activations import capture, input_gram, rows
from optc.passes.compression.projections import find_projections, producer_projection, replace_weight

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 4)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)


def _graph(kind: str) -> Graph:
    g = Graph(kind)
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", "seq", 6)))
    if kind == "linear":
        y = g.op("Linear", x, g.add_constant(W, "w"), g.add_constant(B, "b"), activation="relu")
    elif kind == "matmul_add":
        y = g.op("Add", g.add_constant(B, "b"), g.op("MatMul", x, g.add_constant(W, "w")))
    else:  # gemm on 2-D rows, weight stored transposed, alpha/beta not 1
        flat = g.op("Reshape", x, g.add_constant(np.array([-1, 6], np.int64), "flat"))
        y = g.op("Gemm", flat, g.add_constant(np.ascontiguousarray(W.T / 2), "w"), g.add_constant(B / 4, "b"),
                 transB=1, alpha=2.0, beta=4.0)
    g.set_outputs([y])
    return g


@pytest.mark.parametrize("kind", ["linear", "matmul_add", "gemm"])
def test_projection_view_and_weight_replacement(kind):
    g = _graph(kind)
    (p,) = find_projections(g)
    np.testing.assert_allclose(p.matrix(), W, rtol=1e-6)
    np.testing.assert_allclose(p.bias_vector(), B, rtol=1e-6)
    assert (p.in_features, p.out_features) == (6, 4)
    assert producer_projection(g.outputs[0]).node is p.node

    x = {"x": RNG.standard_normal((2, 3, 6)).astype(np.float32)}
    keep = [0, 2]
    p2 = replace_weight(g, p, p.matrix()[:, keep], p.bias_vector()[keep])
    g.infer_types()
    assert p2.out_features == 2 and p2.weight.name == "w"
    y = Interpreter(g)(x)[g.output_names()[0]]
    ref = x["x"].reshape(-1, 6) @ W[:, keep] + B[keep]
    if kind == "linear":
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(y.reshape(-1, 2), ref, rtol=1e-5, atol=1e-5)


def test_matmul_of_two_activations_is_not_a_projection():
    g = Graph("g")
    a = g.add_input("a", TensorType(DType.FLOAT32, (3, 4)))
    b = g.add_input("b", TensorType(DType.FLOAT32, (4, 5)))
    g.set_outputs([g.op("MatMul", a, b)])
    assert find_projections(g) == []


def test_activations_drop_padded_positions():
    g = _graph("matmul_add")
    g.add_input("attention_mask", TensorType(DType.INT64, ("batch", "seq")))
    feed = {"x": RNG.standard_normal((2, 3, 6)).astype(np.float32),
            "attention_mask": np.array([[1, 1, 0], [1, 0, 0]], np.int64)}
    (values,) = capture(g, ["x"], [feed])
    assert rows(values["x"], feed).shape == (3, 6)
    gram, count = input_gram(g, ["x"], [feed])["x"]
    kept = feed["x"][feed["attention_mask"] > 0].astype(np.float64)
    assert count == 3
    np.testing.assert_allclose(gram, kept.T @ kept, rtol=1e-10)
