"""The fused CPU attention kernel (codegen/schedules/attention.py) against the reference
interpreter, and a structural check that it never materializes the [seq, seq] scores.

Graphs hold several Attention nodes each and are built once per test module (a TVM build costs
seconds here); symbolic batch/seq graphs run many sizes through one compiled module, including
sequence lengths that are and are not multiples of the key tile.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from optc.codegen.build import build
from optc.codegen.lower import lower_to_relax
from optc.codegen.schedules import attention as fused
from optc.ir import DType, Graph, TensorType
from optc.ir.interpreter import run
from optc.targets import get_target

F32, F16, F64, BOOL = DType.FLOAT32, DType.FLOAT16, DType.FLOAT64, DType.BOOL
TOL = 1e-4
SEQS = (1, 7, 16, 45, 128)  # key tile is 64 (AVX-512) or 32 (AVX2): both multiples and tails


def _rng(seed):
    return np.random.default_rng(seed)


def _check(cm, g, feed, tol=TOL):
    got = cm.load().run(feed)
    ref = run(g, feed)
    for name, want in ref.items():
        assert got[name].shape == want.shape, name
        assert not np.isnan(got[name]).any(), name
        np.testing.assert_allclose(got[name].astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol,
                                   err_msg=name)


# -- symbolic batch/seq, grouped-query heads, every mask kind -------------------------------------
def _mha_graph():
    """Hq=4 query heads over Hk=2 kv heads (GQA), head_dim 32, symbolic batch and seq."""
    g = Graph("attn_sym")
    sym = lambda h: TensorType(F32, ("batch", h, "seq", 32))  # noqa: E731
    q, k, v = g.add_input("q", sym(4)), g.add_input("k", sym(2)), g.add_input("v", sym(2))
    bm_full = g.add_input("bm_full", TensorType(BOOL, ("batch", 1, "seq", "seq")))
    bm_keys = g.add_input("bm_keys", TensorType(BOOL, ("batch", 1, 1, "seq")))
    fmask = g.add_input("fmask", TensorType(F32, ("batch", 1, "seq", "seq")))
    g.set_outputs([
        g.op("Attention", q, k, v),
        g.op("Attention", q, k, v, bm_full),
        g.op("Attention", q, k, v, bm_keys, scale=0.3),
        g.op("Attention", q, k, v, fmask),
        g.op("Attention", q, k, v, is_causal=1),
        g.op("Attention", q, k, v, bm_keys, is_causal=1),
    ])
    return g


def _mha_feed(batch, seq, seed):
    rng = _rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    bm_keys = rng.random((batch, 1, 1, seq)) > 0.3
    bm_keys[:, :, :, 0] = True
    bm_keys[-1] = False  # the last batch item: every key masked -> zeros
    fmask = np.where(rng.random((batch, 1, seq, seq)) > 0.2, f(batch, 1, seq, seq), -np.inf).astype(np.float32)
    fmask[..., 0] = 0.5
    fmask[0, 0, -1, :] = -np.inf  # a query row with every key at -inf: zeros, as the interpreter
    return {"q": f(batch, 4, seq, 32), "k": f(batch, 2, seq, 32), "v": f(batch, 2, seq, 32),
            "bm_full": rng.random((batch, 1, seq, seq)) > 0.4, "bm_keys": bm_keys, "fmask": fmask}


@pytest.fixture(scope="module")
def mha():
    g = _mha_graph()
    return g, build(g, "x86")


def test_mha_builds_fused_and_scheduled(mha):
    _g, cm = mha
    assert cm.notes == []
    assert cm.fallback_funcs == [] and cm.unscheduled == []


@pytest.mark.parametrize("seq", SEQS)
def test_mha_matches_interpreter(mha, seq):
    g, cm = mha
    _check(cm, g, _mha_feed(2, seq, seed=seq))


def test_one_module_two_sizes(mha):
    g, cm = mha
    for batch, seq in ((1, 70), (3, 9)):  # same module, different batch and seq
        _check(cm, g, _mha_feed(batch, seq, seed=batch * 100 + seq))


def test_avx2_tiles():
    """8 lanes: 32-key tiles, 16-key half tiles, 2 query rows per register block."""
    g = _mha_graph()
    cm = build(g, "x86-avx2")
    assert cm.notes == [] and cm.fallback_funcs == []
    for seq in (7, 16, 45, 128):
        _check(cm, g, _mha_feed(2, seq, seed=seq + 1))


# -- projections' layout: [b, s, h, d] read in place, the output written for the transpose back --
def _projection_graph():
    """Q/K/V as transposes of [batch, seq, heads, 32] (as exporters spell BERT), the output
    transposed back and flattened; a second Attention's output is used as it is."""
    g = Graph("attn_bshd")
    x = g.add_input("x", TensorType(F32, ("batch", "seq", 128)))
    heads = lambda h: g.op("Transpose", g.op("Reshape", g.op("MatMul", x, g.add_constant(  # noqa: E731
        _rng(h).standard_normal((128, h * 32)).astype(np.float32) * 0.1)),
        g.add_constant(np.array([0, 0, h, 32], np.int64))), perm=(0, 2, 1, 3))
    q, k, v = heads(4), heads(2), heads(2)
    y = g.op("Attention", q, k, v, is_causal=1)
    flat = g.op("Reshape", g.op("Transpose", y, perm=(0, 2, 1, 3)), g.add_constant(np.array([0, 0, 128], np.int64)))
    g.set_outputs([flat, g.op("Attention", q, k, v)])
    return g


