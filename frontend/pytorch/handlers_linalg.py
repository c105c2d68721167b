"""Handlers of linear algebra and attention: ``linear`` (weights pre-transposed at import),
matmul family, ``addmm`` family, ``einsum``, ``embedding`` and scaled dot-product attention
(the IR's composite ``Attention`` where the ranks fit, plain math otherwise)."""

from __future__ import annotations

import math

import numpy as np

from ...ir import DType, Value
from .importer import Importer, fake_of
from .registry import aten, handles
from .sizes import same_size, size_expr


def _linear_weight(m: Importer, w) -> Value:
    """Wᵀ for ``x @ Wᵀ``: a pre-transposed constant for parameters (named after the state-dict
    key when every use of the parameter is a linear weight, ``<key>.T`` otherwise)."""
    if m.is_param(w):
        if m.env[w].tensor.dim() != 2:
            return m.v(w)
        only_linear = all(u.target == aten.linear.default and u.args[1] is w and w not in u.args[2:] for u in w.users)
        return m.derived_param(w, [1, 0], exclusive=only_linear)
    wv = m.v(w)
    return wv if wv.type.rank == 1 else m.transpose(wv, [1, 0])


@handles("linear")
def _linear(m: Importer, node, a):
    x = m.v(a["input"])
    y = m.emit("MatMul", x, _linear_weight(m, a["weight"]))
    if a.get("bias") is not None:
        y = m.emit("Add", y, m.v(a["bias"]))
    return y


@handles("matmul", "mm", "bmm", "mv", "dot", "vdot")
def _matmul(m: Importer, node, a):
    x = m.v(a["self"])
    other = a.get("other", a.get("mat2", a.get("vec", a.get("tensor"))))
    return m.emit("MatMul", x, m.cast(m.v(other), x.dtype))


@handles("addmm", "baddbmm", "addbmm", "addmv")
def _addmm(m: Importer, node, a):
    name = node.target.__name__.split(".")[0]
    a1 = a.get("mat1", a.get("batch1", a.get("mat")))
    a2 = a.get("mat2", a.get("batch2", a.get("vec")))
    y = m.emit("MatMul", m.v(a1), m.v(a2))
    if name == "addbmm":
        y = m.emit("ReduceSum", y, m.i64([0]), keepdims=0)
    dt = y.dtype
    alpha, beta = m.lit(a.get("alpha", 1)), m.lit(a.get("beta", 1))
    if alpha != 1:
        y = m.emit("Mul", y, m.scalar(alpha, dt))
    if beta == 0:
        return y
    c = m.v(a["self"])
    if beta != 1:
        c = m.emit("Mul", c, m.scalar(beta, dt))
    return m.emit("Add", c, y) if node.target == aten.addmm.default else m.emit("Add", y, c)


@handles("einsum")
def _einsum(m: Importer, node, a):
    vals = [m.v(t) for t in a["tensors"]]
    return m.emit("Einsum", *vals, equation=str(a["equation"]).replace(" ", ""))


@handles("embedding")
def _embedding(m: Importer, node, a):
    return m.emit("Gather", m.v(a["weight"]), m.v(a["indices"]), axis=0)


# -- attention ---------------------------------------------------------------------------------
def _causal_mask(m: Importer, L, S) -> Value:
    """Bool [L, S] keeping key j <= query i (torch's top-left aligned causal mask)."""
    if size_expr(L).is_Integer and size_expr(S).is_Integer:
        return m.const(np.tril(np.ones((int(L), int(S)), dtype=bool)))
    rows = m.emit("Range", m.scalar(0, DType.INT64), m.sym_scalar(L), m.scalar(1, DType.INT64))
    cols = m.emit("Range", m.scalar(0, DType.INT64), m.sym_scalar(S), m.scalar(1, DType.INT64))
    return m.emit("GreaterOrEqual", m.emit("Unsqueeze", rows, m.i64([1])), m.emit("Unsqueeze", cols, m.i64([0])))


def _attention(m: Importer, q, k, v, mask, is_causal: bool, scale) -> Value:
    fq, fk = fake_of(q), fake_of(k)
    qv, kv, vv = m.v(q), m.v(k), m.v(v)
    dt = qv.dtype
    mv = None
    if mask is not None:
        mv = m.v(mask)
        if mv.dtype is not DType.BOOL:
            mv = m.cast(mv, dt)
    L, S = fq.shape[-2], fk.shape[-2]
    causal = 0
    if is_causal:
        if same_size(L, S) and mv is None:
            causal = 1
        else:
            cm = _causal_mask(m, L, S)
            if mv is None:
                mv = cm
            elif mv.dtype is DType.BOOL:
                mv = m.emit("And", mv, cm)
            else:
                mv = m.emit("Where", cm, mv, m.scalar(-np.inf, dt))
    attrs = {"is_causal": causal}
    if scale is not None:
        attrs["scale"] = float(scale)
    r = fq.dim()
    if r == 4 and fk.dim() == 4 and fake_of(v).dim() == 4:
        return m.emit("Attention", qv, kv, vv, mv, **attrs)
    if r == 3 and fk.dim() == 3 and fake_of(v).dim() == 3:
        ax = m.i64([1])
        if mv is not None and mv.type.rank == 3:
            mv = m.emit("Unsqueeze", mv, ax)
        y = m.emit("Attention", *(m.emit("Unsqueeze", t, ax) for t in (qv, kv, vv)), mv, **attrs)
        return m.emit("Squeeze", y, ax)
    return _attention_math(m, qv, kv, vv, mv, causal, scale, fq)


def _attention_math(m: Importer, q, k, v, mask, causal, scale, fq) -> Value:
    """softmax(q kᵀ · scale + mask) v, for ranks the ``Attention`` op does not take."""
    dt = q.dtype
    r = q.type.rank
    perm = list(range(r - 2)) + [r - 1, r - 2]
    if scale is None:
        scale = 1.0 / math.sqrt(int(fq.shape[-1]))
    s = m.emit("Mul", m.emit("MatMul", q, m.emit("Transpose", k, perm=perm)), m.scalar(scale, dt))
    if causal:
        mask = _causal_mask(m, fq.shape[-2], fq.shape[-2])
    if mask is not None:
        s = m.emit("Where", mask, s, m.scalar(-np.inf, dt)) if mask.dtype is DType.BOOL else m.emit("Add", s, mask)
    return m.emit("MatMul", m.emit("Softmax", s, axis=-1), v)


@handles("scaled_dot_product_attention")
def _sdpa(m: Importer, node, a):
    return _attention(m, a["query"], a["key"], a["value"], a.get("attn_mask"), bool(a.get("is_causal")), a.get("scale"))


@handles("_scaled_dot_product_flash_attention_for_cpu")
def _sdpa_cpu(m: Importer, node, a):
    return [_sdpa(m, node, a), None]
