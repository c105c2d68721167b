"""The IR text form: print → parse → print is byte-identical, parsed graphs equal the originals,
and parse errors point at line:column."""

from __future__ import annotations

import math
import re

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.schema import AttrKind, AttrSpec, OpSchema, register, unregister
from optc.ir.text import elided_weights, parse_graph, print_graph

F32 = DType.FLOAT32
I64 = DType.INT64

@pytest.fixture(autouse=True, scope="module")
def attr_kinds_op():
    """An op carrying every attribute kind (no core op has float/string lists yet), registered
    only while this module runs so other tests see the real catalog."""
    register(OpSchema(
        "TestAttrKinds", ("X",), ("Y",), lambda ctx: [ctx.type(0)],
        {
            "i": AttrSpec(AttrKind.INT, 0), "f": AttrSpec(AttrKind.FLOAT, 0.5), "s": AttrSpec(AttrKind.STRING, "x"),
            "ints": AttrSpec(AttrKind.INTS, None), "floats": AttrSpec(AttrKind.FLOATS, None),
            "strs": AttrSpec(AttrKind.STRINGS, None), "t": AttrSpec(AttrKind.TENSOR, None),
            "dt": AttrSpec(AttrKind.DTYPE, None), "req": AttrSpec(AttrKind.INT),
        },
    ))
    yield
    unregister("TestAttrKinds")


# -- helpers --------------------------------------------------------------------------------------
def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def attrs_equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and same_array(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(attrs_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_graphs_equal(g: Graph, h: Graph) -> None:
    assert g.name == h.name and g.metadata == h.metadata
    assert [(v.name, v.type) for v in g.inputs] == [(v.name, v.type) for v in h.inputs]
    assert list(g.constants) == list(h.constants)
    for name, v in g.constants.items():
        assert v.type == h.constants[name].type
        assert same_array(v.const, h.constants[name].const), name
    assert len(g.nodes) == len(h.nodes)
    for n, m in zip(g.nodes, h.nodes):
        assert (n.op, n.name) == (m.op, m.name)
        assert [None if v is None else v.name for v in n.inputs] == [None if v is None else v.name for v in m.inputs]
        assert [(o.name, o.type) for o in n.outputs] == [(o.name, o.type) for o in m.outputs]
        assert n.attrs.keys() == m.attrs.keys()
        for k in n.attrs:
            assert attrs_equal(n.attrs[k], m.attrs[k]), (n.name, k, n.attrs[k], m.attrs[k])
    assert g.output_names() == h.output_names()


def roundtrip(g: Graph, weights: str = "elide") -> Graph:
    text = print_graph(g, weights)
    h = parse_graph(text, elided_weights(g) if weights == "elide" else None)
    assert print_graph(h, weights) == text
    assert_graphs_equal(g, h)
    return h


def parse_error(text: str, weights=None) -> str:
    with pytest.raises(IRError) as e:
        parse_graph(text, weights)
    return str(e.value)


# -- round trips ----------------------------------------------------------------------------------
def test_example_graph_text():
    g = Graph()
    ids = g.add_input("input_ids", TensorType(I64, ("batch", "seq")))
    g.add_input("attention_mask", TensorType(I64, ("batch", "seq")))
    x0 = g.add_input("x0", TensorType(F32, ("batch", "seq", 384)))
    w0 = g.add_constant(np.ones((384, 384), np.float32), "w0")
    g.add_constant(np.array([-1]), "axes")
    x1 = g.add_node("MatMul", [x0, w0], name="node_name", output_names=["x1"]).output
    x = g.add_input("x", TensorType(F32, (None, 24)))
    s = g.add_constant(np.array([12, 12]), "s")
    a, b = g.add_node("Split", [x, None, None], {"axis": 1}, output_names=["a", "b"], name="split_0").outputs
    del ids, s, a
    g.set_outputs([x1, b])
    text = print_graph(g)
    assert text == (
        "graph main(%input_ids: i64[batch, seq], %attention_mask: i64[batch, seq], %x0: f32[batch, seq, 384], %x: f32[?, 24]) {\n"
        "  const %w0: f32[384, 384] = @w0\n"
        "  const %axes: i64[1] = [-1]\n"
        "  const %s: i64[2] = [12, 12]\n"
        "  %x1: f32[batch, seq, 384] = MatMul(%x0, %w0) @node_name\n"
        "  %a: f32[?, 12], %b: f32[?, 12] = Split(%x) {axis=1} @split_0\n"
        "  return %x1, %b\n"
        "}\n"
    )
    roundtrip(g)
    roundtrip(g, "inline")


def test_every_attribute_kind():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 3)))
    full = {
        "i": -7, "f": 1e-300, "s": 'quote " back\\slash\nnewline ünï', "ints": (1, -2, 3), "floats": (0.1, -0.0, 1e30, float("inf")),
        "strs": ("a", "", "c d"), "t": np.array([[1.5, -2.0]], np.float32), "dt": DType.BFLOAT16, "req": 3,
    }
    g.add_node("TestAttrKinds", [x], full, name="full")
    g.add_node("TestAttrKinds", [x], {"req": 0, "f": float("nan"), "ints": (), "floats": (), "strs": ()}, name="empties")
    g.add_node("TestAttrKinds", [x], {"req": 1, "t": np.array(7, np.int64), "f": -0.0}, name="scalar_tensor")
    g.add_node("TestAttrKinds", [x], {"req": 1, "t": np.arange(100, dtype=np.float16).reshape(10, 10)}, name="big_tensor")
    g.add_node("TestAttrKinds", [x], {"req": 2, "t": np.array([np.nan, -np.inf], np.float64)}, name="nan_tensor")
    g.set_outputs([g.nodes[0].output])
    text = print_graph(g)
    line = next(ln for ln in text.splitlines() if "@full" in ln)
    assert ('{i=-7, f=1e-300, s="quote \\" back\\\\slash\\nnewline \\u00fcn\\u00ef", ints=[1, -2, 3], '
            'floats=[0.1, -0.0, 1e+30, inf], strs=["a", "", "c d"], t=tensor(f32[1, 2], [1.5, -2.0]), dt=bf16, req=3}') in line
    empties = next(ln for ln in text.splitlines() if "@empties" in ln)
    assert "f=nan" in empties and "ints=[]" in empties
    h = roundtrip(g)
    assert isinstance(h.nodes[0].attrs["i"], int) and isinstance(h.nodes[0].attrs["f"], float)
    assert h.nodes[0].attrs["dt"] is DType.BFLOAT16
    assert math.copysign(1, h.nodes[2].attrs["f"]) == -1


