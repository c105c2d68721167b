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

from ._match import producer, strip
from ._rewriter import Rule, apply_rule, require

# LayerNormalization stash_type per data type that AddLayerNorm's statistics reproduce exactly.
_STASH_OK = {DType.FLOAT32: 1, DType.FLOAT16: 1, DType.BFLOAT16: 1, DType.FLOAT64: 11}


def _match(ln: Node) -> Node:
    """The residual Add feeding ``ln``, if the pair can become one AddLayerNorm."""
    require(len(ln.outputs) == 1, "the mean/inverse-std-dev outputs are used")
    x = ln.input(0)
    rank = x.type.rank if x.shape is not None else None
    require(rank is not None and ln.attrs["axis"] % rank == rank - 1, "not normalized over the last axis alone")
    require(_STASH_OK.get(x.dtype) == ln.attrs["stash_type"], "its statistics type is not AddLayerNorm's")
    add = producer(x, "Add")
    require(add is not None and strip(add.output) is strip(x) and add.output.dtype == x.dtype, "its input is not an Add")
    require(not (strip(add.input(0)).is_constant or strip(add.input(1)).is_constant),
            "the Add has a constant operand (a bias, which the linear fusion takes)")
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


def residual_layernorm_rule() -> Rule:
    """A fresh rule: it re-orders the graph after its run when one of its fused nodes takes a
    computed scale/bias (defined after the Add the fused node now sits behind)."""
    computed = []

    def rewrite(graph: Graph, ln: Node, add: Node):
        s = add.output
        keep_sum = _used_elsewhere(s, ln)
        ins = [add.input(0), add.input(1), ln.input(1), ln.input(2)]
        computed.extend(v for v in ins[2:] if v is not None and v.producer is not None)
        # Right after the Add: users of the sum placed before the LayerNorm must see S defined.
        fused = graph.add_node("AddLayerNorm", ins, {"axis": -1, "epsilon": ln.attrs["epsilon"]},
                               num_outputs=2 if keep_sum else 1, after=add, name=f"{ln.name}_add")
        return [(ln.output, fused.outputs[0])] + ([(s, fused.outputs[1])] if keep_sum else [])

    def reorder(graph: Graph) -> int:
        if computed:
            graph.toposort()
        return 0

    return Rule("residual_layernorm", ("LayerNormalization",), _match, rewrite, finish=reorder)


def fuse_residual_layernorm(graph: Graph) -> int:
    """Fuse a residual Add and the LayerNormalization reading it into AddLayerNorm."""
    return apply_rule(graph, residual_layernorm_rule()).matched
