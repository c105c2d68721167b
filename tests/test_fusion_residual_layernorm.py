"""fuse_residual_layernorm (passes/fusion/residual_layernorm.py): LayerNormalization(X + R) →
AddLayerNorm, with the sum as a second output when something else reads it. Hand-built cases,
the test models through the three export paths (slow), the compiled row kernel and the ONNX
export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fusion_models import PATHS, assert_outputs_close, check, cleaned, ops
from optc.frontend.onnx_export import to_onnx
from optc.ir.analysis import summarize
from optc.ir.graph import Graph
from optc.ir.interpreter import run
from optc.ir.types import DType, TensorType
from optc.passes.fusion import fuse_residual_layernorm

F32 = DType.FLOAT32
RNG = np.random.default_rng(5)
H = 8


def c(g, x, dtype=np.float32):
    return g.add_constant(np.asarray(x, dtype=dtype))


def residual_ln(shape=(2, 5, H), *, bias=True, order="xr", dtype=F32, **ln_attrs):
    g = Graph()
    x = g.add_input("x", TensorType(dtype, shape))
    r = g.add_input("r", TensorType(dtype, shape))
    s = g.op("Add", x, r) if order == "xr" else g.op("Add", r, x)
    np_dt = dtype.numpy
    ins = [s, c(g, RNG.standard_normal(shape[-1]), np_dt)] + ([c(g, RNG.standard_normal(shape[-1]), np_dt)] if bias else [])
    y = g.add_node("LayerNormalization", ins, ln_attrs).output
    return g, x, r, s, y


def fused(g):
    return next(n for n in g.nodes if n.op == "AddLayerNorm")


@pytest.mark.parametrize("order", ["xr", "rx"])
@pytest.mark.parametrize("bias", [True, False])
def test_post_ln_sum_used_once(order, bias):
    g, x, r, s, y = residual_ln(bias=bias, order=order, epsilon=1e-12)
    g.set_outputs([y])
    g = check(g, fuse_residual_layernorm, 1)
    assert ops(g) == {"AddLayerNorm": 1}
    n = fused(g)
    assert len(n.outputs) == 1 and n.attrs["epsilon"] == pytest.approx(1e-12)
    assert (n.input(3) is not None) == bias
    assert g.output_names() == [n.output.name]


def test_pre_ln_keeps_the_sum_for_its_other_users():
    """GPT-2: h = x + attn; LN(h) feeds the MLP and h itself is the next residual."""
    g, x, r, s, y = residual_ln()
    w = c(g, RNG.standard_normal((H, H)))
    g.set_outputs([g.op("Add", s, g.op("MatMul", y, w))])
    g = check(g, fuse_residual_layernorm, 1)
    n = fused(g)
    assert len(n.outputs) == 2 and ops(g) == {"AddLayerNorm": 1, "MatMul": 1, "Add": 1}
    assert [u.op for u, _ in n.outputs[1].uses] == ["Add"]


def test_sum_used_before_the_layernorm_stays_defined_first():
    """A user of the sum placed between the Add and the LayerNorm must still see S defined."""
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, H)))
    r = g.add_input("r", TensorType(F32, (2, H)))
    s = g.op("Add", x, r)
    neg = g.op("Neg", s)
    y = g.op("LayerNormalization", s, c(g, np.ones(H)))
    g.set_outputs([y, neg])
    g = check(g, fuse_residual_layernorm, 1)
    assert [n.op for n in g.nodes] == ["AddLayerNorm", "Neg"]


def test_sum_that_is_a_graph_output_keeps_its_name():
    g, x, r, s, y = residual_ln()
    g.rename_value(s, "residual")
    g.set_outputs([y, s])
    g = check(g, fuse_residual_layernorm, 1)
    assert g.output_names() == [fused(g).outputs[0].name, "residual"]
    assert len(fused(g).outputs) == 2


def test_broadcast_residual_fuses():
    """Embedding sums: [B, S, H] + [1, S, H] (position table slice)."""
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 5, H)))
    p = g.add_input("p", TensorType(F32, (1, 5, H)))
    g.set_outputs([g.op("LayerNormalization", g.op("Add", x, p), c(g, np.ones(H)))])
    check(g, fuse_residual_layernorm, 1)


# -- negative cases ----------------------------------------------------------------------------
def test_constant_operand_is_a_bias_not_a_residual():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 5, H)))
    g.set_outputs([g.op("LayerNormalization", g.op("Add", x, c(g, RNG.standard_normal(H))), c(g, np.ones(H)))])
    check(g, fuse_residual_layernorm, 0)


def test_not_last_axis_does_not_fuse():
    g, *_, y = residual_ln(axis=-2)
    g.set_outputs([y])
    check(g, fuse_residual_layernorm, 0)


def test_layernorm_with_statistics_outputs_does_not_fuse():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, H)))
    r = g.add_input("r", TensorType(F32, (2, H)))
    ln = g.add_node("LayerNormalization", [g.op("Add", x, r), c(g, np.ones(H))], num_outputs=2)
    g.set_outputs(ln.outputs)
    check(g, fuse_residual_layernorm, 0)


def test_other_stash_type_does_not_fuse():
    g, *_, y = residual_ln(stash_type=11)
    g.set_outputs([y])
    check(g, fuse_residual_layernorm, 0)


def test_no_add_does_not_fuse():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, H)))
    r = g.add_input("r", TensorType(F32, (2, H)))
    g.set_outputs([g.op("LayerNormalization", g.op("Mul", x, r), c(g, np.ones(H)))])
    check(g, fuse_residual_layernorm, 0)


# -- real models x three import paths (slow) -----------------------------------------------------
# (AddLayerNorm, of them with the sum as second output). MiniLM (post-LN): 12 residual norms + the
# embedding norm (its input is the sum of two embedding lookups), none needing the sum. GPT-2
# (pre-LN): ln_1/ln_2 of both layers keep the residual stream, ln_f does not. Llama: RMSNorm only.
REAL = {"minilm": (13, 0), "gpt2": (5, 4), "llama_gqa": (0, 0)}


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(REAL))
def test_real_models(name, path, tmp_path_factory):
    graph, feed, ref = cleaned(name, path, tmp_path_factory, upto="residual_layernorm")
    before = summarize(graph).ops_expanded.get("LayerNormalization", 0)
    assert fuse_residual_layernorm(graph) == REAL[name][0]
    nodes = [n for n in graph.nodes if n.op == "AddLayerNorm"]
    assert sum(len(n.outputs) == 2 for n in nodes) == REAL[name][1]
    assert ops(graph)["LayerNormalization"] == 0
    # Counted as the ops they stand for, the layer norms are all still there.
    assert summarize(graph).ops_expanded.get("LayerNormalization", 0) == before
    assert_outputs_close(graph, feed, ref)


# -- compiled row kernel and ONNX export ----------------------------------------------------------
def _both_forms(h):
    """y1 = AddLayerNorm(x, r) alone (with a Relu epilogue) and (y2, s2) with the sum kept."""
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, "seq", h)))
    r = g.add_input("r", TensorType(F32, (1, "seq", h)))
    a = g.add_node("AddLayerNorm", [x, r, c(g, RNG.standard_normal(h)), c(g, RNG.standard_normal(h))])
    b = g.add_node("AddLayerNorm", [r, x, c(g, RNG.standard_normal(h))], num_outputs=2)
    g.set_outputs([g.op("Relu", a.output), *b.outputs])
    return g


@pytest.mark.parametrize("h", [16, 19])  # a multiple of the vector width, and one with a tail
def test_compiled_add_layer_norm_is_one_row_kernel(h, monkeypatch):
    from optc.codegen import build as build_mod

    seen = []
    original = build_mod.schedule_module

    def spy(mod, *args, **kwargs):
        from tvm import tirx

        seen.extend(gv.name_hint for gv, f in mod.functions_items()  # run-time check kernels aside
                    if isinstance(f, tirx.PrimFunc) and not (f.attrs is not None and "optc.check" in f.attrs))
        return original(mod, *args, **kwargs)

    monkeypatch.setattr(build_mod, "schedule_module", spy)
    g = _both_forms(h)
    cm = build_mod.build(g, "x86")
    assert not cm.fallback_funcs and not cm.unscheduled
    # No separate add kernel: both adds happen inside the row kernels.
    assert len(seen) == 2 and all(name.startswith(("optc_add_layer_norm", "fused_optc_add_layer_norm")) for name in seen), seen
    assert any("_maximum" in name for name in seen), seen  # the Relu epilogue joined the kernel
    model = cm.load()
    for seq in (3, 8):
        feed = {k: RNG.standard_normal((1, seq, h)).astype(np.float32) for k in ("x", "r")}
        ref, got = run(g, feed), model.run(feed)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


def test_onnx_export_decomposes_and_runs_in_onnxruntime():
    g = _both_forms(H)
    m = to_onnx(g)
    assert sorted(n.op_type for n in m.graph.node) == ["Add", "Add", "LayerNormalization", "LayerNormalization", "Relu"]
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {k: RNG.standard_normal((1, 5, H)).astype(np.float32) for k in ("x", "r")}
    ref = run(g, feed)
    for arr, name in zip(sess.run(None, feed), g.output_names()):
        np.testing.assert_allclose(arr, ref[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("full", ["x", "r"])
def test_compiled_broadcast_residual_is_one_row_kernel(full, monkeypatch):
    """Embedding sums add a [1, seq, H] position slice to [batch, seq, H]: still one kernel,
    whichever operand is the full-size one."""
    from optc.codegen import build as build_mod

    seen = []
    original = build_mod.schedule_module

    def spy(mod, *args, **kwargs):
        from tvm import tirx

        seen.extend(gv.name_hint for gv, f in mod.functions_items()  # run-time check kernels aside
                    if isinstance(f, tirx.PrimFunc) and not (f.attrs is not None and "optc.check" in f.attrs))
        return original(mod, *args, **kwargs)

    monkeypatch.setattr(build_mod, "schedule_module", spy)
    shapes = {"x": (2, "seq", 16), "r": (1, "seq", 16)} if full == "x" else {"x": (1, "seq", 16), "r": (2, "seq", 16)}
    g = Graph()
    x = g.add_input("x", TensorType(F32, shapes["x"]))
    r = g.add_input("r", TensorType(F32, shapes["r"]))
    g.set_outputs(g.add_node("AddLayerNorm", [x, r, c(g, RNG.standard_normal(16))], num_outputs=2).outputs)
    cm = build_mod.build(g, "x86")
    assert not cm.fallback_funcs and not cm.unscheduled
    assert seen == ["optc_add_layer_norm"], seen
    feed = {k: RNG.standard_normal([5 if d == "seq" else d for d in shapes[k]]).astype(np.float32) for k in ("x", "r")}
    ref, got = run(g, feed), cm.load().run(feed)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)
