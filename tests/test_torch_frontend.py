"""The torch.export frontend: small hand-written modules (fast) and real transformers (slow), each
imported, verified and run by the reference interpreter against eager PyTorch."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

import models
from optc.frontend.pytorch import export_module, import_exported_program, load_pt2
from optc.ir import DType, UnsupportedOpError

TOL = 1e-5
MODEL_TOL = 1e-4


def _run(graph, feed):
    run = pytest.importorskip("optc.ir.interpreter").run
    return run(graph, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feed.items()})


def _verify(graph):
    try:
        from optc.ir.verifier import verify
    except ImportError:  # pragma: no cover - the verifier is optional
        return
    verify(graph)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat(v)]
    return []


def _check(module, graph, args=(), kwargs=None, tol=TOL):
    """Run ``graph`` on the inputs and compare every output with eager ``module``."""
    kwargs = dict(kwargs or {})
    names = [v.name for v in graph.inputs]
    feed = dict(zip(names, args)) if args else {}
    feed.update(kwargs)
    with torch.no_grad():
        expected = _flat(module(*args, **kwargs))
    got = _run(graph, feed)
    assert len(got) == len(expected)
    errs = {}
    for name, want in zip(graph.output_names(), expected):
        have = got[name]
        assert have.shape == tuple(want.shape), f"{name}: shape {have.shape} != {tuple(want.shape)}"
        if want.dtype == torch.bool or not want.dtype.is_floating_point:
            np.testing.assert_array_equal(have, want.numpy(), err_msg=name)
            errs[name] = 0.0
        else:
            errs[name] = float(np.abs(have.astype(np.float64) - want.double().numpy()).max()) if want.numel() else 0.0
            assert errs[name] <= tol, f"{name}: max abs error {errs[name]:.3e}"
    return errs


def _ops(graph):
    return collections.Counter(n.op for n in graph.nodes)


# ---------------------------------------------------------------------------------------------
# small modules
# ---------------------------------------------------------------------------------------------
class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.fc2 = torch.nn.Linear(32, 8, bias=False)

    def forward(self, x):
        h = F.gelu(self.norm(self.fc1(x)), approximate="tanh")
        return self.fc2(F.silu(h) + F.relu(h) * 0.5)


class Block(torch.nn.Module):
    """Pre-norm attention block with separate q/k/v projections; ``kv_heads < heads`` is GQA."""

    def __init__(self, dim=32, heads=4, kv_heads=4, mode="causal"):
        super().__init__()
        self.h, self.kvh, self.d = heads, kv_heads, dim // heads
        self.mode = mode
        self.ln = torch.nn.LayerNorm(dim)
        self.q = torch.nn.Linear(dim, heads * self.d)
        self.k = torch.nn.Linear(dim, kv_heads * self.d)
        self.v = torch.nn.Linear(dim, kv_heads * self.d)
        self.o = torch.nn.Linear(heads * self.d, dim)
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, x, mask=None):
        b, s, _ = x.shape
        h = self.ln(x)
        q = self.q(h).view(b, s, self.h, self.d).transpose(1, 2)
        k = self.k(h).view(b, s, self.kvh, self.d).transpose(1, 2)
        v = self.v(h).view(b, s, self.kvh, self.d).transpose(1, 2)
        gqa = self.kvh != self.h
        if self.mode == "causal":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif self.mode == "bool_mask":
            m = mask[:, None, None, :].bool()
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa, scale=0.3)
        else:  # additive float mask built from the padding mask
            m = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(b, s, self.h * self.d)
        return x + self.drop(self.o(y))


def _padding_mask(b, s):
    m = torch.ones(b, s, dtype=torch.long)
    m[-1, s // 2:] = 0
    return m


def test_mlp_constants_inputs_and_numerics():
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(3, 5, 16)
    g = export_module(model, (x,), dynamic_shapes={"x": {0: Dim("batch"), 1: Dim("seq")}})
    _verify(g)
    assert g.input_names() == ["x"]
    assert g.inputs[0].type.shape == ("batch", "seq", 16)
    assert g.output_names() == ["output"]
    assert g.outputs[0].type.shape == ("batch", "seq", 8)
    # weights are constants named by their state-dict keys; linear weights are pre-transposed
    assert g.constants["fc1.weight"].const.shape == (16, 32)
    np.testing.assert_array_equal(g.constants["fc1.weight"].const, model.fc1.weight.detach().numpy().T)
    assert "fc1.bias" in g.constants and "norm.weight" in g.constants
    ops = _ops(g)
    assert ops["MatMul"] == 2 and ops["LayerNormalization"] == 1 and ops["Gelu"] == 1 and ops["Silu"] == 1
    assert "Transpose" not in ops
    gelu = next(n for n in g.nodes if n.op == "Gelu")
    assert gelu.attrs["approximate"] == "tanh"
    _check(model, g, (x,))
    _check(model, g, (torch.randn(1, 9, 16),))  # other batch and sequence


@pytest.mark.parametrize("mode", ["causal", "bool_mask", "float_mask"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_block(mode, kv_heads):
    torch.manual_seed(1)
    model = Block(kv_heads=kv_heads, mode=mode).eval()
    x = torch.randn(2, 6, 32)
    mask = _padding_mask(2, 6)
    batch, seq = Dim("batch", max=64), Dim("seq", max=512)
    kwargs = {"x": x} if mode == "causal" else {"x": x, "mask": mask}
    dyn = {"x": {0: batch, 1: seq}} if mode == "causal" else {"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}}
    g = export_module(model, (), kwargs, dynamic_shapes=dyn)
    _verify(g)
    att = [n for n in g.nodes if n.op == "Attention"]
    assert len(att) == 1
    a = att[0]
    q, k = a.inputs[0].type.shape, a.inputs[1].type.shape
    assert q == ("batch", 4, "seq", 8) and k == ("batch", kv_heads, "seq", 8)
    assert a.attrs["is_causal"] == (1 if mode == "causal" else 0)
    assert (a.input(3) is not None) == (mode != "causal")
    if mode == "bool_mask":
        assert a.attrs["scale"] == pytest.approx(0.3)
        assert a.input(3).dtype is DType.BOOL
    # the view/reshape targets fold to constants: no run-time shape computation at all
    assert "Shape" not in _ops(g)
    for n in g.nodes:
        if n.op == "Reshape":
            assert n.input(1).is_constant
    _check(model, g, (), kwargs)
    kwargs2 = {"x": torch.randn(3, 11, 32)}
    if mode != "causal":
        kwargs2["mask"] = _padding_mask(3, 11)
    _check(model, g, (), kwargs2)


class CausalCross(torch.nn.Module):
    """Causal SDPA where the query is shorter than the keys (torch aligns the mask top-left)."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_causal_with_unequal_lengths():
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    g = export_module(CausalCross(), (q, k, v))
    _verify(g)
    a = next(n for n in g.nodes if n.op == "Attention")
    assert a.attrs["is_causal"] == 0 and a.input(3) is not None
    _check(CausalCross(), g, (q, k, v))


