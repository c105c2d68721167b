"""The pass manager and the cleanup passes: pipeline text round-trip and one-line errors,
instruments, cached analyses, and each pass structurally and numerically (reference interpreter)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from optc.ir import DType, Graph, OptcError, TensorType
from optc.ir.interpreter import run
from optc.ir.verifier import verify
from optc.passes import (CLEANUP_PIPELINE, CheckNumerics, PassContext, PassError, PassManager, PassResult, PrintIRAfter, TimePasses,
                         VerifyEach, default_pipeline_text, format_pipeline, parse_pipeline, pass_info, random_inputs)
from optc.passes.base import Pass, _REGISTRY, option, register_pass

F32, I64 = DType.FLOAT32, DType.INT64


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def check_same(before: Graph, after: Graph, dims=None, tol=1e-5):
    verify(after)
    x = random_inputs(before, dims or {}, seed=1)
    a, b = run(before, x), run(after, x)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=tol, atol=tol)


def apply(g: Graph, pipeline: str, dims=None):
    before = g.clone()
    result = PassManager.parse(pipeline).run(g, PassContext(instruments=[VerifyEach()]))
    check_same(before, g, dims)
    return result


# -- pipeline text ------------------------------------------------------------------------------
@pytest.fixture
def lossy_pass():
    @register_pass
    @dataclass
    class Scale(Pass):
        """Test-only lossy pass: multiply every float constant by (1 + eps)."""

        name: ClassVar[str] = "test-scale"
        lossy: ClassVar[bool] = True
        eps: float = option(0.01, "relative change")
        label: str = option("x", "a string option")

        def run(self, graph, ctx):
            for v in list(graph.constants.values()):
                if v.dtype.is_float:
                    v.replace_all_uses_with(graph.add_constant(v.const * np.float32(1 + self.eps)))
                    graph.remove_constant(v)
            return PassResult(True, {"scaled": True})

    yield Scale
    del _REGISTRY["test-scale"]


def test_pipeline_round_trip(lossy_pass):
    text = "fold-constants,dce,cse{constants=false},test-scale{eps=0.25,label=\"a b\"},simplify"
    passes = parse_pipeline(text)
    assert [p.name for p in passes] == ["fold-constants", "dce", "cse", "test-scale", "simplify"]
    assert passes[2].constants is False and passes[3].eps == 0.25 and passes[3].label == "a b"
    assert parse_pipeline(format_pipeline(passes)) == passes
    assert format_pipeline(parse_pipeline("cse{constants=true}")) == "cse"  # defaults left out
    assert parse_pipeline("") == []


def test_default_expands_inside_longer_pipeline(lossy_pass):
    default = parse_pipeline("default")
    assert format_pipeline(default) == default_pipeline_text()
    assert not any(p.lossy for p in default)
    longer = parse_pipeline("default,test-scale{eps=0.5}")
    assert longer[:-1] == default and longer[-1].eps == 0.5


@pytest.mark.parametrize("text, needle", [
    ("fold-constants,frobnicate", "unknown pass 'frobnicate'; valid passes: default, assign-precision, cse, dce"),
    ("cse{bogus=1}", "unknown option 'bogus'; valid options: constants"),
    ("cse{constants=maybe}", "expects bool (true or false)"),
    ("fold-constants{max_growth=big}", "option max_growth expects int"),
    ("dce{x=1}", "valid options: none"),
    ("cse,,dce", "empty item"),
    ("cse{constants=true", "unbalanced"),
])
def test_bad_pipelines_are_one_line_errors(text, needle):
    with pytest.raises(OptcError) as e:
        parse_pipeline(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_registry_lists_options():
    info = {p["name"]: p for p in pass_info()}
    assert {"fold-constants", "fold-shapes", "dce", "cse", "simplify"} <= set(info)
    assert info["fold-constants"]["options"] == [
        {"name": "max_growth", "type": "int", "default": 65536, "doc": info["fold-constants"]["options"][0]["doc"]}]
    assert all(p["doc"] for p in info.values())


# -- graphs -------------------------------------------------------------------------------------
def mlp_with_junk() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("junk")
    x = g.add_input("x", TensorType(F32, ("batch", 4)))
    w = g.add_constant(rng.standard_normal((4, 4)).astype(np.float32))
    w_again = g.add_constant(w.const.copy())
    c = g.op("Add", g.add_constant(np.float32(1)), g.add_constant(np.float32(2)))  # folds to 3
    a = g.op("MatMul", x, w)
    b = g.op("MatMul", x, w_again)  # same as a once constants merge
    i = g.op("Identity", a)
    d = g.add_node("Dropout", [b]).output
    s = g.op("Add", g.op("Cast", i, to=F32), d)
    t = g.op("Transpose", g.op("Transpose", s, perm=(1, 0)), perm=(1, 0))
    r = g.op("Reshape", t, g.add_constant(np.array([0, 4], np.int64)))
    g.op("Relu", x)  # dead
    y = g.op("Mul", r, c)
    g.set_outputs([y])
    return g


def test_default_pipeline_cleans_up_and_reports():
    g = mlp_with_junk()
    result = apply(g, CLEANUP_PIPELINE, {"batch": 3})  # the cleanup part of default (no fusion)
    assert sorted(ops(g)) == ["Add", "MatMul", "Mul"]
    by = {r["pass"]: r for r in result.reports}
    assert by["fold-constants"]["folded"] == 1
    assert by["cse"]["merged_nodes"] == 1 and by["cse"]["merged_constants"] >= 1
    assert by["simplify"]["removed_Identity"] == 1 and by["simplify"]["removed_Dropout"] == 1
    for r in result.reports:
        assert {"pass", "changed", "nodes_before", "nodes_after", "seconds", "lossy"} <= set(r)
    assert result.pipeline == CLEANUP_PIPELINE
    json.dumps(result.reports)  # reports go into the manifest


def test_fold_constants():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 3)))
    k = g.op("Mul", g.add_constant(np.ones((2, 3), np.float32)), g.add_constant(np.float32(2)))
    g.set_outputs([g.op("Add", x, k)])
    r = apply(g, "fold-constants")
    assert ops(g) == ["Add"] and r.reports[0]["folded"] == 1
    assert not PassManager.parse("fold-constants").run(g).changed


def test_fold_constants_respects_max_growth():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (64, 64)))
    big = g.op("Expand", g.add_constant(np.float32(1)), g.add_constant(np.array([64, 64], np.int64)))
    g.set_outputs([g.op("Add", x, big)])
    apply(g, "fold-constants{max_growth=100}")
    assert "Expand" in ops(g)
    apply(g, "fold-constants")
    assert ops(g) == ["Add"]


def test_fold_shapes_symbolic_reshape():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("batch", "seq", 8)))
    shp = g.op("Shape", x)
    b = g.op("Unsqueeze", g.op("Gather", shp, g.add_constant(np.array(0))), g.add_constant(np.array([0])))
    s = g.op("Unsqueeze", g.op("Gather", shp, g.add_constant(np.array(1))), g.add_constant(np.array([0])))
    target = g.op("Concat", b, s, g.add_constant(np.array([2, 4])), axis=0)
    g.set_outputs([g.op("Reshape", x, target)])
    r = apply(g, "fold-shapes", {"batch": 2, "seq": 3})
    assert ops(g) == ["Reshape"] and g.nodes[0].inputs[1].const.tolist() == [0, 0, 2, 4]
    assert r.reports[0]["reshape_targets"] == 1


def test_dce_keeps_outputs_and_drops_dead():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2,)))
    g.op("Exp", g.op("Neg", x))
    g.add_constant(np.zeros(3, np.float32))
    g.set_outputs([g.op("Relu", x)])
    r = apply(g, "dce")
    assert ops(g) == ["Relu"] and not g.constants
    assert r.reports[0]["removed_nodes"] == 2 and r.reports[0]["removed_constants"] == 1


def test_cse_commutative_and_not_across_attrs():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 3)))
    y = g.add_input("y", TensorType(F32, (2, 3)))
    a, b = g.op("Add", x, y), g.op("Add", y, x)  # same
    s1, s2 = g.op("Softmax", a, axis=0), g.op("Softmax", b, axis=1)  # different attrs
    g.set_outputs([g.op("Sub", s1, s2)])
    apply(g, "cse")
    assert ops(g) == ["Add", "Softmax", "Softmax", "Sub"]


def test_cse_duplicate_graph_output_keeps_its_name():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2,)))
    a = g.op("Exp", x)
    b = g.add_node("Exp", [x], output_names=["out"]).output
    g.set_outputs([g.op("Neg", a), b])
    apply(g, "cse")
    assert ops(g) == ["Exp", "Neg"] and g.output_names()[1] == "out"


def test_simplify_rules():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("batch", 3, 4)))
    i = g.op("Cast", g.op("Identity", x), to=F32)
    e = g.op("Expand", i, g.add_constant(np.array([1, 1], np.int64)))  # same shape
    t = g.op("Transpose", g.op("Transpose", e, perm=(0, 2, 1)), perm=(2, 0, 1))  # composes
    u = g.op("Transpose", t, perm=(0, 1, 2))  # identity
    k = g.op("Cast", u, to=DType.FLOAT64)  # real cast stays
    g.set_outputs([k])
    r = apply(g, "simplify", {"batch": 2})
    assert ops(g) == ["Transpose", "Cast"] and g.nodes[0].attrs["perm"] == (1, 0, 2)
    assert r.reports[0]["transposes_composed"] == 1


def test_simplify_transpose_pair_cancels_and_output_name_kept():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 3)))
    h = g.op("Relu", x)
    y = g.add_node("Transpose", [g.op("Transpose", h)], output_names=["y"]).output  # perm None = reverse
    g.set_outputs([y])
    apply(g, "simplify")
    assert ops(g) == ["Relu"] and g.output_names() == ["y"]


def test_simplify_training_dropout_stays():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 3)))
    d = g.add_node("Dropout", [x, g.add_constant(np.float32(0.5)), g.add_constant(np.array(True))]).output
    g.set_outputs([g.op("Relu", d)])
    PassManager.parse("simplify").run(g)
    assert "Dropout" in ops(g)


# -- instruments, analyses, errors ---------------------------------------------------------------
def test_instruments_time_print_verify_check():
    g = mlp_with_junk()
    timer, buf = TimePasses(), io.StringIO()
    ctx = PassContext(instruments=[VerifyEach(), CheckNumerics(), PrintIRAfter("cse", stream=buf), timer],
                      dims={"batch": 2})
    PassManager.parse("default").run(g, ctx)
    assert [n for n, _ in timer.times] == default_pipeline_text().split(",")
    assert "total" in timer.table()
    assert buf.getvalue().count("IR after") == 1 and "IR after cse" in buf.getvalue()


@register_pass
@dataclass
class _Breaks(Pass):
    """Test-only: flips the sign of the first Relu's input (wrong), or corrupts the IR."""

    name: ClassVar[str] = "test-break"
    how: str = option("numerics", "numerics or ir")

    def run(self, graph, ctx):
        node = next(n for n in graph.nodes if n.op == "Relu")
        if self.how == "ir":
            node.outputs[0].type = TensorType(DType.INT64, node.outputs[0].type.shape)
        else:
            node.set_input(0, graph.add_node("Neg", [node.input(0)], before=node).output)
        return PassResult(True)


