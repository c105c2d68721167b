"""Tied weights (ir/tying.py, the ``tie-weights`` pass): a language model whose head is tied to its
embedding keeps one copy of the table after import, with the same outputs."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import DType, Graph, TensorType
from optc.ir.interpreter import Interpreter
from optc.ir.tying import tie_transposed_weights
from optc.ir.verifier import problems


def _tied(perturb: float = 0.0, gather_is_output: bool = False) -> Graph:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(10, 4)).astype(np.float32)
    g = Graph()
    ids = g.add_input("ids", TensorType(DType.INT64, (2, 3)))
    table = g.add_constant(e, "embed")
    head = g.add_constant(np.ascontiguousarray(e.T) + np.float32(perturb), "embed.T")
    h = g.add_node("Gather", [table, ids], name="embedding", output_names=["hidden"]).output
    logits = g.add_node("MatMul", [g.op("Tanh", h), head], output_names=["logits"]).output
    g.set_outputs([logits, h] if gather_is_output else [logits])
    return g


@pytest.mark.parametrize("gather_is_output", [False, True])
def test_gather_reads_the_transposed_copy(gather_is_output):
    g = _tied(gather_is_output=gather_is_output)
    feed = {"ids": np.array([[1, 2, 9], [0, 0, 5]])}
    want = Interpreter(g).run(feed)
    assert tie_transposed_weights(g) == [("embed", "embed.T")]
    assert "embed" not in g.constants and g.parameter_count() == 40 and problems(g) == []
    assert g.value("hidden").producer.op == "Transpose" and g.output_names() == list(want)
    got = Interpreter(g).run(feed)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_a_transpose_that_differs_is_not_tied():
    g = _tied(perturb=1e-7)
    assert tie_transposed_weights(g) == [] and "embed" in g.constants


@pytest.fixture(scope="module")
def causal_lm():
    import models

    model, inputs = models.llama_causal_small(batch=2, seq=12, pad=3)
    return model, inputs


def _check(graph, model, inputs):
    import torch

    n_params = sum(p.numel() for p in model.parameters())  # a tied tensor once
    table = model.get_input_embeddings().weight
    big = [v for v in graph.constants.values() if v.const.size == table.numel()]
    assert len(big) == 1, [v.name for v in big]
    # float buffers that are not parameters (rotary inv_freq, epsilons) count too: a few dozen
    assert n_params <= graph.parameter_count() < n_params + 100
    with torch.no_grad():
        want = model(**inputs).logits.numpy()
    got = Interpreter(graph).run({k: v.numpy() for k, v in inputs.items() if k in graph.input_names()})
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-4, atol=1e-4)


def test_torch_export_of_a_tied_lm_keeps_one_table(causal_lm):
    from optc import zoo
    from optc.frontend.pytorch import export_module

    model, inputs = causal_lm
    graph = export_module(model, (), dict(inputs), dynamic_shapes=zoo.dynamic_dims(inputs))
    _check(graph, model, inputs)


def test_onnx_import_of_a_tied_lm_keeps_one_table(causal_lm, tmp_path):
    from optc import zoo
    from optc.frontend.onnx_import import import_onnx

    model, inputs = causal_lm
    path = zoo.export_onnx(model, inputs, tmp_path / "lm.onnx", dynamo=False, output_names=["logits"])
    _check(import_onnx(path), model, inputs)


def test_tied_lm_compiles_and_matches(causal_lm):
    from optc import zoo
    from optc.api import optimize
    from optc.codegen.build import build
    from optc.frontend.pytorch import export_module

    model, inputs = causal_lm
    graph = export_module(model, (), dict(inputs), dynamic_shapes=zoo.dynamic_dims(inputs))
    optimize(graph, "default", target="x86")
    feed = {k: v.numpy() for k, v in inputs.items() if k in graph.input_names()}
    want = Interpreter(graph).run(feed)
    cm = build(graph, "x86")
    assert "optc_take_packed" in cm.executable.as_text()  # the embedding reads the head's packed copy
    got = cm.load().run(feed)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