def test_projection_layout_without_transposes():
    g = _projection_graph()
    cm = build(g, "x86")
    assert cm.notes == [] and cm.fallback_funcs == []
    for batch, seq in ((1, 45), (2, 128)):
        _check(cm, g, {"x": _rng(seq).standard_normal((batch, seq, 128)).astype(np.float32)})
    kernels = [gv.name_hint for gv, _ in _scheduled(g).functions_items()]
    assert sum(n.startswith(fused.KERNEL) and not n.startswith(fused.PACK_K) for n in kernels) >= 1
    assert not any("transpose" in n for n in kernels), kernels


# -- one fused QKV projection split three ways: each part read from the projection's output -------
def _split_projection_graph(widths=(4, 2, 2), keep_split=False):
    """x @ [Wq | Wk | Wv] split along its columns (GPT-2's c_attn, optc's merged int8 siblings),
    each part reshaped to [b, s, h, 32] and transposed; ``keep_split``: one part is also an output,
    so the split must stay."""
    g = Graph("attn_split")
    x = g.add_input("x", TensorType(F32, ("batch", "seq", 64)))
    cols = [h * 32 for h in widths]
    qkv = g.op("MatMul", x, g.add_constant(_rng(5).standard_normal((64, sum(cols))).astype(np.float32) * 0.2))
    split = g.add_node("Split", [qkv, g.add_constant(np.asarray(cols, np.int64))], {"axis": -1}, num_outputs=3)
    q, k, v = (g.op("Transpose", g.op("Reshape", part, g.add_constant(np.array([0, 0, h, 32], np.int64))),
                    perm=(0, 2, 1, 3)) for part, h in zip(split.outputs, widths))
    y = g.op("Attention", q, k, v, is_causal=1)
    flat = g.op("Reshape", g.op("Transpose", y, perm=(0, 2, 1, 3)),
                g.add_constant(np.array([0, 0, widths[0] * 32], np.int64)))
    outs = [flat, g.op("Attention", q, k, v, scale=0.2)]
    g.set_outputs(outs + ([split.outputs[2]] if keep_split else []))
    return g


@pytest.mark.parametrize("widths,keep_split", [((4, 2, 2), False), ((2, 2, 2), False), ((2, 2, 2), True)],
                         ids=["gqa", "mha", "split-also-output"])
def test_split_projection_read_in_place(widths, keep_split):
    """The kernel reads Q, K and V at their column offsets in the projection's output: no split
    (a copy of the whole projection) unless something else uses its parts."""
    g = _split_projection_graph(widths, keep_split)
    cm = build(g, "x86")
    assert cm.notes == [] and cm.fallback_funcs == []
    for batch, seq in ((1, 45), (2, 128), (1, 1)):
        _check(cm, g, {"x": _rng(seq).standard_normal((batch, seq, 64)).astype(np.float32)})
    kernels = [gv.name_hint for gv, _ in _scheduled(g).functions_items()]
    assert any("split" in n for n in kernels) == keep_split, kernels
    assert not any("transpose" in n for n in kernels), kernels


# -- head_dim 64, cross attention (Sq != Sk), rank-3 float mask, static shapes ------------------
def _cross_graph():
    g = Graph("attn_cross")
    q = g.add_input("q", TensorType(F32, (2, 3, 5, 64)))
    k = g.add_input("k", TensorType(F32, (2, 3, 70, 64)))
    v = g.add_input("v", TensorType(F32, (2, 3, 70, 64)))
    m = g.add_input("m", TensorType(F32, (1, 5, 70)))
    g.set_outputs([g.op("Attention", q, k, v, m), g.op("Attention", q, k, v, is_causal=1),
                   g.op("Attention", q, k, v, m, is_causal=1, scale=0.05)])
    return g


def test_cross_attention_head_dim_64():
    g = _cross_graph()
    cm = build(g, "x86")
    assert cm.notes == [] and cm.fallback_funcs == []
    rng = _rng(1)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    _check(cm, g, {"q": f(2, 3, 5, 64), "k": f(2, 3, 70, 64), "v": f(2, 3, 70, 64), "m": f(1, 5, 70)})


