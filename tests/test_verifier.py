"""The IR verifier: valid graphs pass (fast), and every kind of corruption is caught and named."""

from __future__ import annotations


import numpy as np
import pytest

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.graph import Value
from optc.ir.text import elided_weights, parse_graph, print_graph
from optc.ir.verifier import problems, verify

F32 = DType.FLOAT32
I64 = DType.INT64


# -- graphs ---------------------------------------------------------------------------------------
def bert_like(layers: int = 6, hidden: int = 384, heads: int = 12, ffn: int = 1536, seed: int = 0) -> Graph:
    """A BERT encoder spelled the way the TorchScript ONNX exporter spells it: Shape → Gather →
    Unsqueeze → Concat → Reshape chains, decomposed LayerNorm and erf GELU. Six layers of
    MiniLM's size come to about 1000 nodes."""
    rng = np.random.default_rng(seed)
    g = Graph("bert")
    g.metadata["producer"] = "test"
    hd = hidden // heads

    def w(*shape):
        return g.add_constant((rng.standard_normal(shape) * 0.02).astype(np.float32))

    def i64(*vals):
        return g.add_constant(np.array(vals, np.int64))

    def scalar(v):
        return g.add_constant(np.array(v, np.float32))

    ids = g.add_input("input_ids", TensorType(I64, ("batch", "seq")))
    mask = g.add_input("attention_mask", TensorType(I64, ("batch", "seq")))
    emb = g.op("Gather", w(1000, hidden), ids)
    m = g.op("Unsqueeze", g.op("Unsqueeze", mask, i64(1)), i64(2))
    m = g.op("Mul", g.op("Sub", scalar(1.0), g.op("Cast", m, to=F32)), scalar(-10000.0))

    def layernorm(x):
        mean = g.op("ReduceMean", x, i64(-1))
        d = g.op("Sub", x, mean)
        var = g.op("ReduceMean", g.op("Pow", d, scalar(2.0)), i64(-1))
        y = g.op("Div", d, g.op("Sqrt", g.op("Add", var, scalar(1e-12))))
        return g.op("Add", g.op("Mul", y, w(hidden)), w(hidden))

    def split_heads(x):
        shp = g.op("Shape", x)
        b = g.op("Unsqueeze", g.op("Gather", shp, g.add_constant(np.array(0))), i64(0))
        s = g.op("Unsqueeze", g.op("Gather", shp, g.add_constant(np.array(1))), i64(0))
        target = g.op("Concat", b, s, i64(heads), i64(hd), axis=0)
        return g.op("Transpose", g.op("Reshape", x, target), perm=(0, 2, 1, 3))

    x = layernorm(emb)
    for _ in range(layers):
        q = split_heads(g.op("Add", g.op("MatMul", x, w(hidden, hidden)), w(hidden)))
        k = split_heads(g.op("Add", g.op("MatMul", x, w(hidden, hidden)), w(hidden)))
        v = split_heads(g.op("Add", g.op("MatMul", x, w(hidden, hidden)), w(hidden)))
        kt = g.op("Transpose", k, perm=(0, 1, 3, 2))
        scores = g.op("Add", g.op("Div", g.op("MatMul", q, kt), scalar(float(np.sqrt(hd)))), m)
        ctx = g.op("Transpose", g.op("MatMul", g.op("Softmax", scores, axis=-1), v), perm=(0, 2, 1, 3))
        shp = g.op("Shape", ctx)
        b = g.op("Unsqueeze", g.op("Gather", shp, g.add_constant(np.array(0))), i64(0))
        s = g.op("Unsqueeze", g.op("Gather", shp, g.add_constant(np.array(1))), i64(0))
        ctx = g.op("Reshape", ctx, g.op("Concat", b, s, i64(hidden), axis=0))
        attn = g.op("Add", g.op("MatMul", ctx, w(hidden, hidden)), w(hidden))
        x = layernorm(g.op("Add", attn, x))
        h = g.op("Add", g.op("MatMul", x, w(hidden, ffn)), w(ffn))
        h = g.op("Mul", g.op("Mul", h, g.op("Add", g.op("Erf", g.op("Div", h, scalar(1.4142135))), scalar(1.0))), scalar(0.5))
        h = g.op("Add", g.op("MatMul", h, w(ffn, hidden)), w(hidden))
        x = layernorm(g.op("Add", h, x))
    pooled = g.op("Tanh", g.op("Gemm", g.op("Gather", x, g.add_constant(np.array(0)), axis=1), w(hidden, hidden), w(hidden)))
    g.set_outputs([x, pooled])
    return g


