"""prune-heads: the physical rewrite equals the torch model with the same heads zeroed, GQA
loses whole KV groups, a block with no heads left keeps its residual path, budgets hold, bad
requests fail in one line and leave the graph unchanged, and the report has the numbers.
Slow tier: MiniLM with its real weights on real text (held-out news, Lee benchmark)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import prune_models as pm
from optc.ir.interpreter import Interpreter
from optc.ir.text import print_graph
from optc.ir.verifier import verify
from optc.passes import PassContext, PassError, PassManager
from optc.passes.compression.fidelity import measure
from optc.passes.compression.heads import find_attention_blocks
from optc.passes.compression.prune_heads import rewrite_heads


def run(pipeline: str, g, calibration=None, refuse_ruin=True):
    ctx = PassContext(calibration=calibration or [], refuse_ruin=refuse_ruin)
    return PassManager.parse(pipeline).run(g, ctx).reports[-1]


def zeroed_reference(name: str, drop: list[list[int]]) -> np.ndarray:
    """The torch model's output with the listed heads' output-projection inputs zeroed."""
    m = pm.model(name)
    d = pm.SHAPES[name][2]
    for (_, _, _, o), heads in zip(pm.attention_modules(name, m), drop):
        pm.zero_inputs(o, [h * d + i for h in heads for i in range(d)])
    return pm.torch_output(m, pm.feed(name))


@pytest.mark.parametrize("name,path,drop", [
    ("bert", "torch.export", [[1], [0, 3]]),
    ("bert", "onnx-torchscript", [[2, 3], []]),
    ("gpt2", "torch.export", [[0], [1, 2]]),
    ("gpt2", "onnx-torchscript", [[3], [0]]),
    ("gpt2", "onnx-dynamo", [[1, 2], [0]]),
    ("llama", "torch.export", [[0, 1], []]),
    ("llama", "onnx-torchscript", [[], [2, 3]]),
    ("llama", "onnx-dynamo", [[2, 3], [0, 1]]),
])
def test_rewrite_equals_zeroed_heads_in_torch(name, path, drop):
    g = pm.graph(name, path)
    before = g.parameter_count()
    blocks = find_attention_blocks(g).blocks
    heads = pm.SHAPES[name][0]
    rewrite_heads(g, blocks, [[h for h in range(heads) if h not in dr] for dr in drop], [None] * len(blocks))
    g.infer_types()
    verify(g)
    got = Interpreter(g).run(pm.feed(name))["last_hidden_state"]
    np.testing.assert_allclose(got, zeroed_reference(name, drop), rtol=1e-4, atol=1e-4)
    assert g.parameter_count() < before
    # physically smaller: the projections lost the heads' columns / rows
    after = find_attention_blocks(g).blocks
    for b, dr in zip(after, drop):
        assert b.heads == heads - len(dr)
        assert b.out.in_features == b.heads * b.head_dim


def test_unfused_graph_rewrite_equals_zeroed_heads():
    g = pm.graph("gpt2", "onnx-torchscript", "cleanup")
    blocks = find_attention_blocks(g).blocks
    assert not blocks[0].fused
    rewrite_heads(g, blocks, [[0, 2], [1, 2, 3]], [None, None])
    g.infer_types()
    verify(g)
    got = Interpreter(g).run(pm.feed("gpt2"))["last_hidden_state"]
    np.testing.assert_allclose(got, zeroed_reference("gpt2", [[1, 3], [0]]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", pm.PATHS)
def test_gqa_removes_whole_kv_groups(path):
    g = pm.graph("llama", path)
    rep = run("prune-heads{ratio=0.5,importance=magnitude,refit=false}", g, pm.calibration("llama", 1), refuse_ruin=False)
    verify(g)
    blocks = find_attention_blocks(g).blocks
    assert rep["heads_after"] == 4 and rep["removed"] == 4
    for b in blocks:
        assert b.heads == 2 * b.kv_heads
        assert b.k.projection.out_features == b.v.projection.out_features == b.kv_heads * b.head_dim
        assert b.q.projection.out_features == b.heads * b.head_dim
    for layer in rep["layers"]:  # removed heads come in whole groups (0,1) or (2,3)
        assert all(h ^ 1 in layer["removed"] for h in layer["removed"])
    out = Interpreter(g).run(pm.feed("llama"))["last_hidden_state"]
    assert out.shape == pm.feed("llama")["input_ids"].shape + (64,) and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_all_heads_of_a_block_keeps_the_residual_path(name):
    """layer_ratio=1 removes every attention block; without re-fit each becomes its bias, which
    is the torch model with the output projections' weights zeroed."""
    g = pm.graph(name)
    run("prune-heads{layer_ratio=1.0,importance=magnitude,refit=false}", g, pm.calibration(name, 1), refuse_ruin=False)
    verify(g)
    assert not [n for n in g.nodes if n.op in ("Attention", "Softmax")]
    heads = pm.SHAPES[name][0]
    got = Interpreter(g).run(pm.feed(name))["last_hidden_state"]
    np.testing.assert_allclose(got, zeroed_reference(name, [list(range(heads))] * 2), rtol=1e-4, atol=1e-4)


