"""quantize and assign-precision: the rewrite of every projection spelling, budgets met on
calibration data, GPTQ against round-to-nearest, the knapsack solver against brute force, bad
requests (one line, graph untouched), and (slow) MiniLM with real weights on held-out news."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import prune_models
from optc.ir import DType
from optc.ir.interpreter import Interpreter
from optc.ir.text import print_graph
from optc.passes import PassContext, PassError, PassManager
from optc.passes.compression.fidelity import RUIN_COSINE, measure
from optc.passes.compression.mckp import least_cost, least_loss
from test_low_rank import HID, IN, MID, OUT, _chain, _decaying, _inputs


def _run(graph, pipeline: str, calibration=(), target=None):
    ctx = PassContext(calibration=list(calibration), target=target)
    return PassManager.parse(pipeline).run(graph, ctx).reports[-1]


def _chain3(seed=21):
    rng = np.random.default_rng(seed)
    return _chain([_decaying(rng, IN, HID), _decaying(rng, HID, MID), _decaying(rng, MID, OUT)], rng), rng


@pytest.mark.parametrize("precision", ["int8", "int4", "bf16", "fp16"])
def test_every_spelling_becomes_one_qlinear_within_its_precision(precision):
    g, rng = _chain3()
    original = g.clone()
    calib = _inputs(rng, 4)
    report = _run(g, f"quantize{{precision={precision}}}", calib, target="x86-avx2")
    ops = [n.op for n in g.nodes]
    assert ops.count("QLinear") == 3 and not {"Linear", "MatMul", "Gemm"} & set(ops)
    floor = {"int8": 0.999, "int4": 0.98, "bf16": 0.99999, "fp16": 0.99999}[precision]
    held = _inputs(np.random.default_rng(99), 2)
    assert measure(original, g, held).mean_cosine >= floor
    assert report["precisions"] == {precision: 3}
    assert report["size"]["layers_bytes_after"] < report["size"]["layers_bytes_before"]
    assert [l["precision"] for l in report["layers"]] == [precision] * 3
    if precision == "int8":  # the target's kernel multiplies 7-bit activations exactly (AVX2)
        assert {n.attrs["act_qmax"] for n in g.nodes if n.op == "QLinear"} == {127}
        assert report["int8"] == {"activations": "dynamic", "act_qmax": 127, "smooth": 0.5}


def test_bias_and_activation_are_folded_into_the_qlinear():
    g, rng = _chain3()
    _run(g, "quantize{precision=bf16}")
    acts = [n.attrs["activation"] for n in g.nodes if n.op == "QLinear"]
    assert acts[0] == "gelu" and all(n.input(4) is not None for n in g.nodes if n.op == "QLinear")


def test_gptq_beats_round_to_nearest_on_held_out_inputs():
    rng = np.random.default_rng(5)
    mix = rng.standard_normal((IN, IN)) * np.where(rng.random(IN) < 0.1, 8.0, 1.0)  # correlated, outlier channels
    g0 = _chain([_decaying(rng, IN, HID), _decaying(rng, HID, MID)], rng, ("linear", "matmul_add"))
    calib, held = _inputs(rng, 8, mix=mix), _inputs(rng, 3, mix=mix)
    cos = {}
    for method in ("rtn", "gptq"):
        g = g0.clone()
        _run(g, f"quantize{{precision=int4,group_size=32,method={method}}}", calib)
        cos[method] = measure(g0, g, held).mean_cosine
    assert 1 - cos["gptq"] < 0.8 * (1 - cos["rtn"]), cos


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_int4_grids(method):
    """grid=asymmetric stores uint4 codes with uint4 zero points, grid=minmax uint4 codes with
    float32 ones (each group's own range); both compile and match the interpreter, and the
    min/max grid is at least as close as the 0-including one."""
    from optc.codegen.build import build

    g0, rng = _chain3()
    calib, held = _inputs(rng, 6), _inputs(np.random.default_rng(98), 2)
    cos = {}
    for grid in ("symmetric", "asymmetric", "minmax"):
        g = g0.clone()
        report = _run(g, f"quantize{{precision=int4,group_size=32,method={method},grid={grid}}}", calib)
        assert report["int4"] == {"group_size": 32, "grid": grid}
        q = [n for n in g.nodes if n.op == "QLinear"]
        want = {"symmetric": (DType.INT4, None), "asymmetric": (DType.UINT4, DType.UINT4),
                "minmax": (DType.UINT4, DType.FLOAT32)}[grid]
        assert {(n.input(1).dtype, n.input(3).dtype if n.input(3) is not None else None) for n in q} == {want}
        cos[grid] = measure(g0, g, held).mean_cosine
        if grid == "minmax":
            feed = held[0]
            ref = Interpreter(g)(feed)
            got = build(g, "x86").load().run(feed)
            name = g.output_names()[0]
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-4 * float(np.abs(ref[name]).max()))
    assert cos["minmax"] >= cos["asymmetric"] - 1e-4, cos


def test_fitted_quantizers_are_measured_on_held_back_calibration_sets():
    g, rng = _chain3()
    report = _run(g, "quantize{precision=int4}", _inputs(rng, 8))
    assert report["fidelity"]["inputs"].startswith("calibration (the 2 of 8 input sets not fitted to)")
    assert report["fidelity"]["vectors"] == 2 * 4 * 12


def test_static_activations_get_one_scale_per_layer():
    g, rng = _chain3()
    _run(g, "quantize{act=static}", _inputs(rng, 4), target="x86-avx2")
    q = [n for n in g.nodes if n.op == "QLinear"]
    assert all(n.attrs["act_quant"] == "static" and n.input(5).const.shape == () for n in q)


def test_compiled_quantized_chain_matches_the_interpreter():
    from optc.codegen.build import build

    g, rng = _chain3()
    _run(g, "quantize{precision=int8}", _inputs(rng, 2), target="x86")
    model = build(g, "x86").load()
    feed = _inputs(rng, 1)[0]
    name = g.output_names()[0]
    ref = Interpreter(g)(feed)[name]
    np.testing.assert_allclose(model.run(feed)[name], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


# -- assign-precision ------------------------------------------------------------------------------------
def test_knapsack_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(30):
        layers = [[(f"p{j}", float(rng.integers(1, 50)), float(rng.random())) for j in range(3)] for _ in range(4)]
        plans = list(itertools.product(range(3), repeat=4))

        def cost(p):
            return sum(layers[i][j][1] for i, j in enumerate(p))

        def loss(p):
            return sum(layers[i][j][2] for i, j in enumerate(p))

        budget = float(rng.integers(10, 150))
        # costs are rounded up to 1/10000 of the largest total: plans within that of the budget may go
        slack = 4 * sum(max(o[1] for o in opts) for opts in layers) / 10_000
        fit = [p for p in plans if cost(p) <= budget - slack]
        got = least_loss(layers, budget, resolution=10_000)
        if got is not None:
            assert cost(got) <= budget
        if fit:
            assert loss(got) <= min(map(loss, fit)) + 1e-9
        max_loss = float(rng.random() * 2)
        ok = [p for p in plans if loss(p) <= max_loss]
        got = least_cost(layers, max_loss, resolution=10_000)
        if not ok:
            assert got is None
        else:
            assert loss(got) <= max_loss + 1e-9 and cost(got) <= min(map(cost, ok)) + 1e-6


def test_size_budget_is_met_and_reported():
    g, rng = _chain3()
    report = _run(g, "assign-precision{size=0.2}", _inputs(rng, 4))
    assert report["size"]["layers_bytes_after"] <= 0.2 * report["size"]["layers_bytes_before"]
    assert report["mode"] == "size" and all("sensitivity" in l for l in report["layers"])
    assert set(report["layers"][0]["sensitivity"]) == {"int4", "int8", "bf16", "fp32"}


def test_min_cosine_is_met_on_the_measured_sets_at_less_size():
    g, rng = _chain3()
    report = _run(g, "assign-precision{min_cosine=0.999}", _inputs(rng, 8))
    assert report["fidelity"]["mean_cosine"] >= 0.999
    assert report["size"]["layers_bytes_after"] < 0.5 * report["size"]["layers_bytes_before"]
    assert report["search"]["tried"]


@pytest.mark.parametrize("pipeline, calibrated, message", [
    ("assign-precision{size=0.01}", True, "no assignment meets size=0.01"),
    ("assign-precision{min_cosine=1.0,candidates=int4}", True, "no assignment keeps the calibration mean cosine"),
    ("assign-precision", True, "give exactly one budget"),
    ("assign-precision{size=0.5}", False, "needs calibration inputs"),
    ("assign-precision{size=0.5,candidates=int3}", True, "candidates must be among"),
    ("quantize{precision=int2}", True, "precision must be one of"),
    ("quantize{precision=int4}", False, "method=gptq needs calibration inputs"),
    ("quantize{group_size=48}", True, "group_size must be one of"),
    ("quantize{precision=int4,grid=nf4}", True, "grid must be one of symmetric, asymmetric, minmax"),
    ("quantize{act_qmax=100}", True, "act_qmax must be 0"),
    ("quantize{precision=int4,min_cosine=0.99999}", True, "below min_cosine=0.99999"),
    ("quantize{include=nothing_matches}", True, "no eligible weights"),
])
def test_bad_requests_are_one_line_errors_and_leave_the_graph(pipeline, calibrated, message):
    g, rng = _chain3()
    before = print_graph(g)
    with pytest.raises(PassError) as e:
        _run(g, pipeline, _inputs(rng, 4) if calibrated else ())
    assert message in str(e.value) and "\n" not in str(e.value)
    assert print_graph(g) == before


def test_a_ruined_model_is_refused(monkeypatch):
    from optc.passes.compression import quant_model

    g, rng = _chain3()
    before = print_graph(g)
    real = quant_model.QuantModel._quantize

    def garbage(self, layer, precision):  # a quantizer gone wrong: every weight negated
        q = real(self, layer, precision)
        return dataclasses.replace(q, weight=(-q.weight.astype(np.float32)).astype(q.weight.dtype))

    monkeypatch.setattr(quant_model.QuantModel, "_quantize", garbage)
    with pytest.raises(PassError, match=f"ruined .* < {RUIN_COSINE}"):
        _run(g, "quantize{precision=bf16}", _inputs(rng, 2))
    assert print_graph(g) == before


def test_small_bert_int8_keeps_its_outputs():
    g = prune_models.graph("bert")
    original = g.clone()
    report = _run(g, "quantize", prune_models.calibration("bert", sets=2))
    assert report["precisions"] == {"int8": 12}
    assert measure(original, g, [prune_models.feed("bert")]).mean_cosine > 0.999


# -- the CLI: a request no target kernel or budget can meet is one line, exit 2, nothing written --------
def test_cli_bad_precision_requests_are_one_line_and_write_nothing(tmp_path):
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((16, 64)).astype(np.float32))
    cases = [
        (["compile", str(model), "--target", "cuda-sm90", "--passes", "default,quantize", "-o", str(tmp_path / "a.optc")],
         "no int8-activation kernel for cuda-sm90"),
        (["optimize", str(model), "--passes", "default,assign-precision{size=0.01}", "--calib", str(calib),
          "--calib-batch", "4", "-o", str(tmp_path / "b.onnx")], "no assignment meets size=0.01"),
    ]
    for args, message in cases:
        r = subprocess.run([sys.executable, "-m", "optc.cli", *args], capture_output=True, text=True)
        errors = [line for line in r.stderr.strip().splitlines() if not line.startswith("optc: note: ")]
        assert r.returncode == 2 and len(errors) == 1 and message in errors[0], r.stderr
        assert not (tmp_path / args[-1]).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "mlp.onnx"]
