"""Decoders with a KV cache (ir/decoder.py, frontend/pytorch/decoder.py, codegen/generate.py):
sums of symbolic dims, the prefill and decode steps derived from one graph, compiled into one
module that stores each weight once, and generation that reproduces PyTorch's logits and greedy
tokens step by step."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from optc.ir.symbolic import Polynomial, add_dims, div_dims, eval_dim, mul_dims, sub_dims, substitute_dim


# -- symbolic sums ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, canonical", [
    ("past+seq", "past+seq"), ("seq+past", "past+seq"), ("2*batch*seq", "2*batch*seq"),
    ("batch*seq+batch*past", "batch*past+batch*seq"), ("past-1", "past-1"), ("-1*past+seq", "-past+seq"),
    ("past+seq-seq", "past"), ("1+past+seq", "past+seq+1"),
])
def test_polynomial_dims_have_one_spelling(text, canonical):
    assert Polynomial.of(text).to_dim() == canonical


def test_dim_arithmetic_with_sums():
    assert add_dims("past", "seq") == "past+seq"
    assert add_dims("past+seq", 1) == "past+seq+1"
    assert add_dims("seq", "seq") == "2*seq"
    assert mul_dims(["batch", "past+seq"]) == "batch*past+batch*seq"
    assert div_dims("batch*past+batch*seq", "batch") == "past+seq"
    assert div_dims("past+seq", "past+seq") == 1
    assert div_dims("past+seq", "past") is None  # not exact
    assert sub_dims("past+seq", "seq") == "past"
    assert eval_dim("past+seq", {"past": 3, "seq": 2}) == 5
    assert eval_dim("past+seq", {"past": 3}) is None
    assert substitute_dim("past+seq", {"seq": 1}) == "past+1"
    assert substitute_dim("past+seq", {"past": 0}) == "seq"
    assert substitute_dim("2*total", {"total": "past+seq"}) == "2*past+2*seq"  # a dim for a dim
    assert Polynomial.of("past+") is None and Polynomial.of("a/b") is None


def test_signature_checks_a_sum_dim():
    from optc.ir import DType, IRError
    from optc.ir.signature import check_inputs, numpy_dtype
    from optc.codegen.signature import TensorSpec

    specs = [TensorSpec("a", DType.FLOAT32, ("past",)), TensorSpec("b", DType.FLOAT32, ("seq",)),
             TensorSpec("ab", DType.FLOAT32, ("past+seq",))]
    feed = {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32), "ab": np.zeros(5, np.float32)}
    assert check_inputs(specs, feed, "run", numpy_dtype, np.shape) == {"past": 3, "seq": 2}
    feed["ab"] = np.zeros(4, np.float32)
    with pytest.raises(IRError, match=r"'past\+seq'=5"):
        check_inputs(specs, feed, "run", numpy_dtype, np.shape)


# -- the imported decoder and its two steps ------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder():
    import models
    from optc.frontend.pytorch import export_decoder

    model = models.llama_decoder_small()
    return model, export_decoder(model)


def test_export_names_the_cache_and_sums_its_length(decoder):
    from optc.ir.decoder import find_kv_cache

    _, g = decoder
    cache = find_kv_cache(g)
    assert (cache.seq_dim, cache.past_dim) == ("seq", "past")
    assert cache.pairs[:2] == (("past_key_values.0.key", "present.0.key"), ("past_key_values.0.value", "present.0.value"))
    assert len(cache.pairs) == 4
    assert g.value("past_key_values.1.value").shape == ("batch", 2, "past", 16)
    assert g.value("present.1.value").shape == ("batch", 2, "past+seq", 16)
    assert g.value("logits").shape == ("batch", "seq", 30522)


def test_steps_match_pytorch_in_the_interpreter(decoder):
    import torch

    from optc.ir.decoder import decode_graph, find_kv_cache, prefill_graph
    from optc.ir.interpreter import Interpreter

    model, g = decoder
    cache = find_kv_cache(g)
    prefill, decode = prefill_graph(g, cache), decode_graph(g, cache)
    assert prefill.input_names() == ["input_ids"]
    assert prefill.value("present.0.key").shape == ("batch", 2, "seq", 16)
    assert decode.value("input_ids").shape == ("batch", 1)
    assert decode.value("present.0.key").shape == ("batch", 2, "past+1", 16)

    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 2088, 999, 102, 0]])
    with torch.no_grad():
        ref = model(ids, use_cache=True)
    state = Interpreter(prefill).run({"input_ids": ids.numpy()})
    np.testing.assert_allclose(state["logits"], ref.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(state["present.1.value"], ref.past_key_values.layers[1].values.numpy(), atol=1e-5)
    nxt = torch.tensor([[2000], [2001]])
    with torch.no_grad():
        ref = model(nxt, past_key_values=ref.past_key_values, use_cache=True)
    out = Interpreter(decode).run({"input_ids": nxt.numpy(), **{p: state[q] for p, q in cache.pairs}})
    np.testing.assert_allclose(out["logits"], ref.logits.numpy(), atol=1e-4)
    assert out["present.0.key"].shape == (2, 2, 7, 16)


def test_a_cache_without_its_outputs_is_refused():
    from optc.ir import DType, Graph, IRError, TensorType
    from optc.ir.decoder import find_kv_cache, prefill_graph

    g = Graph("half")
    ids = g.add_input("input_ids", TensorType(DType.INT64, ("batch", "seq")))
    past = g.add_input("past_key_values.0.key", TensorType(DType.FLOAT32, ("batch", 2, "past", 4)))
    g.set_outputs([g.op("Cast", ids, to=DType.FLOAT32)])
    g.rename_value(g.outputs[0], "logits")
    with pytest.raises(IRError, match=r"past_key_values\.0\.key has no output present\.0\.key"):
        find_kv_cache(g)
    # a past read other than by appending to it cannot be dropped from the prefill step
    g.set_outputs([g.outputs[0], g.op("Relu", past)])
    g.rename_value(g.outputs[1], "present.0.key")
    cache = find_kv_cache(g)
    with pytest.raises(IRError, match="Relu node .* reads the past input 'past_key_values.0.key'"):
        prefill_graph(g, cache)
    assert find_kv_cache(Graph("plain")) is None


def test_a_mask_is_tied_to_the_cache_and_the_new_tokens():
    """optimum's ``attention_mask`` is named on its own; the steps bind it to ``past+seq``; a mask
    of a length that is not the cache plus the new tokens is refused, naming it."""
    from optc.ir import DType, Graph, IRError, TensorType
    from optc.ir.decoder import decode_graph, find_kv_cache, prefill_graph

    def graph(length):
        g = Graph("masked")
        ids = g.add_input("input_ids", TensorType(DType.INT64, ("batch", "seq")))
        mask = g.add_input("attention_mask", TensorType(DType.INT64, ("batch", length)))
        past = g.add_input("past_key_values.0.key", TensorType(DType.FLOAT32, ("batch", 2, "past", 4)))
        new = g.op("Expand", g.op("Unsqueeze", g.op("Cast", ids, to=DType.FLOAT32), g.add_constant(np.array([1, 3]))),
                   g.op("Concat", g.op("Shape", ids, end=1), g.add_constant(np.array([2])), g.op("Shape", ids, start=1),
                        g.add_constant(np.array([4])), axis=0))
        g.set_outputs([g.op("Cast", mask, to=DType.FLOAT32), g.op("Concat", past, new, axis=2)])
        g.rename_value(g.outputs[0], "logits")
        g.rename_value(g.outputs[1], "present.0.key")
        g.infer_types()
        return g, find_kv_cache(g)

    for length in ("total", "seq + past"):  # torch.export's own name; optimum's sum of the cache's names
        g, cache = graph(length)
        assert prefill_graph(g, cache).value("attention_mask").shape == ("batch", "seq")
        assert decode_graph(g, cache, batch=1).value("attention_mask").shape == (1, "past+1")
    for bad in ("seq", 7):
        g, cache = graph(bad)
        with pytest.raises(IRError, match=r"'attention_mask' must be \[batch, past\+seq\] long"):
            prefill_graph(g, cache)
    g, cache = graph("total")
    g.value("attention_mask").type = TensorType(DType.FLOAT32, ("batch", "total"))  # an additive mask
    with pytest.raises(IRError, match="a mask of 0/1 integers or booleans is needed"):
        decode_graph(g, cache, batch=1)


# -- calibrating and compressing a decoder -------------------------------------------------------------------
def test_text_becomes_token_windows_with_an_empty_cache(decoder):
    """A decoder calibrates on windows of text; its KV graph on an empty cache (which only the
    interpreter runs) computes every position itself: the same logits as the prefill step."""
    from optc import datasets
    from optc.calibration import token_windows
    from optc.ir.decoder import find_kv_cache, prefill_graph
    from optc.ir.interpreter import Interpreter

    _, g = decoder
    sets = token_windows(datasets.news_sentences("calib", 40), g, length=16, batch=4)
    cache = find_kv_cache(g)
    assert len(sets) >= 2 and sets[0]["input_ids"].shape == (4, 16)
    assert sets[0]["past_key_values.0.key"].shape == (4, 2, 0, 16)
    plain = token_windows(datasets.news_sentences("calib", 40), prefill_graph(g, cache), length=16, batch=4)
    np.testing.assert_array_equal(plain[0]["input_ids"], sets[0]["input_ids"])
    full = Interpreter(prefill_graph(g, cache)).run(plain[0])
    step = Interpreter(g).run(sets[0])
    np.testing.assert_allclose(step["logits"], full["logits"], atol=1e-5)
    assert step["present.0.key"].shape == (4, 2, 16, 16)
    with pytest.raises(Exception, match="fewer than one window of 512"):
        token_windows(["a short text"], g, length=512)


def test_quantized_decoder_with_its_tied_head(decoder):
    """int8 weight-only on every projection, the head tied to the embedding included: the
    lookup keeps the float table, the head reads codes; the compiled steps match the
    interpreter's."""
    from optc import datasets
    from optc.api import optimize
    from optc.calibration import token_windows
    from optc.codegen.build import build
    from optc.ir.decoder import find_kv_cache
    from optc.ir.interpreter import Interpreter

    _, g0 = decoder
    g = g0.clone()
    calib = token_windows(datasets.news_sentences("calib", 60), g, length=16, batch=4)
    res = optimize(g, "default,quantize{precision=int8,act=none,exclude=}", calibration=calib)
    report = res.reports[-1]
    assert report["fidelity"]["perplexity"] is not None
    attention = [n for n in g.nodes if n.op == "Attention"]
    assert len(attention) == 2 and all(n.input(1).shape[1] == 2 for n in attention)  # reads the 2 KV heads, not 4 copies
    heads = [n for n in g.nodes if n.op == "QLinear" and n.output.shape[-1] == 30522]
    assert len(heads) == 1 and sum(n.op == "QLinear" for n in g.nodes) == 15
    assert any(n.op == "Gather" and n.input(0).dtype.value == "f32" for n in g.nodes)
    m = build(g, "x86").load()
    dec, pairs = m.step("decode"), find_kv_cache(g).pairs
    state = m.run({"input_ids": np.array([[101, 2023, 2003]])})
    feed = {"input_ids": np.array([[1037]]), **{p: state[q] for p, q in pairs}}
    got = dec.run(feed)["logits"]
    want = Interpreter(g).run(feed)["logits"]
    assert float(np.abs(got - want).max()) <= 1e-4 * float(np.abs(want).max())


