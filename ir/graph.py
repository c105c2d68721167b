"""The IR graph: SSA values, nodes and the graph that owns them.

Every edit goes through this API so the graph is valid after each call: a value has exactly one
producer (a node output, a graph input or a constant), knows its uses, and nodes stay in a
topological order. Constants hold their numpy array by reference; treat those arrays as
immutable and make a new constant instead of writing into one.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import IRError
from .node_list import NodeList
from .use_list import UseList
from .schema import InferContext, get_schema
from .types import DType, TensorType, types_compatible

# Small integer constants carry their contents as a symbolic value, so shape chains fold.
_SYM_MAX_ELEMENTS = 64


class Value:
    """An SSA value. ``producer`` is the node that defines it (None for graph inputs and
    constants); ``uses`` lists ``(node, input_index)`` pairs."""

    __slots__ = ("name", "type", "producer", "uses", "const", "_sym", "graph", "__weakref__")

    def __init__(self, graph: "Graph", name: str, type: TensorType, producer: "Node | None" = None,
                 const: np.ndarray | None = None):
        self.graph = graph
        self.name = name
        self.type = type
        self.producer = producer
        self.uses = UseList()
        self.const = const
        self._sym: tuple | None = None

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self):
        return self.type.shape

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def is_graph_input(self) -> bool:
        return self.producer is None and self.const is None

    @property
    def sym(self) -> tuple | None:
        """Known contents of a small integer tensor, as dims (ints or symbol names)."""
        if self.const is not None:
            c = self.const
            if c.dtype.kind in "iu" and c.ndim <= 1 and c.size <= _SYM_MAX_ELEMENTS:
                return tuple(int(x) for x in c.reshape(-1))
            return None
        return self._sym

    def replace_all_uses_with(self, other: "Value") -> None:
        """Point every use (and graph output) of this value at ``other``."""
        if other is self:
            return
        for node, i in list(self.uses):
            node.set_input(i, other)
        g = self.graph
        g.outputs = [other if o is self else o for o in g.outputs]

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One op application. Attributes are typed per the op's schema (defaults filled in)."""

    __slots__ = ("graph", "op", "name", "attrs", "_inputs", "outputs", "__weakref__")

    def __init__(self, graph: "Graph", op: str, name: str, attrs: dict[str, Any]):
        self.graph = graph
        self.op = op
        self.name = name
        self.attrs = attrs
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    def input(self, i: int) -> Value | None:
        return self._inputs[i] if i < len(self._inputs) else None

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def set_input(self, i: int, value: Value | None) -> None:
        old = self._inputs[i]
        if old is value:
            return
        if old is not None:
            old.uses.remove((self, i))
        self._inputs[i] = value
        if value is not None:
            value.uses.append((self, i))

    def attr(self, name: str) -> Any:
        return self.attrs[name]

    def __repr__(self) -> str:
        ins = ", ".join("%" + v.name if v is not None else "none" for v in self._inputs)
        outs = ", ".join("%" + v.name for v in self.outputs)
        return f"<{outs} = {self.op}({ins}) @{self.name}>"


_NAME_OK = re.compile(r"[A-Za-z0-9_.\-:/]+")


