"""The rewriter every fusion is written on: **match → check → rewrite**, over a worklist.

A fusion is a ``Rule``: the ops a match starts at (``anchors``), a ``match(node)`` that walks the
pattern from one anchor and either returns what the rewrite needs or raises ``NoMatch`` with a
sentence a user can read ("the variance is over other axes than the mean"), and a
``rewrite(graph, node, found)`` that adds the fused node(s) and returns the ``(old, new)`` values
to swap. ``apply_rule`` owns the rest, once for every fusion: the worklist (the graph's anchors
in order; the nodes a rewrite leaves dead are removed at once, so an anchor inside a fused
block is not tried), redirecting uses, and keeping graph output names (the new value takes the
old one's name once the dead nodes are gone). With ``explain``, it keeps every ``NoMatch`` —
``optc inspect --explain-fusion`` prints them, so a user sees why a block did not fuse.

    RULE = Rule("silu", ("Sigmoid",), _match, _rewrite)

    def fuse_silu(graph: Graph) -> int:
        return apply_rule(graph, RULE).matched
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from optc.ir.graph import Graph, Node, Value

from ._match import cleanup, replace


class NoMatch(Exception):
    """Why one anchor did not fuse (raised by a rule's ``match``): one readable sentence."""


@dataclass(frozen=True)
class Rule:
    name: str
    anchors: tuple[str, ...]
    match: Callable[[Node], Any]
    """``node -> found``: what ``rewrite`` needs; raises ``NoMatch(reason)``."""
    rewrite: Callable[[Graph, Node, Any], list[tuple[Value, Value]]]
    """Add the fused node(s); return ``(old value, new value)`` pairs to swap. A check only
    building the node can make (its type inference) may still raise ``NoMatch``, with the graph
    left as it was."""
    finish: Callable[[Graph], int] | None = None
    """After the worklist: extra rewrites that are not anchored matches (returns how many) —
    e.g. re-ordering the graph when fused inputs come from later nodes."""


@dataclass
class Outcome:
    """One rule's run: how many anchors fused, and why each other one did not (``explain``)."""

    rule: str
    matched: int = 0
    misses: list[dict] = field(default_factory=list)  # {"node", "op", "reason"}


def apply_rule(graph: Graph, rule: Rule, explain: bool = False) -> Outcome:
    """Run ``rule`` over every anchor of ``graph`` (in place)."""
    out, renames = Outcome(rule.name), []
    for node in [n for n in graph.nodes if n.op in rule.anchors]:
        if node not in graph.nodes:
            continue  # consumed by an earlier match
        try:
            swaps = rule.rewrite(graph, node, rule.match(node))
        except NoMatch as e:
            if explain:
                out.misses.append({"node": node.name, "op": node.op, "reason": str(e)})
            continue
        for old, new in swaps:
            replace(old, new, renames)
            _drop_dead_cone(graph, old.producer)
        out.matched += 1
    if rule.finish is not None:
        out.matched += rule.finish(graph)
    cleanup(graph, out.matched, renames)
    return out


def _drop_dead_cone(graph: Graph, node: Node | None) -> None:
    """Remove ``node`` and what only it used, now that nothing reads its outputs — so the rest
    of the worklist does not try (and explain) anchors inside a block already fused. Each node
    goes once: linear over a whole run."""
    outputs = set(map(id, graph.outputs))
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None or n not in graph.nodes or any(v.uses or id(v) in outputs for v in n.outputs):
            continue
        inputs = [v for v in n.inputs if v is not None]
        graph.remove_node(n)
        stack.extend(v.producer for v in inputs)


def require(condition: bool, reason: str) -> None:
    """``NoMatch(reason)`` unless ``condition``: the check half of a match, one line per check."""
    if not condition:
        raise NoMatch(reason)