def test_head_pruning_shrinks_the_cache(decoder):
    """prune-heads on the KV graph removes whole KV groups and the same groups of each layer's
    cache: past inputs and present outputs hold the kept heads, the pruned graph runs on the
    original's empty-cache calibration windows, and its compiled prefill and decode steps match
    the interpreter (a cache made by the pruned prefill feeds the pruned decode). A calibration
    window with a non-empty cache is refused."""
    from optc import datasets
    from optc.calibration import token_windows
    from optc.codegen.build import build
    from optc.codegen.generate import Generator
    from optc.ir.decoder import find_kv_cache
    from optc.ir.interpreter import Interpreter
    from optc.passes import PassContext, PassError, PassManager

    _, g0 = decoder
    calib = token_windows(datasets.news_sentences("calib", 60), g0, length=16, batch=4)
    g = g0.clone()
    # the tiny random model loses most of its output with half its heads: the structure is tested
    ctx = PassContext(calibration=calib, refuse_ruin=False)
    report = PassManager.parse("prune-heads{layer_ratio=0.5,steps=1}").run(g, ctx).reports[-1]
    assert [len(l["removed"]) for l in report["layers"]] == [2, 2]
    assert g.value("past_key_values.1.key").shape == ("batch", 1, "past", 16)
    assert g.value("present.0.value").shape == ("batch", 1, "past+seq", 16)
    Interpreter(g).run(calib[0])  # the original's empty cache (2 heads) is the pruned one's too
    m = build(g, "x86").load()
    dec, pairs = m.step("decode"), find_kv_cache(g).pairs
    state = m.run({"input_ids": np.array([[101, 2023, 2003]])})
    assert state["present.1.key"].shape == (1, 1, 3, 16)
    feed = {"input_ids": np.array([[1037]]), **{p: state[q] for p, q in pairs}}
    want = Interpreter(g).run(feed)["logits"]
    assert float(np.abs(dec.run(feed)["logits"] - want).max()) <= 1e-4 * float(np.abs(want).max())
    assert len(Generator(m).generate([101, 2023], 4).tokens) == 4
    full = [dict(c) for c in calib]
    full[0]["past_key_values.0.key"] = np.zeros((4, 2, 3, 16), np.float32)
    with pytest.raises(PassError, match="holds a non-empty KV cache"):
        PassManager.parse("prune-heads{layer_ratio=0.5}").run(g0.clone(), PassContext(calibration=full))


