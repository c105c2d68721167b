"""Fusion rewrites (optc.passes.fusion): small hand-built graphs per pattern and spelling
(positive and negative cases), and — marked slow — the real models from the three import paths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optc.ir.folding import eliminate_dead_code, fold_graph
from optc.ir.analysis import summarize
from optc.ir.graph import Graph
from optc.ir.interpreter import run
from optc.ir.types import DType, TensorType
from optc.ir.verifier import verify
from fusion_models import check, ops
from optc.passes.fusion import ALL_FUSIONS, fuse_all, fuse_attention, fuse_gelu, fuse_layernorm, fuse_rmsnorm, fuse_silu

F32 = DType.FLOAT32
RNG = np.random.default_rng(0)


def c(g, x):
    return g.add_constant(np.asarray(x, dtype=np.float32))


def graph_x(shape=(2, 5, 8)):
    g = Graph()
    return g, g.add_input("x", TensorType(F32, shape))


# -- GELU --------------------------------------------------------------------------------------
def _gelu_erf(spelling):
    g, x = graph_x()
    if spelling == "div":  # TorchScript: (x * (1 + erf(x / sqrt2))) * 0.5
        e = g.op("Erf", g.op("Div", x, c(g, math.sqrt(2))))
        y = g.op("Mul", g.op("Mul", x, g.op("Add", e, c(g, [1.0]))), c(g, 0.5))
    elif spelling == "mul_half_first":  # (0.5 * x) * (1 + erf(x * 1/sqrt2))
        e = g.op("Erf", g.op("Mul", c(g, 1 / math.sqrt(2)), x))
        y = g.op("Mul", g.op("Mul", c(g, 0.5), x), g.op("Add", c(g, 1.0), e))
    else:  # x * ((1 + erf) / 2)
        e = g.op("Erf", g.op("Mul", x, c(g, 0.70710678)))
        y = g.op("Mul", x, g.op("Div", g.op("Add", e, c(g, 1.0)), c(g, 2.0)))
    g.set_outputs([y])
    return g


@pytest.mark.parametrize("spelling", ["div", "mul_half_first", "div_by_two"])
def test_gelu_erf_spellings(spelling):
    g = check(_gelu_erf(spelling), fuse_gelu, 1)
    assert ops(g) == {"Gelu": 1} and g.nodes[0].attrs["approximate"] == "none"
    assert g.output_names() == [g.nodes[0].output.name]


@pytest.mark.parametrize("cube", ["pow", "mul"])
def test_gelu_tanh(cube):
    g, x = graph_x()
    x3 = g.op("Pow", x, c(g, 3.0)) if cube == "pow" else g.op("Mul", x, g.op("Mul", x, x))
    inner = g.op("Mul", g.op("Add", x, g.op("Mul", x3, c(g, 0.044715))), c(g, math.sqrt(2 / math.pi)))
    y = g.op("Mul", g.op("Mul", x, c(g, 0.5)), g.op("Add", g.op("Tanh", inner), c(g, 1.0)))
    g.set_outputs([y])
    g = check(g, fuse_gelu, 1)
    assert ops(g) == {"Gelu": 1} and g.nodes[0].attrs["approximate"] == "tanh"


def test_gelu_wrong_constant_does_not_fuse():
    g, x = graph_x()
    e = g.op("Erf", g.op("Div", x, c(g, 1.5)))
    g.set_outputs([g.op("Mul", g.op("Mul", x, g.op("Add", e, c(g, 1.0))), c(g, 0.5))])
    check(g, fuse_gelu, 0)
    assert "Gelu" not in ops(g)


def test_gelu_other_x_does_not_fuse():
    g, x = graph_x()
    z = g.add_input("z", TensorType(F32, (2, 5, 8)))
    e = g.op("Erf", g.op("Div", x, c(g, math.sqrt(2))))
    g.set_outputs([g.op("Mul", g.op("Mul", z, g.op("Add", e, c(g, 1.0))), c(g, 0.5))])
    check(g, fuse_gelu, 0)


# -- SiLU --------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [0, 1])
def test_silu(order):
    g, x = graph_x()
    s = g.op("Sigmoid", x)
    g.set_outputs([g.op("Mul", *((x, s) if order else (s, x)))])
    g = check(g, fuse_silu, 1)
    assert ops(g) == {"Silu": 1}


def test_silu_other_operand_does_not_fuse():
    g, x = graph_x()
    z = g.add_input("z", TensorType(F32, (2, 5, 8)))
    g.set_outputs([g.op("Mul", z, g.op("Sigmoid", x))])
    check(g, fuse_silu, 0)


# -- RMSNorm -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["reciprocal", "div", "pow", "one_over", "no_weight"])
def test_rmsnorm(spelling):
    g, x = graph_x()
    axes = g.add_constant(np.array([-1], dtype=np.int64))
    sq = g.op("Mul", x, x) if spelling == "pow" else g.op("Pow", x, c(g, 2.0))
    e = g.op("Add", g.op("ReduceMean", sq, axes), c(g, 1e-6))
    if spelling == "div":
        n = g.op("Div", x, g.op("Sqrt", e))
    elif spelling == "pow":
        n = g.op("Mul", g.op("Pow", e, c(g, -0.5)), x)
    elif spelling == "one_over":
        n = g.op("Mul", x, g.op("Div", c(g, 1.0), g.op("Sqrt", e)))
    else:
        n = g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", e)))
    y = n if spelling == "no_weight" else g.op("Mul", c(g, RNG.standard_normal(8)), g.op("Cast", n, to=F32))
    g.set_outputs([y])
    g = check(g, fuse_rmsnorm, 1)
    assert ops(g) == {"RMSNormalization": 1}
    assert g.nodes[0].attrs["epsilon"] == pytest.approx(1e-6)


def test_rmsnorm_not_trailing_axis_does_not_fuse():
    g, x = graph_x()
    axes = g.add_constant(np.array([1], dtype=np.int64))
    e = g.op("Add", g.op("ReduceMean", g.op("Pow", x, c(g, 2.0)), axes), c(g, 1e-6))
    g.set_outputs([g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", e)))])
    check(g, fuse_rmsnorm, 0)


# -- LayerNorm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["div", "reciprocal", "mul_sq", "no_affine"])
def test_layernorm(spelling):
    g, x = graph_x()
    axes = g.add_constant(np.array([-1], dtype=np.int64))
    d = g.op("Sub", x, g.op("ReduceMean", x, axes))
    sq = g.op("Mul", d, d) if spelling == "mul_sq" else g.op("Pow", d, c(g, 2.0))
    e = g.op("Add", c(g, 1e-5), g.op("ReduceMean", sq, axes))
    if spelling == "reciprocal":
        n = g.op("Mul", g.op("Reciprocal", g.op("Sqrt", e)), d)
    else:
        n = g.op("Div", d, g.op("Sqrt", e))
    y = n if spelling == "no_affine" else g.op("Add", c(g, RNG.standard_normal(8)), g.op("Mul", n, c(g, RNG.standard_normal(8))))
    g.set_outputs([y])
    g = check(g, fuse_layernorm, 1)
    assert ops(g) == {"LayerNormalization": 1}


def test_layernorm_mismatched_means_do_not_fuse():
    g, x = graph_x((2, 5, 8))
    a1, a2 = g.add_constant(np.array([-1], dtype=np.int64)), g.add_constant(np.array([1], dtype=np.int64))
    d = g.op("Sub", x, g.op("ReduceMean", x, a1))
    e = g.op("Add", g.op("ReduceMean", g.op("Pow", d, c(g, 2.0)), a2), c(g, 1e-5))
    g.set_outputs([g.op("Div", d, g.op("Sqrt", e))])
    check(g, fuse_layernorm, 0)


# -- Attention ---------------------------------------------------------------------------------
B, H, S, D = 2, 4, 6, 8


def _attn_graph(*, k_layout="transpose", scale="scores_div", mask=None, axis=-1, guard=False, kv_heads=H,
                gqa=False, scale_input=False):
    g = Graph()
    q = g.add_input("q", TensorType(F32, (B, H, S, D)))
    kh = kv_heads
    if k_layout == "pre_transposed":
        kt = g.add_input("kt", TensorType(F32, (B, kh, D, S)))
        k = None
    elif k_layout == "bshd":  # K before its head transpose: Transpose(perm 0,2,3,1) gives Kᵀ
        kx = g.add_input("k", TensorType(F32, (B, S, kh, D)))
        k = None
        kt = g.op("Transpose", kx, perm=[0, 2, 3, 1])
    else:
        k = g.add_input("k", TensorType(F32, (B, kh, S, D)))
    v = g.add_input("v", TensorType(F32, (B, kh, S, D)))
    if gqa:
        n = H // kh

        def rep(t):
            u = g.op("Unsqueeze", t, g.add_constant(np.array([2], dtype=np.int64)))
            e = g.op("Expand", u, g.add_constant(np.array([B, kh, n, S, D], dtype=np.int64)))
            return g.op("Reshape", e, g.add_constant(np.array([B, H, S, D], dtype=np.int64)))
        k, v = rep(k), rep(v)
    if k_layout == "transpose":
        kt = g.op("Transpose", k, perm=[0, 1, 3, 2])
    elif k_layout == "dynamo":
        r1 = g.op("Reshape", k, g.add_constant(np.array([B * H, S, D], dtype=np.int64)))
        kt = g.op("Reshape", g.op("Transpose", r1, perm=[0, 2, 1]), g.add_constant(np.array([B, H, D, S], dtype=np.int64)))
    s_in = None
    if scale == "qk_sqrt":
        r = c(g, (1 / math.sqrt(D)) ** 0.5)
        scores = g.op("MatMul", g.op("Mul", q, r), g.op("Mul", kt, r))
    else:
        scores = g.op("MatMul", q, kt)
        if scale == "scores_div":
            scores = g.op("Div", scores, c(g, math.sqrt(D)))
        elif scale == "scores_mul":
            scores = g.op("Mul", c(g, 1 / math.sqrt(D)), scores)
        elif scale == "input":
            s_in = g.add_input("s", TensorType(F32, ()))
            scores = g.op("Mul", scores, s_in)
    if mask == "float":
        m = g.add_input("m", TensorType(F32, (B, 1, 1, S)))
        scores = g.op("Add", m, scores)
    elif mask == "bool":
        m = g.add_input("m", TensorType(DType.BOOL, (B, 1, S, S)))
        scores = g.op("Where", m, scores, c(g, -np.inf))
    elif mask in ("causal_const", "causal_bool"):
        tril = np.tril(np.ones((S, S), dtype=bool))
        if mask == "causal_bool":
            scores = g.op("Where", g.add_constant(tril), scores, c(g, [-np.inf]))
        else:
            scores = g.op("Add", scores, c(g, np.where(tril, 0.0, -np.inf)[None, None]))
    p = g.op("Softmax", scores, axis=axis)
    if guard:
        p = g.op("Where", g.op("IsNaN", p), c(g, [0.0]), p)
    g.set_outputs([g.op("MatMul", p, v)])
    feed = {x.name: RNG.standard_normal(x.shape).astype(np.float32) for x in g.inputs if x.dtype == F32}
    if "m" in feed and mask == "float":
        feed["m"] = np.where(RNG.random((B, 1, 1, S)) < 0.3, -np.inf, 0.0).astype(np.float32)
        feed["m"][:, ..., 0] = 0.0
    if mask == "bool":
        mm = RNG.random((B, 1, S, S)) < 0.7
        mm[..., 0] = True
        feed["m"] = mm
    if s_in is not None:
        feed["s"] = np.float32(0.3)
    return g, feed


@pytest.mark.parametrize("k_layout", ["transpose", "dynamo", "bshd", "pre_transposed"])
@pytest.mark.parametrize("scale", ["scores_div", "scores_mul", "qk_sqrt", "none"])
def test_attention_layouts_and_scales(k_layout, scale):
    g, feed = _attn_graph(k_layout=k_layout, scale=scale)
    g = check(g, fuse_attention, 1, feed)
    att = [n for n in g.nodes if n.op == "Attention"]
    assert len(att) == 1 and "Softmax" not in ops(g) and ops(g)["MatMul"] == 0
    want = 1.0 if scale == "none" else 1 / math.sqrt(D)
    assert att[0].attrs["scale"] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("mask", ["float", "bool"])
@pytest.mark.parametrize("guard", [False, True])
def test_attention_masks(mask, guard):
    g, feed = _attn_graph(mask=mask, guard=guard)
    g = check(g, fuse_attention, 1, feed)
    att = next(n for n in g.nodes if n.op == "Attention")
    assert att.input(3) is not None and att.attrs["is_causal"] == 0
    assert not {"Softmax", "IsNaN", "Where"} & set(ops(g))


@pytest.mark.parametrize("mask", ["causal_const", "causal_bool"])
def test_attention_constant_causal_mask_becomes_is_causal(mask):
    g, feed = _attn_graph(mask=mask)
    g = check(g, fuse_attention, 1, feed)
    att = next(n for n in g.nodes if n.op == "Attention")
    assert att.attrs["is_causal"] == 1 and att.input(3) is None


def test_attention_gqa_feeds_unrepeated_kv():
    g, feed = _attn_graph(kv_heads=2, gqa=True, mask="float", guard=True)
    g = check(g, fuse_attention, 1, feed)
    att = next(n for n in g.nodes if n.op == "Attention")
    assert att.input(1).shape[1] == 2 and att.input(2).shape[1] == 2
    assert "Expand" not in ops(g)


def test_attention_softmax_other_axis_does_not_fuse():
    g, feed = _attn_graph(axis=2)
    check(g, fuse_attention, 0, feed)
    assert "Softmax" in ops(g)


def test_attention_non_constant_scale_does_not_fuse():
    g, feed = _attn_graph(scale="input")
    check(g, fuse_attention, 0, feed)


def test_attention_probabilities_used_elsewhere_do_not_fuse():
    g, feed = _attn_graph()
    p = next(n for n in g.nodes if n.op == "Softmax").output
    g.set_outputs(list(g.outputs) + [p])
    check(g, fuse_attention, 0, feed)


def test_all_fusions_are_listed_in_order():
    assert [f.__name__ for f in ALL_FUSIONS] == [
        "fuse_attention", "fuse_layernorm", "fuse_rmsnorm", "fuse_gelu", "fuse_silu", "fuse_rotary",
        "fuse_residual_layernorm", "fuse_linear", "fuse_conv_bn", "fuse_conv_bias_relu"]


# -- the rewriter: every fusion says why a candidate did not fuse --------------------------------
def test_explain_fusions_names_each_missed_anchor_and_why():
    """A GELU with the wrong constant, a sigmoid gating another tensor and a softmax whose
    probabilities are a graph output: each rule reports the anchor and a readable reason; what
    did fuse is counted; the graph keeps its output names."""
    from optc.passes.fusion import explain_fusions

    g, x = graph_x()
    z = g.add_input("z", TensorType(F32, (2, 5, 8)))
    e = g.op("Erf", g.op("Div", x, c(g, 1.5)))
    bad_gelu = g.op("Mul", g.op("Mul", x, g.op("Add", e, c(g, 1.0))), c(g, 0.5))
    gated = g.op("Mul", z, g.op("Sigmoid", x))
    silu = g.op("Mul", z, g.op("Sigmoid", z))
    g.set_outputs([bad_gelu, gated, silu])
    names = g.output_names()
    got = {o.rule: o for o in explain_fusions(g)}
    assert got["gelu"].matched == 0 and [m["op"] for m in got["gelu"].misses] == ["Erf"]
    assert "erf's argument is x * 0.666667, not x / sqrt(2)" == got["gelu"].misses[0]["reason"]
    assert got["silu"].matched == 1 and len(got["silu"].misses) == 1
    assert got["silu"].misses[0]["reason"] == "not multiplied by its own input (x * sigmoid(x))"
    assert g.output_names() == names and ops(g)["Silu"] == 1


def test_explain_fusion_cli(tmp_path):
    """``optc inspect --explain-fusion``: per rule what fused, and grouped reasons for the rest."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"), helper.make_node("Mul", ["s", "x"], ["a"], name="m"),
             helper.make_node("Mul", ["a", "x"], ["b"], name="m2"), helper.make_node("Sigmoid", ["b"], ["t"], name="sig2"),
             helper.make_node("Mul", ["t", "x"], ["y"], name="m3")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "m.onnx")
    r = subprocess.run([sys.executable, "-m", "optc.cli", "inspect", "--explain-fusion", str(tmp_path / "m.onnx")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "silu: 1 fused, 1 not" in r.stdout
    assert "  not multiplied by its own input (x * sigmoid(x)): Sigmoid sig2" in r.stdout
    r = subprocess.run([sys.executable, "-m", "optc.cli", "inspect", "--explain-fusion", "--passes", "default",
                        str(tmp_path / "m.onnx")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "leave out --passes" in r.stderr


# -- real models × three import paths (slow) -----------------------------------------------------
PATHS = ["torch.export", "onnx-torchscript", "onnx-dynamo"]
# Ops after fusion. Residual adds and layer norms become AddLayerNorm (MiniLM's embedding
# LayerNorm too: its input is the sum of two embedding lookups), every dense layer a Linear
# (MiniLM: 36 in the encoder + the pooler's), with GELU/SiLU as its activation.
EXPECTED = {
    "minilm": {"Attention": 6, "AddLayerNorm": 13, "Linear": 37},
    "gpt2": {"Attention": 2, "AddLayerNorm": 5, "Linear": 8},
    "llama_gqa": {"Attention": 2, "RMSNormalization": 5, "Linear": 14},
}
# The same counted as the standard ops the fused nodes stand for (ir.analysis.expanded_ops):
# the "13 LayerNorm, 6 GELU" for MiniLM still reads off the fused graph.
EXPECTED_EXPANDED = {
    "minilm": {"Attention": 6, "LayerNormalization": 13, "Gelu": 6, "MatMul": 37},
    "gpt2": {"Attention": 2, "LayerNormalization": 5, "Gelu": 2, "MatMul": 8},
    "llama_gqa": {"Attention": 2, "RMSNormalization": 5, "Silu": 2, "MatMul": 14},
}
GONE = ("Softmax", "Erf", "ReduceMean", "Sigmoid", "IsNaN", "MatMul", "Gemm", "Gelu", "Silu", "LayerNormalization")


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_models_fuse(name, path, tmp_path):
    import models
    from optc import zoo
    from optc.frontend.onnx_import import import_onnx
    from optc.frontend.pytorch import export_module

    build = {"minilm": models.minilm, "gpt2": models.gpt2_small, "llama_gqa": models.llama_gqa_small}[name]
    outs = ["last_hidden_state", "pooler_output"] if name == "minilm" else ["last_hidden_state"]
    model, inputs = build()
    if path == "torch.export":
        graph = export_module(model, (), dict(inputs), dynamic_shapes=zoo.dynamic_dims(inputs))
    else:
        f = zoo.export_onnx(model, inputs, tmp_path / "model.onnx", dynamo=path == "onnx-dynamo", output_names=outs)
        graph = import_onnx(f)
    feed = {k: v.numpy() for k, v in inputs.items()}
    feed = {k: feed[k] for k in graph.input_names()}
    ref = run(graph, feed)
    fold_graph(graph)
    fuse_all(graph)
    fold_graph(graph)
    eliminate_dead_code(graph)
    verify(graph)
    counts = ops(graph)
    for op, n in EXPECTED[name].items():
        assert counts[op] == n, f"{op}: {counts[op]} (want {n})"
    assert not [op for op in GONE if counts[op]], counts
    expanded = summarize(graph).ops_expanded
    for op, n in EXPECTED_EXPANDED[name].items():
        assert expanded.get(op) == n, f"{op} (expanded): {expanded.get(op)} (want {n})"
    # Every attention block fused and every dense layer a Linear with a constant 2-D weight.
    assert all(n.input(1).is_constant and n.input(1).type.rank == 2 for n in graph.nodes if n.op == "Linear")
    # Pre-LN GPT-2 keeps the residual stream: all but the final norm also output the sum.
    with_sum = sum(len(n.outputs) == 2 for n in graph.nodes if n.op == "AddLayerNorm")
    assert with_sum == {"minilm": 0, "gpt2": 4, "llama_gqa": 0}[name]
    got = run(graph, feed)
    assert graph.output_names() == list(ref)
    for k in ref:
        err = float(np.abs(got[k] - ref[k]).max())
        assert err <= 1e-4, f"{k}: max abs error {err:.2e}"