def test_fisher_refit_beats_magnitude_and_report_has_the_numbers():
    calib = pm.calibration("bert", 3)
    g_mag, g_fish = pm.graph("bert"), pm.graph("bert")
    ref = pm.graph("bert")
    run("prune-heads{ratio=0.5,importance=magnitude,refit=false}", g_mag, calib)
    rep = run("prune-heads{ratio=0.5}", g_fish, calib)
    f_mag, f_fish = measure(ref, g_mag, calib), measure(ref, g_fish, calib)
    assert f_fish.mean_cosine > f_mag.mean_cosine
    json.dumps(rep)
    assert rep["importance"] == "fisher" and rep["heads_before"] == 8 and rep["heads_after"] == 4
    assert rep["params_after"] < rep["params_before"] and rep["flops_after"] < rep["flops_before"]
    assert rep["flops_dims"] == {"batch": 4, "seq": 12} or set(rep["flops_dims"].values()) == {4, 12}
    held = measure(ref, g_fish, calib[2:])  # ranked and re-fitted on the first two sets, measured on the third
    assert abs(rep["calibration_fidelity"]["mean_cosine"] - held.mean_cosine) < 1e-5
    assert rep["measured_on"] == "the 1 of 3 calibration sets not fitted to"
    assert len(rep["layers"]) == 2 and sum(len(x["removed"]) for x in rep["layers"]) == 4
    for x in rep["layers"]:
        assert x["params_after"] <= x["params_before"] and x["flops_after"] <= x["flops_before"]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_residual_refit_and_ffn_compensation_restore_more(name):
    """The in-order residual re-fit undoes drift the local one leaves; re-fitting the FFN down
    projections too restores more (calibration cosine), and the committed graph carries the
    compensated FFN weights (the pass checks the rewrite reproduces its probe)."""
    from optc.passes.compression.ffn import find_ffn_blocks

    calib = pm.calibration(name, 8)  # re-fits on six sets, kept only where the two held back agree
    ref = pm.graph(name)
    cos = {}
    for target, comp in [("local", False), ("residual", False), ("residual", True)]:
        g = pm.graph(name)
        # random weights: a structural check, not a fidelity one; fisher's ranking alone (no
        # measured shortlist), so the three runs remove the same heads and differ in the re-fit only
        rep = run(f"prune-heads{{ratio=0.5,refit_target={target},compensate={str(comp).lower()},shortlist=0}}", g,
                  calib, refuse_ruin=False)
        verify(g)
        cos[target, comp] = measure(ref, g, calib).mean_cosine
        downs = [b.down.matrix() for b in find_ffn_blocks(g).blocks]
        unchanged = [np.array_equal(d, r.down.matrix()) for d, r in zip(downs, find_ffn_blocks(ref).blocks)]
        assert len(downs) == 2 and all(unchanged) != comp
        assert len(rep["compensated"]) == (2 if comp else 0) and rep["refit_target"] == target
    assert cos["residual", False] > cos["local", False]
    assert cos["residual", True] > cos["residual", False]


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_in_order_refit_runs_each_node_once_with_the_same_result(name):
    """The residual re-fit visits the sites in graph order; ``InOrder`` runs only the nodes no
    earlier site ran (from the values kept where it stopped). Its fits equal those of running
    the probe from its inputs for every site, and no node runs twice."""
    from optc.passes.compression.prune_ffn import ffn_sites
    from optc.passes.compression.prune_heads import head_sites
    from optc.passes.compression.structured import InOrder, Probe, State, _fit_sites, refit, refit_targets

    g = pm.graph(name)
    probe = Probe(g, head_sites, pm.calibration(name, 4), ffn_sites)
    state = State([{0}, {1}] + [set()] * (len(probe.sites) - 2), [None] * len(probe.sites))
    targets = refit_targets(probe)
    refit(probe, state, targets, 0.3)
    want = State(state.removed, [None] * len(probe.sites))
    order = {n.name: k for k, n in enumerate(probe.graph.nodes)}
    for i in sorted(range(len(probe.sites)), key=lambda i: order[probe.sites[i].refit.node.name]):
        s = probe.sites[i]
        need = (s.refit.input.name,) + ((s.residual.name,) if s.residual is not None else ())
        _fit_sites(probe, want, targets, 0.3, [i], values=lambda b, need=need: probe.forward(want, b, only=need))
    for got, ref in zip(state.refits, want.refits):
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
    walk, ran = InOrder(probe, state), 0
    for s in sorted(probe.sites, key=lambda s: order[s.refit.node.name]):
        before = len(walk.done)
        walk.values(probe.fit[0], (s.refit.input.name,))
        ran += len(walk.done) - before
    assert ran == len(walk.done) < len(probe.graph.nodes)  # each node once, not the whole graph per site