# -- compiled: one module, two functions, each weight once ------------------------------------------------
def _constants(mod) -> set[str]:
    return set(re.findall(r'metadata\["ir.GenericConst"\]\[(\d+)\]', mod.script(show_meta=False)))


def test_prefill_and_decode_share_their_weights(decoder):
    from optc.codegen.build import _lower_decoder
    from optc.codegen.lower import lower
    from optc.ir.decoder import find_kv_cache
    from optc.targets import get_target

    _, g = decoder
    target = get_target("x86")
    lowered, steps, _ = _lower_decoder(g, target, True, find_kv_cache(g))
    assert set(re.findall(r"def (main|decode)\(", lowered.mod.script(show_meta=False))) == {"main", "decode"}
    alone = [len(_constants(lower(steps[name], target).mod)) for name in ("main", "decode")]
    # both functions together hold no more constants than either alone: every weight (also the
    # merged QKV, concatenated anew in each step) is one Relax constant, stored once
    assert len(_constants(lowered.mod)) <= max(alone) < sum(alone) - 15


@pytest.fixture(scope="module")
def compiled(decoder):
    from optc.codegen.build import build

    _, g = decoder
    return build(g, "x86")


def _worst_logit_difference(model, m, ids, steps: int):
    """The largest |logit| difference between PyTorch and the compiled module ``m`` over the
    prefill of ``ids`` and ``steps`` greedy decode steps (each side fed its own cache; the
    tokens are PyTorch's); also the compiled module's last state."""
    import torch

    dec, pairs = m.step("decode"), m.signature.kv_cache["pairs"]
    with torch.no_grad():
        ref = model(ids, use_cache=True)
    state = m.run({"input_ids": ids.numpy()})
    worst = np.abs(state["logits"] - ref.logits.numpy()).max()
    token = int(ref.logits[0, -1].argmax())
    for _ in range(steps):
        with torch.no_grad():
            ref = model(torch.tensor([[token]]), past_key_values=ref.past_key_values, use_cache=True)
        state = dec.run({"input_ids": np.array([[token]]), **{p: state[q] for p, q in pairs}})
        worst = max(worst, np.abs(state["logits"] - ref.logits.numpy()).max())
        token = int(ref.logits[0, -1].argmax())
    return float(worst), state


