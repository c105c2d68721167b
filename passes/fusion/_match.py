"""Small structural matching helpers shared by the fusion rewrites.

Exporters spell the same math differently: operand order of commutative ops, ``Div`` by a
constant vs ``Mul`` by its reciprocal, 0-d vs 1-element constants, ``Cast`` to the type a value
already has. These helpers look through that noise so each rewrite states its pattern once.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from optc.ir.folding import eliminate_dead_code
from optc.ir.graph import Graph, Node, Value

COMMUTATIVE = {"Add", "Mul", "And", "Or", "Max", "Min", "Equal"}


def strip(v: Value | None) -> Value | None:
    """Look through no-op producers: Identity and a Cast to the dtype the value already has."""
    while v is not None and v.producer is not None:
        n = v.producer
        if n.op == "Identity" or (n.op == "Cast" and n.input(0) is not None and n.input(0).dtype == v.dtype):
            v = n.input(0)
            continue
        break
    return v


def producer(v: Value | None, *ops: str) -> Node | None:
    """The node producing ``v`` (after stripping noise) if its op is one of ``ops``."""
    v = strip(v)
    if v is None or v.producer is None:
        return None
    n = v.producer
    return n if (not ops or n.op in ops) else None


def scalar(v: Value | None) -> float | None:
    """The value of a constant holding exactly one element (0-d or any shape of ones)."""
    v = strip(v)
    if v is None or v.const is None or v.const.size != 1:
        return None
    return float(np.asarray(v.const).reshape(()))


def is_scalar(v: Value | None, target: float, rel: float = 1e-5) -> bool:
    s = scalar(v)
    if s is None:
        return False
    if math.isinf(target) or math.isinf(s):
        return s == target
    return math.isclose(s, target, rel_tol=rel, abs_tol=rel * 1e-3)


def operands(node: Node) -> Iterator[tuple[Value, Value]]:
    """(this, other) operand pairs of a binary node: both orders when it is commutative."""
    a, b = node.input(0), node.input(1)
    yield a, b
    if node.op in COMMUTATIVE:
        yield b, a


def same(a: Value | None, b: Value | None) -> bool:
    return a is not None and b is not None and strip(a) is strip(b)


def users(v: Value, *ops: str) -> list[Node]:
    """Nodes using ``v`` directly or through no-op Identity/same-type Cast, filtered by op."""
    out: list[Node] = []
    for n, _ in v.uses:
        if n.op == "Identity" or (n.op == "Cast" and n.outputs[0].dtype == v.dtype):
            out += users(n.outputs[0], *ops)
        elif not ops or n.op in ops:
            out.append(n)
    return out


def scale_factor(node: Node, v: Value) -> float | None:
    """If ``node`` multiplies/divides ``v`` by a constant scalar, the factor it applies to ``v``."""
    if node.op == "Mul":
        for this, other in operands(node):
            if same(this, v):
                s = scalar(other)
                if s is not None:
                    return s
        return None
    if node.op == "Div" and same(node.input(0), v):
        s = scalar(node.input(1))
        if s is not None and s != 0:
            return 1.0 / s
    return None


def peel_scale(v: Value, max_steps: int = 8) -> tuple[Value, float]:
    """Walk up (at most ``max_steps``) Mul/Div-by-constant producers of ``v``: returns the source
    and the total factor it was multiplied by."""
    factor = 1.0
    v = strip(v)
    for _ in range(max_steps):
        n = producer(v, "Mul", "Div")
        if n is None:
            break
        for cand in (n.input(0), n.input(1)) if n.op == "Mul" else (n.input(0),):
            f = scale_factor(n, cand)
            if f is not None and scalar(cand) is None:
                factor *= f
                v = strip(cand)
                break
        else:
            break
    return v, factor


def const_ints(v: Value | None) -> list[int] | None:
    """The elements of a constant integer input as a list (None when it is absent or computed)."""
    v = strip(v)
    if v is None or v.const is None:
        return None
    return [int(x) for x in np.asarray(v.const).reshape(-1)]


def const_axes(node: Node) -> list[int] | None:
    """Reduction axes of a Reduce* node (axes input, or the legacy ``axes`` attribute)."""
    if node.input(1) is not None:
        return const_ints(node.input(1))
    a = node.attrs.get("axes")
    return None if a is None else list(a)


def trailing_axes(axes: list[int] | None, rank: int | None) -> int | None:
    """If ``axes`` are exactly the last k axes of a tensor of ``rank``, return k."""
    if axes is None or rank is None or not axes:
        return None
    norm = sorted(a % rank for a in axes)
    k = len(norm)
    return k if norm == list(range(rank - k, rank)) else None


def replace(old: Value, new: Value, renames: list) -> None:
    """Point every use of ``old`` at ``new``; a graph output keeps its name (after ``cleanup``)."""
    if old in old.graph.outputs:
        renames.append((new, old.name))
    old.replace_all_uses_with(new)


def cleanup(graph: Graph, count: int, renames: list = ()) -> int:
    """Drop what the rewrites left dead, then give graph outputs back their names."""
    if count:
        eliminate_dead_code(graph)
        for new, name in renames:
            if name not in graph._names:
                graph.rename_value(new, name)
    return count


def normalized(e: Value, num: Value) -> Value | None:
    """Given ``e = variance + eps``, the value ``num / sqrt(e)`` in any of its spellings:
    ``num / Sqrt(e)``, ``num * Reciprocal(Sqrt(e))``, ``num * (1 / Sqrt(e))``,
    ``num * Pow(e, -0.5)``, ``num / Pow(e, 0.5)``."""
    invs: list[Value] = []
    for n in users(e, "Sqrt", "Pow"):
        if n.op == "Pow":
            if is_scalar(n.input(1), -0.5):
                invs.append(n.output)
                continue
            if not is_scalar(n.input(1), 0.5):
                continue
        s = n.output
        for m in users(s, "Div", "Reciprocal"):
            if m.op == "Reciprocal":
                invs.append(m.output)
            elif same(m.input(1), s):
                if same(m.input(0), num):
                    return m.output
                if is_scalar(m.input(0), 1.0):
                    invs.append(m.output)
    for inv in invs:
        for m in users(inv, "Mul"):
            for this, other in operands(m):
                if same(this, inv) and same(other, num):
                    return m.output
    return None


def affine(n: Value, x: Value, k: int, with_bias: bool) -> tuple[Value, Value | None, Value | None]:
    """Walk ``n * w (+ b)`` below a normalized value: returns (output, w or None, b or None).
    ``w``/``b`` must broadcast over the last ``k`` axes only (the result keeps ``x``'s type)."""
    def fits(p: Value) -> bool:
        if p.shape is None:
            return False
        dims = list(p.shape)
        while dims and dims[0] == 1:
            dims.pop(0)
        return len(dims) <= k and p.dtype == x.dtype

    out, w, b = n, None, None
    us = users(out)
    if len(us) == 1 and len(strip(out).uses) <= 1 and us[0].op == "Mul":
        m = us[0]
        other = m.input(1) if same(m.input(0), out) else m.input(0)
        if fits(other) and m.output.type == x.type:
            out, w = m.output, other
    if with_bias:
        us = users(out)
        if len(us) == 1 and us[0].op == "Add":
            a = us[0]
            other = a.input(1) if same(a.input(0), out) else a.input(0)
            if fits(other) and a.output.type == x.type:
                out, b = a.output, other
    return out, w, b


def ones_scale(graph: Graph, x: Value, k: int) -> Value | None:
    """A constant of ones shaped like the last ``k`` dims of ``x`` (None if they are not static)."""
    dims = list(x.shape[-k:]) if x.shape is not None else None
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return graph.add_constant(np.ones(dims, dtype=x.dtype.numpy))


def reduce_mean_of(r: Node) -> int | None:
    """For a ReduceMean with keepdims over trailing axes: how many trailing axes."""
    if r.op != "ReduceMean" or not r.attrs.get("keepdims", 1):
        return None
    x = r.input(0)
    return trailing_axes(const_axes(r), x.type.rank if x.shape is not None else None)


def first(candidates):
    """The first of ``candidates`` (a generator walking a pattern's alternatives), or None."""
    return next(iter(candidates), None)


def epsilon_of(add: Node, v: Value) -> float | None:
    """The constant scalar ``add`` adds to ``v`` (a normalization's eps), or None."""
    return next((scalar(o) for t, o in operands(add) if same(t, v) and scalar(o) is not None), None)


def static_tail(x: Value, k: int) -> bool:
    """Whether the last ``k`` dims of ``x`` are static (a ones scale can be made for them)."""
    return x.shape is not None and all(isinstance(d, int) for d in x.shape[-k:])


def sole_user(v: Value) -> Node | None:
    """The one node using ``v`` (through no-op Identity/Cast), when ``v`` is not a graph output:
    what a rewrite may absorb without computing ``v`` twice."""
    us = users(v)
    if len(us) != 1 or len(v.uses) != 1 or v in v.graph.outputs:
        return None
    return us[0]


_EPILOGUE = {"Relu": lambda n: "relu", "Silu": lambda n: "silu",
             "Gelu": lambda n: {"none": "gelu", "tanh": "gelu_tanh"}.get(n.attrs["approximate"])}


def epilogue_activation(node: Node | None) -> str | None:
    """The ``activation`` attribute value (Linear, FusedConv) that computes ``node``, if any."""
    if node is None or node.op not in _EPILOGUE:
        return None
    return _EPILOGUE[node.op](node)