def test_budget_is_honored_and_removes_heads():
    calib = pm.calibration("gpt2", 4)  # re-fitted on three sets, the budget measured on the fourth
    g, ref = pm.graph("gpt2"), pm.graph("gpt2")
    rep = run("prune-heads{min_cosine=0.99,importance=magnitude}", g, calib)
    assert measure(ref, g, calib[3:]).mean_cosine >= 0.99  # the budget holds where nothing was fitted
    assert rep["calibration_fidelity"]["mean_cosine"] >= 0.99
    assert rep["removed"] >= 1


@pytest.mark.parametrize("pipeline,calib,message", [
    ("prune-heads{ratio=1.0}", True, "ratio must be in [0, 1)"),
    ("prune-heads{ratio=-0.1}", True, "ratio must be in [0, 1)"),
    ("prune-heads{ratio=0.75,min_cosine=0.9999999,importance=magnitude,refit=false}", True, "< min_cosine"),
    ("prune-heads{ratio=0.25}", False, "needs calibration data"),
    ("prune-heads{ratio=0.25,importance=size}", True, "importance must be one of"),
    ("prune-heads{ratio=0.25,layer_ratio=0.5}", True, "not both"),
])
def test_bad_requests_fail_in_one_line_and_leave_the_graph(pipeline, calib, message):
    g = pm.graph("gpt2")
    text = print_graph(g)
    with pytest.raises(PassError) as e:
        run(pipeline, g, pm.calibration("gpt2", 1) if calib else None)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert print_graph(g) == text


def test_model_without_attention_is_a_clear_error():
    from optc.ir.graph import Graph
    from optc.ir.types import DType, TensorType

    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (2, 8)))
    w = g.add_constant(np.ones((8, 8), np.float32), "w")
    g.set_outputs([g.op("Relu", g.op("MatMul", x, w))])
    text = print_graph(g)
    with pytest.raises(PassError, match="no attention blocks") as e:
        run("prune-heads{ratio=0.25,importance=magnitude,refit=false}", g)
    assert "\n" not in str(e.value) and print_graph(g) == text


# -- slow: MiniLM with real weights on real text ---------------------------------------------------
@pytest.fixture(scope="module")
def minilm_setup(tmp_path_factory):
    from optc import datasets, load_model, zoo
    from optc.calibration import from_sentences, news_calibration
    from optc.evaluate import sentence_embeddings, similarity_pearson

    onnx = zoo.export_onnx(zoo.load_minilm(), zoo.tokenize(zoo.SAMPLE_SENTENCES[:2], max_length=128),
                           tmp_path_factory.mktemp("minilm") / "minilm.onnx", dynamo=False,
                           output_names=["last_hidden_state", "pooler_output"])
    g = load_model(onnx)
    PassManager.parse("default").run(g, PassContext())
    calib = news_calibration(g, sentences=256, passages=128)
    hold = from_sentences(datasets.news_sentences("holdout", 256), g, max_length=128, batch=32)
    docs, human = datasets.lee_documents(), datasets.lee_similarities()

    def lee(graph):
        return similarity_pearson(sentence_embeddings(graph, docs, max_length=128), human)

    return g, calib, hold, lee, lee(g)