def test_defaults_are_not_printed_and_are_refilled():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 3)))
    y = g.op("LeakyRelu", x, alpha=0.01)  # the default
    z = g.op("LeakyRelu", y, alpha=0.2)
    s = g.op("Softmax", z)  # axis=-1 default
    g.add_node("TestAttrKinds", [s], {"req": 0, "s": "x", "f": 0.5})
    g.set_outputs([s])
    text = print_graph(g)
    assert "LeakyRelu(%x) @leakyrelu\n" in text and "{alpha=0.2}" in text and "Softmax(%leakyrelu_0) @softmax\n" in text
    assert "{req=0}" in text
    h = roundtrip(g)
    assert h.nodes[0].attrs == {"alpha": 0.01} and h.nodes[2].attrs == {"axis": -1}


@pytest.mark.parametrize("name", [
    "/encoder/layer.0/attention/Add_output_0", "onnx::MatMul_123", "a:b", "0", "-x-", "with space", 'q"uote',
    "ends:", "::", "uni\u00e9", "tab\there", "", "none", "return", "%pct", "a@b", "x,y", "graph",
])
def test_value_and_node_names(name):
    g = Graph(name or "g")
    x = g.add_input(name, TensorType(F32, (2,)))
    c = g.add_constant(np.array([1.0, 2.0], np.float32), name + "#c")
    y = g.add_node("Add", [x, c], name=name + "_node" if name else "n", output_names=[name + ":out"]).output
    z = g.add_node("Relu", [y], name=name + "@relu", output_names=[name + "2"]).output
    g.set_outputs([z, y])
    text = print_graph(g)
    h = roundtrip(g)
    assert h.input_names() == [name]
    if re.fullmatch(r"[A-Za-z0-9_.\-:/]+", name) and not name.endswith(":"):
        assert f"%{name}:" in text  # bare
    else:
        assert '%"' in text


