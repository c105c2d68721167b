"""Lowerings of the control-flow ops (ir/ops/control_flow.py): ``If``, ``Loop``, ``Scan``.

``codegen.lower`` first expands control flow at the IR level (``ir/unroll.py``): an ``If`` with
a condition known at compile time becomes its chosen branch, ``Loop``/``Scan`` with a known trip
count are unrolled (within a node budget), and what cannot be expanded is refused there with
the reason. What reaches these lowerings:

* an ``If`` whose condition is known only at run time: a ``relax.If`` whose branches are blocks
  of their own (``main`` is then built from plain binding blocks, see ``branching``); one whose
  condition turns out constant here is still lowered inline;
* never a ``Loop``/``Scan`` (a safety net fails with a message).
"""

from __future__ import annotations

from . import branching, lowering


def _known_bool(ctx, v, expr) -> bool | None:
    """The value of a one-element bool operand when known at compile time."""
    c = v.const if v is not None else None
    if c is None and expr is not None and isinstance(expr, type(ctx.relax.const(0.0))):
        c = expr.data.numpy()
    if c is None or c.size != 1:
        return None
    return bool(c.reshape(-1)[0])


# -- If --------------------------------------------------------------------------------------------
@branching("If")
def _if_branches(node) -> bool:
    return node.inputs[0].const is None


@lowering("If")
def _if(ctx, node, cond, *captures):
    relax, R = ctx.relax, ctx.R
    then_b, else_b = node.attrs["then_branch"], node.attrs["else_branch"]
    k = then_b.num_captures
    then_caps, else_caps = list(captures[:k]), list(captures[k:])
    known = _known_bool(ctx, node.inputs[0], cond)
    if known is not None:  # fold: only the chosen branch is compiled
        return ctx.lower_subgraph(then_b if known else else_b, then_caps if known else else_caps)
    for k, out in enumerate(node.outputs):
        if out.type.rank is None:
            raise ctx.fail(f"output {k} of an If whose condition is known only at run time has a rank that "
                           "depends on the branch taken")
    if ctx.rank(cond) != 0:
        cond = ctx.emit(R.reshape(cond, []))
    then_seq = ctx.branch(then_b, then_caps)
    else_seq = ctx.branch(else_b, else_caps)
    res = ctx.emit(relax.If(cond, then_seq, else_seq))
    if len(node.outputs) == 1:
        return res
    return [ctx.emit(relax.TupleGetItem(res, i)) for i in range(len(node.outputs))]


# -- Loop / Scan -----------------------------------------------------------------------------------
@lowering("Loop", "Scan")
def _loop_scan(ctx, node, *ins):
    # codegen.lower unrolls every Loop/Scan at the IR level first (ir/unroll.py) and reports
    # the ones it cannot unroll; one reaching this point was lowered without that step.
    raise ctx.fail(f"{node.op} must be unrolled before lowering (ir.unroll.expand_control_flow)")