def small_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("batch", 8)))
    wt = g.add_constant(np.ones((8, 6), np.float32), "w")
    y = g.add_node("MatMul", [x, wt], name="mm", output_names=["y"]).output
    a, b = g.add_node("Split", [y], {"axis": 1}, num_outputs=2, name="split", output_names=["a", "b"]).outputs
    r = g.add_node("Relu", [a], name="relu", output_names=["r"]).output
    c = g.add_node("Concat", [r, b], {"axis": 1}, name="cat", output_names=["c"]).output
    s = g.add_node("Softmax", [c], name="softmax", output_names=["s"]).output
    g.set_outputs([s, b])
    return g


def problems_of(g: Graph) -> str:
    with pytest.raises(IRError) as e:
        verify(g)
    return str(e.value)


# -- valid graphs ---------------------------------------------------------------------------------
def test_valid_graphs_pass():
    verify(small_graph())
    verify(Graph())
    g = small_graph()
    g.nodes[2].output.type = TensorType(F32, (None, 3))  # less precise than inference: still valid
    verify(g)
    verify(g.clone())


def test_bert_sized_graph_verifies():
    g = bert_like(layers=14)
    assert len(g.nodes) >= 1000
    verify(g)
    verify(g.clone())


def test_text_roundtrip_of_bert_sized_graph_verifies():
    g = bert_like(layers=2)
    text = print_graph(g)
    h = parse_graph(text, elided_weights(g))
    verify(h)
    assert print_graph(h) == text
    assert "Reshape(" in text and "f32[batch, 12, seq, 32]" in text


# -- corruption -----------------------------------------------------------------------------------
def node(g: Graph, name: str):
    return next(n for n in g.nodes if n.name == name)


def test_unknown_op():
    g = small_graph()
    node(g, "relu").op = "Bogus"
    assert "node relu (Bogus): unknown op 'Bogus'" in problems_of(g)


def test_input_appended_bypassing_set_input():
    g = small_graph()
    relu = node(g, "relu")
    relu._inputs.append(g.value("x"))
    msg = problems_of(g)
    assert "node relu (Relu): takes 1..1 inputs, has 2" in msg
    assert "value %x misses the use by relu input 1" in msg


def test_required_input_absent():
    g = small_graph()
    mm = node(g, "mm")
    mm.set_input(0, None)
    assert "node mm (MatMul): takes 2..2 inputs" not in problems_of(g)
    assert "required input 0 (A) is absent" in problems_of(g)


def test_output_count():
    g = small_graph()
    relu = node(g, "relu")
    relu.outputs.append(Value(g, "extra", TensorType(F32, None), producer=relu))
    assert "node relu (Relu): cannot have 2 outputs" in problems_of(g)


@pytest.mark.parametrize("poke, expected", [
    (lambda n: n.attrs.__setitem__("bogus", 1), "Concat has no attribute 'bogus'"),
    (lambda n: n.attrs.__setitem__("axis", "one"), "attribute 'axis' of Concat: expected int"),
    (lambda n: n.attrs.pop("axis"), "Concat needs attribute 'axis'"),
    (lambda n: n.attrs.__setitem__("axis", 5), "type inference fails: axis 5 is out of range for rank 2"),
])
def test_attributes(poke, expected):
    g = small_graph()
    poke(node(g, "cat"))
    msg = problems_of(g)
    assert "node cat (Concat)" in msg and expected in msg, msg


def test_changed_output_type():
    g = small_graph()
    g.value("r").type = TensorType(DType.FLOAT16, ("batch", 3))
    msg = problems_of(g)
    assert "node relu (Relu): output 0 %r has type f16[batch, 3], inference gives f32[batch, 3]" in msg
    g = small_graph()
    g.value("y").type = TensorType(F32, ("batch", 7))
    assert "node mm (MatMul): output 0 %y has type f32[batch, 7], inference gives f32[batch, 6]" in problems_of(g)


