"""Constant folding and folding of shape computations.

Exporters compute reshape targets at run time (``Shape → Gather → Unsqueeze → Concat →
Reshape``) even when most of the shape is static. Type inference tracks those small integer
tensors symbolically (``Value.sym``); here every value whose contents are fully known becomes a
constant, reshape/expand targets that still hold symbolic dims are rewritten into constants
with ``0`` (copy this dim) and ``-1`` (infer) where that is exact, and dead code is removed.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node

# A folded value may grow the graph's constant data at most this much beyond its inputs.
_MAX_GROWTH_ELEMENTS = 1 << 16

# Ops that must never be evaluated at compile time.
_NOT_FOLDABLE = {"Dropout"}


def fold_graph(graph: Graph) -> bool:
    """Fold constants and shape chains, then drop dead nodes. Returns whether anything changed."""
    changed = False
    for node in list(graph.nodes):
        if node.graph is not graph or node not in graph.nodes:
            continue
        changed |= _fold_node(graph, node)
    changed |= eliminate_dead_code(graph)
    return changed


def eliminate_dead_code(graph: Graph) -> bool:
    """Remove nodes none of whose outputs are used, and unused constants."""
    live_outputs = set(map(id, graph.outputs))
    changed = False
    for node in reversed(list(graph.nodes)):
        if all(not v.uses and id(v) not in live_outputs for v in node.outputs):
            graph.remove_node(node)
            changed = True
    for v in list(graph.constants.values()):
        if not v.uses and id(v) not in live_outputs:
            graph.remove_constant(v)
            changed = True
    return changed


def _fold_node(graph: Graph, node: Node) -> bool:
    return fold_constant_node(graph, node) or fold_shape_node(graph, node) is not None


def fold_constant_node(graph: Graph, node: Node, max_growth: int = _MAX_GROWTH_ELEMENTS) -> bool:
    """Replace the outputs of ``node`` by constants when all its inputs are constants (and the
    result stays small). The node is left in place, dead; returns whether it folded."""
    if node.op in _NOT_FOLDABLE or any(out in graph.outputs for out in node.outputs):
        return False  # graph outputs keep their producing node, and so their names
    ins = [v for v in node.inputs if v is not None]
    if all(v.is_constant for v in ins) and _fits(node, max_growth) and any(o.uses for o in node.outputs):
        arrays = evaluate_node(node)
        _replace_with_constants(graph, node, arrays)
        return True
    return False


def fold_shape_node(graph: Graph, node: Node) -> str | None:
    """Fold the shape computation at ``node``: an integer output whose contents are known
    statically becomes a constant (``"value"``), a Reshape/Expand target holding symbolic dims
    becomes a constant with 0/-1 (Reshape) or 1 (Expand) where that is exact (``"reshape"``,
    ``"expand"``). Returns what it did, or None."""
    if node.op in _NOT_FOLDABLE:
        return None
    # Outputs whose contents are known symbolically and fully static (graph outputs keep
    # their producing node, and so their names).
    if len(node.outputs) == 1 and node.outputs[0] not in graph.outputs:
        out = node.outputs[0]
        s = out.sym
        if (s is not None and out.uses and all(isinstance(d, int) for d in s) and out.type.is_static
                and out.dtype.is_int):
            arr = np.array(s, dtype=out.dtype.numpy).reshape(out.type.shape)
            _replace_with_constants(graph, node, [arr])
            return "value"
    if node.op == "Reshape" and _fold_reshape_target(graph, node):
        return "reshape"
    if node.op == "Expand" and _fold_expand_target(graph, node):
        return "expand"
    return None


def _fits(node: Node, max_growth: int = _MAX_GROWTH_ELEMENTS) -> bool:
    in_elems = sum(v.const.size for v in node.inputs if v is not None)
    for out in node.outputs:
        n = out.type.numel
        if n is None or n > in_elems + max_growth:
            return False
    return True


def evaluate_node(node: Node) -> list[np.ndarray]:
    """Run one node whose inputs are all constants through the reference interpreter."""
    from .interpreter import evaluate_node as run_node

    return run_node(node, [None if v is None else v.const for v in node.inputs])


def _replace_with_constants(graph: Graph, node: Node, arrays: list[np.ndarray]) -> None:
    for out, arr in zip(node.outputs, arrays):
        if out.uses:
            out.replace_all_uses_with(graph.add_constant(np.asarray(arr, dtype=out.dtype.numpy)))


def _shape_operand(graph: Graph, node: Node, dims: list[int]) -> None:
    node.set_input(1, graph.add_constant(np.array(dims, dtype=np.int64)))


def _fold_reshape_target(graph: Graph, node: Node) -> bool:
    target, data = node.inputs[1], node.inputs[0]
    if target.is_constant or target.sym is None or node.attrs.get("allowzero"):
        return False
    t, s = list(target.sym), data.shape or ()
    out, rest = [], []
    for i, d in enumerate(t):
        if isinstance(d, int):
            out.append(d)
        elif d is not None and i < len(s) and s[i] == d:
            out.append(0)
        else:
            out.append(None)
            rest.append(i)
    if len(rest) > 1 or (rest and -1 in out):
        return False
    if rest:
        out[rest[0]] = -1
    _shape_operand(graph, node, out)
    return True


def _fold_expand_target(graph: Graph, node: Node) -> bool:
    target, data = node.inputs[1], node.inputs[0]
    if target.is_constant or target.sym is None or data.shape is None:
        return False
    t, s = list(target.sym), data.shape
    offset = len(t) - len(s)
    if offset < 0:
        return False
    out = []
    for i, d in enumerate(t):
        if isinstance(d, int):
            out.append(d)
        elif d is not None and i >= offset and s[i - offset] == d:
            out.append(1)
        else:
            return False
    _shape_operand(graph, node, out)
    return True
