"""fuse_linear (passes/fusion/linear.py): MatMul/Gemm + bias + activation → Linear. Hand-built
spellings (positive and negative), the test models through the three export paths (slow), the
compiled kernel and the ONNX export of Linear."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fusion_models import PATHS, assert_outputs_close, check, cleaned, ops
from optc.frontend.onnx_export import to_onnx
from optc.ir.graph import Graph
from optc.ir.interpreter import run
from optc.ir.types import DType, TensorType
from optc.passes.fusion import fuse_gelu, fuse_linear, fuse_silu

F32 = DType.FLOAT32
RNG = np.random.default_rng(3)
K, N = 8, 6


def c(g, x):
    return g.add_constant(np.asarray(x, dtype=np.float32))


def weight(g, shape=(K, N)):
    return c(g, RNG.standard_normal(shape))


def graph_x(shape=(2, 5, K)):
    g = Graph()
    return g, g.add_input("x", TensorType(F32, shape))


def linear_nodes(g):
    return [n for n in g.nodes if n.op == "Linear"]


# -- positive spellings ------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["mm_first", "bias_first"])
@pytest.mark.parametrize("bias_shape", [(N,), (1, 1, N), (1,)])
def test_matmul_bias(order, bias_shape):
    g, x = graph_x()
    mm, b = g.op("MatMul", x, weight(g)), c(g, RNG.standard_normal(bias_shape))
    g.set_outputs([g.op("Add", mm, b) if order == "mm_first" else g.op("Add", b, mm)])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1}
    lin = g.nodes[0]
    assert lin.input(2).shape == (N,) and lin.input(1).is_constant and lin.attrs["activation"] == "none"
    assert g.output_names() == [lin.output.name]


@pytest.mark.parametrize("act,attrs,want", [
    ("Relu", {}, "relu"), ("Gelu", {}, "gelu"), ("Gelu", {"approximate": "tanh"}, "gelu_tanh"), ("Silu", {}, "silu")])
def test_bias_and_activation(act, attrs, want):
    g, x = graph_x()
    y = g.op("Add", g.op("MatMul", x, weight(g)), c(g, RNG.standard_normal(N)))
    g.set_outputs([g.add_node(act, [y], attrs).output])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1} and g.nodes[0].attrs["activation"] == want


def test_activation_without_bias_and_2d_input():
    g, x = graph_x((4, K))
    g.set_outputs([g.op("Relu", g.op("MatMul", x, weight(g)))])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1} and g.nodes[0].input(2) is None and g.nodes[0].attrs["activation"] == "relu"


def test_after_gelu_and_silu_fusions_picks_up_their_ops():
    """The decomposed GELU / SiLU first become Gelu / Silu, which linear then absorbs."""
    import math

    g, x = graph_x()
    h = g.op("Add", g.op("MatMul", x, weight(g)), c(g, RNG.standard_normal(N)))
    gelu = g.op("Mul", g.op("Mul", h, g.op("Add", g.op("Erf", g.op("Div", h, c(g, math.sqrt(2)))), c(g, 1.0))), c(g, 0.5))
    h2 = g.op("MatMul", gelu, weight(g, (N, N)))
    g.set_outputs([g.op("Mul", h2, g.op("Sigmoid", h2))])
    check(g, lambda g: fuse_gelu(g) + fuse_silu(g), 2)
    g = check(g, fuse_linear, 2)
    assert [n.attrs["activation"] for n in g.nodes] == ["gelu", "silu"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("c_shape", [None, (N,), (1, N)])
def test_gemm(trans_b, alpha, beta, c_shape):
    g, x = graph_x((4, K))
    w = weight(g, (N, K) if trans_b else (K, N))
    ins = [x, w] + ([c(g, RNG.standard_normal(c_shape))] if c_shape else [])
    y = g.add_node("Gemm", ins, {"transB": trans_b, "alpha": alpha, "beta": beta}).output
    g.set_outputs([g.op("Relu", y)])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1}
    lin = g.nodes[0]
    assert lin.input(1).shape == (K, N) and lin.attrs["activation"] == "relu"
    assert (lin.input(2) is not None) == (c_shape is not None)


def test_gemm_without_c_takes_a_following_bias_add():
    g, x = graph_x((4, K))
    y = g.add_node("Gemm", [x, weight(g, (N, K))], {"transB": 1}).output
    g.set_outputs([g.op("Add", y, c(g, RNG.standard_normal(N)))])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1} and g.nodes[0].input(2) is not None


def test_shared_transposed_weight_is_transposed_once():
    g, x = graph_x((4, K))
    w = weight(g, (N, K))
    y1 = g.add_node("Gemm", [x, w], {"transB": 1}).output
    y2 = g.add_node("Gemm", [x, w], {"transB": 1}).output
    g.set_outputs([y1, y2])
    g = check(g, fuse_linear, 2)
    a, b = linear_nodes(g)
    assert a.input(1) is b.input(1)


def test_activation_behind_reshape_gpt2_addmm():
    """GPT-2's Conv1D: view to 2-D, addmm, view back, then gelu: the Gelu moves into the Linear."""
    g, x = graph_x((2, 5, K))
    flat = g.op("Reshape", x, g.add_constant(np.array([-1, K], np.int64)))
    y = g.add_node("Gemm", [flat, weight(g), c(g, RNG.standard_normal(N))]).output
    y = g.op("Reshape", y, g.add_constant(np.array([2, 5, N], np.int64)))
    g.set_outputs([g.add_node("Gelu", [y], {"approximate": "tanh"}).output])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Reshape": 2, "Linear": 1}
    assert linear_nodes(g)[0].attrs["activation"] == "gelu_tanh"
    assert g.outputs[0].producer.op == "Reshape"