def test_compiled_steps_match_pytorch_through_decoding(decoder, compiled):
    import torch

    model, _ = decoder
    m = compiled.load()
    dec = m.step("decode")
    assert m.signature.kv_cache["pairs"][0] == ["past_key_values.0.key", "present.0.key"]
    assert [s.name for s in m.inputs] == ["input_ids"]
    assert [s.name for s in dec.inputs][:2] == ["input_ids", "past_key_values.0.key"]
    worst, state = _worst_logit_difference(model, m, torch.tensor([[101, 2023, 2003, 1037, 3231]]), steps=8)
    assert worst < 1e-3
    assert state["present.0.key"].shape == (1, 2, 13, 16)


@pytest.mark.parametrize("target", [
    "x86-avx2", "x86-avx512", '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}',
    pytest.param("arm64-dotprod", marks=pytest.mark.arm64),
])
def test_decoder_builds_for_other_presets(decoder, target):
    """Both steps (one-row GEMVs, one-row norms, grouped attention) build for the CPUs CI may
    land on; this machine runs the AVX2 one (and, in the arm64 tier, the prefill under qemu)."""
    from optc.codegen.build import build
    from optc.ir.decoder import find_kv_cache, prefill_graph
    from optc.ir.interpreter import Interpreter
    from optc.targets import host_problem

    _, g = decoder
    cm = build(g, target)
    assert not cm.unscheduled and "decode" in cm.signature.entries
    feed = {"input_ids": np.array([[101, 2023, 2003, 1037]])}
    want = Interpreter(prefill_graph(g, find_kv_cache(g))).run(feed)["logits"]
    if target.startswith("arm64") or host_problem(cm.target.describe()) is None:
        got = cm.load().run(feed)["logits"]
        assert float(np.abs(got - want).max()) < 1e-4 * float(np.abs(want).max())


def test_greedy_generation_is_pytorchs(decoder, compiled):
    import torch

    from optc.codegen.generate import Generator, Sampling

    model, _ = decoder
    gen = Generator(compiled.load())
    for prompt in ([101, 2023, 2003, 1037, 3231], [101, 7592], [101, 1996, 4248, 2829, 4419, 14523, 2058]):
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, len(prompt):].tolist()
        r = gen.generate(prompt, 16)
        assert r.tokens == want
        assert r.prefill_s > 0 and r.decode_s > 0 and r.stopped == "length"
        # the repetition penalty as Hugging Face applies it, to the prompt's tokens and the new ones
        # (below 1 it favours them: this random model never repeats a token on its own)
        plain = want
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                  pad_token_id=0, repetition_penalty=0.5)[0, len(prompt):].tolist()
        assert want != plain and gen.generate(prompt, 16, Sampling(repetition_penalty=0.5)).tokens == want
    # sampling is reproducible with a seed, and stops at a stop token
    a = gen.generate([101, 2023], 12, Sampling(0.9, 50, seed=3))
    b = gen.generate([101, 2023], 12, Sampling(0.9, 50, seed=3))
    assert a.tokens == b.tokens and len(a.tokens) == 12
    stop = gen.generate([101, 2023], 12, Sampling(0.9, 50, seed=3), stop_tokens=[a.tokens[3]])
    assert stop.tokens == a.tokens[:a.tokens.index(a.tokens[3]) + 1] and stop.stopped == "stop token"