def test_symbolic_and_unknown_dims():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("batch", "seq", 12, 32)))
    u = g.add_input("u", TensorType(F32, None))
    q = g.add_input("q", TensorType(F32, (None, "2*seq", "batch*seq", "s0 + 1", "3", "-1*n", "n_1")))
    flat = g.add_constant(np.array([0, 0, -1]), "flat")
    y = g.op("Reshape", x, flat)
    g.op("Relu", u)
    g.op("Relu", q)
    z = g.op("Flatten", x, axis=2)
    g.set_outputs([y, z])
    text = print_graph(g)
    assert "%u: f32[*]" in text
    assert 'f32[?, 2*seq, batch*seq, "s0 + 1", "3", -1*n, n_1]' in text
    assert "f32[batch*seq, 384]" in text
    h = roundtrip(g)
    assert h.value("q").type.shape[4] == "3"


def test_parsed_types_equal_printed_even_when_less_precise_than_inference():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (4, 8)))
    y = g.add_node("Relu", [x], output_types=[TensorType(F32, (4, 8))]).output
    y.type = TensorType(F32, (None, 8))  # e.g. written by a frontend that knew less
    w = g.op("Relu", y)
    w.type = TensorType(F32, None)
    g.set_outputs([w])
    h = roundtrip(g)
    assert h.value(y.name).type.shape == (None, 8)
    assert h.value(w.name).type.shape is None


def test_multi_output_and_absent_optional_inputs():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("n", 24)))
    sizes = g.add_constant(np.array([4, 20]), "sizes")
    lo = g.add_constant(np.array(0.0, np.float32), "lo")
    hi = g.add_constant(np.array(6.0, np.float32), "hi")
    a, b = g.add_node("Split", [x, sizes], {"axis": 1}, num_outputs=2).outputs
    c = g.add_node("Clip", [b, None, hi]).output  # interior absent input
    d = g.add_node("Clip", [a, lo, None]).output  # trailing absent input is dropped
    k = g.add_constant(np.array([3]), "k")
    vals, idx = g.add_node("TopK", [c, k], num_outputs=2).outputs
    starts, ends, steps = (g.add_constant(np.array([v]), n) for v, n in ((0, "st"), (10, "en"), (2, "sp")))
    s = g.add_node("Slice", [vals, starts, ends, None, steps]).output
    g.set_outputs([d, idx, s, vals])
    text = print_graph(g)
    assert "Clip(%split_0, none, %hi)" in text
    assert "Clip(%split, %lo) @clip" in text
    assert "Slice(%topk, %st, %en, none, %sp)" in text
    assert re.search(r"%topk: f32\[n, 3\], %topk_\d+: i64\[n, 3\] = TopK", text)
    h = roundtrip(g)
    assert h.nodes[1].inputs[1] is None


def test_weights_elided_and_inline():
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("b", 32)))
    w = g.add_constant(rng.standard_normal((32, 32)).astype(np.float32), "dense.weight")
    bias = g.add_constant(rng.standard_normal(32).astype(np.float32), "dense.bias")
    small = g.add_constant(np.array([0.5] * 16, np.float32), "small")  # 16 elements: inline
    ids = g.add_constant(np.arange(64), "ids")  # int, 64 elements: inline
    big_ids = g.add_constant(np.arange(65), "big_ids")  # 65: elided
    y = g.op("Add", g.op("MatMul", x, w), bias)
    g.set_outputs([y, small, ids, big_ids])
    text = print_graph(g)
    assert "const %dense.weight: f32[32, 32] = @dense.weight" in text
    assert "const %dense.bias: f32[32] = @dense.bias" in text
    assert "const %small: f32[16] = [0.5, 0.5," in text
    assert "const %ids: i64[64] = [0, 1, 2," in text and "= @big_ids" in text
    assert "resources" not in text
    assert set(elided_weights(g)) == {"dense.weight", "dense.bias", "big_ids"}
    h = roundtrip(g)
    assert h.constants["dense.weight"].const is w.const  # held by reference, not copied

    inline = print_graph(g, "inline")
    assert inline.startswith(text[:-1]) and "\nresources {\n  @dense.weight = \"" in inline
    roundtrip(g, "inline")

    msg = parse_error(text)
    assert re.search(r"^2:38: no data for constant @dense.weight", msg), msg
    msg = parse_error(text, {"dense.weight": w.const})
    assert "@dense.bias" in msg and "not in the weights dict" in msg
    msg = parse_error(text, {**elided_weights(g), "dense.bias": np.zeros(31, np.float32)})
    assert "@dense.bias is f32[31], the text declares f32[32]" in msg
    msg = parse_error(text, {**elided_weights(g), "dense.bias": np.zeros(32, np.float64)})
    assert "f64[32]" in msg


