"""Control flow expanded into straight-line IR: ``If`` with a known condition is replaced by its
chosen branch, ``Loop``/``Scan`` with a known trip count by copies of their body.

This runs at the IR level (before codegen, or as the ``unroll-control-flow`` pass) so that what
the body computes from the iteration number — a Slice start, a Gather index, a shape — becomes
a constant that the ordinary folding (``ir/folding.py``) and the lowerings see, exactly as if
the model had been written without the loop.

* A Loop unrolls when its trip count ``M`` is known. Its condition may be computed at run time
  only when the loop has no scan outputs: the copies then run under a mask (an exited iteration
  keeps the loop-carried values). A condition that becomes a known false stops the unrolling.
* A Scan unrolls over its (static) sequence length; slices are ``Gather``s at constant indices.
* Unrolling stops at a node budget (iterations x body nodes, nested bodies included).

``expand_control_flow(graph, strict=True)`` raises ``UnsupportedOpError`` naming the node and
why it cannot be expanded (what codegen needs); ``strict=False`` leaves such nodes and reports
them. An ``If`` whose condition is only known at run time is kept either way (codegen lowers it
to a run-time branch); its branches are expanded in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import IRError, UnsupportedOpError
from .graph import Graph, Node, Value
from .ops.control_flow import passes_cond_through, scan_axes
from .subgraph import subgraphs, walk

__all__ = ["MAX_UNROLLED_NODES", "expand_control_flow", "inline_subgraph", "has_control_flow"]

MAX_UNROLLED_NODES = 8192
"""Default budget: the most body nodes the expansion of one graph may copy."""

_CONTROL_FLOW = ("If", "Loop", "Scan")


class _Skip(Exception):
    """A node that cannot be expanded (the message says why)."""


def has_control_flow(graph: Graph) -> bool:
    return any(n.op in _CONTROL_FLOW for g in walk(graph) for n in g.nodes)


def inline_subgraph(graph: Graph, node: Node, body: Graph, args: list[Value]) -> list[Value]:
    """Copy ``body``'s nodes into ``graph`` right before ``node``, its inputs (formal inputs, then
    captures) bound to ``args``; returns the values of its outputs. Types are re-inferred from
    the actual arguments, so they are often more precise than the body's."""
    if len(args) != len(body.inputs):
        raise IRError(f"node {node.name}: {len(args)} arguments for the {len(body.inputs)} inputs of {body.name}")
    vmap: dict[int, Value] = {id(p): a for p, a in zip(body.inputs, args)}
    for c in body.constants.values():
        vmap[id(c)] = graph.add_constant(c.const, graph.unique_name(c.name))
    for n in body.nodes:
        attrs = {k: (a.clone() if isinstance(a, Graph) else a) for k, a in n.attrs.items()}
        ins = [None if v is None else vmap[id(v)] for v in n.inputs]
        new = graph.add_node(n.op, ins, attrs, num_outputs=len(n.outputs), name=f"{node.name}/{n.name}", before=node)
        for o, no in zip(n.outputs, new.outputs):
            vmap[id(o)] = no
    return [vmap[id(v)] for v in body.outputs]


def expand_control_flow(graph: Graph, max_nodes: int = MAX_UNROLLED_NODES, *, strict: bool = True) -> dict[str, Any]:
    """Expand every If/Loop/Scan that can be (see the module docstring), folding as it goes.
    Returns a report: how many nodes were expanded and, with ``strict=False``, which were kept
    and why."""
    from .folding import eliminate_dead_code, fold_graph

    budget = [max_nodes]
    expanded = 0
    kept: dict[str, str] = {}
    done: set[int] = set()
    progress = True
    while progress:
        progress = False
        for node in list(graph.nodes):
            if node.op not in _CONTROL_FLOW or id(node) in done or node.graph is not graph:
                continue
            try:
                if _expand(graph, node, budget):
                    expanded += 1
                    progress = True
                    fold_graph(graph)
                    break
                done.add(id(node))  # kept on purpose (a run-time If)
            except _Skip as e:
                eliminate_dead_code(graph)  # copies made before the reason showed up
                if strict:
                    raise UnsupportedOpError(f"cannot compile: {e} (node {node.name}, op {node.op})") from None
                kept[node.name] = str(e)
                done.add(id(node))
    for node in graph.nodes:  # what is left (run-time Ifs, skipped nodes): expand inside
        for _, body in subgraphs(node):
            sub = expand_control_flow(body, budget[0], strict=strict)
            expanded += sub["expanded"]
            kept.update({f"{node.name}/{k}": v for k, v in sub.get("kept", {}).items()})
    if expanded:
        graph.infer_types()
    return {"expanded": expanded, "kept": kept} if kept else {"expanded": expanded}