class Embedder(torch.nn.Module):
    """Token + position embeddings, layer norm, padding mask handling, mean pooling."""

    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(50, 16, padding_idx=0)
        self.pos = torch.nn.Embedding(64, 16)
        self.norm = torch.nn.LayerNorm(16, eps=1e-12)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
        h = self.norm(self.tok(input_ids) + self.pos(pos)) * self.scale
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        scores = h @ h.transpose(-1, -2) / 4
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, float("-inf"))
        probs = scores.softmax(-1)
        return {"hidden": h, "pooled": pooled, "probs": probs}


def test_embedding_pooling_dict_outputs():
    torch.manual_seed(2)
    model = Embedder().eval()
    ids = torch.randint(1, 50, (2, 7))
    mask = _padding_mask(2, 7)
    batch, seq = Dim("batch"), Dim("seq", max=64)
    g = export_module(model, (ids, mask), dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    _verify(g)
    assert g.input_names() == ["input_ids", "attention_mask"]
    assert g.output_names() == ["hidden", "pooled", "probs"]
    assert g.outputs[2].type.shape == ("batch", "seq", "seq")
    assert "tok.weight" in g.constants and "pos.weight" in g.constants and "scale" in g.constants
    assert _ops(g)["Gather"] >= 2
    _check(model, g, (ids, mask))
    _check(model, g, (torch.randint(1, 50, (1, 12)), _padding_mask(1, 12)))


class Kitchen(torch.nn.Module):
    """Many small ATen ops: type promotion, rounding division, indexing, creation, RoPE-style math."""

    def forward(self, x, idx):
        b, s, d = x.shape
        a = idx + 0.5                                   # int tensor + float scalar -> float
        c = (idx > 2) & (idx <= 7)                      # int comparisons, bool and
        q = torch.div(idx, 3, rounding_mode="floor") + torch.div(idx - 5, 3, rounding_mode="trunc")
        r = idx.float() / 3 + idx // 2 + (idx - 6) // 4 + torch.remainder(idx - 4, 3)
        half = x[..., : d // 2]
        rot = torch.cat([-x[..., d // 2:], half], dim=-1)
        pos = torch.arange(s, dtype=torch.float32)[:, None] * torch.ones(d)
        rope = x * torch.cos(pos) + rot * torch.sin(pos)
        tri = torch.tril(torch.ones(s, s, dtype=torch.bool))
        sc = torch.where(tri, rope @ rope.transpose(1, 2), torch.zeros(()))
        p1, p2 = torch.chunk(x, 2, dim=-1)
        split = torch.split(x, [3, d - 3], dim=-1)
        e = x.pow(2).mean(-1, keepdim=True).rsqrt() + x.amax(-1, keepdim=True) - x.sum(dim=(1, 2), keepdim=True)
        sel = x[:, 0] + x.select(1, -1) + x[:, 1:3].sum(1)
        g = x[torch.arange(b)[:, None], torch.tensor([0, 2])]  # advanced indexing, broadcast indices
        cs = torch.cumsum(idx, dim=1)
        t = torch.tanh(x).sigmoid().exp().neg() + torch.triu(x[0], diagonal=1).sum()
        mm = torch.bmm(x, x.transpose(1, 2)) + torch.addmm(x[0, :, :2], x[0], x[1].T[:, :2], beta=0.5, alpha=2.0).sum()
        fill = x.new_full((b, 2), 3.0) + torch.zeros(b, 2) + torch.ones_like(x[:, :2, 0])
        return a, c, q, r, rope, sc, p1 * p2, split[1], e, sel, g, cs, t, mm, fill


def test_kitchen_sink_ops():
    torch.manual_seed(3)
    x = torch.randn(2, 6, 8)
    idx = torch.randint(0, 10, (2, 6))
    g = export_module(Kitchen(), (x, idx))
    _verify(g)
    dtypes = [v.dtype for v in g.outputs]
    assert dtypes[0] is DType.FLOAT32 and dtypes[1] is DType.BOOL and dtypes[2] is DType.INT64
    assert g.output_names()[:3] == ["output_0", "output_1", "output_2"]
    _check(Kitchen(), g, (x, idx))


class SymbolicSizes(torch.nn.Module):
    """Sizes computed from symbolic dims flow into arange/new_zeros/view/expand/slice."""

    def forward(self, x):
        b, s, d = x.shape
        flat = x.reshape(b * s, d)                                  # -1 folding
        steps = torch.arange(b * s).to(x.dtype)                      # Range over a product
        z = x.new_zeros(b, 2 * s)                                   # ConstantOfShape with a symbolic shape
        e = x[:, :1, :].expand(b, s, d)                             # expand: symbolic entry
        tail = x[:, s - 2:, :]                                      # slice with a symbolic start
        ones = torch.ones(b, s, 1)
        return flat * steps[:, None], z, e + ones, tail, x.view(b, s, 2, d // 2).transpose(1, 2).flatten(2)


def test_symbolic_size_arithmetic():
    x = torch.randn(2, 5, 8)
    model = SymbolicSizes()
    g = export_module(model, (x,), dynamic_shapes={"x": {0: Dim("batch"), 1: Dim("seq", min=3)}})
    _verify(g)
    shapes = [v.type.shape for v in g.outputs]
    assert shapes[0] == ("batch*seq", 8)
    assert shapes[1] == ("batch", "2*seq")
    assert shapes[2] == ("batch", "seq", 8)
    assert shapes[4] == ("batch", 2, "seq*4") or shapes[4] == ("batch", 2, "4*seq")
    _check(model, g, (x,))
    _check(model, g, (torch.randn(3, 7, 8),))


def test_dim_names_override_and_symbol_names():
    x = torch.randn(2, 5, 16)
    ep = torch.export.export(MLP().eval(), (x,), dynamic_shapes={"x": {0: Dim("batch"), 1: Dim("seq")}}, strict=False)
    g = import_exported_program(ep, dim_names={"seq": "tokens"})
    assert g.inputs[0].type.shape == ("batch", "tokens", 16)
    sym = str(ep.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape[0])
    g2 = import_exported_program(ep, dim_names={sym: "B"})
    assert g2.inputs[0].type.shape[0] == "B"


def test_pt2_roundtrip(tmp_path):
    torch.manual_seed(4)
    model = Block(kv_heads=2, mode="causal").eval()
    x = torch.randn(2, 6, 32)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: Dim("batch"), 1: Dim("seq")}}, strict=False)
    path = tmp_path / "block.pt2"
    torch.export.save(ep, path)
    g = load_pt2(path)
    _verify(g)
    assert g.inputs[0].type.rank == 3 and isinstance(g.inputs[0].type.shape[0], str)
    assert "q.weight" in g.constants
    _check(model, g, (x,))
    with pytest.raises(Exception, match="no such file"):
        load_pt2(tmp_path / "missing.pt2")


class NeedsDecomposition(torch.nn.Module):
    """Ops that are not mapped natively decompose into core ATen that is."""

    def forward(self, x):
        return torch.logsumexp(x, -1), F.glu(x, -1), torch.lerp(x, x * 2, 0.25), F.hardshrink(x), torch.roll(x, 1, 0)


def test_unmapped_ops_fall_back_to_decomposition():
    x = torch.randn(4, 8)
    g = export_module(NeedsDecomposition(), (x,))
    _verify(g)
    _check(NeedsDecomposition(), g, (x,))


def test_refused_native_mapping_falls_back_to_decomposition(monkeypatch):
    """A mapped op whose handler refuses a particular use is decomposed instead."""
    from optc.frontend.pytorch import registry

    def refuse(m, node, a):
        raise UnsupportedOpError("no")

    monkeypatch.setitem(registry.HANDLERS, torch.ops.aten.silu.default, refuse)
    model = MLP().eval()
    x = torch.randn(2, 3, 16)
    g = export_module(model, (x,))
    _verify(g)
    ops = _ops(g)
    assert "Silu" not in ops and ops["Sigmoid"] == 1 and ops["LayerNormalization"] == 1
    _check(model, g, (x,))


class PoolAndElu(torch.nn.Module):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 2), F.elu(x, alpha=0.5), F.selu(x)


def test_adaptive_pool_and_elu_family():
    x = torch.randn(1, 2, 8, 8)
    g = export_module(PoolAndElu(), (x,))
    _verify(g)
    _check(PoolAndElu(), g, (x,))


class Unsupported(torch.nn.Module):
    def forward(self, x):
        return torch.atan2(x, x + 1)


def test_unsupported_op_error_names_op_and_node():
    with pytest.raises(UnsupportedOpError) as e:
        export_module(Unsupported(), (torch.randn(3),))
    msg = str(e.value)
    assert "aten.atan2" in msg and "atan2" in msg.split("fx node")[1] and "\n" not in msg


class Convs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_conv_batchnorm_pool():
    torch.manual_seed(5)
    model = Convs().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 8, 8)
    g = export_module(model, (x,))
    _verify(g)
    ops = _ops(g)
    assert ops["Conv"] == 1 and ops["BatchNormalization"] == 1 and ops["MaxPool"] == 1
    _check(model, g, (x,))


class Outputs(torch.nn.Module):
    def forward(self, x):
        return x, (x * 2, {"a": x + 1}), x.shape[0]


def test_output_names_from_nested_pytree():
    x = torch.randn(3, 2)
    g = export_module(Outputs(), (x,), dynamic_shapes={"x": {0: Dim("n")}})
    _verify(g)
    assert g.output_names() == ["output_0", "output_1.0", "output_1.1.a", "output_2"]
    got = _run(g, {"x": x.numpy()})
    np.testing.assert_array_equal(got["output_0"], x.numpy())
    assert int(got["output_2"]) == 3


class HalfPrecision(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8).to(torch.bfloat16)

    def forward(self, x):
        return self.fc(x.to(torch.bfloat16)).float()


def test_bfloat16_weights():
    g = export_module(HalfPrecision(), (torch.randn(2, 8),))
    _verify(g)
    assert g.constants["fc.weight"].dtype is DType.BFLOAT16
    assert g.outputs[0].dtype is DType.FLOAT32


class Mutations(torch.nn.Module):
    """In-place writes (functionalized by the decomposition fallback), ``item()`` and sizes used
    as python floats."""

    def forward(self, x, ids):
        b, s, d = x.shape
        y = x.clone()
        y[:, 1:3] = 0.5                                   # slice + fill_
        y[:, -1] = x[:, 0] * 2                            # select + copy_
        y[x > 1.0] = -1.0                                 # index_put_ with a bool mask
        z = torch.zeros(b, 4)
        z[torch.arange(b), ids[:, 0] % 4] = 1.0           # index_put_ with integer indices
        k = x.amax().item()                               # data-dependent scalar
        scaled = x * (s ** 0.5) + x / s                   # SymFloat and SymInt scalars
        return y, z, scaled, x[:, :, :1] * k


def test_mutations_item_and_symbolic_scalars():
    torch.manual_seed(6)
    x, ids = torch.randn(2, 5, 8), torch.randint(0, 10, (2, 5))
    batch, seq = Dim("batch"), Dim("seq", min=3)
    g = export_module(Mutations(), (x, ids), dynamic_shapes={"x": {0: batch, 1: seq}, "ids": {0: batch, 1: seq}})
    _verify(g)
    assert g.metadata["dim_range.seq"].startswith("3..")
    _check(Mutations(), g, (x, ids))
    _check(Mutations(), g, (torch.randn(3, 7, 8), torch.randint(0, 10, (3, 7))))


class GradAndAutocastRegions(torch.nn.Module):
    """``torch.no_grad()`` and disabled-autocast regions export as higher-order ops with a
    subgraph; the importer inlines them."""

    def __init__(self):
        super().__init__()
        self.register_buffer("inv_freq", torch.rand(4))
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        with torch.no_grad():
            f = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * self.inv_freq
        with torch.autocast("cpu", enabled=False):
            c = torch.cat([f.cos(), f.sin()], -1)
        return self.fc(x * c)


def test_higher_order_regions_are_inlined():
    model = GradAndAutocastRegions().eval()
    x = torch.randn(2, 5, 8)
    g = export_module(model, (x,), dynamic_shapes={"x": {1: Dim("seq")}})
    _verify(g)
    assert {"Cos", "Sin", "Range"} <= set(_ops(g))
    _check(model, g, (x,))
    _check(model, g, (torch.randn(2, 9, 8),))


@pytest.mark.parametrize("module", ["block", "embedder"])
def test_fully_decomposed_program(module):
    """A program already lowered to core ATen (addmm, permute, native_layer_norm, _softmax,
    ...) imports as well as the high-level one."""
    torch.manual_seed(7)
    batch, seq = Dim("batch"), Dim("seq", max=64)
    if module == "block":
        model = Block(kv_heads=2, mode="bool_mask").eval()
        args = (torch.randn(2, 6, 32), _padding_mask(2, 6))
        args2 = (torch.randn(3, 10, 32), _padding_mask(3, 10))
    else:
        model = Embedder().eval()
        args = (torch.randint(1, 50, (2, 7)), _padding_mask(2, 7))
        args2 = (torch.randint(1, 50, (1, 12)), _padding_mask(1, 12))
    ep = torch.export.export(model, args, dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), strict=False)
    ep = ep.run_decompositions()
    g = import_exported_program(ep)
    _verify(g)
    _check(model, g, args)
    _check(model, g, args2)