def _relu_graph():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (4,)))
    g.set_outputs([g.op("Relu", g.op("Identity", x))])
    return g


def test_numeric_check_names_failing_pass_and_history():
    with pytest.raises(PassError) as e:
        PassManager.parse("dce,simplify,test-break").run(_relu_graph(), PassContext(instruments=[CheckNumerics()]))
    msg = str(e.value)
    assert "pass test-break failed" in msg and "passes run before it: dce, simplify" in msg and "differs" in msg


def test_verify_each_names_failing_pass():
    with pytest.raises(PassError, match=r"pass test-break\{how=ir\} failed \(check after it\).*invalid"):
        PassManager.parse("test-break{how=ir}").run(_relu_graph(), PassContext(instruments=[VerifyEach()]))


def test_lossy_pass_checked_against_its_budget(lossy_pass):
    g = mlp_with_junk()
    ctx = PassContext(instruments=[CheckNumerics()], budgets={"test-scale": 0.05}, dims={"batch": 2})
    PassManager.parse("default,test-scale{eps=0.01},cse").run(g, ctx)
    assert ctx.instruments[0].errors[0]["relative_error"] > 0
    ctx = PassContext(instruments=[CheckNumerics()], budgets={"test-scale": 0.05}, dims={"batch": 2})
    with pytest.raises(PassError, match="exceeds the budget"):
        PassManager.parse("test-scale{eps=0.5}").run(mlp_with_junk(), ctx)