# -- negative cases ----------------------------------------------------------------------------
def test_matmul_of_two_activations_does_not_fuse():
    """Attention scores: Q @ Kᵀ has no weight."""
    g = Graph()
    q = g.add_input("q", TensorType(F32, (2, 5, K)))
    k = g.add_input("k", TensorType(F32, (2, K, 5)))
    g.set_outputs([g.op("Add", g.op("MatMul", q, k), c(g, 1.0))])
    check(g, fuse_linear, 0)


def test_non_constant_2d_weight_does_not_fuse():
    g, x = graph_x()
    w = g.add_input("w", TensorType(F32, (K, N)))
    g.set_outputs([g.op("Relu", g.op("MatMul", x, w))])
    check(g, fuse_linear, 0)


def test_batched_constant_weight_does_not_fuse():
    g, x = graph_x()
    g.set_outputs([g.op("MatMul", x, weight(g, (2, K, N)))])
    check(g, fuse_linear, 0)


@pytest.mark.parametrize("bias_shape", [(5, N), (5, 1), (1, 1, 1, N)])
def test_bias_with_wrong_shape_stays_an_add(bias_shape):
    """A per-row bias, a column vector, or one that grows the rank is not a [N] bias: the
    MatMul still becomes a Linear, the Add stays."""
    g, x = graph_x()
    g.set_outputs([g.op("Add", g.op("MatMul", x, weight(g)), c(g, RNG.standard_normal(bias_shape)))])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1, "Add": 1} and g.nodes[0].input(2) is None


def test_non_constant_bias_stays_an_add():
    g, x = graph_x()
    b = g.add_input("b", TensorType(F32, (N,)))
    g.set_outputs([g.op("Relu", g.op("Add", g.op("MatMul", x, weight(g)), b))])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1, "Add": 1, "Relu": 1}