# ---------------------------------------------------------------------------------------------
# real models
# ---------------------------------------------------------------------------------------------
REAL = {
    "minilm": (models.minilm, ["last_hidden_state", "pooler_output"]),
    "gpt2": (models.gpt2_small, ["last_hidden_state"]),
    "llama_gqa": (models.llama_gqa_small, ["last_hidden_state"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_model_matches_pytorch(name):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build, outs = REAL[name]
    model, inputs = build()
    g = export_module(model, (), inputs, dynamic_shapes=models.dynamic_shapes(inputs))
    _verify(g)
    assert g.input_names() == list(inputs)
    assert g.output_names() == outs
    assert [v.type.shape[:2] for v in g.inputs] == [("batch", "seq")] * len(inputs)
    assert g.outputs[0].type.shape[:2] == ("batch", "seq")
    assert _ops(g)["Attention"] == model.config.num_hidden_layers
    runs = [inputs, build(batch=1, seq=23, seed=7)[1]]
    if name != "minilm":  # minilm's inputs are padded already
        runs.append(build(batch=3, seq=20, seed=8, pad=6)[1])
    for batch_inputs in runs:
        with torch.no_grad():
            ref = model(**batch_inputs)
        got = _run(g, batch_inputs)
        for key in outs:
            err = float(np.abs(got[key] - ref[key].numpy()).max())
            print(f"{name} {key} {tuple(ref[key].shape)}: max abs error {err:.2e}")
            assert err <= MODEL_TOL, f"{name} {key}: max abs error {err:.3e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm", "llama_gqa"])  # GPT-2's Conv1D view does not decompose in torch 2.13
def test_real_model_fully_decomposed(name):
    build, outs = REAL[name]
    model, inputs = build()
    ep = torch.export.export(model, (), inputs, dynamic_shapes=models.dynamic_shapes(inputs), strict=False)
    g = import_exported_program(ep.run_decompositions())
    _verify(g)
    with torch.no_grad():
        ref = model(**inputs)
    got = _run(g, inputs)
    for key in outs:
        err = float(np.abs(got[key] - ref[key].numpy()).max())
        print(f"{name} (core ATen) {key}: max abs error {err:.2e}")
        assert err <= MODEL_TOL