def test_constant_type_must_match_array():
    g = small_graph()
    g.constants["w"].type = TensorType(F32, (8, 7))
    assert "constant %w has type f32[8, 7] but its array is f32[8, 6]" in problems_of(g)
    g = small_graph()
    g.constants["w"].const = np.ones((8, 6), np.float64)
    assert "its array is f64[8, 6]" in problems_of(g)
    g = small_graph()
    g.constants["w2"] = g.constants.pop("w")
    assert "registered under the name 'w2'" in problems_of(g)


def test_nodes_out_of_order():
    g = small_graph()
    n = list(g.nodes)
    g.nodes = [n[0], n[2], n[1], *n[3:]]  # relu before split
    msg = problems_of(g)
    assert "node relu (Relu): input 0 %a is used before it is defined (by split)" in msg
    assert "not in topological order" in msg
    g.toposort()
    verify(g)


def test_cycle():
    g = small_graph()
    node(g, "relu").set_input(0, g.value("s"))  # uses stay consistent; only the order/cycle is wrong
    node(g, "relu").output.type = g.value("r").type
    msg = problems_of(g)
    assert "the graph has a cycle" in msg and "relu" in msg and "softmax" in msg


def test_value_defined_twice():
    g = small_graph()
    relu = node(g, "relu")
    relu.outputs[0] = g.value("a")  # a value produced by both split and relu
    msg = problems_of(g)
    assert "output 0 %a is defined more than once" in msg


def test_input_from_another_graph():
    g, other = small_graph(), small_graph()
    node(g, "relu").set_input(0, other.value("a"))
    msg = problems_of(g)
    assert "node relu (Relu): input 0 %a belongs to another graph" in msg


def test_input_not_defined_anywhere():
    g = small_graph()
    relu = node(g, "relu")
    g.nodes.remove(node(g, "split"))  # raw list surgery: a, b now dangle
    msg = problems_of(g)
    assert "node relu (Relu): input 0 %a is not defined in the graph" in msg
    assert "graph output 1 %b is not a value of the graph" in msg
    del relu


def test_stale_and_missing_uses():
    g = small_graph()
    g.value("x").uses.append((node(g, "relu"), 0))
    assert "value %x lists a stale use by relu input 0 (that input is not %x)" in problems_of(g)
    g = small_graph()
    g.value("a").uses.append(g.value("a").uses[0])
    assert "value %a lists its use by relu input 0 1 extra time(s)" in problems_of(g)
    g = small_graph()
    g.value("a").uses.clear()
    assert "value %a misses the use by relu input 0" in problems_of(g)
    g = small_graph()
    ghost = g.add_node("Relu", [g.value("a")], name="ghost")
    g.nodes.remove(ghost)  # bypassing remove_node leaves its use behind
    assert "value %a lists a stale use by ghost input 0 (a node not in the graph)" in problems_of(g)


def test_graph_output_not_defined():
    g, other = small_graph(), small_graph()
    g.outputs.append(other.value("s"))
    assert "graph output 2 %s is not a value of the graph" in problems_of(g)


def test_duplicate_names():
    g = small_graph()
    g.value("r").name = "a"
    assert "value name %a is used by 2 values" in problems_of(g)
    g = small_graph()
    node(g, "relu").name = "mm"
    assert "node name mm is used by 2 nodes" in problems_of(g)


def test_message_lists_the_first_problems_and_counts_the_rest():
    g = small_graph()
    for n in g.nodes:
        n.op = "Bogus"
    msg = problems_of(g)
    assert msg.startswith("graph main is invalid (5 problems): node mm (Bogus): unknown op 'Bogus'; ")
    g = bert_like(layers=1)
    for n in g.nodes:
        n.attrs["bogus"] = 1
    msg = problems_of(g)
    assert msg.count("has no attribute 'bogus'") == 10 and msg.endswith(f"... and {len(g.nodes) - 10} more")
    assert len(problems(g)) == len(g.nodes)


def test_resolved_attributes_resolve_again():
    """The verifier re-resolves stored attributes; attributes whose default is None (absent)
    must survive that, and so must re-adding a node with another node's attrs."""
    g = small_graph()
    split = node(g, "split")
    assert split.attrs["num_outputs"] is None
    again = g.add_node("Split", split.inputs, split.attrs, num_outputs=2)
    assert again.attrs == split.attrs
    verify(g)