def _dtype_values(dt: DType) -> np.ndarray:
    if dt is DType.BOOL:
        return np.array([True, False, True])
    if dt.is_float:
        info = ml_dtypes.finfo(dt.numpy)
        vals = [0.0, -0.0, 1.0, -1.5, 0.1, 1 / 3, float(info.max), float(info.tiny), float(info.smallest_subnormal),
                -float(info.max), np.inf, -np.inf, np.nan, 65504.0 if dt is not DType.FLOAT16 else 1e-3]
        return np.array(vals, dtype=np.float64).astype(dt.numpy)
    info = ml_dtypes.iinfo(dt.numpy)  # (ml_dtypes' also knows int4/uint4/int2/uint2)
    return np.array([int(info.min), int(info.max), 0, 1, int(info.max) - 1], dtype=np.int64 if dt.is_packed
                    else dt.numpy).astype(dt.numpy)


@pytest.mark.parametrize("dt", list(DType), ids=lambda d: d.value)
def test_every_dtype_inline_and_large(dt):
    rng = np.random.default_rng(1)
    g = Graph()
    x = g.add_input("x", TensorType(dt, ("n",)))
    small = g.add_constant(_dtype_values(dt), "small")
    scalar = g.add_constant(_dtype_values(dt)[1].reshape(()), "scalar")
    empty = g.add_constant(np.zeros((0, 3), dt.numpy), "empty")
    if dt is DType.BOOL:
        big = rng.random((9, 9)) > 0.5
    elif dt.is_float:
        big = rng.standard_normal((9, 9)).astype(dt.numpy)
    else:
        big = rng.integers(0, min(100, int(ml_dtypes.iinfo(dt.numpy).max) + 1), (9, 9)).astype(dt.numpy)
    big = g.add_constant(big, "big")
    y = g.op("Identity", x)
    g.set_outputs([y, small, scalar, empty, big])
    text = print_graph(g)
    assert f"const %scalar: {dt.value}[] = " in text and f"const %empty: {dt.value}[0, 3] = []" in text
    assert "const %small" in text and "base64" not in text
    roundtrip(g)
    roundtrip(g, "inline")


def test_float_literals_are_shortest_and_exact():
    g = Graph()
    g.add_constant(np.array([0.1, 1e-5, 3.4028235e38, 1 / 3], np.float32), "f32")
    g.add_constant(np.array([0.1, 65504, 6e-8], np.float16), "f16")
    g.add_constant(np.array([0.1, 1, -0.0, 3e38], ml_dtypes.bfloat16), "bf16")
    g.add_constant(np.array([0.1, 1 / 3, 5e-324], np.float64), "f64")
    text = print_graph(g)
    assert "f32[4] = [0.1, 1e-05, 3.4028235e+38, 0.33333334]" in text
    assert "f16[3] = [0.1, 6.55e+04, 6e-08]" in text
    assert "bf16[4] = [0.1, 1.0, -0.0, 3e+38]" in text
    assert "f64[3] = [0.1, 0.3333333333333333, 5e-324]" in text
    roundtrip(g)


def test_nan_payloads_survive_via_base64():
    g = Graph()
    odd = np.array([0x7FC00001, 0xFFC00000, 0x7F800001], np.uint32).view(np.float32)
    g.add_constant(odd, "odd")
    g.add_constant(np.array([np.nan, -np.nan], np.float32), "plain")
    text = print_graph(g)
    assert 'const %odd: f32[3] = base64 "' in text
    assert "const %plain: f32[2] = [nan, -nan]" in text
    h = roundtrip(g)
    assert h.constants["odd"].const.view(np.uint32).tolist() == [0x7FC00001, 0xFFC00000, 0x7F800001]
    assert h.constants["plain"].const.view(np.uint32).tolist() == [0x7FC00000, 0xFFC00000]


