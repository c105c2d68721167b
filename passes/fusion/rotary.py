"""Rotary embedding: ``x·cos + rotate_half(x)·sin`` → ``RotaryEmbedding(x, cos[..., :D/2], sin[..., :D/2])``.

Pattern (Hugging Face's ``apply_rotary_pos_emb``, the Llama family): anchored at the ``Neg`` of
``rotate_half``: the ``Add`` of two products of one 4-D ``x`` ``[B, H, S, D]``, ``Mul(x, cos)``
and ``Mul(Concat(Neg(x2), x1), sin)``, where ``x1``/``x2`` are ``x``'s halves on the last axis
(two Slices or one Split), either operand order. Checks: the tables are per position and shared by the heads
(``[B or 1, 1, S, D]``), and each provably repeats its first half (``cat(f, f)``, through
cos/sin, casts, unsqueezes and scaling by values that repeat too) — only then is the chain the
op's non-interleaved rotation by the half-width caches. The caches keep the tables' batch (1
broadcasts, as in the chain).

Why an op when TVM fuses the chain into one kernel anyway: a graph that says what it computes
(SmolLM2: 60 ``RotaryEmbedding``, Q and K of 30 layers, for 8 nodes each), one place for a target's rotary kernel,
and ONNX export as the standard op (opset 23).
"""

from __future__ import annotations

import numpy as np

from optc.ir.graph import Graph, Node, Value

from ._match import const_ints, operands, producer, same, strip, users
from ._rewriter import Rule, apply_rule, require

_UNARY = ("Cos", "Sin", "Neg", "Cast", "Identity")
_BINARY = ("Mul", "Div", "Add", "Sub")


def _half_of(v: Value, x: Value, half: int, width: int) -> int | None:
    """0 or 1 when ``v`` is the first or second half of ``x``'s last axis (of ``width``), else None."""
    p = producer(v, "Slice", "Split")
    if p is None or not same(p.input(0), x):
        return None
    if p.op == "Split":
        if int(p.attrs.get("axis", 0)) % 4 != 3 or len(p.outputs) != 2:
            return None
        if p.input(1) is not None and const_ints(p.input(1)) != [half, half]:  # run-time sizes: no proof
            return None
        return p.outputs.index(strip(v))
    starts, ends, axes, steps = (const_ints(p.input(k)) for k in (1, 2, 3, 4))
    if axes is None or len(axes) != 1 or axes[0] % 4 != 3 or (steps is not None and steps != [1]):
        return None
    if starts == [0] and ends == [half]:
        return 0
    if starts == [half] and ends is not None and ends[0] >= width:
        return 1
    return None


def _rotated_half(v: Value, x: Value, half: int, width: int) -> bool:
    """``v`` is ``Concat(Neg(x2), x1)`` on the last axis: ``rotate_half(x)``."""
    cat = producer(v, "Concat")
    if cat is None or int(cat.attrs["axis"]) % 4 != 3 or len(cat.inputs) != 2:
        return False
    neg = producer(cat.input(0), "Neg")
    return neg is not None and _half_of(neg.input(0), x, half, width) == 1 and _half_of(cat.input(1), x, half, width) == 0