def _expand(graph: Graph, node: Node, budget: list[int]) -> bool:
    if node.op == "If":
        return _expand_if(graph, node, budget)
    if node.op == "Loop":
        return _expand_loop(graph, node, budget)
    return _expand_scan(graph, node, budget)


def _spend(budget: list[int], trips: int, body: Graph, what: str) -> None:
    size = trips * max(sum(len(g.nodes) for g in walk(body)), 1)
    if size > budget[0]:
        raise _Skip(f"{what} would unroll into {size} nodes ({trips} iterations), more than the budget of {budget[0]}")
    budget[0] -= size


def _replace(graph: Graph, node: Node, results: list[Value]) -> None:
    """Hand the node's uses (and graph outputs, keeping their names where possible) to ``results``
    and remove it."""
    renames = []
    for old, new in zip(node.outputs, results):
        if old in graph.outputs:
            renames.append((old.name, new))
        old.replace_all_uses_with(new)
    graph.remove_node(node)
    for name, new in renames:
        if new.producer is not None and graph.outputs.count(new) == 1 and name not in graph._names:
            graph.rename_value(new, name)


def _split_captures(node: Node, body: Graph) -> tuple[list, list]:
    ins = list(node.inputs)
    n = len(ins) - body.num_captures
    return ins[:n], ins[n:]


def _static(v: Value | None, memo: dict[int, Any], depth: int = 0) -> np.ndarray | None:
    """The value of ``v`` if it follows from constants alone (small subgraph, evaluated with the
    reference interpreter), else None."""
    if v is None:
        return None
    if v.const is not None:
        return v.const
    if id(v) in memo:
        return memo[id(v)]
    p = v.producer
    memo[id(v)] = None
    if p is None or depth > 64 or p.op in _CONTROL_FLOW or p.op == "Dropout" or not v.type.is_static or v.type.numel > 64:
        return None
    args = []
    if p.op in ("Shape", "Size"):  # only the (static) shape of the input matters
        t = p.inputs[0].type
        if not t.is_static:
            return None
        args.append(np.zeros(t.shape, dtype=t.dtype.numpy))
    for i in p.inputs[len(args):]:
        a = _static(i, memo, depth + 1) if i is not None else None
        if i is not None and a is None:
            return None
        args.append(a)
    from .interpreter import evaluate_node

    outs = evaluate_node(p, args)
    for o, a in zip(p.outputs, outs):
        memo[id(o)] = a
    return memo[id(v)]


def _const_like(graph: Graph, value, param: Value, dtype) -> Value:
    shape = () if param.type.shape is None or len(param.type.shape) == 0 else (1,)
    return graph.add_constant(np.array(value, dtype=dtype).reshape(shape))


def _scalar(graph: Graph, node: Node, v: Value) -> Value:
    if v.type.shape == ():
        return v
    return graph.add_node("Reshape", [v, graph.add_constant(np.zeros((0,), np.int64))], before=node).output


def _stack(graph: Graph, node: Node, items: list[Value], axis: int, body_out: Value) -> Value:
    if not items:
        t = body_out.type
        if not t.is_static:
            raise _Skip(f"no iteration runs and scan output %{body_out.name} has no static shape ({t})")
        shape = list(t.shape)
        shape.insert(axis, 0)
        return graph.add_constant(np.zeros(shape, dtype=t.dtype.numpy))
    axes = graph.add_constant(np.array([axis], np.int64))
    parts = [graph.add_node("Unsqueeze", [x, axes], before=node).output for x in items]
    if len(parts) == 1:
        return parts[0]
    return graph.add_node("Concat", parts, {"axis": axis}, before=node).output


# -- If --------------------------------------------------------------------------------------------
def _expand_if(graph: Graph, node: Node, budget: list[int]) -> bool:
    c = _static(node.inputs[0], {})
    if c is None or c.size != 1:
        return False  # a run-time branch: kept
    then_b, else_b = node.attrs["then_branch"], node.attrs["else_branch"]
    caps = list(node.inputs[1:])  # then-branch captures, then else-branch captures
    k = then_b.num_captures
    body, args = (then_b, caps[:k]) if bool(c.reshape(-1)[0]) else (else_b, caps[k:k + else_b.num_captures])
    _spend(budget, 1, body, "the If")
    _replace(graph, node, inline_subgraph(graph, node, body, args))
    return True


