"""Scaled-dot-product attention → one ``Attention`` node:
``softmax(scale · Q·Kᵀ (+ float mask | masked by Where(bool, ·, -inf))) · V``.

Pattern (anchored at ``Softmax``):

* scores: ``MatMul(Q', Kᵀ')`` where ``Q'``/``Kᵀ'`` may carry constant scalar factors (``Mul`` by c
  or ``Div`` by c, e.g. ``sqrt(scale)`` on each of Q and K as the ONNX exporters write it), and the
  product may be scaled again (``Mul``/``Div`` on the scores); all factors multiply into ``scale``.
* ``Kᵀ``: ``Transpose`` of a 4-D tensor (any perm that ends by swapping the last two axes of some
  ``K``; a preceding head-split ``Transpose`` is composed into one), dynamo's
  ``Reshape → Transpose(0,2,1) → Reshape`` (heads folded into batch), or an already transposed
  tensor (then ``K`` is made with one ``Transpose``).
* mask: ``Add(scores, mask)`` in either order (a float mask; a constant that is exactly the
  top-left causal mask becomes ``is_causal=1``), and/or ``Where(bool_mask, scores, -inf)``
  (the bool mask is passed as is; a constant lower-triangular one becomes ``is_causal=1``).
* output: ``Softmax(axis=-1)`` → optional ``Where(IsNaN(p), 0, p)`` (the TorchScript/dynamo guard
  for fully masked rows; ``Attention`` gives zeros there too) → ``MatMul(p, V)``.
* GQA: ``K``/``V`` repeated with ``Unsqueeze(2) → Expand → Reshape`` (repeat_kv) are replaced by
  the un-repeated tensors (both or neither) — also for an ``Attention`` a frontend already made
  (``torch.export``'s SDPA).

Checks: softmax over the last axis of a 4-D tensor; Q, K, V 4-D with matching head_dim and key
length, query heads a multiple of KV heads; every scale factor a constant; the probabilities used
only by the guard and the final MatMul; the mask does not broadcast the scores. The head
split/merge reshapes and transposes around the attention stay as they are.
"""

from __future__ import annotations

import math

import numpy as np

from optc.ir.errors import IRError
from optc.ir.graph import Graph, Node, Value
from optc.ir.types import DType

from ._match import is_scalar, peel_scale, producer, same, strip, users
from ._rewriter import NoMatch, Rule, apply_rule, require


def _perm(n: Node) -> list[int] | None:
    p = n.attrs.get("perm")
    r = n.input(0).type.rank
    if r is None:
        return None
    return list(p) if p is not None else list(range(r))[::-1]


def _k_from_kt(kt: Value) -> tuple[Value, list[int] | None] | None:
    """K (4-D [b, h, sk, d]) from Kᵀ: (source, perm) meaning K = Transpose(source, perm), or perm
    None meaning K = source."""
    kt = strip(kt)
    if kt.type.rank != 4:
        return None
    t = producer(kt, "Transpose")
    if t is not None:
        p = _perm(t)
        src = strip(t.input(0))
        if p is None or len(p) != 4:
            return None
        pk = p[:2] + [p[3], p[2]]
        inner = producer(src, "Transpose")
        if inner is not None and _perm(inner) is not None and len(_perm(inner)) == 4:
            q = _perm(inner)
            pk = [q[i] for i in pk]
            src = strip(inner.input(0))
        return (src, None) if pk == [0, 1, 2, 3] else (src, pk)
    r2 = producer(kt, "Reshape")
    if r2 is not None:
        t3 = producer(r2.input(0), "Transpose")
        r1 = producer(t3.input(0), "Reshape") if t3 is not None else None
        if r1 is not None and _perm(t3) == [0, 2, 1]:
            src = strip(r1.input(0))
            s, mid, out = src.shape, r1.output.shape, kt.shape
            if (s is not None and mid is not None and out is not None and len(s) == 4 and len(mid) == 3
                    and tuple(mid[1:]) == tuple(s[2:]) and tuple(out) == (s[0], s[1], s[3], s[2])
                    and None not in s):
                return src, None
    return kt, [0, 1, 3, 2]


