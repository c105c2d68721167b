"""low-rank: factorizations, rank allocation, the rewrite of every projection spelling, the
pass's modes and budgets, bad requests, and (slow) MiniLM with real weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optc.ir import Graph
from optc.ir.interpreter import Interpreter
from optc.ir.text import print_graph
from optc.ir.types import DType, TensorType
from optc.ir.verifier import verify
from optc.passes import PassContext, PassError, PassManager
from optc.passes.compression.factorize import break_even, output_error, saves, spectrum
from optc.passes.compression.fidelity import measure
from optc.passes.compression.low_rank_rewrite import apply_factors
from optc.passes.compression.projections import find_projections
from optc.passes.compression.rank_allocation import allocate, candidate_ranks, menu

IN, HID, MID, OUT = 48, 64, 40, 32


def _low_rank(rng, m: int, n: int, k: int, noise: float = 1e-3) -> np.ndarray:
    """Exactly rank k, plus Gaussian noise of relative Frobenius norm ``noise``."""
    w = rng.standard_normal((m, k)) @ rng.standard_normal((k, n))
    e = rng.standard_normal((m, n))
    return (w + noise * np.linalg.norm(w) / np.linalg.norm(e) * e).astype(np.float32)


def _decaying(rng, m: int, n: int, decay: float = 0.93) -> np.ndarray:
    """Full rank with a geometrically decaying spectrum (like trained weights)."""
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    k = min(m, n)
    return ((u[:, :k] * decay ** np.arange(k)) @ v[:, :k].T).astype(np.float32)


def _chain(weights: list[np.ndarray], rng, spellings=("linear", "matmul_add", "gemm")) -> Graph:
    """x [batch, seq, IN] through one projection per weight, one spelling each (Gemm on the
    flattened rows), GELU/ReLU between them."""
    g = Graph("chain")
    h = g.add_input("x", TensorType(DType.FLOAT32, ("batch", "seq", weights[0].shape[0])))
    for i, (w, kind) in enumerate(zip(weights, spellings)):
        b = g.add_constant((0.1 * rng.standard_normal(w.shape[1])).astype(np.float32), f"b{i}")
        if kind == "linear":
            h = g.op("Linear", h, g.add_constant(w, f"w{i}"), b, activation="gelu")
        elif kind == "matmul_add":
            h = g.op("Relu", g.op("Add", g.op("MatMul", h, g.add_constant(w, f"w{i}")), b))
        else:  # Gemm on [batch*seq, in], weight stored [out, in], alpha/beta not 1
            shape = g.op("Shape", h)
            flat = g.op("Reshape", h, g.add_constant(np.array([-1, w.shape[0]], np.int64), f"flat{i}"))
            y = g.op("Gemm", flat, g.add_constant(np.ascontiguousarray(w.T / 2), f"w{i}"), b, transB=1, alpha=2.0)
            out_shape = g.op("Concat", g.op("Slice", shape, g.add_constant(np.array([0], np.int64), f"s0_{i}"),
                                            g.add_constant(np.array([2], np.int64), f"s1_{i}")),
                             g.add_constant(np.array([w.shape[1]], np.int64), f"n{i}"), axis=0)
            h = g.op("Reshape", y, out_shape)
    g.set_outputs([h])
    verify(g)
    return g


def _inputs(rng, n: int, batch: int = 4, seq: int = 12, features: int = IN, mix: np.ndarray | None = None):
    sets = []
    for _ in range(n):
        x = rng.standard_normal((batch, seq, features))
        sets.append({"x": (x @ mix if mix is not None else x).astype(np.float32)})
    return sets


def _run(graph: Graph, pipeline: str, calibration=()):
    return PassManager.parse(pipeline).run(graph, PassContext(calibration=list(calibration))).reports[-1]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# -- factorizations -------------------------------------------------------------------------------
def test_full_rank_factors_reproduce_the_weight_both_methods():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((20, 12))
    x = rng.standard_normal((200, 20)) @ rng.standard_normal((20, 20))
    for method in ("svd", "whitened"):
        s = spectrum(w, method, x.T @ x, x.shape[0], damping=0.01)
        a, b = s.factors(s.full_rank)
        np.testing.assert_allclose(a @ b, w, atol=1e-9)
        assert s.error(s.full_rank) == pytest.approx(0.0, abs=1e-15)
        assert s.error(0) == pytest.approx(1.0)
        # the predicted error at every rank is the measured one (damping only shapes the factors)
        for r in (1, 4, 9):
            a, b = s.factors(r)
            assert output_error(w, a, b, x) ** 2 == pytest.approx(s.error(r), rel=1e-8)


def test_whitened_beats_svd_on_correlated_inputs_at_equal_rank():
    rng = np.random.default_rng(2)
    m, n = 32, 24
    w = rng.standard_normal((m, n))
    # strongly anisotropic, correlated inputs: a few directions carry most of the variance
    mix = rng.standard_normal((m, m)) * (0.6 ** np.arange(m))[:, None]
    calib = rng.standard_normal((2000, m)) @ mix
    held_out = rng.standard_normal((2000, m)) @ mix
    plain = spectrum(w, "svd")
    white = spectrum(w, "whitened", calib.T @ calib, calib.shape[0], damping=1e-4)
    for r in (2, 4, 8, 12):
        e_plain = output_error(w, *plain.factors(r), held_out)
        e_white = output_error(w, *white.factors(r), held_out)
        assert e_white < 0.7 * e_plain, (r, e_white, e_plain)


def test_rank_within_tolerance_finds_the_exact_rank():
    rng = np.random.default_rng(3)
    for k in (1, 3, 7):
        s = spectrum(_low_rank(rng, 30, 20, k).astype(np.float64), "svd")
        assert s.rank_within(0.01) == k


# -- allocation -------------------------------------------------------------------------------------
def test_candidate_ranks_stay_below_break_even():
    for m, n, q in [(8, 8, 1), (384, 1536, 16), (7, 100, 1), (3, 3, 1), (64, 32, 8)]:
        ranks = candidate_ranks(m, n, q)
        assert all(r % q == 0 and r * (m + n) < m * n for r in ranks)
        nxt = (int(ranks[-1]) if len(ranks) else 0) + q
        assert not saves(m, n, nxt) or nxt > min(m, n)
    assert len(candidate_ranks(2, 2, 1)) == 0  # break-even 1: rank 1 saves nothing


def test_allocation_meets_budget_and_prefers_the_cheap_loss():
    errors = np.linspace(1, 0, 17) ** 2  # error(r) for r = 0..16
    menus = [menu("sensitive", 16, 16, errors, 100.0), menu("robust", 16, 16, errors, 1.0)]
    ranks = allocate(menus, budget=0.5 * 2 * 256)
    cost = sum(r * 32 if r else 256 for r in ranks.values())
    assert cost <= 256
    assert ranks["robust"] and (ranks["sensitive"] == 0 or ranks["sensitive"] > ranks["robust"])
    with pytest.raises(ValueError):
        allocate(menus, budget=10)


# -- the pass: modes --------------------------------------------------------------------------------
def test_finds_rank_k_of_each_weight_and_keeps_outputs():
    rng = np.random.default_rng(4)
    ks = {"w0": 5, "w1": 9, "w2": 3}
    g = _chain([_low_rank(rng, IN, HID, 5), _low_rank(rng, HID, MID, 9), _low_rank(rng, MID, OUT, 3)], rng)
    calib = _inputs(rng, 3)
    original = g.clone()
    report = _run(g, "low-rank", calib)
    assert report["changed"] and report["mode"] == "tolerance"
    assert {l["name"]: l["rank"] for l in report["layers"]} == ks
    verify(g)
    held_out = _inputs(rng, 2, batch=3, seq=9)
    fid = measure(original, g, held_out)
    assert fid.worst_cosine >= 0.999 and report["fidelity"]["mean_cosine"] >= 0.999
    assert report["linear_params"]["eligible_after"] == sum(k * (l["shape"][0] + l["shape"][1])
                                                           for k, l in zip(ks.values(), report["layers"]))
    assert report["params"]["after"] < report["params"]["before"]
    assert report["flops"]["after"] < report["flops"]["before"]
    assert report["flops"]["dims"] == {"batch": 4, "seq": 12}
    assert json.loads(json.dumps(report))["layers"][0]["rank"] == 5  # goes into the manifest as is


def test_full_rank_weights_are_left_alone_without_a_target():
    rng = np.random.default_rng(5)
    g = _chain([rng.standard_normal((IN, HID)).astype(np.float32), rng.standard_normal((HID, MID)).astype(np.float32),
                rng.standard_normal((MID, OUT)).astype(np.float32)], rng)
    before = print_graph(g)
    report = _run(g, "low-rank", _inputs(rng, 2))
    assert not report["changed"] and report["factored"] == 0
    assert print_graph(g) == before


def test_exact_rank_at_or_above_break_even_is_never_substituted():
    rng = np.random.default_rng(6)
    # 48x64 has break-even 27.4: rank 30 would cost more than W, rank 20 saves
    g = _chain([_low_rank(rng, IN, HID, 30), _low_rank(rng, HID, MID, 20)], rng, ("matmul_add", "linear"))
    report = _run(g, "low-rank", _inputs(rng, 2))
    ranks = {l["name"]: l["rank"] for l in report["layers"]}
    assert ranks == {"w0": None, "w1": 20}
    assert [n.op for n in g.nodes].count("MatMul") == 2  # w0 unchanged, w1's first factor
    # and under any target, every substituted rank is below break-even
    for keep in (0.3, 0.6, 0.9):
        r = _run(_chain([_decaying(rng, IN, HID), _decaying(rng, HID, MID)], rng, ("matmul_add", "linear")),
                 f"low-rank{{keep={keep}}}", _inputs(rng, 2))
        assert all(l["rank"] is None or l["rank"] < break_even(*l["shape"]) for l in r["layers"])


def test_exact_rewrite_at_full_rank_every_spelling():
    rng = np.random.default_rng(7)
    g = _chain([rng.standard_normal((IN, HID)).astype(np.float32), rng.standard_normal((HID, MID)).astype(np.float32),
                rng.standard_normal((MID, OUT)).astype(np.float32)], rng)
    feed = _inputs(rng, 1)[0]
    ref = Interpreter(g)(feed)
    factors = {}
    for p in find_projections(g):
        s = spectrum(p.matrix(), "svd")
        factors[p.name] = s.factors(s.full_rank)
    assert apply_factors(g, factors) == ["w0", "w1", "w2"]
    verify(g)
    got = Interpreter(g)(feed)
    name = g.output_names()[0]
    np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-5 * np.abs(ref[name]).max())


@pytest.mark.parametrize("kind", ["linear", "matmul_add", "gemm"])
def test_each_spelling_is_rewritten_and_numerically_right(kind):
    rng = np.random.default_rng(8)
    w = _decaying(rng, IN, HID)
    g = _chain([w], rng, (kind,))
    (p,) = find_projections(g)
    bias = p.bias_vector().astype(np.float64)
    op = p.node.op
    report = _run(g, "low-rank{keep=0.5,method=svd,allocation=uniform}")
    (layer,) = report["layers"]
    r = layer["rank"]
    assert r == int(0.5 * IN * HID / (IN + HID)) and layer["params_after"] == r * (IN + HID)
    verify(g)
    (q,) = [p for p in find_projections(g) if p.name == "w0.lr_b"]
    first = q.input.producer
    assert q.node.op == op and first.op == "MatMul" and first.input(1).name == "w0.lr_a"
    assert first.input(1).const.shape == (IN, r) and q.matrix().shape == (r, HID)
    assert "w0" not in g.constants
    feed = _inputs(rng, 1)[0]
    x = feed["x"].reshape(-1, IN).astype(np.float64)
    a, b = first.input(1).const.astype(np.float64), q.matrix().astype(np.float64)
    y = x @ a @ b + bias
    # the factors are the rank-r truncation of W
    u, s, vt = np.linalg.svd(w.astype(np.float64))
    np.testing.assert_allclose(a @ b, (u[:, :r] * s[:r]) @ vt[:r], atol=1e-4)
    y = {"linear": lambda t: 0.5 * t * (1 + _erf(t / np.sqrt(2))), "matmul_add": lambda t: np.maximum(t, 0),
         "gemm": lambda t: t}[kind](y)
    got = Interpreter(g)(feed)[g.output_names()[0]]
    np.testing.assert_allclose(got.reshape(-1, HID), y, rtol=1e-4, atol=1e-4)


def _erf(x):
    import math

    return np.vectorize(math.erf)(x)


def test_keep_and_flops_targets_are_met():
    rng = np.random.default_rng(9)
    weights = [_decaying(rng, IN, HID, 0.9), _decaying(rng, HID, MID, 0.97), _decaying(rng, MID, OUT, 0.8)]
    calib = _inputs(rng, 3)
    for allocation in ("sensitivity", "uniform"):
        report = _run(_chain(weights, rng), f"low-rank{{keep=0.6,allocation={allocation}}}", calib)
        assert report["linear_params"]["eligible_kept"] <= 0.6
        g = _chain(weights, rng)
        report = _run(g, f"low-rank{{remove_flops=0.25,allocation={allocation}}}", calib)
        f = report["flops"]
        assert f["before"] - f["after"] >= 0.25 * f["before"] - 1
        assert report["fidelity"]["inputs"] == "held-back calibration"


def test_allocated_beats_uniform_when_layers_differ_in_sensitivity():
    rng = np.random.default_rng(10)
    # one layer with a flat spectrum (sensitive to truncation) between two with steep ones
    weights = [_decaying(rng, IN, HID, 0.75), _decaying(rng, HID, MID, 0.99), _decaying(rng, MID, OUT, 0.8)]
    calib = _inputs(rng, 3)
    cos = {}
    keep = 0.5
    for allocation in ("uniform", "sensitivity"):  # at the parameter count uniform rounding gives
        g = _chain(weights, rng)
        original = g.clone()
        report = _run(g, f"low-rank{{keep={keep},allocation={allocation}}}", calib)
        cos[allocation] = (measure(original, g, calib).mean_cosine, report["linear_params"]["eligible_after"])
        keep = report["linear_params"]["eligible_kept"]
    assert cos["sensitivity"][1] <= cos["uniform"][1]
    assert cos["sensitivity"][0] > cos["uniform"][0]


def test_min_cosine_budget_is_honored_on_held_back_calibration():
    """The whitening is fitted to the first two sets; the budget holds on the third, which it did
    not see, and the report says so."""
    rng = np.random.default_rng(11)
    weights = [_decaying(rng, IN, HID, 0.9), _decaying(rng, HID, MID, 0.95), _decaying(rng, MID, OUT, 0.9)]
    calib = _inputs(rng, 3)
    results = {}
    for budget in (0.999, 0.99):
        g = _chain(weights, rng)
        original = g.clone()
        report = _run(g, f"low-rank{{min_cosine={budget}}}", calib)
        assert report["changed"] and report["fidelity"]["inputs"] == "held-back calibration"
        measured = measure(original, g, calib[2:]).mean_cosine
        assert measured >= budget and report["fidelity"]["mean_cosine"] >= budget
        assert abs(measured - report["fidelity"]["mean_cosine"]) < 1e-6
        results[budget] = report["linear_params"]["eligible_after"]
    assert results[0.99] < results[0.999]  # a looser budget buys more compression


def test_quantum_rounds_every_rank():
    rng = np.random.default_rng(15)
    weights = [_low_rank(rng, IN, HID, 5), _decaying(rng, HID, MID), _decaying(rng, MID, OUT)]
    calib = _inputs(rng, 2)
    tol = _run(_chain(weights, rng), "low-rank{quantum=8}", calib)
    assert {l["name"]: l["rank"] for l in tol["layers"]}["w0"] == 8  # rank 5 rounded up
    for allocation in ("sensitivity", "uniform"):
        r = _run(_chain(weights, rng), f"low-rank{{keep=0.6,quantum=8,allocation={allocation}}}", calib)
        ranks = [l["rank"] for l in r["layers"] if l["rank"]]
        assert ranks and all(k % 8 == 0 for k in ranks) and r["linear_params"]["eligible_kept"] <= 0.6


def test_include_and_exclude_patterns():
    rng = np.random.default_rng(12)
    weights = [_low_rank(rng, IN, HID, 4), _low_rank(rng, HID, MID, 4), _low_rank(rng, MID, OUT, 4)]
    report = _run(_chain(weights, rng), "low-rank{exclude=w1}", _inputs(rng, 2))
    assert [l["name"] for l in report["layers"]] == ["w0", "w2"] and report["skipped"] == {"w1": "excluded"}
    report = _run(_chain(weights, rng), "low-rank{include=w0|w2,method=svd}")
    assert {l["name"] for l in report["layers"]} == {"w0", "w2"} and report["fidelity"]["inputs"] == "random"


# -- bad requests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline, calibrated, message", [
    ("low-rank{keep=0}", True, "keep must be in (0, 1]"),
    ("low-rank{keep=1.5}", True, "keep must be in (0, 1]"),
    ("low-rank{keep=-0.2}", True, "keep must be in (0, 1]"),
    ("low-rank{keep=0.001}", True, "below the smallest factorization"),
    ("low-rank{min_cosine=0.99999999}", True, "no factorization keeps the calibration mean cosine"),
    ("low-rank{remove_flops=0.99}", True, "more than factoring can"),
    ("low-rank{keep=0.5,min_cosine=0.9}", True, "give one of keep"),
    ("low-rank", False, "needs calibration inputs"),
    ("low-rank{keep=0.5,method=svd}", False, "needs calibration inputs"),
    ("low-rank{method=qr}", True, "method must be one of"),
    ("low-rank{include=nothing_matches}", True, "no eligible weights"),
])
def test_bad_requests_are_one_line_errors_and_leave_the_graph(pipeline, calibrated, message):
    rng = np.random.default_rng(13)
    g = _chain([_decaying(rng, IN, HID), _decaying(rng, HID, MID), _decaying(rng, MID, OUT)], rng)
    before = print_graph(g)
    with pytest.raises(PassError) as e:
        _run(g, pipeline, _inputs(rng, 2) if calibrated else ())
    text = str(e.value)
    assert message in text and "\n" not in text
    assert print_graph(g) == before


def test_graph_without_projections_is_a_clear_error():
    g = Graph("g")
    a = g.add_input("a", TensorType(DType.FLOAT32, (3, 4)))
    b = g.add_input("b", TensorType(DType.FLOAT32, (4, 5)))
    g.set_outputs([g.op("MatMul", a, b)])
    with pytest.raises(PassError, match="no eligible weights.*the graph has none"):
        _run(g, "low-rank{method=svd}")


# -- codegen ------------------------------------------------------------------------------------------
def test_compiled_factored_model_matches_interpreter_on_packed_dense_kernels():
    from optc.codegen.build import build

    rng = np.random.default_rng(14)
    g = _chain([_decaying(rng, IN, HID), _decaying(rng, HID, MID)], rng, ("linear", "matmul_add"))
    report = _run(g, "low-rank{keep=0.5,method=svd,allocation=uniform}")
    assert report["factored"] == 2
    cm = build(g, "x86")
    assert cm.fallback_funcs == [] and cm.unscheduled == []
    model = cm.load()
    for batch, seq in [(1, 7), (2, 16)]:
        feed = {"x": rng.standard_normal((batch, seq, IN)).astype(np.float32)}
        name = g.output_names()[0]
        np.testing.assert_allclose(model.run(feed)[name], Interpreter(g)(feed)[name], rtol=1e-4, atol=1e-4)


# -- slow: MiniLM with real weights -------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_allocated_dominates_uniform_and_plain_svd_on_held_out_news(tmp_path):
    from optc import datasets, load_model, zoo
    from optc.passes.compression.fidelity import reference_outputs
    from optc.passes.compression.low_rank import LowRankModel, eligible_layers

    path = zoo.export_pt2(zoo.load_minilm(), zoo.tokenize(zoo.SAMPLE_SENTENCES[:2], max_length=128), tmp_path / "minilm.pt2")
    graph = load_model(path)

    def sets(sentences):
        return [{k: v.numpy() for k, v in zoo.tokenize(sentences[i:i + 32], max_length=128, pad_to_max=False).items()
                 if k in ("input_ids", "attention_mask")} for i in range(0, len(sentences), 32)]

    calib = sets(datasets.news_sentences("calib", 64, seed=0))
    held_out = sets(datasets.news_sentences("holdout", 96, seed=1))
    layers, _ = eligible_layers(graph, exclude="pooler")
    assert len(layers) == 36
    white = LowRankModel.build(graph, layers, calib, "whitened")
    plain = LowRankModel.build(graph, layers, calib, "svd")
    white.measure_sensitivity(probe_sets=1)
    reference = reference_outputs(graph, held_out)
    full = white.params({})
    for keep in (0.9, 0.7):
        same = white.uniform(keep)  # uniform ranks round down; the allocation gets exactly what they keep
        plans = {"svd": (plain, plain.uniform(keep)), "uniform": (white, same),
                 "allocated": (white, white.allocated(white.params(same)))}
        assert plain.params(plans["svd"][1]) == white.params(same) <= keep * full
        assert white.params(plans["allocated"][1]) <= white.params(same)
        cos = {name: measure(graph, m.apply(ranks), held_out, reference=reference).mean_cosine
               for name, (m, ranks) in plans.items()}
        assert cos["allocated"] > cos["uniform"] > cos["svd"], (keep, cos)
