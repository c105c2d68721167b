"""The graph's node list and use lists (ir/node_list.py, ir/use_list.py): order, membership and
edits behave as the lists they replaced, and the graph API keeps them consistent."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import DType, Graph, TensorType
from optc.ir.node_list import NodeList
from optc.ir.use_list import UseList
from optc.ir.verifier import problems


def _graph(n: int = 4) -> tuple[Graph, list]:
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (2, 3)))
    for _ in range(n):
        x = g.op("Relu", x)
    g.set_outputs([x])
    return g, list(g.nodes)


def test_node_list_order_and_edits():
    g, (a, b, c, d) = _graph()
    nodes = NodeList([a, b, c])
    assert list(nodes) == [a, b, c] and list(reversed(nodes)) == [c, b, a] and len(nodes) == 3
    nodes.insert_before(a, d)
    assert list(nodes) == [d, a, b, c] and nodes[0] is d and nodes[-1] is c and nodes[1:3] == [a, b]
    nodes.remove(d)
    nodes.insert_after(c, d)
    assert list(nodes) == [a, b, c, d] and nodes.next_of(c) is d and nodes.prev_of(a) is None
    nodes.remove(b)
    assert list(nodes) == [a, c, d] and b not in nodes and c in nodes and nodes.next_of(a) is c
    nodes.remove(a)
    nodes.remove(d)
    assert list(nodes) == [c] and list(reversed(nodes)) == [c]
    nodes.remove(c)
    assert list(nodes) == [] and len(nodes) == 0
    nodes.append(b)
    assert list(nodes) == [b]


def test_node_list_refuses_duplicates_and_strangers():
    g, (a, b, c, d) = _graph()
    nodes = NodeList([a, b])
    with pytest.raises(ValueError, match="already"):
        nodes.append(a)
    with pytest.raises(ValueError, match="not in the list"):
        nodes.insert_after(c, d)
    with pytest.raises(ValueError, match="not in the list"):
        nodes.remove(c)
    with pytest.raises(IndexError):
        nodes[2]
    assert list(nodes) == [a, b]


def test_graph_inserts_next_to_a_node_and_removes():
    g, (a, b, c, d) = _graph()
    e = g.add_node("Neg", [b.output], before=c)
    f = g.add_node("Abs", [b.output], after=b)
    assert list(g.nodes) == [a, b, f, e, c, d]
    g.remove_node(e)
    g.remove_node(f)
    assert list(g.nodes) == [a, b, c, d] and e not in g.nodes
    assert len(b.output.uses) == 1 and problems(g) == []


def test_graph_nodes_can_be_reassigned_and_cloned():
    g, (a, b, c, d) = _graph()
    g.nodes = [a, b, c, d]
    assert isinstance(g.nodes, NodeList) and problems(g) == []
    h = g.clone()
    assert [n.name for n in h.nodes] == [n.name for n in g.nodes]
    assert all(n not in g.nodes for n in h.nodes)


def test_use_list_is_an_ordered_multiset():
    g, (a, b, c, d) = _graph()
    uses = UseList()
    uses.append((a, 0))
    uses.append((b, 1))
    uses.append((a, 0))
    assert list(uses) == [(a, 0), (a, 0), (b, 1)] and len(uses) == 3 and uses[2] == (b, 1) and uses[-1] == (b, 1)
    uses.remove((a, 0))
    assert list(uses) == [(a, 0), (b, 1)] and (a, 0) in uses
    uses.remove((a, 0))
    assert list(uses) == [(b, 1)] and (a, 0) not in uses and uses
    with pytest.raises(ValueError):
        uses.remove((c, 0))
    uses.clear()
    assert not uses and len(uses) == 0


def test_rewiring_a_value_with_many_uses():
    """One constant read by thousands of nodes (what CSE makes of shape scalars): every use is
    tracked, and moving them all to another value leaves both lists right."""
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (3,)))
    one = g.add_constant(np.ones(3, np.float32), "one")
    two = g.add_constant(np.full(3, 2, np.float32), "two")
    outs = [g.op("Add", x, one) for _ in range(3000)]
    g.set_outputs(outs)
    assert len(one.uses) == 3000
    one.replace_all_uses_with(two)
    assert len(one.uses) == 0 and len(two.uses) == 3000
    assert [n for n, _ in two.uses] == [v.producer for v in outs]
    assert problems(g) == []


def test_value_lookup_follows_edits():
    """``Graph.value`` answers from a name index; renames, removals and new values with a
    recycled name are seen."""
    g, (a, b, c, d) = _graph()
    name = b.output.name
    assert g.value(name) is b.output and g.value("x") is g.inputs[0]
    g.rename_value(b.output, "renamed")
    assert g.value("renamed") is b.output
    with pytest.raises(KeyError):
        g.value(name)
    d.set_input(0, b.output)
    g.remove_node(c)
    with pytest.raises(KeyError):
        g.value(c.output.name)
    e = g.add_node("Neg", [b.output], output_names=[c.output.name], after=b)
    assert g.value(c.output.name) is e.output
    k = g.add_constant(np.zeros(2, np.float32), "k")
    assert g.value("k") is k
    g.remove_constant(k)
    with pytest.raises(KeyError):
        g.value("k")