def _unrepeat(v: Value) -> tuple[Value, int] | None:
    """For v = repeat_kv(s, n) (Unsqueeze(2) → Expand → Reshape), return (s, n)."""
    r = producer(v, "Reshape")
    e = producer(r.input(0), "Expand") if r is not None else None
    u = producer(e.input(0), "Unsqueeze") if e is not None else None
    if u is None:
        return None
    s = strip(u.input(0))
    axes = strip(u.input(1)).const if u.input(1) is not None else u.attrs.get("axes")
    if axes is None or [int(a) % 5 for a in np.asarray(axes).reshape(-1)] != [2]:
        return None
    ss, es, rs = s.shape, e.output.shape, r.output.shape
    if ss is None or es is None or rs is None or len(ss) != 4 or len(es) != 5 or len(rs) != 4:
        return None
    n = es[2]
    if not isinstance(n, int) or (es[0], es[1], es[3], es[4]) != tuple(ss):
        return None
    if (rs[0], rs[2], rs[3]) != (ss[0], ss[2], ss[3]):
        return None
    if not (isinstance(ss[1], int) and rs[1] == ss[1] * n):
        return None
    return s, n


def _causal_const(mask: Value, sq, sk) -> bool:
    """Whether a constant mask is exactly the top-left causal mask for [sq, sk] scores."""
    c = strip(mask).const
    if c is None or c.ndim < 2 or any(d != 1 for d in c.shape[:-2]):
        return False
    c = c.reshape(c.shape[-2:])
    if c.shape != (sq, sk):
        return False
    tril = np.tril(np.ones(c.shape, dtype=bool))
    if c.dtype == np.bool_:
        return bool(np.array_equal(c, tril))
    return bool(np.all(c[tril] == 0) and np.all(np.isneginf(c[~tril])))


def _scores(s: Value):
    """(matmul node, q, kᵀ, scale factor) for a scores value, or None."""
    src, f = peel_scale(s)
    mm = producer(src, "MatMul")
    if mm is None or mm.output.type.rank != 4:
        return None
    q, fq = peel_scale(mm.input(0))
    kt, fk = peel_scale(mm.input(1))
    return mm, q, kt, f * fq * fk


