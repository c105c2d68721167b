"""``unroll-control-flow``: replace ``If`` nodes whose condition is known by their chosen branch,
and unroll ``Loop``/``Scan`` nodes with a known trip count into copies of their body
(``ir/unroll.py``), within a node budget. Nodes it cannot expand are left as they are and listed
in the report with the reason; codegen runs the same expansion (strictly) before lowering."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.unroll import MAX_UNROLLED_NODES, expand_control_flow, has_control_flow
from .base import Pass, PassResult, option, register_pass


@register_pass
@dataclass
class UnrollControlFlow(Pass):
    """Inline If with a known condition; unroll Loop/Scan with a known trip count (body copies
    at most max_nodes in all); report what stays and why."""

    name: ClassVar[str] = "unroll-control-flow"
    max_nodes: int = option(MAX_UNROLLED_NODES, "most body nodes the unrolling may copy")

    def run(self, graph, ctx) -> PassResult:
        if not has_control_flow(graph):
            return PassResult(False, {"expanded": 0})
        report = expand_control_flow(graph, self.max_nodes, strict=False)
        return PassResult(report["expanded"] > 0, report)
