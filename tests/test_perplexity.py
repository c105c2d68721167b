"""Perplexity of causal-LM logits (passes/compression/fidelity.py): the next-token scoring every
fidelity measurement of a decoder carries, against a hand computation and against Hugging Face's
own language-model loss, and in ``optc eval``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optc.passes.compression.fidelity import compare, next_token_nll, token_ids


def _log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    return row - row.max() - np.log(np.exp(row - row.max()).sum())


def test_next_token_nll_counts_the_kept_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    total, count = next_token_nll(logits, {"input_ids": ids, "attention_mask": mask})
    want = [-_log_softmax(logits[b, t])[ids[b, t + 1]] for b in range(2) for t in range(4) if mask[b, t] and mask[b, t + 1]]
    assert count == len(want) == 6 and total == pytest.approx(sum(want), rel=1e-12)


def test_no_token_ids_no_perplexity():
    logits = np.zeros((1, 4, 5), np.float32)
    assert next_token_nll(logits, {"pixel_values": np.zeros((1, 4))}) is None
    assert next_token_nll(logits, {"input_ids": np.full((1, 4), 9)}) is None  # ids outside the vocabulary
    assert token_ids((1, 4), {"attention_mask": np.ones((1, 4), np.int64)}) is None
    f = compare([{"hidden": np.ones((1, 4, 5))}], [{"hidden": np.ones((1, 4, 5))}], [{"input_ids": np.zeros((1, 4), np.int64)}])
    assert f.perplexity is None and "perplexity" not in str(f)


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    import torch

    import models
    from optc import zoo

    model, inputs = models.llama_causal_small(batch=2, seq=12, pad=3)
    path = zoo.export_onnx(model, inputs, tmp_path_factory.mktemp("lm") / "lm.onnx", dynamo=False,
                           output_names=["logits"])
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss.item()
    return path, {k: v.numpy() for k, v in inputs.items()}, float(np.exp(loss))


def test_perplexity_matches_hugging_face_loss(causal_lm):
    from optc import load_model
    from optc.ir.interpreter import Interpreter

    path, feed, hf_ppl = causal_lm
    out = Interpreter(load_model(path)).run(feed)
    f = compare([out], [out], [feed])
    assert f.perplexity_reference == pytest.approx(hf_ppl, rel=1e-4) and f.perplexity == f.perplexity_reference
    assert f.top1 == 1.0 and f.perplexity_change == 0.0
    noisy = {"logits": out["logits"] + np.random.default_rng(0).normal(0, 2, out["logits"].shape).astype(np.float32)}
    g = compare([out], [noisy], [feed])
    assert g.perplexity > g.perplexity_reference and g.perplexity_change > 0 and "perplexity" in str(g)


def test_eval_reports_perplexity(causal_lm, tmp_path, capsys):
    from optc.cli import main

    path, feed, hf_ppl = causal_lm
    np.savez(tmp_path / "in.npz", **feed)
    assert main(["eval", str(path), str(path), "--inputs", str(tmp_path / "in.npz"), "--json"]) == 0
    fid = json.loads(capsys.readouterr().out)["fidelity"]
    assert fid["perplexity"] == fid["perplexity_reference"] == pytest.approx(hf_ppl, rel=1e-4)
    assert main(["eval", str(path), str(path), "--inputs", str(tmp_path / "in.npz")]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_sensitivity_probe_thins_rows_and_agrees_with_compare(causal_lm):
    """``SensitivityProbe`` (the per-layer probes of low-rank and assign-precision) runs on the
    first rows that give its vector budget — 12 logits rows per sequence here, so 12 vectors is
    one sequence, its padding trimmed — and its float32 loss is ``1 - compare``'s mean cosine."""
    from optc import load_model
    from optc.ir.interpreter import Interpreter
    from optc.passes.compression.fidelity import SensitivityProbe, head_rows

    path, feed, _ = causal_lm
    g = load_model(path)
    probe = SensitivityProbe(g, [feed], vectors=12)
    assert [f["input_ids"].shape for f in probe.inputs] == [(1, 12)]
    assert probe.loss(g) == pytest.approx(0.0, abs=1e-6)
    noisy = g.clone()
    w = max((c for c in noisy.constants.values() if c.const is not None and c.const.ndim == 2), key=lambda c: c.const.size)
    w.const = (w.const * 1.3 + 0.05).astype(np.float32)
    one = head_rows(feed, 1)
    want = 1.0 - compare([Interpreter(g).run(one)], [Interpreter(noisy).run(one)], [one]).mean_cosine
    assert want > 1e-4 and probe.loss(noisy) == pytest.approx(want, rel=1e-4)
    # the padded second row alone loses its trailing padding (llama_causal_small pads on the right)
    pad = {k: v[1:] for k, v in feed.items()}
    assert head_rows({k: np.concatenate([v[1:], v[1:]]) for k, v in feed.items()}, 1)["input_ids"].shape[1] \
        == int(pad["attention_mask"].sum())


def test_sensitivity_probe_keeps_sets_the_model_fixes_whole():
    """A model whose batch and sequence length are fixed runs each probe on whole sets (cutting
    rows or padding would be refused by the input check); a probe that overflows is no match."""
    from optc.ir import DType, Graph, TensorType
    from optc.passes.compression.fidelity import SensitivityProbe

    g = Graph("fixed")
    x = g.add_input("x", TensorType(DType.FLOAT32, (4, 8)))
    w = g.add_constant(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32))
    g.set_outputs([g.op("MatMul", x, w)])
    g.infer_types()
    feed = {"x": np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)}
    probe = SensitivityProbe(g, [feed], vectors=1)
    assert probe.inputs[0]["x"].shape == (4, 8) and probe.loss(g) == pytest.approx(0.0, abs=1e-6)
    big = g.clone()
    next(c for c in big.constants.values() if c.const is not None and c.const.ndim == 2).const *= np.float32(3e38)
    assert probe.loss(big) == pytest.approx(1.0)  # inf rows: cosine 0, not agreement