def test_intermediate_used_elsewhere_is_not_absorbed():
    """The pre-activation value is also an output: absorbing Relu would compute it twice."""
    g, x = graph_x()
    y = g.op("Add", g.op("MatMul", x, weight(g)), c(g, RNG.standard_normal(N)))
    g.set_outputs([g.op("Relu", y), y])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1, "Relu": 1} and g.nodes[0].attrs["activation"] == "none"


def test_matmul_output_used_twice_keeps_bias_add():
    g, x = graph_x()
    mm = g.op("MatMul", x, weight(g))
    g.set_outputs([g.op("Add", mm, c(g, RNG.standard_normal(N))), g.op("Neg", mm)])
    g = check(g, fuse_linear, 1)
    assert ops(g) == {"Linear": 1, "Add": 1, "Neg": 1}


@pytest.mark.parametrize("case", ["transA", "row_c"])
def test_gemm_that_is_not_a_dense_layer_does_not_fuse(case):
    g = Graph()
    if case == "transA":
        x = g.add_input("x", TensorType(F32, (K, 4)))
        y = g.add_node("Gemm", [x, weight(g)], {"transA": 1}).output
    else:
        x = g.add_input("x", TensorType(F32, (4, K)))
        y = g.add_node("Gemm", [x, weight(g), c(g, RNG.standard_normal((4, N)))]).output
    g.set_outputs([y])
    check(g, fuse_linear, 0)


# -- real models x three import paths (slow) -----------------------------------------------------
# (Linear count, Linear per activation): MiniLM's 36 encoder layers + the pooler's Gemm (its
# Tanh stays outside), 6 with the GELU; GPT-2's Conv1D addmm's with gelu_tanh behind a view;
# Llama's gate projections with the SiLU.
REAL = {
    "minilm": (37, {"none": 31, "gelu": 6}),
    "gpt2": (8, {"none": 6, "gelu_tanh": 2}),
    "llama_gqa": (14, {"none": 12, "silu": 2}),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(REAL))
def test_real_models(name, path, tmp_path_factory):
    graph, feed, ref = cleaned(name, path, tmp_path_factory, upto="linear")
    assert fuse_linear(graph) == REAL[name][0]
    lin = linear_nodes(graph)
    acts = {}
    for n in lin:
        acts[n.attrs["activation"]] = acts.get(n.attrs["activation"], 0) + 1
    assert acts == REAL[name][1]
    counts = ops(graph)
    assert not counts["MatMul"] and not counts["Gemm"] and not counts["Gelu"] and not counts["Silu"], counts
    assert all(n.input(1).is_constant for n in lin)
    assert_outputs_close(graph, feed, ref)


# -- compiled kernel and ONNX export -------------------------------------------------------------
def _all_activations():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, "seq", K)))
    outs = []
    for act in ["none", "relu", "gelu", "gelu_tanh", "silu"]:
        outs.append(g.add_node("Linear", [x, weight(g), c(g, RNG.standard_normal(N))], {"activation": act}).output)
    outs.append(g.add_node("Linear", [x, weight(g)], {"activation": "relu"}).output)
    g.set_outputs(outs)
    return g


def test_compiled_linear_uses_the_dense_kernel():
    from optc.codegen.build import build

    g = _all_activations()
    cm = build(g, "x86")
    assert not cm.fallback_funcs and not cm.unscheduled
    model = cm.load()
    for seq in (3, 7):
        feed = {"x": RNG.standard_normal((2, seq, K)).astype(np.float32)}
        ref, got = run(g, feed), model.run(feed)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


def test_onnx_export_decomposes_and_runs_in_onnxruntime():
    g = _all_activations()
    m = to_onnx(g)
    assert {n.op_type for n in m.graph.node} == {"MatMul", "Add", "Relu", "Gelu", "Sigmoid", "Mul"}
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": RNG.standard_normal((2, 5, K)).astype(np.float32)}
    ref = run(g, feed)
    for arr, name in zip(sess.run(None, feed), g.output_names()):
        np.testing.assert_allclose(arr, ref[name], rtol=1e-5, atol=1e-5)
