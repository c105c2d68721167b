"""Rotary fusion: Hugging Face's ``x·cos + rotate_half(x)·sin`` becomes one RotaryEmbedding on
both decoder import paths (torch.export and the dynamo ONNX export) with the same numbers, from an
empty cache and from a filled one (the tables then start at the past length); a chain whose
tables do not provably repeat their first half does not fuse, and says why."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_models import ops
from optc.ir.graph import Graph
from optc.ir.interpreter import Interpreter
from optc.ir.types import DType, TensorType
from optc.passes.fusion import explain_fusions, fuse_rotary

F32 = DType.FLOAT32


@pytest.fixture(scope="module")
def model():
    import models

    return models.llama_decoder_small()


def _feed(graph, past: int, seq: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(past)
    feed = {}
    for v in graph.inputs:
        if v.dtype.is_float:  # a cache: [batch, kv heads, past, head dim]
            shape = [1, v.shape[1], past, v.shape[3]]
            feed[v.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            feed[v.name] = rng.integers(0, 1000, size=(1, seq))
    return feed


@pytest.mark.parametrize("path", ["torch.export", "onnx"])
def test_decoder_rotary_fuses_with_the_same_numbers(model, path, tmp_path):
    from optc import load_model
    from optc.api import optimize
    from optc.frontend.pytorch import export_decoder, export_decoder_onnx

    if path == "torch.export":
        imported = export_decoder(model)
    else:
        export_decoder_onnx(model, tmp_path / "decoder.onnx")
        imported = load_model(tmp_path / "decoder.onnx")
    fused = imported.clone()
    optimize(fused, "default")
    layers = model.config.num_hidden_layers
    assert ops(fused).get("RotaryEmbedding") == 2 * layers and "Neg" not in ops(fused)  # Q and K of each layer
    rotary = [n for n in fused.nodes if n.op == "RotaryEmbedding"]
    assert len({n.input(1).name for n in rotary}) == len({n.input(2).name for n in rotary}) == 1  # sliced once
    for past in (0, 3):
        feed = _feed(imported, past)
        want, got = Interpreter(imported).run(feed), Interpreter(fused).run(feed)
        for name, w in want.items():
            np.testing.assert_allclose(got[name], w, rtol=1e-4, atol=1e-4, err_msg=f"{name} (past {past})")


def _chain(cos_table: np.ndarray, split: bool = False) -> Graph:
    """``x·cos + rotate_half(x)·sin`` on x [1, 2, 4, 8] with constant [1, 1, 4, 8] tables."""
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 2, 4, 8)))

    def i64(*v):
        return g.add_constant(np.array(v, np.int64))

    if split:
        x1, x2 = g.add_node("Split", [x, i64(4, 4)], {"axis": 3}, num_outputs=2).outputs
    else:
        x1 = g.op("Slice", x, i64(0), i64(4), i64(3))
        x2 = g.op("Slice", x, i64(4), i64(2**62), i64(-1))
    rot = g.add_node("Concat", [g.op("Neg", x2), x1], {"axis": -1}).output
    sin_table = np.sin(np.concatenate([np.arange(16.0).reshape(4, 4)] * 2, -1)).reshape(1, 1, 4, 8)
    cos, sin = g.add_constant(cos_table.astype(np.float32)), g.add_constant(sin_table.astype(np.float32))
    g.set_outputs([g.op("Add", g.op("Mul", x, cos), g.op("Mul", rot, sin))])
    return g


@pytest.mark.parametrize("split", [False, True])
def test_repeating_tables_fuse_and_others_say_why(split):
    angles = np.arange(16.0).reshape(4, 4)
    good = np.cos(np.concatenate([angles, angles], -1)).reshape(1, 1, 4, 8)
    g = _chain(good, split)
    x = {"x": np.random.default_rng(0).standard_normal((1, 2, 4, 8)).astype(np.float32)}
    want = Interpreter(g).run(x)
    assert fuse_rotary(g) == 1 and ops(g).get("RotaryEmbedding") == 1 and "Neg" not in ops(g)
    np.testing.assert_allclose(next(iter(Interpreter(g).run(x).values())), next(iter(want.values())), rtol=1e-6, atol=1e-6)

    bad = _chain(np.cos(np.arange(32.0)).reshape(1, 1, 4, 8), split)  # halves differ: not the op's rotation
    got = {o.rule: o for o in explain_fusions(bad)}["rotary"]
    assert got.matched == 0 and len(got.misses) == 1
    assert "repeats its first half" in got.misses[0]["reason"]


def test_fused_decoder_exports_to_onnx_that_onnx_runtime_runs(model, tmp_path):
    """The fused op keeps the model's one table (batch 1) and broadcasts it; the ONNX export
    expands it to the batch, as ONNX's op and ONNX Runtime require: batch 2, empty and filled cache."""
    import onnxruntime as ort

    from optc.api import optimize
    from optc.frontend.onnx_export import save_onnx
    from optc.frontend.pytorch import export_decoder

    g = export_decoder(model)
    optimize(g, "default")
    assert ops(g).get("RotaryEmbedding")
    sess = ort.InferenceSession(str(save_onnx(g, tmp_path / "decoder.onnx")), providers=["CPUExecutionProvider"])
    for past in (0, 3):
        rng = np.random.default_rng(past)
        feed = {v.name: rng.standard_normal((2, v.shape[1], past, v.shape[3])).astype(np.float32) if v.dtype.is_float
                else rng.integers(0, 1000, size=(2, 5)) for v in g.inputs}
        want = Interpreter(g).run(feed)
        for out, got in zip(sess.get_outputs(), sess.run(None, feed)):
            np.testing.assert_allclose(got, want[out.name], rtol=1e-4, atol=1e-4, err_msg=f"{out.name} (past {past})")


def test_chains_the_op_does_not_compute_do_not_fuse():
    """A table of one position for every position (it broadcasts over the sequence, the op's
    caches cannot) and a Split of run-time sizes: no fusion, and a reason."""
    angles = np.arange(4.0)
    one_row = np.cos(np.concatenate([angles, angles])).reshape(1, 1, 1, 8)
    g = _chain(one_row)
    got = {o.rule: o for o in explain_fusions(g)}["rotary"]
    assert got.matched == 0 and "not one row per position of x" in got.misses[0]["reason"]

    g = Graph()
    x = g.add_input("x", TensorType(F32, (1, 2, 4, 8)))
    sizes = g.add_input("sizes", TensorType(DType.INT64, (2,)))
    x1, x2 = g.add_node("Split", [x, sizes], {"axis": 3}, num_outputs=2).outputs
    rot = g.add_node("Concat", [g.op("Neg", x2), x1], {"axis": -1}).output
    table = g.add_constant(np.ones((1, 1, 4, 8), np.float32))
    g.set_outputs([g.op("Add", g.op("Mul", x, table), g.op("Mul", rot, table))])
    assert fuse_rotary(g) == 0 and "Neg" in ops(g)