def _match(sm: Node):
    x = sm.input(0)
    rank = x.type.rank
    require(rank == 4 and sm.attrs["axis"] % rank == rank - 1, "not a softmax over the last axis of 4-D scores")
    s, bool_mask, float_mask = strip(x), None, None
    w = producer(s, "Where")
    if w is not None and w.input(0).dtype is DType.BOOL and is_scalar(w.input(2), -math.inf):
        bool_mask, s = w.input(0), strip(w.input(1))
    parsed = _scores(s)
    if parsed is None:
        add = producer(s, "Add")
        require(add is not None, "its input is not a (scaled) Q·Kᵀ MatMul, masked or not")
        for a, b in ((add.input(0), add.input(1)), (add.input(1), add.input(0))):
            parsed = _scores(a)
            if parsed is not None:
                float_mask = b
                break
        require(parsed is not None, "its input is not a (scaled) Q·Kᵀ MatMul plus a mask")
        require(add.output.shape == parsed[0].output.shape and float_mask.dtype == x.dtype,
                "the mask broadcasts the scores or has another type")
        require(bool_mask is None, "two masks (a float Add and a boolean Where); Attention takes one")
    mm, q, kt, scale = parsed
    require(math.isfinite(scale) and scale != 0, f"the scores' scale {scale} is not a finite non-zero constant")
    # Output side: optional NaN guard, then MatMul(p, V).
    p = sm.output
    allowed: set[Node] = set()
    isnan = [n for n in users(p, "IsNaN")]
    if isnan:
        guards = [g for g in users(isnan[0].output, "Where")
                  if same(g.input(0), isnan[0].output) and is_scalar(g.input(1), 0.0) and same(g.input(2), p)]
        require(len(isnan) == 1 and len(guards) == 1, "an IsNaN of the probabilities that is not the zero guard")
        allowed |= {isnan[0], guards[0]}
        p = guards[0].output
    finals = [n for n in users(p, "MatMul") if same(n.input(0), p)]
    require(len(finals) == 1, "the probabilities do not go into one MatMul with V")
    final = finals[0]
    require(not any(n not in allowed and n is not final for n in users(sm.output)) and len(users(p)) == 1,
            "the probabilities have other users")
    require(not any(o in sm.graph.outputs for o in [sm.output, p]), "the probabilities are a graph output")
    v = strip(final.input(1))
    k_recipe = _k_from_kt(kt)
    require(k_recipe is not None, "Kᵀ is not 4-D")
    ksrc, kperm = k_recipe
    # GQA: feed the un-repeated K/V (only when K is an existing value and both are repeated).
    if kperm is None:
        rk, rv = _unrepeat(ksrc), _unrepeat(v)
        if rk is not None and rv is not None and rk[1] == rv[1]:
            ksrc, v = rk[0], rv[0]
    qs, vs = q.shape, v.shape
    kshape = None if ksrc.shape is None else (tuple(ksrc.shape) if kperm is None else tuple(ksrc.shape[i] for i in kperm))
    require(qs is not None and vs is not None and kshape is not None and len(qs) == len(vs) == len(kshape) == 4,
            "Q, K and V are not all 4-D [batch, heads, seq, dim]")
    require(q.dtype == v.dtype == ksrc.dtype and q.dtype.is_float, "Q, K and V are not one float type")
    require(not (isinstance(qs[3], int) and isinstance(kshape[3], int) and qs[3] != kshape[3]),
            f"Q's head dim {qs[3]} is not K's {kshape[3]}")
    require(not (isinstance(kshape[2], int) and isinstance(vs[2], int) and kshape[2] != vs[2]),
            f"K's length {kshape[2]} is not V's {vs[2]}")
    hq, hk = qs[1], kshape[1]
    require(isinstance(hq, int) and isinstance(hk, int) and hq % hk == 0 and vs[1] == hk,
            f"{hq} query heads are not a multiple of {hk} key/value heads")
    mask, causal = float_mask if float_mask is not None else bool_mask, 0
    if mask is not None and _causal_const(mask, qs[2], kshape[2]):
        mask, causal = None, 1
    return dict(q=q, k=ksrc, kperm=kperm, v=v, mask=mask, causal=causal, scale=scale, final=final)


def _rewrite(graph: Graph, sm: Node, m: dict):
    final, k, created = m["final"], m["k"], []
    try:
        if m["kperm"] is not None:
            t = graph.add_node("Transpose", [k], {"perm": m["kperm"]}, before=final, name=f"{sm.name}_k")
            created.append(t)
            k = t.output
        att = graph.add_node("Attention", [m["q"], k, m["v"], m["mask"]],
                             {"scale": float(m["scale"]), "is_causal": m["causal"]},
                             before=final, name=f"{sm.name}_attention", output_types=[final.output.type])
    except IRError as e:
        for n in reversed(created):
            graph.remove_node(n)
        raise NoMatch(f"Attention does not take these inputs: {' '.join(str(e).split())}") from None
    return [(final.output, att.output)]


def _unrepeat_attention_inputs(graph: Graph) -> int:
    """An ``Attention`` a frontend made from a fused SDPA call (``torch.export``) still reads
    ``repeat_kv`` copies of K and V: it reads the grouped K/V instead (the kernel maps each
    query head to its group), so a decode step no longer copies the whole cache per layer."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Attention":
            continue
        rk, rv = _unrepeat(node.input(1)), _unrepeat(node.input(2))
        if rk is None or rv is None or rk[1] != rv[1]:
            continue
        node.set_input(1, rk[0])
        node.set_input(2, rv[0])
        count += 1
    return count


RULE = Rule("attention", ("Softmax",), _match, _rewrite, finish=_unrepeat_attention_inputs)


def fuse_attention(graph: Graph) -> int:
    """Fuse scaled-dot-product attention (incl. causal and grouped-query) into one Attention op."""
    return apply_rule(graph, RULE).matched