def test_metadata_and_comments():
    g = Graph("encoder")
    g.metadata = {"producer": "pytorch", "odd key": 'multi\nline "value"', "": ""}
    x = g.add_input("x", TensorType(F32, (1,)))
    g.set_outputs([x])
    text = print_graph(g)
    assert text.startswith('# meta "producer" = "pytorch"\n# meta "odd key" = "multi\\nline \\"value\\""\n')
    roundtrip(g)
    commented = "# a comment\n" + text.replace("{\n", "{  # trailing comment\n  # whole line\n")
    assert parse_graph(commented).metadata == g.metadata


def test_empty_graph_and_graph_output_is_input():
    g = Graph()
    assert print_graph(g) == "graph main() {\n  return\n}\n"
    roundtrip(g)
    x = g.add_input("x", TensorType(F32, ()))
    g.set_outputs([x, x])
    roundtrip(g)


def test_hand_written_text_without_types_or_node_names():
    g = parse_graph("""
        graph m(%x: f32[b, 8]) {
          const %w: f32[2, 2] = [1, 2, 3, 4.5]
          const %shape: i64[2] = [-1, 2]
          %r = Reshape(%x, %shape)
          %y = MatMul(%r, %w)
          %z = Cast(%y) {to = i32}
          return %z
        }
    """)
    text = print_graph(g)
    assert "%r: f32[4*b, 2] = Reshape(%x, %shape) @reshape" in text
    assert "%z: i32[4*b, 2] = Cast(%y) {to=i32} @cast" in text
    assert g.constants["w"].const.tolist() == [[1, 2], [3, 4.5]]
    roundtrip(g)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, where, what", [
    ("graf main() {}", "1:1", "expected 'graph'"),
    ("graph main(%x f32[1]) {\n  return\n}", "1:15", "expected ':'"),
    ("graph main(%x: f33[1]) {\n  return\n}", "1:16", "expected an element type"),
    ("graph main(%x: f32[1) {\n  return\n}", "1:21", "',' or ']'"),
    ("graph main() {\n  %y: f32[1] = Relu(%x)\n  return %y\n}", "2:21", "undefined value %x"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = Relu(%x) {alpha=1}\n  return %y\n}", "2:26", "Relu has no attribute 'alpha'"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = NoSuchOp(%x)\n  return %y\n}", "2:16", "unknown op 'NoSuchOp'"),
    ("graph main(%x: f32[1]) {\n  %y: f32[2] = Relu(%x)\n  return %y\n}", "2:3", "conflicts with inferred"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = Cast(%x) {to=f99}\n  return %y\n}", "2:29", "an attribute value"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = LeakyRelu(%x) {alpha=\"a\"}\n  return %y\n}", "2:37", "expected float"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = Concat(%x) {axis=1.5}\n  return %y\n}", "2:33", "expected int"),
    ("graph main(%x: f32[1]) {\n  const %c: i8[2] = [1, 300]\n  return %x\n}", "2:21", "bad literal"),
    ("graph main(%x: f32[1]) {\n  const %c: i8[2] = [1, 2.5]\n  return %x\n}", "2:21", "does not fit"),
    ("graph main(%x: f32[1]) {\n  const %c: f32[3] = [1, 2]\n  return %x\n}", "2:22", "needs 3 elements, got 2"),
    ("graph main(%x: f32[1]) {\n  const %x: f32[] = 1.0\n  return %x\n}", "2:9", "already defined"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = Relu(%x) @n\n  %z: f32[1] = Relu(%y) @n\n  return %z\n}", "3:3", "node name @n is already used"),
    ("graph main(%x: f32[1]) {\n  return %x\n", "3:1", "expected '}'"),
    ("graph main(%x: f32[1]) {\n  return %x\n}\nextra", "4:1", "expected end of input"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = Relu(%x,, %x)\n  return %y\n}", "2:24", "expected an input ('%name' or 'none'), found ','"),
    ("graph main(%x: f32[1]) {\n  const %c: f32[1] = base64 \"!!\"\n  return %x\n}", "2:29", "invalid base64"),
    ("graph main() {\n  return\n}\nresources {\n  @w = \"AAAA\"\n", "6:1", "or '}'"),
    ("# meta \"k\" \"v\"\ngraph main() {\n  return\n}", "1:12", "'=' in the metadata line"),
    ("graph main(%x: f32[1]) {\n  %y: f32[1] = Relu(%x) garbage\n  return %y\n}", "2:25", "a statement"),
])
def test_parse_errors_have_line_and_column(text, where, what):
    msg = parse_error(text)
    assert re.search(rf"(^|at ){re.escape(where)}:", msg), msg
    assert what in msg, msg


