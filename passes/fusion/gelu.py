"""GELU: ``0.5 * x * (1 + erf(x / sqrt(2)))`` → ``Gelu(x)`` and
``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))`` → ``Gelu(x, approximate="tanh")``.

Pattern: anchored at the ``Erf``/``Tanh``. Spellings handled: ``x / sqrt(2)`` or ``x * (1/sqrt(2))``;
``1 + t`` in either order; the outer product of ``x``, ``(1 + t)`` and ``0.5`` in any association
and order (``(x * (1+t)) * 0.5``, ``(0.5 * x) * (1+t)``, ``x * ((1+t) * 0.5)``, ``/ 2``); ``x**3`` as
``Pow(x, 3)`` or ``x * x * x``; Identity / same-type Cast anywhere in between.
Check: every constant matches its exact value (relative 1e-4), the same ``x`` feeds both arms,
and the intermediate values have no other users (otherwise fusing would duplicate work).
"""

from __future__ import annotations

import math

from optc.ir.graph import Graph, Node, Value

from ._match import is_scalar, operands, peel_scale, producer, same, scale_factor, strip, users
from ._rewriter import Rule, apply_rule, require

_REL = 1e-4


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL)


def _is_cube_of(v: Value, x: Value) -> bool:
    n = producer(v, "Pow", "Mul")
    if n is None:
        return False
    if n.op == "Pow":
        return same(n.input(0), x) and is_scalar(n.input(1), 3.0)
    for this, other in operands(n):
        sq = producer(other, "Mul", "Pow")
        if same(this, x) and sq is not None:
            if sq.op == "Pow" and same(sq.input(0), x) and is_scalar(sq.input(1), 2.0):
                return True
            if sq.op == "Mul" and same(sq.input(0), x) and same(sq.input(1), x):
                return True
    return False


def _tanh_arg(u: Value) -> Value | None:
    """x for u == sqrt(2/pi) * (x + 0.044715 * x**3)."""
    inner, f = peel_scale(u, 1)
    if not _close(f, math.sqrt(2 / math.pi)):
        return None
    add = producer(inner, "Add")
    if add is None:
        return None
    for x, other in operands(add):
        cube, c = peel_scale(other, 1)
        if _close(c, 0.044715) and _is_cube_of(cube, x):
            return strip(x)
    return None


def _single_user(v: Value) -> Node | None:
    us = users(v)
    return us[0] if len(us) == 1 and len(v.uses) == 1 else None


def _tail(act: Value, x: Value) -> Value | None:
    """The value 0.5 * x * (1 + act), found by walking down from ``act``."""
    add = _single_user(act)
    if add is None or add.op != "Add":
        return None
    if not any(same(this, act) and is_scalar(other, 1.0) for this, other in operands(add)):
        return None
    cur, have_x, factor = add.output, False, 1.0
    for _ in range(3):
        m = _single_user(cur)
        if m is None or m.op not in ("Mul", "Div"):
            return None
        f = scale_factor(m, cur)
        if f is not None:
            factor *= f
        elif m.op == "Mul" and not have_x:
            other = m.input(1) if same(m.input(0), cur) else m.input(0)
            if same(other, x):
                have_x = True
            else:
                src, f = peel_scale(other, 1)
                if not same(src, x) or f == 1.0 or _single_user(strip(other)) is None:
                    return None
                factor *= f
                have_x = True
        else:
            return None
        cur = m.output
        if have_x and _close(factor, 0.5):
            return cur
    return None


def _match(node: Node):
    if node.op == "Erf":
        x, f = peel_scale(node.input(0), 1)
        require(_close(f, 1 / math.sqrt(2)), f"erf's argument is x * {f:.6g}, not x / sqrt(2)")
        approximate = "none"
    else:
        x = _tanh_arg(node.input(0))
        require(x is not None, "tanh's argument is not sqrt(2/pi) * (x + 0.044715 * x**3)")
        approximate = "tanh"
    require(x.dtype.is_float, "the input is not float")
    out = _tail(node.output, x)
    require(out is not None, f"{node.op} is not followed by 0.5 * x * (1 + {node.op.lower()}(...)) "
                             "(or an intermediate value has other users)")
    return x, approximate, out


def _rewrite(graph: Graph, node: Node, found):
    x, approximate, out = found
    gelu = graph.add_node("Gelu", [x], {"approximate": approximate}, before=out.producer, name=f"{node.name}_gelu")
    return [(out, gelu.output)]


RULE = Rule("gelu", ("Erf", "Tanh"), _match, _rewrite)


def fuse_gelu(graph: Graph) -> int:
    """Fuse the erf and tanh forms of GELU into one Gelu op."""
    return apply_rule(graph, RULE).matched