@pytest.mark.slow
@pytest.mark.parametrize("ratio,cosine,lee_drop", [(0.4, 0.96, 0.01)])
def test_minilm_targets(minilm_setup, ratio, cosine, lee_drop):
    """Issue #5's targets with the pass's defaults. The Lee target needs the long calibration
    inputs: calibrated on sentences alone, the Lee Pearson at 40% dropped 0.015 (output re-fit
    only) and 0.035 (with the FFN compensation). (25% at cosine >= 0.98 is measured by
    ``bench/prune_heads.py``: each case costs CI about 6 minutes.)"""
    g0, calib, hold, lee, lee0 = minilm_setup
    g = g0.clone()
    rep = run(f"prune-heads{{ratio={ratio}}}", g, calib)
    verify(g)
    assert rep["heads_after"] == 72 - round(ratio * 72)
    f = measure(g0, g, hold)
    assert f.mean_cosine >= cosine, f
    if lee_drop is not None:
        assert abs(lee(g) - lee0) <= lee_drop, (lee(g), lee0)


@pytest.mark.slow
def test_minilm_pruned_compiles_and_matches(minilm_setup, tmp_path):
    from optc.codegen.build import build
    from optc.targets import get_target

    g0, calib, hold, _, _ = minilm_setup
    g = g0.clone()
    run("prune-heads{ratio=0.4,importance=magnitude,refit=false}", g, calib)
    compiled = build(g, get_target("x86")).load()
    feed = hold[0]
    ref = Interpreter(g).run(feed)
    got = compiled.run(feed)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-3)


def test_a_ruined_result_is_refused_unless_distill_follows():
    """Removing every head of a random GPT-2 is far past any budget: one line, graph untouched;
    with distill later in the pipeline the check is the distilled result's, and
    ``refuse_ruin=False`` hands the result back."""
    calib = pm.calibration("gpt2", 4)
    g = pm.graph("gpt2")
    before = {n: v.const.copy() for n, v in g.constants.items()}
    ctx = PassContext(calibration=calib)
    with pytest.raises(PassError, match=r"prune-heads: the result is ruined \(calibration mean cosine"):
        PassManager.parse("prune-heads{layer_ratio=1.0,importance=magnitude,refit=false}").run(g, ctx)
    assert set(g.constants) == set(before) and all(np.array_equal(v.const, before[n]) for n, v in g.constants.items())
    try:  # prune-heads leaves the check to distill, which checks what it hands back
        PassManager.parse("prune-heads{layer_ratio=1.0,importance=magnitude,refit=false},distill{steps=2,eval_every=1}"
                          ).run(pm.graph("gpt2"), ctx)
    except PassError as e:
        assert "distill: the result is ruined" in str(e)
    assert ctx.recovery_follows is False  # restored after the pipeline
    rep = run("prune-heads{layer_ratio=1.0,importance=magnitude,refit=false}", pm.graph("gpt2"), calib, refuse_ruin=False)
    assert rep["calibration_fidelity"]["mean_cosine"] < 0.8


