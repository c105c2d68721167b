"""Head-structure analysis (passes/compression/heads.py) on tiny BERT, GPT-2 and Llama-GQA
models from the three import paths, fused (default pipeline) and unfused (cleanup only):
the weight slices it assigns to each head are the torch module's, checked by value."""

from __future__ import annotations

import numpy as np
import pytest

import prune_models as pm
from optc.passes import PassContext
from optc.passes.compression.heads import find_attention_blocks

# The dynamo exporter's unfused attention folds the heads into the batch axis for K
# ([batch*heads, seq, dim]); the analysis reports those blocks instead of guessing.
UNFOLLOWABLE = {("gpt2", "onnx-dynamo", "cleanup"), ("llama", "onnx-dynamo", "cleanup"), ("bert", "onnx-dynamo", "cleanup")}


@pytest.mark.parametrize("pipeline", ["default", "cleanup"])
@pytest.mark.parametrize("path", pm.PATHS)
@pytest.mark.parametrize("name", list(pm.BUILDERS))
def test_heads_and_slices(name, path, pipeline):
    g = pm.graph(name, path, pipeline)
    info = find_attention_blocks(g)
    heads, kv, d, layers = pm.SHAPES[name]
    if (name, path, pipeline) in UNFOLLOWABLE:
        assert not info.blocks or len(info.blocks) + len(info.skipped) == layers
        assert all(s["reason"] for s in info.skipped)
        if info.blocks:  # whatever is reported as understood must be right
            pass
        else:
            return
    assert len(info.blocks) == layers, info.skipped
    assert not info.skipped
    m = pm.model(name)
    for b, (q, k, v, o) in zip(info.blocks, pm.attention_modules(name, m)):
        assert (b.heads, b.kv_heads, b.head_dim) == (heads, kv, d)
        assert b.fused == (b.core.op == "Attention")
        for sl, mod, width in ((b.q, q, heads * d), (b.k, k, kv * d), (b.v, v, kv * d)):
            want = pm.in_out(mod)
            if name == "gpt2":  # one combined projection: q | k | v columns
                want = want[:, {"q": 0, "k": 1, "v": 2}[sl.role] * 64:][:, :width]
            got = sl.projection.matrix()[:, sl.offset:sl.offset + width]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
            # head h's columns are the h-th block of head_dim columns
            np.testing.assert_array_equal(sl.columns(d, [1]), np.arange(sl.offset + d, sl.offset + 2 * d))
        np.testing.assert_allclose(b.out.matrix(), pm.in_out(o), rtol=0, atol=1e-6)
        assert b.residual is not None and b.block_output is not None
        assert b.group_of(heads - 1) == kv - 1
        if name == "gpt2":
            assert (b.q.offset, b.k.offset, b.v.offset) == (0, 64, 128)
            assert b.q.projection.name == b.k.projection.name == b.v.projection.name


def test_cached_analysis():
    g = pm.graph("llama")
    ctx = PassContext()
    a = ctx.analysis("heads", g)
    assert ctx.analysis("heads", g) is a
    assert [x["kv_heads"] for x in a.summary()["blocks"]] == [2, 2]


def test_attention_without_projection_is_skipped_with_a_reason():
    """An Attention whose Q is a graph input: no projection to prune, reported, not guessed."""
    from optc.ir.graph import Graph
    from optc.ir.types import DType, TensorType

    g = Graph()
    q = g.add_input("q", TensorType(DType.FLOAT32, (1, 2, 4, 8)))
    out = g.op("Attention", q, q, q, scale=0.35)
    g.set_outputs([out])
    info = find_attention_blocks(g)
    assert not info.blocks
    assert len(info.skipped) == 1 and "before a head-split reshape" in info.skipped[0]["reason"]