def test_analyses_cached_and_invalidated():
    g = mlp_with_junk()
    ctx = PassContext()
    f1 = ctx.analysis("flops", g)
    assert ctx.analysis("flops", g) is f1 and ctx.analyses.computed == 1
    idom = ctx.analysis("dominators", g)
    assert set(idom) == set(g.nodes)
    PassManager.parse("dce").run(g, ctx)  # changes the graph
    assert not ctx.analyses.cached()
    assert ctx.analysis("flops", g).ops != f1.ops


# -- CLI / API ----------------------------------------------------------------------------------
def test_cli_passes_lists_registry(capsys):
    from optc.cli import main

    assert main(["passes", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default"] == default_pipeline_text()
    assert "cse" in {p["name"] for p in info["passes"]}
    assert main(["passes"]) == 0
    assert "max_growth: int = 65536" in capsys.readouterr().out


def test_cli_inspect_after_pipeline(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]),
             helper.make_node("Identity", ["b"], ["c"]), helper.make_node("Add", ["a", "c"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    from optc.cli import main

    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"] == 4
    assert main(["inspect", str(path), "--json", "--passes", "default", "--verify-each", "--time-passes",
                 "--print-ir-after", "cse"]) == 0
    cap = capsys.readouterr()
    info = json.loads(cap.out)
    assert info["ops"] == {"Add": 1, "Relu": 1} and info["pipeline"] == default_pipeline_text()
    assert "IR after cse" in cap.err and "total" in cap.err
    assert main(["inspect", str(path), "--passes", "nope"]) == 2
    assert "unknown pass 'nope'; valid passes" in capsys.readouterr().err
    assert main(["inspect", str(path), "--passes", "dce", "--print-ir-after", "nope"]) == 2