def _repeats(v: Value, depth: int = 12) -> bool:
    """The last axis of ``v`` is its first half twice (or of size 1: broadcast)."""
    v = strip(v)
    s = v.shape
    if s is None:
        return False
    if not s or s[-1] == 1:  # a scalar, or broadcast along the last axis
        return True
    if not isinstance(s[-1], int) or s[-1] % 2 or depth == 0:
        return False
    if v.const is not None:
        c = np.asarray(v.const)
        return bool(np.array_equal(c[..., : s[-1] // 2], c[..., s[-1] // 2:]))
    p = v.producer
    if p is None:
        return False
    if p.op == "Concat":
        return (int(p.attrs["axis"]) % len(s) == len(s) - 1 and len(p.inputs) == 2 and same(p.input(0), p.input(1)))
    if p.op in _UNARY:
        return _repeats(p.input(0), depth - 1)
    if p.op in _BINARY:
        return all(_repeats(u, depth - 1) for u in p.inputs)
    if p.op == "Unsqueeze":
        axes = const_ints(p.input(1))
        return axes is not None and all(a % len(s) != len(s) - 1 for a in axes) and _repeats(p.input(0), depth - 1)
    return False


def _table(v: Value, x: Value) -> Value:
    """A rotary table operand for ``x`` ``[B, H, S, D]``: ``[B or 1, 1, S, D]`` (so the product has
    x's shape) whose halves repeat."""
    s, (b, _, seq, width) = v.shape, x.shape
    require(s is not None and len(s) == 4 and s[0] in (1, b) and s[1] == 1 and s[2] == seq and s[3] == width,
            f"the table %{v.name} is not one row per position of x shared by the heads ([B or 1, 1, {seq}, {width}])")
    require(_repeats(v), f"cannot show that the table %{v.name} repeats its first half (cat(f, f)), "
                         "which the op's half-width caches mean")
    return v


def _match(neg: Node):
    """From the ``Neg`` of ``rotate_half`` forward to the ``Add`` (a distinctive anchor: an Add
    is everywhere, this Neg is not)."""
    cats = users(neg.output, "Concat")
    require(len(cats) == 1 and len(neg.output.uses) == 1, "the negation is not rotate_half's (one Concat using it)")
    for rot in users(cats[0].output, "Mul"):
        for add in users(rot.output, "Add"):
            for a, b in operands(add):
                plain = producer(a, "Mul")
                if strip(b) is not rot.output or plain is None or plain is rot:
                    continue
                for x, cos in operands(plain):
                    s = x.shape
                    if s is None or len(s) != 4 or not isinstance(s[3], int) or s[3] % 2 or not x.dtype.is_float:
                        continue
                    for r, sin in operands(rot):
                        if _rotated_half(r, x, s[3] // 2, s[3]):
                            require(add.output.shape == s, f"the sum %{add.output.name} is broadcast beyond x's shape")
                            return add, strip(x), _table(cos, x), _table(sin, x)
    require(False, "not x·cos + rotate_half(x)·sin of a 4-D x (rotate_half: Concat(Neg(x[..., D/2:]), x[..., :D/2]))")


def _cache(graph: Graph, table: Value, before: Node, name: str) -> Value:
    """``table[:, 0, :, :D/2]`` as ``[B, S, D/2]``: the unsqueeze undone where there is one. A
    table computed in the graph is sliced once, right after it is computed, for every layer's Q
    and K (SmolLM2: 2 slices, not 120)."""
    unsq = producer(table, "Unsqueeze")
    if unsq is not None and const_ints(unsq.input(1)) in ([1], [-3]):
        rows = unsq.input(0)
    else:
        axes = graph.add_constant(np.array([1], np.int64), graph.unique_name(f"{name}_axes"))
        rows = _shared(graph, "Squeeze", table, [axes], before, f"{name}_rows")
    half = int(table.shape[3]) // 2
    consts = [graph.add_constant(np.array([c], np.int64), graph.unique_name(f"{name}_{what}"))
              for what, c in (("start", 0), ("end", half), ("axis", -1))]
    return _shared(graph, "Slice", rows, consts, before, name)


def _shared(graph: Graph, op: str, v: Value, consts: list[Value], before: Node, name: str) -> Value:
    """``op(v, *consts)``: an equal node on ``v`` if there is one, else a new one right after
    ``v``'s producer (so every later use may share it); for a graph input or constant, a new
    one before ``before``."""
    if v.producer is None:  # a graph input or constant: an earlier slice may sit after ``before``
        return graph.add_node(op, [v, *consts], name=graph.unique_name(name), before=before).output
    want = [np.asarray(c.const).tolist() for c in consts]
    for n, k in v.uses:
        if (n.op == op and k == 0 and len(n.inputs) == len(consts) + 1 and not n.attrs
                and all(u is not None and u.const is not None for u in n.inputs[1:])
                and [np.asarray(u.const).tolist() for u in n.inputs[1:]] == want):
            return n.output
    return graph.add_node(op, [v, *consts], name=graph.unique_name(name), after=v.producer).output


def _rewrite(graph: Graph, neg: Node, found):
    add, x, cos, sin = found
    c = _cache(graph, cos, add, f"{add.name}_cos")
    s = _cache(graph, sin, add, f"{add.name}_sin")
    y = graph.add_node("RotaryEmbedding", [x, c, s], {"interleaved": 0}, before=add, name=f"{add.name}_rotary")
    return [(add.output, y.output)]


RULE = Rule("rotary", ("Neg",), _match, _rewrite)


def fuse_rotary(graph: Graph) -> int:
    """Fuse x·cos + rotate_half(x)·sin into one RotaryEmbedding op."""
    return apply_rule(graph, RULE).matched


__all__ = ["RULE", "fuse_rotary"]