# -- Loop ------------------------------------------------------------------------------------------
def _expand_loop(graph: Graph, node: Node, budget: list[int]) -> bool:
    body: Graph = node.attrs["body"]
    explicit, caps = _split_captures(node, body)
    m = explicit[0] if explicit else None
    cond = explicit[1] if len(explicit) > 1 else None
    states = list(explicit[2:])
    n_state, n_scan = len(states), len(node.outputs) - len(states)
    if m is None:
        raise _Skip("a Loop without a trip count M (it runs while its condition holds) cannot be unrolled")
    trip = _static(m, {})
    if trip is None:
        raise _Skip("the Loop trip count M is known only at run time")
    trips = max(int(trip.reshape(-1)[0]), 0)
    alive: Value | None = None  # a run-time condition: unroll under a mask
    if cond is not None:
        c = _static(cond, {})
        if c is None:
            if n_scan:
                raise _Skip("the Loop condition is known only at run time and the loop has scan outputs")
            alive = _scalar(graph, node, cond)
        elif not bool(c.reshape(-1)[0]):
            trips = 0
    passes = passes_cond_through(body)
    _spend(budget, trips, body, "the Loop")
    iter_p, cond_p = body.params[0], body.params[1]
    scans: list[list[Value]] = [[] for _ in range(n_scan)]
    for i in range(trips):
        args = [_const_like(graph, i, iter_p, np.int64), _const_like(graph, True, cond_p, np.bool_), *states, *caps]
        outs = inline_subgraph(graph, node, body, args)
        new_states = outs[1:1 + n_state]
        if alive is not None:
            states = [graph.add_node("Where", [alive, n, o], before=node).output for n, o in zip(new_states, states)]
        else:
            states = new_states
        for k in range(n_scan):
            scans[k].append(outs[1 + n_state + k])
        if passes:
            continue
        c = _static(outs[0], {})
        if c is not None and not bool(c.reshape(-1)[0]):
            break  # no later iteration runs
        if c is None:
            if n_scan:
                raise _Skip("the Loop condition is computed at run time and the loop has scan outputs")
            cont = _scalar(graph, node, outs[0])
            alive = cont if alive is None else graph.add_node("And", [alive, cont], before=node).output
    results = list(states)
    for k in range(n_scan):
        results.append(_stack(graph, node, scans[k], 0, body.outputs[1 + n_state + k]))
    _replace(graph, node, results)
    return True


# -- Scan ------------------------------------------------------------------------------------------
def _expand_scan(graph: Graph, node: Node, budget: list[int]) -> bool:
    body: Graph = node.attrs["body"]
    explicit, caps = _split_captures(node, body)
    m = node.attrs["num_scan_inputs"]
    n_state = len(explicit) - m
    states, xs = list(explicit[:n_state]), explicit[n_state:]
    n_scan = len(node.outputs) - n_state
    in_dirs = scan_axes(node.attrs, "scan_input_directions", m)
    out_axes = scan_axes(node.attrs, "scan_output_axes", n_scan)
    out_dirs = scan_axes(node.attrs, "scan_output_directions", n_scan)
    axes, length = [], None
    for x, a in zip(xs, scan_axes(node.attrs, "scan_input_axes", m)):
        if x.type.rank is None:
            raise _Skip(f"scan input %{x.name} has an unknown rank")
        a %= x.type.rank
        axes.append(a)
        d = x.type.shape[a]
        if isinstance(d, int):
            length = d
    if length is None:
        raise _Skip("the Scan sequence length is known only at run time")
    _spend(budget, length, body, "the Scan")
    scans: list[list[Value]] = [[] for _ in range(n_scan)]
    for t in range(length):
        slices = []
        for x, a, d in zip(xs, axes, in_dirs):
            idx = graph.add_constant(np.array(length - 1 - t if d else t, np.int64))
            slices.append(graph.add_node("Gather", [x, idx], {"axis": a}, before=node).output)
        outs = inline_subgraph(graph, node, body, [*states, *slices, *caps])
        states = outs[:n_state]
        for k in range(n_scan):
            scans[k].append(outs[n_state + k])
    results = list(states)
    for k in range(n_scan):
        out = body.outputs[n_state + k]
        items = scans[k][::-1] if out_dirs[k] else scans[k]
        rank = (items[0].type.rank if items else out.type.rank)
        if rank is None:
            raise _Skip(f"scan output %{out.name} has an unknown rank")
        results.append(_stack(graph, node, items, out_axes[k] % (rank + 1), out))
    _replace(graph, node, results)
    return True
