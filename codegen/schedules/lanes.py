"""Vector loops TVM cannot vectorize: unroll them instead of leaving them to LLVM.

TVM's ``VectorizeLoop`` vectorizes a ``T.vectorized`` loop only when every lane runs the same
code. A block whose ``if_then_else`` condition (or block predicate) depends on the lane -- the
concat of a rotary embedding's halves, ``x[..., i % 8 < 4]``, a pad border, a split with a
remainder -- makes it *scalarize* the loop silently: a serial loop of ``lanes`` iterations with a
branch per element. LLVM's loop vectorizer then re-vectorizes that loop with masked loads, and
its result depends on the CPU: it picks the vector factor from the CPU's preferred width
(``skylake-avx512`` prefers 256 bits, ``znver4`` 512). LLVM 22 miscompiles such loops when the
vector factor exceeds the period of a power-of-two index (``lane & 3``): it treats the index as
consecutive within one vector. The rotary embedding test built for the host on a Zen 4
(``mcpu=znver4``: VF 16) read ``lv6[base + lane]`` instead of ``lv6[base + (lane & 3)]`` -- past
the end of its buffer for the last rows -- while ``x86-avx512`` (VF 8) happened to be right.

``UnrollLanePredicatedVectors`` turns such loops into unrolled ones: each lane becomes straight
code with its own index arithmetic (conditions periodic in the lane fold to constants), so no
lane loop with masked-index accesses reaches LLVM's loop vectorizer, on any CPU.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx

log = logging.getLogger("optc.codegen")

_CHILDREN = ("a", "b", "value", "condition", "true_value", "false_value", "then_case", "else_case", "body",
             "seq", "args", "indices", "base", "stride", "vectors")


def _conditions(node, out: list) -> None:
    """Collect the conditions of every ``if_then_else`` / ``IfThenElse`` under ``node``."""
    if node is None or isinstance(node, (str, int, float, tirx.Var)):
        return
    if isinstance(node, (list, tuple, tvm.ir.Array)):
        for n in node:
            _conditions(n, out)
        return
    if isinstance(node, tvm.ir.expr.Call) and getattr(node.op, "name", "") == "prim.if_then_else":
        out.append(node.args[0])
    elif isinstance(node, tirx.IfThenElse):
        out.append(node.condition)
    for name in _CHILDREN:
        child = getattr(node, name, None)
        if child is not None and not isinstance(child, (tirx.Buffer, str)):
            _conditions(child, out)


def _uses(expr, names) -> bool:
    """Whether ``expr`` reads one of the vars ``names`` (compared by identity)."""
    return any(v.same_as(n) for v in tirx.analysis.undefined_vars(expr) for n in names)


def lane_predicated(sch: s_tir.Schedule, loop) -> bool:
    """Whether TVM would scalarize the vectorized ``loop``: a block right under it has a predicate
    or an ``if_then_else`` condition that depends on the lane."""
    node = sch.get(loop)
    body = node.body
    realizes = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    lane = node.loop_var
    for r in realizes:
        if not isinstance(r, s_tir.stmt.SBlockRealize):
            continue
        if _uses(r.predicate, {lane}):
            return True
        lane_vars = {lane} | {iv.var for iv, val in zip(r.block.iter_vars, r.iter_values) if _uses(val, {lane})}
        conds: list = []
        _conditions(r.block.body, conds)
        if any(_uses(c, lane_vars) for c in conds):
            return True
    return False


def unroll_lane_predicated(func: tirx.PrimFunc) -> tuple[tirx.PrimFunc, int]:
    """``func`` with each lane-predicated vectorized loop unrolled; and how many there were."""
    sch = s_tir.Schedule(func)
    count = 0

    def blocks(parent):
        for b in sch.get_child_blocks(parent):
            yield b
            yield from blocks(b)

    try:
        all_blocks = list(blocks(sch.get_sblock("root")))
    except Exception:  # noqa: BLE001  (no root block: a lowered or hand-written function)
        return func, 0
    for blk in all_blocks:
        for loop in sch.get_loops(blk):
            if sch.get(loop).kind == tirx.ForKind.VECTORIZED and lane_predicated(sch, loop):
                sch.unroll(loop)
                count += 1
    return (sch.mod["main"], count) if count else (func, 0)


@tvm.ir.transform.module_pass(opt_level=0, name="optc.UnrollLanePredicatedVectors")
class UnrollLanePredicatedVectors:
    """Unroll the vectorized loops TVM would scalarize (see the module doc)."""

    def transform_module(self, mod, _ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                new, n = unroll_lane_predicated(func)
                if n:
                    updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        if updates:
            log.info("unrolled the lane-predicated vector loops of %s", ", ".join(sorted(gv.name_hint for gv in updates)))
        return mod