# -- precision: f16 runs the kernel in f32; f64 keeps the decomposition, visibly ------------------
def _typed_graph(dt):
    g = Graph(f"attn_{dt.long_name}")
    t = TensorType(dt, (1, 2, "seq", 32))
    q, k, v = g.add_input("q", t), g.add_input("k", t), g.add_input("v", t)
    g.set_outputs([g.op("Attention", q, k, v, is_causal=1)])
    return g


def _typed_feed(dt, seq):
    rng = _rng(seq)
    return {n: rng.standard_normal((1, 2, seq, 32)).astype(dt) for n in "qkv"}


def test_float16_uses_the_kernel():
    g = _typed_graph(F16)
    cm = build(g, "x86")
    assert cm.notes == []
    for seq in (7, 70):
        _check(cm, g, _typed_feed(np.float16, seq), tol=2e-3)


def test_float64_falls_back_visibly():
    g = _typed_graph(F64)
    cm = build(g, "x86")
    assert len(cm.notes) == 1 and "decomposition" in cm.notes[0] and "float64" in cm.notes[0]
    _check(cm, g, _typed_feed(np.float64, 45))


def test_plan_reasons():
    g = _typed_graph(F64)
    node = g.nodes[0]
    spec, why = fused.plan(node, get_target("x86"))
    assert spec is None and "float64" in why
    spec, why = fused.plan(_mha_graph().nodes[1], None)
    assert spec is None and "CPU" in why
    spec, _ = fused.plan(_mha_graph().nodes[2], get_target("x86"))
    assert spec is not None and spec.mask == "bool" and spec.mask_bcast == (False, True, True, False)
    assert spec.heads_q == 4 and spec.heads_kv == 2 and spec.scale == 0.3
    g = _typed_graph(F32)
    q, k, v = g.inputs
    odd = g.op("Attention", q, k, v, g.add_input("m", TensorType(BOOL, ("mb", 1, 1, "seq"))))
    spec, why = fused.plan(odd.producer, get_target("x86"))
    assert spec is None and "broadcast" in why


# -- structure: no [seq, seq] buffer anywhere -----------------------------------------------------
_ALLOC = re.compile(r"T\.(?:alloc_local|alloc_buffer|decl_buffer|alloc_shared)\(\(([^)]*)\)")


def _scheduled(g):
    from optc.codegen.schedules import testing

    target = get_target("x86")
    return testing.lower(lower_to_relax(g, target), target)


def _tensor_shapes(mod):
    """Every Relax binding's static shape in ``main`` (values that live in memory)."""
    from tvm import relax

    shapes = []

    def visit(e):
        if isinstance(e, relax.Var) and isinstance(e.ty, relax.TensorType) and e.ty.shape is not None:
            dims = e.ty.shape.values
            if all(hasattr(d, "value") for d in dims):
                shapes.append(tuple(int(d.value) for d in dims))

    relax.analysis.post_order_visit(mod["main"], visit)
    return shapes


def _tir_allocs(mod):
    """Element counts of every buffer allocated inside a PrimFunc."""
    import tvm

    counts = {}
    for gv, f in mod.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc):
            for dims in _ALLOC.findall(f.script()):
                n = 1
                for d in dims.split(","):
                    d = d.strip()
                    if d:
                        n *= int(d) if d.isdigit() else 10**9  # a symbolic allocation counts as huge
                counts.setdefault(gv.name_hint, []).append(n)
    return counts


def _seq_by_seq(shape, seq) -> bool:
    """Whether a tensor shape has two dims of at least ``seq`` (heads and head_dim are smaller)."""
    return sum(d >= seq for d in shape) >= 2


def _static_mha(seq):
    g = Graph("attn_static")
    t = lambda h: TensorType(F32, (1, h, seq, 32))  # noqa: E731
    q, k, v = g.add_input("q", t(4)), g.add_input("k", t(2)), g.add_input("v", t(2))
    m = g.add_input("m", TensorType(BOOL, (1, 1, 1, seq)))
    g.set_outputs([g.op("Attention", q, k, v, m, is_causal=1)])
    return g


def test_no_seq_by_seq_buffer(monkeypatch):
    seq = 96
    mod = _scheduled(_static_mha(seq))
    assert any(n.startswith(fused.KERNEL) for n in (gv.name_hint for gv, _ in mod.functions_items()))
    assert not any(_seq_by_seq(s, seq) for s in _tensor_shapes(mod)), _tensor_shapes(mod)
    allocs = _tir_allocs(mod)
    assert allocs, "the kernel allocates its local tiles"
    assert all(n < seq * seq for ns in allocs.values() for n in ns), allocs
    # the detector is real: the decomposition does hold [.., seq, seq] scores
    monkeypatch.setattr(fused, "plan", lambda node, target: (None, "test"))
    decomposed = _scheduled(_static_mha(seq))
    assert any(_seq_by_seq(s, seq) for s in _tensor_shapes(decomposed))
