"""SiLU: ``x * sigmoid(x)`` → ``Silu(x)``.

Pattern: anchored at ``Sigmoid(x)``; a ``Mul`` using it whose other operand is the same ``x``
(either operand order, through Identity / same-type Cast). Check: float ``x``.
"""

from __future__ import annotations

from optc.ir.graph import Graph

from ._match import cleanup, replace, same, strip, users


def fuse_silu(graph: Graph) -> int:
    """Fuse x * sigmoid(x) into one Silu op."""
    count, renames = 0, []
    for node in list(graph.nodes):
        if node.op != "Sigmoid" or node not in graph.nodes:
            continue
        x = strip(node.input(0))
        if not x.dtype.is_float:
            continue
        sig = node.output
        for mul in users(sig, "Mul"):
            other = mul.input(1) if same(mul.input(0), sig) else mul.input(0)
            if not same(other, x) or mul.input(0) is mul.input(1):
                continue
            silu = graph.add_node("Silu", [x], before=mul, name=f"{node.name}_silu")
            replace(mul.output, silu.output, renames)
            count += 1
    return cleanup(graph, count, renames)
