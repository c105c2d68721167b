"""Small rewrite helpers shared by the passes."""

from __future__ import annotations

from ..ir.graph import Graph, Node, Value
from ..ir.types import types_compatible


def forward(graph: Graph, old: Value, new: Value) -> bool:
    """Make every use of ``old`` use ``new`` instead, keeping graph output names: when ``old``
    is a graph output, ``new`` takes over its name if it can (a node output that is not itself
    a graph output); otherwise nothing changes. Returns whether it forwarded."""
    if old is new or old.dtype != new.dtype or (old.shape is not None and not types_compatible(old.type, new.type)):
        return False
    if new.shape is None and old.shape is not None:
        return False  # would lose type information downstream
    if old in graph.outputs:
        producer = old.producer
        if (new.producer is None or new in graph.outputs or producer is None
                or any(o is not old and (o.uses or o in graph.outputs) for o in producer.outputs)):
            return False
        name = old.name
        old.replace_all_uses_with(new)
        graph.remove_node(producer)
        graph.rename_value(new, name)
        return True
    old.replace_all_uses_with(new)
    return True


def remove_if_dead(graph: Graph, node: Node) -> bool:
    outs = set(map(id, graph.outputs))
    if node in graph.nodes and all(not v.uses and id(v) not in outs for v in node.outputs):
        graph.remove_node(node)
        return True
    return False
