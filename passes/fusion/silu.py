"""SiLU: ``x * sigmoid(x)`` → ``Silu(x)``.

Pattern: anchored at ``Sigmoid(x)``; a ``Mul`` using it whose other operand is the same ``x``
(either operand order, through Identity / same-type Cast). Check: float ``x``.
"""

from __future__ import annotations

from optc.ir.graph import Graph, Node

from ._match import same, strip, users
from ._rewriter import Rule, apply_rule, require


def _match(node: Node):
    x = strip(node.input(0))
    require(x.dtype.is_float, "the input is not float")
    sig = node.output
    muls = [m for m in users(sig, "Mul") if m.input(0) is not m.input(1)
            and same(m.input(1) if same(m.input(0), sig) else m.input(0), x)]
    require(bool(muls), "not multiplied by its own input (x * sigmoid(x))")
    return x, muls


def _rewrite(graph: Graph, node: Node, found):
    x, muls = found
    return [(m.output, graph.add_node("Silu", [x], before=m, name=f"{node.name}_silu").output) for m in muls]


RULE = Rule("silu", ("Sigmoid",), _match, _rewrite)


def fuse_silu(graph: Graph) -> int:
    """Fuse x * sigmoid(x) into one Silu op."""
    return apply_rule(graph, RULE).matched
