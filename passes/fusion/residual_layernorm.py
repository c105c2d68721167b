"""Residual add + LayerNorm: ``LayerNormalization(X + R)`` → ``AddLayerNorm(X, R, scale, bias)``.

Why: the row kernel adds while it reads, so the sum is not written and re-read as a separate
pass over memory. Post-LN models (BERT) use only the normalized output; pre-LN models (GPT-2)
also keep the sum as the residual stream, so the fused node then has the second output ``S``
and every other user of the sum reads it.

Pattern: ``LayerNormalization`` over the last axis only, with just its ``Y`` output, whose input
(through Identity / same-type Cast) is an ``Add`` of two non-constant float values (a constant
operand is a bias, which ``linear`` folds into its dense layer). Check: the statistics type is
the one ``AddLayerNorm`` uses (float32, or float64 for float64 data).
"""

from __future__ import annotations

from optc.ir.graph import Graph, Node, Value
from optc.ir.types import DType

from ._match import cleanup, producer, replace, strip

# LayerNormalization stash_type per data type that AddLayerNorm's statistics reproduce exactly.
_STASH_OK = {DType.FLOAT32: 1, DType.FLOAT16: 1, DType.BFLOAT16: 1, DType.FLOAT64: 11}


def _fusable(ln: Node) -> Node | None:
    """The residual Add feeding ``ln``, if the pair can become one AddLayerNorm."""
    if len(ln.outputs) != 1:
        return None
    x = ln.input(0)
    rank = x.type.rank if x.shape is not None else None
    if rank is None or ln.attrs["axis"] % rank != rank - 1:
        return None
    if _STASH_OK.get(x.dtype) != ln.attrs["stash_type"]:
        return None
    add = producer(x, "Add")
    if add is None or strip(add.output) is not strip(x) or add.output.dtype != x.dtype:
        return None
    a, b = strip(add.input(0)), strip(add.input(1))
    if a.is_constant or b.is_constant:
        return None
    return add


def _used_elsewhere(v: Value, ln: Node) -> bool:
    """Whether anything but ``ln`` reads ``v`` (directly or through Identity/Cast chains)."""
    if v in v.graph.outputs:
        return True
    for n, _ in v.uses:
        if n is ln:
            continue
        if n.op in ("Identity", "Cast") and n.outputs[0].dtype == v.dtype and not _used_elsewhere(n.outputs[0], ln):
            continue
        return True
    return False


def fuse_residual_layernorm(graph: Graph) -> int:
    """Fuse a residual Add and the LayerNormalization reading it into AddLayerNorm."""
    count, renames, reorder = 0, [], False
    for ln in list(graph.nodes):
        if ln.op != "LayerNormalization" or ln not in graph.nodes:
            continue
        add = _fusable(ln)
        if add is None:
            continue
        s = add.output
        keep_sum = _used_elsewhere(s, ln)
        ins = [add.input(0), add.input(1), ln.input(1), ln.input(2)]
        reorder |= any(v is not None and v.producer is not None for v in ins[2:])
        # Right after the Add: users of the sum placed before the LayerNorm must see S defined.
        fused = graph.add_node("AddLayerNorm", ins, {"axis": -1, "epsilon": ln.attrs["epsilon"]},
                               num_outputs=2 if keep_sum else 1, after=add, name=f"{ln.name}_add")
        replace(ln.output, fused.outputs[0], renames)
        if keep_sum:
            replace(s, fused.outputs[1], renames)
        count += 1
    if reorder:
        graph.toposort()  # a computed scale/bias may be defined after the Add
    return cleanup(graph, count, renames)