def test_progress_names_the_round_and_phase(monkeypatch, capsys):
    """A long analysis says where it is (on stderr; here shown from the first moment)."""
    import functools

    from optc import progress

    monkeypatch.setattr(progress.Progress, "__init__", functools.partialmethod(progress.Progress.__init__, after=0.0,
                                                                              every=0.001))
    g = pm.graph("bert")
    run("prune-heads{ratio=0.5}", g, pm.calibration("bert", 3))
    err = capsys.readouterr().err
    assert "prune-heads: round 1/" in err and "heads removed ... done in" in err


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_trials_from_the_changed_layer_equal_whole_forwards(name):
    """The shortlist measures each candidate by re-running only what its layer's mask reaches,
    from the values before it: the same cosines as whole forward passes."""
    from optc.passes.compression.prune_heads import head_sites
    from optc.passes.compression.structured import Evaluator, Probe, State

    g = pm.graph(name)
    probe = Probe(g, head_sites, pm.calibration(name, 3), None, hold_back=True)
    ev = Evaluator(probe)
    state = State([set() for _ in probe.sites], [None] * len(probe.sites))
    state.removed[0].add(0)
    shared = ev.upstream(state, list(range(len(probe.sites))), probe.fit)  # one run for every site
    for site in range(len(probe.sites)):
        trials = []
        for grp in range(len(probe.sites[site].groups)):
            if grp not in state.removed[site]:
                t = state.copy()
                t.removed[site].add(grp)
                trials.append(t)
        got = ev.trial_cosines(state, site, trials, probe.fit)
        want = [ev.cosine(t, probe.fit)[0] for t in trials]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ev.trial_cosines(state, site, trials, probe.fit, shared), want, rtol=0, atol=1e-6)
        assert len(probe.suffix(site)[0].graph.nodes) < len(probe.graph.nodes) or site == 0


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_fisher_gradient_written_at_the_output_equals_autograd_through_it(name):
    """``fisher_scores`` writes the gradient of each objective Σ d·p̂ at the pooled output by
    hand (p̂ = p / |p|) and starts autograd there; the scores equal autograd through the
    normalisation and the objectives themselves."""
    import torch

    from optc.passes.compression.prune_ffn import ffn_sites
    from optc.passes.compression.prune_heads import head_sites
    from optc.passes.compression.structured import (Evaluator, Probe, State, _per_sample, fisher_scores, membership,
                                                    pooled)

    probe = Probe(pm.graph(name), head_sites, pm.calibration(name, 4), ffn_sites)
    ev = Evaluator(probe)
    state = State([{0}] + [set()] * (len(probe.sites) - 1), [None] * len(probe.sites))
    got = fisher_scores(probe, ev, state, projections=2, seed=5)
    gen = torch.Generator().manual_seed(5)
    want = [np.zeros(len(s.groups)) for s in probe.sites]
    for b in probe.fit:
        outs = probe.forward(state, b, grad=True)
        ys = [outs[n] for n in probe.masked]
        p = pooled(outs[probe.output_name], probe.inputs[b])
        unit = p / p.norm(dim=-1, keepdim=True)
        ref = ev.ref[b] / ev.ref[b].norm(dim=-1, keepdim=True)
        objectives = [((unit - ref) ** 2).sum()] + [(torch.randn(p.shape, generator=gen) * unit).sum() for _ in range(2)]
        per = [[_per_sample(g, y.detach(), s.mask_axis, p.shape[0])
                for g, y, s in zip(torch.autograd.grad(o, ys, retain_graph=True), ys, probe.sites)] for o in objectives]
        for i, s in enumerate(probe.sites):
            m = membership(s)
            want[i] += (sum(((per[k][i] @ m) ** 2).sum(0) for k in (1, 2)) / 2 - (per[0][i] @ m).sum(0)).numpy()
    assert any(w.size and np.abs(w).max() > 0 for w in want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * max(1.0, max(np.abs(x).max() for x in want if x.size)))


def test_shortlists_are_nominated_and_measured_on_disjoint_sets_within_a_vector_budget():
    """fisher nominates on half the fit sets and the shortlist is measured on the other half;
    sets of 1,024 vectors (a decoder's windows) are thinned to the budget, evenly spaced, and
    sets of sentences are not."""
    import torch

    from optc.passes.compression.structured import SHORTLIST_VECTORS, measuring, nominating

    class Ev:
        def __init__(self, fit, rows, count):
            self.probe = type("P", (), {"fit": fit})()
            self.ref = [torch.zeros(rows, 2)] * count

    windows = Ev([0, 1, 2, 4, 5, 6], 1024, 8)
    assert measuring(windows) == [0, 5] and nominating(windows) == [1, 6]
    assert len(measuring(windows)) * 1024 == SHORTLIST_VECTORS
    sentences = Ev([0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14], 32, 16)
    assert measuring(sentences) == [0, 2, 5, 8, 10, 13] and nominating(sentences) == [1, 4, 6, 9, 12, 14]
    one = Ev([0], 4, 1)
    assert measuring(one) == nominating(one) == [0]