class Graph:
    """A dataflow graph with named inputs, outputs, constants and a topologically ordered list
    of nodes."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self._nodes = NodeList()
        self.constants: dict[str, Value] = {}
        self.metadata: dict[str, str] = {}
        # A subgraph (an If branch, a Loop/Scan body) reads values of the enclosing graph only
        # through its last ``num_captures`` inputs, which the owning node binds to its trailing
        # inputs (ir/subgraph.py): no value crosses a graph boundary, so SSA holds per graph.
        self.num_captures = 0
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._counter = itertools.count()
        self._value_index: dict[str, Value] = {}  # a cache for value(name), checked on every hit

    @property
    def nodes(self) -> NodeList:
        """The nodes in topological order (O(1) membership, insertion next to a node, removal)."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: Iterable["Node"]) -> None:
        self._nodes = nodes if isinstance(nodes, NodeList) else NodeList(nodes)

    # -- naming ---------------------------------------------------------------------------
    def unique_name(self, hint: str | None = None) -> str:
        base = hint or "v"
        if base not in self._names:
            return base
        while True:
            cand = f"{base}_{next(self._counter)}"
            if cand not in self._names:
                return cand

    def _claim(self, name: str | None, hint: str) -> str:
        if name is None:
            name = self.unique_name(hint)
        elif name in self._names:
            raise IRError(f"value name {name!r} is already defined")
        self._names.add(name)
        return name

    def _node_name(self, name: str | None, op: str) -> str:
        base = name or op.lower()
        cand = base
        while cand in self._node_names:
            cand = f"{base}_{next(self._counter)}"
        self._node_names.add(cand)
        return cand

    # -- construction ---------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        """A formal input (placed before any captures)."""
        v = Value(self, self._claim(name, "input"), type)
        self.inputs.insert(len(self.inputs) - self.num_captures, v)
        return v

    def add_capture(self, name: str | None, type: TensorType) -> Value:
        """An input bound to a value of the enclosing graph by the node that owns this subgraph
        (appended after the formal inputs and the captures so far)."""
        v = Value(self, self._claim(name, "capture"), type)
        self.inputs.append(v)
        self.num_captures += 1
        return v

    @property
    def params(self) -> list[Value]:
        """The formal inputs: every input but the captures."""
        return self.inputs[:len(self.inputs) - self.num_captures]

    @property
    def captures(self) -> list[Value]:
        """The trailing inputs that stand for values of the enclosing graph."""
        return self.inputs[len(self.inputs) - self.num_captures:]

    def add_constant(self, array: np.ndarray | Any, name: str | None = None) -> Value:
        array = np.asarray(array)
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        v = Value(self, self._claim(name, "const"), TensorType.of(array), const=array)
        self.constants[v.name] = v
        return v

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        num_outputs: int = 1,
        name: str | None = None,
        output_names: Sequence[str | None] | None = None,
        output_types: Sequence[TensorType | None] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node, infer its output types and insert it (at the end by default).

        ``output_types`` may refine what inference finds (a frontend that knows a shape
        inference cannot prove); they must be compatible with the inferred types.
        """
        schema = get_schema(op)
        if schema is None:
            raise IRError(f"unknown op {op!r}")
        if output_names is not None:
            num_outputs = len(output_names)
        node_name = self._node_name(name, op)
        where = f"node {node_name} ({op})"
        for v in inputs:
            if v is not None and v.graph is not self:
                raise IRError(f"{where}: input %{v.name} belongs to another graph")
        n_in = len(inputs)
        while n_in and inputs[n_in - 1] is None:
            n_in -= 1
        inputs = list(inputs[:n_in])
        if n_in < schema.min_inputs or n_in > schema.max_inputs:
            raise IRError(f"{where}: takes {schema.min_inputs}..{schema.max_inputs} inputs, got {n_in}")
        if not schema.output_count_ok(num_outputs):
            raise IRError(f"{where}: cannot have {num_outputs} outputs")
        resolved = schema.resolve_attrs(dict(attrs or {}), where)
        ctx = InferContext(op, inputs, resolved, num_outputs)
        try:
            types = schema.infer(ctx)
        except IRError as e:
            raise type(e)(f"{where}: {e}") from None
        except (ValueError, IndexError, TypeError) as e:
            raise IRError(f"{where}: type inference failed: {e}") from None
        if len(types) != num_outputs:
            raise IRError(f"{where}: inference gave {len(types)} outputs, expected {num_outputs}")
        if output_types is not None:
            types = [_refine(t, d, where) for t, d in zip(types, output_types)]
        node = Node(self, op, node_name, resolved)
        for i, v in enumerate(inputs):
            node._inputs.append(None)
            node.set_input(i, v)
        for i, t in enumerate(types):
            oname = output_names[i] if output_names is not None else None
            node.outputs.append(Value(self, self._claim(oname, node_name), t, producer=node))
        if schema.sym is not None:
            try:
                syms = schema.sym(ctx)
            except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError):
                syms = [None] * num_outputs
            for out, s in zip(node.outputs, syms):
                out._sym = None if s is None else tuple(s)
        self._insert(node, before, after)
        return node

    def _insert(self, node: Node, before: Node | None, after: Node | None) -> None:
        if before is not None:
            self.nodes.insert_before(before, node)
        elif after is not None:
            self.nodes.insert_after(after, node)
        else:
            self.nodes.append(node)

    def op(self, op: str, *inputs: Value | None, **attrs: Any) -> Value:
        """Shorthand for single-output nodes appended at the end: ``g.op("Add", a, b)``."""
        return self.add_node(op, inputs, attrs).output

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    def infer_types(self) -> None:
        """Re-run type inference (and symbolic-value propagation) over every node in order.

        Passes that change a constant's shape (pruning heads, replacing a weight by factors)
        call this so the types downstream follow; an inconsistent edit raises ``IRError``
        naming the node."""
        for node in self.nodes:
            schema = get_schema(node.op)
            where = f"node {node.name} ({node.op})"
            ctx = InferContext(node.op, list(node._inputs), node.attrs, len(node.outputs))
            try:
                types = schema.infer(ctx)
            except IRError as e:
                raise type(e)(f"{where}: {e}") from None
            except (ValueError, IndexError, TypeError) as e:
                raise IRError(f"{where}: type inference failed: {e}") from None
            syms = [None] * len(types)
            if schema.sym is not None:
                try:
                    syms = schema.sym(ctx)
                except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError):
                    pass
            for out, t, s in zip(node.outputs, types, syms):
                out.type = _keep_named_dims(t, out.type)
                out._sym = None if s is None else tuple(s)

    # -- removal --------------------------------------------------------------------------
    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused (graph outputs count as uses)."""
        outs = set(map(id, self.outputs))
        for v in node.outputs:
            if v.uses or id(v) in outs:
                raise IRError(f"cannot remove {node.name}: output %{v.name} is still used")
        for i in range(len(node._inputs)):
            node.set_input(i, None)
        self.nodes.remove(node)
        self._node_names.discard(node.name)
        for v in node.outputs:
            self._names.discard(v.name)

    def remove_constant(self, value: Value) -> None:
        if value.uses or value in self.outputs:
            raise IRError(f"cannot remove constant %{value.name}: still used")
        del self.constants[value.name]
        self._names.discard(value.name)

    def rename_value(self, value: Value, name: str) -> None:
        if name == value.name:
            return
        if name in self._names:
            raise IRError(f"value name {name!r} is already defined")
        self._names.discard(value.name)
        if value.is_constant:
            del self.constants[value.name]
            self.constants[name] = value
        value.name = name
        self._names.add(name)

    # -- queries --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def value(self, name: str) -> Value:
        """The value called ``name``. O(1) from a name index that is rebuilt only when it
        misses (names are unique; the index is checked against the graph on every hit)."""
        v = self._value_index.get(name)
        if v is None or not self._holds(v, name):
            self._value_index = {u.name: u for u in self.values()}
            v = self._value_index.get(name)
            if v is None:
                raise KeyError(name)
        return v

    def _holds(self, v: Value, name: str) -> bool:
        if v.name != name or v.graph is not self:
            return False
        if v.producer is not None:
            return v.producer in self._nodes and v in v.producer.outputs
        return self.constants.get(name) is v or any(u is v for u in self.inputs)

    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def to_networkx(self):
        """A DiGraph over nodes (edges follow data flow)."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        for n in self.nodes:
            for v in n._inputs:
                if v is not None and v.producer is not None:
                    g.add_edge(v.producer, n)
        return g

    def toposort(self) -> None:
        """Restore a topological node order (stable with respect to the current order)."""
        import networkx as nx

        order = {n: i for i, n in enumerate(self.nodes)}
        g = self.to_networkx()
        try:
            self.nodes = list(nx.lexicographical_topological_sort(g, key=order.__getitem__))
        except nx.NetworkXUnfeasible:
            raise IRError("the graph has a cycle") from None

    def parameter_count(self) -> int:
        return int(sum(v.const.size for v in self.constants.values() if v.dtype.is_float))

    def take_contents(self, other: "Graph") -> None:
        """Make this graph hold ``other``'s inputs, nodes, constants and outputs (``other`` is
        consumed): how a pass that worked on a clone commits, keeping the caller's object."""
        for attr in ("inputs", "outputs", "_nodes", "constants", "metadata", "num_captures", "_names", "_node_names",
                     "_counter"):
            setattr(self, attr, getattr(other, attr))
        self._value_index = {}
        for v in list(self.values()):
            v.graph = self
        for n in self.nodes:
            n.graph = self

    def clone(self) -> "Graph":
        """A structural copy; constant arrays are shared, not copied."""
        g = Graph(self.name)
        g.metadata = dict(self.metadata)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.name, v.type)
        g.num_captures = self.num_captures
        for v in self.constants.values():
            vmap[id(v)] = g.add_constant(v.const, v.name)
        for n in self.nodes:
            # Subgraphs are owned by their node: a clone gets its own copies.
            attrs = {k: (a.clone() if isinstance(a, Graph) else a) for k, a in n.attrs.items()}
            m = Node(g, n.op, g._node_name(n.name, n.op), attrs)
            for i, v in enumerate(n._inputs):
                m._inputs.append(None)
                m.set_input(i, None if v is None else vmap[id(v)])
            for o in n.outputs:
                nv = Value(g, g._claim(o.name, m.name), o.type, producer=m)
                nv._sym = o._sym
                m.outputs.append(nv)
                vmap[id(o)] = nv
            g.nodes.append(m)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.constants)} constants>"


def _keep_named_dims(inferred: TensorType, old: TensorType) -> TensorType:
    """``inferred``, with a dim inference could not prove (None) taken from ``old`` where that
    was a named symbolic dim a frontend declared (so re-inference never loses ``seq``)."""
    if inferred.shape is None or old.shape is None or len(inferred.shape) != len(old.shape):
        return inferred
    if not any(d is None and isinstance(o, str) for d, o in zip(inferred.shape, old.shape)):
        return inferred
    return TensorType(inferred.dtype, tuple(o if d is None and isinstance(o, str) else d
                                            for d, o in zip(inferred.shape, old.shape)))


def _refine(inferred: TensorType, declared: TensorType | None, where: str) -> TensorType:
    if declared is None:
        return inferred
    if not types_compatible(declared, inferred):
        raise IRError(f"{where}: declared type {declared} conflicts with inferred {inferred}")
    if inferred.shape is None:
        return declared
    if declared.shape is None:
        return inferred
    shape = tuple(i if i is not None else d for i, d in zip(inferred.shape, declared.shape))
    return TensorType(inferred.dtype, shape)


def is_valid_name(name: str) -> bool:
    return bool(_NAME_OK.fullmatch(name))
