"""Control flow (If / Loop / Scan): subgraphs with explicit captures in the IR (text form, verifier,
clone, passes), the importer (nested outer-scope reads, opset-8 Scan), the reference interpreter
against ONNX Runtime, IR → ONNX export, and the compiled module (If folded or lowered to
``relax.If``, Loop/Scan unrolled) against the interpreter."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optc.codegen.build import build
from optc.codegen.lower import lower_to_relax
from optc.frontend.onnx_export import to_onnx
from optc.frontend.onnx_import import import_onnx
from optc.ir import DType, Graph, IRError, ModelFileError, TensorType, UnsupportedOpError
from optc.ir.interpreter import run
from optc.ir.text import elided_weights, parse_graph, print_graph
from optc.ir.unroll import expand_control_flow
from optc.ir.verifier import problems, verify
from optc.passes import PassManager

F32 = DType.FLOAT32
FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _nested_model(trips: int = 4):
    """Loop(M) over s; its body holds an If on the outer input ``flag`` whose branches read the
    loop state, the iteration number and ``x2``, a value two scopes out."""
    then_b = helper.make_graph([helper.make_node("Add", ["s", "x2"], ["t1"])], "then_b", [], [_vi("t1", FLOAT, [3])])
    else_b = helper.make_graph([helper.make_node("Mul", ["s", "i_f"], ["t2"])], "else_b", [], [_vi("t2", FLOAT, [3])])
    steps = helper.make_tensor("steps", FLOAT, [trips], np.arange(trips, dtype=np.float32) * 0.5)
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]),
         helper.make_node("Constant", [], ["table"], value=steps),
         helper.make_node("Gather", ["table", "i"], ["i_f"]),  # the iteration number as a float
         helper.make_node("If", ["flag"], ["t"], then_branch=then_b, else_branch=else_b),
         helper.make_node("Add", ["t", "i_f"], ["s_out"]),
         helper.make_node("Neg", ["t"], ["scan_out"])],
        "body", [_vi("i", INT64, []), _vi("c", BOOL, []), _vi("s", FLOAT, [3])],
        [_vi("c_out", BOOL, []), _vi("s_out", FLOAT, [3]), _vi("scan_out", FLOAT, [3])])
    nodes = [helper.make_node("Mul", ["x", "x"], ["x2"]),
             helper.make_node("Loop", ["M", "", "x"], ["s_final", "scans"], body=body)]
    inits = [onnx.numpy_helper.from_array(np.array(trips, np.int64), "M")]
    return _model(nodes, [_vi("x", FLOAT, [3]), _vi("flag", BOOL, [])],
                  [_vi("s_final", FLOAT, [3]), _vi("scans", FLOAT, [trips, 3])], inits)


X = np.array([0.5, -1.0, 2.0], np.float32)


# -- IR: captures, text form, verifier, clone ----------------------------------------------------
def test_nested_captures_are_explicit_node_inputs():
    g = import_onnx(_nested_model())
    loop = next(n for n in g.nodes if n.op == "Loop")
    body = loop.attrs["body"]
    # The body captures flag and x2 (read by the If inside it): trailing inputs of the Loop node.
    assert [v.name for v in body.captures] == ["flag", "x2"]
    assert [v.name for v in loop.inputs[-2:]] == ["flag", "x2"] and loop.inputs[-1].producer.op == "Mul"
    if_node = next(n for n in body.nodes if n.op == "If")
    then_b, else_b = if_node.attrs["then_branch"], if_node.attrs["else_branch"]
    assert [v.name for v in then_b.captures] == ["s", "x2"] and [v.name for v in else_b.captures] == ["s", "i_f"]
    # ... bound, in order, to the If node's trailing inputs, which are values of the body.
    assert [v.name for v in if_node.inputs] == ["flag", "s", "x2", "s", "i_f"]
    assert all(v.graph is body for v in if_node.inputs)
    verify(g)


def test_text_form_prints_and_parses_back():
    g = import_onnx(_nested_model())
    text = print_graph(g)
    assert "captures(%flag: bool[], %x2: f32[3])" in text and "then_branch=graph then_b() captures(%s: f32[3], %x2: f32[3]) {" in text
    again = parse_graph(text, elided_weights(g))
    assert print_graph(again) == text
    verify(again)
    inline = print_graph(g, weights="inline")
    assert print_graph(parse_graph(inline), weights="inline") == inline
    feed = {"x": X, "flag": np.array(True)}
    for a, b in zip(run(g, feed).values(), run(again, feed).values()):
        np.testing.assert_array_equal(a, b)


def test_subgraph_constants_share_the_resources_section():
    g = Graph("main")
    x = g.add_input("x", TensorType(F32, (20,)))
    g.add_constant(np.arange(20, dtype=np.float32), "w")  # a top-level "w" ...
    body = Graph("then")
    cx = body.add_capture("x", x.type)
    body.set_outputs([body.op("Add", cx, body.add_constant(np.ones(20, np.float32), "w"))])  # ... and the body's
    other = Graph("else")
    other.set_outputs([other.op("Neg", other.add_capture("x", x.type))])
    cond = g.add_input("c", TensorType(DType.BOOL, ()))
    node = g.add_node("If", [cond, x, x], {"then_branch": body, "else_branch": other}, name="if")
    g.set_outputs([node.output, g.op("Add", x, g.constants["w"])])
    text = print_graph(g, weights="inline")
    assert "@if.then_branch/w" in text
    assert print_graph(parse_graph(text), weights="inline") == text
    assert set(elided_weights(g)) == {"w", "if.then_branch/w"}


def test_parse_errors_in_a_subgraph_are_one_line():
    bad = """graph main(%x: f32[2], %c: bool[]) {
      %y: f32[2] = If(%c, %x) {then_branch=graph t() captures(%a: f32[2]) {
        %b: f32[2] = Neg(%x) @neg
        return %b
      }, else_branch=graph e() captures(%a: f32[2]) {
        return %a
      }} @if
      return %y
    }"""
    with pytest.raises(IRError, match=r"^3:26: undefined value %x \(values must be defined before use\)$") as e:
        parse_graph(bad)
    assert "\n" not in str(e.value)


def _if_graph():
    g = Graph("main")
    x = g.add_input("x", TensorType(F32, (3,)))
    c = g.add_input("c", TensorType(DType.BOOL, ()))
    then_b = Graph("then")
    then_b.set_outputs([then_b.op("Relu", then_b.add_capture("x", x.type))])
    else_b = Graph("else")
    else_b.set_outputs([else_b.op("Neg", else_b.add_capture("x", x.type))])
    node = g.add_node("If", [c, x, x], {"then_branch": then_b, "else_branch": else_b}, name="if")
    g.set_outputs([node.output])
    return g, node


def test_verifier_catches_a_value_used_across_the_graph_boundary():
    g, node = _if_graph()
    then_b = node.attrs["then_branch"]
    then_b.nodes[0].set_input(0, g.inputs[0])  # the body reads %x of main directly, not its capture
    found = problems(g)
    assert any("node if (If) then_branch: node relu (Relu): input 0 %x belongs to another graph" in p for p in found), found
    with pytest.raises(IRError):
        verify(g)
    # The graph API refuses to build such a node in the first place.
    with pytest.raises(IRError, match=r"input %x belongs to another graph"):
        then_b.add_node("Neg", [g.inputs[0]])


def test_verifier_catches_a_capture_of_the_wrong_type():
    g, node = _if_graph()
    y = g.add_input("y", TensorType(F32, (4,)))
    node.set_input(2, y)  # then_branch's capture is f32[3]
    found = problems(g)
    assert any("else_branch capture 0 %x: f32[3] is bound to %y: f32[4]" in p for p in found), found


def test_verifier_catches_a_missing_capture_and_a_shared_body():
    g, node = _if_graph()
    node.attrs["else_branch"].add_capture("extra", TensorType(F32, (3,)))
    assert any("needs the condition and 1 + 2 captured values (4 inputs), has 3" in p for p in problems(g))
    g, node = _if_graph()
    node.attrs["else_branch"] = node.attrs["then_branch"]
    assert any("subgraph else_branch is also held by node if (If) then_branch" in p for p in problems(g))


def test_clone_copies_subgraphs():
    g = import_onnx(_nested_model())
    c = g.clone()
    loop, loop_c = (next(n for n in x.nodes if n.op == "Loop") for x in (g, c))
    assert loop_c.attrs["body"] is not loop.attrs["body"]
    assert print_graph(c) == print_graph(g)
    loop_c.attrs["body"].nodes[-1].attrs["alpha"] = 1.0  # editing the copy leaves the original alone
    assert "alpha" not in loop.attrs["body"].nodes[-1].attrs
    verify(g)


# -- interpreter against ONNX Runtime; export ------------------------------------------------------
@pytest.mark.parametrize("flag", [True, False])
def test_interpreter_matches_onnxruntime(flag):
    m = _nested_model()
    feeds = {"x": X, "flag": np.array(flag)}
    want = _ort(m, feeds)
    got = run(import_onnx(m), feeds)
    for w, name in zip(want, ["s_final", "scans"]):
        np.testing.assert_allclose(got[name], w, rtol=1e-6)


def test_export_round_trip_runs_in_onnxruntime():
    g = import_onnx(_nested_model())
    m = to_onnx(g)
    onnx.checker.check_model(m, full_check=True)
    feeds = {"x": X, "flag": np.array(False)}
    ref = run(g, feeds)
    for w, name in zip(_ort(m, feeds), g.output_names()):
        np.testing.assert_allclose(w, ref[name], rtol=1e-6)
    back = import_onnx(m)
    for a, b in zip(run(back, feeds).values(), ref.values()):
        np.testing.assert_array_equal(a, b)


def _while_model(with_scan: bool = False):
    """s doubles while sum(s) < limit, at most 10 times (a run-time condition)."""
    outs = [_vi("c_out", BOOL, []), _vi("s_out", FLOAT, [2])] + ([_vi("k", INT64, [])] if with_scan else [])
    nodes = [helper.make_node("Add", ["s", "s"], ["s_out"]),
             helper.make_node("ReduceSum", ["s_out"], ["total"], keepdims=0),
             helper.make_node("Less", ["total", "limit"], ["c_out"])]
    if with_scan:
        nodes.append(helper.make_node("Identity", ["i"], ["k"]))
    body = helper.make_graph(nodes, "body", [_vi("i", INT64, []), _vi("c", BOOL, []), _vi("s", FLOAT, [2])], outs)
    loop = helper.make_node("Loop", ["M", "go", "s0"], ["s_final"] + (["ks"] if with_scan else []), body=body)
    inits = [onnx.numpy_helper.from_array(np.array(10, np.int64), "M"), onnx.numpy_helper.from_array(np.array(True), "go")]
    return _model([loop], [_vi("s0", FLOAT, [2]), _vi("limit", FLOAT, [])],
                  [_vi("s_final", FLOAT, [2])] + ([_vi("ks", INT64, [None])] if with_scan else []), inits)


def test_loop_with_a_run_time_condition_matches_onnxruntime():
    m = _while_model(with_scan=True)
    for limit in (1.0, 40.0, 1e9):
        feeds = {"s0": np.array([0.25, 0.5], np.float32), "limit": np.array(limit, np.float32)}
        got = run(import_onnx(m), feeds)
        for w, name in zip(_ort(m, feeds), ["s_final", "ks"]):
            np.testing.assert_array_equal(got[name], w)


def test_scan_directions_and_axes_match_onnxruntime():
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "col"], ["acc_out"]), helper.make_node("Mul", ["acc_out", "w"], ["y"])],
        "body", [_vi("acc", FLOAT, [2]), _vi("col", FLOAT, [2])], [_vi("acc_out", FLOAT, [2]), _vi("y", FLOAT, [2])])
    scan = helper.make_node("Scan", ["init", "x"], ["acc", "ys"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1],
                            scan_output_directions=[1])
    m = _model([helper.make_node("Neg", ["w0"], ["w"]), scan],
               [_vi("init", FLOAT, [2]), _vi("x", FLOAT, [2, 5]), _vi("w0", FLOAT, [2])],
               [_vi("acc", FLOAT, [2]), _vi("ys", FLOAT, [2, 5])])
    rng = np.random.default_rng(0)
    feeds = {"init": rng.standard_normal(2).astype(np.float32), "x": rng.standard_normal((2, 5)).astype(np.float32),
             "w0": rng.standard_normal(2).astype(np.float32)}
    g = import_onnx(m)
    got = run(g, feeds)
    for w, name in zip(_ort(m, feeds), ["acc", "ys"]):
        np.testing.assert_allclose(got[name], w, rtol=1e-6)
    model = build(g).load()
    for name, want in model.run(feeds).items():
        np.testing.assert_allclose(want, got[name], rtol=1e-6)


def test_opset8_scan_with_a_batch_axis():
    body = helper.make_graph([helper.make_node("Add", ["a", "b"], ["a2"]), helper.make_node("Identity", ["a2"], ["o"])],
                             "body", [_vi("a", FLOAT, [2]), _vi("b", FLOAT, [2])], [_vi("a2", FLOAT, [2]), _vi("o", FLOAT, [2])])
    scan = helper.make_node("Scan", ["", "init", "x"], ["y", "z"], body=body, num_scan_inputs=1)
    m = _model([scan], [_vi("init", FLOAT, [3, 2]), _vi("x", FLOAT, [3, 4, 2])],
               [_vi("y", FLOAT, [3, 2]), _vi("z", FLOAT, [3, 4, 2])], opset=8)
    rng = np.random.default_rng(1)
    init, x = rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal((3, 4, 2)).astype(np.float32)
    got = run(import_onnx(m), {"init": init, "x": x})
    z = init[:, None, :] + np.cumsum(x, axis=1)
    np.testing.assert_allclose(got["z"], z, rtol=1e-6)
    np.testing.assert_allclose(got["y"], z[:, -1], rtol=1e-6)
    with_lens = _model([helper.make_node("Scan", ["lens", "init", "x"], ["y", "z"], body=body, num_scan_inputs=1)],
                       [_vi("lens", TensorProto.INT32, [3]), _vi("init", FLOAT, [3, 2]), _vi("x", FLOAT, [3, 4, 2])],
                       [_vi("y", FLOAT, [3, 2]), _vi("z", FLOAT, [3, 4, 2])], opset=8)
    with pytest.raises(UnsupportedOpError, match=r"^Scan with sequence_lens \(opset 8\) is not supported"):
        import_onnx(with_lens)


def test_body_with_the_wrong_number_of_inputs_is_a_one_line_error():
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body",
                             [_vi("c", BOOL, [])], [_vi("c_out", BOOL, [])])
    m = _model([helper.make_node("Loop", ["M", ""], [], body=body)], [_vi("M", INT64, [])], [])
    with pytest.raises(ModelFileError, match=r"^node <unnamed> \(Loop, opset 18\) body: the subgraph has 1 inputs, expected 2$"):
        import_onnx(m)


# -- passes ----------------------------------------------------------------------------------------
def test_default_pipeline_leaves_control_flow_alone_and_exact():
    g = import_onnx(_nested_model())
    feeds = {"x": X, "flag": np.array(True)}
    ref = run(g, feeds)
    PassManager.parse("default").run(g)
    verify(g)
    assert any(n.op == "Loop" for n in g.nodes)
    for name, want in ref.items():
        np.testing.assert_allclose(run(g, feeds)[name], want, rtol=1e-6)


def test_cse_merges_equal_bodies_only():
    g, node = _if_graph()
    x, c = g.inputs
    twin = g.add_node("If", [c, x, x], {"then_branch": node.attrs["then_branch"].clone(),
                                         "else_branch": node.attrs["else_branch"].clone()}, name="twin")
    other_else = Graph("else")
    other_else.set_outputs([other_else.op("Abs", other_else.add_capture("x", x.type))])
    other = g.add_node("If", [c, x, x], {"then_branch": node.attrs["then_branch"].clone(), "else_branch": other_else})
    g.set_outputs([g.op("Add", node.output, twin.output), g.op("Add", node.output, other.output)])
    feed = {"x": np.array([1.0, -2.0, 3.0], np.float32), "c": np.array(False)}
    ref = run(g, feed)
    result = PassManager.parse("cse").run(g)
    assert result.reports[0]["merged_nodes"] == 1
    assert sum(n.op == "If" for n in g.nodes) == 2
    for name, want in ref.items():
        np.testing.assert_array_equal(run(g, feed)[name], want)


def test_unroll_pass_expands_and_keeps_outputs():
    g = import_onnx(_nested_model())
    feeds = {"x": X, "flag": np.array(False)}
    ref = run(g, feeds)
    report = PassManager.parse("unroll-control-flow").run(g).reports[0]
    assert report["expanded"] == 1 and not any(n.op == "Loop" for n in g.nodes)
    assert sum(n.op == "If" for n in g.nodes) == 4  # the run-time If stays, once per iteration
    verify(g)
    for name, want in ref.items():
        np.testing.assert_allclose(run(g, feeds)[name], want, rtol=1e-6)


# -- compiled against the interpreter ------------------------------------------------------------
def test_compiled_loop_with_a_run_time_if():
    g = import_onnx(_nested_model())
    model = build(g).load()
    for flag in (True, False):
        feeds = {"x": X, "flag": np.array(flag)}
        ref = run(g, feeds)
        got = model.run(feeds)
        for name, want in ref.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-6, err_msg=name)


def test_if_with_a_known_condition_folds_and_a_run_time_one_branches():
    g, node = _if_graph()
    assert "R.If" in lower_to_relax(g).script() or " if " in lower_to_relax(g).script()
    known = g.clone()
    c = known.add_constant(np.array(False), "c_known")
    known.nodes[0].set_input(0, c)
    text = lower_to_relax(known).script()
    assert " if " not in text and "R.negative" in text  # only the else branch is compiled
    model = build(g).load()
    for cond in (True, False):
        feed = {"x": np.array([1.0, -2.0, 3.0], np.float32), "c": np.array(cond)}
        np.testing.assert_array_equal(model.run(feed)["if"], run(g, feed)["if"])


def test_compiled_loop_with_a_run_time_condition_runs_masked():
    g = import_onnx(_while_model())
    model = build(g).load()
    for limit in (1.0, 3.0, 40.0, 1e9):
        feeds = {"s0": np.array([0.25, 0.5], np.float32), "limit": np.array(limit, np.float32)}
        np.testing.assert_array_equal(model.run(feeds)["s_final"], run(g, feeds)["s_final"])


def test_loops_that_cannot_be_unrolled_are_one_line_errors():
    g = import_onnx(_while_model(with_scan=True))
    with pytest.raises(UnsupportedOpError, match=r"^cannot compile: the Loop condition is computed at run time and "
                                                 r"the loop has scan outputs \(node .*, op Loop\)$"):
        build(g)
    m = _while_model()
    m.graph.initializer.pop(0)  # M becomes a graph input
    m.graph.input.append(_vi("M", INT64, []))
    with pytest.raises(UnsupportedOpError, match=r"the Loop trip count M is known only at run time"):
        build(import_onnx(m))
    g = import_onnx(_nested_model(trips=5000))
    with pytest.raises(UnsupportedOpError, match=r"^cannot compile: the Loop would unroll into 35000 nodes \(5000 "
                                                 r"iterations\), more than the budget of 8192"):
        expand_control_flow(g.clone())


def test_a_runaway_loop_is_an_error_not_a_hang(monkeypatch):
    """A Loop whose condition never becomes false (hostile or buggy model) stops with one line."""
    from onnx import TensorProto, helper

    from optc.frontend.onnx_import import import_onnx
    from optc.ir.errors import ResourceError
    from optc.ir.interpreter import run

    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    loop = helper.make_node("Loop", ["", "cond", "v0"], ["v"], body=body)
    m = helper.make_model(helper.make_graph([loop], "forever", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                                               helper.make_tensor_value_info("v0", TensorProto.FLOAT, [])],
                                            [helper.make_tensor_value_info("v", TensorProto.FLOAT, [])]),
                          opset_imports=[helper.make_opsetid("", 16)])
    g = import_onnx(m)
    monkeypatch.setenv("OPTC_MAX_LOOP_ITERATIONS", "500")
    with pytest.raises(ResourceError, match="more than 500 iterations"):
        run(g, {"cond": np.array(True), "v0": np.array(0.0, np.float32)})
    assert float(run(g, {"cond": np.array(False), "v0": np.array(2.0, np.float32)})["v"]) == 2.0