@pytest.mark.parametrize("temperature, top_k, top_p, penalty", [
    (0.0, 0, 1.0, 1.3), (0.7, 0, 1.0, 1.0), (1.0, 40, 1.0, 1.0), (0.8, 0, 0.9, 1.0), (1.3, 50, 0.5, 1.2),
    (1.0, 0, 0.02, 1.0), (0.5, 3, 0.999, 0.8),
])
def test_sampling_distribution_is_hugging_faces(temperature, top_k, top_p, penalty):
    """The logits a token is picked from: Hugging Face's processors (repetition penalty, then
    temperature, top-k, top-p) give the same tokens the same probability, and the same ones none."""
    import torch
    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    from optc.codegen.generate import Sampling

    rng = np.random.default_rng(int(temperature * 100 + top_k + top_p * 10))
    logits = (rng.standard_normal(500) * 3).astype(np.float32)
    seen = rng.integers(0, 500, 40).tolist()
    chain = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else [])
    if temperature:
        chain += [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + \
            ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
    want = chain(torch.tensor([seen]), torch.tensor(logits[None], dtype=torch.float64))[0].numpy()
    got = Sampling(temperature, top_k, top_p=top_p, repetition_penalty=penalty).scores(logits, seen)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert np.isfinite(got).sum() >= 1
    if temperature and (top_k or top_p < 1.0):
        assert np.isfinite(got).sum() < 500  # the case cuts something
    np.testing.assert_allclose(torch.softmax(torch.tensor(got), 0).numpy(), torch.softmax(torch.tensor(want), 0).numpy(),
                               rtol=1e-12, atol=1e-15)


def test_generate_refuses_bad_requests(compiled):
    from optc.codegen.generate import Generator, Sampling
    from optc.ir.errors import InvalidValueError

    gen = Generator(compiled.load())
    with pytest.raises(InvalidValueError, match="the prompt is empty"):
        gen.generate([], 4)
    with pytest.raises(InvalidValueError, match="max-new-tokens must be >= 1"):
        gen.generate([1], 0)
    with pytest.raises(InvalidValueError, match="temperature"):
        Sampling(-1.0)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(InvalidValueError, match="top-p must be in"):
            Sampling(1.0, top_p=bad)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(InvalidValueError, match="repetition penalty must be"):
            Sampling(repetition_penalty=bad)
    with pytest.raises(Exception, match="dim 1 .* is 30522|30522"):
        gen.generate([30522], 2)  # a token id outside the vocabulary: the checked gather refuses it


def test_onnx_export_with_a_cache_generates_what_pytorch_does(decoder, tmp_path):
    """The same step exported to ONNX (``export_decoder_onnx``, dynamo) with past/present inputs
    and outputs: imported with ``past+seq`` dims, the batch size it reads off the cache rebuilt
    from ``input_ids``, compiled into prefill + decode; greedy tokens = PyTorch's. ONNX Runtime
    runs the file from an empty cache with PyTorch's logits."""
    import torch

    from optc import load_model
    from optc.api import optimize
    from optc.codegen.build import build
    from optc.codegen.generate import Generator
    from optc.frontend.pytorch import export_decoder_onnx
    from optc.ir.decoder import find_kv_cache

    model, _ = decoder
    path = tmp_path / "step.onnx"
    export_decoder_onnx(model, path, max_length=256)
    g = load_model(path)
    assert find_kv_cache(g) is not None and g.value("present.1.value").shape == ("batch", 2, "past+seq", 16)
    optimize(g, "default")
    gen = Generator(build(g, "x86").load())
    prompt = [101, 2023, 2003, 1037, 3231]
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(prompt):].tolist()
    assert gen.generate(prompt, 12).tokens == want
    # ONNX Runtime runs the file from an empty cache too (bench/decoder.py's ORT baseline)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    empty = {v.name: np.zeros((1, 2, 0, 16), np.float32) for v in g.inputs if v.name.startswith("past_")}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input_ids": np.array([prompt]), **empty})))
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits.numpy()
    np.testing.assert_allclose(out["logits"], ref, atol=1e-4 * float(np.abs(ref).max()))
    assert out["present.1.key"].shape == (1, 2, 5, 16)


@pytest.fixture(scope="module")
def masked(decoder):
    from optc.frontend.pytorch import export_decoder

    return export_decoder(decoder[0], attention_mask=True)


def test_masked_steps_run_padded_rows_as_pytorch(decoder, masked):
    """``export_decoder(attention_mask=True)`` takes optimum's ``attention_mask [batch, past+seq]``
    and ``position_ids``: a batch whose first row is left-padded, on a filled cache, gives
    PyTorch's logits in the reference interpreter (the mask's length is tied to the cache)."""
    import torch

    from optc.ir.decoder import find_kv_cache
    from optc.ir.interpreter import Interpreter

    model, _ = decoder
    g = masked
    cache = find_kv_cache(g)
    assert [v.name for v in g.inputs][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert g.value("attention_mask").shape == ("batch", "past+seq")
    torch.manual_seed(0)
    ids = torch.randint(0, 30522, (2, 3))
    past = [torch.randn(2, 2, 4, 16) for _ in cache.pairs]
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0  # row 0: two padding positions at the start of its cache
    positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, 4:]
    from transformers import DynamicCache

    dc = DynamicCache(config=model.config)
    for i in range(len(cache.pairs) // 2):
        dc.update(past[2 * i], past[2 * i + 1], i)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=dc, use_cache=True)
    out = Interpreter(g).run({"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy(),
                              **{p: t.numpy() for (p, _), t in zip(cache.pairs, past)}})
    np.testing.assert_allclose(out["logits"], ref.logits.numpy(), atol=1e-4)