def test_resource_size_mismatch():
    g = Graph()
    g.add_constant(np.zeros((5, 5), np.float32), "w")
    text = print_graph(g, "inline").replace('@w = "', '@w = "AAAA')
    msg = parse_error(text)
    assert msg.startswith("6:8: f32[5, 5] needs 100 bytes, got 103"), msg
    inline = print_graph(g, "inline")
    assert inline.endswith('"\n}\n')
    twice = inline[:-2] + '  @w = ""\n}\n'
    assert parse_error(twice).startswith("7:3: resource @w is given twice")


# -- property: random graphs round-trip -----------------------------------------------------------
_NAME_CHARS = st.sampled_from(list("abcXYZ019_.-:/ \"\\é%@,#{}[]()="))
_names = st.text(_NAME_CHARS, min_size=1, max_size=8)
_float_vals = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(-0.0))
_dims = st.sampled_from([1, 2, 3, 4, "batch", "seq", None])


@st.composite
def random_graphs(draw):
    used: set[str] = set()

    def fresh() -> str:
        name = draw(_names.filter(lambda s: s not in used))
        used.add(name)
        return name

    g = Graph(draw(_names))
    if draw(st.booleans()):
        g.metadata[draw(_names)] = draw(st.text(max_size=10))
    dt = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64]))
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(_dims) for _ in range(rank - 1)) + (draw(st.sampled_from([2, 3, 4, 8])),)
    cur = g.add_input(fresh(), TensorType(dt, shape))
    values = [cur]
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "matmul", "reshape", "transpose", "concat", "cast"]))
        t = cur.type
        last = t.shape[-1] if isinstance(t.shape[-1], int) else None
        if kind == "matmul" and last is None:
            kind = "unary"
        nname = fresh() if draw(st.booleans()) else None
        if kind == "unary":
            op = draw(st.sampled_from(["Relu", "Exp", "Tanh", "Neg", "Sigmoid"]))
            cur = g.add_node(op, [cur], name=nname, output_names=[fresh()]).output
        elif kind == "binary":
            n = draw(st.sampled_from([1, last or 1]))
            vals = draw(st.lists(_float_vals, min_size=n, max_size=n))
            with np.errstate(all="ignore"):
                arr = np.array(vals, np.float64).astype(t.dtype.numpy)
            c = g.add_constant(arr, fresh())
            op = draw(st.sampled_from(["Add", "Mul", "Sub", "Div"]))
            ins = [cur, c] if draw(st.booleans()) else [c, cur]
            cur = g.add_node(op, ins, name=nname, output_names=[fresh()]).output
        elif kind == "matmul":
            n = draw(st.sampled_from([2, 5, 8]))
            w = np.arange(last * n, dtype=np.float64).reshape(last, n).astype(t.dtype.numpy)
            cur = g.add_node("MatMul", [cur, g.add_constant(w, fresh())], name=nname, output_names=[fresh()]).output
        elif kind == "reshape":
            target = draw(st.sampled_from([[-1], [0] * (t.rank - 1) + [-1], [0] * t.rank + [1]]))
            shp = g.add_constant(np.array(target, np.int64), fresh())
            cur = g.add_node("Reshape", [cur, shp], name=nname, output_names=[fresh()]).output
        elif kind == "transpose":
            perm = draw(st.permutations(range(t.rank)))
            attrs = {"perm": tuple(perm)} if draw(st.booleans()) else {}
            cur = g.add_node("Transpose", [cur], attrs, name=nname, output_names=[fresh()]).output
        elif kind == "concat":
            axis = draw(st.integers(-t.rank, t.rank - 1))
            cur = g.add_node("Concat", [cur, cur], {"axis": axis}, name=nname, output_names=[fresh()]).output
        else:
            to = draw(st.sampled_from([DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64]))
            cur = g.add_node("Cast", [cur], {"to": to}, name=nname, output_names=[fresh()]).output
        values.append(cur)
    g.set_outputs(draw(st.lists(st.sampled_from(values), min_size=1, max_size=3)))
    return g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.sampled_from(["elide", "inline"]))
def test_random_graphs_roundtrip(g, weights):
    roundtrip(g, weights)
