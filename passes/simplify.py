"""``simplify``: remove ops that do nothing and compose transposes.

- ``Identity``;
- ``Dropout`` in inference (no ``training_mode`` input, or a constant false one) whose mask is
  unused;
- ``Cast`` to the input's own type;
- ``Reshape`` / ``Expand`` whose output shape equals the input shape (all dims known: ints or
  the same symbolic names);
- ``Transpose`` by the identity permutation, and ``Transpose(Transpose(x, p), q)`` →
  ``Transpose(x, p∘q)`` (or ``x`` when they cancel).

Graph outputs keep their names: a removed op that produced one hands its name to its input
where it can, and stays otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, Node
from .base import Pass, PassResult, option, register_pass
from .rewrite import forward, remove_if_dead


def _known_shape(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _perm(node: Node) -> tuple[int, ...] | None:
    rank = node.inputs[0].type.rank
    perm = node.attrs.get("perm")
    if perm is None:
        return None if rank is None else tuple(range(rank - 1, -1, -1))
    return tuple(perm)


def _noop_input(node: Node):
    """The input a no-op node passes through unchanged, or None."""
    op, x = node.op, node.input(0)
    if x is None:
        return None
    out = node.outputs[0]
    if op == "Identity":
        return x
    if op == "Dropout":
        t = node.input(2)
        if t is not None and not (t.is_constant and not bool(t.const.any())):
            return None
        if len(node.outputs) > 1 and (node.outputs[1].uses or node.outputs[1] in node.graph.outputs):
            return None
        return x
    if op == "Cast":
        return x if node.attrs["to"] == x.dtype else None
    if op in ("Reshape", "Expand"):
        if _known_shape(x.shape) and x.shape == out.shape:
            return x
        return None
    if op == "Transpose":
        p = _perm(node)
        return x if p is not None and p == tuple(range(len(p))) else None
    return None


@register_pass
@dataclass
class Simplify(Pass):
    """Remove no-op nodes (Identity, inference Dropout, Cast to the same type, Reshape/Expand
    to the same shape, identity Transpose) and compose Transpose pairs."""

    name: ClassVar[str] = "simplify"
    transposes: bool = option(True, "compose Transpose pairs (identity transposes are always removed)")

    def run(self, graph: Graph, ctx) -> PassResult:
        counts: Counter = Counter()
        for node in list(graph.nodes):
            if node not in graph.nodes:
                continue
            src = _noop_input(node)
            if src is not None:
                if forward(graph, node.outputs[0], src):
                    remove_if_dead(graph, node)
                    counts[f"removed_{node.op}"] += 1
                continue
            if node.op == "Transpose" and self.transposes and self._compose(graph, node):
                counts["transposes_composed"] += 1
        return PassResult(bool(counts), dict(sorted(counts.items())))

    @staticmethod
    def _compose(graph: Graph, node: Node) -> bool:
        inner = node.input(0).producer
        if inner is None or inner.op != "Transpose":
            return False
        p, q = _perm(inner), _perm(node)
        if p is None or q is None:
            return False
        x, out = inner.input(0), node.outputs[0]
        composed = tuple(p[i] for i in q)
        if composed == tuple(range(len(composed))):
            if not forward(graph, out, x):
                return False
        else:
            new = graph.add_node("Transpose", [x], {"perm": composed}, before=node).output
            if not forward(graph, out, new):
                graph.remove_node(new.producer)
                return False
        remove_if_dead(graph, node)
        remove_if_dead(graph, inner)
        return True