def test_masked_decoder_calibrates_on_token_windows(masked):
    """``token_windows`` gives a masked step its mask (all ones) and positions (from 0), in the
    dtypes the graph declares: the same logits as the unmasked step on the same windows."""
    from optc import datasets
    from optc.calibration import token_windows
    from optc.ir.decoder import step_inputs
    from optc.ir.interpreter import Interpreter

    sets = token_windows(datasets.news_sentences("calib", 40), masked, length=16, batch=4)
    feed = sets[0]
    assert feed["attention_mask"].shape == (4, 16) and feed["attention_mask"].dtype == np.int64 and feed["attention_mask"].all()
    np.testing.assert_array_equal(feed["position_ids"], np.tile(np.arange(16), (4, 1)))
    out = Interpreter(masked).run(feed)
    assert np.isfinite(out["logits"]).all() and out["present.0.key"].shape == (4, 2, 16, 16)
    made = step_inputs({"input_ids": np.int32, "attention_mask": np.bool_, "position_ids": np.int32},
                       np.array([[7]]), past=5)
    assert made["attention_mask"].shape == (1, 6) and made["attention_mask"].dtype == np.bool_
    assert made["position_ids"].tolist() == [[5]] and made["input_ids"].dtype == np.int32


def _minilm_ids(text: str) -> list[int]:
    from optc.calibration import tokenizer

    return tokenizer(None)(text)["input_ids"]


def test_batched_generation_is_pytorchs(decoder, masked, tmp_path):
    """A decoder with an attention mask compiles a third function, ``decode_batch``: prompts of
    different lengths, left-padded in one batch, give Hugging Face's batched greedy tokens row by
    row (and each row's own unpadded generation); a row that meets its stop token ends there
    while the others go on; a decoder without a mask says it cannot batch."""
    import torch

    from optc.api import optimize
    from optc.codegen.build import build
    from optc.codegen.generate import Generator, Sampling
    from optc.ir.errors import InvalidValueError

    model, _ = decoder
    g = masked.clone()
    optimize(g, "default")
    cm = build(g, "x86")
    assert sorted(cm.entries) == ["decode", "decode_batch"]
    assert cm.entries["decode_batch"].inputs[0].shape == ("batch", 1)
    gen = Generator(cm.load())
    prompts = [[101, 2023, 2003, 1037, 3231], [101, 7592], [101, 1996, 4248, 2829, 4419, 14523, 2058]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[:, width:].tolist()
    got = gen.generate_batch(prompts, 12)
    assert [r.tokens for r in got] == want
    assert [r.prompt for r in got] == prompts and all(r.stopped == "length" for r in got)
    assert [gen.generate(p, 12).tokens for p in prompts] == want
    # rows that end leave the batch (their cache rows dropped); the last one runs the one-row step
    for stop in ([want[1][4]], [want[1][4], want[0][2]]):
        ended = gen.generate_batch(prompts, 12, Sampling(), stop_tokens=stop)
        for r, w in zip(ended, want):
            at = [k for k, t in enumerate(w) if t in stop]
            assert r.tokens == (w[:at[0] + 1] if at else w) and r.stopped == ("stop token" if at else "length")
        assert sum(r.stopped == "length" for r in ended) >= 1
    with pytest.raises(InvalidValueError, match="prompt 2 is empty"):
        gen.generate_batch([[101], []], 4)
    # optc generate with several --prompt: one batch, each row what it gets alone
    from isolation import run_cli

    from optc import zoo
    from optc.codegen.artifact import write_artifact

    write_artifact(cm, tmp_path / "lm", tokenizer=zoo.minilm_dir())
    texts = ["the weather today is", "hello", "a long sentence about the city council and its budget"]
    o = run_cli(["generate", str(tmp_path / "lm"), *[a for t in texts for a in ("--prompt", t)], "--max-new-tokens", "6",
                 "--json"])
    assert o.status == 0, o.describe()
    rows = json.loads(o.stdout)
    assert [r["prompt"] for r in rows] == texts
    for t, r in zip(texts, rows):
        assert r["tokens"] == gen.generate(_minilm_ids(t), 6).tokens
    o = run_cli(["generate", str(tmp_path / "lm"), "--prompt", "the weather", "--prompt", "hi", "--max-new-tokens", "3"])
    assert o.status == 0 and o.stdout.startswith("[1] ") and "\n[2] " in o.stdout and "over the batch" in o.stderr, \
        o.describe()


def test_batched_generation_needs_a_mask(compiled):
    from optc.codegen.generate import Generator
    from optc.codegen.signature import ArtifactError

    gen = Generator(compiled.load())
    assert gen.decode_batch is None
    with pytest.raises(ArtifactError, match="batched generation needs a decoder whose steps take attention_mask"):
        gen.generate_batch([[101, 2023], [101]], 4)


def test_cli_batch_on_a_decoder_without_a_mask_is_one_line(artifact):
    from isolation import assert_user_error_or_success, run_cli

    o = run_cli(["generate", str(artifact), "--prompt", "hello", "--prompt", "the weather"])
    assert_user_error_or_success(o, "two prompts, no mask")
    assert o.status == 2 and "batched generation needs a decoder whose steps take attention_mask" in o.stderr


def test_optimum_style_onnx_export_generates_what_pytorch_does(decoder, tmp_path, capsys):
    """An ONNX step with ``attention_mask`` and ``position_ids`` inputs as optimum exports them
    (``export_decoder_onnx(attention_mask=True)``): compiled, ``Generator`` feeds both (all ones,
    positions from 0), and greedy tokens are PyTorch's — also from a one-token prompt."""
    import torch

    from optc import load_model
    from optc.api import optimize
    from optc.codegen.build import build
    from optc.codegen.generate import Generator
    from optc.frontend.pytorch import export_decoder_onnx

    model, _ = decoder
    path = tmp_path / "masked.onnx"
    export_decoder_onnx(model, path, max_length=256, attention_mask=True)
    g = load_model(path)
    optimize(g, "default")
    m = build(g, "x86").load()
    assert [s.name for s in m.inputs] == ["input_ids", "attention_mask", "position_ids"]
    assert [s.name for s in m.step("decode").inputs][:3] == ["input_ids", "attention_mask", "position_ids"]
    gen = Generator(m)
    for prompt in ([101, 2023, 2003, 1037, 3231], [101]):
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, len(prompt):].tolist()
        assert gen.generate(prompt, 10).tokens == want
    # optc eval reads text into the step's windows, mask and positions made (perplexity of each side)
    from optc import zoo
    from optc.cli import main

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["the weather today is cold and the wind is strong"] * 8))
    capsys.readouterr()  # the ONNX exporter's own lines
    assert main(["eval", str(path), str(path), "--inputs", str(text), "--tokenizer", str(zoo.minilm_dir()),
                 "--max-length", "16", "--json"]) == 0
    fid = json.loads(capsys.readouterr().out)["fidelity"]
    assert fid["perplexity"] == pytest.approx(fid["perplexity_reference"]) and fid["perplexity"] > 1


