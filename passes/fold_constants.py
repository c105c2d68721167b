"""``fold-constants``: evaluate nodes whose inputs are all constants (through the reference
interpreter, ``ir/folding.py``) and drop the nodes that leaves dead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.folding import eliminate_dead_code, fold_constant_node
from .base import Pass, PassResult, option, register_pass


@register_pass
@dataclass
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constants and replace their outputs by constants
    (unless a result would be more than max_growth elements larger than its inputs); removes
    the folded nodes."""

    name: ClassVar[str] = "fold-constants"
    max_growth: int = option(1 << 16, "largest growth in elements a folded result may add over its inputs")

    def run(self, graph, ctx) -> PassResult:
        folded = 0
        for node in list(graph.nodes):
            if node in graph.nodes and fold_constant_node(graph, node, self.max_growth):
                folded += 1
        removed = len(graph.nodes)
        if folded:
            eliminate_dead_code(graph)
        removed -= len(graph.nodes)
        return PassResult(folded > 0, {"folded": folded, "removed": removed})