# -- the artifact: tokenizer inside, optc generate --------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(decoder, compiled, tmp_path_factory):
    from optc import zoo
    from optc.codegen.artifact import write_artifact

    out = tmp_path_factory.mktemp("gen") / "lm"
    write_artifact(compiled, out, tokenizer=zoo.minilm_dir())
    return out


def test_artifact_generates_from_text(decoder, artifact):
    import torch

    import optc
    from optc.calibration import tokenizer

    model, _ = decoder
    a = optc.load(artifact)
    assert a.has_tokenizer and "tokenizer.json" in a.manifest["tokenizer"]
    assert "model.safetensors" not in a.manifest["files"]
    seen = []
    r = a.generate("the weather today is", 6, on_text=seen.append)
    ids = tokenizer(None)("the weather today is")["input_ids"]
    with torch.no_grad():
        want = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(ids):].tolist()
    assert r.prompt == ids and r.tokens == want
    assert 1 <= len(seen) <= 6 and seen[-1] == r.text
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_chat_prompt_goes_through_the_tokenizers_template(artifact, tmp_path):
    """``chat=True``: the user's message in the tokenizer's chat template, the assistant's turn
    opened, no special tokens added twice; a tokenizer without a template is one clear error."""
    import shutil

    import optc
    from optc import zoo
    from optc.calibration import tokenizer
    from optc.codegen.signature import ArtifactError

    folder = tmp_path / "chat-tokenizer"
    shutil.copytree(zoo.minilm_dir(), folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx"))
    (folder / "chat_template.jinja").write_text(CHATML)
    a = optc.load(artifact)
    r = a.generate("what is the weather", 3, tokenizer=folder, chat=True)
    tok = tokenizer(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "what is the weather"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "what is the weather" in text
    assert r.prompt == tok(text, add_special_tokens=False)["input_ids"] and len(r.tokens) == 3
    with pytest.raises(ArtifactError, match="the tokenizer has no chat template"):
        a.generate("hello", 2, chat=True)  # the artifact's own (MiniLM's) tokenizer has none


def _byte_level_tokenizer():
    """A byte-level BPE tokenizer (GPT-2's and SmolLM2's kind) that knows no merges outside
    ASCII: every byte of a Chinese character or an emoji is its own token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["hello world, the weather is fine"] * 8, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def test_text_stream_reports_whole_characters_only():
    """Streaming byte-level tokens: each report extends the last and holds no half character
    (U+FFFD), the reports add up to the decoded text, and a stop mid-character still reports
    what the tokens decode to."""
    from optc.codegen.generate import TextStream

    tok = _byte_level_tokenizer()
    text = "hello 世界, the weather 🙂 is fine"
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    assert len(tok("世界🙂")["input_ids"]) == 10  # a token per byte: 3 + 3 + 4
    stream, reports = TextStream(tok), []
    for t in ids:
        if (r := stream.push(t)) is not None:
            reports.append(r)
    assert stream.finish() is None and reports[-1] == text
    assert all("\ufffd" not in r for r in reports)
    assert all(b.startswith(a) and b != a for a, b in zip(reports, reports[1:]))
    cut = TextStream(tok)  # stopped inside 界
    for t in tok("hello 世界")["input_ids"][:-1]:
        cut.push(t)
    assert cut.text == "hello 世" and cut.finish() == tok.decode(tok("hello 世界")["input_ids"][:-1])


def test_cli_generate(artifact, tmp_path):
    from isolation import assert_user_error_or_success, run_cli

    o = run_cli(["generate", str(artifact), "--prompt", "the weather today is", "--max-new-tokens", "5", "--json"])
    assert o.status == 0, o.describe()
    d = json.loads(o.stdout)
    assert len(d["tokens"]) == 5 and d["prompt_tokens"] == 6 and d["decode_tokens_per_s"] > 0
    o = run_cli(["generate", str(artifact), "--prompt", "hello", "--max-new-tokens", "3"])
    assert o.status == 0 and "tokens/s" in o.stderr, o.describe()
    o = run_cli(["generate", str(artifact), "--prompt", "hello", "--max-new-tokens", "0"])
    assert_user_error_or_success(o, "zero tokens")
    assert o.status == 2 and "max-new-tokens must be >= 1" in o.stderr
    argv = ["generate", str(artifact), "--prompt", "hello", "--max-new-tokens", "4", "--json", "--temperature", "0.8",
            "--top-k", "50", "--top-p", "0.9", "--repetition-penalty", "1.2", "--seed", "7"]
    runs = [run_cli(argv) for _ in range(2)]
    assert all(o.status == 0 for o in runs), runs[0].describe()
    assert json.loads(runs[0].stdout)["tokens"] == json.loads(runs[1].stdout)["tokens"]  # seeded: the same text
    o = run_cli(["generate", str(artifact), "--prompt", "hello", "--chat"])
    assert_user_error_or_success(o, "--chat without a template")
    assert o.status == 2 and "the tokenizer has no chat template" in o.stderr, o.describe()
    for flag, value, message in (("--top-p", "1.5", "top-p must be in (0, 1]"),
                                 ("--repetition-penalty", "0", "repetition penalty must be a finite number > 0")):
        o = run_cli(["generate", str(artifact), "--prompt", "hello", flag, value])
        assert_user_error_or_success(o, f"{flag} {value}")
        assert o.status == 2 and message in o.stderr, o.describe()


def test_cli_generate_on_an_encoder_is_one_line(tmp_path):
    from isolation import assert_user_error_or_success, run_cli

    from optc import compile as compile_model
    from optc.ir import DType, Graph, TensorType
    from optc.api import save_model

    g = Graph("enc")
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", 4)))
    g.set_outputs([g.op("Relu", x)])
    save_model(g, tmp_path / "enc.optc-ir")
    out = compile_model(tmp_path / "enc.optc-ir", tmp_path / "enc")
    o = run_cli(["generate", str(out), "--prompt", "hi"])
    assert_user_error_or_success(o, "an encoder")
    assert o.status == 2 and "not a decoder with a KV cache" in o.stderr
    o = run_cli(["compile", str(tmp_path / "enc.optc-ir"), "-o", str(tmp_path / "x"), "--tokenizer", str(tmp_path)])
    assert o.status == 2 and "not a Hugging Face tokenizer folder" in o.stderr
    assert not (tmp_path / "x").exists()


# -- the real decoder ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_generates_what_pytorch_generates(tmp_path):
    """SmolLM2-135M-Instruct end to end: import with its cache (tied head: 134.5M parameters),
    the default pipeline, one x86 module; logits within 1e-3 of PyTorch through the prefill and
    32 decode steps; greedy generation from text = PyTorch's for three prompts."""
    import torch

    from optc import zoo
    from optc.api import optimize
    from optc.codegen.artifact import write_artifact
    from optc.codegen.build import build
    from optc.frontend.pytorch import export_decoder

    import optc

    model, tok = zoo.load_smollm2(tmp_path / "tokenizer")
    g = export_decoder(model)
    assert g.parameter_count() == 134_515_043
    optimize(g, "default")
    assert sum(n.op == "Attention" for n in g.nodes) == 30
    compiled = build(g, "x86")
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    worst, _ = _worst_logit_difference(model, compiled.load(), ids, steps=32)
    assert worst < 1e-3

    artifact = optc.load(write_artifact(compiled, tmp_path / "smol", tokenizer=tmp_path / "tokenizer"))
    for prompt in ["The capital of France is", "Once upon a time, there was a little robot who", "def fibonacci(n):"]:
        r = artifact.generate(prompt, 24)
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():  # stops at the same end-of-text token generate() stops at
            want = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
        assert r.tokens == want, (r.text, tok.decode(want))
